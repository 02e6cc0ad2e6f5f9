//! The payload log and `caliper monitor replay` (issue 21): a real `caliper serve
//! --payload-log` answers real MNIST test digits through the caliper API and KServe V2, the
//! labels go to `/v1/feedback`, and `caliper monitor replay` on the log and the same labels in a
//! file prints the report `GET /v1/models/mnist/monitor` gave: same ECE, accuracy, count, bins,
//! full metrics and label-free figures.

use crate::common;

use base64::Engine;
use common::process::Server;
use common::{bundled_repo, caliper_json, mnist_test, png};
use serde_json::{Value, json};

const MODEL: &str = "mnist";
/// Digits through the caliper API, one request each.
const V1: usize = 40;
/// Digits through KServe V2, in requests of 10.
const V2: usize = 20;

#[tokio::test(flavor = "multi_thread")]
async fn replaying_the_payload_log_with_the_labels_gives_the_live_report() {
    let repo = bundled_repo(MODEL);
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("payload");
    let server = Server::with_repository(
        &repo.path().join("models"),
        &repo.path().join("calib"),
        &[
            "--payload-log",
            log.to_str().unwrap(),
            "--feedback-key",
            "replay-test",
        ],
    );
    let client = reqwest::Client::new();
    let test = mnist_test();

    // (prediction id, true label, request id) per served digit, in serving order.
    let mut served: Vec<(String, usize, String)> = Vec::new();
    for i in 0..V1 {
        let request_id = format!("v1-{i}");
        let resp = client
            .post(server.url(&format!("/v1/models/{MODEL}/predict?probabilities=false")))
            .header("content-type", "image/png")
            .header("x-request-id", &request_id)
            .body(png(test.image(i)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let p: Value = resp.json().await.unwrap();
        assert!(p.get("probabilities").is_none(), "{p}");
        served.push((
            p["prediction_id"].as_str().unwrap().into(),
            test.labels[i],
            request_id,
        ));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    for (r, chunk) in (V1..V1 + V2).collect::<Vec<_>>().chunks(10).enumerate() {
        // The first request names its id, the second lets X-Request-Id stand in.
        let id = format!("v2-{r}");
        let mut body = json!({
            "inputs": [{
                "name": "image", "datatype": "BYTES", "shape": [chunk.len()],
                "data": chunk.iter().map(|&i| b64.encode(png(test.image(i)))).collect::<Vec<_>>()
            }]
        });
        let mut req = client.post(server.url(&format!("/v2/models/{MODEL}/infer")));
        if r == 0 {
            body["id"] = json!(id);
        } else {
            req = req.header("x-request-id", &id);
        }
        let resp = req.json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["id"], id.as_str(), "{v}");
        let ids = v["parameters"]["prediction_ids"].as_array().unwrap();
        for (&i, pid) in chunk.iter().zip(ids) {
            served.push((pid.as_str().unwrap().into(), test.labels[i], id.clone()));
        }
    }

    // Every label, the first one again (a duplicate for both), in one feedback batch.
    let mut labels: Vec<(String, usize)> = served.iter().map(|(p, y, _)| (p.clone(), *y)).collect();
    labels.push(labels[0].clone());
    let items: Vec<Value> = labels
        .iter()
        .map(|(p, y)| json!({"prediction_id": p, "label": y}))
        .collect();
    let fb = server.feedback(&client, &items).await;
    assert_eq!(
        (fb["accepted"].as_u64(), fb["duplicates"].as_u64()),
        (Some(60), Some(1)),
        "{fb}"
    );
    let live = server.monitor(&client, MODEL).await;
    assert_eq!(live["live"]["labelled"], V1 + V2, "{live}");
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // SIGTERM flushes what the writer still holds.
    assert!(server.terminate().success());
    assert!(
        metrics.contains("caliper_payload_log_records_total")
            && !metrics.contains("caliper_payload_log_dropped_total{"),
        "{metrics}"
    );

    // The log: one line per prediction, in serving order, with the request ids, no image.
    let (logged, report) = caliper::serve::payload_log::read(&log).unwrap();
    assert_eq!((logged.len(), report.skipped_lines), (V1 + V2, 0));
    for (l, (pid, _, rid)) in logged.iter().zip(&served) {
        assert_eq!(&l.prediction_id, pid);
        assert_eq!(l.request_id.as_ref(), Some(rid));
        assert_eq!(l.probabilities.as_ref().map(Vec::len), Some(10));
    }
    let raw = std::fs::read_to_string(&caliper::serve::payload_log::log_files(&log).unwrap()[0].1)
        .unwrap();
    assert!(
        !raw.contains("\"image\""),
        "images are logged only when asked"
    );

    // The labels file: CSV with a header, class indices; one label without a logged prediction.
    let file = log_dir.path().join("labels.csv");
    let mut csv = String::from("prediction_id,label\n");
    for (p, y) in &labels {
        csv.push_str(&format!("{p},{y}\n"));
    }
    csv.push_str("not-a-logged-prediction,3\n");
    std::fs::write(&file, csv).unwrap();
    let replayed = caliper_json([
        "monitor".as_ref(),
        "replay".as_ref(),
        "--log".as_ref(),
        log.as_os_str(),
        "--labels".as_ref(),
        file.as_os_str(),
        "--model".as_ref(),
        MODEL.as_ref(),
        "--models".as_ref(),
        repo.path().join("models").as_os_str(),
        "--calib".as_ref(),
        repo.path().join("calib").as_os_str(),
    ]);
    for key in ["model", "model_version", "window", "bins"] {
        assert_eq!(replayed[key], live[key], "{key}");
    }
    let (r, l) = (&replayed["live"], &live["live"]);
    for key in ["labelled", "ece", "mce", "accuracy"] {
        assert_eq!(
            r[key], l[key],
            "{key}: replay {} vs live {}",
            r[key], l[key]
        );
    }
    assert!(l["ece"].as_f64().is_some() && l["drift"].is_object(), "{l}");
    // Everything else too: bins, the full metric report, served count, mean confidence, drift.
    assert_eq!(r, l);
    assert_eq!(
        replayed["replay"],
        json!({"labels": 62, "joined": 60, "unmatched": 1, "duplicates": 1, "rejected": 0,
               "log_files": 1, "log_lines_skipped": 0})
    );
}
