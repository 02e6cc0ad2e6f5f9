//! Serving: the HTTP server (`http`: caliper's v1 API, KServe V2, feedback, `/metrics`), the
//! request path below it (`infer`: decode, batch, run, calibrate, score), the live calibration
//! monitor fed by label feedback (`monitor`), the optional log of every prediction
//! (`payload_log`), the Prometheus registry (`prometheus`), the optional OpenTelemetry trace
//! export (`telemetry`) and the validated server configuration (`config`).

pub mod config;
pub mod http;
pub mod infer;
pub mod monitor;
pub mod payload_log;
pub mod prometheus;
pub mod telemetry;
