//! Temperature-type fits: the exact NLL-optimal single temperature (TS) and adaptive piecewise
//! temperature scaling (ATS, `shared/method.md` section 2).
//!
//! Both solve in beta = 1/T, where the NLL of softmax(beta * z) is convex: its first and second
//! derivatives are `E_p[z] - z_y` and `Var_p[z]`. A safeguarded Newton iteration inside a
//! shrinking bracket finds the optimum to ~1e-12 in a handful of passes over the data; a pass
//! costs one exp per logit, which is what keeps the 50,000 x 100 fit well under 200 ms.

use ndarray::ArrayView2;

use super::fit::{FitOptions, Objective};
use super::{Calibrator, piece_of};

/// Uncalibrated top confidence max_k softmax(z)_k = 1 / sum_j exp(z_j - max z).
pub(crate) fn top_confidence(logits: &[f64]) -> f64 {
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    1.0 / logits.iter().map(|z| (z - m).exp()).sum::<f64>()
}

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

/// The NLL-in-beta problem on a subset of rows, with an optional quadratic pull
/// `tau * (beta - anchor)^2` toward an anchor (the ATS shrinkage).
pub(crate) struct BetaProblem<'a> {
    logits: ArrayView2<'a, f64>,
    labels: &'a [usize],
    maxes: &'a [f64],
    rows: &'a [usize],
    tau: f64,
    anchor: f64,
}

/// Value, first and second derivative of the objective at one beta.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Derivs {
    /// Read by the finite-difference tests; the solver itself only needs the derivatives.
    #[cfg_attr(not(test), allow(dead_code))]
    pub value: f64,
    pub grad: f64,
    pub hess: f64,
}

impl<'a> BetaProblem<'a> {
    pub(crate) fn new(
        logits: ArrayView2<'a, f64>,
        labels: &'a [usize],
        maxes: &'a [f64],
        rows: &'a [usize],
    ) -> Self {
        Self {
            logits,
            labels,
            maxes,
            rows,
            tau: 0.0,
            anchor: 0.0,
        }
    }

    fn with_shrinkage(mut self, tau: f64, anchor: f64) -> Self {
        self.tau = tau;
        self.anchor = anchor;
        self
    }

    /// One pass: sum over rows of log sum exp(beta d) - beta d_y with d = z - max z (so every
    /// exponent is <= 0 and nothing overflows), plus the shrinkage term.
    pub(crate) fn derivs(&self, beta: f64) -> Derivs {
        let (mut value, mut grad, mut hess) = (0.0, 0.0, 0.0);
        for &i in self.rows {
            let row = self.logits.row(i);
            let m = self.maxes[i];
            let (mut s0, mut s1, mut s2) = (0.0, 0.0, 0.0);
            for &z in row.iter() {
                let d = z - m;
                let e = (beta * d).exp();
                s0 += e;
                s1 += e * d;
                s2 += e * d * d;
            }
            let dy = row[self.labels[i]] - m;
            let mean = s1 / s0;
            value += s0.ln() - beta * dy;
            grad += mean - dy;
            hess += (s2 / s0 - mean * mean).max(0.0);
        }
        let off = beta - self.anchor;
        Derivs {
            value: value + self.tau * off * off,
            grad: grad + 2.0 * self.tau * off,
            hess: hess + 2.0 * self.tau,
        }
    }

    /// Minimises over beta in `[lo, hi]` from `start`. Convexity makes the derivative
    /// monotone, so the sign of each evaluated derivative shrinks a bracket; Newton steps that
    /// leave it are replaced by bisection, and an optimum on a bound is found by evaluating the
    /// bound itself. Returns beta and whether it sits on a bound.
    pub(crate) fn minimise(&self, lo: f64, hi: f64, start: f64) -> (f64, bool) {
        let (mut a, mut b) = (lo, hi);
        let (mut tried_lo, mut tried_hi) = (false, false);
        let mut x = start.clamp(lo, hi);
        for _ in 0..200 {
            let d = self.derivs(x);
            if d.grad > 0.0 {
                b = x;
                tried_lo |= x == lo;
            } else {
                a = x;
                tried_hi |= x == hi;
            }
            if d.grad == 0.0 || b - a <= 1e-13 * b.max(1.0) {
                break;
            }
            let newton = if d.hess > 0.0 {
                x - d.grad / d.hess
            } else {
                f64::NAN
            };
            let next = if newton > a && newton < b {
                newton
            } else if newton >= b && b == hi && !tried_hi {
                hi
            } else if newton <= a && a == lo && !tried_lo {
                lo
            } else {
                0.5 * (a + b)
            };
            // Newton converges quadratically: once a step is below 1e-8 relative, the step just taken
            // leaves an error of order 1e-16, so no further pass over the data is needed.
            if (next - x).abs() <= 1e-8 * x.abs().max(1e-3) {
                x = next;
                break;
            }
            x = next;
        }
        let at_bound = (x - lo).abs() <= 1e-12 * lo.max(1e-3) || (hi - x).abs() <= 1e-12 * hi;
        (x, at_bound)
    }
}

/// Row maxima, computed once and shared by every pass.
pub(crate) fn row_maxes(logits: ArrayView2<'_, f64>) -> Vec<f64> {
    logits
        .rows()
        .into_iter()
        .map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max))
        .collect()
}

/// Beta bounds from the temperature bounds of the options.
fn beta_bounds(opts: &FitOptions) -> (f64, f64) {
    (1.0 / opts.t_max, 1.0 / opts.t_min)
}

/// The NLL-optimal single inverse temperature over all rows.
pub(crate) fn fit_global_beta(
    logits: ArrayView2<'_, f64>,
    labels: &[usize],
    maxes: &[f64],
    opts: &FitOptions,
) -> f64 {
    let rows: Vec<usize> = (0..labels.len()).collect();
    let (lo, hi) = beta_bounds(opts);
    let (beta, at_bound) = BetaProblem::new(logits, labels, maxes, &rows).minimise(lo, hi, 1.0);
    if at_bound {
        tracing::warn!(
            temperature = 1.0 / beta,
            "the NLL-optimal temperature lies on the search bound (--t-min/--t-max); \
             the logits carry little information about the labels at this scale"
        );
    }
    beta
}

/// Temperature scaling: one T by exact NLL minimisation.
pub(crate) fn fit_ts(
    logits: ArrayView2<'_, f64>,
    labels: &[usize],
    opts: &FitOptions,
) -> Calibrator {
    let maxes = row_maxes(logits);
    Calibrator::Ts {
        temperature: 1.0 / fit_global_beta(logits, labels, &maxes, opts),
    }
}

/// Inner edges of `pieces` equal-mass groups of `sorted` values: the midpoint between the last
/// value of one group and the first of the next (group boundaries at round(m * N / M)).
pub(crate) fn equal_mass_edges(sorted: &[f64], pieces: usize) -> Vec<f64> {
    let n = sorted.len();
    (1..pieces)
        .map(|m| {
            let i = ((m * n) as f64 / pieces as f64).round() as usize;
            let i = i.clamp(1, n - 1);
            0.5 * (sorted[i - 1] + sorted[i])
        })
        .collect()
}

/// Adaptive piecewise temperature scaling.
pub(crate) fn fit_ats(
    logits: ArrayView2<'_, f64>,
    labels: &[usize],
    opts: &FitOptions,
) -> Calibrator {
    let maxes = row_maxes(logits);
    let beta_global = fit_global_beta(logits, labels, &maxes, opts);
    let conf: Vec<f64> = logits
        .rows()
        .into_iter()
        .map(|r| {
            r.as_slice()
                .map_or_else(|| top_confidence(&r.to_vec()), top_confidence)
        })
        .collect();
    let mut sorted = conf.clone();
    sorted.sort_by(f64::total_cmp);
    let edges = equal_mass_edges(&sorted, opts.pieces);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); opts.pieces];
    for (i, &c) in conf.iter().enumerate() {
        members[piece_of(&edges, c)].push(i);
    }

    // Shrinkage in units of samples: tau = shrinkage * (mean per-sample curvature of the NLL
    // at the global optimum). A piece whose own curvature is small (few samples, or confident
    // samples with few errors, whose NLL barely depends on beta) is pulled hard toward the
    // global temperature; a large informative piece hardly at all.
    let all: Vec<usize> = (0..labels.len()).collect();
    let curvature = BetaProblem::new(logits, labels, &maxes, &all)
        .derivs(beta_global)
        .hess
        / labels.len() as f64;
    let tau = opts.shrinkage * if curvature > 1e-12 { curvature } else { 1.0 };
    let (lo, hi) = beta_bounds(opts);

    let mut temperatures = Vec::with_capacity(opts.pieces);
    let mut centres = Vec::with_capacity(opts.pieces);
    for (m, rows) in members.iter().enumerate() {
        if rows.is_empty() {
            // Only possible with many tied confidences; fall back to the global temperature.
            temperatures.push(1.0 / beta_global);
            let lower = if m == 0 { 0.0 } else { edges[m - 1] };
            let upper = edges.get(m).copied().unwrap_or(1.0);
            centres.push(0.5 * (lower + upper));
            continue;
        }
        let beta = match opts.objective {
            Objective::Nll => {
                BetaProblem::new(logits, labels, &maxes, rows)
                    .with_shrinkage(tau, beta_global)
                    .minimise(lo, hi, beta_global)
                    .0
            }
            Objective::Ece => {
                let root = ece_root(logits, labels, &maxes, rows, lo, hi);
                let n = rows.len() as f64;
                (n * root + opts.shrinkage * beta_global) / (n + opts.shrinkage)
            }
        };
        temperatures.push(1.0 / beta);
        centres.push(rows.iter().map(|&i| conf[i]).sum::<f64>() / rows.len() as f64);
    }
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
fn ece_root(
    logits: ArrayView2<'_, f64>,
    labels: &[usize],
    maxes: &[f64],
    rows: &[usize],
    lo: f64,
    hi: f64,
) -> f64 {
    let acc = rows
        .iter()
        .filter(|&&i| {
            let r = logits.row(i);
            r[labels[i]] == maxes[i]
        })
        .count() as f64
        / rows.len() as f64;
    let gap = |beta: f64| {
        rows.iter()
            .map(|&i| {
                let m = maxes[i];
                1.0 / logits
                    .row(i)
                    .iter()
                    .map(|z| (beta * (z - m)).exp())
                    .sum::<f64>()
            })
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
    use ndarray::array;

    #[test]
    fn derivatives_match_finite_differences() {
        let z = array![[2.0, 0.5, -1.0], [0.3, 0.1, 0.9], [-1.0, 3.0, 0.0]];
        let y = [0, 2, 1];
        let maxes = row_maxes(z.view());
        let rows = [0, 1, 2];
        let p = BetaProblem::new(z.view(), &y, &maxes, &rows).with_shrinkage(0.7, 1.3);
        let h = 1e-5;
        for beta in [0.3, 1.0, 2.5] {
            let d = p.derivs(beta);
            let (up, down) = (p.derivs(beta + h), p.derivs(beta - h));
            assert!((d.grad - (up.value - down.value) / (2.0 * h)).abs() < 1e-7);
            assert!((d.hess - (up.grad - down.grad) / (2.0 * h)).abs() < 1e-7);
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
