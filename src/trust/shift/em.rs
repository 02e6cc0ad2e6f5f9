//! The EM estimate of the target class prior (Saerens, Latinne and Decaestecker 2002) and its
//! likelihood-ratio test against the source prior.
//!
//! With calibrated source posteriors f_ik = p(k | x_i) and source prior p, the target posteriors
//! under a prior q are g_ik = f_ik q_k / p_k / sum_j f_ij q_j / p_j. EM alternates
//! q_k <- mean_i g_ik, which climbs the unlabelled log-likelihood
//! L(q) = sum_i ln sum_k f_ik q_k / p_k (up to a constant that does not depend on q), so
//! 2 (L(q_hat) - L(p)) = 2 sum_i ln sum_k f_ik q_hat_k / p_k is the likelihood-ratio statistic
//! of "no shift", asymptotically chi-square with K - 1 degrees of freedom under H0 (conservative
//! when q_hat sits on the simplex boundary, where the limit is a chi-bar-square mixture with
//! fewer degrees of freedom).

use super::{ShiftError, chi2_sf, normalised};

/// Convergence settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmOptions {
    /// Stop when no prior entry moves by more than this in one iteration.
    pub tolerance: f64,
    /// Give up after this many iterations (the estimate so far is returned, `converged` false).
    pub max_iterations: usize,
}

impl Default for EmOptions {
    fn default() -> Self {
        Self {
            tolerance: 1e-6,
            max_iterations: 500,
        }
    }
}

/// The EM estimate and its test.
#[derive(Debug, Clone, PartialEq)]
pub struct EmEstimate {
    /// Estimated target prior (sums to 1).
    pub prior: Vec<f64>,
    /// Iterations run.
    pub iterations: usize,
    /// Whether the tolerance was reached.
    pub converged: bool,
    /// 2 (L(q_hat) - L(p)): the likelihood-ratio statistic of "no shift".
    pub lr_statistic: f64,
    /// Its asymptotic chi-square p-value (degrees of freedom: classes with a positive source
    /// prior, minus 1). Small means the served class mix differs from the source prior.
    pub pvalue: f64,
}

/// Estimates the prior of `rows` (flat, `k` calibrated probabilities per row) by EM from the
/// source prior `source`.
pub fn em_prior<T: Copy + Into<f64>>(
    rows: &[T],
    k: usize,
    source: &[f64],
    options: EmOptions,
) -> Result<EmEstimate, ShiftError> {
    if k == 0 || rows.is_empty() {
        return Err(ShiftError::Empty);
    }
    if !rows.len().is_multiple_of(k) || source.len() != k {
        return Err(ShiftError::Shape(format!(
            "{} values are not rows of {k}, or the source prior has {} classes",
            rows.len(),
            source.len()
        )));
    }
    if source.iter().any(|p| !p.is_finite() || *p < 0.0) {
        return Err(ShiftError::Invalid("source prior".into()));
    }
    let source =
        normalised(source).ok_or_else(|| ShiftError::Invalid("source prior sums to 0".into()))?;
    // Posterior over the source prior, p(k|x)/p_k: the only form the iterations need.
    let mut scaled = Vec::with_capacity(rows.len());
    for row in rows.chunks_exact(k) {
        for (j, &v) in row.iter().enumerate() {
            let v: f64 = v.into();
            if !v.is_finite() || v < 0.0 {
                return Err(ShiftError::Invalid(format!("row value {v}")));
            }
            scaled.push(if source[j] > 0.0 { v / source[j] } else { 0.0 });
        }
    }
    let mut q = source.clone();
    let mut next = vec![0.0; k];
    let (mut iterations, mut converged) = (0, false);
    while iterations < options.max_iterations {
        iterations += 1;
        next.iter_mut().for_each(|x| *x = 0.0);
        for row in scaled.chunks_exact(k) {
            let s: f64 = row.iter().zip(&q).map(|(f, q)| f * q).sum();
            if s > 0.0 {
                for ((acc, f), q) in next.iter_mut().zip(row).zip(&q) {
                    *acc += f * q / s;
                }
            }
        }
        let new = normalised(&next).unwrap_or_else(|| q.clone());
        let moved = new
            .iter()
            .zip(&q)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        q = new;
        if moved < options.tolerance {
            converged = true;
            break;
        }
    }
    // L(q_hat) - L(p): rows whose weighted mass is 0 under q_hat would be -inf; they cannot
    // occur for the EM fixed point (every row keeps some mass), but guard the logarithm anyway.
    let lr: f64 = 2.0
        * scaled
            .chunks_exact(k)
            .map(|row| {
                let s: f64 = row.iter().zip(&q).map(|(f, q)| f * q).sum();
                let s0: f64 = row.iter().zip(&source).map(|(f, p)| f * p).sum();
                if s > 0.0 && s0 > 0.0 {
                    (s / s0).ln()
                } else {
                    0.0
                }
            })
            .sum::<f64>();
    let lr = lr.max(0.0);
    let df = source
        .iter()
        .filter(|p| **p > 0.0)
        .count()
        .saturating_sub(1);
    Ok(EmEstimate {
        prior: q,
        iterations,
        converged,
        lr_statistic: lr,
        pvalue: if df == 0 { 1.0 } else { chi2_sf(lr, df as f64) },
    })
}
