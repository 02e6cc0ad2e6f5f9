//! Label feedback through `router(state)`: signed prediction ids, the feedback endpoint's
//! answers for good, duplicate, tampered, expired, malformed and unknown-label feedback, the live
//! monitor report, the Prometheus counters, and restart durability of the feedback log.

use crate::common;

use caliper::serve::http::AppState;
use caliper::serve::monitor::{PredictionToken, TokenSigner};
use common::*;
use serde_json::{Value, json};

const KEY: &str = "test-feedback-key";

fn monitored_state(root: &std::path::Path, state_dir: &std::path::Path) -> AppState {
    let mut c = config(root);
    c.feedback_key = Some(KEY.into());
    c.monitor.state_dir = Some(state_dir.to_path_buf());
    state(c)
}

async fn predict(s: &AppState, digit_file: &str) -> Value {
    let uri = format!("/v1/models/{MODEL}/predict");
    let (status, v, _) = send(s, post(&uri, "image/png", digit(digit_file))).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn feedback(s: &AppState, body: Value) -> (u16, Value) {
    let (status, v, _) = send(s, post_json("/v1/feedback", &body)).await;
    (status.as_u16(), v)
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn labels_are_scored_once_counted_and_survive_a_restart() {
    let repo = repo();
    let state_dir = tempfile::tempdir().unwrap();
    let s = monitored_state(repo.path(), state_dir.path());

    let files = ["0.png", "1.png", "2.png", "3.png", "4.png", "5.png"];
    let mut preds = Vec::new();
    for f in files {
        preds.push(predict(&s, f).await);
    }
    // Label every prediction with the digit in its file name, by name for half, index for the rest.
    let items: Vec<Value> = preds
        .iter()
        .zip(files)
        .enumerate()
        .map(|(i, (p, f))| {
            let d = &f[..1];
            let label = if i % 2 == 0 {
                json!(d)
            } else {
                json!(d.parse::<u64>().unwrap())
            };
            json!({"prediction_id": p["prediction_id"], "label": label})
        })
        .collect();
    let (status, v) = feedback(&s, json!({ "feedback": items })).await;
    assert_eq!((status, v["accepted"].as_u64()), (200, Some(6)), "{v}");

    // The same label again is a duplicate, counted once.
    let (status, v) = feedback(&s, items[0].clone()).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("duplicate")),
        "{v}"
    );

    // Expected live figures, computed here from the responses.
    let confs: Vec<f64> = preds
        .iter()
        .map(|p| p["confidence"].as_f64().unwrap())
        .collect();
    let correct: Vec<bool> = preds
        .iter()
        .zip(files)
        .map(|(p, f)| p["label"].as_str().unwrap() == &f[..1])
        .collect();
    let mut acc = caliper::trust::metrics::BinnedAccumulator::new(15).unwrap();
    for (c, ok) in confs.iter().zip(&correct) {
        acc.add(*c, *ok).unwrap();
    }

    let (status, report, _) =
        send(&s, get(&format!("/v1/models/{MODEL}/monitor?bootstrap=50"))).await;
    assert_eq!(status, 200, "{report}");
    let live = &report["live"];
    assert_eq!(live["labelled"], 6);
    assert!((live["ece"].as_f64().unwrap() - acc.ece().unwrap()).abs() < 1e-12);
    assert!((live["accuracy"].as_f64().unwrap() - acc.accuracy().unwrap()).abs() < 1e-12);
    assert!(
        live["full"]["nll"].as_f64().is_some(),
        "10 classes: probabilities travel in the token"
    );
    assert!(live["intervals"]["ece"]["low"].as_f64().is_some(), "{live}");
    assert_eq!(live["served"], 6);

    let (_, text, _) = send(&s, get("/metrics")).await;
    let text = text.as_str().unwrap();
    let accepted = format!("caliper_feedback_total{{model=\"{MODEL}\",outcome=\"accepted\"}}");
    assert_eq!(metric(text, &accepted), 6.0, "{text}");
    let samples: f64 = text
        .lines()
        .filter(|l| l.starts_with("caliper_calibration_bin_samples_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(samples, 6.0);
    let ece = metric(
        text,
        &format!("caliper_calibration_ece{{model=\"{MODEL}\"}}"),
    );
    assert!((ece - acc.ece().unwrap()).abs() < 1e-12);

    // The live reliability diagram, and the model's calibration (the fixture's file has no
    // validation reliability summary, so its validation diagram is a clear 404).
    let (status, svg, headers) = send(
        &s,
        get(&format!("/v1/models/{MODEL}/monitor/reliability.svg")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/svg+xml");
    let svg = svg.as_str().unwrap();
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{svg}");
    assert!(svg.contains("Live: last 6 labelled"));
    let (status, cal, _) = send(&s, get(&format!("/v1/models/{MODEL}/calibration"))).await;
    assert_eq!(
        (status.as_u16(), cal["method"].as_str()),
        (200, Some("ts")),
        "{cal}"
    );
    assert_eq!(cal["calibration"]["calibrator"]["temperature"], 1.045);
    let (status, v, _) = send(&s, get(&format!("/v1/models/{MODEL}/reliability.svg"))).await;
    assert_eq!(
        (status.as_u16(), v["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );

    // A new process over the same state directory rebuilds the window and still de-duplicates.
    drop(s);
    let s = monitored_state(repo.path(), state_dir.path());
    let (_, report, _) = send(&s, get(&format!("/v1/models/{MODEL}/monitor"))).await;
    assert_eq!(report["live"]["labelled"], 6);
    assert!((report["live"]["ece"].as_f64().unwrap() - acc.ece().unwrap()).abs() < 1e-12);
    let (status, v) = feedback(&s, items[3].clone()).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("duplicate")),
        "{v}"
    );
}

#[tokio::test]
async fn bad_feedback_gets_a_clear_error_and_changes_nothing() {
    let repo = repo();
    let state_dir = tempfile::tempdir().unwrap();
    let s = monitored_state(repo.path(), state_dir.path());
    let p = predict(&s, "7.png").await;
    let id = p["prediction_id"].as_str().unwrap().to_string();

    // Tampered: change one character of the signature part.
    let mut tampered = id.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let (status, v) = feedback(&s, json!({"prediction_id": tampered, "label": 7})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("invalid_prediction_id")),
        "{v}"
    );

    // Foreign: a well-formed token signed with another key.
    let token = |key: &[u8], issued_at_s: u64| {
        TokenSigner::new(key).sign(&PredictionToken {
            nonce: 9,
            issued_at_s,
            model: MODEL.into(),
            model_version: "1".into(),
            class_index: 7,
            confidence: 0.9,
            probabilities: None,
            set: None,
        })
    };
    let now = caliper::serve::monitor::now_s();
    let (status, _) = feedback(
        &s,
        json!({"prediction_id": token(b"other", now), "label": 7}),
    )
    .await;
    assert_eq!(status, 401);
    // Expired: signed with the right key a year ago.
    let (status, v) = feedback(
        &s,
        json!({"prediction_id": token(KEY.as_bytes(), now - 365 * 86400), "label": 7}),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (410, Some("prediction_expired")),
        "{v}"
    );
    // Unknown labels, by name and by index.
    let (status, v) = feedback(&s, json!({"prediction_id": id, "label": "seven"})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (422, Some("unknown_label")),
        "{v}"
    );
    assert!(
        v["error"].as_str().unwrap().contains(r#""0", "1", "2""#),
        "lists the classes: {v}"
    );
    let (status, _) = feedback(&s, json!({"prediction_id": id, "label": 10})).await;
    assert_eq!(status, 422);
    // Malformed bodies and oversized batches.
    let (status, _, _) = send(&s, post("/v1/feedback", "application/json", "{not json")).await;
    assert_eq!(status, 400);
    let (status, _) = feedback(&s, json!({"prediction_id": id})).await;
    assert_eq!(status, 400);
    let many: Vec<Value> = (0..1001)
        .map(|_| json!({"prediction_id": id, "label": 7}))
        .collect();
    let (status, _) = feedback(&s, json!({ "feedback": many })).await;
    assert_eq!(status, 400);
    // In a batch, each item is answered on its own.
    let (status, v) = feedback(
        &s,
        json!({"feedback": [{"prediction_id": id, "label": 7}, {"prediction_id": "x", "label": 7}]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert_eq!(v["results"][1]["code"], "invalid_prediction_id");

    let (_, report, _) = send(&s, get(&format!("/v1/models/{MODEL}/monitor"))).await;
    assert_eq!(
        report["live"]["labelled"], 1,
        "only the one good label counts: {report}"
    );
}

#[tokio::test]
async fn the_shipped_model_serves_its_validation_reliability_diagram() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c =
        caliper::serve::config::Config::with_repository(root.join("models"), root.join("calib"));
    c.sessions_per_model = 1;
    let s = state(c);
    let (status, svg, headers) = send(&s, get("/v1/models/mnist/reliability.svg")).await;
    assert_eq!(status, 200, "{svg}");
    assert_eq!(headers["content-type"], "image/svg+xml");
    let svg = svg.as_str().unwrap();
    assert!(
        svg.contains("Uncalibrated (validation)") && svg.contains("Calibrated: ats"),
        "{svg}"
    );
    let (status, cal, _) = send(&s, get("/v1/models/mnist/calibration")).await;
    assert_eq!(status, 200);
    let after = &cal["calibration"]["fit"]["after"];
    assert!(
        after["ece"].as_f64().is_some() && after["nll"].as_f64().is_some(),
        "{cal}"
    );
}
