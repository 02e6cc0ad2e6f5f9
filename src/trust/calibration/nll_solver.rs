//! The one-dimensional problem behind temperature scaling and ATS: the NLL of softmax(beta z)
//! summed over a set of rows, as a function of beta = 1/T, and a safeguarded solver for its
//! minimum.
//!
//! Per row, `log sum_k exp(beta d_k)` with `d = z - max z` is the cumulant generating function of
//! d under the row's softmax distribution, so its derivatives in beta are the cumulants of d:
//! mean, variance, third, fourth and fifth cumulant. One pass over the data (one `exp` per
//! logit, which is the whole cost) therefore gives a fifth-order Taylor expansion of the
//! objective (a [`Jet`]) for a few extra multiplications. A step that solves the expanded
//! first-order condition converges with order five where Newton's converges with order two, and
//! the sixth derivative says how far off that step can be, so the search stops as soon as the
//! step just taken is known to be exact to ~1e-15: a solve takes one to three passes over the
//! data instead of five or six. The NLL is convex in beta, so a bracket from the sign of each
//! exact gradient keeps every step safe.

use std::cell::Cell;

use ndarray::{ArrayView2, CowArray, Ix2};

/// Number of derivatives a [`Jet`] carries: five steer the step, the sixth bounds its error.
const ORDER: usize = 6;

/// A proposed step and an estimate of the error left after taking it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    /// The step in beta (NaN when the curvature is not positive).
    pub size: f64,
    /// The first Taylor term the step ignored, divided by the curvature: the distance from
    /// `x + size` to the true minimum, to leading order.
    pub error: f64,
}

/// Value and the first [`ORDER`] derivatives of an objective in beta at one point.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Jet {
    /// The objective (read by the tests and the finite-difference checks; the solver only needs
    /// the derivatives).
    pub value: f64,
    /// `d[j]` is the (j + 1)-th derivative: gradient, curvature, then third to sixth.
    pub d: [f64; ORDER],
}

impl Jet {
    /// The sum of two objectives' jets at the same beta.
    pub(crate) fn plus(mut self, other: &Jet) -> Jet {
        self.value += other.value;
        self.d.iter_mut().zip(other.d).for_each(|(a, b)| *a += b);
        self
    }

    /// Adds the shrinkage term `tau * (beta - anchor)^2`, evaluated at `beta`.
    pub(crate) fn with_pull(mut self, tau: f64, anchor: f64, beta: f64) -> Jet {
        let off = beta - anchor;
        self.value += tau * off * off;
        self.d[0] += 2.0 * tau * off;
        self.d[1] += 2.0 * tau;
        self
    }

    /// The jet moved from beta to beta + h by its Taylor expansion. Exact to rounding for the
    /// tiny final steps of a converged solve (the dropped terms are of order h^(6-j)).
    pub(crate) fn shifted(&self, h: f64) -> Jet {
        // taylor(c, j) = sum_{i >= j} c_i h^(i-j) / (i-j)!, with c_0 the value.
        let mut c = [0.0; ORDER + 1];
        c[0] = self.value;
        c[1..].copy_from_slice(&self.d);
        let taylor = |j: usize| {
            let (mut sum, mut term) = (0.0, 1.0);
            for (i, &ci) in c.iter().enumerate().skip(j) {
                sum += ci * term;
                term *= h / (i - j + 1) as f64;
            }
            sum
        };
        Jet {
            value: taylor(0),
            d: std::array::from_fn(|j| taylor(j + 1)),
        }
    }

    /// The proposed step toward the minimum: the root of the degree-4 Taylor polynomial of the
    /// gradient nearest the Newton step, found by Newton's method on the polynomial. Falls back to
    /// the Newton step where the polynomial is not trustworthy (no root close by in the descent
    /// direction).
    pub(crate) fn step(&self) -> Step {
        let [g, h2, h3, h4, h5, h6] = self.d;
        if h2 <= 0.0 || h2.is_nan() {
            return Step {
                size: f64::NAN,
                error: f64::INFINITY,
            };
        }
        let newton = Step {
            size: -g / h2,
            error: (h3 * g * g / (2.0 * h2 * h2 * h2)).abs(),
        };
        let mut s = newton.size;
        for _ in 0..20 {
            let p = g + s * (h2 + s * (h3 / 2.0 + s * (h4 / 6.0 + s * h5 / 24.0)));
            let dp = h2 + s * (h3 + s * (h4 / 2.0 + s * h5 / 6.0));
            if dp <= 0.0 || !dp.is_finite() {
                return newton;
            }
            let ds = p / dp;
            s -= ds;
            if ds.abs() <= 1e-15 * s.abs() {
                // Same direction as Newton (convexity fixes the sign) and not wildly longer.
                if s * newton.size >= 0.0 && s.abs() <= 3.0 * newton.size.abs() {
                    let error = (h6 * s.powi(5) / (120.0 * h2)).abs();
                    return Step { size: s, error };
                }
                return newton;
            }
        }
        newton
    }
}

/// Logits are summed in this many independent lanes, which lets the compiler vectorise the
/// moment sums (a fixed order, so results do not depend on the build).
const LANES: usize = 4;
/// Rows are processed in blocks of this many logits: exponentials first, then moments.
const BLOCK: usize = 64;

/// `[sum e, sum e d, ..., sum e d^(M-1)]` over one row, with `d = z - max` and
/// `e = exp(beta d)`. Every exponent is <= 0, so nothing overflows, and the top logit adds
/// exactly 1 to the first sum. The first sum's arithmetic does not depend on `M`, so the
/// confidence computed at inference (`M = 1`) matches the one the fit saw bit for bit.
pub(crate) fn row_sums<const M: usize>(row: &[f64], max: f64, beta: f64) -> [f64; M] {
    let mut acc = [[0.0f64; LANES]; M];
    let (mut e, mut d) = ([0.0f64; BLOCK], [0.0f64; BLOCK]);
    for chunk in row.chunks(BLOCK) {
        for ((e, d), &z) in e.iter_mut().zip(d.iter_mut()).zip(chunk) {
            *d = z - max;
            *e = (beta * *d).exp();
        }
        // Zero padding (e = 0) contributes nothing to any sum.
        let used = chunk.len().div_ceil(LANES) * LANES;
        e[chunk.len()..used].fill(0.0);
        d[chunk.len()..used].fill(0.0);
        for (ec, dc) in e[..used]
            .chunks_exact(LANES)
            .zip(d[..used].chunks_exact(LANES))
        {
            for lane in 0..LANES {
                let mut w = ec[lane];
                for a in acc.iter_mut() {
                    a[lane] += w;
                    w *= dc[lane];
                }
            }
        }
    }
    acc.map(|a| a.iter().sum())
}

/// Validation rows prepared once for every pass: contiguous logits, labels and row maxima.
pub(crate) struct Rows<'a> {
    logits: CowArray<'a, f64, Ix2>,
    labels: &'a [usize],
    maxes: Vec<f64>,
    /// Rows evaluated so far, over all passes: the cost of a fit, reported at debug level.
    evaluated: Cell<usize>,
}

impl<'a> Rows<'a> {
    pub(crate) fn new(logits: ArrayView2<'a, f64>, labels: &'a [usize]) -> Self {
        let logits = if logits.is_standard_layout() {
            CowArray::from(logits)
        } else {
            CowArray::from(logits.as_standard_layout().into_owned())
        };
        let maxes = logits
            .rows()
            .into_iter()
            .map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max))
            .collect();
        Self {
            logits,
            labels,
            maxes,
            evaluated: Cell::new(0),
        }
    }

    /// The work done so far in full passes over the data (rows evaluated / rows).
    pub(crate) fn passes(&self) -> f64 {
        self.evaluated.get() as f64 / self.len().max(1) as f64
    }

    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        self.labels.len()
    }

    /// Row `i` as a slice (the logits are in standard layout).
    pub(crate) fn row(&self, i: usize) -> &[f64] {
        let k = self.logits.ncols();
        let all = self
            .logits
            .as_slice()
            .expect("as_standard_layout gives contiguous logits");
        &all[i * k..(i + 1) * k]
    }

    /// The label of row `i` and its logit minus the row maximum.
    pub(crate) fn label(&self, i: usize) -> (usize, f64) {
        let y = self.labels[i];
        (y, self.row(i)[y] - self.maxes[i])
    }

    /// The row maximum of row `i`.
    pub(crate) fn max(&self, i: usize) -> f64 {
        self.maxes[i]
    }

    /// One pass: the jet of `sum_i log sum_k exp(beta d_ik) - beta d_iy` over `rows` at `beta`.
    /// `on_row(i, s0)` sees each row's partition sum, so a pass at beta = 1 also yields every
    /// uncalibrated top confidence `1 / s0` for free.
    pub(crate) fn jet(
        &self,
        rows: impl IntoIterator<Item = usize>,
        beta: f64,
        mut on_row: impl FnMut(usize, f64),
    ) -> Jet {
        let mut jet = Jet::default();
        let mut count = 0;
        for i in rows {
            count += 1;
            let s = row_sums::<{ ORDER + 1 }>(self.row(i), self.maxes[i], beta);
            on_row(i, s[0]);
            let (_, dy) = self.label(i);
            let k = cumulants(&s);
            jet.value += s[0].ln() - beta * dy;
            jet.d[0] += k[0] - dy;
            for (a, b) in jet.d.iter_mut().zip(k).skip(1) {
                *a += b;
            }
        }
        self.evaluated.set(self.evaluated.get() + count);
        jet
    }
}

/// Cumulants 1 to 6 of d from the sums `s_j = sum e d^j`: these are the derivatives of
/// `log s_0` in beta. The mean and variance come from raw moments, like the plain
/// `E d^2 - (E d)^2`; the higher ones from the central moments `c_j` (derived from the raw ones
/// by the binomial theorem), which only steer the step and size its error estimate, so their
/// rounding cannot move the optimum.
fn cumulants(s: &[f64; ORDER + 1]) -> [f64; ORDER] {
    let inv = 1.0 / s[0];
    let m: [f64; ORDER + 1] = std::array::from_fn(|j| s[j] * inv);
    let mu = m[1];
    // c_j = sum_i binom(j, i) m_i (-mu)^(j-i)
    let central = |j: usize| {
        let (mut sum, mut binom, mut pow) = (0.0, 1.0, 1.0);
        for i in (0..=j).rev() {
            sum += binom * m[i] * pow;
            binom = binom * i as f64 / (j - i + 1) as f64;
            pow *= -mu;
        }
        sum
    };
    let (c2, c3, c4, c5, c6) = (
        (m[2] - mu * mu).max(0.0),
        central(3),
        central(4),
        central(5),
        central(6),
    );
    [
        mu,
        c2,
        c3,
        c4 - 3.0 * c2 * c2,
        c5 - 10.0 * c3 * c2,
        c6 - 15.0 * c4 * c2 - 10.0 * c3 * c3 + 30.0 * c2 * c2 * c2,
    ]
}

/// Where a solve ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Solution {
    /// The minimising beta.
    pub beta: f64,
    /// Whether it sits on a bound of the search interval.
    pub at_bound: bool,
}

/// Minimises a convex objective over beta in `[lo, hi]` from `start`; `eval(beta)` makes one pass
/// over the data, and `first` may hold the jet at `start` when it is already known. The sign of
/// each evaluated gradient shrinks a bracket; steps that leave it are replaced by bisection, and
/// an optimum on a bound is found by evaluating the bound itself.
pub(crate) fn minimise(
    lo: f64,
    hi: f64,
    start: f64,
    first: Option<Jet>,
    mut eval: impl FnMut(f64) -> Jet,
) -> Solution {
    let (mut a, mut b) = (lo, hi);
    let (mut tried_lo, mut tried_hi) = (false, false);
    let mut x = start.clamp(lo, hi);
    let mut known = first.filter(|_| x == start);
    for _ in 0..200 {
        let jet = known.take().unwrap_or_else(|| eval(x));
        let grad = jet.d[0];
        if grad > 0.0 {
            b = x;
            tried_lo |= x == lo;
        } else {
            a = x;
            tried_hi |= x == hi;
        }
        if grad == 0.0 || b - a <= 1e-13 * b.max(1.0) {
            break;
        }
        let step = jet.step();
        let proposal = x + step.size;
        // Stop, taking the step, once it is known to land within ~1e-15 of the minimum (the
        // error estimate, backed by the step being small), or once it is below 1e-8 relative,
        // where even a plain Newton step leaves an error far below 1e-15. It may touch the
        // bracket's end when that end is the point just evaluated, which is still right.
        let scale = x.abs().max(1e-3);
        let exact = (step.error <= 1e-15 * scale && step.size.abs() <= 1e-4 * scale)
            || step.size.abs() <= 1e-8 * scale;
        if exact && proposal >= a && proposal <= b {
            x = proposal;
            break;
        }
        let next = if proposal > a && proposal < b {
            proposal
        } else if proposal >= b && b == hi && !tried_hi {
            hi
        } else if proposal <= a && a == lo && !tried_lo {
            lo
        } else {
            0.5 * (a + b)
        };
        // A bound or bisection point this close ends the search too (the bracket has
        // collapsed around x).
        if (next - x).abs() <= 1e-8 * scale {
            x = next;
            break;
        }
        x = next;
    }
    let at_bound = (x - lo).abs() <= 1e-12 * lo.max(1e-3) || (hi - x).abs() <= 1e-12 * hi;
    Solution { beta: x, at_bound }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn sample() -> (ndarray::Array2<f64>, Vec<usize>) {
        let z = array![
            [2.0, 0.5, -1.0, 0.2, 1.1],
            [0.3, 0.1, 0.9, -2.0, 0.0],
            [-1.0, 3.0, 0.0, 0.5, 0.4],
            [1.0, 1.0, 1.0, 1.0, 1.0],
        ];
        (z, vec![1, 2, 1, 3])
    }

    /// The straightforward per-row formula the fused pass replaces.
    fn naive(z: &ndarray::Array2<f64>, y: &[usize], beta: f64) -> (f64, f64, f64) {
        let (mut v, mut g, mut h) = (0.0, 0.0, 0.0);
        for (row, &label) in z.rows().into_iter().zip(y) {
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = row.iter().map(|x| (beta * (x - m)).exp()).collect();
            let s: f64 = p.iter().sum();
            let mean: f64 = row.iter().zip(&p).map(|(x, e)| e * (x - m)).sum::<f64>() / s;
            let var: f64 = row
                .iter()
                .zip(&p)
                .map(|(x, e)| e * (x - m - mean).powi(2))
                .sum::<f64>()
                / s;
            v += s.ln() - beta * (row[label] - m);
            g += mean - (row[label] - m);
            h += var;
        }
        (v, g, h)
    }

    #[test]
    fn jet_matches_the_plain_formula_and_finite_differences() {
        let (z, y) = sample();
        let rows = Rows::new(z.view(), &y);
        let at = |b: f64| rows.jet(0..4, b, |_, _| {}).with_pull(0.7, 1.3, b);
        let h = 1e-4;
        for beta in [0.3, 1.0, 2.5] {
            let j = rows.jet(0..4, beta, |_, _| {});
            let (v, g, hess) = naive(&z, &y, beta);
            assert!((j.value - v).abs() < 1e-13 && (j.d[0] - g).abs() < 1e-13);
            assert!((j.d[1] - hess).abs() < 1e-13);
            // Every derivative against a central difference of the one below it.
            let (jet, up, down) = (at(beta), at(beta + h), at(beta - h));
            assert!((jet.d[0] - (up.value - down.value) / (2.0 * h)).abs() < 1e-7);
            for k in 1..ORDER {
                let fd = (up.d[k - 1] - down.d[k - 1]) / (2.0 * h);
                assert!(
                    (jet.d[k] - fd).abs() < 1e-6 * fd.abs().max(1.0),
                    "derivative {} at {beta}: {} vs {fd}",
                    k + 1,
                    jet.d[k]
                );
            }
        }
    }

    #[test]
    fn a_shifted_jet_predicts_a_nearby_evaluation() {
        let (z, y) = sample();
        let rows = Rows::new(z.view(), &y);
        let (beta, h) = (0.8, 1e-5);
        let predicted = rows.jet(0..4, beta, |_, _| {}).shifted(h);
        let actual = rows.jet(0..4, beta + h, |_, _| {});
        for (p, a) in [
            (predicted.value, actual.value),
            (predicted.d[0], actual.d[0]),
            (predicted.d[1], actual.d[1]),
        ] {
            assert!((p - a).abs() < 1e-13, "{predicted:?} vs {actual:?}");
        }
    }

    #[test]
    fn confidence_sum_is_the_same_whatever_the_moment_count() {
        let row: Vec<f64> = (0..131)
            .map(|i| (f64::from(i) * 0.37).sin() * 4.0)
            .collect();
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let one = row_sums::<1>(&row, m, 1.0)[0];
        let six = row_sums::<6>(&row, m, 1.0)[0];
        assert_eq!(one.to_bits(), six.to_bits());
        let plain: f64 = row.iter().map(|z| (z - m).exp()).sum();
        assert!((one - plain).abs() < 1e-13);
    }

    #[test]
    fn solver_finds_the_optimum_in_few_passes_and_respects_bounds() {
        let (z, y) = sample();
        let rows = Rows::new(z.view(), &y);
        let mut passes = 0;
        let sol = minimise(0.1, 20.0, 1.0, None, |b| {
            passes += 1;
            rows.jet(0..4, b, |_, _| {})
        });
        let (_, g, h) = naive(&z, &y, sol.beta);
        assert!(
            (g / h).abs() < 1e-12 * sol.beta,
            "gradient {g} at {}",
            sol.beta
        );
        assert!(passes <= 5, "{passes} passes");
        assert!(!sol.at_bound);
        // The same problem confined below its optimum ends on the bound.
        let capped = minimise(0.1, 0.5 * sol.beta, 1.0, None, |b| {
            rows.jet(0..4, b, |_, _| {})
        });
        assert!(capped.at_bound && capped.beta == 0.5 * sol.beta);
    }
}
