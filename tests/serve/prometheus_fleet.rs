//! Fleet-wide ECE with a real Prometheus server (issue 5): two real `caliper serve` replicas
//! share a feedback key and receive different labels; Prometheus scrapes both and evaluates the
//! recording rules shipped in docs/deploy/prometheus/caliper-rules.yml; the rule's fleet ECE must
//! equal the ECE of the pooled feedback computed here.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`; `make test` and `.ci/run`
//! install it through scripts/install-test-deps.sh).

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caliper::trust::metrics::BinnedAccumulator;
use common::process::Server;
use common::{MODEL, data, repo};
use serde_json::{Value, json};

const KEY: &str = "fleet-test-key";

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (Prometheus cannot report the port it picks for :0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(dir: &Path, targets: &[&str]) -> Prometheus {
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploy/prometheus/caliper-rules.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: caliper\n    static_configs:\n      - targets: {}\n",
        rules.display(),
        serde_json::to_string(targets).unwrap()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the prometheus binary is needed: apt-get install prometheus (scripts/install-test-deps.sh)");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Instant-query result values of `query` (empty until the series exists).
async fn query(client: &reqwest::Client, prom: &Prometheus, q: &str) -> Vec<f64> {
    let Ok(resp) = client
        .get(format!("{}/api/v1/query", prom.url))
        .query(&[("query", q)])
        .send()
        .await
    else {
        return Vec::new();
    };
    let v: Value = resp.json().await.unwrap_or_default();
    v["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|s| s["value"][1].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `q` until `ok` accepts its values or 90 s pass; returns the last values seen.
async fn poll(
    client: &reqwest::Client,
    prom: &Prometheus,
    q: &str,
    ok: impl Fn(&[f64]) -> bool,
) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = query(client, prom, q).await;
        if ok(&v) || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn recording_rule_fleet_ece_equals_the_ece_of_pooled_feedback() {
    let repo = repo();
    let state = tempfile::tempdir().unwrap();
    let replica = |name: &str| {
        let dir = state.path().join(name);
        Server::start([
            "--models".as_ref(),
            repo.path().join("models").as_os_str(),
            "--calib".as_ref(),
            repo.path().join("calib").as_os_str(),
            "--state-dir".as_ref(),
            dir.as_os_str(),
            "--feedback-key".as_ref(),
            KEY.as_ref(),
        ])
    };
    let (a, b) = (replica("a"), replica("b"));
    let client = reqwest::Client::new();

    // Every digit to both replicas; A gets the true labels, B a true label for even digits and a
    // wrong one ((d + 1) % 10) for odd ones, so the two replicas' windows differ.
    let mut pooled = BinnedAccumulator::new(15).unwrap();
    let mut per_replica = [
        BinnedAccumulator::new(15).unwrap(),
        BinnedAccumulator::new(15).unwrap(),
    ];
    let mut sent = 0u64;
    for (r, server) in [&a, &b].into_iter().enumerate() {
        let mut items = Vec::new();
        for d in 0..10u64 {
            let png = std::fs::read(data().join(format!("digits/{d}.png"))).unwrap();
            let resp = client
                .post(server.url(&format!("/v1/models/{MODEL}/predict")))
                .header("content-type", "image/png")
                .body(png)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let p: Value = resp.json().await.unwrap();
            let label = if r == 1 && d % 2 == 1 {
                (d + 1) % 10
            } else {
                d
            };
            let correct = p["class_index"].as_u64() == Some(label);
            let conf = p["confidence"].as_f64().unwrap();
            pooled.add(conf, correct).unwrap();
            per_replica[r].add(conf, correct).unwrap();
            items.push(json!({"prediction_id": p["prediction_id"], "label": label}));
            sent += 1;
        }
        let resp = client
            .post(server.url("/v1/feedback"))
            .json(&json!({ "feedback": items }))
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["accepted"], 10, "{v}");
    }
    let expected = pooled.ece().unwrap();
    let (ea, eb) = (per_replica[0].ece().unwrap(), per_replica[1].ece().unwrap());
    assert!(
        (ea - eb).abs() > 1e-3,
        "the replicas must differ for the test to mean something"
    );

    let prom_dir = tempfile::tempdir().unwrap();
    let prom = start_prometheus(prom_dir.path(), &[a.addr.as_str(), b.addr.as_str()]);
    // Both replicas scraped with all their feedback...
    let total = poll(
        &client,
        &prom,
        "sum(caliper_calibration_bin_samples_total)",
        |v| v == [sent as f64],
    )
    .await;
    assert_eq!(
        total,
        [sent as f64],
        "Prometheus did not scrape both replicas"
    );
    // ...and the recording rule evaluated over that.
    let rule = format!("caliper:calibration_ece:fleet_total{{model=\"{MODEL}\"}}");
    let fleet = poll(&client, &prom, &rule, |v| {
        v.len() == 1 && (v[0] - expected).abs() < 1e-9
    })
    .await;
    assert_eq!(fleet.len(), 1, "recording rule {rule} has no value");
    assert!(
        (fleet[0] - expected).abs() < 1e-9,
        "fleet ECE {} != pooled ECE {expected} (replicas: {ea}, {eb})",
        fleet[0]
    );
    // Each replica's own gauge is its own window's ECE.
    let gauges = query(
        &client,
        &prom,
        &format!("caliper_calibration_ece{{model=\"{MODEL}\"}}"),
    )
    .await;
    assert_eq!(gauges.len(), 2);
    for want in [ea, eb] {
        assert!(
            gauges.iter().any(|g| (g - want).abs() < 1e-12),
            "{gauges:?} lacks {want}"
        );
    }
}
