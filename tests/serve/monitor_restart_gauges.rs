//! The live calibration gauges survive `kill -9` (issue 17, item 2): a new process over the same
//! `--state-dir` rebuilds the window from the feedback log and publishes
//! `caliper_calibration_{ece,accuracy,window_samples}` at start-up, with the values that
//! `/v1/models/M/monitor` reports, before any new label arrives. The per-bin counters restart at
//! 0 (exported from start-up, so `increase()` counts the first new label) and count only the
//! labels this process receives. The calibration e-process comes back too, replayed from the log
//! at the tolerance derived from the model's calibration file (issue 22), which the server reads
//! only after the replay.

use crate::common;

use caliper::repository::{CalibrationFile, FitSummary, ReliabilitySummary};
use caliper::trust::metrics::Bin;
use common::process::Server;
use common::{MODEL, data, repo};
use serde_json::{Value, json};

fn start(repo: &std::path::Path, state: &std::path::Path) -> Server {
    Server::with_state_dir(repo, state, "restart-gauges-key")
}

async fn metrics(client: &reqwest::Client, s: &Server) -> String {
    let resp = client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// The value of the sample `name{labels}` in a Prometheus text page (labels as rendered,
/// e.g. `model="m"` or `model="m",bin="3"`), None when the series is absent.
fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    let key = format!("{name}{{{labels}}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.trim().parse().unwrap())
}

/// Every sample of the per-bin counter `name` for the fixture model: (bin, value).
fn bins(page: &str, name: &str) -> Vec<(usize, f64)> {
    let prefix = format!("{name}{{");
    let mut out: Vec<(usize, f64)> = page
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| l.contains(&format!("model=\"{MODEL}\"")))
        .map(|l| {
            let bin = l.split("bin=\"").nth(1).unwrap().split('"').next().unwrap();
            let value = l.rsplit(' ').next().unwrap();
            (bin.parse().unwrap(), value.parse().unwrap())
        })
        .collect();
    out.sort_by_key(|&(b, _)| b);
    out
}

/// Asserts that the window gauges carry exactly what the monitor endpoint reports.
fn assert_gauges_match(page: &str, live: &Value) {
    let labels = format!("model=\"{MODEL}\"");
    let labelled = live["labelled"].as_f64().unwrap();
    assert_eq!(
        sample(page, "caliper_calibration_window_samples", &labels),
        Some(labelled),
        "{page}"
    );
    for (gauge, field) in [
        ("caliper_calibration_ece", "ece"),
        ("caliper_calibration_accuracy", "accuracy"),
    ] {
        let want = live[field].as_f64().unwrap();
        let got = sample(page, gauge, &labels).unwrap_or_else(|| panic!("{gauge} absent: {page}"));
        assert!(
            (got - want).abs() <= 1e-12,
            "{gauge}: /metrics {got}, monitor {want}"
        );
    }
}

/// Predicts one real MNIST digit file; returns the prediction.
async fn predict(client: &reqwest::Client, s: &Server, file: &str) -> Value {
    let png = std::fs::read(data().join("digits").join(file)).unwrap();
    let resp = client
        .post(s.url(&format!("/v1/models/{MODEL}/predict")))
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn label(client: &reqwest::Client, s: &Server, item: &Value) {
    let resp = client
        .post(s.url("/v1/feedback"))
        .json(item)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

/// Gives the fixture's calibration file (which has no fit summary) validation reliability bins,
/// 2 points over-confident over 2,000 predictions; returns the tolerance derived from them.
fn with_reliability_bins(repo: &std::path::Path) -> f64 {
    let path = repo.join(format!("calib/{MODEL}.json"));
    let mut file = CalibrationFile::load(&path).unwrap();
    let bin = |lower: f64, count, confidence: f64| Bin {
        lower,
        upper: lower + 0.25,
        count,
        confidence,
        accuracy: confidence - 0.02,
    };
    let after = vec![bin(0.5, 500, 0.65), bin(0.75, 1_500, 0.95)];
    let eps = caliper::trust::alarm::calibration_tolerance(&after, 0.01 / 3.0).unwrap();
    file.fit = Some(FitSummary {
        samples: 2_000,
        reliability: Some(ReliabilitySummary {
            before: Vec::new(),
            after,
        }),
        ..FitSummary::default()
    });
    file.save(&path).unwrap();
    eps
}

#[tokio::test]
async fn gauges_are_published_from_the_rebuilt_window_after_kill_9() {
    let repo = repo();
    let eps = with_reliability_bins(repo.path());
    let state = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut server = start(repo.path(), state.path());

    // Ten real digits, three of them given a wrong label so that accuracy and ECE are not trivial.
    for d in 0..10u64 {
        let p = predict(&client, &server, &format!("{d}.png")).await;
        let truth = if d < 3 { (d + 1) % 10 } else { d };
        label(
            &client,
            &server,
            &json!({"prediction_id": p["prediction_id"], "label": truth}),
        )
        .await;
    }
    let before = server.monitor(&client, MODEL).await;
    assert_eq!(before["live"]["labelled"], 10, "{before}");
    let alarm = &before["alarm"];
    assert_eq!(alarm["calibration_labels"], 10, "{alarm}");
    assert_eq!(
        alarm["calibration_tolerance"].as_f64(),
        Some(eps),
        "{alarm}"
    );
    assert_eq!(alarm["calibration_tolerance_from"], "derived", "{alarm}");
    assert_gauges_match(&metrics(&client, &server).await, &before["live"]);
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    drop(server);

    let server = start(repo.path(), state.path());
    let after = server.monitor(&client, MODEL).await;
    assert_eq!(after["live"]["labelled"], 10, "{after}");
    assert_eq!(after["live"]["ece"], before["live"]["ece"]);
    // The e-process replayed from the log waited for the calibration file: the same labels at
    // the same derived tolerance, so the same e-value.
    for field in [
        "calibration_labels",
        "calibration_evalue",
        "calibration_mean_error",
        "calibration_tolerance",
        "calibration_tolerance_from",
    ] {
        assert_eq!(
            after["alarm"][field], before["alarm"][field],
            "{field}: {after}"
        );
    }
    // No label has reached this process: the gauges come from the rebuilt window alone.
    let page = metrics(&client, &server).await;
    assert_gauges_match(&page, &after["live"]);
    // The per-bin counters exist from start-up, at 0 in every bin (not replayed from the window).
    let samples = bins(&page, "caliper_calibration_bin_samples_total");
    let n_bins = after["live"]["bins"].as_array().unwrap().len();
    assert_eq!(samples, (0..n_bins).map(|b| (b, 0.0)).collect::<Vec<_>>());
    for counter in [
        "caliper_calibration_bin_confidence_total",
        "caliper_calibration_bin_correct_total",
    ] {
        let v = bins(&page, counter);
        assert_eq!(v.len(), n_bins, "{counter}: {page}");
        assert!(v.iter().all(|&(_, x)| x == 0.0), "{counter}: {v:?}");
    }

    // One new label: the window grows to 11, the counters count exactly that one label.
    let p = predict(&client, &server, "4.png").await;
    label(
        &client,
        &server,
        &json!({"prediction_id": p["prediction_id"], "label": 4}),
    )
    .await;
    let live = server.monitor(&client, MODEL).await;
    assert_eq!(live["live"]["labelled"], 11);
    let page = metrics(&client, &server).await;
    assert_gauges_match(&page, &live["live"]);
    let samples = bins(&page, "caliper_calibration_bin_samples_total");
    let total: f64 = samples.iter().map(|&(_, x)| x).sum();
    assert_eq!(total, 1.0, "{samples:?}");
    let conf: f64 = bins(&page, "caliper_calibration_bin_confidence_total")
        .iter()
        .map(|&(_, x)| x)
        .sum();
    let want = p["confidence"].as_f64().unwrap();
    assert!((conf - want).abs() <= 1e-12, "{conf} vs {want}");
}
