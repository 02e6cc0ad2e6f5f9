//! `inference.GRPCInferenceService`: each call checks its token, runs the same code as its HTTP
//! V2 counterpart (`serve::kserve`), and maps the one API error type to a gRPC status. Requests
//! are counted in the same Prometheus families as HTTP, by method path.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::pb::grpc_inference_service_server::GrpcInferenceService;
use super::pb::model_metadata_response::TensorMetadata;
use super::pb::repository_index_response::ModelIndex;
use super::pb::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, RepositoryIndexRequest, RepositoryIndexResponse,
    RepositoryModelLoadRequest, RepositoryModelLoadResponse, RepositoryModelUnloadRequest,
    RepositoryModelUnloadResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest,
    ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};
use super::{status, tensor};
use crate::serve::http::{ApiError, AppState, authorization_matches};
use crate::serve::infer::LoadedModel;
use crate::serve::kserve::{self, ModelMetadata};

/// Which token a call needs.
#[derive(Debug, Clone, Copy)]
enum Access {
    /// Health: none.
    Open,
    /// `--api-key`, when set.
    Api,
    /// `--admin-token`, else `--api-key`, when set.
    Admin,
}

/// The service over the server's shared state.
pub struct Inference {
    state: AppState,
}

impl Inference {
    /// The service over `state`.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// Runs one call: checks its token, counts it, and maps its error to a status.
    async fn call<Q, T, F>(
        &self,
        method: &'static str,
        access: Access,
        req: Request<Q>,
        f: impl FnOnce(Q) -> F,
    ) -> Result<Response<T>, Status>
    where
        F: Future<Output = Result<T, ApiError>>,
    {
        let m = &self.state.metrics;
        m.in_flight.inc();
        let _in_flight = InFlight(m.in_flight.clone());
        let start = Instant::now();
        let result = match self.authorize(access, &req) {
            Ok(()) => f(req.into_inner()).await,
            Err(e) => Err(e),
        };
        let (http_status, code) = match &result {
            Ok(_) => ("200".to_string(), None),
            Err(e) => {
                let (s, c) = e.status_and_code();
                (s.as_str().to_string(), Some(c))
            }
        };
        m.request_duration
            .with_label_values(&[method, "GRPC", http_status.as_str()])
            .observe(start.elapsed().as_secs_f64());
        if let Some(code) = code {
            m.rejected.with_label_values(&[code]).inc();
        }
        result.map(Response::new).map_err(status::from_api_error)
    }

    fn authorize<Q>(&self, access: Access, req: &Request<Q>) -> Result<(), ApiError> {
        let c = &self.state.config;
        let token = match access {
            Access::Open => None,
            Access::Api => c.api_key.as_ref(),
            Access::Admin => c.admin_token.as_ref().or(c.api_key.as_ref()),
        };
        let given = req.metadata().get("authorization").map(|v| v.as_bytes());
        match token {
            Some(t) if !authorization_matches(given, t) => Err(ApiError::Unauthorized),
            _ => Ok(()),
        }
    }

    /// The model called `name`, refusing a version other than the one served.
    fn model(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>, ApiError> {
        let m = self
            .state
            .registry
            .get(name)
            .ok_or_else(|| ApiError::ModelNotFound(name.to_string()))?;
        let served = &m.files.metadata.version;
        if version.is_empty() || version == served {
            Ok(m)
        } else {
            Err(ApiError::NotFoundDetail(format!(
                "model {name:?} version {version:?} is not served (it serves version {served:?})"
            )))
        }
    }
}

/// Decrements the in-flight gauge even if the call's future is dropped.
struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

macro_rules! method {
    ($name:literal) => {
        concat!("/inference.GRPCInferenceService/", $name)
    };
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        req: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        self.call(method!("ServerLive"), Access::Open, req, |_| async {
            Ok(ServerLiveResponse { live: true })
        })
        .await
    }

    async fn server_ready(
        &self,
        req: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = self.state.registry.is_ready();
        self.call(method!("ServerReady"), Access::Open, req, |_| async move {
            Ok(ServerReadyResponse { ready })
        })
        .await
    }

    async fn model_ready(
        &self,
        req: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        self.call(method!("ModelReady"), Access::Api, req, |r| async move {
            // As Triton: an unknown model (or version) is not ready, not an error.
            Ok(ModelReadyResponse {
                ready: self.model(&r.name, &r.version).is_ok(),
            })
        })
        .await
    }

    async fn server_metadata(
        &self,
        req: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.call(method!("ServerMetadata"), Access::Api, req, |_| async {
            Ok(ServerMetadataResponse {
                name: kserve::SERVER_NAME.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                extensions: kserve::EXTENSIONS.map(String::from).to_vec(),
            })
        })
        .await
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.call(method!("ModelMetadata"), Access::Api, req, |r| async move {
            let model = self.model(&r.name, &r.version)?;
            let meta = ModelMetadata::of(&model);
            let tensors = |v: Vec<kserve::TensorMetadata>| {
                v.into_iter()
                    .map(|t| TensorMetadata {
                        name: t.name,
                        datatype: t.datatype.to_string(),
                        shape: t.shape,
                    })
                    .collect()
            };
            Ok(ModelMetadataResponse {
                name: meta.name,
                versions: vec![meta.version],
                platform: kserve::PLATFORM.to_string(),
                inputs: tensors(meta.inputs),
                outputs: tensors(meta.outputs),
            })
        })
        .await
    }

    async fn model_infer(
        &self,
        req: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        self.call(method!("ModelInfer"), Access::Api, req, |r| async move {
            let model = self.model(&r.model_name, &r.model_version)?;
            // Admission after the message arrived whole (tonic decodes it first, within
            // --max-body-bytes), as HTTP admits after reading the body: a slow client never
            // holds a slot.
            let _permit = Arc::clone(&self.state.admission)
                .try_acquire_owned()
                .map_err(|_| ApiError::Overloaded)?;
            let wanted = kserve::requested_outputs(r.outputs.iter().map(|o| o.name.as_str()))?;
            let batch = tensor::decode_input(&model, &r)?;
            let scored = kserve::infer(&model, batch, self.state.kserve_context()).await?;
            Ok(tensor::encode_response(&model, r.id, &wanted, &scored))
        })
        .await
    }

    async fn repository_index(
        &self,
        req: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        self.call(
            method!("RepositoryIndex"),
            Access::Admin,
            req,
            |r| async move {
                let s = &self.state;
                let index = kserve::repository::index(&s.registry, &s.config.models_dir, r.ready)
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                Ok(RepositoryIndexResponse {
                    models: index
                        .into_iter()
                        .map(|e| ModelIndex {
                            name: e.name,
                            version: e.version,
                            state: e.state.as_str().to_string(),
                            reason: e.reason,
                        })
                        .collect(),
                })
            },
        )
        .await
    }

    async fn repository_model_load(
        &self,
        req: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        self.call(
            method!("RepositoryModelLoad"),
            Access::Admin,
            req,
            |r| async move {
                if !r.parameters.is_empty() {
                    // Triton lets a load carry a config or model files; caliper loads from disk only.
                    return Err(ApiError::BadRequest(
                        "load parameters (config, model files) are not supported: caliper loads \
                     the model folder of the repository"
                            .into(),
                    ));
                }
                kserve::repository::load(&self.state.registry, &r.model_name).await?;
                Ok(RepositoryModelLoadResponse {})
            },
        )
        .await
    }

    async fn repository_model_unload(
        &self,
        req: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.call(
            method!("RepositoryModelUnload"),
            Access::Admin,
            req,
            |r| async move {
                kserve::repository::unload(&self.state.registry, &r.model_name)?;
                Ok(RepositoryModelUnloadResponse {})
            },
        )
        .await
    }
}
