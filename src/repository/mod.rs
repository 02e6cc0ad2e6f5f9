//! The model repository on disk: `models/<name>/model.onnx` + `model.toml`, and
//! `calib/<name>.json` with the one function that fits it (`fit_bundle`). Scanning and
//! validation live here (the served, reloadable set of models is `infer::ModelRegistry`); the
//! file formats are documented in `docs/FORMATS.md`.
//! [`preprocess`] turns image bytes into a model's input as its `model.toml` says; it lives here,
//! beside the [`InputSpec`] it follows, so that the server, the CLI tools and the trainer share it.

mod bundle;
pub mod fit_bundle;
pub mod import;
mod metadata;
pub mod preprocess;
mod resample;
mod scan;

pub use bundle::{
    CalibrationFile, FeedbackProvenance, FitSummary, HeldOutCheck, HeldOutFigures,
    ReliabilitySummary, SCHEMA_VERSION,
};
pub use fit_bundle::{Adapt, BundleInput, FitArgs, FitBundleError, FittedBundle, fit_bundle};
pub use metadata::{
    InputSpec, METADATA_SCHEMA_VERSION, MetadataError, ModelMetadata, OutputSpec, Provenance,
    ResizePolicy,
};
pub use scan::{ModelFiles, RepositoryError, list_models, load_model_files, validate_name};
