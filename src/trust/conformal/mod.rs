//! Split-conformal prediction sets (Vovk et al.; Angelopoulos and Bates 2021) over calibrated
//! probabilities, with two non-conformity scores:
//! - LAC (least ambiguous set-valued classifier, Sadinle et al. 2019): `s = 1 - p_y`; sets can
//!   be empty when every class is unlikely.
//! - APS (adaptive prediction sets, Romano et al. 2020), non-randomised: `s` = the probability mass
//!   of the classes ranked at or above `y`; sets are never empty.
//!
//! Fitting keeps the sorted validation scores instead of one quantile, so the server can answer
//! any `alpha` per request exactly: q(alpha) is the `ceil((n+1)(1-alpha))`-th smallest score
//! (the empirical quantile at level `ceil((n+1)(1-alpha))/n`), and the set holds every class
//! whose score is `<= q`. For exchangeable data, P(y in set) >= 1 - alpha.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

/// Errors of fitting or using conformal predictors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConformalError {
    /// No calibration samples.
    #[error("no calibration samples")]
    Empty,
    /// Sizes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A probability row with NaN, infinite or negative values.
    #[error("probability row {row} has a non-finite or negative value")]
    BadProbability {
        /// The row.
        row: usize,
    },
    /// A label outside `0..classes`.
    #[error("label {label} at row {row} is out of range for {classes} classes")]
    Label {
        /// The row.
        row: usize,
        /// The label.
        label: usize,
        /// Number of classes.
        classes: usize,
    },
    /// `alpha` outside (0, 1).
    #[error("alpha must be in (0, 1), got {0}")]
    Alpha(f64),
}

/// The non-conformity score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreKind {
    /// `1 - p_y`.
    Lac,
    /// Cumulative probability of the classes ranked at or above `y`.
    Aps,
}

impl std::str::FromStr for ScoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lac" => Ok(ScoreKind::Lac),
            "aps" => Ok(ScoreKind::Aps),
            _ => Err(format!("unknown conformal score {s:?} (lac or aps)")),
        }
    }
}

/// Classes in decreasing probability (ties: lower index first), the APS ranking.
fn ranking(p: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    order
}

impl ScoreKind {
    /// Score of every class for one probability row (the set is `{k : scores[k] <= q}`).
    pub fn class_scores(self, p: &[f64]) -> Vec<f64> {
        match self {
            ScoreKind::Lac => p.iter().map(|v| 1.0 - v).collect(),
            ScoreKind::Aps => {
                let mut out = vec![0.0; p.len()];
                let mut mass = 0.0;
                for k in ranking(p) {
                    mass += p[k];
                    out[k] = mass;
                }
                out
            }
        }
    }

    /// Score of the true label `y` (what fitting collects).
    pub fn label_score(self, p: &[f64], y: usize) -> f64 {
        match self {
            ScoreKind::Lac => 1.0 - p[y],
            ScoreKind::Aps => self.class_scores(p)[y],
        }
    }
}

/// The conformal quantile of sorted scores: the `ceil((n+1)(1-alpha))`-th smallest, or +inf when
/// that rank exceeds n (too few samples for this alpha: every class is included).
pub fn conformal_quantile(sorted_scores: &[f64], alpha: f64) -> Result<f64, ConformalError> {
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(ConformalError::Alpha(alpha));
    }
    let n = sorted_scores.len();
    if n == 0 {
        return Err(ConformalError::Empty);
    }
    // The epsilon keeps exact products such as 10 * 0.9 = 9.000000000000002 from rounding up.
    let k = (((n + 1) as f64) * (1.0 - alpha) - 1e-9).ceil().max(1.0) as usize;
    Ok(if k > n {
        f64::INFINITY
    } else {
        sorted_scores[k - 1]
    })
}

/// A fitted split-conformal predictor: the score kind, the sorted calibration scores and the
/// default miscoverage level. Serialises as those three fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitConformal {
    /// The non-conformity score.
    pub score: ScoreKind,
    /// Default miscoverage level (the server's `alpha` when a request names none).
    pub alpha: f64,
    /// Calibration scores of the true labels, ascending.
    pub scores: Vec<f64>,
}

fn check_rows(probs: ArrayView2<'_, f64>) -> Result<(), ConformalError> {
    match probs
        .outer_iter()
        .position(|r| r.iter().any(|v| !v.is_finite() || *v < 0.0))
    {
        Some(row) => Err(ConformalError::BadProbability { row }),
        None => Ok(()),
    }
}

impl SplitConformal {
    /// Fits on validation probabilities `[N, K]` (calibrated ones give smaller sets) and labels.
    pub fn fit(
        probs: ArrayView2<'_, f64>,
        labels: &[usize],
        score: ScoreKind,
        alpha: f64,
    ) -> Result<Self, ConformalError> {
        let (n, k) = probs.dim();
        if n == 0 {
            return Err(ConformalError::Empty);
        }
        if labels.len() != n {
            return Err(ConformalError::Shape(format!(
                "{} labels for {n} probability rows",
                labels.len()
            )));
        }
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(ConformalError::Alpha(alpha));
        }
        check_rows(probs)?;
        let mut scores = Vec::with_capacity(n);
        for (row, (p, &y)) in probs.outer_iter().zip(labels).enumerate() {
            if y >= k {
                return Err(ConformalError::Label {
                    row,
                    label: y,
                    classes: k,
                });
            }
            scores.push(score.label_score(&p.to_vec(), y));
        }
        scores.sort_by(f64::total_cmp);
        Ok(SplitConformal {
            score,
            alpha,
            scores,
        })
    }

    /// The score threshold for miscoverage `alpha`.
    pub fn quantile(&self, alpha: f64) -> Result<f64, ConformalError> {
        conformal_quantile(&self.scores, alpha)
    }

    /// The prediction set (class indices, ascending) of one probability row at `alpha`.
    pub fn predict_set(&self, probs: &[f64], alpha: f64) -> Result<Vec<usize>, ConformalError> {
        if probs.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(ConformalError::BadProbability { row: 0 });
        }
        let q = self.quantile(alpha)?;
        Ok(self
            .score
            .class_scores(probs)
            .iter()
            .enumerate()
            .filter(|(_, s)| **s <= q)
            .map(|(k, _)| k)
            .collect())
    }

    /// Prediction sets of every row of `[N, K]` probabilities at `alpha`.
    pub fn predict_sets(
        &self,
        probs: ArrayView2<'_, f64>,
        alpha: f64,
    ) -> Result<Vec<Vec<usize>>, ConformalError> {
        check_rows(probs)?;
        probs
            .outer_iter()
            .map(|r| self.predict_set(&r.to_vec(), alpha))
            .collect()
    }
}

/// Empirical coverage (fraction of sets containing the label) and mean set size.
pub fn coverage_and_size(sets: &[Vec<usize>], labels: &[usize]) -> (f64, f64) {
    let n = sets.len().max(1) as f64;
    let covered = sets
        .iter()
        .zip(labels)
        .filter(|(s, y)| s.contains(y))
        .count();
    let size: usize = sets.iter().map(Vec::len).sum();
    (covered as f64 / n, size as f64 / n)
}

#[cfg(test)]
mod tests;
