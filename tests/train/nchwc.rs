//! The CPU lowering of convolutions onto ONNX Runtime's NCHWc kernels (`train::nchwc`): which
//! nodes it rewrites, and that a lowered training step computes what the graph as written
//! computes (loss, logits, every gradient and every updated state tensor).

use caliper::cli::train::{Cli, Command};
use caliper::train::arch::Net;
use caliper::train::check::{CheckReport, compare, run_named};
use caliper::train::graph::{Graph, batched, fixed};
use caliper::train::layers::{Conv2d, Layer, Mode};
use caliper::train::loss::Loss;
use caliper::train::nchwc;
use caliper::train::optim::Optimizer;
use caliper::train::runner::{Device, SessionOptions, open, session};
use caliper::train::step::{StepGraph, training_step};
use clap::Parser;
use prost::Message;
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
        let (lowered, n) = nchwc::lower(&r20.bytes, block).unwrap();
        assert_eq!(n, 37, "resnet20, block {block}");
        // Every lowered convolution but the 3-channel first one reads a blocked input, made
        // once per activation: the two stride-2 blocks' inputs each feed a 3x3 convolution and
        // a projection, so 36 - 2 reorders.
        let model = caliper::runtime::onnx_proto::ModelProto::decode(lowered.as_slice()).unwrap();
        let reorders = model
            .graph
            .unwrap()
            .node
            .iter()
            .filter(|n| n.op_type == "ReorderInput")
            .count();
        assert_eq!(reorders, 34, "resnet20, block {block}");
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

/// One convolution's forward pass, input gradient and weight (and bias) gradient for an
/// upstream gradient `r`, lowered against as written, on random data: nothing between the two
/// runs but the convolution kernels, so they must agree to float rounding.
fn assert_conv_lowers_exactly(conv: Conv2d, hw: i64, n: usize, block: i64) {
    let s = [conv.cin, hw, hw];
    let mut g = Graph::new("conv check");
    g.input_f32("x", &batched(&s), "");
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut randn =
        |len: usize| -> Vec<f32> { (0..len).map(|_| r.random_range(-1.0f32..1.0)).collect() };
    let shape = |rest: &[i64]| -> Vec<i64> {
        std::iter::once(n as i64)
            .chain(rest.iter().copied())
            .collect()
    };
    let mut inputs = vec![(
        "x".to_string(),
        shape(&s),
        randn(n * s.iter().product::<i64>() as usize),
    )];
    for p in conv.params() {
        g.input_f32(&p.name, &fixed(&p.shape), "");
        inputs.push((p.name.clone(), p.shape.clone(), randn(p.numel())));
    }
    let f = conv.forward(&mut g, "x", &s, Mode::Train);
    let os = conv.out_shape(&s);
    g.input_f32("r", &batched(&os), "");
    inputs.push((
        "r".into(),
        shape(&os),
        randn(n * os.iter().product::<i64>() as usize),
    ));
    let b = conv.backward(&mut g, &f, &s, "r", true);
    g.alias(&f.y, "y");
    g.output_f32("y", &batched(&os), "");
    g.alias(b.dx.as_deref().unwrap(), "dx");
    g.output_f32("dx", &batched(&s), "");
    for (name, grad) in &b.grads {
        let out = format!("grad.{name}");
        g.alias(grad, &out);
        g.output_f32(&out, &[], "");
    }
    let bytes = g.to_bytes("conv", &[]);
    let what = format!("{conv:?} at {hw}x{hw}");
    assert!(
        nchwc::lower(&bytes, block).unwrap().1 > 0,
        "{what}: nothing lowered"
    );
    let as_written = SessionOptions {
        lower: false,
        ..SessionOptions::new(2, Device::Cpu)
    };
    let mut plain = open(&bytes, as_written).unwrap();
    let mut lowered = session(&bytes, 2, Device::Cpu, false).unwrap();
    let want = run_named(&mut plain, &inputs, None).unwrap();
    let got = run_named(&mut lowered, &inputs, None).unwrap();
    for d in compare(&want, &got) {
        assert!(
            d.relative <= 1e-5,
            "{what} {}: differs by {} of its scale",
            d.name,
            d.relative
        );
    }
}

#[test]
fn every_resnet20_and_lenet_convolution_lowers_exactly() {
    let Some(block) = nchwc::block_size() else {
        eprintln!("this CPU's ONNX Runtime has no NCHWc kernels: nothing is lowered here");
        return;
    };
    let conv = |cin, cout, k, stride, pad, bias| Conv2d {
        name: "c".into(),
        cin,
        cout,
        k,
        stride,
        pad,
        bias,
    };
    // ResNet-20's shapes at batch 32 (RGB stem, the three stages, the stride-2 entries and the
    // 1x1 projections) and LeNet's two layers (one input channel, biases).
    for (c, hw) in [
        (conv(3, 16, 3, 1, 1, false), 32),
        (conv(16, 16, 3, 1, 1, false), 32),
        (conv(16, 32, 3, 2, 1, false), 32),
        (conv(16, 32, 1, 2, 0, false), 32),
        (conv(32, 32, 3, 1, 1, false), 16),
        (conv(32, 64, 3, 2, 1, false), 16),
        (conv(64, 64, 3, 1, 1, false), 8),
        (conv(1, 32, 3, 1, 1, true), 28),
        (conv(32, 64, 3, 1, 1, true), 14),
    ] {
        assert_conv_lowers_exactly(c, hw, 32, block);
    }
}

/// `caliper-train check-step` with these arguments (on the CPU: the lowered step against the
/// graph as written, every output within 1e-4 in relative L2 norm).
fn check_step(args: &[&str]) -> CheckReport {
    let argv = ["caliper-train", "check-step", "--tolerance", "1e-4"];
    let cli = Cli::try_parse_from(argv.iter().chain(args)).unwrap();
    let Command::CheckStep(a) = cli.command else {
        panic!("parsed as another command");
    };
    caliper::train::check::run(&a).unwrap()
}

fn assert_same_step(args: &[&str]) {
    if nchwc::block_size().is_none() {
        eprintln!("this CPU's ONNX Runtime has no NCHWc kernels: nothing is lowered here");
        return;
    }
    let report = check_step(args);
    assert!(report.lowered_nodes > 0, "{args:?}: nothing lowered");
    // loss, logits, and per state tensor its gradient (parameters) and its next value.
    assert!(
        report.outputs.len() > 10,
        "{} outputs",
        report.outputs.len()
    );
    assert!(
        report.ok,
        "{args:?}: {} differs by {}",
        report.worst_output, report.worst_relative
    );
}

#[test]
fn lowered_resnet20_step_matches_the_graph_as_written() {
    assert_same_step(&[
        "--arch",
        "resnet20",
        "--input-shape",
        "3,32,32",
        "--loss",
        "gce",
    ]);
}

#[test]
fn lowered_resnet20_steps_of_other_widths_match_the_graph_as_written() {
    // Width 0.5 (8/16/32 channels: narrow 8-channel inputs into whole-block layers, the rest
    // left alone at block 16) and 1.5 (24/48/96: 24 is no whole block at 16, 48 and 96 are).
    for width in ["0.5", "1.5"] {
        let shape = ["--input-shape", "3,16,16"];
        assert_same_step(
            &[
                &["--arch", "resnet20", "--width", width, "--loss", "ce"][..],
                &shape,
            ]
            .concat(),
        );
    }
}

#[test]
fn lowered_lenet_step_matches_the_graph_as_written() {
    // The narrow-input path (one input channel, OIHWBo weight layout) and a bias.
    assert_same_step(&[
        "--arch",
        "lenet",
        "--input-shape",
        "1,28,28",
        "--loss",
        "gce",
    ]);
    // AdamW: its `step` input and two moments (the second one non-negative).
    assert_same_step(&["--arch", "lenet", "--optimizer", "adamw", "--loss", "focal"]);
}

#[test]
fn check_step_skips_seeds_whose_relu_masks_flip_and_compares_strictly() {
    if nchwc::block_size().is_none() {
        return;
    }
    // Seed 5 of this small step puts one ReLU pre-activation within rounding of zero on
    // opposite sides in the two runs (measured on this machine's AVX-512 kernels; other
    // rounding may flip other seeds or none); the check moves on to seed 6.
    let report = check_step(&[
        "--arch",
        "resnet20",
        "--input-shape",
        "3,16,16",
        "--loss",
        "gce",
        "--batch-size",
        "4",
        "--seed",
        "5",
    ]);
    assert!(report.ok, "{report:?}");
    assert_eq!(report.lowered_nodes, 37);
    assert!(report.skipped_seeds.iter().all(|&(_, flips)| flips > 0));
    assert_eq!(report.seed, 5 + report.skipped_seeds.len() as u64);
}

#[test]
fn compare_measures_each_output_and_flags_nan_and_missing_ones() {
    let want: std::collections::BTreeMap<String, Vec<f32>> = [
        ("a".to_string(), vec![1.0, -2.0]),
        ("b".to_string(), vec![0.5]),
    ]
    .into();
    let mut got = want.clone();
    got.get_mut("a").unwrap()[1] = -2.01;
    let d = compare(&want, &got);
    assert!(
        (d[0].relative - 0.005).abs() < 1e-4 && d[1].relative == 0.0,
        "{d:?}"
    );
    assert!(
        (d[0].relative_l2 - 0.01 / 5f32.sqrt()).abs() < 1e-4,
        "{d:?}"
    );
    got.get_mut("b").unwrap()[0] = f32::NAN;
    assert!(compare(&want, &got)[1].relative_l2.is_infinite());
    got.remove("a");
    assert!(compare(&want, &got)[0].relative.is_infinite());
    // A loss near zero is measured against 1 (GCE's is a difference of O(log K) terms), a
    // large one against itself.
    let loss = |v: f32| -> std::collections::BTreeMap<String, Vec<f32>> {
        [("loss".to_string(), vec![v])].into()
    };
    let near_zero = compare(&loss(0.005), &loss(0.005 + 5e-7))[0].relative_l2;
    assert!((near_zero - 5e-7).abs() < 1e-8, "{near_zero}");
    let large = compare(&loss(4.0), &loss(4.04))[0].relative_l2;
    assert!((large - 0.01).abs() < 1e-5, "{large}");
}
