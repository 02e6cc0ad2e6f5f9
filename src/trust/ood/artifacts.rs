//! What the calibration file carries for trust decisions, fitted in one place so that the
//! trainer's export and `caliper calibrate` write identical artifacts: one OOD threshold per
//! score at 95% TPR of the in-distribution validation data (plus the feature-based detectors,
//! [`FeatureDetectors`], when features are given), split-conformal LAC, APS, randomised APS and RAPS predictors on the
//! calibrated validation probabilities, and the confidence reference of the live monitor's
//! drift test.
//!
//! MSP is taken on the *calibrated* probabilities (issue 5: "MSP (on calibrated
//! probabilities)"), so the served `msp` score and its threshold agree with the served
//! confidence; max-logit, energy and entropy are computed on the raw logits.

use std::collections::BTreeMap;

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::LogitScores;
use super::detectors::{FEATURE_METHODS, FeatureDetectors, FeatureFit};
use super::fit::{OodError, Threshold};
use crate::trust::calibration::{CalibrationError, Calibrator, calibrate_rows};
use crate::trust::conformal::{ConformalError, ScoreKind, SplitConformal};
use crate::trust::metrics::ConfidenceReference;

/// True-positive rate of in-distribution validation data the thresholds keep.
pub const DEFAULT_TPR: f64 = 0.95;
/// Default miscoverage level of the conformal predictors.
pub const DEFAULT_ALPHA: f64 = 0.1;
/// Default OOD score named in the file (the server's `ood.method`).
pub const DEFAULT_METHOD: &str = "msp";
/// Every score name, in the order reports list them (the last four only with features).
pub const METHODS: [&str; 8] = [
    "msp",
    "max_logit",
    "energy",
    "entropy",
    "mahalanobis",
    "rmds",
    "knn",
    "vim",
];

/// Whether score `name` needs penultimate features.
pub fn needs_features(name: &str) -> bool {
    FEATURE_METHODS.contains(&name)
}
/// Quantile levels of the stored confidence reference.
pub const REFERENCE_LEVELS: usize = 201;

/// Errors of fitting the trust artifacts. Each message already carries its cause, so the
/// cause is not also exposed as `source()`: an error chain printed with `{:#}` (the binaries'
/// `error: ...` line) would otherwise say it twice.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Calibrating the validation logits failed.
    #[error("calibrating validation logits: {0}")]
    Calibration(CalibrationError),
    /// An OOD threshold or detector could not be fitted.
    #[error("fitting OOD thresholds: {0}")]
    Ood(OodError),
    /// A conformal predictor could not be fitted.
    #[error("fitting conformal predictors: {0}")]
    Conformal(ConformalError),
    /// No finite calibrated confidence to build the reference from.
    #[error("no finite validation confidence for the drift reference")]
    EmptyReference,
}

impl From<CalibrationError> for ArtifactError {
    fn from(e: CalibrationError) -> Self {
        ArtifactError::Calibration(e)
    }
}

impl From<OodError> for ArtifactError {
    fn from(e: OodError) -> Self {
        ArtifactError::Ood(e)
    }
}

impl From<ConformalError> for ArtifactError {
    fn from(e: ConformalError) -> Self {
        ArtifactError::Conformal(e)
    }
}

/// The `ood` section of a calibration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodCalibration {
    /// Score the server reports as `ood.method` and decides `is_ood` with.
    pub method: String,
    /// One threshold per score name ([`METHODS`]).
    pub thresholds: BTreeMap<String, Threshold>,
    /// The feature-based detectors, when the model exports features (stored as fields of this
    /// section: `mahalanobis`, `rmds_background`, `knn`, `vim`).
    #[serde(flatten)]
    pub detectors: FeatureDetectors,
}

impl OodCalibration {
    /// Makes `method` the score the server decides `is_ood` with; it must have a threshold
    /// (`mahalanobis` has one only when the file was fitted with features).
    pub fn with_method(mut self, method: &str) -> Result<Self, OodError> {
        if !self.thresholds.contains_key(method) {
            let have: Vec<&str> = self.thresholds.keys().map(String::as_str).collect();
            return Err(OodError::InvalidOption(format!(
                "OOD method {method:?} has no fitted threshold (fitted: {})",
                have.join(", ")
            )));
        }
        self.method = method.to_string();
        Ok(self)
    }

    /// Every score of one row: [`named_scores`] plus the feature-based ones this file has
    /// detectors for, when the row's `features` are given. A feature vector a detector cannot
    /// score (wrong length, non-finite) scores NaN, which [`Threshold::is_ood`] flags.
    pub fn scores(
        &self,
        logits: &[f64],
        calibrated: &[f64],
        features: Option<&[f64]>,
    ) -> BTreeMap<&'static str, f64> {
        let mut s = named_scores(logits, calibrated);
        if let Some(f) = features {
            self.detectors.score_into(f, logits, &mut s);
        }
        s
    }
}

/// The `conformal` section of a calibration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConformalCalibration {
    /// Default miscoverage level (a request's `?alpha=` overrides it).
    pub alpha: f64,
    /// Score served when a request names none (`?conformal=` overrides it); files written
    /// before it existed served LAC.
    #[serde(default)]
    pub default_score: ScoreKind,
    /// Least-ambiguous set-valued classifier (score `1 - p_y`).
    pub lac: SplitConformal,
    /// Adaptive prediction sets, non-randomised.
    pub aps: SplitConformal,
    /// Randomised APS (absent from files fitted before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aps_randomized: Option<SplitConformal>,
    /// RAPS (absent from files fitted before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raps: Option<SplitConformal>,
}

impl ConformalCalibration {
    /// Fits every score on calibrated validation probabilities `[N, K]`, with the fixed seed
    /// of [`SplitConformal::fit`] so a refit of the same data writes the same file.
    pub fn fit(
        probs: ArrayView2<'_, f64>,
        labels: &[usize],
        alpha: f64,
    ) -> Result<Self, ConformalError> {
        let fit = |score| SplitConformal::fit(probs, labels, score, alpha);
        Ok(ConformalCalibration {
            alpha,
            default_score: ScoreKind::default(),
            lac: fit(ScoreKind::Lac)?,
            aps: fit(ScoreKind::Aps)?,
            aps_randomized: Some(fit(ScoreKind::ApsRandomized)?),
            raps: Some(fit(ScoreKind::Raps)?),
        })
    }

    /// The predictor of `score`, when this file has it.
    pub fn predictor(&self, score: ScoreKind) -> Option<&SplitConformal> {
        match score {
            ScoreKind::Lac => Some(&self.lac),
            ScoreKind::Aps => Some(&self.aps),
            ScoreKind::ApsRandomized => self.aps_randomized.as_ref(),
            ScoreKind::Raps => self.raps.as_ref(),
        }
    }
}

/// Penultimate features for the feature-based detectors: validation rows (to fit their
/// thresholds, and ViM's last layer) and training rows with labels (to fit the detectors).
#[derive(Debug, Clone, Copy)]
pub struct FeatureData<'a> {
    /// Validation features `[N_val, D]`, in the order of the validation logits.
    pub val: ArrayView2<'a, f64>,
    /// Training features `[N_train, D]`.
    pub train: ArrayView2<'a, f64>,
    /// Training labels.
    pub train_labels: &'a [usize],
}

/// Everything [`fit_trust_artifacts`] returns.
#[derive(Debug, Clone)]
pub struct TrustArtifacts {
    /// OOD thresholds and detector.
    pub ood: OodCalibration,
    /// Conformal predictors.
    pub conformal: ConformalCalibration,
    /// Quantiles of the calibrated validation confidence.
    pub reference: ConfidenceReference,
    /// Feature-based detectors that were left out, and why.
    pub warnings: Vec<String>,
}

/// Named OOD scores of one row: the logit scores, MSP replaced by its calibrated value.
pub fn named_scores(logits: &[f64], calibrated: &[f64]) -> BTreeMap<&'static str, f64> {
    let s = LogitScores::from_logits(logits);
    let max_p = calibrated.iter().copied().fold(0.0, f64::max);
    BTreeMap::from([
        ("msp", 1.0 - max_p),
        ("max_logit", s.max_logit),
        ("energy", s.energy),
        ("entropy", s.entropy),
    ])
}

/// Every served score of every row, by name: [`named_scores`] of the logits `[N, K]` and their
/// calibrated probabilities, plus the feature-based scores of the features `[N, D]` when
/// detectors are given with them. Non-finite features are an error here (offline data).
pub fn score_rows(
    logits: ArrayView2<'_, f64>,
    calibrated: ArrayView2<'_, f64>,
    features: Option<(ArrayView2<'_, f64>, &FeatureDetectors)>,
) -> Result<BTreeMap<String, Vec<f64>>, OodError> {
    if let Some((f, _)) = features {
        if f.nrows() != logits.nrows() {
            return Err(OodError::Shape(format!(
                "{} feature rows for {} logit rows",
                f.nrows(),
                logits.nrows()
            )));
        }
        super::fit::check_rows("features", f)?;
    }
    let mut per_score: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (i, (z, p)) in logits.outer_iter().zip(calibrated.outer_iter()).enumerate() {
        let z = z.to_vec();
        let mut row = named_scores(&z, &p.to_vec());
        if let Some((f, d)) = features {
            d.score_into(&f.row(i).to_vec(), &z, &mut row);
        }
        for (name, v) in row {
            per_score.entry(name.to_string()).or_default().push(v);
        }
    }
    Ok(per_score)
}

/// Fits the OOD thresholds, the conformal predictors and the confidence reference on the
/// validation logits `[N, K]` and labels, after `calibrator`.
pub fn fit_trust_artifacts(
    logits: ArrayView2<'_, f64>,
    labels: &[usize],
    features: Option<FeatureData<'_>>,
    calibrator: &Calibrator,
) -> Result<TrustArtifacts, ArtifactError> {
    let probs = calibrate_rows(calibrator, logits)?;
    let confidences: Vec<f64> = probs
        .outer_iter()
        .map(|p| p.iter().copied().fold(0.0, f64::max))
        .collect();
    let (detectors, warnings) = match features {
        Some(f) => FeatureDetectors::fit(FeatureFit {
            train: f.train,
            train_labels: f.train_labels,
            val: f.val,
            val_logits: logits,
            classes: logits.ncols(),
        })?,
        None => Default::default(),
    };
    let per_score = score_rows(logits, probs.view(), features.map(|f| (f.val, &detectors)))?;
    let thresholds = per_score
        .iter()
        .map(|(name, v)| Ok((name.clone(), Threshold::fit(v, DEFAULT_TPR)?)))
        .collect::<Result<BTreeMap<_, _>, OodError>>()?;
    let conformal = ConformalCalibration::fit(probs.view(), labels, DEFAULT_ALPHA)?;
    let reference = ConfidenceReference::from_confidences(&confidences, REFERENCE_LEVELS)
        .ok_or(ArtifactError::EmptyReference)?;
    Ok(TrustArtifacts {
        ood: OodCalibration {
            method: DEFAULT_METHOD.to_string(),
            thresholds,
            detectors,
        },
        conformal,
        reference,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn data() -> (Array2<f64>, Vec<usize>) {
        // 200 rows, 3 classes: a confident diagonal with a deterministic spread of margins.
        let n = 200;
        let mut z = Array2::zeros((n, 3));
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % 3;
            z[[i, c]] = 0.5 + (i as f64) * 0.03;
            z[[i, (c + 1) % 3]] = 0.2 * ((i * 7 % 5) as f64);
            y.push(if i % 10 == 0 { (c + 1) % 3 } else { c });
        }
        (z, y)
    }

    #[test]
    fn thresholds_keep_95_percent_of_validation_and_sets_cover() {
        let (z, y) = data();
        let t = Calibrator::Ts { temperature: 1.5 };
        let a = fit_trust_artifacts(z.view(), &y, None, &t).unwrap();
        let probs = calibrate_rows(&t, z.view()).unwrap();
        assert_eq!(a.ood.thresholds.len(), 4);
        for (name, th) in &a.ood.thresholds {
            let kept = z
                .outer_iter()
                .zip(probs.outer_iter())
                .filter(|(zr, pr)| {
                    !th.is_ood(named_scores(&zr.to_vec(), &pr.to_vec())[name.as_str()])
                })
                .count();
            assert!(kept as f64 >= 0.95 * 200.0, "{name} kept {kept}");
        }
        // In-sample coverage of the conformal sets is at least 1 - alpha.
        for score in ScoreKind::ALL {
            let c = a.conformal.predictor(score).unwrap();
            assert_eq!(c.score, score);
            let sets = c.predict_sets(probs.view(), 0.1).unwrap();
            let (cov, _) = crate::trust::conformal::coverage_and_size(&sets, &y);
            assert!(cov >= 0.9, "coverage {cov}");
        }
        assert_eq!(a.reference.n, 200);
        assert_eq!(a.reference.quantiles.len(), REFERENCE_LEVELS);
    }

    #[test]
    fn a_conformal_section_from_before_randomised_aps_and_raps_still_loads() {
        let old = r#"{"alpha": 0.1,
            "lac": {"score": "lac", "alpha": 0.1, "scores": [0.1, 0.2]},
            "aps": {"score": "aps", "alpha": 0.1, "scores": [0.5, 0.9]}}"#;
        let c: ConformalCalibration = serde_json::from_str(old).unwrap();
        assert_eq!(c.default_score, ScoreKind::Lac);
        assert!(c.predictor(ScoreKind::Aps).is_some());
        assert!(c.predictor(ScoreKind::ApsRandomized).is_none());
        assert!(c.predictor(ScoreKind::Raps).is_none());
        // A new fit has every score and round-trips.
        let (z, y) = data();
        let a = fit_trust_artifacts(z.view(), &y, None, &Calibrator::Identity).unwrap();
        let json = serde_json::to_string(&a.conformal).unwrap();
        assert!(json.contains("\"default_score\":\"lac\"") && json.contains("\"raps\""));
        assert_eq!(
            serde_json::from_str::<ConformalCalibration>(&json).unwrap(),
            a.conformal
        );
    }

    #[test]
    fn msp_is_taken_on_calibrated_probabilities() {
        let s = named_scores(&[3.0, 0.0], &[0.6, 0.4]);
        assert!((s["msp"] - 0.4).abs() < 1e-12);
        assert!((s["max_logit"] + 3.0).abs() < 1e-12);
    }

    #[test]
    fn mahalanobis_is_fitted_when_features_are_given() {
        let (z, y) = data();
        let f = z.clone();
        let feats = FeatureData {
            val: f.view(),
            train: f.view(),
            train_labels: &y,
        };
        let a = fit_trust_artifacts(z.view(), &y, Some(feats), &Calibrator::Identity).unwrap();
        assert!(a.ood.detectors.mahalanobis.is_some());
        assert!(a.ood.thresholds.contains_key("mahalanobis"));
        let row = [0.5, 0.2, 0.0];
        let s = a.ood.scores(&row, &[0.4, 0.3, 0.3], Some(&row));
        // The 4 logit scores plus Mahalanobis, RMDS, KNN and ViM.
        assert_eq!(s.len(), 8, "{s:?} {:?}", a.warnings);
        assert!(a.ood.thresholds.contains_key("vim"), "{:?}", a.warnings);
        assert!(s["mahalanobis"].is_finite() && s["mahalanobis"] >= 0.0);
        // No features: no Mahalanobis score; features of the wrong width: NaN (flagged).
        assert!(
            !a.ood
                .scores(&row, &[0.4, 0.3, 0.3], None)
                .contains_key("mahalanobis")
        );
        assert!(a.ood.scores(&row, &[0.4, 0.3, 0.3], Some(&row[..2]))["mahalanobis"].is_nan());
        let m = a.ood.clone().with_method("mahalanobis").unwrap();
        assert_eq!(m.method, "mahalanobis");
        let e = a.ood.with_method("odin").unwrap_err().to_string();
        assert!(e.contains("odin") && e.contains("mahalanobis"), "{e}");
        let plain = fit_trust_artifacts(z.view(), &y, None, &Calibrator::Identity).unwrap();
        assert!(plain.ood.with_method("mahalanobis").is_err());
    }

    #[test]
    fn a_missing_class_is_named_once_in_the_error_chain() {
        let (z, y) = data();
        let train = Array2::from_shape_vec((4, 2), vec![0., 1., 1., 0., 2., 3., 3., 2.]).unwrap();
        let val = Array2::<f64>::zeros((z.nrows(), 2));
        let f = FeatureData {
            val: val.view(),
            train: train.view(),
            train_labels: &[0, 0, 1, 1],
        };
        let e = fit_trust_artifacts(z.view(), &y, Some(f), &Calibrator::Identity).unwrap_err();
        let shown = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            shown.matches("has no training samples").count(),
            1,
            "{shown}"
        );
    }

    #[test]
    fn mismatched_labels_are_an_error() {
        let (z, y) = data();
        assert!(fit_trust_artifacts(z.view(), &y[..10], None, &Calibrator::Identity).is_err());
    }
}
