//! caliper: calibrated probabilities from ONNX image classifiers.
//!
//! The library holds all the code; the binaries `caliper` (server and tools) and
//! `caliper-train` (the trainer) only parse arguments and call into it. Three parts, and the
//! shared pieces below them (see `docs/ARCHITECTURE.md`):
//!
//! - [`serve`]: the HTTP server, the request path (`infer`), the live monitor, Prometheus;
//! - [`trust`]: the science of trustworthy probabilities: calibrators, metrics, OOD scores,
//!   conformal sets, reliability diagrams;
//! - [`train`]: the trainer on ONNX Runtime and its export.
//!
//! Layers point one way: `cli` -> {`serve`, `train`} -> `repository` -> `trust` -> `numeric`;
//! `runtime` (ONNX Runtime), `data` (datasets) and `fsutil` are shared below `serve` and
//! `train`. `tests/tooling/architecture.rs` checks that no import runs back up.

pub mod cli;
pub mod data;
pub mod fsutil;
pub mod logging;
pub mod numeric;
pub mod repository;
pub mod runtime;
pub mod serve;
pub mod train;
pub mod trust;
