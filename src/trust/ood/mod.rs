//! Out-of-distribution scores, every one oriented so that higher means more out-of-distribution:
//! here the logit-based ones ([`LogitScores`], on the raw logits); [`fit`] holds the fitted ones
//! (Mahalanobis on penultimate features, thresholds at a target TPR) and the metrics (AUROC,
//! FPR at 95% TPR, AUPR); [`detectors`] gathers the feature-based detectors (Mahalanobis, RMDS,
//! [`knn`], [`vim`]); [`artifacts`] what the calibration file stores; [`policy`] the per-request
//! verdict; [`eval`] the `caliper eval-ood` report. Definitions: docs/OOD.md.

pub mod artifacts;
mod blocked;
mod coarse;
pub mod detectors;
pub mod eval;
pub mod fit;
pub mod knn;
mod linalg;
pub mod policy;
pub mod vim;

use serde::Serialize;

use crate::numeric::{log_sum_exp, softmax_with_temperature};

/// Logit-based OOD scores of one input (higher = more out-of-distribution).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LogitScores {
    /// 1 - maximum softmax probability (Hendrycks and Gimpel 2017), in [0, 1).
    pub msp: f64,
    /// Negated maximum logit (Hendrycks et al. 2022).
    pub max_logit: f64,
    /// Energy score -logsumexp(z) (Liu et al. 2020, T = 1).
    pub energy: f64,
    /// Shannon entropy of the softmax, in nats.
    pub entropy: f64,
}

impl LogitScores {
    /// Scores of one row of finite logits.
    pub fn from_logits(logits: &[f64]) -> Self {
        let p = softmax_with_temperature(logits, 1.0);
        let max_p = p.iter().copied().fold(0.0, f64::max);
        let max_z = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Self {
            msp: 1.0 - max_p,
            max_logit: -max_z,
            energy: -log_sum_exp(logits),
            entropy: entropy(&p),
        }
    }
}

/// Shannon entropy of a probability vector, in nats.
pub fn entropy(p: &[f64]) -> f64 {
    // 0 * ln 0 = 0: skip exact zeros that underflowed.
    -p.iter()
        .filter(|&&q| q > 0.0)
        .map(|q| q * q.ln())
        .sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_are_maximally_uncertain() {
        let s = LogitScores::from_logits(&[0.0; 4]);
        assert!((s.msp - 0.75).abs() < 1e-12);
        assert!((s.entropy - 4f64.ln()).abs() < 1e-12);
        assert!((s.energy + 4f64.ln()).abs() < 1e-12);
        assert_eq!(s.max_logit, 0.0);
    }

    #[test]
    fn a_confident_row_scores_lower_on_every_score() {
        let sure = LogitScores::from_logits(&[12.0, 0.0, 0.0]);
        let unsure = LogitScores::from_logits(&[0.1, 0.0, 0.0]);
        assert!(sure.msp < unsure.msp);
        assert!(sure.max_logit < unsure.max_logit);
        assert!(sure.energy < unsure.energy);
        assert!(sure.entropy < unsure.entropy);
    }
}
