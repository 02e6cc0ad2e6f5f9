//! `calib/<name>.json`: a calibrator fitted to exactly one model file (recorded by its sha256),
//! with a versioned schema documented in `docs/FORMATS.md`. Written atomically (temp file +
//! rename) so a crash never leaves a half-written calibrator that the server would refuse.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{CalibrationError, Calibrator};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Contents of a calibration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalibrationFile {
    /// Always [`SCHEMA_VERSION`] for files this build writes; other versions are refused.
    pub schema_version: u32,
    /// Name of the model this was fitted for (the folder name under `models/`).
    pub model: String,
    /// sha256 (hex) of the `model.onnx` the calibrator was fitted on.
    pub model_sha256: String,
    /// Number of classes of the model.
    pub num_classes: usize,
    /// The fitted calibrator.
    pub calibrator: Calibrator,
    /// What the fit saw and how the validation metrics moved; free-form until the calibration
    /// library defines it (kept so that files written later remain readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<serde_json::Value>,
}

impl CalibrationFile {
    /// Reads and validates a calibration file.
    pub fn load(path: &Path) -> Result<Self, CalibrationError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CalibrationError::Io {
            path: shown.clone(),
            source,
        })?;
        let file: CalibrationFile =
            serde_json::from_str(&text).map_err(|e| CalibrationError::Parse {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        if file.schema_version != SCHEMA_VERSION {
            return Err(CalibrationError::Parse {
                path: shown,
                reason: format!(
                    "schema_version {} is not supported (this build reads {SCHEMA_VERSION})",
                    file.schema_version
                ),
            });
        }
        file.calibrator
            .validate(file.num_classes)
            .map_err(|e| CalibrationError::Parse {
                path: shown,
                reason: e.to_string(),
            })?;
        Ok(file)
    }

    /// Writes the file atomically: a temporary sibling, fsync, then rename over the target.
    pub fn save(&self, path: &Path) -> Result<(), CalibrationError> {
        let shown = path.display().to_string();
        let io = |source| CalibrationError::Io {
            path: shown.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| CalibrationError::Parse {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        crate::fsutil::write_atomic(path, &json).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CalibrationFile {
        CalibrationFile {
            schema_version: SCHEMA_VERSION,
            model: "m".into(),
            model_sha256: "ab".repeat(32),
            num_classes: 3,
            calibrator: Calibrator::Ts { temperature: 1.25 },
            fit: None,
        }
    }

    #[test]
    fn round_trips_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        sample().save(&path).unwrap();
        let back = CalibrationFile::load(&path).unwrap();
        assert_eq!(back.calibrator, Calibrator::Ts { temperature: 1.25 });
        assert_eq!(back.num_classes, 3);
    }

    #[test]
    fn refuses_garbage_unknown_versions_and_bad_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            CalibrationFile::load(&path),
            Err(CalibrationError::Parse { .. })
        ));
        let mut f = sample();
        f.schema_version = 99;
        f.save(&path).unwrap();
        assert!(
            CalibrationFile::load(&path)
                .unwrap_err()
                .to_string()
                .contains("schema_version")
        );
        let mut f = sample();
        f.calibrator = Calibrator::Ts { temperature: -1.0 };
        f.save(&path).unwrap();
        assert!(CalibrationFile::load(&path).is_err());
        assert!(matches!(
            CalibrationFile::load(&dir.path().join("missing.json")),
            Err(CalibrationError::Io { .. })
        ));
    }
}
