//! Architectures: `linear`, `mlp`, `lenet` and `resnet20`, each a body (ending in the
//! penultimate activations, exported as `features`) and a linear head (the `logits`).

use super::graph::Graph;
use super::layers::{
    BatchNorm2d, Conv2d, Flatten, Fwd, GlobalAvgPool, Layer, Linear, LinearInit, MaxPool2d, Mode,
    ParamSpec, Relu, Residual, chain_backward, chain_forward,
};

/// Errors building a network.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// The architecture name is unknown.
    #[error("unknown architecture {0:?} (expected linear, mlp, lenet or resnet20)")]
    Unknown(String),
    /// The input shape does not suit the architecture.
    #[error("architecture {arch} cannot take inputs of shape {shape:?}: {why}")]
    BadInput {
        /// Architecture name.
        arch: String,
        /// Per-sample input shape.
        shape: Vec<i64>,
        /// Why not.
        why: String,
    },
}

/// A network: body layers, then the linear head `fc`.
#[derive(Debug)]
pub struct Net {
    /// Architecture name.
    pub arch: String,
    /// Per-sample input shape (`[C, H, W]`, or `[D]` for flat inputs).
    pub input: Vec<i64>,
    /// Number of classes.
    pub classes: i64,
    /// Everything up to the penultimate activations.
    pub body: Vec<Box<dyn Layer>>,
    /// The classifier head.
    pub head: Linear,
}

/// Forward records of a whole network.
#[derive(Debug)]
pub struct NetFwd {
    /// `[N, K]` logits.
    pub logits: String,
    /// `[N, D]` penultimate activations.
    pub features: String,
    body: Vec<Fwd>,
    shapes: Vec<Vec<i64>>,
    head: Fwd,
    /// Buffer updates of every layer (training mode).
    pub buffer_updates: Vec<(String, String)>,
}

fn conv(name: &str, cin: i64, cout: i64, k: i64, stride: i64, bias: bool) -> Box<dyn Layer> {
    Box::new(Conv2d {
        name: name.into(),
        cin,
        cout,
        k,
        stride,
        pad: k / 2,
        bias,
    })
}

fn linear(name: &str, inp: i64, out: i64) -> Linear {
    Linear {
        name: name.into(),
        inp,
        out,
        init: LinearInit::He,
    }
}

impl Net {
    /// Builds `arch` for per-sample inputs of shape `input` and `classes` outputs; `width`
    /// multiplies the channel / hidden sizes of `mlp` and `resnet20`.
    pub fn new(arch: &str, input: &[i64], classes: i64, width: f64) -> Result<Net, ArchError> {
        let bad = |why: &str| ArchError::BadInput {
            arch: arch.into(),
            shape: input.to_vec(),
            why: why.into(),
        };
        let scaled = |c: i64| ((c as f64 * width).round() as i64).max(1);
        let flat: i64 = input.iter().product();
        let mut body: Vec<Box<dyn Layer>> = Vec::new();
        if input.len() > 1 && arch != "lenet" && arch != "resnet20" {
            body.push(Box::new(Flatten));
        }
        let feat = match arch {
            "linear" => flat,
            "mlp" => {
                let h = scaled(256);
                body.push(Box::new(linear("fc1", flat, h)));
                body.push(Box::new(Relu));
                body.push(Box::new(linear("fc2", h, h)));
                body.push(Box::new(Relu));
                h
            }
            "lenet" => {
                let [c, h, w] = input else {
                    return Err(bad("needs [C, H, W]"));
                };
                if h % 4 != 0 || w % 4 != 0 {
                    return Err(bad("height and width must be multiples of 4"));
                }
                // Pool before ReLU: relu(maxpool(x)) = maxpool(relu(x)) since both are
                // monotone, and the gradients agree too (a window's gradient goes to its first
                // maximum either way, and passes exactly when that maximum is positive), but the
                // ReLU and its backward mask then run on a quarter of the elements (a faster
                // LeNet step, docs/BENCHMARKS.md). PyTorch's reference keeps conv-relu-pool.
                body.push(conv("conv1", *c, 32, 3, 1, true));
                body.push(Box::new(MaxPool2d { k: 2, stride: 2 }));
                body.push(Box::new(Relu));
                body.push(conv("conv2", 32, 64, 3, 1, true));
                body.push(Box::new(MaxPool2d { k: 2, stride: 2 }));
                body.push(Box::new(Relu));
                body.push(Box::new(Flatten));
                let d = 64 * (h / 4) * (w / 4);
                body.push(Box::new(linear("fc1", d, 128)));
                body.push(Box::new(Relu));
                128
            }
            "resnet20" => {
                let [c, h, w] = input else {
                    return Err(bad("needs [C, H, W]"));
                };
                if h % 4 != 0 || w % 4 != 0 {
                    return Err(bad("height and width must be multiples of 4"));
                }
                let widths = [scaled(16), scaled(32), scaled(64)];
                body.push(conv("conv1", *c, widths[0], 3, 1, false));
                body.push(Box::new(BatchNorm2d::new("bn1".into(), widths[0])));
                body.push(Box::new(Relu));
                let mut cin = widths[0];
                for (si, &cout) in widths.iter().enumerate() {
                    for bi in 0..3 {
                        let stride = if si > 0 && bi == 0 { 2 } else { 1 };
                        let pre = format!("layer{}.{bi}", si + 1);
                        let body_layers: Vec<Box<dyn Layer>> = vec![
                            conv(&format!("{pre}.conv1"), cin, cout, 3, stride, false),
                            Box::new(BatchNorm2d::new(format!("{pre}.bn1"), cout)),
                            Box::new(Relu),
                            conv(&format!("{pre}.conv2"), cout, cout, 3, 1, false),
                            Box::new(BatchNorm2d::new(format!("{pre}.bn2"), cout)),
                        ];
                        let shortcut: Vec<Box<dyn Layer>> = if stride != 1 || cin != cout {
                            vec![
                                conv(&format!("{pre}.shortcut.conv"), cin, cout, 1, stride, false),
                                Box::new(BatchNorm2d::new(format!("{pre}.shortcut.bn"), cout)),
                            ]
                        } else {
                            vec![]
                        };
                        body.push(Box::new(Residual {
                            body: body_layers,
                            shortcut,
                        }));
                        cin = cout;
                    }
                }
                body.push(Box::new(GlobalAvgPool));
                cin
            }
            other => return Err(ArchError::Unknown(other.into())),
        };
        Ok(Net {
            arch: arch.into(),
            input: input.to_vec(),
            classes,
            body,
            head: linear("fc", feat, classes),
        })
    }

    /// The same network with the classifier head started by `init` (the body keeps He's rule).
    /// The head's parameters come last, so the body starts the same for a given seed whatever
    /// the head's rule.
    pub fn with_head_init(mut self, init: LinearInit) -> Net {
        self.head.init = init;
        self
    }

    /// Trainable parameters, in a fixed order.
    pub fn params(&self) -> Vec<ParamSpec> {
        let mut p: Vec<ParamSpec> = self.body.iter().flat_map(|l| l.params()).collect();
        p.extend(self.head.params());
        p
    }

    /// Buffers (BatchNorm running statistics).
    pub fn buffers(&self) -> Vec<ParamSpec> {
        self.body.iter().flat_map(|l| l.buffers()).collect()
    }

    /// Emits the forward pass from input `x`.
    pub fn forward(&self, g: &mut Graph, x: &str, mode: Mode) -> NetFwd {
        let (body, shapes) = chain_forward(&self.body, g, x, &self.input, mode);
        let features = body.last().map_or(x.to_string(), |f| f.y.clone());
        let fshape = self
            .body
            .iter()
            .fold(self.input.clone(), |s, l| l.out_shape(&s));
        let head = self.head.forward(g, &features, &fshape, mode);
        let buffer_updates = body
            .iter()
            .flat_map(|f| f.buffer_updates.iter().cloned())
            .collect();
        NetFwd {
            logits: head.y.clone(),
            features,
            body,
            shapes,
            head,
            buffer_updates,
        }
    }

    /// Emits the backward pass from `dlogits`; returns `(parameter, gradient)` pairs.
    pub fn backward(&self, g: &mut Graph, f: &NetFwd, dlogits: &str) -> Vec<(String, String)> {
        let need = !self.body.is_empty();
        let hb = self.head.backward(g, &f.head, &[], dlogits, need);
        let mut grads = hb.grads;
        if let Some(d) = hb.dx {
            grads.extend(chain_backward(&self.body, g, &f.body, &f.shapes, &d, false).grads);
        }
        grads
    }

    /// Width of the `features` output.
    pub fn feature_dim(&self) -> i64 {
        self.head.inp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_textbook_networks() {
        let count = |n: &Net| n.params().iter().map(ParamSpec::numel).sum::<usize>();
        // LeNet of docs/METHOD.md#training-on-onnx-runtime: 320 + 18496 + 401536 + 1290.
        let lenet = Net::new("lenet", &[1, 28, 28], 10, 1.0).unwrap();
        assert_eq!(count(&lenet), 421_642);
        // ResNet-20 with 1x1 projection shortcuts: 0.27M parameters (He et al. report 0.27M).
        let r = Net::new("resnet20", &[3, 32, 32], 10, 1.0).unwrap();
        let c = count(&r);
        assert!((270_000..=275_000).contains(&c), "{c}");
        assert_eq!(r.buffers().len(), 2 * 21);
        assert!(matches!(
            Net::new("vgg", &[1, 28, 28], 10, 1.0),
            Err(ArchError::Unknown(_))
        ));
        assert!(Net::new("lenet", &[1, 30, 30], 10, 1.0).is_err());
    }

    #[test]
    fn head_init_sets_the_heads_bounds_and_leaves_the_body_alone() {
        use crate::train::runner::init_values;
        use crate::train::step::{StateKind, StateSpec};
        use rand::SeedableRng;
        let start = |init| {
            let net = Net::new("lenet", &[1, 28, 28], 10, 1.0)
                .unwrap()
                .with_head_init(init);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            net.params()
                .into_iter()
                .map(|spec| {
                    let s = StateSpec {
                        spec,
                        kind: StateKind::Param,
                    };
                    (s.spec.name.clone(), init_values(&s, &mut rng))
                })
                .collect::<Vec<_>>()
        };
        let (he, pt) = (start(LinearInit::He), start(LinearInit::LinearDefault));
        let n = he.len();
        // Same seed, same body: the two rules differ in the head alone.
        assert_eq!(he[..n - 2], pt[..n - 2]);
        assert_eq!(
            (&he[n - 2].0[..], &he[n - 1].0[..]),
            ("fc.weight", "fc.bias")
        );
        let max_abs = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        // LeNet's head has fan_in 128: He bound sqrt(6/128) = 0.2165, PyTorch's 1/sqrt(128)
        // = 0.0884. 1,280 uniform draws reach within 1% of the bound.
        let (he_b, pt_b) = ((6f32 / 128.0).sqrt(), (1f32 / 128.0).sqrt());
        let (w, b) = (&he[n - 2].1, &he[n - 1].1);
        assert!(
            max_abs(w) <= he_b && max_abs(w) > 0.99 * he_b,
            "{}",
            max_abs(w)
        );
        assert!(b.iter().all(|&x| x == 0.0));
        let (w, b) = (&pt[n - 2].1, &pt[n - 1].1);
        assert!(
            max_abs(w) <= pt_b && max_abs(w) > 0.99 * pt_b,
            "{}",
            max_abs(w)
        );
        assert!(max_abs(b) <= pt_b && b.iter().any(|&x| x != 0.0), "{b:?}");
    }
}
