//! Layers that emit their own forward and backward ONNX nodes.
//!
//! A layer sees per-sample shapes (`[C, H, W]` or `[D]`; the batch is dynamic). `forward` returns
//! the output name plus whatever the backward pass needs (`Fwd::saved`); `backward` turns the
//! output gradient into the input gradient and one gradient per parameter. The formulations are
//! the ones verified in `docs/METHOD.md#training-on-onnx-runtime` (ConvTranspose for the input gradient, MaxPool
//! indices + ScatterElements), tuned by profile (docs/BENCHMARKS.md): the convolution weight
//! gradient as one batched MatMul per kernel tap, BatchNorm through ONNX Runtime's fused
//! BatchNormalization kernel, MaxPool with non-overlapping windows without Indices, boolean
//! masks applied as Cast + Mul rather than Where.

mod conv;
mod norm;
mod residual;

pub use conv::{Conv2d, GlobalAvgPool, MaxPool2d};
pub use norm::BatchNorm2d;
pub use residual::{Residual, chain_backward, chain_forward};

use super::graph::{Graph, attr_i};

/// Whether a forward pass is for training (batch statistics) or inference (running statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Training step: batch statistics, intermediate values kept for the backward pass.
    Train,
    /// Inference: running statistics, no backward pass.
    Eval,
}

/// How a parameter or buffer is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform(-b, b) with b = sqrt(6 / fan_in) (He et al. 2015, for ReLU networks).
    HeUniform {
        /// Inputs feeding one output unit.
        fan_in: i64,
    },
    /// Uniform(-b, b) with b = 1 / sqrt(fan_in): PyTorch's `nn.Linear` default for weight and
    /// bias (`kaiming_uniform_(a = sqrt(5))` gives exactly this bound for the weight), sqrt(6) =
    /// 2.45 times narrower than He's.
    LinearDefault {
        /// Inputs feeding one output unit.
        fan_in: i64,
    },
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
}

/// A trainable parameter or a non-trainable buffer (BatchNorm running statistics).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Name, also the ONNX input / initializer name (e.g. `conv1.weight`).
    pub name: String,
    /// Full shape.
    pub shape: Vec<i64>,
    /// Initialisation.
    pub init: Init,
}

impl ParamSpec {
    pub(crate) fn new(name: String, shape: Vec<i64>, init: Init) -> Self {
        ParamSpec { name, shape, init }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product::<i64>() as usize
    }
}

/// What a forward pass left for the backward pass.
#[derive(Debug, Clone, Default)]
pub struct Fwd {
    /// The layer output.
    pub y: String,
    /// Values the backward pass reads (layer specific).
    pub saved: Vec<String>,
    /// Forward records of sub-layers (residual blocks).
    pub children: Vec<Fwd>,
    /// New values of buffers, `(buffer name, value)`, produced in training mode.
    pub buffer_updates: Vec<(String, String)>,
}

impl Fwd {
    pub(crate) fn simple(y: String, saved: Vec<String>) -> Self {
        Fwd {
            y,
            saved,
            ..Default::default()
        }
    }
}

/// Gradients produced by a backward pass.
#[derive(Debug, Clone, Default)]
pub struct Bwd {
    /// Gradient with respect to the layer input (None when not requested).
    pub dx: Option<String>,
    /// `(parameter name, gradient value)`.
    pub grads: Vec<(String, String)>,
}

/// A layer with forward and backward graph emission.
pub trait Layer: std::fmt::Debug + Send + Sync {
    /// Trainable parameters.
    fn params(&self) -> Vec<ParamSpec> {
        Vec::new()
    }
    /// Non-trainable state updated by the forward pass in training mode.
    fn buffers(&self) -> Vec<ParamSpec> {
        Vec::new()
    }
    /// Per-sample output shape for a per-sample input shape.
    fn out_shape(&self, s: &[i64]) -> Vec<i64>;
    /// Emits the forward nodes.
    fn forward(&self, g: &mut Graph, x: &str, s: &[i64], mode: Mode) -> Fwd;
    /// Emits the backward nodes (`s` is the per-sample input shape, `f` this layer's forward).
    fn backward(&self, g: &mut Graph, f: &Fwd, s: &[i64], dy: &str, need_dx: bool) -> Bwd;
}

/// Fully connected layer `y = x W^T + b`, `W: [out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Prefix of the parameter names (`<name>.weight`, `<name>.bias`).
    pub name: String,
    /// Input features.
    pub inp: i64,
    /// Output features.
    pub out: i64,
    /// How weight and bias start.
    pub init: LinearInit,
}

/// How a [`Linear`] layer starts (`caliper-train --head-init` for the classifier head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LinearInit {
    /// He-uniform weight, zero bias: the rule of every other layer (caliper's default).
    #[default]
    He,
    /// PyTorch's `nn.Linear` default, U(±1/sqrt(fan_in)) for weight and bias
    /// ([`Init::LinearDefault`]); the start of the PyTorch recipes the reproduction compares with
    /// (issue 18: the lr 0.05 collapses depend on the head's start).
    LinearDefault,
}

impl Linear {
    fn w(&self) -> String {
        format!("{}.weight", self.name)
    }
    fn b(&self) -> String {
        format!("{}.bias", self.name)
    }
}

impl Layer for Linear {
    fn params(&self) -> Vec<ParamSpec> {
        let fan_in = self.inp;
        let (weight, bias) = match self.init {
            LinearInit::He => (Init::HeUniform { fan_in }, Init::Zeros),
            LinearInit::LinearDefault => (
                Init::LinearDefault { fan_in },
                Init::LinearDefault { fan_in },
            ),
        };
        vec![
            ParamSpec::new(self.w(), vec![self.out, self.inp], weight),
            ParamSpec::new(self.b(), vec![self.out], bias),
        ]
    }
    fn out_shape(&self, _s: &[i64]) -> Vec<i64> {
        vec![self.out]
    }
    fn forward(&self, g: &mut Graph, x: &str, _s: &[i64], _mode: Mode) -> Fwd {
        let (w, b) = (self.w(), self.b());
        let y = g.op("Gemm", &[x, &w, &b], vec![attr_i("transB", 1)]);
        Fwd::simple(y, vec![x.to_string()])
    }
    fn backward(&self, g: &mut Graph, f: &Fwd, _s: &[i64], dy: &str, need_dx: bool) -> Bwd {
        let x = &f.saved[0];
        let dw = g.op("Gemm", &[dy, x], vec![attr_i("transA", 1)]);
        let db = g.reduce_sum(dy, &[0], false);
        let dx = need_dx.then(|| {
            let w = self.w();
            g.op("MatMul", &[dy, &w], vec![])
        });
        Bwd {
            dx,
            grads: vec![(self.w(), dw), (self.b(), db)],
        }
    }
}

/// ReLU; the backward pass masks by the saved output (`y > 0` exactly where `x > 0`).
#[derive(Debug, Clone)]
pub struct Relu;

impl Layer for Relu {
    fn out_shape(&self, s: &[i64]) -> Vec<i64> {
        s.to_vec()
    }
    fn forward(&self, g: &mut Graph, x: &str, _s: &[i64], _mode: Mode) -> Fwd {
        let y = g.op("Relu", &[x], vec![]);
        Fwd::simple(y.clone(), vec![y])
    }
    fn backward(&self, g: &mut Graph, f: &Fwd, _s: &[i64], dy: &str, _need_dx: bool) -> Bwd {
        let zero = g.scalar(0.0);
        let mask = g.op("Greater", &[&f.saved[0], &zero], vec![]);
        let dx = mask_mul(g, dy, &mask);
        Bwd {
            dx: Some(dx),
            grads: vec![],
        }
    }
}

/// `v * mask` for a boolean mask of v's shape: Cast to float, then Mul. Exact (multiplying by 1
/// or 0) and, in ONNX Runtime's CPU provider, faster than `Where(mask, v, 0)`, whose
/// scalar-broadcast path is not vectorised (docs/BENCHMARKS.md).
pub(crate) fn mask_mul(g: &mut Graph, v: &str, mask: &str) -> String {
    let m = g.op("Cast", &[mask], vec![attr_i("to", 1)]);
    g.mul(v, &m)
}

/// Flattens everything after the batch dimension.
#[derive(Debug, Clone)]
pub struct Flatten;

impl Layer for Flatten {
    fn out_shape(&self, s: &[i64]) -> Vec<i64> {
        vec![s.iter().product()]
    }
    fn forward(&self, g: &mut Graph, x: &str, _s: &[i64], _mode: Mode) -> Fwd {
        Fwd::simple(g.op("Flatten", &[x], vec![attr_i("axis", 1)]), vec![])
    }
    fn backward(&self, g: &mut Graph, _f: &Fwd, s: &[i64], dy: &str, _need_dx: bool) -> Bwd {
        let shape: Vec<i64> = std::iter::once(-1).chain(s.iter().copied()).collect();
        Bwd {
            dx: Some(g.reshape(dy, &shape)),
            grads: vec![],
        }
    }
}
