//! Post-hoc calibrators: what they are (one serialisable enum), how they turn logits into
//! calibrated probabilities, and how they are fitted on validation logits.
//!
//! The server only calls [`Calibrator::probabilities`]; a new calibrator is a new enum variant
//! here and needs no change in the HTTP layer. Fitting lives in [`fit()`] (options in
//! [`FitOptions`]); definitions are in `docs/METHOD.md` and defaults in `docs/CALIBRATION.md`.
//! The `calib/<name>.json` file that stores one fitted to a model is
//! `crate::repository::CalibrationFile`.

mod binning;
mod fit;
mod nll_solver;
mod options;
mod pieces;
mod temperature;
mod vector;

pub use fit::{calibrate_rows, fit};
pub use options::{FitOptions, Method, Objective};

use serde::{Deserialize, Serialize};

use crate::numeric::{NonFinite, argmax, check_finite, softmax_in_place, softmax_with_temperature};

/// Errors from applying, fitting or loading a calibrator.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// A logit row held NaN or an infinity.
    #[error("logits must be finite: {0}")]
    NonFinite(#[from] NonFinite),
    /// A row of the fitting data held NaN or an infinity.
    #[error("logits must be finite: row {row}: {source}")]
    NonFiniteRow { row: usize, source: NonFinite },
    /// The row length does not match the calibrator's class count.
    #[error("calibrator expects {expected} classes, got {got}")]
    ClassMismatch { expected: usize, got: usize },
    /// A stored parameter is out of its domain (e.g. a temperature <= 0).
    #[error("invalid calibrator parameter: {0}")]
    InvalidParameter(String),
    /// No rows, or rows without classes, were given to fit on.
    #[error("cannot fit a calibrator on empty input")]
    Empty,
    /// Logit rows and labels differ in number.
    #[error("{rows} logit rows but {labels} labels")]
    LengthMismatch { rows: usize, labels: usize },
    /// A label is not a valid class index.
    #[error("label {label} of row {row} is out of range for {classes} classes")]
    LabelOutOfRange {
        row: usize,
        label: usize,
        classes: usize,
    },
    /// Too few samples for the requested pieces or bins.
    #[error(
        "{samples} samples are too few for {pieces} pieces of at least {min_per_piece} samples; \
         lower --pieces or use more validation data"
    )]
    TooFewSamples {
        samples: usize,
        pieces: usize,
        min_per_piece: usize,
    },
    /// A fitting option is out of range.
    #[error("invalid fit option: {0}")]
    InvalidOption(String),
    /// The data cannot identify the calibrator's parameters (explained in the message).
    #[error("degenerate fit: {0}")]
    Degenerate(String),
    /// Computing the fit summary's metrics failed.
    #[error("metrics: {0}")]
    Metrics(#[from] crate::trust::metrics::MetricsError),
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
    /// Vector scaling: softmax(w * z + b) with one weight and bias per class.
    Vector {
        /// Per-class weights.
        weights: Vec<f64>,
        /// Per-class biases.
        biases: Vec<f64>,
    },
    /// Adaptive piecewise temperature scaling (`docs/METHOD.md#ats`): the uncalibrated
    /// confidence picks a piece, the piece's temperature scales the logits.
    Ats {
        /// The M - 1 inner edges between pieces, ascending; piece m holds confidences in
        /// `(edges[m-1], edges[m]]`.
        edges: Vec<f64>,
        /// One temperature per piece (M values).
        temperatures: Vec<f64>,
        /// Mean uncalibrated confidence of each piece (where `smooth` anchors 1/T).
        centres: Vec<f64>,
        /// Interpolate 1/T linearly between piece centres instead of a step per piece.
        #[serde(default)]
        smooth: bool,
        /// The single global temperature the pieces were shrunk toward (informational).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        global_temperature: Option<f64>,
    },
    /// Histogram binning of the top label (Zadrozny and Elkan 2001): the top probability
    /// becomes the validation accuracy of its equal-mass confidence bin.
    Histogram {
        /// The inner edges between bins, ascending (bins - 1 values).
        edges: Vec<f64>,
        /// Calibrated top-label probability of each bin.
        values: Vec<f64>,
    },
    /// Isotonic regression of the top label (pool-adjacent-violators): a non-decreasing step
    /// function of the uncalibrated confidence.
    Isotonic {
        /// Lower confidence of each step, ascending.
        thresholds: Vec<f64>,
        /// Calibrated top-label probability of each step, non-decreasing.
        values: Vec<f64>,
    },
}

impl Calibrator {
    /// Short method name as written in files and responses.
    pub fn method(&self) -> &'static str {
        match self {
            Calibrator::Identity => "identity",
            Calibrator::Ts { .. } => "ts",
            Calibrator::Vector { .. } => "vector",
            Calibrator::Ats { .. } => "ats",
            Calibrator::Histogram { .. } => "histogram",
            Calibrator::Isotonic { .. } => "isotonic",
        }
    }

    /// Checks parameters once at load time so that `probabilities` cannot fail on them later.
    pub fn validate(&self, num_classes: usize) -> Result<(), CalibrationError> {
        let bad = |m: String| Err(CalibrationError::InvalidParameter(m));
        match self {
            Calibrator::Identity => Ok(()),
            Calibrator::Ts { temperature } => check_temperature(*temperature),
            Calibrator::Vector { weights, biases } => {
                if weights.len() != num_classes || biases.len() != num_classes {
                    return bad(format!(
                        "vector scaling needs {num_classes} weights and biases, got {} and {}",
                        weights.len(),
                        biases.len()
                    ));
                }
                if weights.iter().chain(biases).any(|v| !v.is_finite()) {
                    return bad("vector scaling parameters must be finite".into());
                }
                Ok(())
            }
            Calibrator::Ats {
                edges,
                temperatures,
                centres,
                global_temperature,
                ..
            } => {
                if temperatures.is_empty()
                    || edges.len() + 1 != temperatures.len()
                    || centres.len() != temperatures.len()
                {
                    return bad(format!(
                        "ats needs M temperatures, M centres and M - 1 edges, got {}, {} and {}",
                        temperatures.len(),
                        centres.len(),
                        edges.len()
                    ));
                }
                temperatures
                    .iter()
                    .try_for_each(|t| check_temperature(*t))?;
                if let Some(t) = global_temperature {
                    check_temperature(*t)?;
                }
                check_ascending("ats edges", edges)?;
                check_ascending("ats centres", centres)
            }
            Calibrator::Histogram { edges, values } => {
                if values.is_empty() || edges.len() + 1 != values.len() {
                    return bad(format!(
                        "histogram needs B values and B - 1 edges, got {} and {}",
                        values.len(),
                        edges.len()
                    ));
                }
                check_ascending("histogram edges", edges)?;
                check_probabilities("histogram values", values)
            }
            Calibrator::Isotonic { thresholds, values } => {
                if values.is_empty() || thresholds.len() != values.len() {
                    return bad(format!(
                        "isotonic needs as many thresholds as values, got {} and {}",
                        thresholds.len(),
                        values.len()
                    ));
                }
                check_ascending("isotonic thresholds", thresholds)?;
                check_probabilities("isotonic values", values)?;
                check_ascending("isotonic values", values)
            }
        }
    }

    /// Calibrated class probabilities for one row of logits (sums to 1). Cheap enough to call
    /// per request: O(K) plus a binary search over pieces or bins.
    pub fn probabilities(&self, logits: &[f64]) -> Result<Vec<f64>, CalibrationError> {
        check_finite(logits)?;
        if logits.is_empty() {
            return Err(CalibrationError::ClassMismatch {
                expected: 1,
                got: 0,
            });
        }
        Ok(match self {
            Calibrator::Identity => softmax_with_temperature(logits, 1.0),
            Calibrator::Ts { temperature } => softmax_with_temperature(logits, *temperature),
            Calibrator::Vector { weights, biases } => {
                if logits.len() != weights.len() {
                    return Err(CalibrationError::ClassMismatch {
                        expected: weights.len(),
                        got: logits.len(),
                    });
                }
                let mut v: Vec<f64> = logits
                    .iter()
                    .zip(weights.iter().zip(biases))
                    .map(|(z, (w, b))| w * z + b)
                    .collect();
                softmax_in_place(&mut v);
                v
            }
            Calibrator::Ats {
                edges,
                temperatures,
                centres,
                smooth,
                ..
            } => {
                let c = pieces::top_confidence(logits);
                let t = if *smooth {
                    1.0 / temperature::interpolate_beta(centres, temperatures, c)
                } else {
                    temperatures[pieces::piece_of(edges, c)]
                };
                softmax_with_temperature(logits, t)
            }
            Calibrator::Histogram { edges, values } => {
                binning::rescale_top(logits, |c| values[pieces::piece_of(edges, c)])
            }
            Calibrator::Isotonic { thresholds, values } => binning::rescale_top(logits, |c| {
                values[thresholds.partition_point(|&x| x <= c).saturating_sub(1)]
            }),
        })
    }

    /// True for calibrators that only rescale logits by a positive temperature, which never
    /// changes the argmax (accuracy is preserved exactly).
    pub fn preserves_argmax(&self) -> bool {
        matches!(
            self,
            Calibrator::Identity | Calibrator::Ts { .. } | Calibrator::Ats { .. }
        )
    }

    /// The calibrated top class and its probability (what a reliability diagram plots).
    pub fn top(&self, logits: &[f64]) -> Result<(usize, f64), CalibrationError> {
        let p = self.probabilities(logits)?;
        let k = argmax(&p);
        Ok((k, p[k]))
    }
}

fn check_temperature(t: f64) -> Result<(), CalibrationError> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(CalibrationError::InvalidParameter(format!(
            "temperature must be finite and > 0, got {t}"
        )))
    }
}

fn check_ascending(what: &str, v: &[f64]) -> Result<(), CalibrationError> {
    if v.iter().any(|x| !x.is_finite()) || v.windows(2).any(|w| w[1] < w[0]) {
        return Err(CalibrationError::InvalidParameter(format!(
            "{what} must be finite and ascending"
        )));
    }
    Ok(())
}

fn check_probabilities(what: &str, v: &[f64]) -> Result<(), CalibrationError> {
    if v.iter().any(|x| !(0.0..=1.0).contains(x)) {
        return Err(CalibrationError::InvalidParameter(format!(
            "{what} must lie in [0, 1]"
        )));
    }
    Ok(())
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

    fn ats() -> Calibrator {
        Calibrator::Ats {
            edges: vec![0.6],
            temperatures: vec![1.0, 2.0],
            centres: vec![0.5, 0.9],
            smooth: false,
            global_temperature: Some(1.5),
        }
    }

    #[test]
    fn ats_picks_the_piece_of_the_uncalibrated_confidence() {
        // softmax([0, 0]) has confidence 0.5 -> piece 0 (T = 1); [4, 0] has 0.982 -> T = 2.
        let low = ats().probabilities(&[0.0, 0.0]).unwrap();
        assert!((low[0] - 0.5).abs() < 1e-12);
        let high = ats().probabilities(&[4.0, 0.0]).unwrap();
        let expect = softmax_with_temperature(&[4.0, 0.0], 2.0);
        assert!((high[0] - expect[0]).abs() < 1e-12);
        assert!(ats().validate(2).is_ok());
        let Calibrator::Ats { edges, .. } = ats() else {
            unreachable!()
        };
        let broken = Calibrator::Ats {
            edges,
            temperatures: vec![1.0],
            centres: vec![0.5],
            smooth: false,
            global_temperature: None,
        };
        assert!(broken.validate(2).is_err());
    }

    #[test]
    fn vector_scaling_checks_class_count() {
        let v = Calibrator::Vector {
            weights: vec![1.0, 1.0],
            biases: vec![0.0, 0.0],
        };
        assert!(v.validate(2).is_ok() && v.validate(3).is_err());
        assert!(matches!(
            v.probabilities(&[1.0, 2.0, 3.0]),
            Err(CalibrationError::ClassMismatch { .. })
        ));
    }

    #[test]
    fn top_label_methods_rescale_the_rest_to_sum_one() {
        let h = Calibrator::Histogram {
            edges: vec![0.7],
            values: vec![0.4, 0.8],
        };
        let p = h.probabilities(&[2.0, 1.0, 0.0]).unwrap();
        // softmax confidence 0.665 -> bin 0 -> top = 0.4; others keep their 0.245 : 0.090 ratio.
        assert!((p[0] - 0.4).abs() < 1e-12);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((p[1] / p[2] - 1f64.exp()).abs() < 1e-9);
        let bad = Calibrator::Isotonic {
            thresholds: vec![0.1, 0.5],
            values: vec![0.9, 0.3],
        };
        assert!(bad.validate(3).is_err());
    }
}
