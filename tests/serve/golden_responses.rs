//! The served answers, bit for bit (issue 19: speed work must not change a single number). A
//! fixed set of requests to the bundled `mnist` and `cifar10` models — single images, a
//! multipart upload, V2 JSON, the trust options, and errors — is sent to a real server, and
//! every answer (status and JSON body, `prediction_id`s removed: they are random by design) must
//! equal tests/data/golden/responses.json exactly, floats included.
//!
//! The file is the record of an older build: `CALIPER_GOLDEN_RECORD=/path/to/caliper cargo
//! test --test serve golden_responses` writes it from that binary's answers instead of
//! comparing. tests/data/golden/README.md says which commit recorded it.

use std::path::Path;

use serde_json::{Value, json};

use crate::common::process::Server;
use crate::common::{data, digit, model_input};

const GOLDEN: &str = "golden/responses.json";

/// (label, path, content type, body), each POSTed.
fn requests(root: &Path) -> Vec<(String, String, String, Vec<u8>)> {
    let mut out = Vec::new();
    let png = "image/png".to_string();
    for d in ["0.png", "3.jpg", "4.png", "7.png", "9.png"] {
        let ctype = if d.ends_with(".jpg") {
            "image/jpeg"
        } else {
            "image/png"
        };
        out.push((
            format!("mnist {d}"),
            "/v1/models/mnist/predict".into(),
            ctype.into(),
            digit(d),
        ));
    }
    let options = "?top_k=3&alpha=0.05&conformal=aps&min_confidence=0.9&reject_ood=true";
    out.push((
        "mnist 2.png, trust options".into(),
        format!("/v1/models/mnist/predict{options}"),
        png.clone(),
        digit("2.png"),
    ));
    let boundary = "golden-boundary";
    let mut form = Vec::new();
    for d in ["1.png", "5.png", "6.png", "8.png"] {
        form.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"{d}\"\r\n\
             Content-Type: image/png\r\n\r\n"
            )
            .bytes(),
        );
        form.extend(digit(d));
        form.extend(b"\r\n");
    }
    form.extend(format!("--{boundary}--\r\n").bytes());
    out.push((
        "mnist multipart of 4".into(),
        "/v1/models/mnist/predict?top_k=10".into(),
        format!("multipart/form-data; boundary={boundary}"),
        form,
    ));
    let ship = std::fs::read(data().join("cifar10/ship.png")).unwrap();
    out.push((
        "cifar10 ship.png".into(),
        "/v1/models/cifar10/predict".into(),
        png.clone(),
        ship.clone(),
    ));
    out.push((
        "cifar10 ship.png, no probabilities".into(),
        "/v1/models/cifar10/predict?probabilities=false&alpha=0.2".into(),
        png.clone(),
        ship,
    ));
    let (_, tensor) = model_input(root, "mnist", &[digit("3.png"), digit("7.png")]);
    let v2 = json!({"id": "golden", "inputs": [{"name": "input", "shape": [2, 1, 28, 28],
        "datatype": "FP32", "data": tensor}]});
    out.push((
        "mnist V2 FP32 of 2".into(),
        "/v2/models/mnist/infer".into(),
        "application/json".into(),
        serde_json::to_vec(&v2).unwrap(),
    ));
    let errors = [
        (
            "corrupt PNG",
            "/v1/models/mnist/predict",
            "image/png",
            b"\x89PNG\r\n\x1a\nbroken".to_vec(),
        ),
        (
            "unknown model",
            "/v1/models/nope/predict",
            "image/png",
            digit("7.png"),
        ),
        (
            "wrong content type",
            "/v1/models/mnist/predict",
            "text/plain",
            b"7".to_vec(),
        ),
        (
            "bad top_k",
            "/v1/models/mnist/predict?top_k=x",
            "image/png",
            digit("7.png"),
        ),
    ];
    for (label, path, ctype, body) in errors {
        out.push((label.into(), path.into(), ctype.into(), body));
    }
    out
}

/// The answer with every `prediction_id` removed (random by design).
fn strip_ids(mut v: Value) -> Value {
    match &mut v {
        Value::Object(m) => {
            m.remove("prediction_id");
            m.remove("prediction_ids");
            for x in m.values_mut() {
                *x = strip_ids(x.take());
            }
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                *x = strip_ids(x.take());
            }
        }
        _ => {}
    }
    v
}

async fn answers(server: &Server, root: &Path) -> Value {
    let client = reqwest::Client::new();
    let mut out = serde_json::Map::new();
    for (label, path, ctype, body) in requests(root) {
        let r = client
            .post(server.url(&path))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        out.insert(label, json!({"status": status, "body": strip_ids(body)}));
    }
    Value::Object(out)
}

#[tokio::test]
async fn served_answers_are_those_recorded_bit_for_bit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (models, calib) = (root.join("models"), root.join("calib"));
    let record = std::env::var_os("CALIPER_GOLDEN_RECORD");
    let server = match &record {
        Some(bin) => {
            let state = tempfile::tempdir().unwrap();
            Server::start_binary(
                Path::new(bin),
                [
                    "--models".as_ref(),
                    models.as_os_str(),
                    "--calib".as_ref(),
                    calib.as_os_str(),
                    "--state-dir".as_ref(),
                    state.path().as_os_str(),
                ],
            )
        }
        None => Server::with_repository(&models, &calib, &[]),
    };
    let got = answers(&server, root).await;
    let path = data().join(GOLDEN);
    if record.is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        return;
    }
    let want: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let (got, want) = (got.as_object().unwrap(), want.as_object().unwrap());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (label, w) in want {
        assert_eq!(&got[label], w, "{label}: the answer changed");
    }
}
