//! The HTTP layer: router, handlers, wire types (caliper's API and KServe V2) and the mapping of
//! every error to a status code and a JSON body. No maths here: handlers extract, call one
//! function of `infer`, and map the result.

mod error;
mod feedback;
mod middleware;
mod server;
mod v1;
mod v2;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::sync::Semaphore;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ErrorCode};
pub use middleware::authorization_matches;
pub use server::serve;

use crate::serve::config::Config;
use crate::serve::infer::{ImageLimits, InferError, ModelRegistry};
use crate::serve::monitor::{Monitor, TokenSigner};
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
    /// Heavy monitor reports (bootstrap intervals) computed at once.
    pub reports: Arc<Semaphore>,
    /// Live calibration monitor (prediction tokens, label feedback).
    pub monitor: Monitor,
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
        Ok(Self(Arc::new(Shared {
            registry: Arc::new(ModelRegistry::new(
                config.registry_options(),
                Arc::clone(&metrics),
            )),
            admission: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            reports: Arc::new(Semaphore::new(config.max_concurrent_reports)),
            monitor,
            config,
            metrics,
        })))
    }

    fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_pixels: self.config.max_image_pixels,
        }
    }

    fn model(&self, name: &str) -> Result<Arc<crate::serve::infer::LoadedModel>, ApiError> {
        self.registry
            .get(name)
            .ok_or_else(|| ApiError::ModelNotFound(name.to_string()))
    }

    /// What the KServe V2 request path needs from the state (HTTP and gRPC alike).
    pub fn kserve_context(&self) -> crate::serve::kserve::Context<'_> {
        crate::serve::kserve::Context {
            monitor: &self.monitor,
            metrics: &self.metrics,
            limits: self.image_limits(),
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

/// The whole application. Used by `caliper serve` and by the tests (through `oneshot`).
pub fn router(state: AppState) -> Router {
    // Inference: admission control first, then the API key.
    let inference = Router::new()
        .route("/v1/models/{model}/predict", post(v1::predict))
        .route("/v2/models/{model}/infer", post(v2::infer))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::admit,
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
        .merge(inference)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_api_key,
        ));
    let admin = Router::new()
        .route("/v2/repository/models/{model}/load", post(v2::load_model))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_admin,
        ));
    Router::new()
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/metrics", get(middleware::metrics))
        .merge(protected)
        .merge(admin)
        .fallback(|| async { ApiError::BadRequest("no such route".into()) })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::limit_body_rate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::track,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(middleware::MakeRequestId))
        .with_state(state)
}
