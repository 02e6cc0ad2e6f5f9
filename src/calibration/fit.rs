//! Fitting entry point: input validation shared by every method, the options with their
//! documented defaults (`shared/method.md` marks them "our choice"), and dispatch to the
//! method's own fit.

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::{CalibrationError, Calibrator, binning, temperature, vector};
use crate::numeric::{argmax, check_finite};

/// Which calibrator to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// No calibration (softmax of the logits).
    Identity,
    /// Temperature scaling: one T, exact NLL optimum.
    Ts,
    /// Vector scaling: one weight and bias per class, NLL optimum.
    Vector,
    /// Adaptive piecewise temperature scaling (the default).
    #[default]
    Ats,
    /// Histogram binning of the top label.
    Histogram,
    /// Isotonic regression of the top label.
    Isotonic,
}

/// What each ATS piece's temperature minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Negative log-likelihood of the piece (convex in 1/T; the default).
    #[default]
    Nll,
    /// The piece's own calibration gap |accuracy - mean confidence|.
    Ece,
}

/// Fit settings. Every field has the default `docs/CALIBRATION.md` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FitOptions {
    /// ATS: number of equal-mass pieces of the uncalibrated confidence.
    pub pieces: usize,
    /// ATS: what each piece's temperature minimises.
    pub objective: Objective,
    /// ATS: strength of the pull toward the global temperature, in pseudo-samples of average
    /// curvature (0 disables shrinkage).
    pub shrinkage: f64,
    /// ATS: interpolate 1/T linearly between piece centres.
    pub smooth: bool,
    /// ATS and histogram: refuse to fit with fewer samples than this per piece or bin.
    pub min_piece_samples: usize,
    /// Histogram binning: number of equal-mass bins.
    pub histogram_bins: usize,
    /// Smallest temperature searched (TS, ATS).
    pub t_min: f64,
    /// Largest temperature searched (TS, ATS).
    pub t_max: f64,
    /// Vector scaling: ridge penalty on the distance of the parameters from the TS solution,
    /// which keeps biases of classes absent from the validation set finite.
    pub vector_l2: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            pieces: 15,
            objective: Objective::Nll,
            shrinkage: 10.0,
            smooth: false,
            min_piece_samples: 10,
            histogram_bins: 15,
            t_min: 0.05,
            t_max: 10.0,
            vector_l2: 1e-4,
        }
    }
}

impl FitOptions {
    /// Rejects settings that would make the fit meaningless.
    pub fn validate(&self) -> Result<(), CalibrationError> {
        let bad = |m: &str| Err(CalibrationError::InvalidOption(m.into()));
        if self.pieces == 0 || self.histogram_bins == 0 {
            return bad("--pieces and --histogram-bins must be at least 1");
        }
        if !(self.shrinkage.is_finite() && self.shrinkage >= 0.0) {
            return bad("--shrinkage must be finite and >= 0");
        }
        if !(self.t_min.is_finite() && self.t_max.is_finite() && 0.0 < self.t_min)
            || self.t_min >= self.t_max
        {
            return bad("need 0 < --t-min < --t-max, both finite");
        }
        if !(self.vector_l2.is_finite() && self.vector_l2 >= 0.0) {
            return bad("--vector-l2 must be finite and >= 0");
        }
        Ok(())
    }
}

/// Fits `method` on validation `logits` `[N, K]` and integer `labels` `[N]`.
///
/// Errors on empty input, non-finite logits, mismatched lengths, labels out of range, fewer
/// than 2 classes, too few samples for the requested pieces, and on a validation set without a
/// single error (every temperature-type fit would then push confidences to 1).
pub fn fit(
    method: Method,
    opts: &FitOptions,
    logits: ArrayView2<'_, f64>,
    labels: &[usize],
) -> Result<Calibrator, CalibrationError> {
    opts.validate()?;
    let errors = validate_input(logits, labels)?;
    if method == Method::Identity {
        return Ok(Calibrator::Identity);
    }
    if errors == 0 {
        return Err(CalibrationError::Degenerate(format!(
            "all {} validation samples are classified correctly, so the likelihood keeps \
             rising as confidences approach 1 and no finite calibrator is identified; \
             fit on a larger or harder validation split",
            labels.len()
        )));
    }
    let need = |groups: usize| {
        if labels.len() < groups * opts.min_piece_samples {
            Err(CalibrationError::TooFewSamples {
                samples: labels.len(),
                pieces: groups,
                min_per_piece: opts.min_piece_samples,
            })
        } else {
            Ok(())
        }
    };
    Ok(match method {
        Method::Identity => Calibrator::Identity,
        Method::Ts => temperature::fit_ts(logits, labels, opts),
        Method::Ats => {
            need(opts.pieces)?;
            temperature::fit_ats(logits, labels, opts)
        }
        Method::Vector => vector::fit_vector(logits, labels, opts),
        Method::Histogram => {
            need(opts.histogram_bins)?;
            binning::fit_histogram(logits, labels, opts.histogram_bins)
        }
        Method::Isotonic => binning::fit_isotonic(logits, labels),
    })
}

/// Checks shapes, finiteness and label range; returns the number of misclassified rows.
fn validate_input(
    logits: ArrayView2<'_, f64>,
    labels: &[usize],
) -> Result<usize, CalibrationError> {
    let (n, k) = logits.dim();
    if n == 0 || k == 0 {
        return Err(CalibrationError::Empty);
    }
    if k < 2 {
        return Err(CalibrationError::InvalidOption(format!(
            "calibration needs at least 2 classes, the logits have {k}"
        )));
    }
    if labels.len() != n {
        return Err(CalibrationError::LengthMismatch {
            rows: n,
            labels: labels.len(),
        });
    }
    let mut errors = 0;
    let mut buf = vec![0.0; k];
    for (row, (z, &y)) in logits.rows().into_iter().zip(labels).enumerate() {
        if y >= k {
            return Err(CalibrationError::LabelOutOfRange {
                row,
                label: y,
                classes: k,
            });
        }
        buf.iter_mut().zip(z.iter()).for_each(|(b, v)| *b = *v);
        check_finite(&buf).map_err(|source| CalibrationError::NonFiniteRow { row, source })?;
        errors += usize::from(argmax(&buf) != y);
    }
    Ok(errors)
}

/// Applies `calibrator` to every row of `logits`, giving probabilities `[N, K]`.
pub fn calibrate_rows(
    calibrator: &Calibrator,
    logits: ArrayView2<'_, f64>,
) -> Result<Array2<f64>, CalibrationError> {
    let mut out = Array2::zeros(logits.dim());
    let mut buf = vec![0.0; logits.ncols()];
    for (z, mut o) in logits.rows().into_iter().zip(out.rows_mut()) {
        buf.iter_mut().zip(z.iter()).for_each(|(b, v)| *b = *v);
        let p = calibrator.probabilities(&buf)?;
        o.iter_mut().zip(p).for_each(|(o, p)| *o = p);
    }
    Ok(out)
}
