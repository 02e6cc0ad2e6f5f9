//! The KServe V2 binary tensor data extension through `router(state)` (issue 21): binary FP32
//! and BYTES inputs give the JSON path's probabilities, binary outputs come after the JSON
//! header with `Inference-Header-Content-Length`, and every malformed binary body is a 400 that
//! says what is wrong. (Triton's own client against a real server: `tritonclient_http`.)

use crate::common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// A V2 infer request of `header` (JSON) followed by `binary`, with the header length.
fn binary_request(
    uri: &str,
    header: &Value,
    binary: &[u8],
    header_len: Option<usize>,
) -> Request<Body> {
    let mut body = serde_json::to_vec(header).unwrap();
    let len = header_len.unwrap_or(body.len());
    body.extend_from_slice(binary);
    Request::post(uri)
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", len.to_string())
        .body(Body::from(body))
        .unwrap()
}

/// Status, the response's JSON header and its binary section.
async fn send_raw(
    s: &caliper::serve::http::AppState,
    req: Request<Body>,
) -> (StatusCode, Value, Vec<u8>) {
    let resp = caliper::serve::http::router(s.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let header_len = resp
        .headers()
        .get("inference-header-content-length")
        .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    let n = header_len.unwrap_or(bytes.len());
    (
        status,
        serde_json::from_slice(&bytes[..n]).unwrap(),
        bytes[n..].to_vec(),
    )
}

fn le_f32(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Each element a 4-byte little-endian length, then its bytes (Triton's BYTES layout).
fn bytes_tensor(items: &[Vec<u8>]) -> Vec<u8> {
    items
        .iter()
        .flat_map(|b| {
            (b.len() as u32)
                .to_le_bytes()
                .into_iter()
                .chain(b.iter().copied())
        })
        .collect()
}

#[tokio::test]
async fn binary_inputs_and_outputs_match_the_json_path() {
    let r = repo();
    let s = state(config(r.path()));
    let uri = format!("/v2/models/{MODEL}/infer");
    let files = ["3.png", "8.png"];
    let pngs: Vec<Vec<u8>> = files.iter().map(|f| digit(f)).collect();
    let (meta, tensor) = model_input(r.path(), MODEL, &pngs);

    // The JSON path, for reference.
    let json_req = json!({"inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": tensor}],
                          "outputs": [{"name": "probabilities"}, {"name": "label"}]});
    let (st, reference, _) = send(&s, post_json(&uri, &json_req)).await;
    assert_eq!(st, StatusCode::OK, "{reference}");
    let want: Vec<f32> = reference["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();

    // FP32 in binary, probabilities out binary, label out as JSON (per-output override).
    let raw: Vec<u8> = tensor.iter().flat_map(|x| x.to_le_bytes()).collect();
    let header = json!({
        "id": "bin-1",
        "inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32",
                    "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}},
                    {"name": "label", "parameters": {"binary_data": false}},
                    {"name": "is_ood", "parameters": {"binary_data": true}}],
        "parameters": {"binary_data_output": true, "priority": 0}
    });
    let (st, v, bin) = send_raw(&s, binary_request(&uri, &header, &raw, None)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["id"], "bin-1");
    let probs = &v["outputs"][0];
    assert_eq!(probs["parameters"]["binary_data_size"], 2 * 10 * 4, "{v}");
    assert!(probs.get("data").is_none());
    assert_eq!(v["outputs"][1]["data"], reference["outputs"][1]["data"]);
    assert_eq!(
        v["outputs"][2]["parameters"]["binary_data_size"], 2,
        "BOOL is one byte"
    );
    assert_eq!(bin.len(), 80 + 2);
    assert_eq!(le_f32(&bin[..80]), want);
    assert!(bin[80..].iter().all(|&b| b <= 1));
    // Prediction ids for feedback stay in the JSON parameters.
    assert_eq!(
        v["parameters"]["prediction_ids"].as_array().unwrap().len(),
        2
    );

    // BYTES of encoded PNGs in binary; binary_data_output for the default outputs.
    let raw = bytes_tensor(&pngs);
    let header = json!({
        "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                    "parameters": {"binary_data_size": raw.len()}}],
        "parameters": {"binary_data_output": true}
    });
    let (st, v, bin) = send_raw(&s, binary_request(&uri, &header, &raw, None)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let sizes: Vec<u64> = v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["parameters"]["binary_data_size"].as_u64().unwrap())
        .collect();
    // probabilities [2, 10] FP32, label BYTES ("3", "8": 4 + 1 bytes each), confidence [2] FP32.
    assert_eq!(sizes, [80, 10, 8], "{v}");
    assert_eq!(le_f32(&bin[..80]), want);
    assert_eq!(&bin[80..90], b"\x01\x00\x00\x003\x01\x00\x00\x008");

    // The versioned route: the served version answers, another is 404.
    let (st, _, _) = send_raw(
        &s,
        binary_request(
            &format!("/v2/models/{MODEL}/versions/{}/infer", meta.version),
            &header,
            &raw,
            None,
        ),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v, _) = send_raw(
        &s,
        binary_request(
            &format!("/v2/models/{MODEL}/versions/999/infer"),
            &header,
            &raw,
            None,
        ),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    let (st, v, _) = send(
        &s,
        get(&format!("/v2/models/{MODEL}/versions/{}", meta.version)),
    )
    .await;
    assert_eq!((st, v["name"].as_str()), (StatusCode::OK, Some(MODEL)));
}

#[tokio::test]
async fn malformed_binary_bodies_are_400_with_a_clear_message() {
    let r = repo();
    let s = state(config(r.path()));
    let uri = format!("/v2/models/{MODEL}/infer");
    let fp32 = |size: usize| json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": size}}]});
    let bytes = |size: usize| json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]});
    let zeros = vec![0u8; 784 * 4];
    let png = digit("3.png");
    let mut element = bytes_tensor(&[png]);
    let cases: Vec<(&str, Request<Body>, &str)> = vec![
        // The binary section ends before the declared size (a truncated body).
        (
            "truncated",
            binary_request(&uri, &fp32(784 * 4), &zeros[..1000], None),
            "only 1000 bytes left",
        ),
        // The declared size does not fit the shape.
        (
            "wrong size",
            binary_request(&uri, &fp32(783 * 4), &zeros[..783 * 4], None),
            "784 FP32 elements take 3136",
        ),
        // Bytes no input accounts for.
        (
            "trailing bytes",
            binary_request(
                &uri,
                &fp32(784 * 4),
                &[zeros.clone(), vec![1, 2, 3]].concat(),
                None,
            ),
            "3 bytes follow",
        ),
        // A header length past the end of the body.
        (
            "header length",
            binary_request(&uri, &fp32(784 * 4), &zeros, Some(1 << 20)),
            "Inference-Header-Content-Length is 1048576",
        ),
        // Neither JSON data nor binary.
        (
            "no data",
            post_json(
                &uri,
                &json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32"}]}),
            ),
            "neither data nor parameters.binary_data_size",
        ),
        // A BYTES element longer than what follows.
        (
            "short element",
            {
                element.truncate(element.len() - 10);
                binary_request(&uri, &bytes(element.len()), &element, None)
            },
            "only",
        ),
        // A NaN in binary FP32.
        (
            "nan",
            binary_request(
                &uri,
                &fp32(784 * 4),
                &[f32::NAN.to_le_bytes().to_vec(), zeros[4..].to_vec()].concat(),
                None,
            ),
            "element 0 is NaN",
        ),
        // Shared memory and classification are Triton extensions caliper does not have.
        (
            "classification",
            post_json(
                &uri,
                &json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": vec![0.0; 784]}],
                                                   "outputs": [{"name": "label", "parameters": {"classification": 3}}]}),
            ),
            "classification extension",
        ),
    ];
    for (what, req, says) in cases {
        let (st, v, _) = send_raw(&s, req).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{what}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(says), "{what}: {e:?} should say {says:?}");
    }
}
