//! Answers that stay usable with large label sets (issue 16, item 6): `?probabilities=false`
//! drops the full vector, an unknown-label error lists a few classes rather than all, and KServe
//! V2 answers carry the prediction ids and OOD verdicts that label feedback needs.

use crate::common;

use axum::http::StatusCode;
use base64::Engine;
use common::*;
use serde_json::{Value, json};

const FILES: [&str; 2] = ["3.jpg", "0.png"];

async fn predict_v1(s: &caliper::serve::http::AppState, file: &str, query: &str) -> Value {
    let uri = format!("/v1/models/{MODEL}/predict{query}");
    let (st, v, _) = send(s, post(&uri, "image/png", digit(file))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v
}

#[tokio::test]
async fn probabilities_false_omits_the_vector_and_keeps_top_k() {
    let r = repo();
    let s = state(config(r.path()));
    let full = predict_v1(&s, "0.png", "?top_k=3").await;
    let slim = predict_v1(&s, "0.png", "?top_k=3&probabilities=false").await;
    assert_eq!(full["probabilities"].as_array().map(Vec::len), Some(10));
    assert!(slim.get("probabilities").is_none(), "{slim}");
    // Everything else is the same answer: same pixels, same calibrated top-k.
    for field in ["label", "class_index", "confidence", "top_k", "calibrated"] {
        assert_eq!(slim[field], full[field], "{field}");
    }
    assert_eq!(slim["top_k"].as_array().map(Vec::len), Some(3));
    // The id still works for feedback.
    let (st, v, _) = send(
        &s,
        post_json(
            "/v1/feedback",
            &json!({"prediction_id": slim["prediction_id"], "label": 0}),
        ),
    )
    .await;
    assert_eq!(
        (st, v["status"].as_str()),
        (StatusCode::OK, Some("accepted")),
        "{v}"
    );
    // `probabilities=true` is the default, spelled out.
    let explicit = predict_v1(&s, "0.png", "?probabilities=true").await;
    assert_eq!(explicit["probabilities"].as_array().map(Vec::len), Some(10));
}

#[tokio::test]
async fn unknown_label_error_lists_a_few_classes() {
    let r = repo();
    let s = state(config(r.path()));
    let p = predict_v1(&s, "0.png", "").await;
    let (st, v, _) = send(
        &s,
        post_json(
            "/v1/feedback",
            &json!({"prediction_id": p["prediction_id"], "label": "zero"}),
        ),
    )
    .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_label"))
    );
    let e = v["error"].as_str().unwrap();
    // The fixture has ten classes "0".."9": five are named, the rest counted.
    let named: Vec<String> = (0..10).map(|i| format!("\"{i}\"")).collect();
    let shown = named.iter().filter(|n| e.contains(n.as_str())).count();
    assert_eq!(shown, 5, "{e}");
    assert!(e.contains("and 5 more"), "{e}");
}

#[tokio::test]
async fn v2_answers_carry_prediction_ids_and_ood_verdicts() {
    let r = repo();
    let s = state(config(r.path()));
    let b64 = base64::engine::general_purpose::STANDARD;
    let uri = format!("/v2/models/{MODEL}/infer");
    let body = json!({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                                   "data": FILES.map(|f| b64.encode(digit(f)))}],
                      "outputs": [{"name": "label"}, {"name": "prediction_id"},
                                  {"name": "ood_score"}, {"name": "is_ood"}]});
    let (st, a, _) = send(&s, post(&uri, "application/json", body.to_string())).await;
    assert_eq!(st, StatusCode::OK, "{a}");
    let params = &a["parameters"];
    let ids = params["prediction_ids"].as_array().unwrap();
    assert_eq!(ids.len(), 2, "{a}");
    assert_eq!(a["outputs"][1]["name"], "prediction_id");
    assert_eq!(&a["outputs"][1]["data"], &params["prediction_ids"]);
    assert_eq!(a["outputs"][2]["datatype"], "FP32");
    assert_eq!(a["outputs"][3]["datatype"], "BOOL");
    assert_eq!(&a["outputs"][3]["data"], &params["is_ood"]);
    // The OOD scores are those of the v1 answer for the same image.
    for (i, f) in FILES.iter().enumerate() {
        let v1 = predict_v1(&s, f, "").await;
        assert_eq!(params["ood_method"], v1["ood"]["method"]);
        assert_eq!(params["ood_threshold"], v1["ood"]["threshold"]);
        assert_eq!(params["is_ood"][i], v1["ood"]["is_ood"]);
        let (x, y) = (
            params["ood_scores"][i].as_f64().unwrap(),
            v1["ood"]["score"].as_f64().unwrap(),
        );
        assert!((x - y).abs() < 1e-9, "{f}: {x} vs {y}");
        let z = a["outputs"][2]["data"][i].as_f64().unwrap();
        assert!((z - y).abs() < 1e-4 * y.abs().max(1.0), "{f}: {z} vs {y}");
    }
    // A V2 client sends feedback with those ids: each is accepted once.
    for (id, label) in ids.iter().zip(a["outputs"][0]["data"].as_array().unwrap()) {
        let (st, v, _) = send(
            &s,
            post_json(
                "/v1/feedback",
                &json!({"prediction_id": id, "label": label}),
            ),
        )
        .await;
        assert_eq!(
            (st, v["status"].as_str()),
            (StatusCode::OK, Some("accepted")),
            "{v}"
        );
    }
    // The default outputs also come with the parameters; metadata lists the new outputs.
    let plain = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                    "data": [b64.encode(digit(FILES[0]))]}]});
    let (st, b, _) = send(&s, post(&uri, "application/json", plain.to_string())).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(
        b["parameters"]["prediction_ids"].as_array().map(Vec::len),
        Some(1)
    );
    let (_, meta, _) = send(&s, get(&format!("/v2/models/{MODEL}"))).await;
    let outputs: Vec<&str> = meta["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    for name in ["prediction_id", "ood_score", "is_ood"] {
        assert!(outputs.contains(&name), "{outputs:?}");
    }
}
