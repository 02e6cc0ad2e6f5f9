//! A conformal test martingale for the exchangeability of a stream of scores, in bounded memory.
//!
//! The conformal p-value of score s_n against every score so far, with ties broken by a uniform
//! tau_n, p_n = (#{i <= n: a_i > a_n} + tau_n #{i <= n: a_i = a_n}) / n for the nonconformity
//! a = -s, is exactly uniform and independent of the past when the scores are exchangeable
//! (Vovk et al. 2005, ch. 7), whatever the scores are. Scores are quantised into
//! [`EXCHANGEABILITY_BINS`] bins first: the p-values of the quantised scores are still exact (ties
//! are what tau is for), and the bag of every score seen becomes a Fenwick tree of counts
//! (O(bins) memory, O(log bins) per score). The quantisation is on -log10(1 - s), fine where
//! max-probabilities crowd near 1.
//!
//! The Composite Jumper (Vovk 2021, "Testing randomness online") bets on the p-values with the
//! three calibrators f_e(p) = 1 + e (p - 1/2), e in {-1, 0, 1}, and lets its capital jump
//! between them at rate J: it detects a change in either direction (e = -1 bets on small
//! p-values: scores lower than before), and a change after a long exchangeable stretch as fast
//! as one at the start.

use super::wealth::LogWealth;

/// Quantisation bins of the scores.
pub const EXCHANGEABILITY_BINS: usize = 4096;
/// Jump rate of the Composite Jumper (Vovk 2021 uses 0.01).
const JUMP: f64 = 0.01;
/// Scores above 1 - 10^-DECADES share the last bin.
const DECADES: f64 = 12.0;

/// The martingale and its bag of scores.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeabilityMartingale {
    /// Fenwick tree of counts per bin (1-based internally).
    tree: Vec<u64>,
    seen: u64,
    /// Capital in each of the three calibrators, normalised to sum 1; the scale is `wealth`.
    capital: [f64; 3],
    wealth: LogWealth,
}

impl Default for ExchangeabilityMartingale {
    fn default() -> Self {
        Self::new()
    }
}

impl ExchangeabilityMartingale {
    /// A fresh martingale (value 1, empty bag).
    pub fn new() -> Self {
        Self {
            tree: vec![0; EXCHANGEABILITY_BINS + 1],
            seen: 0,
            capital: [1.0 / 3.0; 3],
            wealth: LogWealth::default(),
        }
    }

    /// The bin of a score in [0, 1] (higher scores, higher bins).
    pub fn bin(score: f64) -> usize {
        let s = if score.is_nan() {
            0.0
        } else {
            score.clamp(0.0, 1.0)
        };
        let t = -(1.0 - s).max(10f64.powf(-DECADES)).log10() / DECADES;
        ((t * (EXCHANGEABILITY_BINS - 1) as f64).floor() as usize).min(EXCHANGEABILITY_BINS - 1)
    }

    fn add(&mut self, bin: usize) {
        let mut i = bin + 1;
        while i < self.tree.len() {
            self.tree[i] += 1;
            i += i & i.wrapping_neg();
        }
    }

    /// Scores seen in bins `0..=bin`.
    fn count_upto(&self, bin: usize) -> u64 {
        let mut i = bin + 1;
        let mut s = 0;
        while i > 0 {
            s += self.tree[i];
            i -= i & i.wrapping_neg();
        }
        s
    }

    /// Adds a score and bets on its conformal p-value; `tau` is a fresh uniform in [0, 1].
    /// Returns the p-value.
    pub fn observe(&mut self, score: f64, tau: f64) -> f64 {
        let b = Self::bin(score);
        self.add(b);
        self.seen += 1;
        let at_most = self.count_upto(b);
        let below = if b == 0 { 0 } else { self.count_upto(b - 1) };
        let equal = at_most - below;
        // Nonconformity is -score: "more nonconforming" means a lower score, i.e. a lower bin.
        let p = (below as f64 + tau.clamp(0.0, 1.0) * equal as f64) / self.seen as f64;
        // Composite Jumper: a share J of the capital is redistributed evenly, then each part
        // is multiplied by its calibrator.
        for c in &mut self.capital {
            *c = (1.0 - JUMP) * *c + JUMP / 3.0;
        }
        for (c, e) in self.capital.iter_mut().zip([-1.0, 0.0, 1.0]) {
            *c *= 1.0 + e * (p - 0.5);
        }
        self.wealth.rescale(&mut self.capital);
        p
    }

    /// ln of the martingale's current value.
    pub fn log_value(&self) -> f64 {
        self.wealth.log_value()
    }

    /// The current value (saturates at f64::MAX).
    pub fn value(&self) -> f64 {
        self.wealth.value()
    }

    /// The largest value reached so far (what Ville's inequality bounds).
    pub fn max_value(&self) -> f64 {
        self.wealth.max_value()
    }

    /// Scores seen.
    pub fn samples(&self) -> u64 {
        self.seen
    }
}
