//! Issue 22 over a real `caliper serve` process and the shipped MNIST model: a scripted stream of
//! 2,000 real MNIST test images, 80% of them from two classes, then their labels.
//!
//! - `estimated.prior` (EM) and `estimated.prior_bbse` are within 0.05 total variation of the
//!   stream's true class mix, and the test of "no shift" rejects;
//! - `?adapt=label_shift` (v1 and KServe V2) reweights the probabilities by the estimated prior
//!   ratio and says so, with the response otherwise the same shape;
//! - the labels feed the live coverage of the served conformal sets (built at the adaptive level:
//!   `--adaptive-conformal`), the adaptive level and the calibration e-process;
//! - the alarm's label-shift e-process crosses its threshold;
//! - `/metrics` exports all of it, with `caliper_calibration_alarm`.

use crate::common;

use std::path::Path;

use base64::Engine;
use caliper::data::DatasetSpec;
use common::process::Server;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

const N: usize = 2_000;
const PER_REQUEST: usize = 50;
const SHIFTED: [usize; 2] = [3, 7];

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn tv(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
}

fn form(images: &[Vec<u8>]) -> reqwest::multipart::Form {
    images
        .iter()
        .enumerate()
        .fold(reqwest::multipart::Form::new(), |f, (i, png)| {
            f.part(
                format!("f{i}"),
                reqwest::multipart::Part::bytes(png.clone())
                    .file_name(format!("{i}.png"))
                    .mime_str("image/png")
                    .unwrap(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_shift_is_estimated_corrected_and_coverage_is_tracked() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = tempfile::tempdir().unwrap();
    let models = repo.path().join("models/mnist");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::create_dir_all(repo.path().join("calib")).unwrap();
    for f in ["model.onnx", "model.toml"] {
        std::fs::copy(root.join("models/mnist").join(f), models.join(f)).unwrap();
    }
    std::fs::copy(
        root.join("calib/mnist.json"),
        repo.path().join("calib/mnist.json"),
    )
    .unwrap();
    let test = "mnist:test"
        .parse::<DatasetSpec>()
        .unwrap()
        .load(&root.join("data"))
        .expect("run scripts/fetch-data.sh mnist");
    let server = Server::with_repository(
        &repo.path().join("models"),
        &repo.path().join("calib"),
        &["--feedback-key", "k", "--adaptive-conformal", "mnist"],
    );
    let client = reqwest::Client::new();

    // The scripted stream: 80% from classes 3 and 7 (evenly), 20% any test image.
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let by_class: Vec<Vec<usize>> = (0..10)
        .map(|k| (0..test.len()).filter(|&i| test.labels[i] == k).collect())
        .collect();
    let stream: Vec<usize> = (0..N)
        .map(|_| {
            if rng.random::<f64>() < 0.8 {
                let c = &by_class[SHIFTED[rng.random_range(0..2)]];
                c[rng.random_range(0..c.len())]
            } else {
                rng.random_range(0..test.len())
            }
        })
        .collect();
    let mut mix = vec![0.0; 10];
    for &i in &stream {
        mix[test.labels[i]] += 1.0 / N as f64;
    }

    let predict = server.url("/v1/models/mnist/predict");
    let mut feedback = Vec::with_capacity(N);
    for chunk in stream.chunks(PER_REQUEST) {
        let pngs: Vec<Vec<u8>> = chunk.iter().map(|&i| common::png(test.image(i))).collect();
        let v: Value = client
            .post(&predict)
            .multipart(form(&pngs))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let preds = v["predictions"].as_array().unwrap_or_else(|| panic!("{v}"));
        for (p, &i) in preds.iter().zip(chunk) {
            assert!(p.get("adaptation").is_none(), "not asked: {p}");
            assert!(p["prediction_set"].is_array(), "conformal sets: {p}");
            feedback.push(json!({"prediction_id": p["prediction_id"], "label": test.labels[i]}));
        }
    }
    for batch in feedback.chunks(1_000) {
        let v = server.feedback(&client, batch).await;
        assert_eq!(v["accepted"].as_u64(), Some(batch.len() as u64), "{v}");
    }

    let m = server.monitor(&client, "mnist").await;
    let est = &m["estimated"];
    assert_eq!(est["served"], N, "{est}");
    assert_eq!(est["source_prior_from"], "validation");
    let em = floats(&est["prior"]);
    let bbse = floats(&est["prior_bbse"]);
    assert!(tv(&em, &mix) < 0.05, "EM {em:?} vs mix {mix:?}");
    assert!(tv(&bbse, &mix) < 0.05, "BBSE {bbse:?} vs mix {mix:?}");
    assert!(est["shift_pvalue"].as_f64().unwrap() < 1e-6, "{est}");
    let expected_accuracy = est["accuracy"].as_f64().unwrap();
    assert!((0.9..=1.0).contains(&expected_accuracy), "{est}");

    // Coverage of the served sets, from the labels; the adaptive level moved with them.
    let cov = &m["conformal"];
    assert_eq!(cov["labelled"], N, "{cov}");
    assert_eq!(cov["adaptive"], N);
    let coverage = cov["coverage"].as_f64().unwrap();
    assert!((0.8..=1.0).contains(&coverage), "{cov}");
    // LAC sets of a 99%-accurate model: mostly one class, some empty, a few with two.
    let size = cov["mean_set_size"].as_f64().unwrap();
    assert!((0.5..=2.0).contains(&size), "{cov}");
    eprintln!(
        "TV(EM, mix) = {:.4}, TV(BBSE, mix) = {:.4}, p = {:e}, coverage {coverage:.4}, \
         mean set size {size:.3}, ACI alpha {}",
        tv(&em, &mix),
        tv(&bbse, &mix),
        est["shift_pvalue"].as_f64().unwrap(),
        m["adaptive_conformal"]["alpha"]
    );
    assert_eq!(cov["per_class"].as_array().unwrap().len(), 10);
    assert!(
        cov["per_class"][3]["labelled"].as_u64().unwrap() > 500,
        "{cov}"
    );
    let aci = &m["adaptive_conformal"];
    assert_eq!(aci["labels"], N, "{aci}");
    // Every set was served before any label came back, so all were built at the target, and
    // the level moved by gamma (alpha - err) per label: alpha_T = alpha + gamma (alpha N - misses).
    let misses = aci["misses"].as_f64().unwrap();
    assert!((misses / N as f64 - (1.0 - coverage)).abs() < 1e-9, "{aci}");
    let (target, gamma) = (
        aci["target_alpha"].as_f64().unwrap(),
        aci["gamma"].as_f64().unwrap(),
    );
    let want = target + gamma * (target * N as f64 - misses);
    assert!(
        (aci["alpha"].as_f64().unwrap() - want).abs() < 1e-9,
        "{aci}"
    );
    let alarm = &m["alarm"];
    assert_eq!(alarm["calibration_labels"], N, "{alarm}");
    // The calibration e-process's tolerance, derived from the shipped file's validation bins
    // (0.0114 for MNIST at alpha = 0.01; docs/MONITORING.md).
    let file = caliper::repository::CalibrationFile::load(&root.join("calib/mnist.json")).unwrap();
    let bins = file.fit.unwrap().reliability.unwrap().after;
    let eps = caliper::trust::alarm::calibration_tolerance(&bins, 0.01 / 3.0).unwrap();
    assert!((eps - 0.0114).abs() < 5e-5, "{eps}");
    assert_eq!(
        alarm["calibration_tolerance"].as_f64(),
        Some(eps),
        "{alarm}"
    );
    assert_eq!(alarm["calibration_tolerance_from"], "derived", "{alarm}");
    assert_eq!(alarm["exchangeability_samples"], N);
    assert_eq!(alarm["alpha"], 0.01);
    // The label-shift e-process sees the served predicted classes move away from validation's
    // and crosses 3 / alpha; its tolerance is the one derived from the file's 6,000 rows.
    assert_eq!(alarm["alarm"], true, "{alarm}");
    assert_eq!(alarm["threshold"], 300.0);
    assert_eq!(alarm["label_shift_samples"], N);
    assert!(
        alarm["label_shift_max"].as_f64().unwrap() >= 300.0,
        "{alarm}"
    );
    let eps = caliper::trust::alarm::label_shift_tolerance(10, 6_000, 0.01 / 3.0);
    assert_eq!(
        alarm["label_shift_tolerance"].as_f64(),
        Some(eps),
        "{alarm}"
    );
    assert!(
        alarm["label_shift_distance"].as_f64().unwrap() > 0.3,
        "{alarm}"
    );

    // The correction: the same image with and without ?adapt=label_shift.
    let zero = by_class[0][0];
    let png = common::png(test.image(zero));
    let ask = |q: &'static str| {
        let (client, png, url) = (client.clone(), png.clone(), predict.clone());
        async move {
            client
                .post(format!("{url}{q}"))
                .header("content-type", "image/png")
                .body(png)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let plain = ask("").await;
    let adapted = ask("?adapt=label_shift").await;
    assert_eq!(adapted["adaptation"], "label_shift", "{adapted}");
    assert!(plain.get("adaptation").is_none());
    let (p, a) = (
        floats(&plain["probabilities"]),
        floats(&adapted["probabilities"]),
    );
    assert!((a.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    // Reweighted by q/p: class 3 (about 0.42 of traffic) gains on class 0 (about 0.02).
    let gain = |k: usize| a[k] / p[k];
    assert!(gain(3) > 5.0 * gain(0), "plain {p:?} adapted {a:?}");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.retain(|k| k != "adaptation");
        k.sort();
        k
    };
    assert_eq!(keys(&plain), keys(&adapted), "same shape");
    let bad = client
        .post(format!("{predict}?adapt=prior"))
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // KServe V2 with the same query.
    let infer = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
        "data": [base64::engine::general_purpose::STANDARD.encode(&png)]}]});
    let v2: Value = client
        .post(server.url("/v2/models/mnist/infer?adapt=label_shift"))
        .json(&infer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v2["parameters"]["adaptation"], "label_shift", "{v2}");

    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "caliper_label_shift_prior{class=\"3\",model=\"mnist\"}",
        "caliper_label_shift_prior_bbse{class=\"7\",model=\"mnist\"}",
        "caliper_label_shift_pvalue{model=\"mnist\"}",
        "caliper_expected_accuracy{model=\"mnist\"}",
        "caliper_calibration_alarm{model=\"mnist\"}",
        "caliper_calibration_evalue{model=\"mnist\"}",
        "caliper_exchangeability_martingale{model=\"mnist\"}",
        "caliper_label_shift_evalue{model=\"mnist\"}",
        "caliper_conformal_coverage{model=\"mnist\"}",
        "caliper_conformal_set_size{model=\"mnist\"}",
        "caliper_conformal_class_coverage{class=\"3\",model=\"mnist\"}",
        "caliper_conformal_alpha{model=\"mnist\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
}
