//! Reading one model of the repository (`models/<name>/` + `calib/<name>.json`) with every
//! consistency check the server relies on, and listing the models a folder holds.
//!
//! Checks, in order: the name is a plain folder name; `model.toml` is valid; the sha256 of
//! `model.onnx` matches the metadata's provenance; the calibration file (if any) was fitted on that
//! same file (unless stale calibrations are allowed) and has the model's class count.

use std::path::{Path, PathBuf};

use crate::repository::CalibrationFile;
use crate::trust::calibration::CalibrationError;

use super::{MetadataError, ModelMetadata};

/// Errors loading a model's files.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// The requested name is not a plain folder name (no `/`, `..`, empty).
    #[error("invalid model name {0:?}")]
    InvalidName(String),
    /// No `models/<name>/model.toml`.
    #[error("model {name:?} not found (no {path})")]
    NotFound { name: String, path: String },
    /// A model folder holds `model.onnx` but no `model.toml` (an interrupted copy, or an
    /// export from before exports were atomic): listed, so that the server reports it.
    #[error(
        "{path} is missing: models/{name} has a model.onnx but no metadata, so it cannot be \
         served; re-export it or write model.toml (docs/FORMATS.md)"
    )]
    MissingMetadata { name: String, path: String },
    /// The models folder itself could not be listed.
    #[error("cannot list {path}: {source}")]
    List {
        path: String,
        source: std::io::Error,
    },
    /// `model.toml` is unreadable or invalid.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// `model.onnx` could not be hashed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The onnx file is not the one the metadata describes.
    #[error("{path}: sha256 {actual} does not match model.toml provenance.sha256 {expected}")]
    ModelHashMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    /// The calibration file was fitted on another model file.
    #[error(
        "{path} was fitted on model sha256 {calibrated} but models/{name}/model.onnx has sha256 \
         {actual}: refit it (caliper calibrate) or start with --allow-stale-calibration"
    )]
    StaleCalibration {
        name: String,
        path: String,
        calibrated: String,
        actual: String,
    },
    /// The calibration file is unreadable, invalid, or for another class count.
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
    /// The calibration file's class count differs from the model's labels.
    #[error("{path}: calibrator has {calibrated} classes but the model has {labels} labels")]
    ClassCount {
        path: String,
        calibrated: usize,
        labels: usize,
    },
}

/// Everything on disk that describes one servable model, checked.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// Folder name under `models/`.
    pub name: String,
    /// Path of `model.onnx`.
    pub onnx_path: PathBuf,
    /// Parsed `model.toml`.
    pub metadata: ModelMetadata,
    /// sha256 of `model.onnx` as computed at load time.
    pub sha256: String,
    /// The calibration file, when `calib/<name>.json` exists.
    pub calibration: Option<CalibrationFile>,
    /// True when the calibration was fitted on another model file and loaded anyway
    /// (`--allow-stale-calibration`).
    pub stale_calibration: bool,
}

/// A model name is used as a path component: refuse anything that could escape the folder.
pub fn validate_name(name: &str) -> Result<(), RepositoryError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RepositoryError::InvalidName(name.to_string()))
    }
}

/// Names of the models under `models_dir` (folders holding a `model.toml` or a `model.onnx`:
/// one without its metadata is listed so that loading it reports why it cannot be served, not
/// skipped in silence), sorted. Hidden folders (`.NAME...`, an export being staged) are not
/// models. A missing folder is an empty repository, not an error, so that a fresh checkout can
/// start the server.
pub fn list_models(models_dir: &Path) -> Result<Vec<String>, RepositoryError> {
    let entries = match std::fs::read_dir(models_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RepositoryError::List {
                path: models_dir.display().to_string(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let p = e.path();
            p.join("model.toml").is_file() || p.join("model.onnx").is_file()
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && validate_name(n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Reads and checks `models_dir/<name>/` and `calib_dir/<name>.json`.
pub fn load_model_files(
    models_dir: &Path,
    calib_dir: &Path,
    name: &str,
    allow_stale_calibration: bool,
) -> Result<ModelFiles, RepositoryError> {
    validate_name(name)?;
    let dir = models_dir.join(name);
    let toml_path = dir.join("model.toml");
    if !toml_path.is_file() && dir.join("model.onnx").is_file() {
        return Err(RepositoryError::MissingMetadata {
            name: name.to_string(),
            path: toml_path.display().to_string(),
        });
    }
    if !toml_path.is_file() {
        return Err(RepositoryError::NotFound {
            name: name.to_string(),
            path: toml_path.display().to_string(),
        });
    }
    let metadata = ModelMetadata::load(&toml_path)?;
    let onnx_path = dir.join("model.onnx");
    let sha256 = crate::fsutil::sha256_file(&onnx_path).map_err(|source| RepositoryError::Io {
        path: onnx_path.display().to_string(),
        source,
    })?;
    if !sha256.eq_ignore_ascii_case(&metadata.provenance.sha256) {
        return Err(RepositoryError::ModelHashMismatch {
            path: onnx_path.display().to_string(),
            expected: metadata.provenance.sha256.clone(),
            actual: sha256,
        });
    }

    let calib_path = calib_dir.join(format!("{name}.json"));
    let mut stale_calibration = false;
    let calibration = if calib_path.is_file() {
        let file = CalibrationFile::load(&calib_path)?;
        let shown = calib_path.display().to_string();
        if file.num_classes != metadata.labels.len() {
            return Err(RepositoryError::ClassCount {
                path: shown,
                calibrated: file.num_classes,
                labels: metadata.labels.len(),
            });
        }
        if !file.model_sha256.eq_ignore_ascii_case(&sha256) {
            if !allow_stale_calibration {
                return Err(RepositoryError::StaleCalibration {
                    name: name.to_string(),
                    path: shown,
                    calibrated: file.model_sha256.clone(),
                    actual: sha256,
                });
            }
            tracing::warn!(model = name, path = %shown, "serving a stale calibration (fitted on another model file)");
            stale_calibration = true;
        }
        Some(file)
    } else {
        None
    };
    Ok(ModelFiles {
        name: name.to_string(),
        onnx_path,
        metadata,
        sha256,
        calibration,
        stale_calibration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the committed fixture repository in a temp dir, so tests can break it.
    fn fixture_copy() -> tempfile::TempDir {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("models/mnist-mlp");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::create_dir_all(dir.path().join("calib")).unwrap();
        for f in ["model.onnx", "model.toml"] {
            std::fs::copy(src.join("models/mnist-mlp").join(f), m.join(f)).unwrap();
        }
        std::fs::copy(
            src.join("calib/mnist-mlp.json"),
            dir.path().join("calib/mnist-mlp.json"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn loads_the_fixture_with_its_calibration() {
        let d = fixture_copy();
        let names = list_models(&d.path().join("models")).unwrap();
        assert_eq!(names, ["mnist-mlp"]);
        let f = load_model_files(
            &d.path().join("models"),
            &d.path().join("calib"),
            "mnist-mlp",
            false,
        )
        .unwrap();
        assert_eq!(f.metadata.labels.len(), 10);
        assert!(f.calibration.is_some() && !f.stale_calibration);
        assert!(list_models(&d.path().join("nope")).unwrap().is_empty());
    }

    #[test]
    fn a_model_without_metadata_is_listed_and_refused_with_the_reason() {
        let d = fixture_copy();
        let m = d.path().join("models");
        std::fs::create_dir_all(m.join("half")).unwrap();
        std::fs::copy(m.join("mnist-mlp/model.onnx"), m.join("half/model.onnx")).unwrap();
        // A staged export is hidden, not a model.
        std::fs::create_dir_all(m.join(".x.partial.1")).unwrap();
        std::fs::copy(
            m.join("mnist-mlp/model.onnx"),
            m.join(".x.partial.1/model.onnx"),
        )
        .unwrap();
        assert_eq!(list_models(&m).unwrap(), ["half", "mnist-mlp"]);
        let e = load_model_files(&m, &d.path().join("calib"), "half", false).unwrap_err();
        assert!(matches!(e, RepositoryError::MissingMetadata { .. }), "{e}");
        assert!(e.to_string().contains("no metadata"), "{e}");
    }

    #[test]
    fn refuses_stale_calibration_unless_allowed() {
        let d = fixture_copy();
        let p = d.path().join("calib/mnist-mlp.json");
        let mut file = CalibrationFile::load(&p).unwrap();
        file.model_sha256 = "00".repeat(32);
        file.save(&p).unwrap();
        let (m, c) = (d.path().join("models"), d.path().join("calib"));
        let e = load_model_files(&m, &c, "mnist-mlp", false).unwrap_err();
        assert!(e.to_string().contains("--allow-stale-calibration"), "{e}");
        let f = load_model_files(&m, &c, "mnist-mlp", true).unwrap();
        assert!(f.stale_calibration);
    }

    #[test]
    fn refuses_a_modified_onnx_file_and_bad_names() {
        let d = fixture_copy();
        let onnx = d.path().join("models/mnist-mlp/model.onnx");
        let mut bytes = std::fs::read(&onnx).unwrap();
        bytes.push(0);
        std::fs::write(&onnx, bytes).unwrap();
        let (m, c) = (d.path().join("models"), d.path().join("calib"));
        assert!(matches!(
            load_model_files(&m, &c, "mnist-mlp", false),
            Err(RepositoryError::ModelHashMismatch { .. })
        ));
        for bad in ["", "..", "a/b", "x y"] {
            assert!(matches!(
                load_model_files(&m, &c, bad, false),
                Err(RepositoryError::InvalidName(_))
            ));
        }
        assert!(matches!(
            load_model_files(&m, &c, "absent", false),
            Err(RepositoryError::NotFound { .. })
        ));
    }
}
