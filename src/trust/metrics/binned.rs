//! Equal-width confidence bins as a mergeable streaming accumulator: the ECE and MCE of the
//! whole `caliper eval`, the trainer's per-epoch ECE and the live monitor's windows all come from
//! this one struct, so the three can never disagree on binning.
//!
//! Bins follow `docs/METHOD.md#binning-conventions`: edges `linspace(0, 1, M + 1)`, right-closed, so bin `m` holds
//! confidences in `(m/M, (m+1)/M]` and a confidence of exactly 0 falls into the first bin.

use serde::{Deserialize, Serialize};

use super::MetricsError;

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    /// Lower edge of the bin (exclusive, except for the first bin).
    pub lower: f64,
    /// Upper edge of the bin (inclusive).
    pub upper: f64,
    /// Number of samples whose confidence fell into the bin.
    pub count: u64,
    /// Mean confidence of those samples (0 when the bin is empty).
    pub confidence: f64,
    /// Fraction of them that were correct (0 when the bin is empty).
    pub accuracy: f64,
}

/// Streaming accumulator for the equal-width binned metrics (ECE, MCE, accuracy).
///
/// Holds only sums, so [`add`](Self::add) and [`merge`](Self::merge) are O(1) / O(M) and the
/// result does not depend on the order in which samples arrived (up to float rounding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinnedAccumulator {
    counts: Vec<u64>,
    sum_confidence: Vec<f64>,
    sum_correct: Vec<f64>,
}

impl BinnedAccumulator {
    /// An empty accumulator with `bins` equal-width bins (at least 1).
    pub fn new(bins: usize) -> Result<Self, MetricsError> {
        if bins == 0 {
            return Err(MetricsError::InvalidBins(bins));
        }
        Ok(Self {
            counts: vec![0; bins],
            sum_confidence: vec![0.0; bins],
            sum_correct: vec![0.0; bins],
        })
    }

    /// Number of bins.
    pub fn bins(&self) -> usize {
        self.counts.len()
    }

    /// Index of the right-closed bin that holds `confidence` (clamped into `[0, 1]`).
    pub fn bin_index(bins: usize, confidence: f64) -> usize {
        // ceil(c * M) - 1 is the right-closed bin; c = 0 would give -1 and goes to bin 0.
        let raw = (confidence.clamp(0.0, 1.0) * bins as f64).ceil() as usize;
        raw.saturating_sub(1).min(bins - 1)
    }

    /// Adds one prediction: its confidence (top probability) and whether it was correct.
    /// A non-finite confidence is rejected so that one bad row cannot poison a whole window.
    pub fn add(&mut self, confidence: f64, correct: bool) -> Result<(), MetricsError> {
        if !confidence.is_finite() || !(0.0..=1.0).contains(&confidence) {
            return Err(MetricsError::InvalidProbability(confidence));
        }
        let b = Self::bin_index(self.bins(), confidence);
        self.counts[b] += 1;
        self.sum_confidence[b] += confidence;
        self.sum_correct[b] += f64::from(u8::from(correct));
        Ok(())
    }

    /// Adds every sample of `other` (same number of bins required).
    pub fn merge(&mut self, other: &BinnedAccumulator) -> Result<(), MetricsError> {
        if other.bins() != self.bins() {
            return Err(MetricsError::BinMismatch {
                left: self.bins(),
                right: other.bins(),
            });
        }
        for b in 0..self.bins() {
            self.counts[b] += other.counts[b];
            self.sum_confidence[b] += other.sum_confidence[b];
            self.sum_correct[b] += other.sum_correct[b];
        }
        Ok(())
    }

    /// Total number of samples added.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Fraction of correct predictions, `None` when empty.
    pub fn accuracy(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum_correct.iter().sum::<f64>() / n as f64)
    }

    /// Mean confidence, `None` when empty.
    pub fn mean_confidence(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum_confidence.iter().sum::<f64>() / n as f64)
    }

    /// Expected calibration error: sum over bins of |B|/N * |acc(B) - conf(B)|. `None` when empty.
    pub fn ece(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| {
            (0..self.bins())
                .filter(|&b| self.counts[b] > 0)
                .map(|b| (self.sum_correct[b] - self.sum_confidence[b]).abs())
                .sum::<f64>()
                / n as f64
        })
    }

    /// Maximum calibration error over the non-empty bins. `None` when empty.
    pub fn mce(&self) -> Option<f64> {
        (self.count() > 0).then(|| {
            self.bin_stats()
                .iter()
                .filter(|b| b.count > 0)
                .map(|b| (b.accuracy - b.confidence).abs())
                .fold(0.0, f64::max)
        })
    }

    /// Per-bin counts, mean confidence and accuracy (for reliability diagrams).
    pub fn bin_stats(&self) -> Vec<Bin> {
        let m = self.bins() as f64;
        (0..self.bins())
            .map(|b| {
                let count = self.counts[b];
                let (confidence, accuracy) = if count > 0 {
                    (
                        self.sum_confidence[b] / count as f64,
                        self.sum_correct[b] / count as f64,
                    )
                } else {
                    (0.0, 0.0)
                };
                Bin {
                    lower: b as f64 / m,
                    upper: (b + 1) as f64 / m,
                    count,
                    confidence,
                    accuracy,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_ece_and_mce() {
        // Two bins. Bin 0 (0, .5]: conf .3 wrong, .5 right -> acc .5, conf .4, gap .1.
        // Bin 1 (.5, 1]: .9 right, .7 right, .8 wrong -> acc 2/3, conf .8, gap 2/15.
        // ECE = 2/5 * .1 + 3/5 * 2/15 = .04 + .08 = .12; MCE = 2/15.
        let mut acc = BinnedAccumulator::new(2).unwrap();
        for (c, ok) in [
            (0.3, false),
            (0.5, true),
            (0.9, true),
            (0.7, true),
            (0.8, false),
        ] {
            acc.add(c, ok).unwrap();
        }
        assert!((acc.ece().unwrap() - 0.12).abs() < 1e-12);
        assert!((acc.mce().unwrap() - 2.0 / 15.0).abs() < 1e-12);
        assert!((acc.accuracy().unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(
            acc.bin_stats()[0].count,
            2,
            "0.5 is right-closed into bin 0"
        );
    }

    #[test]
    fn merge_equals_adding_everything_to_one() {
        let samples: Vec<(f64, bool)> = (0..100)
            .map(|i| ((i as f64 * 0.37) % 1.0, i % 3 != 0))
            .collect();
        let mut whole = BinnedAccumulator::new(15).unwrap();
        let mut left = BinnedAccumulator::new(15).unwrap();
        let mut right = BinnedAccumulator::new(15).unwrap();
        for (i, &(c, ok)) in samples.iter().enumerate() {
            whole.add(c, ok).unwrap();
            if i < 40 { &mut left } else { &mut right }
                .add(c, ok)
                .unwrap();
        }
        left.merge(&right).unwrap();
        assert_eq!(left.count(), 100);
        assert!((left.ece().unwrap() - whole.ece().unwrap()).abs() < 1e-12);
        assert!(left.merge(&BinnedAccumulator::new(10).unwrap()).is_err());
    }

    #[test]
    fn edges_and_bad_input() {
        assert_eq!(BinnedAccumulator::bin_index(15, 0.0), 0);
        assert_eq!(BinnedAccumulator::bin_index(15, 1.0), 14);
        assert_eq!(BinnedAccumulator::bin_index(10, 0.1), 0);
        assert_eq!(BinnedAccumulator::bin_index(10, 0.1000001), 1);
        let mut acc = BinnedAccumulator::new(15).unwrap();
        assert!(acc.ece().is_none());
        assert!(acc.add(f64::NAN, true).is_err());
        assert!(acc.add(1.5, true).is_err());
        assert!(BinnedAccumulator::new(0).is_err());
    }
}
