//! Serving on a device (issue 20).
//!
//! Everywhere: the device each model runs on is reported (`/v2/models/M`, `/v1/models`,
//! `caliper_model_info`); a model.toml `device` the machine cannot honour fails that model with
//! the device's one-line reason; and on a machine without a usable GPU, `caliper serve --device
//! cuda:0` exits non-zero within seconds with one clear error line instead of serving on the CPU.
//!
//! With `CALIPER_TEST_CUDA=1` (a machine with an NVIDIA GPU and `make build CUDA=1`, see
//! `scripts/repro/gpu-check.sh`): every shipped model (`models/*`) answers on `cuda:0` what it
//! answers on the CPU, logits and calibrated probabilities to 1e-4, at batch sizes 1, 5
//! (padded to 8 on the GPU) and 32; and a real `caliper serve --device cuda:0` process serves
//! them. Without the variable those tests print why they are skipped and pass.

use crate::common::{self, floats, get, post_json, send};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use caliper::runtime::Device;
use serde_json::{Value, json};

/// True when the GPU tests should run.
fn cuda_tests() -> bool {
    std::env::var("CALIPER_TEST_CUDA").is_ok_and(|v| v == "1")
}

fn skip(test: &str) {
    println!(
        "skipped {test}: set CALIPER_TEST_CUDA=1 on a machine with an NVIDIA GPU (scripts/repro/gpu-check.sh)"
    );
}

#[tokio::test]
async fn every_answer_names_the_device_its_model_runs_on() {
    let r = common::repo();
    let s = common::state(common::config(r.path()));
    let (st, v, _) = send(&s, get(&format!("/v2/models/{}", common::MODEL))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["parameters"]["device"], "cpu");
    assert_eq!(v["parameters"]["max_batch_size"], 8);
    let (_, v, _) = send(&s, get("/v1/models")).await;
    assert_eq!(v["models"][0]["device"], "cpu", "{v}");
    let (_, metrics, _) = send(&s, get("/metrics")).await;
    let text = metrics.as_str().unwrap();
    let info = text
        .lines()
        .find(|l| l.starts_with("caliper_model_info{"))
        .unwrap_or_else(|| panic!("no caliper_model_info\n{text}"));
    assert!(
        info.contains("device=\"cpu\"") && info.ends_with(" 1"),
        "{info}"
    );
}

#[tokio::test]
async fn a_model_toml_device_the_machine_lacks_fails_that_model_with_the_reason() {
    if cuda_tests() {
        return skip(
            "a_model_toml_device_the_machine_lacks_fails_that_model_with_the_reason (the GPU is there)",
        );
    }
    let r = common::repo();
    let toml = r
        .path()
        .join("models")
        .join(common::MODEL)
        .join("model.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    // A top-level key goes before the first table.
    std::fs::write(&toml, format!("device = \"cuda:0\"\n{text}")).unwrap();
    let s = caliper::serve::http::AppState::new(common::config(r.path())).unwrap();
    s.registry.load_all().unwrap();
    let failures = s.registry.failures();
    let why = &failures[common::MODEL];
    assert!(why.starts_with("cuda:0: ") && !why.contains('\n'), "{why}");
    let (st, _, _) = send(&s, get("/v2/health/ready")).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn cuda_without_a_usable_gpu_stops_the_server_at_start_in_one_line() {
    if cuda_tests() {
        return skip(
            "cuda_without_a_usable_gpu_stops_the_server_at_start_in_one_line (the GPU is there)",
        );
    }
    let r = common::repo();
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_caliper"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--device",
            "cuda:0",
            "--models",
        ])
        .arg(r.path().join("models"))
        .arg("--calib")
        .arg(r.path().join("calib"))
        .arg("--state-dir")
        .arg(state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!(
                "caliper serve --device cuda:0 still running after 10 s on a machine without a GPU"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let line = errors[0];
    assert!(line.starts_with("error: --device cuda:0: "), "{line}");
    // It says what is missing: the GPU build, the driver or the device.
    assert!(
        [
            "CPU build",
            "NVIDIA driver",
            "CUDA device",
            "CUDA libraries"
        ]
        .iter()
        .any(|w| line.contains(w)),
        "{line}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

/// Deterministic inputs in the range of normalised pixels (about -2..2), `n` images of `len`.
fn inputs(n: usize, len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n * len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Asks `model` for logits and probabilities of `data` (`n` images) over KServe V2.
async fn infer(
    s: &caliper::serve::http::AppState,
    model: &str,
    input: &str,
    shape: [usize; 3],
    n: usize,
    data: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let [c, h, w] = shape;
    let body = json!({"inputs": [{"name": input, "shape": [n, c, h, w], "datatype": "FP32", "data": data}],
                      "outputs": [{"name": "logits"}, {"name": "probabilities"}]});
    let (st, v, _) = send(s, post_json(&format!("/v2/models/{model}/infer"), &body)).await;
    assert_eq!(st, StatusCode::OK, "{model}: {v}");
    (
        floats(&v["outputs"][0]["data"]),
        floats(&v["outputs"][1]["data"]),
    )
}

#[tokio::test]
async fn cuda_answers_equal_the_cpus_for_every_shipped_model() {
    if !cuda_tests() {
        return skip("cuda_answers_equal_the_cpus_for_every_shipped_model");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let on = |device: Device| {
        let mut c = caliper::serve::config::Config::with_repository(
            root.join("models"),
            root.join("calib"),
        );
        c.sessions_per_model = 1;
        c.device = device;
        if device.is_cuda() {
            c.max_batch_size = 128;
        }
        common::state(c)
    };
    let (cpu, gpu) = (on(Device::Cpu), on(Device::Cuda(0)));
    let models = cpu.registry.names();
    assert!(models.len() >= 4, "{models:?}");
    assert_eq!(gpu.registry.names(), models);
    for model in &models {
        let m = cpu.registry.get(model).unwrap();
        assert_eq!(gpu.registry.get(model).unwrap().device, Device::Cuda(0));
        let i = &m.files.metadata.input;
        let shape = [i.channels, i.height, i.width];
        let len: usize = shape.iter().product();
        for (seed, n) in [(1, 1), (2, 5), (3, 32)] {
            let data = inputs(n, len, seed);
            let (lc, pc) = infer(&cpu, model, &i.name, shape, n, &data).await;
            let (lg, pg) = infer(&gpu, model, &i.name, shape, n, &data).await;
            assert_eq!((lc.len(), pc.len()), (lg.len(), pg.len()));
            let worst_logit = lc
                .iter()
                .zip(&lg)
                .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
                .fold(0.0, f64::max);
            let worst_prob = pc
                .iter()
                .zip(&pg)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            println!(
                "{model} batch {n}: logits within {worst_logit:.2e}, probabilities within {worst_prob:.2e}"
            );
            assert!(
                worst_logit <= 1e-4,
                "{model} batch {n}: logits differ by {worst_logit}"
            );
            assert!(
                worst_prob <= 1e-4,
                "{model} batch {n}: probabilities differ by {worst_prob}"
            );
        }
    }
    let (_, v, _) = send(&gpu, get("/v2/models/cifar10")).await;
    assert_eq!(v["parameters"]["device"], "cuda:0");
}

#[tokio::test]
async fn a_real_server_on_cuda_serves_the_shipped_models() {
    if !cuda_tests() {
        return skip("a_real_server_on_cuda_serves_the_shipped_models");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let started = Instant::now();
    let server = common::process::Server::with_repository(
        &root.join("models"),
        &root.join("calib"),
        &["--device", "cuda:0"],
    );
    println!(
        "ready on cuda:0 after {:.1} s (warm-up included)",
        started.elapsed().as_secs_f64()
    );
    let client = reqwest::Client::new();
    let v: Value = client
        .get(server.url("/v2/models/mnist"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["parameters"]["device"], "cuda:0", "{v}");
    assert_eq!(v["parameters"]["max_batch_size"], 128, "{v}");
    let resp = client
        .post(server.url("/v1/models/mnist/predict"))
        .header("content-type", "image/png")
        .body(common::digit("3.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["label"].is_string() && v["confidence"].is_number(), "{v}");
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("device=\"cuda:0\""), "{metrics}");
}
