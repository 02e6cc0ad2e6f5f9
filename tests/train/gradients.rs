//! Gradient checks: every layer's backward pass and every loss's gradient, as emitted into ONNX
//! graphs and run by ONNX Runtime (f32), against central finite differences of an independent
//! float64 reference forward pass written here (all elements, small random shapes).

use std::collections::BTreeMap;

use caliper::train::arch::Net;
use caliper::train::check::run_named;
use caliper::train::graph::{Graph, batched, fixed};
use caliper::train::layers::{
    BatchNorm2d, Conv2d, Flatten, GlobalAvgPool, Layer, Linear, MaxPool2d, Mode, Relu, Residual,
};
use caliper::train::loss::Loss;
use caliper::train::optim::Optimizer;
use caliper::train::runner::{Device, session};
use caliper::train::step::training_step;
use rand::{Rng, SeedableRng};

type Inputs = Vec<(String, Vec<i64>, Vec<f32>)>;
/// A float64 reference forward pass: `(x, parameters by name) -> y`.
type Reference<'a> = &'a dyn Fn(&[f64], &BTreeMap<String, Vec<f64>>) -> Vec<f64>;

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

fn randn(r: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

/// Runs a graph; float inputs plus optional int64 labels `y`.
fn run(bytes: &[u8], inputs: &Inputs, y: Option<&[i64]>) -> BTreeMap<String, Vec<f32>> {
    let mut s = session(bytes, 1, Device::Cpu, false).expect("session");
    run_named(&mut s, inputs, y).expect("run")
}

fn numgrad(x: &[f64], f: &dyn Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-5;
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let o = x[i];
            x[i] = o + h;
            let a = f(&x);
            x[i] = o - h;
            let b = f(&x);
            x[i] = o;
            (a - b) / (2.0 * h)
        })
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-3);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(
            err <= 2e-3 * scale + 1e-5,
            "{what}[{i}]: graph {g} vs finite differences {w} (scale {scale})"
        );
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ---------------- float64 reference forward passes ----------------

/// Conv2d, NCHW, square kernel, zero padding.
#[allow(clippy::too_many_arguments)]
fn ref_conv(
    x: &[f64],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    wt: &[f64],
    b: Option<&[f64]>,
    o: usize,
    k: usize,
    s: usize,
    p: usize,
) -> (Vec<f64>, usize, usize) {
    let oh = (h + 2 * p - k) / s + 1;
    let ow = (w + 2 * p - k) / s + 1;
    let mut y = vec![0.0; n * o * oh * ow];
    for ni in 0..n {
        for oi in 0..o {
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b[oi]);
                    for ci in 0..c {
                        for ki in 0..k {
                            for kj in 0..k {
                                let (yy, xx) = (
                                    (i * s + ki) as isize - p as isize,
                                    (j * s + kj) as isize - p as isize,
                                );
                                if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                                    continue;
                                }
                                acc += x[((ni * c + ci) * h + yy as usize) * w + xx as usize]
                                    * wt[((oi * c + ci) * k + ki) * k + kj];
                            }
                        }
                    }
                    y[((ni * o + oi) * oh + i) * ow + j] = acc;
                }
            }
        }
    }
    (y, oh, ow)
}

fn ref_maxpool(x: &[f64], nc: usize, h: usize, w: usize, k: usize, s: usize) -> Vec<f64> {
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    let mut y = Vec::with_capacity(nc * oh * ow);
    for q in 0..nc {
        for i in 0..oh {
            for j in 0..ow {
                let mut m = f64::NEG_INFINITY;
                for a in 0..k {
                    for b in 0..k {
                        m = m.max(x[(q * h + i * s + a) * w + j * s + b]);
                    }
                }
                y.push(m);
            }
        }
    }
    y
}

fn ref_linear(x: &[f64], n: usize, d: usize, wt: &[f64], b: &[f64], o: usize) -> Vec<f64> {
    let mut y = vec![0.0; n * o];
    for i in 0..n {
        for j in 0..o {
            y[i * o + j] = b[j] + (0..d).map(|t| x[i * d + t] * wt[j * d + t]).sum::<f64>();
        }
    }
    y
}

/// BatchNorm with batch statistics (training mode), biased variance, eps 1e-5.
fn ref_bn(x: &[f64], n: usize, c: usize, hw: usize, g: &[f64], b: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for ci in 0..c {
        let idx: Vec<usize> = (0..n)
            .flat_map(|ni| (0..hw).map(move |t| (ni * c + ci) * hw + t))
            .collect();
        let m = idx.iter().map(|&i| x[i]).sum::<f64>() / idx.len() as f64;
        let v = idx.iter().map(|&i| (x[i] - m).powi(2)).sum::<f64>() / idx.len() as f64;
        for &i in &idx {
            y[i] = g[ci] * (x[i] - m) / (v + 1e-5).sqrt() + b[ci];
        }
    }
    y
}

fn softmax_rows(z: &[f64], k: usize) -> Vec<Vec<f64>> {
    z.chunks(k)
        .map(|r| {
            let m = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = r.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        })
        .collect()
}

/// Each loss by its textbook definition (docs/METHOD.md#gce-loss), mean over the batch.
fn ref_loss(loss: Loss, z: &[f64], y: &[i64], k: usize) -> f64 {
    let p = softmax_rows(z, k);
    let n = y.len();
    let nf = n as f64;
    let pt = |i: usize| p[i][y[i] as usize];
    match loss {
        Loss::Ce => (0..n).map(|i| -pt(i).ln()).sum::<f64>() / nf,
        Loss::Gce { lambda } => {
            // CE + lambda * sum_k pi_k log qbar_k (docs/METHOD.md#gce-loss, without log n).
            let ce = ref_loss(Loss::Ce, z, y, k);
            let mut reg = 0.0;
            #[allow(clippy::needless_range_loop)] // c indexes columns of the rows of p
            for c in 0..k {
                let nk = y.iter().filter(|&&l| l as usize == c).count() as f64;
                if nk > 0.0 {
                    let qbar = (0..n).map(|j| p[j][c]).sum::<f64>() / nf;
                    reg += nk / nf * qbar.ln();
                }
            }
            ce + lambda as f64 * reg
        }
        Loss::Focal { gamma } => {
            (0..n)
                .map(|i| -(1.0 - pt(i)).powf(gamma as f64) * pt(i).ln())
                .sum::<f64>()
                / nf
        }
        Loss::Flsd53 => {
            (0..n)
                .map(|i| {
                    let g = if pt(i) < 0.2 { 5.0 } else { 3.0 };
                    -(1.0 - pt(i)).powf(g) * pt(i).ln()
                })
                .sum::<f64>()
                / nf
        }
        Loss::DualFocal { gamma } => {
            (0..n)
                .map(|i| {
                    let py = pt(i);
                    let pj = p[i].iter().copied().filter(|&q| q < py).fold(0.0, f64::max);
                    -(1.0 - py + pj).powf(gamma as f64) * py.ln()
                })
                .sum::<f64>()
                / nf
        }
        Loss::LabelSmoothing { eps } => {
            let e = eps as f64;
            (0..n)
                .map(|i| {
                    -(0..k)
                        .map(|c| {
                            let t = if c == y[i] as usize { 1.0 - e } else { 0.0 } + e / k as f64;
                            t * p[i][c].ln()
                        })
                        .sum::<f64>()
                })
                .sum::<f64>()
                / nf
        }
    }
}

// ---------------- layer checks ----------------

/// Builds `layer` forward + backward with `dy = r`, runs it, and checks dx and every parameter
/// gradient against finite differences of `sum(reference(x, params) * r)`.
fn check_layer(layer: &dyn Layer, s: &[i64], n: usize, reference: Reference, seed: u64) {
    let mut r = rng(seed);
    let mut g = Graph::new("layer check");
    g.input_f32("x", &batched(s), "");
    let params = layer.params();
    let mut inputs: Inputs = vec![];
    let nx: usize = n * s.iter().product::<i64>() as usize;
    inputs.push((
        "x".into(),
        std::iter::once(n as i64).chain(s.iter().copied()).collect(),
        randn(&mut r, nx),
    ));
    for p in params.iter().chain(layer.buffers().iter()) {
        g.input_f32(&p.name, &fixed(&p.shape), "");
        let mut v = randn(&mut r, p.numel());
        if p.name.ends_with("running_var") {
            v.iter_mut().for_each(|x| *x = x.abs() + 0.5);
        }
        inputs.push((p.name.clone(), p.shape.clone(), v));
    }
    let f = layer.forward(&mut g, "x", s, Mode::Train);
    let os = layer.out_shape(s);
    g.input_f32("r", &batched(&os), "");
    let ny = n * os.iter().product::<i64>() as usize;
    let rv = randn(&mut r, ny);
    inputs.push((
        "r".into(),
        std::iter::once(n as i64)
            .chain(os.iter().copied())
            .collect(),
        rv.clone(),
    ));
    let b = layer.backward(&mut g, &f, s, "r", true);
    g.alias(&f.y, "out.y");
    g.output_f32("out.y", &batched(&os), "");
    g.alias(b.dx.as_deref().expect("dx"), "out.dx");
    g.output_f32("out.dx", &batched(s), "");
    for (pn, d) in &b.grads {
        let o = format!("out.grad.{pn}");
        g.alias(d, &o);
        let shape = params.iter().find(|p| &p.name == pn).unwrap().shape.clone();
        g.output_f32(&o, &fixed(&shape), "");
    }
    let out = run(&g.to_bytes("check", &[]), &inputs, None);

    let base: BTreeMap<String, Vec<f64>> = inputs
        .iter()
        .map(|(k, _, v)| (k.clone(), f64s(v)))
        .collect();
    let x0 = base["x"].clone();
    let rr = f64s(&rv);
    let objective = |x: &[f64], ps: &BTreeMap<String, Vec<f64>>| -> f64 {
        reference(x, ps).iter().zip(&rr).map(|(a, b)| a * b).sum()
    };
    // Forward agrees with the reference.
    assert_close("y", &out["out.y"], &reference(&x0, &base));
    assert_close(
        "dx",
        &out["out.dx"],
        &numgrad(&x0, &|x| objective(x, &base)),
    );
    for p in &params {
        let want = numgrad(&base[&p.name], &|v| {
            let mut ps = base.clone();
            ps.insert(p.name.clone(), v.to_vec());
            objective(&x0, &ps)
        });
        assert_close(
            &format!("grad {}", p.name),
            &out[&format!("out.grad.{}", p.name)],
            &want,
        );
    }
    assert_eq!(b.grads.len(), params.len(), "one gradient per parameter");
}

#[test]
fn linear_relu_flatten_match_finite_differences() {
    let lin = Linear {
        name: "fc".into(),
        inp: 5,
        out: 3,
        init: Default::default(),
    };
    check_layer(
        &lin,
        &[5],
        4,
        &|x, p| ref_linear(x, 4, 5, &p["fc.weight"], &p["fc.bias"], 3),
        1,
    );
    check_layer(
        &Relu,
        &[2, 3, 3],
        2,
        &|x, _| x.iter().map(|v| v.max(0.0)).collect(),
        2,
    );
    check_layer(&Flatten, &[2, 3, 3], 2, &|x, _| x.to_vec(), 3);
    check_layer(
        &GlobalAvgPool,
        &[3, 4, 4],
        2,
        &|x, _| x.chunks(16).map(|c| c.iter().sum::<f64>() / 16.0).collect(),
        4,
    );
}

#[test]
fn conv2d_matches_finite_differences_with_stride_and_padding() {
    // (cin, cout, k, stride, pad, h, bias): stride 2 with odd and even sizes exercises the
    // output_padding and the strided im2col slices; stride 1 with padding 0, 1 and 2 the split
    // weight gradient (row and column shifts that crop on one or both sides; from 32x32 planes
    // up with the row copies stacked by one Gather), and with more outputs than inputs the tap
    // form.
    for (i, &(cin, cout, k, st, p, h, bias)) in [
        (2, 3, 3, 1, 1, 5, true),
        (2, 2, 3, 1, 1, 5, true),
        (2, 2, 3, 1, 0, 6, false),
        (2, 2, 3, 1, 2, 4, false),
        (2, 2, 3, 1, 1, 32, false),
        (3, 2, 3, 1, 0, 32, true),
        (2, 2, 3, 2, 1, 7, false),
        (3, 2, 3, 2, 1, 6, false),
        (2, 3, 1, 2, 0, 6, false),
    ]
    .iter()
    .enumerate()
    {
        let conv = Conv2d {
            name: "c".into(),
            cin,
            cout,
            k,
            stride: st,
            pad: p,
            bias,
        };
        let (c, hh, kk, s, pp, o) = (
            cin as usize,
            h as usize,
            k as usize,
            st as usize,
            p as usize,
            cout as usize,
        );
        check_layer(
            &conv,
            &[cin, h, h],
            2,
            &|x, ps| {
                ref_conv(
                    x,
                    2,
                    c,
                    hh,
                    hh,
                    &ps["c.weight"],
                    ps.get("c.bias").map(|v| v.as_slice()),
                    o,
                    kk,
                    s,
                    pp,
                )
                .0
            },
            10 + i as u64,
        );
    }
}

#[test]
fn maxpool_matches_finite_differences() {
    // Tiling windows (the mask backward) and overlapping ones (Indices + ScatterElements).
    check_layer(
        &MaxPool2d { k: 2, stride: 2 },
        &[2, 4, 6],
        2,
        &|x, _| ref_maxpool(x, 4, 4, 6, 2, 2),
        20,
    );
    check_layer(
        &MaxPool2d { k: 3, stride: 2 },
        &[2, 5, 5],
        2,
        &|x, _| ref_maxpool(x, 4, 5, 5, 3, 2),
        21,
    );
}

#[test]
fn batchnorm_matches_finite_differences() {
    let bn = BatchNorm2d::new("bn".into(), 3);
    check_layer(
        &bn,
        &[3, 3, 3],
        4,
        &|x, p| ref_bn(x, 4, 3, 9, &p["bn.weight"], &p["bn.bias"]),
        30,
    );
}

#[test]
fn residual_block_with_projection_matches_finite_differences() {
    let block = Residual {
        body: vec![
            Box::new(Conv2d {
                name: "b.c1".into(),
                cin: 2,
                cout: 3,
                k: 3,
                stride: 2,
                pad: 1,
                bias: false,
            }),
            Box::new(BatchNorm2d::new("b.bn1".into(), 3)),
            Box::new(Relu),
            Box::new(Conv2d {
                name: "b.c2".into(),
                cin: 3,
                cout: 3,
                k: 3,
                stride: 1,
                pad: 1,
                bias: false,
            }),
            Box::new(BatchNorm2d::new("b.bn2".into(), 3)),
        ],
        shortcut: vec![
            Box::new(Conv2d {
                name: "b.sc".into(),
                cin: 2,
                cout: 3,
                k: 1,
                stride: 2,
                pad: 0,
                bias: false,
            }),
            Box::new(BatchNorm2d::new("b.sbn".into(), 3)),
        ],
    };
    let n = 3;
    check_layer(
        &block,
        &[2, 4, 4],
        n,
        &|x, p| {
            let (a, _, _) = ref_conv(x, n, 2, 4, 4, &p["b.c1.weight"], None, 3, 3, 2, 1);
            let a = ref_bn(&a, n, 3, 4, &p["b.bn1.weight"], &p["b.bn1.bias"]);
            let a: Vec<f64> = a.iter().map(|v| v.max(0.0)).collect();
            let (a, _, _) = ref_conv(&a, n, 3, 2, 2, &p["b.c2.weight"], None, 3, 3, 1, 1);
            let a = ref_bn(&a, n, 3, 4, &p["b.bn2.weight"], &p["b.bn2.bias"]);
            let (s, _, _) = ref_conv(x, n, 2, 4, 4, &p["b.sc.weight"], None, 3, 1, 2, 0);
            let s = ref_bn(&s, n, 3, 4, &p["b.sbn.weight"], &p["b.sbn.bias"]);
            a.iter().zip(&s).map(|(u, v)| (u + v).max(0.0)).collect()
        },
        40,
    );
}

// ---------------- losses, through the `graph --arch linear` step graph ----------------

/// The linear step graph (names as documented: x, y, lr, fc.weight, fc.bias -> loss,
/// grad.fc.weight, grad.fc.bias) against the float64 reference loss of softmax(x W^T + b).
fn check_loss(loss: Loss, seed: u64) {
    let (n, d, k) = (12usize, 4usize, 5usize);
    let net = Net::new("linear", &[d as i64], k as i64, 1.0).unwrap();
    let opt = Optimizer::Sgd {
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    let g = training_step(&net, loss, &opt, true);
    let mut r = rng(seed);
    let x = randn(&mut r, n * d);
    // Scaled weights so that probabilities spread out (focal's p_t < 0.2 branch gets used).
    let w: Vec<f32> = randn(&mut r, k * d).iter().map(|v| 2.5 * v).collect();
    let b = randn(&mut r, k);
    // Labels leave class 4 absent from the batch (GCE's sum runs over present classes only).
    let y: Vec<i64> = (0..n).map(|i| (i % (k - 1)) as i64).collect();
    let inputs: Inputs = vec![
        ("x".into(), vec![n as i64, d as i64], x.clone()),
        ("lr".into(), vec![], vec![0.1]),
        ("fc.weight".into(), vec![k as i64, d as i64], w.clone()),
        ("fc.bias".into(), vec![k as i64], b.clone()),
    ];
    let out = run(&g.bytes, &inputs, Some(&y));
    let (xf, wf, bf) = (f64s(&x), f64s(&w), f64s(&b));
    let value = |w: &[f64], b: &[f64]| ref_loss(loss, &ref_linear(&xf, n, d, w, b, k), &y, k);
    let lv = value(&wf, &bf);
    assert!(
        (out["loss"][0] as f64 - lv).abs() < 1e-4 * lv.abs().max(1.0),
        "{loss:?}: loss {} vs reference {lv}",
        out["loss"][0]
    );
    assert_close(
        &format!("{loss:?} grad.fc.weight"),
        &out["grad.fc.weight"],
        &numgrad(&wf, &|w| value(w, &bf)),
    );
    assert_close(
        &format!("{loss:?} grad.fc.bias"),
        &out["grad.fc.bias"],
        &numgrad(&bf, &|b| value(&wf, b)),
    );
    // Plain SGD: next = W - lr * grad.
    for (i, (nw, gw)) in out["next.fc.weight"]
        .iter()
        .zip(&out["grad.fc.weight"])
        .enumerate()
    {
        assert!((nw - (w[i] - 0.1 * gw)).abs() < 1e-6);
    }
}

#[test]
fn every_loss_gradient_matches_finite_differences() {
    for (i, loss) in [
        Loss::Ce,
        Loss::Gce { lambda: 1.0 },
        Loss::Gce { lambda: 0.5 },
        Loss::Focal { gamma: 1.0 },
        Loss::Focal { gamma: 3.0 },
        Loss::Flsd53,
        Loss::DualFocal { gamma: 5.0 },
        Loss::LabelSmoothing { eps: 0.1 },
    ]
    .into_iter()
    .enumerate()
    {
        check_loss(loss, 100 + i as u64);
    }
}

#[test]
fn gce_equals_its_stable_form_and_the_per_sample_definition() {
    // docs/METHOD.md#gce-loss: L_GCE = -(1/n) sum_i log(p_iy / sum_j p_jy) = CE + sum_k pi_k log qbar_k
    // + log n; the graph reports it without log n.
    let (n, k) = (16usize, 4usize);
    let mut r = rng(7);
    let z: Vec<f64> = (0..n * k).map(|_| r.random_range(-3.0..3.0)).collect();
    let y: Vec<i64> = (0..n).map(|_| r.random_range(0..k as i64)).collect();
    let p = softmax_rows(&z, k);
    let direct = -(0..n)
        .map(|i| {
            let c = y[i] as usize;
            (p[i][c] / (0..n).map(|j| p[j][c]).sum::<f64>()).ln()
        })
        .sum::<f64>()
        / n as f64;
    let decomposed = ref_loss(Loss::Gce { lambda: 1.0 }, &z, &y, k) + (n as f64).ln();
    assert!(
        (direct - decomposed).abs() < 1e-12,
        "{direct} vs {decomposed}"
    );
    assert!(direct >= 0.0);
    // And the graph's value for the same logits (a linear layer with identity weights).
    let net = Net::new("linear", &[k as i64], k as i64, 1.0).unwrap();
    let opt = Optimizer::Sgd {
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    let g = training_step(&net, Loss::Gce { lambda: 1.0 }, &opt, false);
    let eye: Vec<f32> = (0..k * k)
        .map(|i| if i % (k + 1) == 0 { 1.0 } else { 0.0 })
        .collect();
    let inputs: Inputs = vec![
        (
            "x".into(),
            vec![n as i64, k as i64],
            z.iter().map(|&v| v as f32).collect(),
        ),
        ("lr".into(), vec![], vec![0.0]),
        ("fc.weight".into(), vec![k as i64, k as i64], eye),
        ("fc.bias".into(), vec![k as i64], vec![0.0; k]),
    ];
    let out = run(&g.bytes, &inputs, Some(&y));
    let reported = out["loss"][0] as f64 + (n as f64).ln();
    assert!((reported - direct).abs() < 1e-5, "{reported} vs {direct}");
}

#[test]
fn mlp_step_gradients_match_a_float64_reference_of_the_whole_network() {
    // The layer wiring of a whole training graph (Flatten, two hidden layers, head, GCE):
    // every parameter gradient against central differences of the float64 reference network.
    let (n, k) = (8usize, 3usize);
    let net = Net::new("mlp", &[1, 2, 3], k as i64, 4.0 / 256.0).unwrap();
    let opt = Optimizer::Sgd {
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    let loss = Loss::Gce { lambda: 1.0 };
    let g = training_step(&net, loss, &opt, true);
    let mut r = rng(9);
    let x = randn(&mut r, n * 6);
    let mut inputs: Inputs = vec![
        ("x".into(), vec![n as i64, 1, 2, 3], x.clone()),
        ("lr".into(), vec![], vec![0.0]),
    ];
    for p in net.params() {
        let v = randn(&mut r, p.numel());
        inputs.push((p.name.clone(), p.shape.clone(), v));
    }
    let y: Vec<i64> = (0..n).map(|i| (i % k) as i64).collect();
    let out = run(&g.bytes, &inputs, Some(&y));
    let base: BTreeMap<String, Vec<f64>> = inputs
        .iter()
        .map(|(k, _, v)| (k.clone(), f64s(v)))
        .collect();
    let h = 4usize;
    let value = |ps: &BTreeMap<String, Vec<f64>>| {
        let relu = |v: Vec<f64>| v.into_iter().map(|a| a.max(0.0)).collect::<Vec<_>>();
        let a = relu(ref_linear(
            &ps["x"],
            n,
            6,
            &ps["fc1.weight"],
            &ps["fc1.bias"],
            h,
        ));
        let a = relu(ref_linear(&a, n, h, &ps["fc2.weight"], &ps["fc2.bias"], h));
        ref_loss(
            loss,
            &ref_linear(&a, n, h, &ps["fc.weight"], &ps["fc.bias"], k),
            &y,
            k,
        )
    };
    assert!((out["loss"][0] as f64 - value(&base)).abs() < 1e-5);
    for p in net.params() {
        let want = numgrad(&base[&p.name], &|v| {
            let mut ps = base.clone();
            ps.insert(p.name.clone(), v.to_vec());
            value(&ps)
        });
        assert_close(
            &format!("grad {}", p.name),
            &out[&format!("grad.{}", p.name)],
            &want,
        );
    }
}

/// Runs one step of the linear graph with `opt` from the given parameter and state values and
/// returns the outputs.
fn one_step(opt: Optimizer, extra: Inputs) -> BTreeMap<String, Vec<f32>> {
    let net = Net::new("linear", &[3], 2, 1.0).unwrap();
    let g = training_step(&net, Loss::Ce, &opt, true);
    let mut r = rng(77);
    let mut inputs: Inputs = vec![
        ("x".into(), vec![4, 3], randn(&mut r, 12)),
        ("lr".into(), vec![], vec![0.1]),
        ("fc.weight".into(), vec![2, 3], randn(&mut r, 6)),
        ("fc.bias".into(), vec![2], randn(&mut r, 2)),
    ];
    inputs.extend(extra);
    let mut out = run(&g.bytes, &inputs, Some(&[0, 1, 1, 0]));
    for (k, _, v) in inputs {
        out.insert(format!("in.{k}"), v);
    }
    out
}

#[test]
fn sgd_nesterov_and_adamw_updates_match_their_formulas() {
    let m0: Vec<f32> = vec![0.5, -0.25, 0.125, 1.0, 0.0, -1.0];
    let b0: Vec<f32> = vec![0.3, -0.3];
    let sgd = Optimizer::Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 0.01,
    };
    let o = one_step(
        sgd,
        vec![
            ("momentum.fc.weight".into(), vec![2, 3], m0.clone()),
            ("momentum.fc.bias".into(), vec![2], b0.clone()),
        ],
    );
    // PyTorch: g' = g + wd w; v = mu v + g'; w -= lr (g' + mu v).
    for i in 0..6 {
        let (w, g) = (o["in.fc.weight"][i] as f64, o["grad.fc.weight"][i] as f64);
        let gd = g + 0.01 * w;
        let v = 0.9 * m0[i] as f64 + gd;
        assert!((o["next.momentum.fc.weight"][i] as f64 - v).abs() < 1e-6);
        assert!((o["next.fc.weight"][i] as f64 - (w - 0.1 * (gd + 0.9 * v))).abs() < 1e-6);
    }
    let adamw = Optimizer::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.05,
    };
    let (m, v) = (vec![0.1f32; 6], vec![0.01f32; 6]);
    let o = one_step(
        adamw,
        vec![
            ("step".into(), vec![], vec![3.0]),
            ("adam_m.fc.weight".into(), vec![2, 3], m.clone()),
            ("adam_v.fc.weight".into(), vec![2, 3], v.clone()),
            ("adam_m.fc.bias".into(), vec![2], vec![0.0; 2]),
            ("adam_v.fc.bias".into(), vec![2], vec![0.0; 2]),
        ],
    );
    for i in 0..6 {
        let (w, g) = (o["in.fc.weight"][i] as f64, o["grad.fc.weight"][i] as f64);
        let m1 = 0.9 * m[i] as f64 + 0.1 * g;
        let v1 = 0.999 * v[i] as f64 + 0.001 * g * g;
        let upd = (m1 / (1.0 - 0.9f64.powi(3))) / ((v1 / (1.0 - 0.999f64.powi(3))).sqrt() + 1e-8);
        let want = w - 0.1 * (upd + 0.05 * w);
        assert!((o["next.fc.weight"][i] as f64 - want).abs() < 1e-5, "{i}");
        assert!((o["next.adam_v.fc.weight"][i] as f64 - v1).abs() < 1e-7);
    }
}

#[test]
fn maxpool_sends_each_window_gradient_once_even_with_ties() {
    // MNIST's constant background makes equal values inside a window common after a conv: a
    // backward pass that masks by "equals the maximum" would multiply those gradients (tried,
    // and the short MNIST run fell from 90% to 76%). Every window must pass dY on exactly once.
    let mut g = Graph::new("ties");
    g.input_f32("x", &batched(&[1, 4, 4]), "");
    g.input_f32("r", &batched(&[1, 2, 2]), "");
    let pool = MaxPool2d { k: 2, stride: 2 };
    let f = pool.forward(&mut g, "x", &[1, 4, 4], Mode::Train);
    let b = pool.backward(&mut g, &f, &[1, 4, 4], "r", true);
    g.alias(b.dx.as_deref().unwrap(), "dx");
    g.output_f32("dx", &batched(&[1, 4, 4]), "");
    let inputs: Inputs = vec![
        ("x".into(), vec![1, 1, 4, 4], vec![0.5; 16]),
        ("r".into(), vec![1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]),
    ];
    let bytes = g.to_bytes("ties", &[]);
    let dx = &run(&bytes, &inputs, None)["dx"];
    for (wi, want) in [1.0f32, 2.0, 3.0, 4.0].iter().enumerate() {
        let (r0, c0) = (2 * (wi / 2), 2 * (wi % 2));
        let window: Vec<f32> = (0..4).map(|t| dx[(r0 + t / 2) * 4 + c0 + t % 2]).collect();
        assert_eq!(window.iter().sum::<f32>(), *want, "window {wi}: {window:?}");
        assert_eq!(window.iter().filter(|v| **v != 0.0).count(), 1);
        // All four tie: the first position in row-major window order, as PyTorch picks.
        assert_eq!(window[0], *want, "window {wi}: {window:?}");
    }
    // Partial ties, and the maximum in every window slot: dY goes to the first maximum.
    #[rustfmt::skip]
    let x = vec![
        0.1, 0.9, 0.3, 0.2,
        0.5, 0.9, 0.7, 0.7,
        0.4, 0.4, 0.6, 0.1,
        0.8, 0.8, 0.6, 0.6,
    ];
    let inputs: Inputs = vec![
        ("x".into(), vec![1, 1, 4, 4], x),
        ("r".into(), vec![1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]),
    ];
    let dx = &run(&bytes, &inputs, None)["dx"];
    #[rustfmt::skip]
    let want = [
        0.0, 1.0, 0.0, 0.0,
        0.0, 0.0, 2.0, 0.0,
        0.0, 0.0, 4.0, 0.0,
        3.0, 0.0, 0.0, 0.0,
    ];
    assert_eq!(dx, &want);
}
