//! Training losses as graph fragments: each emits the scalar mean loss and its gradient with
//! respect to the logits, `dL/dz` already divided by the batch size. Definitions follow
//! `docs/METHOD.md` (GCE in its numerically stable form, #gce-loss; the baselines,
//! #baseline-losses).

use super::graph::{Graph, attr_i, attr_ints};

/// A training loss and its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// Cross-entropy.
    Ce,
    /// Generative cross-entropy, `CE + lambda * sum_k pi_k log qbar_k` (lambda = 1 is GCE).
    Gce {
        /// Weight of the class-level regularizer.
        lambda: f32,
    },
    /// Focal loss `-(1 - p_t)^gamma log p_t` (gamma >= 1).
    Focal {
        /// Focusing parameter.
        gamma: f32,
    },
    /// FLSD-53: focal with gamma 5 where p_t < 0.2, else 3 (Mukhoti et al. 2020).
    Flsd53,
    /// Dual focal loss `-(1 - p_y + p_j)^gamma log p_y` (Tao et al. 2023).
    DualFocal {
        /// Focusing parameter.
        gamma: f32,
    },
    /// Cross-entropy against `(1 - eps) onehot + eps / K`.
    LabelSmoothing {
        /// Smoothing mass.
        eps: f32,
    },
}

impl Loss {
    /// The name used on the command line and in metadata.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::Ce => "ce",
            Loss::Gce { .. } => "gce",
            Loss::Focal { .. } => "focal",
            Loss::Flsd53 => "flsd53",
            Loss::DualFocal { .. } => "dual-focal",
            Loss::LabelSmoothing { .. } => "label-smoothing",
        }
    }

    /// The loss's hyperparameters as `(name, value)` pairs, for metadata.
    pub fn hyperparameters(&self) -> Vec<(&'static str, f64)> {
        match *self {
            Loss::Gce { lambda } => vec![("gce_lambda", lambda as f64)],
            Loss::Focal { gamma } | Loss::DualFocal { gamma } => {
                vec![("focal_gamma", gamma as f64)]
            }
            Loss::LabelSmoothing { eps } => vec![("label_smoothing", eps as f64)],
            Loss::Ce | Loss::Flsd53 => vec![],
        }
    }
}

/// Names of the loss value and the logits gradient.
#[derive(Debug, Clone)]
pub struct LossOut {
    /// Scalar mean loss.
    pub loss: String,
    /// `dL/dz`, `[N, K]`.
    pub dz: String,
}

/// Shared pieces: log-probabilities, probabilities, one-hot labels and the batch size.
struct Common {
    logp: String,
    p: String,
    onehot: String,
    n: String,
}

fn common(g: &mut Graph, z: &str, y: &str, k: i64) -> Common {
    let logp = g.op("LogSoftmax", &[z], vec![attr_i("axis", 1)]);
    let p = g.op("Exp", &[&logp], vec![]);
    let depth = g.const_i64(&[k]);
    let values = g.const_f32(&[2], &[0.0, 1.0]);
    let onehot = g.op("OneHot", &[y, &depth, &values], vec![attr_i("axis", -1)]);
    let n = g.batch_size_f32(z, 2);
    Common { logp, p, onehot, n }
}

/// Row-wise dot product `sum_k a[i,k] b[i,k]` as `[N]` (or `[N, 1]` with `keepdims`).
fn rowdot(g: &mut Graph, a: &str, b: &str, keepdims: bool) -> String {
    let m = g.mul(a, b);
    g.reduce_sum(&m, &[1], keepdims)
}

/// Mean over the batch of a `[N]` vector.
fn mean(g: &mut Graph, v: &str) -> String {
    g.reduce_mean(v, &[0], false)
}

/// Emits `loss` and `dL/dz` for logits `z: [N, K]` and labels `y: [N]` (int64).
pub fn emit(g: &mut Graph, loss: Loss, z: &str, y: &str, k: i64) -> LossOut {
    let c = common(g, z, y, k);
    let neg = g.scalar(-1.0);
    // -log p_t per sample, [N], and CE.
    let lt = rowdot(g, &c.onehot, &c.logp, false);
    let nll = g.mul(&lt, &neg);
    match loss {
        Loss::Ce => {
            let l = mean(g, &nll);
            let d = g.sub(&c.p, &c.onehot);
            LossOut {
                loss: l,
                dz: g.div(&d, &c.n),
            }
        }
        Loss::LabelSmoothing { eps } => {
            let a = g.scalar(1.0 - eps);
            let b = g.scalar(eps / k as f32);
            let t = g.mul(&c.onehot, &a);
            let t = g.add(&t, &b);
            let per = rowdot(g, &t, &c.logp, false);
            let per = g.mul(&per, &neg);
            let l = mean(g, &per);
            let d = g.sub(&c.p, &t);
            LossOut {
                loss: l,
                dz: g.div(&d, &c.n),
            }
        }
        Loss::Gce { lambda } => gce(g, &c, &nll, lambda),
        Loss::Focal { gamma } => {
            let gam = g.scalar(gamma);
            focal(g, &c, &lt, &gam)
        }
        Loss::Flsd53 => {
            // Per-sample gamma, held constant in the gradient (the switch is a step function).
            let pt = g.op("Exp", &[&lt], vec![]);
            let cut = g.scalar(0.2);
            let low = g.op("Less", &[&pt, &cut], vec![]);
            let five = g.scalar(5.0);
            let three = g.scalar(3.0);
            let gam = g.op("Where", &[&low, &five, &three], vec![]);
            focal(g, &c, &lt, &gam)
        }
        Loss::DualFocal { gamma } => dual_focal(g, &c, &lt, gamma, k),
    }
}

/// GCE, stable form: `L = mean_i(-logp[i,y_i] + lambda * lse_{y_i}) - lambda * log n`, with
/// `lse_k = logsumexp_j logp[j,k]` (so the reported value is `CE + lambda sum_k pi_k log
/// qbar_k`, without the constant `log n`, docs/METHOD.md#gce-loss). Gradient:
/// `dz = (1/n) [(p - onehot) + lambda (A - p * rowsum(A))]`, `A[j,c] = n_c softmax_j(logp)[j,c]`
/// `= p_{j,c} w_c`: written with a softmax over the batch so that no `1 / S_k` can overflow.
fn gce(g: &mut Graph, c: &Common, nll: &str, lambda: f32) -> LossOut {
    let lam = g.scalar(lambda);
    let lse = g.op(
        "ReduceLogSumExp",
        &[&c.logp],
        vec![attr_ints("axes", &[0]), attr_i("keepdims", 1)],
    );
    let lse_y = rowdot(g, &c.onehot, &lse, false);
    let reg_mean = mean(g, &lse_y);
    let logn = g.op("Log", &[&c.n], vec![]);
    let reg = g.sub(&reg_mean, &logn);
    let ce = mean(g, nll);
    let reg_l = g.mul(&reg, &lam);
    let l = g.add(&ce, &reg_l);

    let counts = g.reduce_sum(&c.onehot, &[0], true);
    let q = g.op("Softmax", &[&c.logp], vec![attr_i("axis", 0)]);
    let a = g.mul(&q, &counts);
    let rs = g.reduce_sum(&a, &[1], true);
    let prs = g.mul(&c.p, &rs);
    let r = g.sub(&a, &prs);
    let r = g.mul(&r, &lam);
    let d = g.sub(&c.p, &c.onehot);
    let d = g.add(&d, &r);
    LossOut {
        loss: l,
        dz: g.div(&d, &c.n),
    }
}

/// Focal loss with a scalar or per-sample gamma: `dz = h (onehot - p) / n`,
/// `h = gamma (1-pt)^(gamma-1) pt log pt - (1-pt)^gamma`.
fn focal(g: &mut Graph, c: &Common, lt: &str, gam: &str) -> LossOut {
    let one = g.scalar(1.0);
    let pt = g.op("Exp", &[lt], vec![]);
    let u = g.sub(&one, &pt);
    let ug = g.op("Pow", &[&u, gam], vec![]);
    let per = g.mul(&ug, lt);
    let neg = g.scalar(-1.0);
    let per = g.mul(&per, &neg);
    let l = mean(g, &per);
    let gm1 = g.sub(gam, &one);
    let ug1 = g.op("Pow", &[&u, &gm1], vec![]);
    let t = g.mul(gam, &ug1);
    let t = g.mul(&t, &pt);
    let t = g.mul(&t, lt);
    let h = g.sub(&t, &ug);
    let h = g.reshape(&h, &[-1, 1]);
    let d = g.sub(&c.onehot, &c.p);
    let d = g.mul(&d, &h);
    LossOut {
        loss: l,
        dz: g.div(&d, &c.n),
    }
}

/// Dual focal loss. `p_j` is the largest probability strictly below `p_y` among the other
/// classes (0 when there is none); the choice of `j` is held fixed in the gradient:
/// `dz = [-gamma u^(gamma-1) log p_y du/dz - u^gamma (onehot - p)] / n`, `u = 1 - p_y + p_j`,
/// `du/dz = -p_y (onehot - p) + p_j (onehot_j - p)`.
fn dual_focal(g: &mut Graph, c: &Common, lt: &str, gamma: f32, k: i64) -> LossOut {
    let one = g.scalar(1.0);
    let neg = g.scalar(-1.0);
    let gam = g.scalar(gamma);
    let pt = g.op("Exp", &[lt], vec![]);
    let pt2 = g.reshape(&pt, &[-1, 1]);
    let below = g.op("Less", &[&c.p, &pt2], vec![]);
    let minus1 = g.scalar(-1.0);
    let masked = g.op("Where", &[&below, &c.p, &minus1], vec![]);
    let jidx = g.op(
        "ArgMax",
        &[&masked],
        vec![attr_i("axis", 1), attr_i("keepdims", 0)],
    );
    let mmax = g.op(
        "ReduceMax",
        &[&masked],
        vec![attr_ints("axes", &[1]), attr_i("keepdims", 0)],
    );
    let zero = g.scalar(0.0);
    let has = g.op("Greater", &[&mmax, &minus1], vec![]);
    let pj = g.op("Where", &[&has, &mmax, &zero], vec![]);
    let depth = g.const_i64(&[k]);
    let values = g.const_f32(&[2], &[0.0, 1.0]);
    let oh_j = g.op(
        "OneHot",
        &[&jidx, &depth, &values],
        vec![attr_i("axis", -1)],
    );
    let hasf = g.op("Cast", &[&has], vec![attr_i("to", 1)]);
    let hasf2 = g.reshape(&hasf, &[-1, 1]);
    let oh_j = g.mul(&oh_j, &hasf2);

    let u = g.sub(&one, &pt);
    let u = g.add(&u, &pj);
    let ug = g.op("Pow", &[&u, &gam], vec![]);
    let per = g.mul(&ug, lt);
    let per = g.mul(&per, &neg);
    let l = mean(g, &per);

    let gm1 = g.sub(&gam, &one);
    let ug1 = g.op("Pow", &[&u, &gm1], vec![]);
    let coef = g.mul(&gam, &ug1);
    let coef = g.mul(&coef, lt);
    let coef = g.mul(&coef, &neg); // -gamma u^(gamma-1) log p_y, [N]
    let a = g.sub(&c.onehot, &c.p);
    let mpt = g.mul(&pt2, &neg);
    let du1 = g.mul(&a, &mpt);
    let b = g.sub(&oh_j, &c.p);
    let pj2 = g.reshape(&pj, &[-1, 1]);
    let du2 = g.mul(&b, &pj2);
    let du = g.add(&du1, &du2);
    let coef2 = g.reshape(&coef, &[-1, 1]);
    let t1 = g.mul(&du, &coef2);
    let ug2 = g.reshape(&ug, &[-1, 1]);
    let t2 = g.mul(&a, &ug2);
    let d = g.sub(&t1, &t2);
    LossOut {
        loss: l,
        dz: g.div(&d, &c.n),
    }
}
