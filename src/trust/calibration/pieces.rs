//! Equal-mass confidence pieces shared by ATS and the binning calibrators: how a row's
//! uncalibrated top confidence is computed, where the piece edges go, and which piece a
//! confidence falls in (the same rule at fit and at inference).

use super::nll_solver::row_sums;

/// Uncalibrated top confidence max_k softmax(z)_k = 1 / sum_j exp(z_j - max z), summed exactly
/// as the ATS fit sums it, so a validation row falls in the same piece at fit and at inference.
pub(crate) fn top_confidence(logits: &[f64]) -> f64 {
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    1.0 / row_sums::<1>(logits, m, 1.0)[0]
}

/// Inner edges of `pieces` equal-mass groups of `sorted` values: the midpoint between the last
/// value of one group and the first of the next (group boundaries at round(m * N / M)).
pub(crate) fn equal_mass_edges(sorted: &[f64], pieces: usize) -> Vec<f64> {
    let n = sorted.len();
    (1..pieces)
        .map(|m| {
            let i = ((m * n) as f64 / pieces as f64).round() as usize;
            let i = i.clamp(1, n - 1);
            0.5 * (sorted[i - 1] + sorted[i])
        })
        .collect()
}

/// Index of the piece holding `c` given ascending inner edges: piece m covers
/// `(edges[m-1], edges[m]]`, the same rule the fit used to assign validation samples.
pub(crate) fn piece_of(edges: &[f64], c: f64) -> usize {
    edges.partition_point(|&e| e < c)
}
