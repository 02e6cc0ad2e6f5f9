//! Logits -> the prediction object every client sees (HTTP, KServe V2, `caliper predict`):
//! calibrated probabilities, the top-k, the OOD verdict and, per request, abstention and a
//! conformal prediction set (`ood::policy`).

use serde::Serialize;

use crate::numeric::{argmax, top_indices};
use crate::repository::CalibrationFile;
use crate::trust::calibration::{CalibrationError, Calibrator};
use crate::trust::conformal::ScoreKind;
use crate::trust::ood::policy::{AbstainReason, OodVerdict, PolicyError, TrustQuery, decide};

/// Default `top_k` when the client does not ask.
pub const DEFAULT_TOP_K: usize = 5;

/// What a request asks of each of its predictions. The request path scores a row once, with
/// these options; the handlers only parse them and serialise the result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestOptions {
    /// How many classes `top_k` lists (capped at the class count).
    pub top_k: usize,
    /// Abstention thresholds and the conformal set.
    pub trust: TrustQuery,
    /// Whether the answer carries the full `probabilities` vector (`?probabilities=false`
    /// drops it: a 1000-class answer is mostly that vector). See `Prediction::finish`.
    pub probabilities: bool,
}

impl Default for RequestOptions {
    fn default() -> Self {
        Self {
            top_k: DEFAULT_TOP_K,
            trust: TrustQuery::default(),
            probabilities: true,
        }
    }
}

/// Why a row could not become a prediction.
#[derive(Debug, thiserror::Error)]
pub enum PredictionError {
    /// Non-finite logits or a class-count mismatch.
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
    /// The request's trust options cannot be served (e.g. `alpha` without a conformal
    /// predictor).
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// One entry of `top_k`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopK {
    /// Class label.
    pub label: String,
    /// Class index in the model's output order.
    pub index: usize,
    /// Calibrated probability.
    pub probability: f64,
}

/// One prediction, as serialised on the wire (field names fixed by issue 2).
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// Model name (folder under `models/`).
    pub model: String,
    /// `version` from `model.toml`.
    pub model_version: String,
    /// Signed id of this prediction, for label feedback (`infer::feedback::stamp` issues it;
    /// empty, and not serialised, where no monitor runs, as in `caliper predict`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub prediction_id: String,
    /// Label of the most probable class.
    pub label: String,
    /// Index of the most probable class.
    pub class_index: usize,
    /// Calibrated probability of that class.
    pub confidence: f64,
    /// Calibrated probabilities in class order (sum to 1); empty, and not serialised, once
    /// `finish` dropped them for `?probabilities=false`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probabilities: Vec<f64>,
    /// The `k` most probable classes, most probable first.
    pub top_k: Vec<TopK>,
    /// False when the model has no calibration file (probabilities are the plain softmax).
    pub calibrated: bool,
    /// Calibration method applied ("identity" when uncalibrated).
    pub calibration_method: &'static str,
    /// OOD verdict: the default method's score, its threshold (from the calibration file) and
    /// `is_ood`, plus every score (higher = more out-of-distribution).
    pub ood: OodVerdict,
    /// True when the request's policy (`min_confidence`, `reject_ood`) says not to act on it;
    /// the probabilities are still present.
    pub abstained: bool,
    /// Why it abstained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abstain_reason: Option<AbstainReason>,
    /// Split-conformal prediction set at `?alpha` with the score `?conformal` (defaults from
    /// the calibration file), when the calibration file has a conformal predictor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction_set: Option<Vec<String>>,
    /// The conformal score `prediction_set` was built with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conformal: Option<ScoreKind>,
    /// Present when the probabilities (and so the label, confidence and top-k) were corrected
    /// for the estimated label shift of served traffic: the correction applied, `label_shift`
    /// (issue 22; `infer::live`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptation: Option<&'static str>,
    /// The conformal set as class indices and the level it was built at, for the prediction id
    /// (the monitor scores its coverage when the label arrives); not serialised.
    #[serde(skip)]
    pub served_set: Option<ServedSetInfo>,
}

/// The conformal set of a prediction as the monitor needs it (class indices, not labels).
#[derive(Debug, Clone, PartialEq)]
pub struct ServedSetInfo {
    /// Class indices, ascending.
    pub classes: Vec<usize>,
    /// The miscoverage level it was built at.
    pub alpha: f64,
    /// Whether that level came from adaptive conformal inference (`infer::live::plan`).
    pub adaptive: bool,
}

impl Prediction {
    /// Applies what the request asked of the wire form once the prediction id is issued: the
    /// signed id embeds the probabilities (the monitor's label feedback needs them), so they are
    /// computed regardless and dropped only here.
    pub fn finish(&mut self, options: &RequestOptions) {
        if !options.probabilities {
            self.probabilities = Vec::new();
        }
    }
}

/// The answer for several images: `{"predictions": [...]}` in upload order.
#[derive(Debug, Clone, Serialize)]
pub struct PredictionList {
    /// One prediction per image.
    pub predictions: Vec<Prediction>,
}

/// What a model contributes to every prediction.
#[derive(Debug, Clone)]
pub struct PredictionContext<'a> {
    /// Model name.
    pub model: &'a str,
    /// Model version.
    pub version: &'a str,
    /// Labels in class order.
    pub labels: &'a [String],
    /// The calibrator (identity when uncalibrated).
    pub calibrator: &'a Calibrator,
    /// Whether a calibration file was loaded.
    pub calibrated: bool,
    /// The calibration file (OOD thresholds, conformal predictor), when there is one.
    pub calibration: Option<&'a CalibrationFile>,
}

/// Builds the prediction for one row of logits (and the row's penultimate features, when the
/// model exports them: they give the Mahalanobis OOD score) with the request's options: the
/// calibrated probabilities, the top-k, the OOD verdict, abstention and the conformal set, each
/// computed once. Fails on non-finite logits (never a probability from NaN), on a class-count
/// mismatch and on trust options the calibration file cannot serve.
pub fn build_prediction(
    ctx: &PredictionContext<'_>,
    logits: &[f32],
    features: Option<&[f32]>,
    options: &RequestOptions,
) -> Result<Prediction, PredictionError> {
    score(ctx, calibrate(ctx, logits)?, features, options)
}

/// One row after calibration: the first half of [`build_prediction`], apart so that the request
/// path can trace calibration and scoring as two stages.
#[derive(Debug, Clone)]
pub struct Calibrated {
    /// The logits as f64.
    z: Vec<f64>,
    /// Calibrated probabilities in class order.
    probabilities: Vec<f64>,
}

/// Calibrates one row of logits: fails on non-finite logits and on a class-count mismatch.
pub fn calibrate(
    ctx: &PredictionContext<'_>,
    logits: &[f32],
) -> Result<Calibrated, PredictionError> {
    let z = to_f64(logits);
    if z.len() != ctx.labels.len() {
        return Err(CalibrationError::ClassMismatch {
            expected: ctx.labels.len(),
            got: z.len(),
        }
        .into());
    }
    let probabilities = ctx.calibrator.probabilities(&z)?;
    Ok(Calibrated { z, probabilities })
}

/// Scores a calibrated row with the request's options: the top-k, the OOD verdict, abstention
/// and the conformal set (the second half of [`build_prediction`]).
pub fn score(
    ctx: &PredictionContext<'_>,
    calibrated: Calibrated,
    features: Option<&[f32]>,
    options: &RequestOptions,
) -> Result<Prediction, PredictionError> {
    let Calibrated { z, probabilities } = calibrated;
    let f = features.map(to_f64);
    let class_index = argmax(&probabilities);
    let top_k = top_indices(&probabilities, options.top_k)
        .into_iter()
        .map(|i| TopK {
            label: ctx.labels[i].clone(),
            index: i,
            probability: probabilities[i],
        })
        .collect();
    let d = decide(
        &z,
        &probabilities,
        f.as_deref(),
        ctx.calibration.and_then(|c| c.ood.as_ref()),
        ctx.calibration.and_then(|c| c.conformal.as_ref()),
        &options.trust,
        // A fresh uniform per row for the randomised conformal scores.
        rand::random::<f64>(),
    )?;
    let served_set = d.prediction_set.clone().map(|set| {
        let alpha = options
            .trust
            .alpha
            .or_else(|| {
                ctx.calibration
                    .and_then(|c| c.conformal.as_ref())
                    .map(|c| c.alpha)
            })
            .unwrap_or(f64::NAN);
        ServedSetInfo {
            classes: set,
            alpha,
            adaptive: false,
        }
    });
    let prediction_set = d.prediction_set.map(|set| {
        set.into_iter()
            .filter_map(|i| ctx.labels.get(i).cloned())
            .collect()
    });
    Ok(Prediction {
        model: ctx.model.to_string(),
        model_version: ctx.version.to_string(),
        prediction_id: String::new(),
        label: ctx.labels[class_index].clone(),
        class_index,
        confidence: probabilities[class_index],
        probabilities,
        top_k,
        calibrated: ctx.calibrated,
        calibration_method: ctx.calibrator.method(),
        ood: d.ood,
        abstained: d.abstained,
        abstain_reason: d.abstain_reason,
        prediction_set,
        conformal: d.conformal,
        adaptation: None,
        served_set,
    })
}

/// f32 model outputs as the f64 the calibration and OOD code works in.
pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(labels: &'a [String], c: &'a Calibrator) -> PredictionContext<'a> {
        PredictionContext {
            model: "m",
            version: "1",
            labels,
            calibrator: c,
            calibrated: true,
            calibration: None,
        }
    }

    #[test]
    fn top_k_is_sorted_and_probabilities_sum_to_one() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let c = Calibrator::Ts { temperature: 2.0 };
        let opts = RequestOptions {
            top_k: 2,
            ..RequestOptions::default()
        };
        let p = build_prediction(&ctx(&labels, &c), &[0.0, 3.0, 1.0], None, &opts).unwrap();
        assert_eq!((p.label.as_str(), p.class_index), ("b", 1));
        assert_eq!(p.top_k.iter().map(|t| t.index).collect::<Vec<_>>(), [1, 2]);
        assert!((p.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // softmax([0, 1.5, 0.5]) by hand: e^1.5 / (1 + e^1.5 + e^0.5)
        let e = 1.5f64.exp() / (1.0 + 1.5f64.exp() + 0.5f64.exp());
        assert!((p.confidence - e).abs() < 1e-12);
        // Ids are issued once, by the monitor's stamp, not here.
        assert!(p.prediction_id.is_empty());
    }

    #[test]
    fn refuses_nan_and_wrong_widths() {
        let labels: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let c = Calibrator::Identity;
        let opts = RequestOptions::default();
        assert!(matches!(
            build_prediction(&ctx(&labels, &c), &[0.0, f32::NAN], None, &opts),
            Err(PredictionError::Calibration(CalibrationError::NonFinite(_)))
        ));
        assert!(matches!(
            build_prediction(&ctx(&labels, &c), &[0.0, 1.0, 2.0], None, &opts),
            Err(PredictionError::Calibration(
                CalibrationError::ClassMismatch { .. }
            ))
        ));
    }
}
