//! Whole graphs: the training step (forward, loss, backward, optimizer update in one ONNX graph)
//! and the inference graph (eval mode, exported as `model.onnx`).
//!
//! Training-step graph, inputs:
//! - `x` f32 `[N, ...input]`, `y` i64 `[N]`, `lr` f32 scalar, `step` f32 scalar (AdamW only,
//!   the 1-based update count for bias correction);
//! - every parameter by its name (`fc.weight`, `conv1.bias`, ...), every optimizer-state tensor
//!   (`momentum.<p>`, `adam_m.<p>`, `adam_v.<p>`), every buffer (`<bn>.running_mean`, ...).
//!
//! Outputs: `loss` (scalar mean loss; GCE without the constant log n), `logits` `[N, K]` (from
//! the parameters before the update), `next.<name>` for every state tensor, and, when asked,
//! `grad.<p>` for every parameter.
//!
//! Inference graph: input `input` f32 `[N, ...input]`, outputs `logits` `[N, K]` and `features`
//! `[N, D]` (the head's input); weights either as inputs of the same names (used during
//! training, so that validation needs no re-export) or baked in as initializers (export).

use std::collections::BTreeMap;

use super::arch::Net;
use super::graph::{Dim, Graph, batched, fixed, tensor_f32};
use super::layers::{Init, Mode, ParamSpec};
use super::loss::{self, Loss};
use super::optim::{self, Optimizer};

/// A state tensor carried between steps: a parameter, optimizer state or a buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSpec {
    /// Input name (the output is `next.<name>`).
    pub spec: ParamSpec,
    /// Whether this is a trainable parameter (exported) or a buffer (exported too) or
    /// optimizer state (not exported).
    pub kind: StateKind,
}

/// What a state tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// A trainable parameter.
    Param,
    /// A buffer such as a BatchNorm running mean.
    Buffer,
    /// Optimizer state.
    Optim,
}

/// A built training-step graph.
#[derive(Debug, Clone)]
pub struct StepGraph {
    /// Serialised ONNX model.
    pub bytes: Vec<u8>,
    /// Every state tensor, in input order.
    pub state: Vec<StateSpec>,
    /// Whether the graph takes the `step` input.
    pub needs_step: bool,
    /// Number of classes K (the `logits` output is `[N, K]`).
    pub classes: i64,
}

/// Prefix of the updated-state outputs.
pub const NEXT: &str = "next.";
/// Prefix of the gradient outputs.
pub const GRAD: &str = "grad.";

fn declared(spec: &ParamSpec) -> Vec<Dim> {
    fixed(&spec.shape)
}

/// Builds the training-step graph.
pub fn training_step(net: &Net, loss: Loss, opt: &Optimizer, emit_grads: bool) -> StepGraph {
    let mut g = Graph::new(&format!(
        "caliper-train step: {} / {} / {}",
        net.arch,
        loss.name(),
        opt.name()
    ));
    g.input_f32("x", &batched(&net.input), "input batch");
    g.input_i64("y", &[Dim::Named("N")], "labels");
    g.input_f32("lr", &[], "learning rate");
    if opt.needs_step() {
        g.input_f32("step", &[], "1-based update count (AdamW bias correction)");
    }
    let params = net.params();
    let mut state: Vec<StateSpec> = params
        .iter()
        .map(|p| StateSpec {
            spec: p.clone(),
            kind: StateKind::Param,
        })
        .collect();
    for p in &params {
        for name in opt.state_names(&p.name) {
            state.push(StateSpec {
                spec: ParamSpec {
                    name,
                    shape: p.shape.clone(),
                    init: Init::Zeros,
                },
                kind: StateKind::Optim,
            });
        }
    }
    for b in net.buffers() {
        state.push(StateSpec {
            spec: b,
            kind: StateKind::Buffer,
        });
    }
    for s in &state {
        g.input_f32(&s.spec.name, &declared(&s.spec), "");
    }

    let f = net.forward(&mut g, "x", Mode::Train);
    let lo = loss::emit(&mut g, loss, &f.logits, "y", net.classes);
    let grads = net.backward(&mut g, &f, &lo.dz);
    let grad_of: BTreeMap<&str, &str> = grads
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_str()))
        .collect();

    g.alias(&lo.loss, "loss");
    g.output_f32("loss", &[], "mean loss over the batch");
    g.alias(&f.logits, "logits");
    g.output_f32(
        "logits",
        &batched(&[net.classes]),
        "logits before the update",
    );

    let mut next: BTreeMap<String, String> = BTreeMap::new();
    for p in &params {
        // Every parameter feeds the loss, so every one has a gradient.
        let d = grad_of.get(p.name.as_str()).copied().unwrap_or_default();
        for (name, v) in optim::emit_update(&mut g, opt, p, d, "lr", "step") {
            next.insert(name, v);
        }
    }
    for (name, v) in &f.buffer_updates {
        next.insert(name.clone(), v.clone());
    }
    for s in &state {
        let out = format!("{NEXT}{}", s.spec.name);
        let v = next
            .get(&s.spec.name)
            .cloned()
            .unwrap_or(s.spec.name.clone());
        g.alias(&v, &out);
        g.output_f32(&out, &declared(&s.spec), "");
    }
    if emit_grads {
        for p in &params {
            let out = format!("{GRAD}{}", p.name);
            g.alias(grad_of[p.name.as_str()], &out);
            g.output_f32(&out, &declared(p), "");
        }
    }
    StepGraph {
        bytes: g.to_bytes("caliper_train_step", &[]),
        state,
        needs_step: opt.needs_step(),
        classes: net.classes,
    }
}

/// Builds the inference graph. With `weights` the parameters and buffers are baked in as
/// initializers; without, they are inputs named as in the training graph.
pub fn inference(
    net: &Net,
    weights: Option<&BTreeMap<String, Vec<f32>>>,
    metadata: &[(&str, String)],
) -> Vec<u8> {
    let mut g = Graph::new(&format!("caliper-train inference graph: {}", net.arch));
    g.input_f32("input", &batched(&net.input), "normalised images, NCHW");
    let mut all = net.params();
    all.extend(net.buffers());
    for p in &all {
        match weights.and_then(|w| w.get(&p.name)) {
            Some(data) => g.initializer(tensor_f32(&p.name, &p.shape, data)),
            None => g.input_f32(&p.name, &declared(p), ""),
        }
    }
    let f = net.forward(&mut g, "input", Mode::Eval);
    g.alias(&f.logits, "logits");
    g.output_f32("logits", &batched(&[net.classes]), "class logits");
    g.alias(&f.features, "features");
    g.output_f32(
        "features",
        &batched(&[net.feature_dim()]),
        "penultimate activations",
    );
    g.to_bytes("caliper_model", metadata)
}
