//! `caliper-train check-step`: one training step on random data, run on a device the way
//! training runs it (a CPU session lowered onto NCHWc kernels, see `nchwc`; a CUDA session with
//! TF32 off) and on the reference, the CPU running the graph exactly as written; every output
//! (loss, logits, each gradient, each updated state tensor) is compared. One command checks a
//! GPU setup, an ONNX Runtime upgrade or a graph rewrite against plain ONNX semantics.
//!
//! ReLU has a kink: two correct implementations that round differently can put a pre-activation
//! within rounding of zero on opposite sides, and that one element's gradient then passes in
//! one run and not in the other, which moves every gradient below it by up to a few percent at
//! small batches (docs/BENCHMARKS.md, CUDA training step). So the check also fetches every
//! ReLU's input, counts the elements whose sign
//! differs, and draws new random data (the next seed, up to 5) until no mask flipped; only that
//! step's outputs are compared. A wrong kernel gives differences of order 1 whatever the seed.

use std::borrow::Cow;
use std::collections::BTreeMap;

use anyhow::Context;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::config::CheckArgs;
use super::runner::{Device, RunError, SessionOptions, init_values, open, ort_err};
use super::step::{StepGraph, training_step};

/// How far one output of the checked session is from the reference.
#[derive(Debug, Clone, Serialize)]
pub struct OutputDiff {
    /// Output name (`loss`, `logits`, `grad.*`, `next.*`).
    pub name: String,
    /// Largest absolute element difference.
    pub max_abs_diff: f32,
    /// The reference output's largest magnitude (at least 1e-3): differences are relative to it.
    pub scale: f32,
    /// `max_abs_diff / scale`.
    pub relative: f32,
    /// `|got - reference|_2 / |reference|_2` (the reference norm at least 1e-6).
    pub relative_l2: f32,
}

/// The result of `check-step`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The checked device.
    pub device: String,
    /// Nodes the CPU lowering rewrote (0 on CUDA, or without NCHWc kernels).
    pub lowered_nodes: usize,
    /// The allowed relative difference.
    pub tolerance: f32,
    /// The largest relative L2 difference over all outputs.
    pub worst_relative: f32,
    /// The output with that difference.
    pub worst_output: String,
    /// Whether every output is within the tolerance.
    pub ok: bool,
    /// The seed of the compared step.
    pub seed: u64,
    /// Seeds skipped because a ReLU mask flipped, with how many elements flipped.
    pub skipped_seeds: Vec<(u64, usize)>,
    /// Every output, sorted by name.
    pub outputs: Vec<OutputDiff>,
}

/// How many seeds `check-step` tries before giving up on a step without a flipped ReLU mask.
const SEED_TRIES: u64 = 5;

/// The step graph with every ReLU's input added as an output (named as in the graph), and those
/// names.
fn with_relu_inputs(graph: &StepGraph) -> anyhow::Result<(StepGraph, Vec<String>)> {
    use prost::Message;
    let mut model = crate::runtime::onnx_proto::ModelProto::decode(graph.bytes.as_slice())?;
    let g = model
        .graph
        .as_mut()
        .context("the step model has no graph")?;
    let names: Vec<String> = g
        .node
        .iter()
        .filter(|n| n.op_type == "Relu")
        .map(|n| n.input[0].clone())
        .collect();
    for name in &names {
        g.output.push(crate::runtime::onnx_proto::ValueInfoProto {
            name: name.clone(),
            ..Default::default()
        });
    }
    let bytes = model.encode_to_vec();
    Ok((
        StepGraph {
            bytes,
            ..graph.clone()
        },
        names,
    ))
}

/// Elements of the named tensors that are positive in one run and not in the other.
fn mask_flips(
    a: &BTreeMap<String, Vec<f32>>,
    b: &BTreeMap<String, Vec<f32>>,
    names: &[String],
) -> usize {
    names
        .iter()
        .map(|n| {
            a[n].iter()
                .zip(&b[n])
                .filter(|(x, y)| (**x > 0.0) != (**y > 0.0))
                .count()
        })
        .sum()
}

/// Named float inputs: name, shape, values.
pub type FloatInputs = [(String, Vec<i64>, Vec<f32>)];

/// Runs `session` on float inputs plus optional int64 labels `y`; every output by name.
pub fn run_named(
    session: &mut Session,
    inputs: &FloatInputs,
    labels: Option<&[i64]>,
) -> Result<BTreeMap<String, Vec<f32>>, RunError> {
    let vals: Vec<(String, DynValue)> = inputs
        .iter()
        .map(|(n, shape, v)| {
            let t = Tensor::from_array((shape.clone(), v.clone())).map_err(ort_err)?;
            Ok((n.clone(), t.into_dyn()))
        })
        .collect::<Result<_, RunError>>()?;
    let y = labels
        .map(|y| Tensor::from_array((vec![y.len() as i64], y.to_vec())).map_err(ort_err))
        .transpose()?;
    let mut feed: Vec<(Cow<str>, SessionInputValue)> = vals
        .iter()
        .map(|(k, v)| (Cow::Owned(k.clone()), v.into()))
        .collect();
    if let Some(y) = &y {
        feed.push(("y".into(), y.into()));
    }
    let out = session.run(feed).map_err(ort_err)?;
    out.iter()
        .map(|(k, v)| {
            let data = v.try_extract_tensor::<f32>().map_err(ort_err)?.1.to_vec();
            Ok((k.to_string(), data))
        })
        .collect()
}

/// Runs one step of `graph` in `session` on seeded random data: a batch of `batch` inputs of
/// `input` shape, labels cycling over three classes, learning rate 0.1, and the state at its
/// initial values except that all-zero tensors (momenta, AdamW's moments, biases) get small
/// random values, non-negative because a second moment must be, so that every update path is
/// exercised. Returns every output by name.
pub fn step_outputs(
    session: &mut Session,
    graph: &StepGraph,
    input: &[i64],
    batch: usize,
    seed: u64,
) -> Result<BTreeMap<String, Vec<f32>>, RunError> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let shape: Vec<i64> = std::iter::once(batch as i64)
        .chain(input.iter().copied())
        .collect();
    let numel = shape.iter().product::<i64>() as usize;
    let x: Vec<f32> = (0..numel).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let mut inputs = vec![
        ("x".to_string(), shape, x),
        ("lr".to_string(), vec![], vec![0.1]),
    ];
    if graph.needs_step {
        inputs.push(("step".into(), vec![], vec![1.0]));
    }
    for spec in &graph.state {
        let mut v = init_values(spec, &mut r);
        if v.iter().all(|&e| e == 0.0) {
            v.iter_mut().for_each(|e| *e = r.random_range(0.0f32..0.1));
        }
        if spec.spec.name.ends_with("running_var") {
            v.iter_mut().for_each(|e| *e = e.abs() + 0.5);
        }
        inputs.push((spec.spec.name.clone(), spec.spec.shape.clone(), v));
    }
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % 3).collect();
    run_named(session, &inputs, Some(&labels))
}

/// Every output of `got` against the same output of `reference`, sorted by name. An output
/// missing from `got`, or of another length, counts as infinitely far. The loss is measured
/// against at least 1: GCE's loss (without log n) is a difference of terms of order log K that
/// is near zero by construction at initialisation (0.005 on ResNet-20), so one rounding of
/// those terms is 1e-4 of the difference itself.
pub fn compare(
    reference: &BTreeMap<String, Vec<f32>>,
    got: &BTreeMap<String, Vec<f32>>,
) -> Vec<OutputDiff> {
    reference
        .iter()
        .map(|(name, want)| {
            let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let floor = if name == "loss" { 1.0 } else { 1e-6 };
            let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt().max(floor);
            // Largest difference and the difference's squared norm, in one pass; a missing
            // output, one of another length, or NaN anywhere is as far as it gets.
            let (max_abs_diff, relative_l2) = match got.get(name) {
                Some(g) if g.len() == want.len() => {
                    let (max, sq) = want.iter().zip(g).fold((0f32, 0f32), |(m, s), (a, b)| {
                        let d = a - b;
                        (m.max(d.abs()), s + d * d)
                    });
                    if sq.is_nan() {
                        (f32::INFINITY, f32::INFINITY)
                    } else {
                        (max, sq.sqrt() / norm)
                    }
                }
                _ => (f32::INFINITY, f32::INFINITY),
            };
            OutputDiff {
                name: name.clone(),
                max_abs_diff,
                scale,
                relative: max_abs_diff / scale,
                relative_l2,
            }
        })
        .collect()
}

/// Runs `caliper-train check-step`.
pub fn run(a: &CheckArgs) -> anyhow::Result<CheckReport> {
    anyhow::ensure!(a.batch_size >= 2, "--batch-size must be at least 2");
    let device: Device = a.device.parse().map_err(anyhow::Error::msg)?;
    let net = a.net.net()?;
    let opt = a.net.model.optimizer(super::config::DEFAULT_MOMENTUM)?;
    let plain = training_step(&net, a.net.model.loss()?, &opt, true);
    let lowered_nodes = match (device, super::nchwc::block_size()) {
        (Device::Cpu, Some(block)) => super::nchwc::lower(&plain.bytes, block)?.1,
        _ => 0,
    };
    let (graph, relu_inputs) = with_relu_inputs(&plain)?;
    let as_written = SessionOptions {
        lower: false,
        ..SessionOptions::new(a.threads, Device::Cpu)
    };
    let mut reference = open(&graph.bytes, as_written)?;
    let full_precision = SessionOptions {
        tf32: false,
        ..SessionOptions::new(a.threads, device)
    };
    let mut checked = open(&graph.bytes, full_precision)?;
    let mut skipped_seeds = Vec::new();
    for seed in a.seed..a.seed + SEED_TRIES {
        let mut want = step_outputs(
            &mut reference,
            &graph,
            &a.net.input_shape,
            a.batch_size,
            seed,
        )?;
        let mut got = step_outputs(&mut checked, &graph, &a.net.input_shape, a.batch_size, seed)?;
        let flips = mask_flips(&want, &got, &relu_inputs);
        if flips > 0 {
            skipped_seeds.push((seed, flips));
            continue;
        }
        for name in &relu_inputs {
            want.remove(name);
            got.remove(name);
        }
        let outputs = compare(&want, &got);
        let worst = outputs
            .iter()
            .max_by(|x, y| x.relative_l2.total_cmp(&y.relative_l2))
            .context("the step graph has no outputs")?;
        return Ok(CheckReport {
            device: a.device.clone(),
            lowered_nodes,
            tolerance: a.tolerance,
            worst_relative: worst.relative_l2,
            worst_output: worst.name.clone(),
            ok: worst.relative_l2 <= a.tolerance,
            seed,
            skipped_seeds,
            outputs,
        });
    }
    anyhow::bail!(
        "a ReLU mask flipped on every seed tried ({skipped_seeds:?}: seed, elements): the runs \
         round too differently to compare gradients; try a smaller --batch-size"
    )
}
