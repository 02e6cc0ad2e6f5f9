//! `calib/<name>.json`: a calibrator fitted to exactly one model file (recorded by its sha256),
//! with a versioned schema documented in `docs/FORMATS.md`. Written atomically (temp file +
//! rename) so a crash never leaves a half-written calibrator that the server would refuse.

use std::path::Path;

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use crate::trust::calibration::{CalibrationError, Calibrator, FitOptions, calibrate_rows};
use crate::trust::diagram::ReliabilityPanel;
use crate::trust::metrics::{Bin, MetricReport, Samples};

/// Classes up to which a fit stores its validation confusion matrix (K^2 numbers).
pub const MAX_CONFUSION_CLASSES: usize = 100;

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
    /// What the fit saw and how the validation metrics moved (optional: hand-written files and
    /// files from before this field was typed load without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<FitSummary>,
    /// Quantiles of the calibrated validation confidences: the live monitor's label-free drift
    /// test compares served confidences against them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::trust::metrics::ConfidenceReference>,
    /// OOD thresholds (one per score, 95% TPR of validation data) and the default method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ood: Option<crate::trust::ood::artifacts::OodCalibration>,
    /// Split-conformal LAC and APS predictors on the calibrated validation probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conformal: Option<crate::trust::ood::artifacts::ConformalCalibration>,
    /// Where the file came from when the server fitted it from label feedback (absent for files
    /// written by `caliper calibrate` and the trainer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<FeedbackProvenance>,
}

/// How a calibration file fitted from label feedback came about (issue 22): the labels it saw,
/// when they arrived, what it replaced, and the held-out check made before it was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct FeedbackProvenance {
    /// Always "fitted from feedback" for now.
    pub source: String,
    /// `manual` (`POST /v2/repository/models/M/recalibrate`) or `auto` (`--auto-recalibrate`).
    pub trigger: String,
    /// Labelled predictions the calibrator was fitted on.
    pub labels: usize,
    /// Arrival time (Unix seconds) of the first label used.
    pub first_label_s: u64,
    /// Arrival time (Unix seconds) of the last label used.
    pub last_label_s: u64,
    /// When the file was fitted (Unix seconds).
    pub fitted_at_s: u64,
    /// Calibrator method of the file it replaced (`identity` when there was none).
    pub replaced: String,
    /// The check made before writing: a fit on the older labels scored on the newer ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_out: Option<HeldOutCheck>,
}

/// A calibrator fitted on the first labels of a window and scored, with the incumbent, on the
/// rest (the newest): out-of-sample figures for both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct HeldOutCheck {
    /// Labels the trial calibrator was fitted on (the oldest).
    pub fit_labels: usize,
    /// Labels both were scored on (the newest).
    pub held_out_labels: usize,
    /// The incumbent calibrator on the held-out labels.
    pub before: HeldOutFigures,
    /// The trial calibrator on the held-out labels.
    pub after: HeldOutFigures,
}

/// Figures of one calibrator on held-out labels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct HeldOutFigures {
    /// Mean negative log-likelihood.
    pub nll: f64,
    /// ECE (equal-width bins).
    pub ece: f64,
    /// Accuracy.
    pub accuracy: f64,
}

/// What a fit saw and what it did to the validation metrics. Every field is optional on read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct FitSummary {
    /// Where the validation data came from (file paths or a dataset spec).
    pub source: String,
    /// Number of validation samples.
    pub samples: usize,
    /// Validation samples per class, in class order (the source prior of the label-shift
    /// estimates).
    pub label_counts: Vec<usize>,
    /// Validation confusion matrix of the calibrated argmax, `confusion[predicted][label]`, for
    /// models with at most [`MAX_CONFUSION_CLASSES`] classes: black-box shift estimation needs
    /// it (issue 22). Absent from files fitted before it existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Vec<Vec<u64>>>,
    /// The options the fit ran with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<FitOptions>,
    /// Validation metrics of the plain softmax.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<MetricReport>,
    /// Validation metrics after calibration (in-sample: the same data the fit saw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<MetricReport>,
    /// Equal-width reliability bins before and after, so a server can draw the validation
    /// reliability diagram without the data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reliability: Option<ReliabilitySummary>,
    /// The program that wrote the file, e.g. "caliper 0.1.0".
    pub created_by: String,
}

/// Reliability-diagram bins of the validation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ReliabilitySummary {
    /// Bins of the plain softmax.
    pub before: Vec<Bin>,
    /// Bins of the calibrated probabilities.
    pub after: Vec<Bin>,
}

impl FitSummary {
    /// The validation reliability diagram (before / after), if the summary has its bins. This
    /// is what `GET /v1/models/{model}/reliability.svg` serves.
    pub fn reliability_panels(&self, method: &str) -> Option<Vec<ReliabilityPanel>> {
        let r = self.reliability.as_ref()?;
        Some(vec![
            ReliabilityPanel::from_bins("Uncalibrated (validation)", &r.before),
            ReliabilityPanel::from_bins(&format!("Calibrated: {method} (validation)"), &r.after),
        ])
    }

    /// Summarises a fit: label counts and the metrics (with `bins` bins) of the validation
    /// logits before and after `calibrator`.
    pub fn compute(
        source: &str,
        logits: ArrayView2<'_, f64>,
        labels: &[usize],
        calibrator: &Calibrator,
        options: &FitOptions,
        bins: usize,
    ) -> Result<Self, CalibrationError> {
        let mut label_counts = vec![0; logits.ncols()];
        for &y in labels {
            if let Some(c) = label_counts.get_mut(y) {
                *c += 1;
            }
        }
        let all: Vec<usize> = (0..labels.len()).collect();
        let mut reports = Vec::with_capacity(2);
        let mut bin_sets = Vec::with_capacity(2);
        for c in [&Calibrator::Identity, calibrator] {
            let probs = calibrate_rows(c, logits)?;
            let samples = Samples::new(probs.view(), labels)?;
            reports.push(samples.report(&all, bins)?);
            bin_sets.push(samples.binned(&all, bins)?.bin_stats());
        }
        let confusion = (logits.ncols() <= MAX_CONFUSION_CLASSES)
            .then(|| confusion_matrix(calibrator, logits, labels))
            .transpose()?;
        let after_bins = bin_sets.pop().unwrap_or_default();
        let before_bins = bin_sets.pop().unwrap_or_default();
        let after = reports.pop();
        let before = reports.pop();
        Ok(Self {
            source: source.to_string(),
            samples: labels.len(),
            label_counts,
            confusion,
            options: Some(options.clone()),
            before,
            after,
            reliability: Some(ReliabilitySummary {
                before: before_bins,
                after: after_bins,
            }),
            created_by: concat!("caliper ", env!("CARGO_PKG_VERSION")).to_string(),
        })
    }
}

/// `confusion[predicted][label]` of the calibrated argmax over `logits`.
fn confusion_matrix(
    calibrator: &Calibrator,
    logits: ArrayView2<'_, f64>,
    labels: &[usize],
) -> Result<Vec<Vec<u64>>, CalibrationError> {
    let k = logits.ncols();
    let probs = calibrate_rows(calibrator, logits)?;
    let mut c = vec![vec![0u64; k]; k];
    for (row, &y) in probs.rows().into_iter().zip(labels) {
        let top = (0..k)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        if y < k {
            c[top][y] += 1;
        }
    }
    Ok(c)
}

impl CalibrationFile {
    /// A file of the current schema for `calibrator` fitted to the model `model`.
    pub fn new(
        model: &str,
        model_sha256: &str,
        num_classes: usize,
        calibrator: Calibrator,
        fit: Option<FitSummary>,
    ) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            model: model.to_string(),
            model_sha256: model_sha256.to_string(),
            num_classes,
            calibrator,
            fit,
            reference: None,
            ood: None,
            conformal: None,
            provenance: None,
        }
    }

    /// Attaches the OOD thresholds, conformal predictors and confidence reference.
    pub fn with_trust(mut self, trust: crate::trust::ood::artifacts::TrustArtifacts) -> Self {
        self.ood = Some(trust.ood);
        self.conformal = Some(trust.conformal);
        self.reference = Some(trust.reference);
        self
    }

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
            reference: None,
            ood: None,
            conformal: None,
            provenance: None,
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
