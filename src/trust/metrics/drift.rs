//! Label-free drift test (used by the live monitor): is the distribution of served confidences
//! still the one seen on the validation split? A two-sample Kolmogorov-Smirnov test between the
//! live window and the validation reference stored in the calibration file as quantiles.
//!
//! The reference keeps only quantiles (a few hundred numbers instead of every validation
//! confidence), so its CDF is the piecewise-linear interpolation of those quantiles; with 201
//! quantiles that approximation moves D by at most 0.005.

use serde::{Deserialize, Serialize};

use super::percentile;

/// The validation reference: quantiles of the calibrated confidence at evenly spaced levels
/// 0, 1/(q-1), ..., 1, and how many validation samples they summarise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceReference {
    /// Number of validation samples behind the quantiles.
    pub n: usize,
    /// Non-decreasing quantiles at evenly spaced levels from 0 to 1 (at least 2).
    pub quantiles: Vec<f64>,
}

/// Result of the test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DriftTest {
    /// KS statistic: the largest gap between the two CDFs.
    pub ks_statistic: f64,
    /// Asymptotic p-value (small = the confidences have drifted).
    pub p_value: f64,
    /// Live samples tested.
    pub n_live: usize,
}

impl ConfidenceReference {
    /// Builds the reference from validation confidences with `levels` evenly spaced quantiles.
    /// Returns None when there are no finite confidences.
    pub fn from_confidences(confidences: &[f64], levels: usize) -> Option<Self> {
        let mut v: Vec<f64> = confidences
            .iter()
            .copied()
            .filter(|c| c.is_finite())
            .collect();
        if v.is_empty() || levels < 2 {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let quantiles = (0..levels)
            .map(|i| percentile(&v, i as f64 / (levels - 1) as f64))
            .collect();
        Some(ConfidenceReference {
            n: v.len(),
            quantiles,
        })
    }

    /// Reference CDF at x: inverse of the piecewise-linear quantile function.
    fn cdf(&self, x: f64) -> f64 {
        let q = &self.quantiles;
        let steps = (q.len() - 1) as f64;
        if x < q[0] {
            return 0.0;
        }
        if x >= q[q.len() - 1] {
            return 1.0;
        }
        // Last index whose quantile is <= x (quantiles are sorted).
        let i = q.partition_point(|&v| v <= x) - 1;
        let width = q[i + 1] - q[i];
        let frac = if width > 0.0 { (x - q[i]) / width } else { 1.0 };
        (i as f64 + frac) / steps
    }

    /// Two-sample KS test of `live` confidences against this reference.
    pub fn test(&self, live: &[f64]) -> Option<DriftTest> {
        if live.is_empty() || self.quantiles.len() < 2 || self.n == 0 {
            return None;
        }
        let mut v = live.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mut d: f64 = 0.0;
        for (i, &x) in v.iter().enumerate() {
            let f = self.cdf(x);
            // The empirical CDF jumps at x from i/n to (i+1)/n.
            d = d
                .max(((i + 1) as f64 / n - f).abs())
                .max((f - i as f64 / n).abs());
        }
        let m = self.n as f64;
        let ne = n * m / (n + m);
        // Stephens' small-sample correction of the asymptotic distribution.
        let lambda = (ne.sqrt() + 0.12 + 0.11 / ne.sqrt()) * d;
        Some(DriftTest {
            ks_statistic: d,
            p_value: kolmogorov_q(lambda),
            n_live: v.len(),
        })
    }
}

/// Survival function of the Kolmogorov distribution: 2 sum_k (-1)^(k-1) exp(-2 k^2 lambda^2).
fn kolmogorov_q(lambda: f64) -> f64 {
    if lambda < 0.2 {
        return 1.0; // the series converges slowly here and the value is 1 to 1e-9
    }
    let mut sum = 0.0;
    for k in 1..=100 {
        let term = (-2.0 * (k * k) as f64 * lambda * lambda).exp();
        sum += if k % 2 == 1 { term } else { -term };
        if term < 1e-12 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kolmogorov_tail_matches_tables() {
        // Classic critical values: Q(1.358) = 0.05, Q(1.628) = 0.01.
        assert!((kolmogorov_q(1.358) - 0.05).abs() < 5e-4);
        assert!((kolmogorov_q(1.628) - 0.01).abs() < 2e-4);
    }

    #[test]
    fn quantiles_match_numpy_linear() {
        let r = ConfidenceReference::from_confidences(&[0.1, 0.4, 0.2, 0.3], 3).unwrap();
        // np.quantile([.1,.2,.3,.4], [0, .5, 1]) = [0.1, 0.25, 0.4]
        assert_eq!(r.quantiles.len(), 3);
        assert!((r.quantiles[1] - 0.25).abs() < 1e-12);
        assert!((r.cdf(0.25) - 0.5).abs() < 1e-12 && r.cdf(0.05) == 0.0 && r.cdf(0.5) == 1.0);
    }

    #[test]
    fn same_distribution_passes_and_a_shift_is_detected() {
        // Deterministic "uniform" samples on (0.5, 1): a low-discrepancy grid.
        let reference: Vec<f64> = (0..5000)
            .map(|i| 0.5 + 0.5 * (i as f64 + 0.5) / 5000.0)
            .collect();
        let r = ConfidenceReference::from_confidences(&reference, 201).unwrap();
        let same: Vec<f64> = (0..1000)
            .map(|i| 0.5 + 0.5 * ((i * 7919 % 1000) as f64 + 0.5) / 1000.0)
            .collect();
        let t = r.test(&same).unwrap();
        assert!(t.ks_statistic < 0.01 && t.p_value > 0.5, "{t:?}");
        let shifted: Vec<f64> = same.iter().map(|c| c - 0.1).collect();
        let t = r.test(&shifted).unwrap();
        assert!(
            (t.ks_statistic - 0.2).abs() < 0.01 && t.p_value < 1e-6,
            "{t:?}"
        );
    }
}
