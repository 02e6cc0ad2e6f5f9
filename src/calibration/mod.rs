//! Post-hoc calibrators: what they are (one serialisable enum), how they turn logits into
//! calibrated probabilities, and the `calib/<name>.json` file that stores one fitted to a model.
//!
//! The server only calls [`Calibrator::probabilities`] and [`CalibrationFile::load`]; a new
//! calibrator is a new enum variant here and needs no change in the HTTP layer.

mod file;

pub use file::{CalibrationFile, SCHEMA_VERSION};

use serde::{Deserialize, Serialize};

use crate::numeric::{NonFinite, check_finite, softmax_with_temperature};

/// Errors from applying, fitting or loading a calibrator.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// A logit row held NaN or an infinity.
    #[error("logits must be finite: {0}")]
    NonFinite(#[from] NonFinite),
    /// The row length does not match the calibrator's class count.
    #[error("calibrator expects {expected} classes, got {got}")]
    ClassMismatch { expected: usize, got: usize },
    /// A stored parameter is out of its domain (e.g. a temperature <= 0).
    #[error("invalid calibrator parameter: {0}")]
    InvalidParameter(String),
    /// The calibration file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The calibration file is not valid JSON of the documented schema.
    #[error("{path}: invalid calibration file: {reason}")]
    Parse { path: String, reason: String },
}

/// A fitted calibrator. Serialised with a `method` tag, e.g. `{"method": "ts", "temperature": 1.3}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Calibrator {
    /// Plain softmax of the logits.
    Identity,
    /// Temperature scaling (Guo et al. 2017): softmax(z / T).
    Ts {
        /// The temperature T > 0.
        temperature: f64,
    },
}

impl Calibrator {
    /// Short method name as written in files and responses.
    pub fn method(&self) -> &'static str {
        match self {
            Calibrator::Identity => "identity",
            Calibrator::Ts { .. } => "ts",
        }
    }

    /// Checks parameters once at load time so that `probabilities` cannot fail on them later.
    pub fn validate(&self, _num_classes: usize) -> Result<(), CalibrationError> {
        match self {
            Calibrator::Identity => Ok(()),
            Calibrator::Ts { temperature } => {
                if temperature.is_finite() && *temperature > 0.0 {
                    Ok(())
                } else {
                    Err(CalibrationError::InvalidParameter(format!(
                        "temperature must be finite and > 0, got {temperature}"
                    )))
                }
            }
        }
    }

    /// Calibrated class probabilities for one row of logits (sums to 1).
    pub fn probabilities(&self, logits: &[f64]) -> Result<Vec<f64>, CalibrationError> {
        check_finite(logits)?;
        Ok(match self {
            Calibrator::Identity => softmax_with_temperature(logits, 1.0),
            Calibrator::Ts { temperature } => softmax_with_temperature(logits, *temperature),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_scaling_softens_and_keeps_argmax() {
        let z = [2.0, 0.5, -1.0];
        let raw = Calibrator::Identity.probabilities(&z).unwrap();
        let ts = Calibrator::Ts { temperature: 2.0 }
            .probabilities(&z)
            .unwrap();
        assert!(ts[0] < raw[0]);
        assert_eq!(crate::numeric::argmax(&ts), 0);
        assert!((ts.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn rejects_nan_logits_and_bad_temperatures() {
        assert!(
            Calibrator::Identity
                .probabilities(&[0.0, f64::NAN])
                .is_err()
        );
        assert!(Calibrator::Ts { temperature: 0.0 }.validate(2).is_err());
        assert!(
            Calibrator::Ts {
                temperature: f64::NAN
            }
            .validate(2)
            .is_err()
        );
    }

    #[test]
    fn serialises_with_a_method_tag() {
        let json = serde_json::to_string(&Calibrator::Ts { temperature: 1.5 }).unwrap();
        assert_eq!(json, r#"{"method":"ts","temperature":1.5}"#);
    }
}
