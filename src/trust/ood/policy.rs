//! Per-request trust policy: given one row's logits, its calibrated probabilities and the
//! calibration file's `ood` and `conformal` sections, decide the response's `ood` object,
//! whether to abstain (`?min_confidence=`, `?reject_ood=true`) and the conformal prediction set
//! (`?alpha=`, `?conformal=`). Plain data in, plain data out, so the HTTP handler stays thin.

use std::collections::BTreeMap;

use serde::Serialize;

use super::artifacts::{ConformalCalibration, OodCalibration, named_scores};
use crate::trust::conformal::{ConformalError, ScoreKind};

/// What a request asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TrustQuery {
    /// Abstain when the calibrated confidence is below this.
    pub min_confidence: Option<f64>,
    /// Abstain when the default OOD score is above its threshold.
    pub reject_ood: bool,
    /// Miscoverage level of the prediction set (`None`: the file's default, when it has one).
    pub alpha: Option<f64>,
    /// Conformal score of the prediction set (`None`: the file's `default_score`).
    pub conformal: Option<ScoreKind>,
}

/// The response's `ood` object.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct OodVerdict {
    /// The score the decision used.
    pub method: String,
    /// Its value for this input (higher = more out-of-distribution).
    pub score: f64,
    /// Its fitted threshold (`None` when the calibration file has no OOD section).
    pub threshold: Option<f64>,
    /// Whether `score > threshold`.
    pub is_ood: bool,
    /// Every score of this input by name.
    #[serde(flatten)]
    pub scores: BTreeMap<&'static str, f64>,
}

/// Why a response abstained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbstainReason {
    /// Calibrated confidence below `min_confidence`.
    LowConfidence,
    /// Flagged out-of-distribution with `reject_ood=true`.
    OutOfDistribution,
}

impl AbstainReason {
    /// The wire name (as serialised), also the `reason` label of `caliper_abstained_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            AbstainReason::LowConfidence => "low_confidence",
            AbstainReason::OutOfDistribution => "out_of_distribution",
        }
    }
}

/// The policy's decision for one row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrustDecision {
    /// OOD scores and verdict.
    pub ood: OodVerdict,
    /// Whether the response abstains.
    pub abstained: bool,
    /// Why, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abstain_reason: Option<AbstainReason>,
    /// Class indices of the conformal prediction set, when requested or defaulted by the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_set: Option<Vec<usize>>,
    /// The score that set was built with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conformal: Option<ScoreKind>,
}

/// Errors of the policy (all caused by the request).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// `min_confidence` outside [0, 1].
    #[error("min_confidence must be in [0, 1], got {0}")]
    MinConfidence(f64),
    /// A prediction set was asked for but the calibration file has no conformal section.
    #[error(
        "the calibration file has no conformal predictor, so alpha or conformal cannot be served"
    )]
    NoConformal,
    /// The calibration file predates this conformal score.
    #[error(
        "the calibration file has no {0} conformal predictor (it was fitted before {0} existed); \
         re-run `caliper calibrate` for this model to fit it"
    )]
    MissingScore(ScoreKind),
    /// The conformal predictor refused the request (e.g. alpha outside (0, 1)).
    #[error(transparent)]
    Conformal(#[from] ConformalError),
}

/// Decides `ood`, abstention and the prediction set of one row of finite logits and their
/// calibrated probabilities. Without an OOD section the verdict uses `msp` with no threshold
/// and is never OOD. `features` (the row's penultimate features, when the model exports them)
/// add the `mahalanobis` score when the OOD section has the detector. `u` in [0, 1] is this
/// row's uniform draw for the randomised conformal scores (the server draws one per row).
pub fn decide(
    logits: &[f64],
    calibrated: &[f64],
    features: Option<&[f64]>,
    ood: Option<&OodCalibration>,
    conformal: Option<&ConformalCalibration>,
    query: &TrustQuery,
    u: f64,
) -> Result<TrustDecision, PolicyError> {
    if let Some(m) = query.min_confidence
        && !(0.0..=1.0).contains(&m)
    {
        return Err(PolicyError::MinConfidence(m));
    }
    let scores = match ood {
        Some(o) => o.scores(logits, calibrated, features),
        None => named_scores(logits, calibrated),
    };
    let method = ood.map_or("msp", |o| o.method.as_str()).to_string();
    let score = scores.get(method.as_str()).copied().unwrap_or(f64::NAN);
    let threshold = ood.and_then(|o| o.thresholds.get(&method));
    let verdict = OodVerdict {
        is_ood: threshold.is_some_and(|t| t.is_ood(score)),
        threshold: threshold.map(|t| t.threshold),
        method,
        score,
        scores,
    };
    let confidence = calibrated.iter().copied().fold(0.0, f64::max);
    let abstain_reason = if query.reject_ood && verdict.is_ood {
        Some(AbstainReason::OutOfDistribution)
    } else if query.min_confidence.is_some_and(|m| confidence < m) {
        Some(AbstainReason::LowConfidence)
    } else {
        None
    };
    let (prediction_set, conformal) = match conformal {
        None if query.alpha.is_some() || query.conformal.is_some() => {
            return Err(PolicyError::NoConformal);
        }
        None => (None, None),
        Some(c) => {
            let score = query.conformal.unwrap_or(c.default_score);
            let predictor = c.predictor(score).ok_or(PolicyError::MissingScore(score))?;
            let alpha = query.alpha.unwrap_or(c.alpha);
            let set = predictor.predict_set(calibrated, alpha, u)?;
            (Some(set), Some(score))
        }
    };
    Ok(TrustDecision {
        ood: verdict,
        abstained: abstain_reason.is_some(),
        abstain_reason,
        prediction_set,
        conformal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::conformal::{ScoreKind, SplitConformal};
    use crate::trust::ood::fit::Threshold;

    #[test]
    fn abstain_reason_names_are_the_wire_names() {
        for r in [
            AbstainReason::LowConfidence,
            AbstainReason::OutOfDistribution,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    fn ood() -> OodCalibration {
        OodCalibration {
            method: "msp".into(),
            thresholds: BTreeMap::from([(
                "msp".to_string(),
                Threshold {
                    tpr: 0.95,
                    threshold: 0.3,
                },
            )]),
            detectors: Default::default(),
        }
    }

    fn conformal() -> ConformalCalibration {
        let lac = SplitConformal {
            score: ScoreKind::Lac,
            alpha: 0.1,
            scores: (0..100).map(|i| i as f64 / 200.0).collect(),
            regularization: None,
        };
        let aps = SplitConformal {
            score: ScoreKind::Aps,
            ..lac.clone()
        };
        ConformalCalibration {
            alpha: 0.1,
            default_score: ScoreKind::Lac,
            lac,
            aps,
            aps_randomized: None,
            raps: None,
        }
    }

    #[test]
    fn a_confident_row_is_accepted_with_a_singleton_set() {
        let q = TrustQuery {
            min_confidence: Some(0.9),
            reject_ood: true,
            alpha: None,
            conformal: None,
        };
        let d = decide(
            &[5.0, 0.0],
            &[0.95, 0.05],
            None,
            Some(&ood()),
            Some(&conformal()),
            &q,
            0.5,
        )
        .unwrap();
        assert!(!d.abstained && !d.ood.is_ood);
        assert_eq!(d.ood.threshold, Some(0.3));
        assert_eq!(d.prediction_set, Some(vec![0]));
        assert_eq!(d.ood.scores.len(), 4);
    }

    #[test]
    fn ood_and_low_confidence_abstain_with_their_reason() {
        let row = ([0.1, 0.0], [0.55, 0.45]);
        let reject = TrustQuery {
            reject_ood: true,
            ..TrustQuery::default()
        };
        let d = decide(&row.0, &row.1, None, Some(&ood()), None, &reject, 0.5).unwrap();
        assert!(d.ood.is_ood && d.abstained);
        assert_eq!(d.abstain_reason, Some(AbstainReason::OutOfDistribution));
        let low = TrustQuery {
            min_confidence: Some(0.6),
            ..TrustQuery::default()
        };
        let d = decide(&row.0, &row.1, None, Some(&ood()), None, &low, 0.5).unwrap();
        assert_eq!(d.abstain_reason, Some(AbstainReason::LowConfidence));
        // Flagged but not asked to reject: answers anyway.
        let d = decide(
            &row.0,
            &row.1,
            None,
            Some(&ood()),
            None,
            &TrustQuery::default(),
            0.5,
        )
        .unwrap();
        assert!(d.ood.is_ood && !d.abstained);
    }

    #[test]
    fn bad_requests_are_errors() {
        let bad = TrustQuery {
            min_confidence: Some(1.5),
            ..TrustQuery::default()
        };
        assert!(decide(&[1.0, 0.0], &[0.7, 0.3], None, None, None, &bad, 0.5).is_err());
        let alpha = TrustQuery {
            alpha: Some(0.1),
            ..TrustQuery::default()
        };
        assert!(matches!(
            decide(&[1.0, 0.0], &[0.7, 0.3], None, None, None, &alpha, 0.5),
            Err(PolicyError::NoConformal)
        ));
        let alpha = TrustQuery {
            alpha: Some(1.5),
            ..TrustQuery::default()
        };
        assert!(
            decide(
                &[1.0, 0.0],
                &[0.7, 0.3],
                None,
                None,
                Some(&conformal()),
                &alpha,
                0.5
            )
            .is_err()
        );
    }

    #[test]
    fn the_query_selects_the_conformal_score_and_a_missing_one_names_the_fix() {
        let mut c = conformal();
        // LAC at q = 0.495 keeps p >= 0.505: none of [0.45, 0.35, 0.2]; APS keeps the top class
        // (the mass crosses q there).
        let row = ([1.0, 0.5, 0.0], [0.45, 0.35, 0.2]);
        let run = |c: &ConformalCalibration, conformal| {
            let q = TrustQuery {
                conformal,
                ..TrustQuery::default()
            };
            decide(&row.0, &row.1, None, None, Some(c), &q, 0.5)
        };
        let d = run(&c, None).unwrap();
        assert_eq!(
            (d.prediction_set, d.conformal),
            (Some(vec![]), Some(ScoreKind::Lac))
        );
        let d = run(&c, Some(ScoreKind::Aps)).unwrap();
        assert_eq!(
            (d.prediction_set, d.conformal),
            (Some(vec![0]), Some(ScoreKind::Aps))
        );
        // The file's default applies when the request names none.
        c.default_score = ScoreKind::Aps;
        assert_eq!(run(&c, None).unwrap().conformal, Some(ScoreKind::Aps));
        // An old file has no RAPS: a request error that says how to fix it.
        let e = run(&c, Some(ScoreKind::Raps)).unwrap_err();
        assert!(matches!(e, PolicyError::MissingScore(ScoreKind::Raps)));
        let msg = e.to_string();
        assert!(
            msg.contains("raps") && msg.contains("caliper calibrate"),
            "{msg}"
        );
        // No conformal section at all: naming a score is an error too.
        let q = TrustQuery {
            conformal: Some(ScoreKind::Lac),
            ..TrustQuery::default()
        };
        assert!(matches!(
            decide(&row.0, &row.1, None, None, None, &q, 0.5),
            Err(PolicyError::NoConformal)
        ));
    }
}
