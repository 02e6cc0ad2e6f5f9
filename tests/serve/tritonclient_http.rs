//! Triton's own Python client, `tritonclient.http`, with its DEFAULT arguments against a real
//! `caliper serve` (issue 21): binary FP32 and BYTES inputs, binary outputs, `binary_data_output`
//! when no output is named, the versioned route, health and metadata. Every probability it
//! decodes must equal what caliper's JSON path answers for the same inputs, and the response
//! `id` is the request's `id`, else its `X-Request-Id`.
//!
//! The client comes from PyPI (scripts/install-test-deps.sh); without it the test fails saying
//! how to install it.

use crate::common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::process::Server;
use common::{bundled_repo, mnist_test, model_input, png};
use ndarray::Array4;
use serde_json::{Value, json};

const MODEL: &str = "mnist";
const N: usize = 8;

fn require_tritonclient() {
    let ok = Command::new("python3")
        .args(["-c", "import tritonclient.http, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 cannot import tritonclient.http: run scripts/install-test-deps.sh \
         (python3 -m pip install 'tritonclient[http]')"
    );
}

/// Runs scripts/tritonclient_infer.py and parses what it printed.
fn tritonclient(
    server: &Server,
    input: &str,
    tensor: &Path,
    images: &[std::path::PathBuf],
) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tritonclient_infer.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&server.addr)
        .args([MODEL, input])
        .arg(tensor)
        .args(images)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "scripts/tritonclient_infer.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// caliper's JSON path for the same input: `POST /v2/models/mnist/infer` with `data`.
async fn json_infer(server: &Server, input: Value, request_id: Option<&str>) -> (Value, String) {
    let mut req = reqwest::Client::new()
        .post(server.url(&format!("/v2/models/{MODEL}/infer")))
        .json(&json!({
            "inputs": [input],
            "outputs": [{"name": "probabilities"}, {"name": "label"}]
        }));
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    (resp.json().await.unwrap(), echoed)
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// The JSON path's `[N, K]` probabilities as rows.
fn json_rows(v: &Value) -> Vec<Vec<f64>> {
    let out = &v["outputs"][0];
    let k = out["shape"][1].as_u64().unwrap() as usize;
    let flat: Vec<f64> = out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    flat.chunks(k).map(<[f64]>::to_vec).collect()
}

fn assert_same_probabilities(what: &str, client: &[Vec<f64>], json_path: &[Vec<f64>]) {
    assert_eq!(client.len(), json_path.len(), "{what}: row count");
    for (i, (a, b)) in client.iter().zip(json_path).enumerate() {
        assert_eq!(a.len(), b.len(), "{what}: row {i} width");
        for (x, y) in a.iter().zip(b) {
            // Both are the same f32 written two ways (binary, and JSON as its f64 value).
            assert_eq!(*x as f32, *y as f32, "{what}: row {i}: {a:?} vs {b:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tritonclient_http_defaults_fp32_and_bytes_match_the_json_path() {
    require_tritonclient();
    let repo = bundled_repo(MODEL);
    let server =
        Server::with_repository(&repo.path().join("models"), &repo.path().join("calib"), &[]);
    let test = mnist_test();

    // N real test digits as PNG files, and the FP32 tensor the model's input expects (caliper's
    // one preprocessing path on the same PNGs).
    let dir = tempfile::tempdir().unwrap();
    let pngs: Vec<Vec<u8>> = (0..N).map(|i| png(test.image(i))).collect();
    let paths: Vec<std::path::PathBuf> = pngs
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let path = dir.path().join(format!("{i}.png"));
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect();
    let (meta, pixels) = model_input(repo.path(), MODEL, &pngs);
    let spec = &meta.input;
    let (c, h, w) = (spec.channels, spec.height, spec.width);
    let tensor = Array4::from_shape_vec((N, c, h, w), pixels.clone()).unwrap();
    let npy = dir.path().join("x.npy");
    ndarray_npy::write_npy(&npy, &tensor).unwrap();

    // The client talks to the server process; blocking this test's thread meanwhile is fine.
    let got = tritonclient(&server, &spec.name, &npy, &paths);
    assert_eq!(
        (&got["live"], &got["ready"], &got["model_ready"]),
        (&json!(true), &json!(true), &json!(true)),
        "{got}"
    );
    assert!(
        got["server_metadata"]["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("binary_tensor_data")),
        "{}",
        got["server_metadata"]
    );

    // FP32, binary both ways: same probabilities as the JSON path on the same tensor.
    let fp32 = &got["fp32"];
    let requested = [
        "confidence",
        "is_ood",
        "label",
        "prediction_id",
        "probabilities",
    ];
    assert_eq!(fp32["binary_outputs"], json!(requested), "{fp32}");
    assert_eq!(fp32["id"], "fp32-request", "the request's id is echoed");
    let (json_fp32, _) = json_infer(
        &server,
        json!({"name": spec.name, "datatype": "FP32", "shape": [N, c, h, w], "data": pixels}),
        None,
    )
    .await;
    assert_same_probabilities(
        "FP32",
        &rows(&fp32["probabilities"]),
        &json_rows(&json_fp32),
    );
    let labels = &json_fp32["outputs"][1]["data"];
    assert_eq!(&fp32["label"], labels, "{fp32}");
    // The binary prediction ids are the ones the response parameters list (for feedback).
    assert_eq!(fp32["prediction_id"], fp32["parameters"]["prediction_ids"]);
    assert_eq!(fp32["is_ood"].as_array().unwrap().len(), N);

    // BYTES of encoded PNGs, binary: the same as the JSON path's base64 BYTES.
    let b64 = base64::engine::general_purpose::STANDARD;
    let (json_bytes, echoed) = json_infer(
        &server,
        json!({
            "name": "image", "datatype": "BYTES", "shape": [N],
            "data": pngs.iter().map(|b| b64.encode(b)).collect::<Vec<_>>()
        }),
        Some("json-request-7"),
    )
    .await;
    // No `id` in the request: the response's id is the request's X-Request-Id.
    assert_eq!(
        (json_bytes["id"].as_str(), echoed.as_str()),
        (Some("json-request-7"), "json-request-7")
    );
    let bytes = &got["bytes"];
    assert_eq!(bytes["binary_outputs"], json!(requested), "{bytes}");
    assert_same_probabilities(
        "BYTES",
        &rows(&bytes["probabilities"]),
        &json_rows(&json_bytes),
    );
    assert_same_probabilities(
        "BYTES vs FP32",
        &json_rows(&json_bytes),
        &json_rows(&json_fp32),
    );
    assert_eq!(&bytes["label"], labels);
    // tritonclient sent no id: caliper's generated X-Request-Id (a UUID) stands in.
    let id = bytes["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{bytes}");

    // No outputs named (binary_data_output), on /versions/1/infer: the default outputs, binary.
    let d = &got["bytes_default_outputs"];
    assert_eq!(
        d["binary_outputs"],
        json!(["confidence", "label", "probabilities"]),
        "{d}"
    );
    assert_same_probabilities(
        "default outputs",
        &rows(&d["probabilities"]),
        &json_rows(&json_bytes),
    );
}
