//! Top-label calibrators: histogram binning (Zadrozny and Elkan 2001) and isotonic regression
//! (pool-adjacent-violators). Both map the uncalibrated confidence to a new top-label
//! probability; the other classes keep their relative sizes and share what is left.

use ndarray::ArrayView2;

use super::Calibrator;
use super::pieces::{equal_mass_edges, piece_of, top_confidence};
use crate::numeric::{argmax, softmax_with_temperature};

/// Softmax of `logits`, then the top entry replaced by `f(top confidence)` and the others
/// rescaled to sum to the remainder (spread evenly when the softmax left them nothing).
pub(crate) fn rescale_top(logits: &[f64], f: impl Fn(f64) -> f64) -> Vec<f64> {
    let mut p = softmax_with_temperature(logits, 1.0);
    let top = argmax(&p);
    let c = p[top];
    let q = f(c).clamp(0.0, 1.0);
    let rest = 1.0 - c;
    let others = (p.len() - 1).max(1) as f64;
    for (j, v) in p.iter_mut().enumerate() {
        *v = if j == top {
            q
        } else if rest > 1e-300 {
            *v * (1.0 - q) / rest
        } else {
            (1.0 - q) / others
        };
    }
    p
}

/// Confidence and correctness of every row, as the top-label fits need them.
fn top_label_data(logits: ArrayView2<'_, f64>, labels: &[usize]) -> (Vec<f64>, Vec<bool>) {
    logits
        .rows()
        .into_iter()
        .zip(labels)
        .map(|(r, &y)| {
            let r = r.to_vec();
            (top_confidence(&r), argmax(&r) == y)
        })
        .unzip()
}

/// Histogram binning with `bins` equal-mass bins; each bin's value is its accuracy.
pub(crate) fn fit_histogram(
    logits: ArrayView2<'_, f64>,
    labels: &[usize],
    bins: usize,
) -> Calibrator {
    let (conf, correct) = top_label_data(logits, labels);
    let mut sorted = conf.clone();
    sorted.sort_by(f64::total_cmp);
    let edges = equal_mass_edges(&sorted, bins);
    let mut hits = vec![0.0; bins];
    let mut counts = vec![0.0; bins];
    for (&c, &ok) in conf.iter().zip(&correct) {
        let b = piece_of(&edges, c);
        counts[b] += 1.0;
        hits[b] += f64::from(u8::from(ok));
    }
    // An empty bin (only with heavy ties) takes the midpoint of its edges as its value.
    let values = (0..bins)
        .map(|b| {
            if counts[b] > 0.0 {
                hits[b] / counts[b]
            } else {
                let lo = if b == 0 { 0.0 } else { edges[b - 1] };
                0.5 * (lo + edges.get(b).copied().unwrap_or(1.0))
            }
        })
        .collect();
    Calibrator::Histogram { edges, values }
}

/// Isotonic regression of correctness on confidence (non-decreasing, least squares).
pub(crate) fn fit_isotonic(logits: ArrayView2<'_, f64>, labels: &[usize]) -> Calibrator {
    let (conf, correct) = top_label_data(logits, labels);
    let mut order: Vec<usize> = (0..conf.len()).collect();
    order.sort_by(|&a, &b| conf[a].total_cmp(&conf[b]));
    // Blocks of (lowest confidence, sum of targets, count). Equal confidences are pooled first
    // so that the step function is well defined at every confidence.
    let mut blocks: Vec<(f64, f64, f64)> = Vec::new();
    for &i in &order {
        let y = f64::from(u8::from(correct[i]));
        match blocks.last_mut() {
            Some(last) if last.0 == conf[i] => {
                last.1 += y;
                last.2 += 1.0;
            }
            _ => blocks.push((conf[i], y, 1.0)),
        }
        while blocks.len() >= 2 {
            let (a, b) = (blocks[blocks.len() - 2], blocks[blocks.len() - 1]);
            if a.1 / a.2 <= b.1 / b.2 {
                break;
            }
            blocks.pop();
            let last = blocks.last_mut().expect("two blocks were present");
            last.1 += b.1;
            last.2 += b.2;
        }
    }
    let (thresholds, values) = blocks.iter().map(|&(x, s, n)| (x, s / n)).unzip();
    Calibrator::Isotonic { thresholds, values }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Two-class logits whose softmax confidence is exactly `c` (for c >= 0.5).
    fn logits_with_confidence(cs: &[f64]) -> Array2<f64> {
        let mut z = Array2::zeros((cs.len(), 2));
        for (i, &c) in cs.iter().enumerate() {
            z[[i, 0]] = (c / (1.0 - c)).ln();
        }
        z
    }

    #[test]
    fn isotonic_pools_violators() {
        // Confidences .6 .7 .8 .9 with correctness 1 0 0 1: PAV pools the first three to 1/3.
        let z = logits_with_confidence(&[0.6, 0.7, 0.8, 0.9]);
        let y = [0, 1, 1, 0];
        let Calibrator::Isotonic { thresholds, values } = fit_isotonic(z.view(), &y) else {
            unreachable!()
        };
        assert_eq!(values.len(), 2);
        assert!((values[0] - 1.0 / 3.0).abs() < 1e-12 && values[1] == 1.0);
        assert!((thresholds[0] - 0.6).abs() < 1e-12 && (thresholds[1] - 0.9).abs() < 1e-12);
    }

    #[test]
    fn histogram_values_are_bin_accuracies() {
        let z = logits_with_confidence(&[0.55, 0.6, 0.9, 0.95]);
        let y = [0, 1, 0, 0];
        let Calibrator::Histogram { edges, values } = fit_histogram(z.view(), &y, 2) else {
            unreachable!()
        };
        assert!((edges[0] - 0.75).abs() < 1e-12);
        assert_eq!(values, vec![0.5, 1.0]);
    }

    #[test]
    fn rescale_handles_a_saturated_softmax() {
        let p = rescale_top(&[1000.0, 0.0, 0.0], |_| 0.8);
        assert!((p[0] - 0.8).abs() < 1e-12 && (p[1] - 0.1).abs() < 1e-12);
    }
}
