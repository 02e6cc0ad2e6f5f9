//! Layers that emit their own forward and backward ONNX nodes.
//!
//! A layer sees per-sample shapes (`[C, H, W]` or `[D]`; the batch is dynamic). `forward` returns
//! the output name plus whatever the backward pass needs (`Fwd::saved`); `backward` turns the
//! output gradient into the input gradient and one gradient per parameter. The formulations are
//! the ones verified in `shared/onnxruntime.md` (im2col + one Gemm for the convolution weight
//! gradient, ConvTranspose for the input gradient, MaxPool indices + ScatterElements).

use super::graph::{Graph, attr_f, attr_i, attr_ints, attr_t, tensor_f32};

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
    fn new(name: String, shape: Vec<i64>, init: Init) -> Self {
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
    fn simple(y: String, saved: Vec<String>) -> Self {
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
        vec![
            ParamSpec::new(
                self.w(),
                vec![self.out, self.inp],
                Init::HeUniform { fan_in: self.inp },
            ),
            ParamSpec::new(self.b(), vec![self.out], Init::Zeros),
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
        let dx = g.op("Where", &[&mask, dy, &zero], vec![]);
        Bwd {
            dx: Some(dx),
            grads: vec![],
        }
    }
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

/// 2-D convolution with square kernel, stride and zero padding; optional bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// Parameter name prefix.
    pub name: String,
    /// Input channels.
    pub cin: i64,
    /// Output channels.
    pub cout: i64,
    /// Kernel size.
    pub k: i64,
    /// Stride.
    pub stride: i64,
    /// Zero padding on each side.
    pub pad: i64,
    /// Whether the layer has a bias (convolutions followed by BatchNorm do not).
    pub bias: bool,
}

impl Conv2d {
    fn w(&self) -> String {
        format!("{}.weight", self.name)
    }
    fn b(&self) -> String {
        format!("{}.bias", self.name)
    }
    fn out_hw(&self, h: i64) -> i64 {
        (h + 2 * self.pad - self.k) / self.stride + 1
    }
    fn attrs(&self) -> Vec<super::onnx::AttributeProto> {
        vec![
            attr_ints("kernel_shape", &[self.k, self.k]),
            attr_ints("strides", &[self.stride, self.stride]),
            attr_ints("pads", &[self.pad; 4]),
        ]
    }
}

impl Layer for Conv2d {
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = vec![ParamSpec::new(
            self.w(),
            vec![self.cout, self.cin, self.k, self.k],
            Init::HeUniform {
                fan_in: self.cin * self.k * self.k,
            },
        )];
        if self.bias {
            p.push(ParamSpec::new(self.b(), vec![self.cout], Init::Zeros));
        }
        p
    }
    fn out_shape(&self, s: &[i64]) -> Vec<i64> {
        vec![self.cout, self.out_hw(s[1]), self.out_hw(s[2])]
    }
    fn forward(&self, g: &mut Graph, x: &str, _s: &[i64], _mode: Mode) -> Fwd {
        let w = self.w();
        let b = self.b();
        let mut inputs = vec![x, w.as_str()];
        if self.bias {
            inputs.push(&b);
        }
        let y = g.op("Conv", &inputs, self.attrs());
        Fwd::simple(y, vec![x.to_string()])
    }
    fn backward(&self, g: &mut Graph, f: &Fwd, s: &[i64], dy: &str, need_dx: bool) -> Bwd {
        let x = &f.saved[0];
        let (c, h, w) = (s[0], s[1], s[2]);
        let (oh, ow) = (self.out_hw(h), self.out_hw(w));
        let (k, st, p) = (self.k, self.stride, self.pad);
        // Weight gradient by im2col: the input, channels first, padded once; one strided Slice
        // per kernel tap gives [C, N, OH, OW]; stacked they form the [C*k*k, N*OH*OW] column
        // matrix, and one Gemm with dY as [O, N*OH*OW] gives dW (the fast form measured in
        // shared/onnxruntime.md; the transposed-Conv form was 3x slower).
        let xt = g.transpose(x, &[1, 0, 2, 3]);
        let xp = if p > 0 {
            let pads = g.const_i64(&[0, 0, p, p, 0, 0, p, p]);
            g.op("Pad", &[&xt, &pads], vec![])
        } else {
            xt
        };
        let axes = g.const_i64(&[2, 3]);
        let steps = g.const_i64(&[st, st]);
        let one = g.const_i64(&[1]);
        let mut taps = Vec::with_capacity((k * k) as usize);
        for ki in 0..k {
            for kj in 0..k {
                let starts = g.const_i64(&[ki, kj]);
                let ends = g.const_i64(&[ki + st * (oh - 1) + 1, kj + st * (ow - 1) + 1]);
                let sl = g.op("Slice", &[&xp, &starts, &ends, &axes, &steps], vec![]);
                taps.push(g.op("Unsqueeze", &[&sl, &one], vec![]));
            }
        }
        let tap_refs: Vec<&str> = taps.iter().map(String::as_str).collect();
        let cols = g.op("Concat", &tap_refs, vec![attr_i("axis", 1)]);
        let cols = g.reshape(&cols, &[c * k * k, -1]);
        let dyt = g.transpose(dy, &[1, 0, 2, 3]);
        let dyr = g.reshape(&dyt, &[self.cout, -1]);
        let dw = g.op("Gemm", &[&dyr, &cols], vec![attr_i("transB", 1)]);
        let dw = g.reshape(&dw, &[self.cout, c, k, k]);
        let mut grads = vec![(self.w(), dw)];
        if self.bias {
            grads.push((self.b(), g.reduce_sum(dy, &[0, 2, 3], false)));
        }
        let dx = need_dx.then(|| {
            let wname = self.w();
            let mut attrs = self.attrs();
            let op = h + 2 * p - k - st * (oh - 1);
            let opw = w + 2 * p - k - st * (ow - 1);
            attrs.push(attr_ints("output_padding", &[op, opw]));
            g.op("ConvTranspose", &[dy, &wname], attrs)
        });
        Bwd { dx, grads }
    }
}

/// Max pooling with a square window; the backward pass scatters into the argmax positions.
#[derive(Debug, Clone)]
pub struct MaxPool2d {
    /// Window size.
    pub k: i64,
    /// Stride.
    pub stride: i64,
}

impl Layer for MaxPool2d {
    fn out_shape(&self, s: &[i64]) -> Vec<i64> {
        let o = |h: i64| (h - self.k) / self.stride + 1;
        vec![s[0], o(s[1]), o(s[2])]
    }
    fn forward(&self, g: &mut Graph, x: &str, _s: &[i64], mode: Mode) -> Fwd {
        let attrs = vec![
            attr_ints("kernel_shape", &[self.k, self.k]),
            attr_ints("strides", &[self.stride, self.stride]),
        ];
        if mode == Mode::Eval {
            return Fwd::simple(g.op("MaxPool", &[x], attrs), vec![]);
        }
        let mut outs = g.op_n("MaxPool", &[x], 2, attrs);
        let idx = outs.pop().unwrap_or_default();
        let y = outs.pop().unwrap_or_default();
        Fwd::simple(y, vec![x.to_string(), idx])
    }
    fn backward(&self, g: &mut Graph, f: &Fwd, _s: &[i64], dy: &str, _need_dx: bool) -> Bwd {
        // Indices are offsets into the whole flattened input (row-major NCHW), so one
        // ScatterElements on the flat tensor routes every gradient to its argmax.
        let (x, idx) = (&f.saved[0], &f.saved[1]);
        let shape = g.op("Shape", &[x], vec![]);
        let numel = g.op("ReduceProd", &[&shape], vec![attr_i("keepdims", 1)]);
        let zeros = g.op(
            "ConstantOfShape",
            &[&numel],
            vec![attr_t("value", tensor_f32("", &[1], &[0.0]))],
        );
        let idxf = g.reshape(idx, &[-1]);
        let dyf = g.reshape(dy, &[-1]);
        let sc = g.op(
            "ScatterElements",
            &[&zeros, &idxf, &dyf],
            vec![attr_i("axis", 0), super::graph::attr_s("reduction", "add")],
        );
        Bwd {
            dx: Some(g.op("Reshape", &[&sc, &shape], vec![])),
            grads: vec![],
        }
    }
}

/// Average of each channel over its spatial positions: `[C, H, W] -> [C]`.
#[derive(Debug, Clone)]
pub struct GlobalAvgPool;

impl Layer for GlobalAvgPool {
    fn out_shape(&self, s: &[i64]) -> Vec<i64> {
        vec![s[0]]
    }
    fn forward(&self, g: &mut Graph, x: &str, _s: &[i64], _mode: Mode) -> Fwd {
        Fwd::simple(g.reduce_mean(x, &[2, 3], false), vec![])
    }
    fn backward(&self, g: &mut Graph, _f: &Fwd, s: &[i64], dy: &str, _need_dx: bool) -> Bwd {
        let scale = g.scalar(1.0 / (s[1] * s[2]) as f32);
        let d = g.mul(dy, &scale);
        let d = g.reshape(&d, &[-1, s[0], 1, 1]);
        let shape = g.const_i64(&[1, 1, s[1], s[2]]);
        Bwd {
            dx: Some(g.op("Expand", &[&d, &shape], vec![])),
            grads: vec![],
        }
    }
}

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

/// A residual block `relu(body(x) + shortcut(x))` (He et al. 2016); `shortcut` empty means
/// the identity.
#[derive(Debug)]
pub struct Residual {
    /// The main branch.
    pub body: Vec<Box<dyn Layer>>,
    /// The projection branch (1x1 conv + BN when the shape changes), or empty.
    pub shortcut: Vec<Box<dyn Layer>>,
}

/// Runs a chain of layers forward, returning the records and the input shape of each.
pub fn chain_forward(
    layers: &[Box<dyn Layer>],
    g: &mut Graph,
    x: &str,
    s: &[i64],
    mode: Mode,
) -> (Vec<Fwd>, Vec<Vec<i64>>) {
    let mut fwds = Vec::with_capacity(layers.len());
    let mut shapes = Vec::with_capacity(layers.len());
    let (mut cur, mut shape) = (x.to_string(), s.to_vec());
    for l in layers {
        let f = l.forward(g, &cur, &shape, mode);
        shapes.push(shape.clone());
        shape = l.out_shape(&shape);
        cur = f.y.clone();
        fwds.push(f);
    }
    (fwds, shapes)
}

/// Runs a chain backward; returns the input gradient (when `need_dx`) and the parameter grads.
pub fn chain_backward(
    layers: &[Box<dyn Layer>],
    g: &mut Graph,
    fwds: &[Fwd],
    shapes: &[Vec<i64>],
    dy: &str,
    need_dx: bool,
) -> Bwd {
    let mut grads = Vec::new();
    let mut d = dy.to_string();
    for i in (0..layers.len()).rev() {
        let want = need_dx || i > 0;
        let b = layers[i].backward(g, &fwds[i], &shapes[i], &d, want);
        grads.extend(b.grads);
        match b.dx {
            Some(dx) => d = dx,
            None => {
                return Bwd { dx: None, grads };
            }
        }
    }
    Bwd {
        dx: need_dx.then_some(d),
        grads,
    }
}

fn chain_params(layers: &[Box<dyn Layer>], buffers: bool) -> Vec<ParamSpec> {
    layers
        .iter()
        .flat_map(|l| if buffers { l.buffers() } else { l.params() })
        .collect()
}

fn chain_out_shape(layers: &[Box<dyn Layer>], s: &[i64]) -> Vec<i64> {
    layers.iter().fold(s.to_vec(), |sh, l| l.out_shape(&sh))
}

impl Layer for Residual {
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = chain_params(&self.body, false);
        p.extend(chain_params(&self.shortcut, false));
        p
    }
    fn buffers(&self) -> Vec<ParamSpec> {
        let mut p = chain_params(&self.body, true);
        p.extend(chain_params(&self.shortcut, true));
        p
    }
    fn out_shape(&self, s: &[i64]) -> Vec<i64> {
        chain_out_shape(&self.body, s)
    }
    fn forward(&self, g: &mut Graph, x: &str, s: &[i64], mode: Mode) -> Fwd {
        let (bf, _) = chain_forward(&self.body, g, x, s, mode);
        let (sf, _) = chain_forward(&self.shortcut, g, x, s, mode);
        let by = bf.last().map_or(x.to_string(), |f| f.y.clone());
        let sy = sf.last().map_or(x.to_string(), |f| f.y.clone());
        let sum = g.add(&by, &sy);
        let y = g.op("Relu", &[&sum], vec![]);
        let mut updates = Vec::new();
        for f in bf.iter().chain(&sf) {
            updates.extend(f.buffer_updates.iter().cloned());
        }
        Fwd {
            y: y.clone(),
            saved: vec![y],
            children: vec![
                Fwd {
                    children: bf,
                    ..Default::default()
                },
                Fwd {
                    children: sf,
                    ..Default::default()
                },
            ],
            buffer_updates: updates,
        }
    }
    fn backward(&self, g: &mut Graph, f: &Fwd, s: &[i64], dy: &str, _need_dx: bool) -> Bwd {
        let zero = g.scalar(0.0);
        let mask = g.op("Greater", &[&f.saved[0], &zero], vec![]);
        let dsum = g.op("Where", &[&mask, dy, &zero], vec![]);
        let bshapes = shapes_of(&self.body, s);
        let sshapes = shapes_of(&self.shortcut, s);
        let b = chain_backward(
            &self.body,
            g,
            &f.children[0].children,
            &bshapes,
            &dsum,
            true,
        );
        let sc = chain_backward(
            &self.shortcut,
            g,
            &f.children[1].children,
            &sshapes,
            &dsum,
            true,
        );
        let mut grads = b.grads;
        grads.extend(sc.grads);
        let db = b.dx.unwrap_or_else(|| dsum.clone());
        let ds = sc.dx.unwrap_or_else(|| dsum.clone());
        Bwd {
            dx: Some(g.add(&db, &ds)),
            grads,
        }
    }
}

/// Input shape of every layer of a chain.
fn shapes_of(layers: &[Box<dyn Layer>], s: &[i64]) -> Vec<Vec<i64>> {
    let mut out = Vec::with_capacity(layers.len());
    let mut cur = s.to_vec();
    for l in layers {
        out.push(cur.clone());
        cur = l.out_shape(&cur);
    }
    out
}
