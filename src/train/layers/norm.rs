//! BatchNorm2d: batch statistics from reductions, normalisation by ONNX Runtime's fused
//! BatchNormalization kernel (inference form, fed the batch statistics), and a backward pass
//! that reuses the centred input and the inverse standard deviation of the forward pass.

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
        // Few passes over the activation, because on the CPU every elementwise node is one
        // more trip through memory (docs/BENCHMARKS.md):
        // the mean, the centred input (kept for the backward pass), its sum of squares, and
        // then ONNX Runtime's fused BatchNormalization kernel with the batch statistics as
        // its mean and variance inputs.
        let n = g.batch_size_f32(x, 4);
        let hw = g.scalar((s[1] * s[2]) as f32);
        let m = g.mul(&n, &hw);
        let sum = g.channel_sum(x);
        let mean_c = g.div(&sum, &m);
        let mean = g.reshape(&mean_c, &[1, self.c, 1, 1]);
        let xc = g.sub(x, &mean);
        // Squares, then a plain sum: ONNX Runtime's ReduceSumSquare is not vectorised like
        // ReduceSum and is slower than both nodes together (docs/BENCHMARKS.md).
        let sq = g.mul(&xc, &xc);
        let ssq = g.channel_sum(&sq);
        let var = g.div(&ssq, &m);
        let y = g.op(
            "BatchNormalization",
            &[x, &gamma, &beta, &mean_c, &var],
            vec![attr_f("epsilon", self.eps)],
        );
        let eps = g.scalar(self.eps);
        let ve = g.add(&var, &eps);
        let sd = g.op("Sqrt", &[&ve], vec![]);
        let inv = g.op("Reciprocal", &[&sd], vec![]);
        // Running statistics use the unbiased batch variance, as PyTorch does.
        let one = g.scalar(1.0);
        let m1 = g.sub(&m, &one);
        let unb = g.div(&m, &m1);
        let var_u = g.mul(&var, &unb);
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
            saved: vec![xc, inv, m],
            children: vec![],
            buffer_updates: vec![(self.n("running_mean"), rm), (self.n("running_var"), rv)],
        }
    }
    fn backward(&self, g: &mut Graph, f: &Fwd, _s: &[i64], dy: &str, _need_dx: bool) -> Bwd {
        // With xc = x - mean, inv = 1/std, k = gamma * inv, M = N*H*W and sums over N, H, W:
        //   dbeta = sum(dy), dgamma = inv * sum(dy * xc),
        //   dx = k (dy - mean(dy) - xhat mean(dy xhat)) = k dy + A xc + B,
        //   A = -k inv^2 sum(dy xc) / M, B = -k sum(dy) / M (per channel).
        // A xc + B is one fused BatchNormalization pass (mean 0, variance 1, epsilon 0).
        let (xc, inv, m) = (&f.saved[0], &f.saved[1], &f.saved[2]);
        let gamma = self.n("weight");
        let dbeta = g.channel_sum(dy);
        let dyxc = g.mul(dy, xc);
        let sdx = g.channel_sum(&dyxc);
        let dgamma = g.mul(&sdx, inv);
        let k = g.mul(&gamma, inv);
        let km = g.div(&k, m);
        let neg_km = g.op("Neg", &[&km], vec![]);
        let inv2 = g.mul(inv, inv);
        let a = g.mul(&neg_km, &inv2);
        let a = g.mul(&a, &sdx);
        let b = g.mul(&neg_km, &dbeta);
        let zeros = g.const_f32(&[self.c], &vec![0.0; self.c as usize]);
        let ones = g.const_f32(&[self.c], &vec![1.0; self.c as usize]);
        let axb = g.op(
            "BatchNormalization",
            &[xc, &a, &b, &zeros, &ones],
            vec![attr_f("epsilon", 0.0)],
        );
        let k4 = g.reshape(&k, &[1, self.c, 1, 1]);
        let dyk = g.mul(dy, &k4);
        let dx = g.add(&dyk, &axb);
        Bwd {
            dx: Some(dx),
            grads: vec![(self.n("weight"), dgamma), (self.n("bias"), dbeta)],
        }
    }
}
