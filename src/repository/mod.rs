//! The model repository on disk: `models/<name>/model.onnx` + `model.toml`, and
//! `calib/<name>.json`. Scanning, validation and reload live here; the file formats are
//! documented in `docs/FORMATS.md`.

mod metadata;

pub use metadata::{
    InputSpec, METADATA_SCHEMA_VERSION, MetadataError, ModelMetadata, OutputSpec, Provenance,
    ResizePolicy,
};
