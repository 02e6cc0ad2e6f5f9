//! BatchNorm2d written out in elementwise ops, so that its backward pass can reuse the
//! normalised input and the inverse standard deviation of the forward pass.

use super::{Bwd, Fwd, Init, Layer, Mode, ParamSpec};
use crate::train::graph::{Graph, attr_f};

/// BatchNorm over the channels of `[C, H, W]`: batch statistics in training (and an update of
/// the running statistics with `momentum`), running statistics in inference.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    /// Parameter name prefix (`.weight`, `.bias`, buffers `.running_mean`, `.running_var`).
    pub name: String,
    /// Channels.
    pub c: i64,
    /// Running-statistics momentum (PyTorch convention: new = (1-m) old + m batch).
    pub momentum: f32,
    /// Added to the variance.
    pub eps: f32,
}

impl BatchNorm2d {
    /// A BatchNorm with PyTorch's defaults (momentum 0.1, eps 1e-5).
    pub fn new(name: String, c: i64) -> Self {
        BatchNorm2d {
            name,
            c,
            momentum: 0.1,
            eps: 1e-5,
        }
    }
    fn n(&self, what: &str) -> String {
        format!("{}.{what}", self.name)
    }
}

impl Layer for BatchNorm2d {
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new(self.n("weight"), vec![self.c], Init::Ones),
            ParamSpec::new(self.n("bias"), vec![self.c], Init::Zeros),
        ]
    }
    fn buffers(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new(self.n("running_mean"), vec![self.c], Init::Zeros),
            ParamSpec::new(self.n("running_var"), vec![self.c], Init::Ones),
        ]
    }
    fn out_shape(&self, s: &[i64]) -> Vec<i64> {
        s.to_vec()
    }
    fn forward(&self, g: &mut Graph, x: &str, s: &[i64], mode: Mode) -> Fwd {
        let (gamma, beta) = (self.n("weight"), self.n("bias"));
        if mode == Mode::Eval {
            let (rm, rv) = (self.n("running_mean"), self.n("running_var"));
            let y = g.op(
                "BatchNormalization",
                &[x, &gamma, &beta, &rm, &rv],
                vec![attr_f("epsilon", self.eps)],
            );
            return Fwd::simple(y, vec![]);
        }
        // Written out so that the backward pass can reuse xhat and 1/std.
        let mean = g.reduce_mean(x, &[0, 2, 3], true);
        let xc = g.sub(x, &mean);
        let sq = g.mul(&xc, &xc);
        let var = g.reduce_mean(&sq, &[0, 2, 3], true);
        let eps = g.scalar(self.eps);
        let ve = g.add(&var, &eps);
        let sd = g.op("Sqrt", &[&ve], vec![]);
        let inv = g.op("Reciprocal", &[&sd], vec![]);
        let xhat = g.mul(&xc, &inv);
        let g4 = g.reshape(&gamma, &[1, self.c, 1, 1]);
        let b4 = g.reshape(&beta, &[1, self.c, 1, 1]);
        let scaled = g.mul(&xhat, &g4);
        let y = g.add(&scaled, &b4);
        // Running statistics use the unbiased batch variance, as PyTorch does.
        let n = g.batch_size_f32(x);
        let hw = g.scalar((s[1] * s[2]) as f32);
        let m = g.mul(&n, &hw);
        let one = g.scalar(1.0);
        let m1 = g.sub(&m, &one);
        let unb = g.div(&m, &m1);
        let var_c = g.reshape(&var, &[self.c]);
        let var_u = g.mul(&var_c, &unb);
        let mean_c = g.reshape(&mean, &[self.c]);
        let keep = g.scalar(1.0 - self.momentum);
        let take = g.scalar(self.momentum);
        let upd = |g: &mut Graph, old: &str, new: &str| {
            let a = g.mul(old, &keep);
            let b = g.mul(new, &take);
            g.add(&a, &b)
        };
        let rm = upd(g, &self.n("running_mean"), &mean_c);
        let rv = upd(g, &self.n("running_var"), &var_u);
        Fwd {
            y,
            saved: vec![xhat, inv, g4],
            children: vec![],
            buffer_updates: vec![(self.n("running_mean"), rm), (self.n("running_var"), rv)],
        }
    }
    fn backward(&self, g: &mut Graph, f: &Fwd, _s: &[i64], dy: &str, _need_dx: bool) -> Bwd {
        let (xhat, inv, g4) = (&f.saved[0], &f.saved[1], &f.saved[2]);
        let dbeta = g.reduce_sum(dy, &[0, 2, 3], false);
        let dyx = g.mul(dy, xhat);
        let dgamma = g.reduce_sum(&dyx, &[0, 2, 3], false);
        // dx = gamma/std * (dy - mean(dy) - xhat * mean(dy * xhat)), means over N, H, W.
        let mdy = g.reduce_mean(dy, &[0, 2, 3], true);
        let mdyx = g.reduce_mean(&dyx, &[0, 2, 3], true);
        let t = g.mul(xhat, &mdyx);
        let a = g.sub(dy, &mdy);
        let a = g.sub(&a, &t);
        let scale = g.mul(g4, inv);
        let dx = g.mul(&a, &scale);
        Bwd {
            dx: Some(dx),
            grads: vec![(self.n("weight"), dgamma), (self.n("bias"), dbeta)],
        }
    }
}
