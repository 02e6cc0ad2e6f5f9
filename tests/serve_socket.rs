//! A few real-socket tests: the real `caliper` binary on port 0, real PNG and JPEG files over
//! HTTP, SIGTERM ending in exit 0, an empty repository, and `caliper predict` printing the
//! same JSON as the server.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The server process and the log lines it writes (JSON, one per line).
struct Server {
    child: Child,
    addr: String,
    /// Log lines before "listening on".
    startup_logs: Vec<String>,
    _logs: mpsc::Receiver<String>,
}

impl Server {
    fn start(models: &Path, calib: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_caliper"))
            .args([
                "--log-json",
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--sessions-per-model",
                "1",
            ])
            .arg("--models")
            .arg(models)
            .arg("--calib")
            .arg(calib)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, logs) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        // Keeps draining stderr for the life of the process so that it never blocks on a pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let addr = loop {
            let line = logs
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("server did not start; log: {seen:#?}"));
            let msg = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["fields"]["message"].as_str().map(str::to_string))
                .unwrap_or_default();
            if let Some(a) = msg.strip_prefix("listening on ") {
                break a.to_string();
            }
            seen.push(line);
        };
        Self {
            child,
            addr,
            startup_logs: seen,
            _logs: logs,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM and returns the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only reached on a failed assertion: do not leave the process behind.
        let _ = self.child.kill();
    }
}

#[tokio::test]
async fn serves_real_png_and_jpeg_over_a_socket_and_exits_0_on_sigterm() {
    let server = Server::start(&data().join("models"), &data().join("calib"));
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
    let labels: Vec<&str> = v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["0", "7"]);

    let addr = server.addr.clone();
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM must end in a clean exit");
    assert!(std::net::TcpStream::connect(addr).is_err(), "port closed");
}

#[tokio::test]
async fn an_empty_repository_starts_and_says_not_ready() {
    let empty = tempfile::tempdir().unwrap();
    let server = Server::start(&empty.path().join("models"), &empty.path().join("calib"));
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
    let out = Command::new(env!("CARGO_BIN_EXE_caliper"))
        .args(["predict", "--model", "mnist-mlp", "--top-k", "3"])
        .arg("--models")
        .arg(data().join("models"))
        .arg("--calib")
        .arg(data().join("calib"))
        .arg(data().join("digits/9.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
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
