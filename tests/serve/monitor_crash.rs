//! Acknowledged feedback survives `kill -9` (issue 5): a real server answers 200 to labels, is
//! killed with SIGKILL immediately after, and a new process over the same `--state-dir` serves
//! the same live window and still refuses to count those predictions twice. A torn half-written
//! line at the end of the log (what a crash mid-append leaves) is skipped, not fatal.

use crate::common;

use std::io::Write;

use common::process::Server;
use common::{MODEL, data, repo};
use serde_json::{Value, json};

fn start(repo: &std::path::Path, state: &std::path::Path) -> Server {
    Server::with_state_dir(repo, state, "crash-test-key")
}

#[tokio::test]
async fn acknowledged_feedback_survives_kill_9_and_a_torn_tail() {
    let repo = repo();
    let state = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut server = start(repo.path(), state.path());

    let mut items = Vec::new();
    for d in 0..8 {
        let png = std::fs::read(data().join(format!("digits/{d}.png"))).unwrap();
        let url = server.url(&format!("/v1/models/{MODEL}/predict"));
        let resp = client
            .post(url)
            .header("content-type", "image/png")
            .body(png)
            .send()
            .await
            .unwrap();
        let p: Value = resp.json().await.unwrap();
        items.push(json!({"prediction_id": p["prediction_id"], "label": d}));
    }
    // One at a time, each acknowledged, then SIGKILL with no chance to flush anything.
    for item in &items {
        let resp = client
            .post(server.url("/v1/feedback"))
            .json(item)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let before = server.monitor(&client, MODEL).await;
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    drop(server);

    // What a crash in the middle of an append leaves behind.
    let log = state.path().join("feedback.log");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"1234abcd {\"model\":\"mni")
        .unwrap();

    let server = start(repo.path(), state.path());
    let after = server.monitor(&client, MODEL).await;
    assert_eq!(after["live"]["labelled"], 8, "{after}");
    assert_eq!(after["live"]["ece"], before["live"]["ece"]);
    assert_eq!(after["live"]["bins"], before["live"]["bins"]);
    let warned = server
        .startup_logs
        .iter()
        .any(|l| l.contains("damaged lines"));
    assert!(
        warned,
        "the torn tail is reported: {:#?}",
        server.startup_logs
    );
    // Still de-duplicated after the restart.
    let resp = client
        .post(server.url("/v1/feedback"))
        .json(&items[0])
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "duplicate", "{v}");
}
