//! Serving: the HTTP server (`http`: caliper's v1 API, KServe V2, feedback, `/metrics`), the
//! KServe V2 gRPC service (`grpc`, on its own port), the V2 protocol apart from its transport
//! (`kserve`), the request path below them (`infer`: decode, batch, run, calibrate, score), the
//! live calibration monitor fed by label feedback (`monitor`), the optional log of every
//! prediction (`payload_log`), the Prometheus registry (`prometheus`), the optional
//! OpenTelemetry trace export (`telemetry`), the threads' CPU scheduling policy (`scheduling`)
//! and the validated server configuration (`config`).

pub mod config;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod kserve;
pub mod monitor;
pub mod payload_log;
pub mod prometheus;
pub mod scheduling;
pub mod telemetry;
