//! Temperature-type fits: the exact NLL-optimal single temperature (TS) and adaptive piecewise
//! temperature scaling (ATS, `docs/METHOD.md#ats`).
//!
//! Both solve in beta = 1/T, where the NLL of softmax(beta * z) is convex ([`super::nll_solver`] has
//! the objective and the solver). A pass over the data costs one exp per logit, so the fits are
//! arranged to make few: ATS gets every uncalibrated confidence from the global solve's first
//! pass (at beta = 1), accumulates each piece's derivatives in the same passes as the global
//! ones, and starts every piece from those instead of a fresh pass.

use ndarray::ArrayView2;

use super::Calibrator;
use super::nll_solver::{Jet, Rows, Solution, minimise, row_sums};
use super::options::{FitOptions, Objective};
use super::pieces::{equal_mass_edges, piece_of, top_confidence};

/// 1/T at confidence `c` for the smooth ATS variant: linear in c between piece centres,
/// constant beyond the first and last centre.
pub(crate) fn interpolate_beta(centres: &[f64], temperatures: &[f64], c: f64) -> f64 {
    let j = centres.partition_point(|&x| x < c);
    if j == 0 {
        return 1.0 / temperatures[0];
    }
    if j == centres.len() {
        return 1.0 / temperatures[j - 1];
    }
    let (x0, x1) = (centres[j - 1], centres[j]);
    let (b0, b1) = (1.0 / temperatures[j - 1], 1.0 / temperatures[j]);
    if x1 <= x0 {
        return b1;
    }
    b0 + (b1 - b0) * (c - x0) / (x1 - x0)
}

/// Beta bounds from the temperature bounds of the options.
fn beta_bounds(opts: &FitOptions) -> (f64, f64) {
    (1.0 / opts.t_max, 1.0 / opts.t_min)
}

/// Warns when the NLL-optimal temperature lies on the search bound.
fn warn_if_at_bound(solution: &Solution) {
    if solution.at_bound {
        tracing::warn!(
            temperature = 1.0 / solution.beta,
            "the NLL-optimal temperature lies on the search bound (--t-min/--t-max); \
             the logits carry little information about the labels at this scale"
        );
    }
}

/// The NLL-optimal single inverse temperature over all rows.
pub(crate) fn fit_global_beta(rows: &Rows<'_>, opts: &FitOptions) -> f64 {
    let (lo, hi) = beta_bounds(opts);
    let solution = minimise(lo, hi, 1.0, None, |b| rows.jet(0..rows.len(), b, |_, _| {}));
    warn_if_at_bound(&solution);
    tracing::debug!(passes = rows.passes(), "global temperature fit");
    solution.beta
}

/// Temperature scaling: one T by exact NLL minimisation.
pub(crate) fn fit_ts(
    logits: ArrayView2<'_, f64>,
    labels: &[usize],
    opts: &FitOptions,
) -> Calibrator {
    Calibrator::Ts {
        temperature: 1.0 / fit_global_beta(&Rows::new(logits, labels), opts),
    }
}

/// Adaptive piecewise temperature scaling.
pub(crate) fn fit_ats(
    logits: ArrayView2<'_, f64>,
    labels: &[usize],
    opts: &FitOptions,
) -> Calibrator {
    let rows = Rows::new(logits, labels);
    let n = rows.len();
    let (lo, hi) = beta_bounds(opts);
    // The global solve starts at beta = 1, where each row's partition sum is the reciprocal of
    // its uncalibrated confidence: its first pass yields both.
    let start = 1.0f64.clamp(lo, hi);
    let mut conf = vec![0.0; n];
    let first = rows.jet(0..n, start, |i, s0| conf[i] = 1.0 / s0);
    if start != 1.0 {
        conf.iter_mut()
            .enumerate()
            .for_each(|(i, c)| *c = top_confidence(rows.row(i)));
    }
    let mut sorted = conf.clone();
    sorted.sort_by(f64::total_cmp);
    let edges = equal_mass_edges(&sorted, opts.pieces);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); opts.pieces];
    for (i, &c) in conf.iter().enumerate() {
        members[piece_of(&edges, c)].push(i);
    }

    // Later global passes sum each piece on its own (the global jet is their sum), so that the
    // pieces' solves start from known derivatives instead of a pass of their own.
    let mut piece_jets = vec![Jet::default(); opts.pieces];
    let mut jets_at = None;
    let global = minimise(lo, hi, start, Some(first), |b| {
        for (jet, rows_m) in piece_jets.iter_mut().zip(&members) {
            *jet = rows.jet(rows_m.iter().copied(), b, |_, _| {});
        }
        jets_at = Some(b);
        piece_jets.iter().fold(Jet::default(), |sum, j| sum.plus(j))
    });
    warn_if_at_bound(&global);
    let beta_global = global.beta;
    // The pieces' jets at beta_global: a Taylor shift over the solve's last tiny step, or one
    // more pass when there is no such step to shift over.
    let piece_jets: Vec<Jet> = match jets_at {
        Some(b) if (beta_global - b).abs() <= 1e-6 * beta_global => piece_jets
            .iter()
            .map(|j| j.shifted(beta_global - b))
            .collect(),
        _ => members
            .iter()
            .map(|m| rows.jet(m.iter().copied(), beta_global, |_, _| {}))
            .collect(),
    };

    // Shrinkage in units of samples: tau = shrinkage * (mean per-sample curvature of the NLL
    // at the global optimum). A piece whose own curvature is small (few samples, or confident
    // samples with few errors, whose NLL barely depends on beta) is pulled hard toward the
    // global temperature; a large informative piece hardly at all.
    let curvature = piece_jets.iter().map(|j| j.d[1]).sum::<f64>() / n as f64;
    let tau = opts.shrinkage * if curvature > 1e-12 { curvature } else { 1.0 };

    let mut temperatures = Vec::with_capacity(opts.pieces);
    let mut centres = Vec::with_capacity(opts.pieces);
    for (m, rows_m) in members.iter().enumerate() {
        if rows_m.is_empty() {
            // Only possible with many tied confidences; fall back to the global temperature.
            temperatures.push(1.0 / beta_global);
            let lower = if m == 0 { 0.0 } else { edges[m - 1] };
            let upper = edges.get(m).copied().unwrap_or(1.0);
            centres.push(0.5 * (lower + upper));
            continue;
        }
        let beta = match opts.objective {
            Objective::Nll => {
                let first = piece_jets[m].with_pull(tau, beta_global, beta_global);
                minimise(lo, hi, beta_global, Some(first), |b| {
                    rows.jet(rows_m.iter().copied(), b, |_, _| {})
                        .with_pull(tau, beta_global, b)
                })
                .beta
            }
            Objective::Ece => {
                let root = ece_root(&rows, rows_m, lo, hi);
                let n = rows_m.len() as f64;
                (n * root + opts.shrinkage * beta_global) / (n + opts.shrinkage)
            }
        };
        temperatures.push(1.0 / beta);
        centres.push(rows_m.iter().map(|&i| conf[i]).sum::<f64>() / rows_m.len() as f64);
    }
    tracing::debug!(
        passes = rows.passes(),
        "ats fit: work in full passes over the validation logits"
    );
    // Centres of consecutive pieces are ordered by construction except for float noise among
    // ties; enforce it so the file validates.
    for m in 1..centres.len() {
        centres[m] = centres[m].max(centres[m - 1]);
    }
    Calibrator::Ats {
        edges,
        temperatures,
        centres,
        smooth: opts.smooth,
        global_temperature: Some(1.0 / beta_global),
    }
}

/// The beta at which the piece's mean top confidence equals its accuracy (the piece's own
/// ECE is then zero). The mean top confidence of softmax(beta z) increases with beta, so the
/// root is bracketed by the bounds; Illinois regula falsi converges superlinearly.
fn ece_root(data: &Rows<'_>, rows: &[usize], lo: f64, hi: f64) -> f64 {
    let acc = rows.iter().filter(|&&i| data.label(i).1 == 0.0).count() as f64 / rows.len() as f64;
    let gap = |beta: f64| {
        rows.iter()
            .map(|&i| 1.0 / row_sums::<1>(data.row(i), data.max(i), beta)[0])
            .sum::<f64>()
            / rows.len() as f64
            - acc
    };
    let (mut a, mut b) = (lo, hi);
    let (mut fa, mut fb) = (gap(a), gap(b));
    if fa >= 0.0 {
        return a;
    }
    if fb <= 0.0 {
        return b;
    }
    let mut side = 0i8;
    for _ in 0..100 {
        let x = (a * fb - b * fa) / (fb - fa);
        let fx = gap(x);
        if fx.abs() < 1e-12 || (b - a) < 1e-12 * b {
            return x;
        }
        if fx > 0.0 {
            b = x;
            fb = fx;
            if side == 1 {
                fa *= 0.5;
            }
            side = 1;
        } else {
            a = x;
            fa = fx;
            if side == -1 {
                fb *= 0.5;
            }
            side = -1;
        }
    }
    0.5 * (a + b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Gradient and curvature of the plain per-row NLL in beta over `rows`, written out
    /// directly (two sweeps per row, no shared code with the fit).
    fn plain(z: &Array2<f64>, y: &[usize], rows: &[usize], beta: f64) -> (f64, f64) {
        let (mut g, mut h) = (0.0, 0.0);
        for &i in rows {
            let r = z.row(i);
            let m = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = r.iter().map(|v| (beta * (v - m)).exp()).collect();
            let s: f64 = e.iter().sum();
            let mean = r.iter().zip(&e).map(|(v, e)| e * (v - m)).sum::<f64>() / s;
            let var = r
                .iter()
                .zip(&e)
                .map(|(v, e)| e * (v - m - mean).powi(2))
                .sum::<f64>()
                / s;
            g += mean - (r[y[i]] - m);
            h += var;
        }
        (g, h)
    }

    #[test]
    fn every_ats_temperature_is_its_piece_optimum() {
        // Deterministic logits whose miscalibration depends on the confidence.
        let (n, k) = (3000, 7);
        let z = Array2::from_shape_fn((n, k), |(i, j)| {
            let u = ((i * 7 + j) as f64 * 12.9898).sin() * 43758.5453;
            let scale = if i % 3 == 0 { 4.0 } else { 1.0 };
            (u - u.floor() - 0.5) * scale + if j == i % k { 0.8 } else { 0.0 }
        });
        let y: Vec<usize> = (0..n)
            .map(|i| if i % 4 == 0 { (i + 1) % k } else { i % k })
            .collect();
        let opts = FitOptions::default();
        let Calibrator::Ats {
            edges,
            temperatures,
            global_temperature: Some(t_global),
            ..
        } = fit_ats(z.view(), &y, &opts)
        else {
            panic!("ats expected")
        };
        // The pieces really differ (else this would only test the global fit).
        let spread = temperatures.iter().copied().fold(0.0, f64::max)
            / temperatures.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(spread > 1.2, "{temperatures:?}");
        let all: Vec<usize> = (0..n).collect();
        let bg = 1.0 / t_global;
        let (g, h) = plain(&z, &y, &all, bg);
        assert!((g / h).abs() < 1e-12 * bg, "global gradient {g}");
        let tau = opts.shrinkage * h / n as f64;
        let mut members = vec![Vec::new(); opts.pieces];
        for i in 0..n {
            let c = top_confidence(&z.row(i).to_vec());
            members[piece_of(&edges, c)].push(i);
        }
        for (m, rows) in members.iter().enumerate() {
            let b = 1.0 / temperatures[m];
            let (g, h) = plain(&z, &y, rows, b);
            let (g, h) = (g + 2.0 * tau * (b - bg), h + 2.0 * tau);
            assert!((g / h).abs() < 1e-12 * b, "piece {m}: gradient {g} at {b}");
            assert!(
                rows.len() >= n / opts.pieces - 1,
                "piece {m} has {}",
                rows.len()
            );
        }
    }

    #[test]
    fn interpolation_is_linear_between_centres_and_flat_outside() {
        let c = [0.5, 0.9];
        let t = [1.0, 0.5]; // betas 1 and 2
        assert!((interpolate_beta(&c, &t, 0.7) - 1.5).abs() < 1e-12);
        assert_eq!(interpolate_beta(&c, &t, 0.1), 1.0);
        assert_eq!(interpolate_beta(&c, &t, 0.99), 2.0);
    }

    #[test]
    fn equal_mass_edges_split_evenly() {
        let v: Vec<f64> = (0..10).map(f64::from).collect();
        assert_eq!(equal_mass_edges(&v, 2), vec![4.5]);
        assert_eq!(equal_mass_edges(&v, 5), vec![1.5, 3.5, 5.5, 7.5]);
    }
}
