//! The server through `router(state)` without a socket: the caliper API, KServe V2, auth,
//! reload, metrics and every error path, against the real fixture model in tests/data
//! (a 784-32-10 MLP fitted on MNIST by scripts/make-test-model.py) and real MNIST digits.

use crate::common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use common::*;
use serde_json::{Value, json};

fn predict_uri() -> String {
    format!("/v1/models/{MODEL}/predict")
}

fn softmax_t(z: &[f64], t: f64) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| ((v - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[tokio::test]
async fn predicts_real_digits_like_the_numpy_reference() {
    let r = repo();
    let s = state(config(r.path()));
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(data().join("reference.json")).unwrap())
            .unwrap();
    let t = reference["temperature"].as_f64().unwrap();
    let mut correct = 0;
    for (file, want) in reference["files"].as_object().unwrap() {
        let ctype = if file.ends_with(".png") {
            "image/png"
        } else {
            "image/jpeg"
        };
        let (st, body, _) = send(&s, post(&predict_uri(), ctype, digit(file))).await;
        assert_eq!(st, StatusCode::OK, "{file}: {body}");
        let probs = floats(&body["probabilities"]);
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        assert_eq!(body["calibrated"], true);
        assert_eq!(body["model"], MODEL);
        assert_eq!(body["top_k"].as_array().unwrap().len(), 5);
        assert!(
            body["ood"]["msp"].is_f64()
                && body["ood"]["energy"].is_f64()
                && body["ood"]["max_logit"].is_f64()
        );
        assert!(
            body["prediction_id"]
                .as_str()
                .is_some_and(|p| !p.is_empty())
        );
        let expected = softmax_t(&floats(&want["logits"]), t);
        // PNG decodes bit-exactly; JPEG decoders may differ by a grey level here and there.
        let tol = if file.ends_with(".png") { 1e-4 } else { 2e-2 };
        for (a, b) in probs.iter().zip(&expected) {
            assert!((a - b).abs() < tol, "{file}: {a} vs {b}");
        }
        if body["label"].as_str() == Some(want["label"].to_string().as_str()) {
            correct += 1;
        }
    }
    // The fixture model is about 96% accurate; 12 files with at most one miss.
    assert!(correct >= 11, "only {correct} correct");
}

#[tokio::test]
async fn multipart_keeps_upload_order_and_top_k_query_applies() {
    let r = repo();
    let s = state(config(r.path()));
    let boundary = "XcaliperX";
    let mut body = Vec::new();
    for (i, f) in ["2.png", "7.jpg", "0.png"].iter().enumerate() {
        let ct = if f.ends_with("png") {
            "image/png"
        } else {
            "image/jpeg"
        };
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file{i}\"; filename=\"{f}\"\r\nContent-Type: {ct}\r\n\r\n").bytes());
        body.extend(digit(f));
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").bytes());
    let uri = format!("{}?top_k=2", predict_uri());
    let (st, v, _) = send(
        &s,
        post(
            &uri,
            &format!("multipart/form-data; boundary={boundary}"),
            body,
        ),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let labels = prediction_labels(&v);
    assert_eq!(labels, ["2", "7", "0"]);
    assert_eq!(v["predictions"][0]["top_k"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn every_request_error_has_its_status_and_json_code() {
    let r = repo();
    let mut c = config(r.path());
    c.max_body_bytes = 4096;
    c.max_image_pixels = 28 * 28;
    let s = state(c);
    let png = digit("5.png");
    let big = {
        let img = image::DynamicImage::ImageLuma8(image::ImageBuffer::new(29, 29));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            post("/v1/models/nope/predict", "image/png", png.clone()),
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            post(&predict_uri(), "text/plain", "hello"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            post(&predict_uri(), "image/png", "not an image at all"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            post(&predict_uri(), "image/png", png[..60].to_vec()),
            StatusCode::BAD_REQUEST,
            "corrupt_image",
        ),
        (
            post(&predict_uri(), "image/png", vec![0u8; 5000]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            post(&predict_uri(), "image/png", big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "image_too_large",
        ),
        (
            post(
                &format!("{}?top_k=-1", predict_uri()),
                "image/png",
                png.clone(),
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            post(
                &predict_uri(),
                "multipart/form-data; boundary=x",
                "--x--\r\n",
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            post(
                &format!("/v2/models/{MODEL}/infer"),
                "application/json",
                "{not json",
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            get("/no/such/route"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (req, status, code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (st, v, _) = send(&s, req).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (status, Some(code)),
            "{what}: {v}"
        );
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let metrics = send(&s, get("/metrics")).await.1;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("caliper_rejected_total{reason=\"image_too_large\"} 1")
    );
}

#[tokio::test]
async fn admission_full_gives_429_with_retry_after() {
    let r = repo();
    let mut c = config(r.path());
    c.max_concurrent_requests = 1;
    let s = state(c);
    let held = std::sync::Arc::clone(&s.admission)
        .try_acquire_owned()
        .unwrap();
    let (st, v, h) = send(&s, post(&predict_uri(), "image/png", digit("1.png"))).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("overloaded"))
    );
    assert_eq!(h[header::RETRY_AFTER], "1");
    drop(held);
    assert_eq!(
        send(&s, post(&predict_uri(), "image/png", digit("1.png")))
            .await
            .0,
        StatusCode::OK
    );
}

/// `c` with batches of 2 that wait up to 30 s for a second image while one is announced (a
/// request is decoding it).
fn patient_batching(mut c: caliper::serve::config::Config) -> caliper::serve::config::Config {
    c.max_batch_size = 2;
    c.max_queue_delay = Duration::from_secs(30);
    c
}

#[tokio::test]
async fn a_request_past_its_budget_gets_504() {
    let r = repo();
    let mut c = patient_batching(config(r.path()));
    // The batcher waits for a second image, which another request announces (as when it starts
    // decoding) and never sends; the budget is 100 ms.
    c.request_timeout = Duration::from_millis(100);
    let s = state(c);
    let model = s.registry.get(MODEL).unwrap();
    let _stuck_decoding = model.announce();
    let (st, v, _) = send(&s, post(&predict_uri(), "image/png", digit("4.png"))).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("timeout")),
        "{v}"
    );
}

#[tokio::test]
async fn a_failed_request_leaves_nothing_for_a_batch_to_wait_for() {
    let r = repo();
    let s = state(patient_batching(config(r.path())));
    let png = digit("4.png");
    let truncated = png[..png.len() / 2].to_vec();
    for bad in [truncated, b"not an image".to_vec()] {
        let (st, v, _) = send(&s, post(&predict_uri(), "image/png", bad)).await;
        assert!(st.is_client_error(), "{st} {v}");
    }
    let started = std::time::Instant::now();
    let (st, v, _) = send(&s, post(&predict_uri(), "image/png", png)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a lone request waited for images that failed: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn nonfinite_logits_are_a_500_and_counted_never_probabilities() {
    let nan = data().join("nan");
    let s = state(config(&nan));
    let mut img = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(image::ImageBuffer::new(4, 4))
        .write_to(&mut img, image::ImageFormat::Png)
        .unwrap();
    let (st, v, _) = send(
        &s,
        post("/v1/models/nan/predict", "image/png", img.into_inner()),
    )
    .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("nonfinite_output"))
    );
    assert!(v.get("probabilities").is_none());
    let m = send(&s, get("/metrics")).await.1;
    assert!(
        m.as_str()
            .unwrap()
            .contains("caliper_nonfinite_logits_total{model=\"nan\"} 1")
    );
}

#[tokio::test]
async fn api_key_guards_everything_but_health_and_metrics() {
    let r = repo();
    let mut c = config(r.path());
    c.api_key = Some("k3y".into());
    let s = state(c);
    let (st, v, h) = send(&s, post(&predict_uri(), "image/png", digit("9.png"))).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
    assert_eq!(send(&s, get("/v2")).await.0, StatusCode::UNAUTHORIZED);
    let mut req = post(&predict_uri(), "image/png", digit("9.png"));
    req.headers_mut()
        .insert(header::AUTHORIZATION, "Bearer k3y".parse().unwrap());
    assert_eq!(send(&s, req).await.0, StatusCode::OK);
    for open in ["/v2/health/live", "/v2/health/ready", "/metrics"] {
        assert_eq!(send(&s, get(open)).await.0, StatusCode::OK, "{open}");
    }
}

#[tokio::test]
async fn kserve_v2_metadata_and_infer_with_tensors_and_bytes() {
    let r = repo();
    let s = state(config(r.path()));
    let (st, v, _) = send(&s, get("/v2")).await;
    assert_eq!((st, v["name"].as_str()), (StatusCode::OK, Some("caliper")));
    let (_, meta, _) = send(&s, get(&format!("/v2/models/{MODEL}"))).await;
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]})
    );
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 10]));
    assert_eq!(
        send(&s, get(&format!("/v2/models/{MODEL}/ready"))).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&s, get("/v2/models/nope/ready")).await.0,
        StatusCode::NOT_FOUND
    );

    // The same two digits as preprocessed FP32 [2,1,28,28] and as base64 BYTES.
    let files = ["3.png", "8.png"];
    let meta_spec = caliper::repository::ModelMetadata::load(
        &r.path().join("models").join(MODEL).join("model.toml"),
    )
    .unwrap();
    let limits = caliper::serve::infer::ImageLimits {
        max_pixels: 1 << 20,
    };
    let tensor: Vec<f32> = files
        .iter()
        .flat_map(|f| {
            caliper::serve::infer::preprocess(&digit(f), &meta_spec.input, limits).unwrap()
        })
        .collect();
    let uri = format!("/v2/models/{MODEL}/infer");
    let fp32 = json!({"id": "req-1", "inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": tensor}],
                      "outputs": [{"name": "probabilities"}, {"name": "logits"}, {"name": "label"}]});
    let (st, a, _) = send(&s, post(&uri, "application/json", fp32.to_string())).await;
    assert_eq!(st, StatusCode::OK, "{a}");
    assert_eq!(a["id"], "req-1");
    assert_eq!(a["model_name"], MODEL);
    assert_eq!(a["outputs"][0]["shape"], json!([2, 10]));
    assert_eq!(a["outputs"][1]["name"], "logits");
    assert_eq!(a["outputs"][2]["data"], json!(["3", "8"]));
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = json!({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": files.map(|f| b64.encode(digit(f)))}]});
    let (st, b, h) = send(&s, post(&uri, "application/json", bytes.to_string())).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    // No id in the request: the X-Request-Id (generated here) stands in.
    assert_eq!(b["id"].as_str(), h["x-request-id"].to_str().ok());
    let names: Vec<&str> = b["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["probabilities", "label", "confidence"]);
    // Both routes see the same pixels, so the same calibrated probabilities.
    for (x, y) in floats(&a["outputs"][0]["data"])
        .iter()
        .zip(floats(&b["outputs"][0]["data"]))
    {
        assert!((x - y).abs() < 1e-6);
    }

    for bad in [
        json!({"inputs": [{"name": "input", "shape": [1, 3, 28, 28], "datatype": "FP32", "data": [0.0]}]}),
        json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0, 1.0]}]}),
        json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["***"]}]}),
        json!({"inputs": [{"name": "other", "shape": [1], "datatype": "INT8", "data": [1]}]}),
        json!({"inputs": [], "outputs": []}),
        json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64.encode(digit("3.png"))]}], "outputs": [{"name": "nope"}]}),
    ] {
        let (st, v, _) = send(&s, post(&uri, "application/json", bad.to_string())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["error"].is_string());
    }
}

#[tokio::test]
async fn uncalibrated_models_say_so_and_empty_repositories_are_not_ready() {
    let r = repo();
    std::fs::remove_file(r.path().join(format!("calib/{MODEL}.json"))).unwrap();
    let s = state(config(r.path()));
    let (st, v, _) = send(&s, post(&predict_uri(), "image/png", digit("6.png"))).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (v["calibrated"].as_bool(), v["calibration_method"].as_str()),
        (Some(false), Some("identity"))
    );
    assert_eq!(send(&s, get("/v2/health/ready")).await.0, StatusCode::OK);

    let empty = tempfile::tempdir().unwrap();
    let s = state(config(empty.path()));
    let (st, v, _) = send(&s, get("/v2/health/ready")).await;
    assert_eq!(
        (st, v["ready"].as_bool()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(false))
    );
    assert_eq!(send(&s, get("/v2/health/live")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn stale_calibration_is_refused_then_fixed_by_a_reload() {
    let r = repo();
    let calib = r.path().join(format!("calib/{MODEL}.json"));
    let original = std::fs::read_to_string(&calib).unwrap();
    let mut v: Value = serde_json::from_str(&original).unwrap();
    v["model_sha256"] = json!("00".repeat(32));
    std::fs::write(&calib, v.to_string()).unwrap();
    let s = state(config(r.path()));
    let (st, ready, _) = send(&s, get("/v2/health/ready")).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        ready["failed"][MODEL]
            .as_str()
            .unwrap()
            .contains("--allow-stale-calibration")
    );
    assert_eq!(
        send(&s, post(&predict_uri(), "image/png", digit("2.png")))
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    std::fs::write(&calib, original).unwrap();
    let load = format!("/v2/repository/models/{MODEL}/load");
    let (st, v, _) = send(&s, post(&load, "application/json", "")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(send(&s, get("/v2/health/ready")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn reload_swaps_the_calibrator_and_a_failed_reload_keeps_serving() {
    let r = repo();
    let mut c = config(r.path());
    c.admin_token = Some("adm1n".into());
    let s = state(c);
    let load = format!("/v2/repository/models/{MODEL}/load");
    let with_token = |uri: &str| {
        let mut req = post(uri, "application/json", "");
        req.headers_mut()
            .insert(header::AUTHORIZATION, "Bearer adm1n".parse().unwrap());
        req
    };
    let before = send(&s, post(&predict_uri(), "image/png", digit("8.png")))
        .await
        .1["confidence"]
        .as_f64()
        .unwrap();

    // A much hotter temperature: same argmax, lower confidence after the reload.
    let calib = r.path().join(format!("calib/{MODEL}.json"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&calib).unwrap()).unwrap();
    v["calibrator"]["temperature"] = json!(5.0);
    std::fs::write(&calib, v.to_string()).unwrap();
    assert_eq!(
        send(&s, post(&load, "application/json", "")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (st, body, _) = send(&s, with_token(&load)).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let after = send(&s, post(&predict_uri(), "image/png", digit("8.png")))
        .await
        .1["confidence"]
        .as_f64()
        .unwrap();
    assert!(after < before - 0.05, "{before} -> {after}");

    // Break the metadata: the reload fails and the last good version keeps answering.
    std::fs::write(
        r.path().join("models").join(MODEL).join("model.toml"),
        "schema_version = 1",
    )
    .unwrap();
    let (st, v, _) = send(&s, with_token(&load)).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("reload_failed"))
    );
    let still = send(&s, post(&predict_uri(), "image/png", digit("8.png")))
        .await
        .1["confidence"]
        .as_f64()
        .unwrap();
    assert_eq!(still, after);
    assert_eq!(
        send(&s, with_token("/v2/repository/models/absent/load"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn metrics_are_labelled_by_route_template_and_model() {
    let r = repo();
    let s = state(config(r.path()));
    assert_eq!(
        send(&s, post(&predict_uri(), "image/png", digit("1.png")))
            .await
            .0,
        StatusCode::OK
    );
    let text = send(&s, get("/metrics"))
        .await
        .1
        .as_str()
        .unwrap()
        .to_string();
    for needle in [
        "caliper_request_duration_seconds_count{method=\"POST\",route=\"/v1/models/{model}/predict\",status=\"200\"} 1",
        "caliper_predictions_total{model=\"mnist-mlp\"} 1",
        "caliper_batch_size_count{model=\"mnist-mlp\"}",
        "caliper_queue_duration_seconds_bucket{model=\"mnist-mlp\"",
        "caliper_inference_duration_seconds_sum{model=\"mnist-mlp\"}",
        "caliper_model_info{calibration=\"ts\",device=\"cpu\",model=\"mnist-mlp\"",
        "caliper_in_flight_requests 1",
    ] {
        assert!(text.contains(needle), "missing {needle}\n{text}");
    }
}

/// Images larger than the inline limit and at most the session-decode size are decoded by the
/// session thread right before the run (`infer::predict_images`): a good one is answered, a
/// corrupt one whose header still reads is that image's own 400 (its index in the message),
/// and the session thread goes on serving.
#[tokio::test]
async fn images_decoded_by_the_session_thread_answer_and_fail_one_by_one() {
    let r = repo();
    let s = state(config(r.path()));
    let seven = image::load_from_memory(&digit("7.png")).unwrap();
    let mut big = std::io::Cursor::new(Vec::new());
    seven
        .resize_exact(200, 200, image::imageops::FilterType::Triangle)
        .write_to(&mut big, image::ImageFormat::Png)
        .unwrap();
    let big = big.into_inner();
    let mut corrupt = big.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid..mid + 32].fill(0);
    let boundary = "XcaliperX";
    let mut body = Vec::new();
    for (i, bytes) in [&big, &corrupt].into_iter().enumerate() {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file{i}\"; filename=\"{i}.png\"\r\nContent-Type: image/png\r\n\r\n").bytes());
        body.extend(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").bytes());
    let ctype = format!("multipart/form-data; boundary={boundary}");
    let (st, v, _) = send(&s, post(&predict_uri(), &ctype, body)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["code"], "corrupt_image", "{v}");
    assert!(v.to_string().contains("image 1"), "{v}");
    for _ in 0..3 {
        let (st, v, _) = send(&s, post(&predict_uri(), "image/png", big.clone())).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["label"], "7", "{v}");
    }
}
