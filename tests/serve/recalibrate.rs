//! Recalibration from label feedback over a real server (issue 22, section 2).
//!
//! The shipped MNIST model is served with a deliberately bad calibrator (temperature scaling at
//! T = 3, written through the bundle code with the model's sha256), 1,000 real MNIST test images
//! are predicted and labelled, and then: the TS shadow, refitted from the feedback, beats the
//! incumbent prequentially; `POST /v2/repository/models/mnist/recalibrate` answers held-out
//! figures better than before, writes a new calibration file with its provenance and keeps the
//! previous one; and the next predictions are served with the new calibrator. The calibration
//! alarm, which T = 3 (under-confident) sets off, starts again with the new calibrator, and again
//! when `load` brings the old file back, but not on a load that changes nothing.

use std::time::{Duration, Instant};

use caliper::data::DatasetSpec;
use caliper::repository::CalibrationFile;
use caliper::trust::calibration::Calibrator;
use serde_json::{Value, json};

use crate::common::png;
use crate::common::process::Server;

const MODEL: &str = "mnist";
const N: usize = 1000;
const ADMIN: &str = "adm1n";

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A repository holding the shipped MNIST model and its calibration file with T = 3.
fn bad_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("models").join(MODEL);
    std::fs::create_dir_all(&m).unwrap();
    std::fs::create_dir_all(dir.path().join("calib")).unwrap();
    for f in ["model.onnx", "model.toml"] {
        std::fs::copy(root().join("models").join(MODEL).join(f), m.join(f)).unwrap();
    }
    let mut file = CalibrationFile::load(&root().join(format!("calib/{MODEL}.json"))).unwrap();
    file.calibrator = Calibrator::Ts { temperature: 3.0 };
    file.save(&dir.path().join(format!("calib/{MODEL}.json")))
        .unwrap();
    dir
}

/// Predicts images `from..to` of MNIST test (multipart requests of 100); returns the predictions.
async fn predict(
    client: &reqwest::Client,
    server: &Server,
    test: &caliper::data::Dataset,
    from: usize,
    to: usize,
) -> Vec<Value> {
    let mut out = Vec::new();
    for start in (from..to).step_by(100) {
        let form = (start..(start + 100).min(to)).fold(reqwest::multipart::Form::new(), |f, i| {
            f.part(
                format!("f{i}"),
                reqwest::multipart::Part::bytes(png(test.image(i)))
                    .file_name(format!("{i}.png"))
                    .mime_str("image/png")
                    .unwrap(),
            )
        });
        let v: Value = client
            .post(server.url(&format!("/v1/models/{MODEL}/predict")))
            .multipart(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.extend(v["predictions"].as_array().expect("predictions").clone());
    }
    out
}

async fn feedback(client: &reqwest::Client, server: &Server, items: &[Value]) {
    let v = server.feedback(client, items).await;
    assert_eq!(v["accepted"].as_u64(), Some(items.len() as u64), "{v}");
}

async fn get_text(client: &reqwest::Client, server: &Server, path: &str) -> String {
    let resp = client.get(server.url(path)).send().await.unwrap();
    resp.text().await.unwrap()
}

async fn recalibrate(client: &reqwest::Client, server: &Server, body: &Value) -> (u16, Value) {
    let resp = client
        .post(server.url(&format!("/v2/repository/models/{MODEL}/recalibrate")))
        .bearer_auth(ADMIN)
        .json(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_refits_a_bad_calibrator_and_the_server_swaps_it_in() {
    let data_dir = root().join("data");
    let test = "mnist:test"
        .parse::<DatasetSpec>()
        .unwrap()
        .load(&data_dir)
        .expect("run scripts/fetch-data.sh mnist");
    let repo = bad_repo();
    let calib = repo.path().join("calib");
    let server = Server::with_repository(
        &repo.path().join("models"),
        &calib,
        &["--admin-token", ADMIN, "--feedback-key", "k"],
    );
    let client = reqwest::Client::new();

    // No feedback yet: refused, the calibrator stays; and the endpoint needs the admin token.
    let (status, v) = recalibrate(&client, &server, &json!({"method": "ts"})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (422, Some("cannot_recalibrate")),
        "{v}"
    );
    let anon = client
        .post(server.url(&format!("/v2/repository/models/{MODEL}/recalibrate")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status().as_u16(), 401);

    let predictions = predict(&client, &server, &test, 0, N).await;
    assert_eq!(predictions.len(), N);
    let first = predictions[0].clone();
    assert_eq!(first["calibration_method"], "ts");
    let items: Vec<Value> = predictions
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"prediction_id": p["prediction_id"], "label": test.labels[i]}))
        .collect();

    // The first 500 labels fit the shadows (on the blocking pool); wait for that fit, then the
    // other 500 are each scored by a shadow fitted before they arrived.
    feedback(&client, &server, &items[..500]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.monitor(&client, MODEL).await["shadow"]["refits"].as_u64() < Some(1) {
        assert!(Instant::now() < deadline, "the shadows were never fitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    feedback(&client, &server, &items[500..]).await;
    let report = server.monitor(&client, MODEL).await;
    let ts = &report["shadow"]["ts"];
    assert_eq!(ts["n"], 500, "{report}");
    assert!(
        ts["nll"].as_f64().unwrap() < ts["incumbent_nll"].as_f64().unwrap(),
        "the TS shadow beats T = 3 prequentially: {ts}"
    );
    assert!(
        ts["ece"].as_f64().unwrap() < ts["incumbent_ece"].as_f64().unwrap(),
        "{ts}"
    );
    assert_eq!(report["shadow"]["window_labels"], N);
    assert_eq!(report["shadow"]["unusable_for_refit"], 0);
    assert!(
        ts["e_value"].as_f64().unwrap() > 1.0,
        "the promotion e-process bets on the shadow's gains: {ts}"
    );
    // 1,000 labels of an under-confident calibrator: the anytime-valid alarm fired.
    let alarm = &report["alarm"];
    assert_eq!(
        (
            alarm["alarm"].as_bool(),
            alarm["calibration_labels"].as_u64()
        ),
        (Some(true), Some(N as u64)),
        "{alarm}"
    );
    let metrics = get_text(&client, &server, "/metrics").await;
    assert!(
        metrics.contains(r#"caliper_shadow_labels{model="mnist",shadow="ts"} 500"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"caliper_shadow_promotion_evalue{model="mnist",shadow="ts"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"caliper_shadow_nll{model="mnist",scored="incumbent",shadow="ts"}"#)
    );

    // Recalibrate: better on the held-out (newest 30%) feedback, written, previous kept.
    let (status, r) = recalibrate(&client, &server, &json!({"method": "ts", "window": N})).await;
    assert_eq!(status, 200, "{r}");
    let (before, after) = (&r["held_out"]["before"], &r["held_out"]["after"]);
    assert_eq!(r["labels"], N);
    // For the record (`--nocapture`): the held-out figures and the fitted temperature.
    eprintln!(
        "held out: {} -> calibrator {}",
        r["held_out"], r["calibrator"]
    );
    assert_eq!(r["held_out"]["held_out_labels"], 300);
    assert!(
        after["ece"].as_f64().unwrap() < before["ece"].as_f64().unwrap(),
        "{r}"
    );
    assert!(
        after["nll"].as_f64().unwrap() < before["nll"].as_f64().unwrap(),
        "{r}"
    );
    assert_eq!(
        (r["method"].as_str(), r["replaced"].as_str()),
        (Some("ts"), Some("ts"))
    );

    let new = CalibrationFile::load(&calib.join(format!("{MODEL}.json"))).unwrap();
    let Calibrator::Ts { temperature } = new.calibrator else {
        panic!("{:?}", new.calibrator)
    };
    assert!(temperature < 2.0, "refitted temperature {temperature}");
    let prov = new.provenance.as_ref().expect("provenance");
    assert_eq!(
        (prov.source.as_str(), prov.trigger.as_str()),
        ("fitted from feedback", "manual")
    );
    assert_eq!(prov.labels, N);
    assert!(prov.first_label_s <= prov.last_label_s);
    let shipped = CalibrationFile::load(&root().join(format!("calib/{MODEL}.json"))).unwrap();
    assert_eq!(
        new.model_sha256, shipped.model_sha256,
        "same binding to model.onnx"
    );
    let prev = CalibrationFile::load(&calib.join(format!("{MODEL}.json.prev"))).unwrap();
    assert_eq!(prev.calibrator, Calibrator::Ts { temperature: 3.0 });

    // The next prediction of the same image is served by the new calibrator: the digit the bad
    // calibrator was unsure of now gets the sharper probability of T < 2.
    let again = predict(&client, &server, &test, 0, 1).await;
    assert_eq!(again[0]["label"], first["label"]);
    assert!(
        again[0]["confidence"].as_f64().unwrap() > first["confidence"].as_f64().unwrap(),
        "{} vs {}",
        again[0]["confidence"],
        first["confidence"]
    );
    let served: Value = serde_json::from_str(
        &get_text(&client, &server, &format!("/v1/models/{MODEL}/calibration")).await,
    )
    .unwrap();
    assert_eq!(
        served["calibration"]["provenance"]["source"],
        "fitted from feedback"
    );
    let metrics = get_text(&client, &server, "/metrics").await;
    assert!(
        metrics.contains(
            r#"caliper_recalibrations_total{method="ts",model="mnist",trigger="manual"} 1"#
        ),
        "{metrics}"
    );
    // The incumbent changed: the shadows' scores start again, and so does the trust state the
    // old calibrator's evidence built (the alarm, its e-processes, the label-shift window); the
    // one prediction served since is the only one they have seen.
    let report = server.monitor(&client, MODEL).await;
    assert_eq!(report["shadow"]["ts"]["n"], 0);
    let alarm = &report["alarm"];
    assert_eq!(
        (
            alarm["alarm"].as_bool(),
            alarm["calibration_labels"].as_u64(),
            alarm["exchangeability_samples"].as_u64()
        ),
        (Some(false), Some(0), Some(1)),
        "{alarm}"
    );
    // The calibration e-process's tolerance follows the new file: derived from its bins (fitted
    // on the 1,000 feedback labels, so wider than the shipped file's 6,000 validation rows give).
    let derived = |path: &std::path::Path| {
        let bins = CalibrationFile::load(path)
            .unwrap()
            .fit
            .unwrap()
            .reliability
            .unwrap()
            .after;
        caliper::trust::alarm::calibration_tolerance(&bins, 0.01 / 3.0).unwrap()
    };
    let (eps_new, eps_old) = (
        derived(&calib.join(format!("{MODEL}.json"))),
        derived(&calib.join(format!("{MODEL}.json.prev"))),
    );
    assert_eq!(
        alarm["calibration_tolerance"].as_f64(),
        Some(eps_new),
        "{alarm}"
    );
    assert_eq!(alarm["calibration_tolerance_from"], "derived", "{alarm}");
    assert!(eps_new > eps_old, "{eps_new} vs {eps_old}");
    assert_eq!(report["estimated"]["served"], 1, "{}", report["estimated"]);
    assert!(
        metrics.contains(r#"caliper_calibration_alarm{model="mnist"} 0"#),
        "{metrics}"
    );

    // Roll back by hand (the .prev file and `load`): the calibrator changes again, so does the
    // trust state; a load that changes nothing keeps it.
    std::fs::copy(
        calib.join(format!("{MODEL}.json.prev")),
        calib.join(format!("{MODEL}.json")),
    )
    .unwrap();
    let labels_now = |r: &Value| r["alarm"]["calibration_labels"].as_u64();
    let more = predict(&client, &server, &test, N, N + 100).await;
    let items: Vec<Value> = more
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"prediction_id": p["prediction_id"], "label": test.labels[N + i]}))
        .collect();
    feedback(&client, &server, &items).await;
    assert_eq!(labels_now(&server.monitor(&client, MODEL).await), Some(100));
    let load = |client: reqwest::Client, url: String| async move {
        let resp = client.post(url).bearer_auth(ADMIN).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    };
    let load_url = server.url(&format!("/v2/repository/models/{MODEL}/load"));
    load(client.clone(), load_url.clone()).await;
    assert_eq!(labels_now(&server.monitor(&client, MODEL).await), Some(0));
    let more = predict(&client, &server, &test, N + 100, N + 200).await;
    let items: Vec<Value> = more
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"prediction_id": p["prediction_id"], "label": test.labels[N + 100 + i]}))
        .collect();
    feedback(&client, &server, &items).await;
    load(client.clone(), load_url).await;
    assert_eq!(labels_now(&server.monitor(&client, MODEL).await), Some(100));
}
