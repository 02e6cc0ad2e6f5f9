//! The live ECE after N labelled predictions equals, to 1e-9, the offline ECE that `caliper eval`
//! computes from the same predictions' logits and labels with the same calibration file (issue 5).
//!
//! 100 real MNIST test images are served one at a time through the caliper API (PNG) and labelled
//! through `/v1/feedback`; their logits come from the KServe V2 endpoint, one image per request
//! as well, so that both paths run ONNX Runtime on identical single-image batches.

use crate::common;

use base64::Engine;
use caliper::data::DatasetSpec;
use common::*;
use ndarray::{Array1, Array2};
use serde_json::json;

const N: usize = 100;

#[tokio::test]
async fn live_ece_equals_caliper_eval_on_the_same_predictions() {
    let repo = repo();
    let mut c = config(repo.path());
    c.feedback_key = Some("k".into());
    let s = state(c);
    let data_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let spec: DatasetSpec = "mnist:test".parse().unwrap();
    let test = spec
        .load(&data_dir)
        .expect("run scripts/fetch-data.sh mnist");

    let mut logits = Vec::with_capacity(N * 10);
    let mut labels = Vec::with_capacity(N);
    let mut items = Vec::with_capacity(N);
    for i in 0..N {
        let bytes = png(test.image(i));
        let uri = format!("/v1/models/{MODEL}/predict");
        let (status, p, _) = send(&s, post(&uri, "image/png", bytes.clone())).await;
        assert_eq!(status, 200, "{p}");
        let infer = json!({
            "inputs": [{
                "name": "image", "datatype": "BYTES", "shape": [1],
                "data": [base64::engine::general_purpose::STANDARD.encode(&bytes)]
            }],
            "outputs": [{"name": "logits"}]
        });
        let (status, v, _) =
            send(&s, post_json(&format!("/v2/models/{MODEL}/infer"), &infer)).await;
        assert_eq!(status, 200, "{v}");
        let row: Vec<f32> = v["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(row.len(), 10);
        logits.extend(row);
        let label = test.labels[i];
        labels.push(label as i64);
        items.push(json!({"prediction_id": p["prediction_id"], "label": label}));
    }
    let (status, v, _) = send(&s, post_json("/v1/feedback", &json!({ "feedback": items }))).await;
    assert_eq!(
        (status.as_u16(), v["accepted"].as_u64()),
        (200, Some(N as u64)),
        "{v}"
    );
    let (_, report, _) = send(&s, get(&format!("/v1/models/{MODEL}/monitor"))).await;
    let live = &report["live"];
    assert_eq!(live["labelled"], N);

    // Offline: the same logits and labels through the real `caliper eval` binary.
    let dir = tempfile::tempdir().unwrap();
    let (lp, yp) = (dir.path().join("logits.npy"), dir.path().join("labels.npy"));
    ndarray_npy::write_npy(&lp, &Array2::from_shape_vec((N, 10), logits).unwrap()).unwrap();
    ndarray_npy::write_npy(&yp, &Array1::from_vec(labels)).unwrap();
    let calib = repo.path().join(format!("calib/{MODEL}.json"));
    let offline = caliper_json([
        "eval".as_ref(),
        "--json".as_ref(),
        "--logits".as_ref(),
        lp.as_os_str(),
        "--labels".as_ref(),
        yp.as_os_str(),
        "--calib".as_ref(),
        calib.as_os_str(),
    ]);
    let cal = &offline["calibrated"];
    for key in ["ece", "accuracy", "mce"] {
        let (a, b) = (live[key].as_f64().unwrap(), cal[key].as_f64().unwrap());
        assert!((a - b).abs() < 1e-9, "{key}: live {a} vs caliper eval {b}");
    }
    for key in ["adaece", "classwise_ece", "nll", "brier"] {
        let (a, b) = (
            live["full"][key].as_f64().unwrap(),
            cal[key].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-9, "{key}: live {a} vs caliper eval {b}");
    }
}
