//! Vector scaling (Guo et al. 2017): softmax(w * z + b) with a weight and a bias per class,
//! fitted by minimising the mean NLL plus a small ridge toward the temperature-scaling solution
//! (w = 1/T, b = 0). The problem is convex in (w, b); gradient descent with Barzilai-Borwein
//! steps and an Armijo backtracking safeguard converges without tuning.

use ndarray::ArrayView2;

use super::Calibrator;
use super::nll_solver::Rows;
use super::options::FitOptions;
use super::temperature::fit_global_beta;
use crate::numeric::softmax_in_place;

struct Problem<'a> {
    logits: ArrayView2<'a, f64>,
    labels: &'a [usize],
    w0: f64,
    l2: f64,
}

impl Problem<'_> {
    /// Objective and gradient at `x = [w; b]`.
    fn eval(&self, x: &[f64], grad: &mut [f64]) -> f64 {
        let k = self.logits.ncols();
        let n = self.labels.len() as f64;
        let (w, b) = x.split_at(k);
        grad.fill(0.0);
        let mut p = vec![0.0; k];
        let mut loss = 0.0;
        for (z, &y) in self.logits.rows().into_iter().zip(self.labels) {
            for j in 0..k {
                p[j] = w[j] * z[j] + b[j];
            }
            let lse = crate::numeric::log_sum_exp(&p);
            loss += lse - p[y];
            softmax_in_place(&mut p);
            p[y] -= 1.0;
            for j in 0..k {
                grad[j] += p[j] * z[j];
                grad[k + j] += p[j];
            }
        }
        let mut reg = 0.0;
        for j in 0..k {
            let dw = w[j] - self.w0;
            reg += dw * dw + b[j] * b[j];
            grad[j] = grad[j] / n + 2.0 * self.l2 * dw;
            grad[k + j] = grad[k + j] / n + 2.0 * self.l2 * b[j];
        }
        loss / n + self.l2 * reg
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fits vector scaling, starting from the temperature-scaling solution.
pub(crate) fn fit_vector(
    logits: ArrayView2<'_, f64>,
    labels: &[usize],
    opts: &FitOptions,
) -> Calibrator {
    let k = logits.ncols();
    let w0 = fit_global_beta(&Rows::new(logits, labels), opts);
    let problem = Problem {
        logits,
        labels,
        w0,
        l2: opts.vector_l2,
    };
    let mut x: Vec<f64> = std::iter::repeat_n(w0, k)
        .chain(std::iter::repeat_n(0.0, k))
        .collect();
    let mut g = vec![0.0; 2 * k];
    let mut f = problem.eval(&x, &mut g);
    let mut step = 1.0;
    let (mut x_new, mut g_new) = (vec![0.0; 2 * k], vec![0.0; 2 * k]);
    for _ in 0..1000 {
        let gg = dot(&g, &g);
        if gg.sqrt() < 1e-9 {
            break;
        }
        // Armijo backtracking on the Barzilai-Borwein step.
        let mut f_new;
        loop {
            for i in 0..x.len() {
                x_new[i] = x[i] - step * g[i];
            }
            f_new = problem.eval(&x_new, &mut g_new);
            if f_new <= f - 1e-4 * step * gg || step < 1e-12 {
                break;
            }
            step *= 0.5;
        }
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        step = if sy > 0.0 { dot(&s, &s) / sy } else { 1.0 };
        let converged = (f - f_new).abs() <= 1e-15 * f.abs().max(1.0);
        std::mem::swap(&mut x, &mut x_new);
        std::mem::swap(&mut g, &mut g_new);
        f = f_new;
        if converged {
            break;
        }
    }
    let biases = x.split_off(k);
    Calibrator::Vector { weights: x, biases }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn gradient_matches_finite_differences() {
        let z = Array2::from_shape_fn((5, 3), |(i, j)| ((i * 3 + j) as f64 * 0.7).sin() * 2.0);
        let y = [0, 1, 2, 1, 0];
        let p = Problem {
            logits: z.view(),
            labels: &y,
            w0: 0.8,
            l2: 0.01,
        };
        let x = [0.9, 1.1, 0.7, 0.1, -0.2, 0.3];
        let mut g = vec![0.0; 6];
        p.eval(&x, &mut g);
        let mut scratch = vec![0.0; 6];
        for i in 0..6 {
            let (mut up, mut down) = (x, x);
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let fd = (p.eval(&up, &mut scratch) - p.eval(&down, &mut scratch)) / 2e-6;
            assert!((fd - g[i]).abs() < 1e-7, "coordinate {i}: {fd} vs {}", g[i]);
        }
    }
}
