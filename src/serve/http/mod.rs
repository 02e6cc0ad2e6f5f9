//! The HTTP layer: router, handlers, wire types (caliper's API and KServe V2) and the mapping of
//! every error to a status code and a JSON body. No maths here: handlers extract, call one
//! function of `infer`, and map the result.

mod error;
mod feedback;
mod middleware;
mod recalibrate;
mod server;
mod spans;
mod ui;
mod v1;
mod v2;
mod v2_binary;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ErrorCode};
pub use middleware::authorization_matches;
pub use server::serve;

use crate::serve::config::Config;
use crate::serve::infer::{
    DecodeSlots, ImageLimits, ImageWork, InferError, MemoryBudget, ModelRegistry,
};
use crate::serve::monitor::recal::Recalibration;
use crate::serve::monitor::{Monitor, TokenSigner};
use crate::serve::payload_log::PayloadLog;
use crate::serve::prometheus::ServerMetrics;

/// Shared application state. One `Arc`, so that a clone (axum makes one per middleware layer
/// and per `State` extractor, several per request) is a single atomic increment; its fields are
/// reached through `Deref` (`state.config`, `state.registry`, ...).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] shares. Fields that are also handed out on their own stay `Arc`s.
pub struct Shared {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Loaded models.
    pub registry: Arc<ModelRegistry>,
    /// Prometheus metrics.
    pub metrics: Arc<ServerMetrics>,
    /// Admission control: one permit per inference request in flight.
    pub admission: Arc<Semaphore>,
    /// Memory budget of decodes and V2 tensor bodies in flight (`--max-decode-memory-mib`).
    pub budget: MemoryBudget,
    /// Blocking-pool decodes running at once (one per core).
    pub decoders: DecodeSlots,
    /// Heavy monitor reports (bootstrap intervals) computed at once.
    pub reports: Arc<Semaphore>,
    /// Live calibration monitor (prediction tokens, label feedback).
    pub monitor: Arc<Monitor>,
    /// Shadow calibrators refitted from feedback, and their promotion (issue 22).
    pub recal: Arc<Recalibration>,
    /// The payload log (`--payload-log`), when enabled.
    pub payload_log: Option<PayloadLog>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Why the application state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The Prometheus registry refused a metric.
    #[error("metrics registry: {0}")]
    ServerMetrics(#[from] prometheus::Error),
    /// The feedback log could not be opened.
    #[error(transparent)]
    FeedbackLog(#[from] crate::serve::monitor::LogError),
    /// The payload log directory could not be opened.
    #[error("payload log {dir}: {source}")]
    PayloadLog {
        /// `--payload-log`.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
}

impl AppState {
    /// State with an empty registry; call `registry.load_all()` (blocking) before serving.
    /// Opens the feedback log (rebuilding the live windows from it).
    pub fn new(config: Config) -> Result<Self, StateError> {
        let config = Arc::new(config);
        let metrics = Arc::new(ServerMetrics::new()?);
        let signer = match &config.feedback_key {
            Some(key) => TokenSigner::new(key.as_bytes()),
            None => {
                tracing::warn!(
                    "no --feedback-key: prediction ids are signed with a random per-process key, \
                     so labels are accepted only by this process and only until it restarts. \
                     Set CALIPER_FEEDBACK_KEY (the same on every replica)."
                );
                TokenSigner::random()
            }
        };
        let (monitor, recovered) = Monitor::open(config.monitor.clone(), signer)?;
        if recovered.corrupt_lines > 0 || recovered.truncated_tail_bytes > 0 {
            tracing::warn!(
                ?recovered,
                "feedback log had damaged lines; they were skipped"
            );
        } else if recovered.records > 0 {
            tracing::info!(
                records = recovered.records,
                "live calibration windows rebuilt from the feedback log"
            );
        }
        // Without this the gauges stay absent until the next label (issue 17).
        crate::serve::infer::feedback::publish_restored(&monitor, &metrics);
        let payload_log = match &config.payload_log {
            Some(c) => Some(
                PayloadLog::start(c, Arc::clone(&metrics)).map_err(|source| {
                    StateError::PayloadLog {
                        dir: c.dir.display().to_string(),
                        source,
                    }
                })?,
            ),
            None => None,
        };
        let monitor = Arc::new(monitor);
        let registry = Arc::new(ModelRegistry::new(
            config.registry_options(),
            Arc::clone(&metrics),
        ));
        // Every load registers the model's calibration file with the monitor: the calibration
        // alarm's tolerance comes from it (labels replayed from the log wait for it). A
        // recalibration (or a load of a changed calibration file) replaces the calibrator: the
        // alarm, the label-shift window and the adaptive level start again (issue 22).
        let m = Arc::clone(&monitor);
        registry.on_load(Box::new(move |model, replaced| {
            let source = crate::serve::infer::live::shift_source(model);
            m.model_loaded(&model.files.name, &source, replaced);
        }));
        Ok(Self(Arc::new(Shared {
            registry,
            admission: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            budget: MemoryBudget::new(config.max_decode_memory_bytes),
            decoders: DecodeSlots::per_core(),
            reports: Arc::new(Semaphore::new(config.max_concurrent_reports)),
            monitor,
            recal: Arc::new(Recalibration::new(config.recal.clone())),
            payload_log,
            config,
            metrics,
        })))
    }

    /// Whether the payload log wants the requests' images.
    fn logs_images(&self) -> bool {
        self.payload_log
            .as_ref()
            .is_some_and(PayloadLog::logs_images)
    }

    /// Offers stamped predictions of `model` to the payload log, when there is one.
    fn log_payload<'a>(
        &self,
        model: &crate::serve::infer::LoadedModel,
        predictions: impl IntoIterator<Item = &'a crate::serve::infer::Prediction>,
        request_id: Option<&str>,
        images: Option<&[bytes::Bytes]>,
    ) {
        if let Some(log) = &self.payload_log {
            log.offer(
                predictions,
                &model.files.metadata.labels,
                request_id,
                images,
            );
        }
    }

    fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_pixels: self.config.max_image_pixels,
        }
    }

    /// What the image work of a request runs under; it keeps the request's admission permit
    /// (from [`middleware::Admission`]) until the work stops.
    fn image_work(&self, admission: Option<middleware::Admission>) -> ImageWork {
        ImageWork {
            limits: self.image_limits(),
            budget: self.budget.clone(),
            admission: admission.map(|a| a.0),
            decoders: self.decoders.clone(),
        }
    }

    fn model(&self, name: &str) -> Result<Arc<crate::serve::infer::LoadedModel>, ApiError> {
        let model = self
            .registry
            .get(name)
            .ok_or_else(|| ApiError::ModelNotFound(name.to_string()))?;
        spans::record_model(&model);
        Ok(model)
    }

    /// The model, when it serves `version` (KServe V2's `/versions/{version}` routes).
    fn model_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Arc<crate::serve::infer::LoadedModel>, ApiError> {
        let m = self.model(name)?;
        if m.files.metadata.version == version {
            Ok(m)
        } else {
            Err(ApiError::NotFoundDetail(format!(
                "model {name:?} serves version {:?}, not {version:?}",
                m.files.metadata.version
            )))
        }
    }

    /// What the KServe V2 request path needs from the state (HTTP and gRPC alike).
    pub fn kserve_context(&self) -> crate::serve::kserve::Context<'_> {
        crate::serve::kserve::Context {
            monitor: &self.monitor,
            metrics: &self.metrics,
            work: self.image_work(None),
            recal: &self.recal,
            budget: self.config.request_timeout,
        }
    }

    /// Runs an inference future under the request time budget (504 after it). Dropping the
    /// future on timeout abandons its queue entries, which the batcher then skips.
    async fn within_budget<T>(
        &self,
        fut: impl Future<Output = Result<T, InferError>>,
    ) -> Result<T, ApiError> {
        let budget: Duration = self.config.request_timeout;
        match tokio::time::timeout(budget, fut).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(_) => Err(ApiError::Timeout),
        }
    }
}

/// The request's `X-Request-Id`: the client's, or the one the router's request-id layer made.
fn request_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The whole application. Used by `caliper serve` and by the tests (through `oneshot`).
pub fn router(state: AppState) -> Router {
    // Inference: the API key first, then admission (which reads the body).
    let inference = Router::new()
        .route("/v1/models/{model}/predict", post(v1::predict))
        .route("/v2/models/{model}/infer", post(v2::infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(v2::infer_version),
        )
        .route_layer(from_fn_with_state(
            state.clone(),
            middleware::guard_inference,
        ));
    let protected = Router::new()
        .route("/v1/models", get(v1::list_models))
        .route("/v1/feedback", post(feedback::submit))
        .route("/v1/models/{model}/monitor", get(feedback::monitor))
        .route(
            "/v1/models/{model}/monitor/reliability.svg",
            get(feedback::monitor_svg),
        )
        .route("/v1/models/{model}/calibration", get(feedback::calibration))
        .route(
            "/v1/models/{model}/reliability.svg",
            get(feedback::calibration_svg),
        )
        .route("/v2", get(v2::server_metadata))
        .route("/v2/models/{model}", get(v2::model_metadata))
        .route("/v2/models/{model}/ready", get(v2::model_ready))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(v2::model_version_metadata),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(v2::model_version_ready),
        )
        .route_layer(from_fn_with_state(
            state.clone(),
            middleware::guard_protected,
        ))
        .merge(inference);
    let admin = Router::new()
        .route("/v2/repository/models/{model}/load", post(v2::load_model))
        .route(
            "/v2/repository/models/{model}/recalibrate",
            post(recalibrate::recalibrate),
        )
        .route_layer(from_fn_with_state(state.clone(), middleware::guard_admin));
    Router::new()
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/metrics", get(middleware::metrics))
        // The dashboard: static files, public; the data it polls keeps its own authentication.
        .route("/", get(ui::root))
        .route("/ui", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/style.css", get(ui::style))
        .merge(protected)
        .merge(admin)
        .fallback(|| async { ApiError::BadRequest("no such route".into()) })
        // One `layer` call for the whole stack, outermost first: axum boxes every route once per
        // call, and each box is cloned and its future boxed again on every request (one call
        // instead of six: 7-9 us less CPU per LeNet request, docs/BENCHMARKS.md session 13).
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(middleware::MakeRequestId))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(spans::RequestSpan)
                        .on_response(spans::RecordStatus),
                )
                .layer(middleware::TrackLayer(Arc::clone(&state.metrics)))
                .layer(DefaultBodyLimit::max(state.config.max_body_bytes)),
        )
        .with_state(state)
}
