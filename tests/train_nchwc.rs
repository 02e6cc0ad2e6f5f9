//! The CPU lowering of convolutions onto ONNX Runtime's NCHWc kernels (`train::nchwc`): which
//! nodes it rewrites, and that a lowered training step computes what the graph as written
//! computes (loss, logits, every gradient and every updated state tensor).

use std::borrow::Cow;
use std::collections::BTreeMap;

use caliper::train::arch::Net;
use caliper::train::loss::Loss;
use caliper::train::nchwc;
use caliper::train::optim::Optimizer;
use caliper::train::runner::{Device, init_values, session, session_as_written};
use caliper::train::step::{StepGraph, training_step};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use rand::{Rng, SeedableRng};

fn sgd() -> Optimizer {
    Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 5e-4,
    }
}

fn step(arch: &str, input: &[i64]) -> StepGraph {
    step_width(arch, input, 1.0)
}

fn step_width(arch: &str, input: &[i64], width: f64) -> StepGraph {
    let net = Net::new(arch, input, 10, width).unwrap();
    training_step(&net, Loss::Gce { lambda: 1.0 }, &sgd(), true)
}

#[test]
fn lowering_rewrites_every_eligible_convolution() {
    // ResNet-20: 21 forward convolutions (3 -> 16 first, 16/32/64 after, two 1x1 projections)
    // and the 16 stride-1 input gradients; the 4 strided input gradients stay ConvTranspose.
    let r20 = step("resnet20", &[3, 32, 32]);
    for block in [8, 16] {
        let (_, n) = nchwc::lower(&r20.bytes, block).unwrap();
        assert_eq!(n, 37, "resnet20, block {block}");
    }
    // LeNet (1 -> 32 -> 64 channels): both forward convolutions (the first from a one-channel
    // input, narrower than a block) and the second one's input gradient.
    let lenet = step("lenet", &[1, 28, 28]);
    for block in [8, 16] {
        assert_eq!(
            nchwc::lower(&lenet.bytes, block).unwrap().1,
            3,
            "lenet, block {block}"
        );
    }
    // Nothing to lower: the bytes come back unchanged.
    let linear = step("linear", &[1, 28, 28]);
    let (same, n) = nchwc::lower(&linear.bytes, 16).unwrap();
    assert_eq!((n, same == linear.bytes), (0, true));
}

/// Runs one step with random state, inputs and labels; every output by name.
fn run(s: &mut Session, g: &StepGraph, input: &[i64], seed: u64) -> BTreeMap<String, Vec<f32>> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = 4usize;
    let mut vals: Vec<(String, DynValue)> = Vec::new();
    let shape: Vec<i64> = std::iter::once(n as i64)
        .chain(input.iter().copied())
        .collect();
    let numel = shape.iter().product::<i64>() as usize;
    let x: Vec<f32> = (0..numel).map(|_| r.random_range(-1.0f32..1.0)).collect();
    vals.push((
        "x".into(),
        Tensor::from_array((shape, x)).unwrap().into_dyn(),
    ));
    vals.push((
        "lr".into(),
        Tensor::from_array((Vec::<i64>::new(), vec![0.1f32]))
            .unwrap()
            .into_dyn(),
    ));
    for spec in &g.state {
        let mut v = init_values(spec, &mut r);
        // Non-zero momenta and buffers, so the update paths are compared too.
        if v.iter().all(|&e| e == 0.0) {
            v.iter_mut().for_each(|e| *e = r.random_range(-0.1f32..0.1));
        }
        if spec.spec.name.ends_with("running_var") {
            v.iter_mut().for_each(|e| *e = e.abs() + 0.5);
        }
        let t = Tensor::from_array((spec.spec.shape.clone(), v)).unwrap();
        vals.push((spec.spec.name.clone(), t.into_dyn()));
    }
    let y: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
    let y = Tensor::from_array((vec![n as i64], y)).unwrap();
    let mut feed: Vec<(Cow<str>, SessionInputValue)> = vals
        .iter()
        .map(|(k, v)| (Cow::Owned(k.clone()), v.into()))
        .collect();
    feed.push(("y".into(), (&y).into()));
    let out = s.run(feed).unwrap();
    out.iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                v.try_extract_tensor::<f32>().unwrap().1.to_vec(),
            )
        })
        .collect()
}

fn assert_same_step(arch: &str, input: &[i64], width: f64) {
    let Some(block) = nchwc::block_size() else {
        eprintln!("this CPU's ONNX Runtime has no NCHWc kernels: nothing is lowered here");
        return;
    };
    let g = step_width(arch, input, width);
    assert!(
        nchwc::lower(&g.bytes, block).unwrap().1 > 0,
        "{arch}: nothing lowered"
    );
    let plain = run(
        &mut session_as_written(&g.bytes, 1, Device::Cpu, false).unwrap(),
        &g,
        input,
        7,
    );
    let lowered = run(
        &mut session(&g.bytes, 1, Device::Cpu, false).unwrap(),
        &g,
        input,
        7,
    );
    assert_eq!(plain.len(), lowered.len());
    for (name, want) in &plain {
        let got = &lowered[name];
        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let worst = want
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-4 * scale,
            "{arch} {name}: lowered differs by {worst} (scale {scale})"
        );
    }
}

#[test]
fn lowered_resnet20_step_matches_the_graph_as_written() {
    assert_same_step("resnet20", &[3, 16, 16], 1.0);
}

#[test]
fn lowered_resnet20_steps_of_other_widths_match_the_graph_as_written() {
    // Width 0.5 (8/16/32 channels: narrow 8-channel inputs into whole-block layers, the rest
    // left alone at block 16) and 1.5 (24/48/96: 24 is no whole block at 16, 48 and 96 are).
    assert_same_step("resnet20", &[3, 16, 16], 0.5);
    assert_same_step("resnet20", &[3, 16, 16], 1.5);
}

#[test]
fn lowered_lenet_step_matches_the_graph_as_written() {
    // The narrow-input path (one input channel, OIHWBo weight layout) and a bias.
    assert_same_step("lenet", &[1, 28, 28], 1.0);
}
