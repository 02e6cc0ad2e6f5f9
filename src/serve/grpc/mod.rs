//! The KServe V2 / Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, as
//! Triton defines it) and the standard health service (`grpc.health.v1.Health`), on their own
//! port (`--grpc-addr`). The service shares the HTTP server's state, so both protocols serve
//! the same models with the same calibration, OOD policy, prediction ids, admission and limits;
//! it sits above `http` to reuse that state and its error type. What is not wire format lives
//! in `serve::kserve`.
//!
//! - `pb`: the messages and the server trait, generated from `proto/grpc_service.proto` by
//!   `scripts/gen-grpc.sh` and committed, so that building caliper needs no `protoc`;
//! - `service`: the calls; `tensor`: request and response tensors; `status`: error codes.
//!
//! Limits: a message is at most `--max-body-bytes` (RESOURCE_EXHAUSTED above); inference calls
//! take an admission permit like HTTP's (RESOURCE_EXHAUSTED when none is free); each call has
//! `--body-read-grace-ms` + `--request-timeout-ms` in all, the inference itself its request
//! budget (DEADLINE_EXCEEDED). Health: `""` is SERVING while the process serves (liveness),
//! `inference.GRPCInferenceService` while every model is loaded (readiness, re-read each
//! second); both turn NOT_SERVING when shutdown starts.

mod pb;
mod service;
mod status;
mod tensor;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::serve::http::AppState;
use pb::grpc_inference_service_server::GrpcInferenceServiceServer;

/// The service name health checks ask about for readiness.
pub const SERVICE_NAME: &str = "inference.GRPCInferenceService";

/// How often the readiness health status is re-read from the model registry.
const HEALTH_REFRESH: Duration = Duration::from_secs(1);

/// Serves gRPC on `listener` until `shutdown` resolves: new connections stop, in-flight calls
/// get `drain_timeout` to finish. Returns `Ok(true)` when they all finished in time.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> Result<bool, tonic::transport::Error> {
    let c = &state.config;
    let (reporter, health) = tonic_health::server::health_reporter();
    let inference = GrpcInferenceServiceServer::new(service::Inference::new(state.clone()))
        .max_decoding_message_size(c.max_body_bytes);
    let registry = std::sync::Arc::clone(&state.registry);
    let readiness = {
        let reporter = reporter.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = if registry.is_ready() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                if last != Some(now) {
                    reporter.set_service_status(SERVICE_NAME, now).await;
                    last = Some(now);
                }
                tokio::time::sleep(HEALTH_REFRESH).await;
            }
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .tcp_nodelay(true)
        .timeout(c.body_read_grace + c.request_timeout)
        .max_concurrent_streams(u32::try_from(c.max_concurrent_requests).ok())
        .add_service(health)
        .add_service(inference)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => {
            readiness.abort();
            return r.map(|()| true);
        }
        () = shutdown => {}
    }
    readiness.abort();
    for name in ["", SERVICE_NAME] {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    tracing::info!(
        ?drain_timeout,
        "gRPC shutting down: draining in-flight calls"
    );
    let _ = stop_tx.send(());
    match tokio::time::timeout(drain_timeout, server).await {
        Ok(r) => r.map(|()| true),
        Err(_) => {
            tracing::warn!("gRPC drain timeout reached; closing remaining calls");
            Ok(false)
        }
    }
}
