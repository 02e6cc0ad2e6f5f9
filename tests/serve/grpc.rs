//! The KServe V2 gRPC service of a real `caliper serve --grpc-addr` process, driven by clients
//! nobody here wrote: `tritonclient[grpc]` with its default arguments and the standard gRPC
//! health checking stubs (`tests/serve/grpc_client.py`; installed by
//! scripts/install-test-deps.sh). The same real MNIST digits go through gRPC (FP32 tensors and
//! BYTES images) and through HTTP V2 JSON: the calibrated probabilities must agree, and the
//! prediction ids gRPC returns as response parameters must be accepted by `POST /v1/feedback`.

use crate::common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::process::Server;
use common::{MODEL, data, digit, repo};
use serde_json::{Value, json};

const DIGITS: [&str; 4] = ["3.png", "8.png", "0.png", "7.png"];
const ADMIN: &str = "adm1n";

/// The address of the gRPC listener, from the start-up log.
fn grpc_addr(server: &Server) -> String {
    server
        .startup_logs
        .iter()
        .find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            let msg = v["fields"]["message"].as_str()?;
            msg.strip_prefix("gRPC listening on ").map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no gRPC address in {:#?}", server.startup_logs))
}

/// Runs the Python client; fails with how to install it when its packages are missing.
fn run_client(addr: &str, request: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/grpc_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(addr)
        .arg(request)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "tests/serve/grpc_client.py failed (it needs tritonclient[grpc] and \
         grpcio-health-checking: run scripts/install-test-deps.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.as_f64().unwrap()),
        }
    }
    walk(v, &mut out);
    out
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-6, "{what}[{i}]: gRPC {g} vs HTTP {w}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tritonclient_grpc_defaults_match_http_v2_and_feed_the_monitor() {
    let r = repo();
    let root = r.path();
    let server = Server::with_repository(
        &root.join("models"),
        &root.join("calib"),
        &["--grpc-addr", "127.0.0.1:0", "--admin-token", ADMIN],
    );
    let addr = grpc_addr(&server);

    // The digits preprocessed as the server does, for the FP32 input.
    let meta = caliper::repository::ModelMetadata::load(
        &root.join("models").join(MODEL).join("model.toml"),
    )
    .unwrap();
    let limits = caliper::serve::infer::ImageLimits {
        max_pixels: 1 << 20,
    };
    let tensor: Vec<Vec<f32>> = DIGITS
        .iter()
        .map(|f| caliper::serve::infer::preprocess(&digit(f), &meta.input, limits).unwrap())
        .collect();
    let i = &meta.input;
    let request = json!({
        "model": MODEL,
        "tensor": tensor,
        "chw": [i.channels, i.height, i.width],
        "images": DIGITS.map(|f| data().join("digits").join(f)),
        "admin_token": ADMIN,
    });
    let request_file = root.join("grpc-request.json");
    std::fs::write(&request_file, request.to_string()).unwrap();
    let seen = tokio::task::spawn_blocking(move || run_client(&addr, &request_file))
        .await
        .unwrap();

    // Health, readiness, metadata.
    for key in ["live", "ready", "model_ready"] {
        assert_eq!(seen[key], true, "{key}: {seen}");
    }
    assert_eq!(seen["unknown_model_ready"], false);
    assert_eq!(seen["server_metadata"]["name"], "caliper");
    assert_eq!(seen["metadata"]["name"], MODEL);
    assert_eq!(
        seen["metadata"]["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]})
    );
    assert_eq!(
        seen["metadata"]["outputs"][0],
        json!({"name": "probabilities", "datatype": "FP32", "shape": ["-1", "10"]})
    );

    // The same digits over HTTP V2 JSON.
    let client = reqwest::Client::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = json!({"inputs": [{"name": "image", "shape": [DIGITS.len()], "datatype": "BYTES",
                                  "data": DIGITS.map(|f| b64.encode(digit(f)))}]});
    let http: Value = client
        .post(server.url(&format!("/v2/models/{MODEL}/infer")))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let want = floats(&http["outputs"][0]["data"]);
    assert_eq!(http["outputs"][0]["name"], "probabilities");
    let http_labels = &http["outputs"][1]["data"];

    for part in ["fp32", "bytes"] {
        let got = &seen[part];
        assert_close(part, &floats(&got["probabilities"]), &want);
        assert_eq!(&got["label"], http_labels, "{part}");
        // Every row sums to one: calibrated probabilities, not logits.
        for row in got["probabilities"].as_array().unwrap() {
            let sum: f64 = floats(row).iter().sum();
            assert!((sum - 1.0).abs() < 1e-4, "{part}: {row}");
        }
        let p = &got["parameters"];
        assert_eq!(p["ood_method"], http["parameters"]["ood_method"], "{part}");
        // A double when the calibration file has a threshold, absent when HTTP says null.
        match http["parameters"]["ood_threshold"].as_f64() {
            Some(t) => assert_close(
                "ood_threshold",
                &[p["ood_threshold"].as_f64().unwrap()],
                &[t],
            ),
            None => assert!(p.get("ood_threshold").is_none(), "{part}: {p}"),
        }
        let is_ood: Value = serde_json::from_str(p["is_ood"].as_str().unwrap()).unwrap();
        assert_eq!(is_ood, http["parameters"]["is_ood"], "{part}");
        let scores: Value = serde_json::from_str(p["ood_scores"].as_str().unwrap()).unwrap();
        assert_close(
            "ood_scores",
            &floats(&scores),
            &floats(&http["parameters"]["ood_scores"]),
        );
    }
    assert_eq!(seen["fp32"]["id"], "grpc-1");
    assert_eq!(seen["fp32"]["model_version"], meta.version);
    assert_eq!(
        seen["bytes"]["outputs"],
        json!(["probabilities", "label", "confidence"])
    );
    let fp32 = &seen["fp32"];
    assert_eq!(
        floats(&fp32["confidence"]).len(),
        DIGITS.len(),
        "one confidence per row"
    );
    assert_eq!(fp32["is_ood"].as_array().unwrap().len(), DIGITS.len());

    // The prediction ids: as the `prediction_id` output and as the parameter, the same ones,
    // and POST /v1/feedback takes them.
    let ids: Vec<String> = serde_json::from_str(
        seen["bytes"]["parameters"]["prediction_ids"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let fp32_ids: Vec<String> =
        serde_json::from_str(fp32["parameters"]["prediction_ids"].as_str().unwrap()).unwrap();
    assert_eq!(json!(fp32_ids), fp32["prediction_id"]);
    assert_eq!(ids.len(), DIGITS.len());
    let truth = ["3", "8", "0", "7"];
    let feedback: Vec<Value> = ids
        .iter()
        .chain(&fp32_ids)
        .zip(truth.iter().chain(&truth))
        .map(|(id, label)| json!({"prediction_id": id, "label": label}))
        .collect();
    let resp = client
        .post(server.url("/v1/feedback"))
        .json(&json!({ "feedback": feedback }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["accepted"], 2 * DIGITS.len(), "{v}");
    let monitor = server.monitor(&client, MODEL).await;
    assert_eq!(monitor["live"]["labelled"], 2 * DIGITS.len(), "{monitor}");
    // Served: 4 + 4 over gRPC, 4 over HTTP (the monitor counts what every protocol answers).
    assert_eq!(monitor["live"]["served"], 3 * DIGITS.len(), "{monitor}");

    // Errors map to gRPC codes.
    let e = &seen["errors"];
    assert_eq!(e["unknown_model_infer"], "NOT_FOUND", "{e}");
    assert_eq!(e["unknown_model_metadata"], "NOT_FOUND", "{e}");
    assert_eq!(e["bad_shape"], "INVALID_ARGUMENT", "{e}");
    assert_eq!(e["unknown_output"], "INVALID_ARGUMENT", "{e}");
    assert_eq!(e["index_without_token"], "UNAUTHENTICATED", "{e}");
    assert_eq!(e["load_with_wrong_token"], "UNAUTHENTICATED", "{e}");

    // The repository calls, with the admin token: index, unload, load.
    let state_of = |index: &Value| {
        index
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == MODEL)
            .map(|m| m["state"].clone())
    };
    assert_eq!(state_of(&seen["index"]), Some(json!("READY")), "{seen}");
    assert_eq!(seen["unload"], Value::Null, "{seen}");
    let after = &seen["after_unload"];
    assert_eq!(after["model_ready"], false);
    assert_eq!(after["infer"], "NOT_FOUND");
    assert_eq!(
        state_of(&after["index"]),
        Some(json!("UNLOADED")),
        "{after}"
    );
    assert_eq!(seen["load"], Value::Null, "{seen}");
    assert_eq!(seen["after_load_model_ready"], true);

    // The standard health service.
    let h = &seen["health"];
    assert_eq!(h[""], "SERVING", "{h}");
    assert_eq!(h["inference.GRPCInferenceService"], "SERVING", "{h}");
    assert_eq!(h["unknown"], "NOT_FOUND", "{h}");

    // gRPC calls are counted with HTTP's, by method path.
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "caliper_request_duration_seconds_count{method=\"GRPC\",route=\"/inference.GRPCInferenceService/ModelInfer\",status=\"200\"}"
        ),
        "{metrics}"
    );
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}
