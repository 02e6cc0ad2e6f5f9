//! Optimizer updates as graph fragments: SGD (momentum, Nesterov, weight decay, PyTorch's
//! formulation) and AdamW (Loshchilov and Hutter 2019). The learning rate (and AdamW's step
//! count) are graph inputs, so schedules need no new graph.

use super::graph::Graph;
use super::layers::ParamSpec;

/// An optimizer and its hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// `g' = g + wd W; v = mu v + g'; W -= lr (nesterov ? g' + mu v : v)` (no state when mu = 0).
    Sgd {
        /// Momentum mu.
        momentum: f32,
        /// Nesterov momentum.
        nesterov: bool,
        /// L2 weight decay added to the gradient.
        weight_decay: f32,
    },
    /// AdamW with decoupled weight decay: `W -= lr (mhat / (sqrt(vhat) + eps) + wd W)`.
    AdamW {
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
        /// Denominator guard.
        eps: f32,
        /// Decoupled weight decay.
        weight_decay: f32,
    },
}

impl Optimizer {
    /// Name for metadata.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::AdamW { .. } => "adamw",
        }
    }

    /// The optimizer-state tensors of one parameter (same shape, zero-initialised).
    pub fn state_names(&self, param: &str) -> Vec<String> {
        match self {
            Optimizer::Sgd { momentum, .. } if *momentum == 0.0 => vec![],
            Optimizer::Sgd { .. } => vec![format!("momentum.{param}")],
            Optimizer::AdamW { .. } => vec![format!("adam_m.{param}"), format!("adam_v.{param}")],
        }
    }

    /// Whether the graph needs the `step` input (AdamW's bias correction).
    pub fn needs_step(&self) -> bool {
        matches!(self, Optimizer::AdamW { .. })
    }
}

/// Emits the update of one parameter. Returns `(name, new value)` for the parameter and each of
/// its state tensors. `lr` and `step` name scalar graph inputs.
pub fn emit_update(
    g: &mut Graph,
    opt: &Optimizer,
    p: &ParamSpec,
    grad: &str,
    lr: &str,
    step: &str,
) -> Vec<(String, String)> {
    let w = p.name.as_str();
    match *opt {
        Optimizer::Sgd {
            momentum,
            nesterov,
            weight_decay,
        } => {
            let gd = if weight_decay != 0.0 {
                let wd = g.scalar(weight_decay);
                let decay = g.mul(w, &wd);
                g.add(grad, &decay)
            } else {
                grad.to_string()
            };
            if momentum == 0.0 {
                let s = g.mul(&gd, lr);
                return vec![(w.to_string(), g.sub(w, &s))];
            }
            let vname = format!("momentum.{w}");
            let mu = g.scalar(momentum);
            let mv = g.mul(&vname, &mu);
            let v = g.add(&mv, &gd);
            let upd = if nesterov {
                let mv2 = g.mul(&v, &mu);
                g.add(&gd, &mv2)
            } else {
                v.clone()
            };
            let s = g.mul(&upd, lr);
            vec![(w.to_string(), g.sub(w, &s)), (vname, v)]
        }
        Optimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            let (mname, vname) = (format!("adam_m.{w}"), format!("adam_v.{w}"));
            let one = g.scalar(1.0);
            let b1 = g.scalar(beta1);
            let b2 = g.scalar(beta2);
            let c1 = g.scalar(1.0 - beta1);
            let c2 = g.scalar(1.0 - beta2);
            let m0 = g.mul(&mname, &b1);
            let m1 = g.mul(grad, &c1);
            let m = g.add(&m0, &m1);
            let v0 = g.mul(&vname, &b2);
            let gg = g.mul(grad, grad);
            let v1 = g.mul(&gg, &c2);
            let v = g.add(&v0, &v1);
            let pb1 = g.op("Pow", &[&b1, step], vec![]);
            let pb2 = g.op("Pow", &[&b2, step], vec![]);
            let bc1 = g.sub(&one, &pb1);
            let bc2 = g.sub(&one, &pb2);
            let mhat = g.div(&m, &bc1);
            let vhat = g.div(&v, &bc2);
            let sq = g.op("Sqrt", &[&vhat], vec![]);
            let e = g.scalar(eps);
            let den = g.add(&sq, &e);
            let mut upd = g.div(&mhat, &den);
            if weight_decay != 0.0 {
                let wd = g.scalar(weight_decay);
                let decay = g.mul(w, &wd);
                upd = g.add(&upd, &decay);
            }
            let s = g.mul(&upd, lr);
            vec![(w.to_string(), g.sub(w, &s)), (mname, m), (vname, v)]
        }
    }
}
