//! One model's live windows: the last `capacity` labelled predictions (for the labelled metrics)
//! and the last `capacity` served confidences (for the label-free figures).
//!
//! Metrics are recomputed from the window when asked (O(window)); that keeps removal trivial and
//! makes every figure come from the same code as `caliper eval`, so the two agree exactly.

use std::collections::{BTreeMap, VecDeque};

use ndarray::Array2;
use serde::Serialize;

use super::log::FeedbackRecord;
use crate::trust::metrics::{
    Bin, BinnedAccumulator, BootstrapOptions, ConfidenceReference, DriftTest, Interval,
    MetricReport, Samples,
};

/// The live figures of one model.
#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    /// Labelled predictions in the window.
    pub labelled: usize,
    /// Window ECE (equal-width bins), from the f64 confidences the tokens carried.
    pub ece: Option<f64>,
    /// Window MCE.
    pub mce: Option<f64>,
    /// Window accuracy.
    pub accuracy: Option<f64>,
    /// Every metric of `caliper eval` (AdaECE, classwise ECE, NLL, Brier, ...), when every
    /// labelled prediction carried its probability vector (models with few classes).
    pub full: Option<MetricReport>,
    /// Percentile bootstrap intervals of the metrics, when requested and computable.
    pub intervals: Option<BTreeMap<&'static str, Interval>>,
    /// Per-bin statistics (the live reliability diagram).
    pub bins: Vec<Bin>,
    /// Served predictions in the label-free window.
    pub served: usize,
    /// Mean calibrated confidence of served predictions: the accuracy to expect if calibrated.
    pub mean_confidence: Option<f64>,
    /// KS test of served confidences against the validation reference, when there is one.
    pub drift: Option<DriftTest>,
}

/// The windows of one model.
#[derive(Debug, Clone)]
pub struct ModelWindow {
    capacity: usize,
    labelled: VecDeque<FeedbackRecord>,
    served: VecDeque<f64>,
}

impl ModelWindow {
    /// Empty windows holding at most `capacity` items each.
    pub fn new(capacity: usize) -> Self {
        ModelWindow {
            capacity: capacity.max(1),
            labelled: VecDeque::new(),
            served: VecDeque::new(),
        }
    }

    /// Adds a labelled prediction, evicting the oldest when full.
    pub fn push(&mut self, r: FeedbackRecord) {
        if self.labelled.len() == self.capacity {
            self.labelled.pop_front();
        }
        self.labelled.push_back(r);
    }

    /// Adds a served confidence, evicting the oldest when full.
    pub fn observe_confidence(&mut self, c: f64) {
        if self.served.len() == self.capacity {
            self.served.pop_front();
        }
        self.served.push_back(c);
    }

    /// Nonces of the labelled predictions in the window.
    pub fn nonces(&self) -> impl Iterator<Item = u64> + '_ {
        self.labelled.iter().map(|r| r.nonce)
    }

    /// Labelled predictions in the window, oldest first.
    pub fn labelled(&self) -> impl Iterator<Item = &FeedbackRecord> {
        self.labelled.iter()
    }

    /// Equal-width binned statistics of the labelled window.
    pub fn accumulator(&self, bins: usize) -> BinnedAccumulator {
        let mut acc = BinnedAccumulator::new(bins.max(1)).expect("bins >= 1");
        for r in &self.labelled {
            // Confidences come from verified tokens and are in [0, 1]; add cannot fail on them.
            let _ = acc.add(r.confidence, r.predicted == r.label);
        }
        acc
    }

    /// The probability matrix and labels of the window, when every record carries probabilities
    /// of one length.
    fn probabilities(&self) -> Option<(Array2<f64>, Vec<usize>)> {
        let k = self.labelled.front()?.probabilities.as_ref()?.len();
        let mut flat = Vec::with_capacity(self.labelled.len() * k);
        for r in &self.labelled {
            let p = r.probabilities.as_ref().filter(|p| p.len() == k)?;
            flat.extend_from_slice(p);
        }
        let labels = self.labelled.iter().map(|r| usize::from(r.label)).collect();
        Array2::from_shape_vec((self.labelled.len(), k), flat)
            .ok()
            .map(|a| (a, labels))
    }

    /// Computes the live figures. `bootstrap` adds intervals (costly: only on explicit request).
    pub fn report(
        &self,
        bins: usize,
        reference: Option<&ConfidenceReference>,
        bootstrap: Option<&BootstrapOptions>,
    ) -> LiveReport {
        let acc = self.accumulator(bins);
        let (mut full, mut intervals) = (None, None);
        if let Some((probs, labels)) = self.probabilities()
            && let Ok(samples) = Samples::new(probs.view(), &labels)
        {
            let idx: Vec<usize> = (0..samples.len()).collect();
            full = samples.report(&idx, bins).ok();
            intervals =
                bootstrap.and_then(|o| crate::trust::metrics::bootstrap(&samples, bins, o).ok());
        }
        let served: Vec<f64> = self.served.iter().copied().collect();
        LiveReport {
            labelled: self.labelled.len(),
            ece: acc.ece(),
            mce: acc.mce(),
            accuracy: acc.accuracy(),
            full,
            intervals,
            bins: acc.bin_stats(),
            served: served.len(),
            mean_confidence: (!served.is_empty())
                .then(|| served.iter().sum::<f64>() / served.len() as f64),
            drift: reference.and_then(|r| r.test(&served)),
        }
    }
}
