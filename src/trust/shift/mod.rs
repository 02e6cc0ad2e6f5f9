//! Label shift without labels (issue 22, section 1): when the class proportions of served
//! traffic move away from the validation data's, the calibrated probabilities are no longer
//! calibrated, yet the new class prior can be estimated from the unlabelled predictions alone
//! and the probabilities corrected by the prior ratio.
//!
//! - [`em_prior`]: maximum likelihood by EM on calibrated posteriors (Saerens, Latinne and
//!   Decaestecker 2002), with the likelihood-ratio test of "no shift" ([`chi2_sf`]).
//! - [`bbse_prior`]: black-box shift estimation from the validation confusion matrix of the hard
//!   predictions (Lipton, Wang and Smola 2018).
//! - [`reweight`]: p'(y|x) proportional to p(y|x) q(y) / p(y), the Bayes-rule correction both
//!   papers apply once the target prior q is known.
//!
//! Pure functions on plain numbers: the live monitor owns the window and the caching.

mod bbse;
mod chi2;
mod em;
#[cfg(test)]
mod tests;

pub use bbse::{BbseEstimate, bbse_prior};
pub use chi2::chi2_sf;
pub use em::{EmEstimate, EmOptions, em_prior};

/// Why an estimate cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShiftError {
    /// No rows to estimate from.
    #[error("no predictions to estimate the class prior from")]
    Empty,
    /// Rows, prior and confusion matrix disagree on the number of classes.
    #[error("class counts disagree: {0}")]
    Shape(String),
    /// A probability or prior entry is negative, NaN or infinite, or a prior sums to 0.
    #[error("invalid probabilities: {0}")]
    Invalid(String),
    /// The validation confusion matrix cannot be inverted (a class never predicted, or two
    /// classes confused in the same proportions).
    #[error("the validation confusion matrix is singular")]
    Singular,
}

/// `v / sum(v)`, or None when the sum is not positive and finite.
pub(crate) fn normalised(v: &[f64]) -> Option<Vec<f64>> {
    let s: f64 = v.iter().sum();
    (s > 0.0 && s.is_finite()).then(|| v.iter().map(|x| x / s).collect())
}

/// The source prior to correct against: validation label counts when known, else uniform.
pub fn source_prior(label_counts: Option<&[usize]>, k: usize) -> Vec<f64> {
    label_counts
        .filter(|c| c.len() == k)
        .and_then(|c| normalised(&c.iter().map(|&x| x as f64).collect::<Vec<_>>()))
        .unwrap_or_else(|| vec![1.0 / k.max(1) as f64; k])
}

/// Prior ratios `w_k = q_k / p_k` (0 where the source prior is 0: such a class was never
/// seen in validation, so nothing is known about how its posterior scales).
pub fn prior_ratio(target: &[f64], source: &[f64]) -> Vec<f64> {
    target
        .iter()
        .zip(source)
        .map(|(&q, &p)| if p > 0.0 { q / p } else { 0.0 })
        .collect()
}

/// Corrects one calibrated probability vector for a new prior: `p'_k = p_k w_k / sum_j p_j w_j`
/// (Saerens et al. 2002, eq. 2.4). Returns the input unchanged when the weighted mass is 0
/// (every class with probability has weight 0), so a correction never invents a NaN.
pub fn reweight(probabilities: &[f64], ratio: &[f64]) -> Vec<f64> {
    let w: Vec<f64> = probabilities
        .iter()
        .zip(ratio)
        .map(|(p, r)| p * r)
        .collect();
    normalised(&w).unwrap_or_else(|| probabilities.to_vec())
}

/// Total-variation distance `sum |a - b| / 2` between two distributions.
pub fn total_variation(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
}
