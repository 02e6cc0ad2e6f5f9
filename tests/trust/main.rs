//! The calibration science's integration tests, one binary: calibrators and metrics against
//! reference values (`calibration_fit`, `calibration_metrics`, `calibration_mnist`), the
//! `calibrate`/`eval` command line (`calibration_cli`), OOD detection and conformal sets on real
//! data (`data_ood_conformal`, `ood_cli`).

/// The shared helpers this binary uses: running the `caliper` binary.
#[path = "../common"]
mod common {
    pub mod cli;
    pub use cli::caliper_json;
}

mod calibration_cli;
mod calibration_fit;
mod calibration_metrics;
mod calibration_mnist;
mod data_ood_conformal;
mod ood_cli;
