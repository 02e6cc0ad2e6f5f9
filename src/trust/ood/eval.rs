//! OOD evaluation of a model (`caliper eval-ood`): every score on an in-distribution set and an
//! out-of-distribution set, with AUROC, FPR at 95% TPR and AUPR ([`ood_metrics`]), and how the
//! calibration file's fitted thresholds do on both sets.
//!
//! The scores are exactly the served ones ([`score_rows`]: MSP on calibrated probabilities,
//! max-logit, energy and entropy on the raw logits, Mahalanobis on the features), plus the
//! other side of the two that calibration changes: `msp_raw` (MSP of the uncalibrated softmax)
//! and `entropy_calibrated` (entropy of the calibrated probabilities). Higher = more OOD.

use std::collections::BTreeMap;

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::artifacts::{ArtifactError, OodCalibration, score_rows};
use super::detectors::FeatureDetectors;
use super::fit::{OodError, OodMetrics, ood_metrics};
use super::{LogitScores, entropy};
use crate::trust::calibration::{Calibrator, calibrate_rows};

/// A model's outputs over one dataset.
#[derive(Debug, Clone, Copy)]
pub struct SetOutputs<'a> {
    /// Raw logits `[N, K]`.
    pub logits: ArrayView2<'a, f64>,
    /// Penultimate features `[N, D]`, when the model exports them.
    pub features: Option<ArrayView2<'a, f64>>,
}

/// The evaluation of one score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreReport {
    /// What the score is computed from: `calibrated` probabilities, `raw` logits or softmax, or
    /// `features`.
    pub input: String,
    /// AUROC, FPR at 95% TPR, AUPR-Out and AUPR-In.
    #[serde(flatten)]
    pub metrics: OodMetrics,
    /// The calibration file's threshold for this score (fitted at 95% TPR of validation data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Fraction of the in-distribution set that threshold flags (about 0.05 when the set is
    /// distributed like the validation data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_flagged: Option<f64>,
    /// Fraction of the OOD set it flags (the detection rate the server would achieve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ood_flagged: Option<f64>,
}

/// Every score's evaluation, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodEvaluation {
    /// Score name -> its report.
    pub scores: BTreeMap<String, ScoreReport>,
}

/// Named scores of one set: the served ones plus `msp_raw` and `entropy_calibrated`.
fn all_scores(
    set: SetOutputs<'_>,
    calibrator: &Calibrator,
    detectors: Option<&FeatureDetectors>,
) -> Result<BTreeMap<String, Vec<f64>>, ArtifactError> {
    let probs = calibrate_rows(calibrator, set.logits)?;
    let mut s = score_rows(set.logits, probs.view(), set.features.zip(detectors))?;
    let raw: Vec<LogitScores> = set
        .logits
        .outer_iter()
        .map(|z| LogitScores::from_logits(&z.to_vec()))
        .collect();
    s.insert("msp_raw".into(), raw.iter().map(|r| r.msp).collect());
    s.insert(
        "entropy_calibrated".into(),
        probs.outer_iter().map(|p| entropy(&p.to_vec())).collect(),
    );
    Ok(s)
}

/// What a score is computed from.
fn input_of(name: &str) -> &'static str {
    match name {
        "msp" | "entropy_calibrated" => "calibrated",
        name if super::artifacts::needs_features(name) => "features",
        _ => "raw",
    }
}

fn fraction_above(scores: &[f64], threshold: f64) -> f64 {
    scores
        .iter()
        .filter(|&&s| s.is_nan() || s > threshold)
        .count() as f64
        / scores.len() as f64
}

/// Evaluates every score on `id` (in-distribution) against `ood` after `calibrator`.
/// The feature-based scores are included when `ood_file` has detectors and both sets have
/// features; the
/// file's thresholds, when given, are applied to both sets.
pub fn evaluate(
    id: SetOutputs<'_>,
    ood: SetOutputs<'_>,
    calibrator: &Calibrator,
    ood_file: Option<&OodCalibration>,
) -> Result<OodEvaluation, ArtifactError> {
    if id.logits.ncols() != ood.logits.ncols() {
        return Err(OodError::Shape(format!(
            "{} classes in-distribution, {} out-of-distribution",
            id.logits.ncols(),
            ood.logits.ncols()
        ))
        .into());
    }
    let detectors = ood_file.map(|o| &o.detectors);
    let id_s = all_scores(id, calibrator, detectors)?;
    let mut ood_s = all_scores(ood, calibrator, detectors)?;
    let mut scores = BTreeMap::new();
    for (name, a) in id_s {
        // Mahalanobis needs features on both sides.
        let Some(b) = ood_s.remove(&name) else {
            continue;
        };
        let threshold = ood_file
            .and_then(|o| o.thresholds.get(&name))
            .map(|t| t.threshold);
        scores.insert(
            name.clone(),
            ScoreReport {
                input: input_of(&name).to_string(),
                metrics: ood_metrics(&a, &b)?,
                threshold,
                id_flagged: threshold.map(|t| fraction_above(&a, t)),
                ood_flagged: threshold.map(|t| fraction_above(&b, t)),
            },
        );
    }
    Ok(OodEvaluation { scores })
}

impl OodEvaluation {
    /// A Markdown table, one row per score, best AUROC first.
    pub fn markdown(&self) -> String {
        let mut rows: Vec<(&String, &ScoreReport)> = self.scores.iter().collect();
        rows.sort_by(|a, b| b.1.metrics.auroc.total_cmp(&a.1.metrics.auroc));
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}", 100.0 * v));
        let mut out = String::from(
            "| score | input | AUROC % | FPR@95%TPR % | AUPR-Out % | AUPR-In % | ID flagged % | OOD flagged % |\n\
             | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for (name, r) in rows {
            let m = &r.metrics;
            out.push_str(&format!(
                "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
                r.input,
                100.0 * m.auroc,
                100.0 * m.fpr_at_95_tpr,
                100.0 * m.aupr_out,
                100.0 * m.aupr_in,
                pct(r.id_flagged),
                pct(r.ood_flagged),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::ood::artifacts::{FeatureData, fit_trust_artifacts};
    use ndarray::Array2;

    fn set(z: &Array2<f64>) -> SetOutputs<'_> {
        SetOutputs {
            logits: z.view(),
            features: None,
        }
    }

    /// Confident rows (one large logit) and flat rows (small logits).
    fn rows(n: usize, margin: f64, offset: usize) -> Array2<f64> {
        Array2::from_shape_fn((n, 3), |(i, j)| {
            let c = (i + offset) % 3;
            if j == c {
                margin + (i % 7) as f64 * 0.1
            } else {
                0.05 * ((i + j) % 5) as f64
            }
        })
    }

    #[test]
    fn separable_sets_score_near_one_and_every_metric_is_in_range() {
        let id = rows(300, 6.0, 0);
        let ood = rows(200, 0.3, 1);
        let labels: Vec<usize> = (0..300).map(|i| i % 3).collect();
        let cal = Calibrator::Ts { temperature: 1.3 };
        let feats = FeatureData {
            val: id.view(),
            train: id.view(),
            train_labels: &labels,
        };
        let trust = fit_trust_artifacts(id.view(), &labels, Some(feats), &cal).unwrap();
        // Without features on the sets, no Mahalanobis row.
        let e = evaluate(set(&id), set(&ood), &cal, Some(&trust.ood)).unwrap();
        assert!(!e.scores.contains_key("mahalanobis"));
        let e = evaluate(
            SetOutputs {
                logits: id.view(),
                features: Some(id.view()),
            },
            SetOutputs {
                logits: ood.view(),
                features: Some(ood.view()),
            },
            &cal,
            Some(&trust.ood),
        )
        .unwrap();
        // The 6 logit scores plus Mahalanobis, RMDS, KNN and ViM.
        assert_eq!(e.scores.len(), 10, "{:?}", e.scores.keys());
        for (name, r) in &e.scores {
            let m = &r.metrics;
            for v in [m.auroc, m.fpr_at_95_tpr, m.aupr_in, m.aupr_out] {
                assert!((0.0..=1.0).contains(&v), "{name}: {m:?}");
            }
            assert_eq!((m.id_samples, m.ood_samples), (300, 200));
        }
        for name in ["msp", "msp_raw", "max_logit", "energy", "entropy"] {
            assert!(e.scores[name].metrics.auroc > 0.99, "{name}");
        }
        assert_eq!(e.scores["msp"].input, "calibrated");
        assert_eq!(e.scores["msp_raw"].input, "raw");
        // The file's thresholds keep at least 95% of the very data they were fitted on.
        let msp = &e.scores["msp"];
        assert!(msp.threshold.is_some() && msp.id_flagged.unwrap() <= 0.05);
        assert!(msp.ood_flagged.unwrap() > 0.9);
        assert!(e.scores["msp_raw"].threshold.is_none());
        let md = e.markdown();
        assert_eq!(md.lines().count(), 2 + 10);
        for name in ["mahalanobis", "rmds", "knn", "vim"] {
            assert!(md.contains(&format!("| {name} | features |")), "{md}");
        }
    }

    #[test]
    fn class_count_mismatch_is_an_error() {
        let a = rows(10, 3.0, 0);
        let b = Array2::<f64>::zeros((10, 4));
        assert!(evaluate(set(&a), set(&b), &Calibrator::Identity, None).is_err());
    }
}
