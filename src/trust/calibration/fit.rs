//! Fitting entry point: input validation shared by every method and dispatch to the method's
//! own fit (the options are in `options`).

use ndarray::{Array2, ArrayView2};

use super::options::{FitOptions, Method};
use super::{CalibrationError, Calibrator, binning, temperature, vector};
use crate::numeric::{argmax, check_finite};

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
