//! The HTTP layer: router, handlers, wire types (caliper's API and KServe V2) and the mapping of
//! every error to a status code and a JSON body. No maths here: handlers extract, call one
//! function of `infer`, and map the result.

mod error;
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
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ErrorCode};
pub use server::serve;

use crate::config::Config;
use crate::infer::{ImageLimits, InferError, ModelRegistry};
use crate::telemetry::Metrics;

/// Shared application state: cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Loaded models.
    pub registry: Arc<ModelRegistry>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Admission control: one permit per inference request in flight.
    pub admission: Arc<Semaphore>,
}

impl AppState {
    /// State with an empty registry; call `registry.load_all()` (blocking) before serving.
    pub fn new(config: Config) -> Result<Self, prometheus::Error> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new()?);
        Ok(Self {
            registry: Arc::new(ModelRegistry::new(
                Arc::clone(&config),
                Arc::clone(&metrics),
            )),
            admission: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            config,
            metrics,
        })
    }

    fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_pixels: self.config.max_image_pixels,
        }
    }

    fn model(&self, name: &str) -> Result<Arc<crate::infer::LoadedModel>, ApiError> {
        self.registry
            .get(name)
            .ok_or_else(|| ApiError::ModelNotFound(name.to_string()))
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
            middleware::track,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}
