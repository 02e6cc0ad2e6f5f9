//! Split-conformal prediction sets (Vovk et al.; Angelopoulos and Bates 2021) over calibrated
//! probabilities, with four non-conformity scores (`rank(k)` is k's 1-based rank by decreasing
//! probability, ties to the lower index; `above(k)` the mass of the classes ranked strictly
//! above k):
//! - LAC (least ambiguous set-valued classifier, Sadinle et al. 2019): `s = 1 - p_y`; sets can
//!   be empty when every class is unlikely.
//! - APS (adaptive prediction sets, Romano et al. 2020), non-randomised: calibrated on
//!   `s = above(y) + p_y`; the set holds every class with `above(k) < q`, i.e. the ranking up to
//!   and including the class at which the mass crosses q. That is a superset of `{k : s_k <= q}`
//!   (so coverage >= 1 - alpha still holds, conservatively) and always holds the top class.
//! - Randomised APS (Romano et al. 2020): `s = above(y) + u * p_y`, `u ~ U(0, 1)` drawn afresh
//!   per calibration point and per test point (one `u` for all classes of a test point).
//! - RAPS (Angelopoulos et al. 2021, "Uncertainty sets for image classifiers using conformal
//!   prediction"): randomised APS plus `lambda * max(0, rank(y) - k_reg)`.
//!
//! The randomised sets keep the top class even when `u` would drop it (RAPS's
//! `allow_zero_sets=False`), so no APS-family set is ever empty; that adds coverage where
//! `1 - alpha` is below the model's top-1 accuracy.
//!
//! Fitting keeps the sorted validation scores instead of one quantile, so the server can answer
//! any `alpha` per request exactly: q(alpha) is the `ceil((n+1)(1-alpha))`-th smallest score
//! (the empirical quantile at level `ceil((n+1)(1-alpha))/n`). For exchangeable data,
//! P(y in set) >= 1 - alpha.

pub mod aci;

use ndarray::ArrayView2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Seed of the `u` draws where a caller passes no generator ([`SplitConformal::fit`],
/// [`SplitConformal::predict_sets`]), so refitting the same data writes the same file.
pub const DEFAULT_SEED: u64 = 0x5eed_c0f0;
/// RAPS's default regularisation: the paper's fixed `lambda = 0.01` and `k_reg = 5`
/// (its tuned selection needs a separate tuning split; see docs/CONFORMAL.md).
pub const DEFAULT_REGULARIZATION: Regularization = Regularization {
    lambda: 0.01,
    k_reg: 5,
};

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
    /// `u` outside [0, 1].
    #[error("u must be in [0, 1], got {0}")]
    U(f64),
    /// A negative or non-finite RAPS `lambda`.
    #[error("RAPS lambda must be finite and >= 0, got {0}")]
    Lambda(f64),
}

/// The non-conformity score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreKind {
    /// `1 - p_y`.
    #[default]
    Lac,
    /// Mass ranked at or above `y`; served conservatively (the crossing class is in).
    Aps,
    /// Mass ranked above `y` plus `u * p_y`.
    ApsRandomized,
    /// Randomised APS plus `lambda * max(0, rank(y) - k_reg)`.
    Raps,
}

impl ScoreKind {
    /// Every score, in the order documents list them.
    pub const ALL: [ScoreKind; 4] = [
        ScoreKind::Lac,
        ScoreKind::Aps,
        ScoreKind::ApsRandomized,
        ScoreKind::Raps,
    ];

    /// The name used in files and in `?conformal=`.
    pub fn name(self) -> &'static str {
        match self {
            ScoreKind::Lac => "lac",
            ScoreKind::Aps => "aps",
            ScoreKind::ApsRandomized => "aps_randomized",
            ScoreKind::Raps => "raps",
        }
    }

    /// Whether the score takes a uniform `u`.
    pub fn is_randomized(self) -> bool {
        matches!(self, ScoreKind::ApsRandomized | ScoreKind::Raps)
    }
}

impl std::fmt::Display for ScoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ScoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ScoreKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown conformal score {s:?} (lac, aps, aps_randomized or raps)")
            })
    }
}

/// RAPS's rank penalty: `lambda` per rank beyond `k_reg`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Regularization {
    /// Penalty per rank beyond `k_reg`.
    pub lambda: f64,
    /// Ranks `1..=k_reg` carry no penalty.
    pub k_reg: usize,
}

impl Regularization {
    /// `lambda * max(0, rank - k_reg)` for a 1-based `rank`.
    fn penalty(self, rank: usize) -> f64 {
        self.lambda * rank.saturating_sub(self.k_reg) as f64
    }
}

/// One row seen through the APS ranking: per class its 1-based rank and the mass ranked
/// strictly above it.
struct Ranked {
    rank: Vec<usize>,
    above: Vec<f64>,
}

impl Ranked {
    fn new(p: &[f64]) -> Self {
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let (mut rank, mut above) = (vec![0; p.len()], vec![0.0; p.len()]);
        let mut mass = 0.0;
        for (r, &k) in order.iter().enumerate() {
            rank[k] = r + 1;
            above[k] = mass;
            mass += p[k];
        }
        Ranked { rank, above }
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

/// A fitted split-conformal predictor: the score kind, the sorted calibration scores, the
/// default miscoverage level and, for RAPS, the regularisation. Serialises as those fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitConformal {
    /// The non-conformity score.
    pub score: ScoreKind,
    /// Default miscoverage level (the server's `alpha` when a request names none).
    pub alpha: f64,
    /// Calibration scores of the true labels, ascending.
    pub scores: Vec<f64>,
    /// RAPS's penalty (absent for the other scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regularization: Option<Regularization>,
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

fn check_u(u: f64) -> Result<(), ConformalError> {
    if (0.0..=1.0).contains(&u) {
        Ok(())
    } else {
        Err(ConformalError::U(u))
    }
}

impl SplitConformal {
    /// Fits on validation probabilities `[N, K]` (calibrated ones give smaller sets) and labels,
    /// RAPS with [`DEFAULT_REGULARIZATION`], the randomised scores' `u` from a generator seeded
    /// with [`DEFAULT_SEED`].
    pub fn fit(
        probs: ArrayView2<'_, f64>,
        labels: &[usize],
        score: ScoreKind,
        alpha: f64,
    ) -> Result<Self, ConformalError> {
        let reg = (score == ScoreKind::Raps).then_some(DEFAULT_REGULARIZATION);
        let mut rng = ChaCha8Rng::seed_from_u64(DEFAULT_SEED);
        Self::fit_with(probs, labels, score, alpha, reg, &mut rng)
    }

    /// [`SplitConformal::fit`] with RAPS's regularisation (ignored by the other scores) and the
    /// generator of the calibration points' `u` given.
    pub fn fit_with<R: Rng + ?Sized>(
        probs: ArrayView2<'_, f64>,
        labels: &[usize],
        score: ScoreKind,
        alpha: f64,
        regularization: Option<Regularization>,
        rng: &mut R,
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
        let regularization = match (score, regularization) {
            (ScoreKind::Raps, r) => {
                let r = r.unwrap_or(DEFAULT_REGULARIZATION);
                if !(r.lambda.is_finite() && r.lambda >= 0.0) {
                    return Err(ConformalError::Lambda(r.lambda));
                }
                Some(r)
            }
            _ => None,
        };
        check_rows(probs)?;
        let mut fitted = SplitConformal {
            score,
            alpha,
            scores: Vec::with_capacity(n),
            regularization,
        };
        for (row, (p, &y)) in probs.outer_iter().zip(labels).enumerate() {
            if y >= k {
                return Err(ConformalError::Label {
                    row,
                    label: y,
                    classes: k,
                });
            }
            // Draw for every row, whatever the score, so one generator gives one stream.
            let u: f64 = rng.random();
            let s = fitted.class_scores(&p.to_vec(), u)[y];
            fitted.scores.push(s);
        }
        fitted.scores.sort_by(f64::total_cmp);
        Ok(fitted)
    }

    /// Score of every class of one probability row, with the test point's `u` (ignored by LAC
    /// and APS). For APS this is the calibration score `above(k) + p_k`.
    pub fn class_scores(&self, p: &[f64], u: f64) -> Vec<f64> {
        if self.score == ScoreKind::Lac {
            return p.iter().map(|v| 1.0 - v).collect();
        }
        let r = Ranked::new(p);
        let reg = self.regularization.unwrap_or(Regularization {
            lambda: 0.0,
            k_reg: 0,
        });
        (0..p.len())
            .map(|k| match self.score {
                ScoreKind::Lac => unreachable!("handled above"),
                ScoreKind::Aps => r.above[k] + p[k],
                ScoreKind::ApsRandomized => r.above[k] + u * p[k],
                ScoreKind::Raps => r.above[k] + u * p[k] + reg.penalty(r.rank[k]),
            })
            .collect()
    }

    /// The score threshold for miscoverage `alpha`.
    pub fn quantile(&self, alpha: f64) -> Result<f64, ConformalError> {
        conformal_quantile(&self.scores, alpha)
    }

    /// The prediction set (class indices, ascending) of one probability row at `alpha`, with
    /// the test point's `u` in [0, 1] (a fresh uniform draw per row for the randomised scores;
    /// ignored by LAC and APS).
    pub fn predict_set(
        &self,
        probs: &[f64],
        alpha: f64,
        u: f64,
    ) -> Result<Vec<usize>, ConformalError> {
        if probs.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(ConformalError::BadProbability { row: 0 });
        }
        check_u(u)?;
        let q = self.quantile(alpha)?;
        let scores = self.class_scores(probs, u);
        if self.score == ScoreKind::Lac {
            return Ok((0..probs.len()).filter(|&k| scores[k] <= q).collect());
        }
        let r = Ranked::new(probs);
        Ok((0..probs.len())
            .filter(|&k| {
                r.rank[k] == 1
                    || scores[k] <= q
                    // APS: the class at which the mass crosses q is in (conservative).
                    || (self.score == ScoreKind::Aps && r.above[k] < q)
            })
            .collect())
    }

    /// Prediction sets of every row of `[N, K]` probabilities at `alpha`, the randomised
    /// scores' `u` drawn from a generator seeded with [`DEFAULT_SEED`].
    pub fn predict_sets(
        &self,
        probs: ArrayView2<'_, f64>,
        alpha: f64,
    ) -> Result<Vec<Vec<usize>>, ConformalError> {
        self.predict_sets_with(probs, alpha, &mut ChaCha8Rng::seed_from_u64(DEFAULT_SEED))
    }

    /// [`SplitConformal::predict_sets`] with the generator of each row's `u` given.
    pub fn predict_sets_with<R: Rng + ?Sized>(
        &self,
        probs: ArrayView2<'_, f64>,
        alpha: f64,
        rng: &mut R,
    ) -> Result<Vec<Vec<usize>>, ConformalError> {
        check_rows(probs)?;
        probs
            .outer_iter()
            .map(|r| self.predict_set(&r.to_vec(), alpha, rng.random()))
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
