//! A few real-socket tests: the real `caliper` binary on port 0, real PNG and JPEG files over
//! HTTP, SIGTERM ending in exit 0, an empty repository, and `caliper predict` printing the
//! same JSON as the server.

use crate::common;

use std::process::Command;

use common::process::Server;
use common::{caliper_json, data, prediction_labels};
use serde_json::Value;

#[tokio::test]
async fn serves_real_png_and_jpeg_over_a_socket_and_exits_0_on_sigterm() {
    let server = Server::with_repository(&data().join("models"), &data().join("calib"), &[]);
    let client = reqwest::Client::new();
    let ready = client
        .get(server.url("/v2/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    for (file, ctype, label) in [("7.png", "image/png", "7"), ("3.jpg", "image/jpeg", "3")] {
        let body = std::fs::read(data().join("digits").join(file)).unwrap();
        let resp = client
            .post(server.url("/v1/models/mnist-mlp/predict"))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().contains_key("x-request-id"));
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["label"], label, "{file}: {v}");
        assert_eq!(v["calibrated"], true);
    }

    let form = reqwest::multipart::Form::new()
        .part(
            "a",
            reqwest::multipart::Part::bytes(std::fs::read(data().join("digits/0.png")).unwrap())
                .file_name("0.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .part(
            "b",
            reqwest::multipart::Part::bytes(std::fs::read(data().join("digits/7.jpg")).unwrap())
                .file_name("7.jpg")
                .mime_str("image/jpeg")
                .unwrap(),
        );
    let v: Value = client
        .post(server.url("/v1/models/mnist-mlp/predict"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let labels = prediction_labels(&v);
    assert_eq!(labels, ["0", "7"]);

    let addr = server.addr.clone();
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM must end in a clean exit");
    assert!(std::net::TcpStream::connect(addr).is_err(), "port closed");
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    use std::io::{Read, Write};
    let server = Server::with_repository(&data().join("models"), &data().join("calib"), &[]);
    // A request whose body is still arriving when SIGTERM comes: it is certainly in flight.
    let body = std::fs::read(data().join("digits/4.png")).unwrap();
    let mut conn = std::net::TcpStream::connect(&server.addr).unwrap();
    write!(
        conn,
        "POST /v1/models/mnist-mlp/predict HTTP/1.1\r\nhost: caliper\r\ncontent-type: image/png\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let half = body.len() / 2;
    conn.write_all(&body[..half]).unwrap();
    // Wait until the server counts the request (the /metrics request itself is the other one).
    loop {
        let m = reqwest::get(server.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains("caliper_in_flight_requests 2") {
            break;
        }
        tokio::task::yield_now().await;
    }
    let addr = server.addr.clone();
    let stopping = tokio::task::spawn_blocking(move || server.terminate());
    // Shutting down: no new connection is accepted while the request is still in flight.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    conn.write_all(&body[half..]).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["label"], "4");
    assert_eq!(stopping.await.unwrap().code(), Some(0));
}

#[tokio::test]
async fn an_empty_repository_starts_and_says_not_ready() {
    let empty = tempfile::tempdir().unwrap();
    let server = Server::with_repository(
        &empty.path().join("models"),
        &empty.path().join("calib"),
        &[],
    );
    let resp = reqwest::get(server.url("/v2/health/ready")).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(
        server
            .startup_logs
            .iter()
            .any(|l| l.contains("no model loaded")),
        "{:#?}",
        server.startup_logs
    );
    let live = reqwest::get(server.url("/v2/health/live")).await.unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn caliper_predict_prints_the_server_json() {
    let (models, calib, image) = (
        data().join("models"),
        data().join("calib"),
        data().join("digits/9.png"),
    );
    let v = caliper_json([
        "predict".as_ref(),
        "--model".as_ref(),
        "mnist-mlp".as_ref(),
        "--top-k".as_ref(),
        "3".as_ref(),
        "--models".as_ref(),
        models.as_os_str(),
        "--calib".as_ref(),
        calib.as_os_str(),
        image.as_os_str(),
    ]);
    assert_eq!(v["label"], "9");
    assert_eq!(v["top_k"].as_array().unwrap().len(), 3);
    for field in [
        "model",
        "model_version",
        "prediction_id",
        "class_index",
        "confidence",
        "probabilities",
        "calibrated",
        "ood",
    ] {
        assert!(v.get(field).is_some(), "missing {field}");
    }

    let bad = Command::new(env!("CARGO_BIN_EXE_caliper"))
        .args(["predict", "--model", "mnist-mlp"])
        .arg("--models")
        .arg(data().join("models"))
        .arg("--calib")
        .arg(data().join("calib"))
        .arg(data().join("reference.json"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("reference.json: unsupported image format")
    );
}

/// The server runs no thread it did not start: Microsoft's build of ONNX Runtime starts a
/// telemetry uploader (to mobile.events.data.microsoft.com) unless ORT_DISABLE_TELEMETRY is set,
/// which the binary does for itself. Every thread but the main one carries a name the server gave
/// it (the uploader inherits the executable's), and all run under the default
/// `--cpu-scheduling batch` (policy 3, SCHED_BATCH).
#[tokio::test]
async fn no_telemetry_thread_and_every_thread_is_sched_batch() {
    let var = caliper::runtime::TELEMETRY_OPT_OUT_VAR;
    assert!(
        std::env::var_os(var).is_none(),
        "unset {var}: this test checks that the server sets it itself"
    );
    let server = Server::with_repository(&data().join("models"), &data().join("calib"), &[]);
    let body = std::fs::read(data().join("digits/7.png")).unwrap();
    let resp = reqwest::Client::new()
        .post(server.url("/v1/models/mnist-mlp/predict"))
        .header("content-type", "image/png")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let pid = server.child.id();
    let read = |tid: &str, file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{file}")).unwrap_or_default()
    };
    let main = read(&pid.to_string(), "comm");
    let mut unnamed = 0;
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = task.unwrap().file_name().into_string().unwrap();
        let (comm, sched) = (read(&tid, "comm"), read(&tid, "sched"));
        let policy = sched.lines().find_map(|l| {
            l.strip_prefix("policy")?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<i32>()
                .ok()
        });
        unnamed += usize::from(comm == main);
        threads.push((comm.trim().to_string(), policy));
    }
    assert_eq!(
        unnamed, 1,
        "threads named like the executable (only the main one should be): {threads:?}"
    );
    assert!(
        threads.iter().all(|(_, p)| *p == Some(3)),
        "not all SCHED_BATCH: {threads:?}"
    );
}
