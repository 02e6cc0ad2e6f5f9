//! Calibration and classification metrics (ECE family, NLL, Brier, AURC, AUROC) in f64, the
//! mergeable streaming accumulator shared by the trainer and the live monitor, and percentile
//! bootstrap intervals. Definitions: `docs/METHOD.md#metrics` and `docs/CALIBRATION.md`.

mod binned;
mod bootstrap;
mod drift;
mod ranking;
mod scores;

pub use binned::{Bin, BinnedAccumulator};
pub use bootstrap::{BootstrapOptions, Interval, bootstrap, percentile};
pub use drift::{ConfidenceReference, DriftTest};
pub use ranking::{auroc, average_precision};
pub use scores::{
    MetricReport, Samples, accuracy, adaece, brier, classwise_ece, ece, evaluate, mce, nll,
};

/// Default number of bins of the ECE family (Guo et al. 2017); the paper reports 20.
pub const DEFAULT_BINS: usize = 15;

/// Errors from computing metrics on bad input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// No samples (or no classes) at all.
    #[error("no samples to evaluate")]
    Empty,
    /// The number of probability rows differs from the number of labels.
    #[error("{rows} rows of probabilities but {labels} labels")]
    LengthMismatch { rows: usize, labels: usize },
    /// A label is not a valid class index.
    #[error("label {label} of sample {index} is out of range for {classes} classes")]
    LabelOutOfRange {
        index: usize,
        label: usize,
        classes: usize,
    },
    /// A probability or confidence is NaN, infinite or outside [0, 1].
    #[error("probabilities must be finite and in [0, 1], got {0}")]
    InvalidProbability(f64),
    /// Zero bins were requested.
    #[error("the number of bins must be at least 1, got {0}")]
    InvalidBins(usize),
    /// Two accumulators with different bin counts cannot be merged.
    #[error("cannot merge accumulators with {left} and {right} bins")]
    BinMismatch { left: usize, right: usize },
    /// Bootstrap settings out of range.
    #[error(
        "bootstrap needs at least 2 resamples and a level in (0, 1); got {resamples} and {level}"
    )]
    InvalidBootstrap { resamples: usize, level: f64 },
}
