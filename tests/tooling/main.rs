//! Checks on the repository as a whole, one binary: the layering of `src/` (`architecture`), the
//! dataset readers on the real files under data/ (`data_real`), the deployment manifests
//! (`deploy_manifests`), the fetch and benchmark scripts (`scripts`) and the figures recorded for the shipped models (`shipped_models`, also
//! `make check-models`).

/// The shared helpers this binary uses: running the `caliper` binary.
#[path = "../common"]
mod common {
    pub mod cli;
    pub use cli::caliper_json;
}

mod architecture;
mod data_real;
mod deploy_manifests;
mod scripts;
mod shipped_models;
