//! caliper: calibrated probabilities from ONNX image classifiers.
//!
//! The library holds all the code; the binaries `caliper` (server and tools) and
//! `caliper-train` (the trainer) only parse arguments and call into it.
//!
//! Layers point one way: `http` -> `infer` -> {`runtime`, `calibration`, ...}, with the shared
//! numeric code (`numeric`, `metrics`) below them. The trainer (`train`) reuses `data`,
//! `calibration` and `metrics`.

pub mod calibration;
pub mod cli;
pub mod config;
pub mod conformal;
pub mod data;
pub mod diagram;
pub mod fsutil;
pub mod http;
pub mod infer;
pub mod metrics;
pub mod monitor;
pub mod numeric;
pub mod ood;
pub mod repository;
pub mod runtime;
pub mod telemetry;
pub mod train;
