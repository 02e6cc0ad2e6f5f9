//! Black-box shift estimation (Lipton, Wang and Smola 2018): with C_ij = P_val(yhat = i, y = j),
//! the joint distribution of hard predictions and labels on validation data, and mu_i the share
//! of served predictions that are class i, label shift gives mu = C w with w_j = q_j / p_j.
//! Solving that K x K system needs no posterior to be calibrated, only the confusion matrix to be
//! invertible; negative solutions (sampling noise) are clipped to 0 and the prior renormalised.

use super::{ShiftError, normalised};

/// The BBSE estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct BbseEstimate {
    /// Estimated target prior q_j = w_j p_j (clipped at 0, renormalised).
    pub prior: Vec<f64>,
    /// The raw importance weights w = C^-1 mu before clipping (negative entries are noise).
    pub weights: Vec<f64>,
}

/// Estimates the target prior from `confusion` (`confusion[i][j]` = validation samples
/// predicted `i` whose label is `j`) and `predicted` (served predictions per class).
pub fn bbse_prior(confusion: &[Vec<u64>], predicted: &[u64]) -> Result<BbseEstimate, ShiftError> {
    let k = predicted.len();
    if k == 0 || predicted.iter().all(|&c| c == 0) {
        return Err(ShiftError::Empty);
    }
    if confusion.len() != k || confusion.iter().any(|r| r.len() != k) {
        return Err(ShiftError::Shape(format!(
            "the confusion matrix is not {k} x {k}"
        )));
    }
    let n_val: u64 = confusion.iter().flatten().sum();
    if n_val == 0 {
        return Err(ShiftError::Invalid("empty confusion matrix".into()));
    }
    let c: Vec<Vec<f64>> = confusion
        .iter()
        .map(|r| r.iter().map(|&x| x as f64 / n_val as f64).collect())
        .collect();
    let n: u64 = predicted.iter().sum();
    let mu: Vec<f64> = predicted.iter().map(|&x| x as f64 / n as f64).collect();
    let w = solve(c.clone(), mu).ok_or(ShiftError::Singular)?;
    // Source prior p_j = sum_i C_ij.
    let p: Vec<f64> = (0..k).map(|j| c.iter().map(|r| r[j]).sum()).collect();
    let q: Vec<f64> = w.iter().zip(&p).map(|(w, p)| w.max(0.0) * p).collect();
    let prior = normalised(&q).ok_or(ShiftError::Singular)?;
    Ok(BbseEstimate { prior, weights: w })
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting; None when `a` is singular
/// (a pivot below 1e-12 relative to the largest entry).
pub(crate) fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let k = b.len();
    let scale = a
        .iter()
        .flatten()
        .fold(0.0f64, |m, x| m.max(x.abs()))
        .max(f64::MIN_POSITIVE);
    for col in 0..k {
        let pivot = (col..k).max_by(|&r, &s| a[r][col].abs().total_cmp(&a[s][col].abs()))?;
        if a[pivot][col].abs() <= 1e-12 * scale {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (done, rest) = a.split_at_mut(col + 1);
        let pivot_row = &done[col];
        for (i, row) in rest.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            if f != 0.0 {
                for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                    *x -= f * p;
                }
                b[col + 1 + i] -= f * b[col];
            }
        }
    }
    let mut x = vec![0.0; k];
    for r in (0..k).rev() {
        let s: f64 = (r + 1..k).map(|j| a[r][j] * x[j]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}
