//! Whole-set metrics of class probabilities against labels, all in f64: accuracy, NLL, Brier,
//! ECE (equal width), AdaECE (equal mass), MCE, classwise ECE, and AURC / AUROC of the
//! confidence as an error detector. Definitions follow `docs/METHOD.md#metrics`.
//!
//! Everything is computed over an index list into a validated [`Samples`], so the bootstrap
//! (which resamples indices) and the plain report share one implementation.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::{BinnedAccumulator, MetricsError};
use crate::numeric::argmax;

/// Every metric `caliper eval` reports, as fractions (not percent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MetricReport {
    /// Number of samples.
    #[serde(default)]
    pub samples: usize,
    /// Number of classes.
    #[serde(default)]
    pub classes: usize,
    /// Number of bins used by the ECE family.
    #[serde(default)]
    pub bins: usize,
    /// Fraction of samples whose top class is the label.
    #[serde(default)]
    pub accuracy: f64,
    /// Mean negative log-likelihood of the label (natural log).
    #[serde(default)]
    pub nll: f64,
    /// Mean over samples of sum_k (p_k - 1[y = k])^2.
    #[serde(default)]
    pub brier: f64,
    /// Expected calibration error, equal-width bins.
    #[serde(default)]
    pub ece: f64,
    /// Adaptive ECE, equal-mass bins.
    #[serde(default)]
    pub adaece: f64,
    /// Maximum calibration error over non-empty equal-width bins.
    #[serde(default)]
    pub mce: f64,
    /// Classwise ECE averaged over classes.
    #[serde(default)]
    pub classwise_ece: f64,
    /// Area under the risk-coverage curve (lower is better).
    #[serde(default)]
    pub aurc: f64,
    /// AUROC of the confidence for telling correct from wrong predictions; `None` when every
    /// prediction is correct (or every one wrong), where it is undefined.
    #[serde(default)]
    pub auroc: Option<f64>,
}

impl MetricReport {
    /// The scalar metrics by name, in a fixed order (used for tables and bootstrap intervals).
    pub fn named(&self) -> Vec<(&'static str, Option<f64>)> {
        vec![
            ("accuracy", Some(self.accuracy)),
            ("nll", Some(self.nll)),
            ("brier", Some(self.brier)),
            ("ece", Some(self.ece)),
            ("adaece", Some(self.adaece)),
            ("mce", Some(self.mce)),
            ("classwise_ece", Some(self.classwise_ece)),
            ("aurc", Some(self.aurc)),
            ("auroc", self.auroc),
        ]
    }
}

/// Validated probabilities and labels with the per-sample quantities precomputed.
#[derive(Debug)]
pub struct Samples<'a> {
    probs: ArrayView2<'a, f64>,
    labels: &'a [usize],
    confidence: Vec<f64>,
    correct: Vec<bool>,
    nll: Vec<f64>,
    brier: Vec<f64>,
}

impl<'a> Samples<'a> {
    /// Checks shapes, label range and that every probability is finite and in [0, 1].
    pub fn new(probs: ArrayView2<'a, f64>, labels: &'a [usize]) -> Result<Self, MetricsError> {
        let (n, k) = probs.dim();
        if n == 0 || k == 0 {
            return Err(MetricsError::Empty);
        }
        if labels.len() != n {
            return Err(MetricsError::LengthMismatch {
                rows: n,
                labels: labels.len(),
            });
        }
        let mut s = Samples {
            probs,
            labels,
            confidence: Vec::with_capacity(n),
            correct: Vec::with_capacity(n),
            nll: Vec::with_capacity(n),
            brier: Vec::with_capacity(n),
        };
        for (i, (row, &y)) in probs.rows().into_iter().zip(labels).enumerate() {
            if y >= k {
                return Err(MetricsError::LabelOutOfRange {
                    index: i,
                    label: y,
                    classes: k,
                });
            }
            if let Some(&bad) = row
                .iter()
                .find(|p| !p.is_finite() || !(0.0..=1.0 + 1e-9).contains(*p))
            {
                return Err(MetricsError::InvalidProbability(bad));
            }
            let row = row.as_slice().map_or_else(|| row.to_vec(), <[f64]>::to_vec);
            let top = argmax(&row);
            s.confidence.push(row[top].min(1.0));
            s.correct.push(top == y);
            // Clamp at the smallest normal float so a zero probability gives a large finite NLL.
            s.nll.push(-row[y].max(f64::MIN_POSITIVE).ln());
            let sq: f64 = row.iter().map(|p| p * p).sum();
            s.brier.push(sq - 2.0 * row[y] + 1.0);
        }
        Ok(s)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Always false: construction refuses empty input.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Top-class confidence of each sample.
    pub fn confidence(&self) -> &[f64] {
        &self.confidence
    }

    /// Whether each sample's top class is its label.
    pub fn correct(&self) -> &[bool] {
        &self.correct
    }

    /// The full report over the samples at `idx` (repeats allowed, as in a bootstrap).
    pub fn report(&self, idx: &[usize], bins: usize) -> Result<MetricReport, MetricsError> {
        if idx.is_empty() {
            return Err(MetricsError::Empty);
        }
        let n = idx.len() as f64;
        let mean = |v: &[f64]| idx.iter().map(|&i| v[i]).sum::<f64>() / n;
        let binned = self.binned(idx, bins)?;
        Ok(MetricReport {
            samples: idx.len(),
            classes: self.probs.ncols(),
            bins,
            accuracy: binned.accuracy().unwrap_or(0.0),
            nll: mean(&self.nll),
            brier: mean(&self.brier),
            ece: binned.ece().unwrap_or(0.0),
            adaece: self.adaece(idx, bins),
            mce: binned.mce().unwrap_or(0.0),
            classwise_ece: self.classwise_ece(idx, bins),
            aurc: self.aurc(idx),
            auroc: self.auroc(idx),
        })
    }

    /// The equal-width accumulator over the samples at `idx`.
    pub fn binned(&self, idx: &[usize], bins: usize) -> Result<BinnedAccumulator, MetricsError> {
        let mut acc = BinnedAccumulator::new(bins)?;
        for &i in idx {
            acc.add(self.confidence[i], self.correct[i])?;
        }
        Ok(acc)
    }

    /// `idx` sorted by ascending confidence; ties keep their order in `idx` (a stable sort, as
    /// numpy's `argsort(kind="stable")`), which makes equal-mass bins reproducible.
    fn sorted_by_confidence(&self, idx: &[usize]) -> Vec<usize> {
        let mut order = idx.to_vec();
        order.sort_by(|&a, &b| self.confidence[a].total_cmp(&self.confidence[b]));
        order
    }

    /// AdaECE: sorted confidences cut into `bins` contiguous chunks whose sizes differ by at
    /// most one, larger chunks first (exactly `numpy.array_split`).
    fn adaece(&self, idx: &[usize], bins: usize) -> f64 {
        let order = self.sorted_by_confidence(idx);
        let n = order.len();
        let (q, r) = (n / bins, n % bins);
        let mut start = 0;
        let mut total = 0.0;
        for b in 0..bins {
            let len = q + usize::from(b < r);
            let chunk = &order[start..start + len];
            start += len;
            let gap: f64 = chunk
                .iter()
                .map(|&i| f64::from(u8::from(self.correct[i])) - self.confidence[i])
                .sum();
            total += gap.abs();
        }
        total / n as f64
    }

    /// Classwise ECE: for each class k, equal-width bins of p_k against 1[y = k]; mean over k.
    fn classwise_ece(&self, idx: &[usize], bins: usize) -> f64 {
        let k = self.probs.ncols();
        let mut sum_p = vec![0.0; bins];
        let mut sum_y = vec![0.0; bins];
        let mut total = 0.0;
        for class in 0..k {
            sum_p.fill(0.0);
            sum_y.fill(0.0);
            for &i in idx {
                let p = self.probs[[i, class]].clamp(0.0, 1.0);
                let b = BinnedAccumulator::bin_index(bins, p);
                sum_p[b] += p;
                sum_y[b] += f64::from(u8::from(self.labels[i] == class));
            }
            total += sum_p
                .iter()
                .zip(&sum_y)
                .map(|(p, y)| (y - p).abs())
                .sum::<f64>();
        }
        total / (idx.len() as f64 * k as f64)
    }

    /// AURC: mean over coverages i/n of the error rate among the i most confident samples.
    fn aurc(&self, idx: &[usize]) -> f64 {
        let mut order = idx.to_vec();
        order.sort_by(|&a, &b| self.confidence[b].total_cmp(&self.confidence[a]));
        let mut errors = 0.0;
        let mut sum = 0.0;
        for (j, &i) in order.iter().enumerate() {
            errors += f64::from(u8::from(!self.correct[i]));
            sum += errors / (j + 1) as f64;
        }
        sum / order.len() as f64
    }

    /// AUROC of confidence for telling correct (positive) from wrong predictions.
    fn auroc(&self, idx: &[usize]) -> Option<f64> {
        let (correct, wrong): (Vec<usize>, Vec<usize>) =
            idx.iter().copied().partition(|&i| self.correct[i]);
        let conf = |v: Vec<usize>| {
            v.into_iter()
                .map(|i| self.confidence[i])
                .collect::<Vec<_>>()
        };
        super::ranking::auroc(&conf(correct), &conf(wrong))
    }
}

/// All metrics of `probs` `[N, K]` against `labels` with `bins` bins for the ECE family.
pub fn evaluate(
    probs: ArrayView2<'_, f64>,
    labels: &[usize],
    bins: usize,
) -> Result<MetricReport, MetricsError> {
    let s = Samples::new(probs, labels)?;
    let idx: Vec<usize> = (0..s.len()).collect();
    s.report(&idx, bins)
}

macro_rules! single_metric {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub fn $name(
            probs: ArrayView2<'_, f64>,
            labels: &[usize],
            bins: usize,
        ) -> Result<f64, MetricsError> {
            Ok(evaluate(probs, labels, bins)?.$name)
        }
    };
}

single_metric!(
    /// Expected calibration error with `bins` equal-width bins.
    ece
);
single_metric!(
    /// Adaptive (equal-mass) ECE with `bins` bins.
    adaece
);
single_metric!(
    /// Maximum calibration error over the non-empty equal-width bins.
    mce
);
single_metric!(
    /// Classwise ECE with `bins` equal-width bins per class.
    classwise_ece
);

/// Fraction of rows whose top class is the label.
pub fn accuracy(probs: ArrayView2<'_, f64>, labels: &[usize]) -> Result<f64, MetricsError> {
    let s = Samples::new(probs, labels)?;
    Ok(s.correct.iter().filter(|&&c| c).count() as f64 / s.len() as f64)
}

/// Mean negative log-likelihood of the labels.
pub fn nll(probs: ArrayView2<'_, f64>, labels: &[usize]) -> Result<f64, MetricsError> {
    let s = Samples::new(probs, labels)?;
    Ok(s.nll.iter().sum::<f64>() / s.len() as f64)
}

/// Mean multi-class Brier score.
pub fn brier(probs: ArrayView2<'_, f64>, labels: &[usize]) -> Result<f64, MetricsError> {
    let s = Samples::new(probs, labels)?;
    Ok(s.brier.iter().sum::<f64>() / s.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn hand_computed_small_case() {
        // Rows: top .7 right, top .6 wrong (label 2), top .5 right, top .9 right.
        let p = array![
            [0.7, 0.2, 0.1],
            [0.6, 0.3, 0.1],
            [0.25, 0.5, 0.25],
            [0.05, 0.05, 0.9]
        ];
        let y = [0, 2, 1, 2];
        let r = evaluate(p.view(), &y, 2).unwrap();
        assert!((r.accuracy - 0.75).abs() < 1e-12);
        let nll = -(0.7f64.ln() + 0.1f64.ln() + 0.5f64.ln() + 0.9f64.ln()) / 4.0;
        assert!((r.nll - nll).abs() < 1e-12);
        // Brier: .09+.04+.01=.14; .36+.09+.81=1.26; .0625+.25+.0625=.375; .0025*2+.01=.015.
        assert!((r.brier - (0.14 + 1.26 + 0.375 + 0.015) / 4.0).abs() < 1e-12);
        // Bins (0,.5]: {.5 right} gap .5; (.5,1]: {.7 r, .6 w, .9 r} acc 2/3 conf .7333.
        let ece = (0.5 + (2.0 - 2.2f64).abs()) / 4.0;
        assert!((r.ece - ece).abs() < 1e-12);
        assert!((r.mce - 0.5).abs() < 1e-12);
        // AdaECE, 2 bins of 2 sorted confidences: {.5 r, .6 w}: |1 - 1.1|; {.7 r, .9 r}: |2 - 1.6|.
        assert!((r.adaece - (0.1 + 0.4) / 4.0).abs() < 1e-12);
        // Risk-coverage by confidence .9 r, .7 r, .6 w, .5 r: risks 0, 0, 1/3, 1/4.
        assert!((r.aurc - (1.0 / 3.0 + 0.25) / 4.0).abs() < 1e-12);
        // The single error has the second-lowest confidence: 2 of 3 positives rank above it.
        assert!((r.auroc.unwrap() - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn classwise_ece_hand_computed() {
        // One bin: classwise ECE = mean_k |freq_k - mean p_k|.
        let p = array![[0.8, 0.2], [0.4, 0.6]];
        let y = [0, 0];
        // class 0: |1 - .6| = .4; class 1: |0 - .4| = .4.
        assert!((classwise_ece(p.view(), &y, 1).unwrap() - 0.4).abs() < 1e-12);
    }

    #[test]
    fn auroc_is_undefined_without_errors_and_ties_count_half() {
        let p = array![[0.9, 0.1], [0.8, 0.2]];
        assert!(evaluate(p.view(), &[0, 0], 15).unwrap().auroc.is_none());
        let p = array![[0.8, 0.2], [0.8, 0.2]];
        let r = evaluate(p.view(), &[0, 1], 15).unwrap();
        assert!((r.auroc.unwrap() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_input() {
        let p = array![[0.5, 0.5]];
        assert!(matches!(
            evaluate(p.view(), &[2], 15),
            Err(MetricsError::LabelOutOfRange { .. })
        ));
        assert!(matches!(
            evaluate(p.view(), &[0, 1], 15),
            Err(MetricsError::LengthMismatch { .. })
        ));
        let nan = array![[f64::NAN, 0.5]];
        assert!(evaluate(nan.view(), &[0], 15).is_err());
        let empty = ndarray::Array2::<f64>::zeros((0, 3));
        assert!(matches!(
            evaluate(empty.view(), &[], 15),
            Err(MetricsError::Empty)
        ));
        assert!(evaluate(p.view(), &[0], 0).is_err());
    }
}
