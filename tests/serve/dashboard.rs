//! The dashboard at `/ui` in a real headless Chromium (issue 21): a real `caliper serve` of the
//! bundled MNIST model receives predictions for real MNIST test images (some of them degraded, so
//! that the diagram has more than one bar), their labels, Fashion-MNIST images (which it should
//! flag out-of-distribution) and requests that abstain; then the page must load with no console
//! error, show the ECE that `/v1/models/mnist/monitor` reports, formatted the same way, draw its
//! charts, and predict an MNIST PNG chosen in its upload box exactly as the API does.
//!
//! With CALIPER_UPDATE_SCREENSHOTS=1 it saves the screenshots that docs/MONITORING.md shows
//! (docs/img/dashboard.png and docs/img/dashboard-try.png). Needs the Debian packages chromium and chromium-driver
//! (scripts/install-test-deps.sh).

use crate::common;

use std::path::{Path, PathBuf};

use caliper::data::{Dataset, DatasetSpec};
use common::png;
use common::process::Server;
use common::webdriver::Browser;
use serde_json::{Value, json};

const WIDTH: u32 = 1280;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A repository holding only the bundled `mnist` model and its calibration file.
fn mnist_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models/mnist");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::create_dir_all(dir.path().join("calib")).unwrap();
    for f in ["model.onnx", "model.toml"] {
        std::fs::copy(manifest().join("models/mnist").join(f), models.join(f)).unwrap();
    }
    std::fs::copy(
        manifest().join("calib/mnist.json"),
        dir.path().join("calib/mnist.json"),
    )
    .unwrap();
    dir
}

fn load(spec: &str) -> Dataset {
    let spec: DatasetSpec = spec.parse().unwrap();
    spec.load(&manifest().join("data"))
        .unwrap_or_else(|e| panic!("{e}: run scripts/fetch-data.sh"))
}

/// A digit with its contrast cut to a third and deterministic noise added: still a digit, but
/// one the model is less sure of.
fn degraded(pixels: &[u8], seed: usize) -> Vec<u8> {
    pixels
        .iter()
        .enumerate()
        .map(|(j, &p)| {
            let noise = ((j * 7919 + seed * 104_729) % 97) as i32 - 48;
            (i32::from(p) / 3 + 40 + noise).clamp(0, 255) as u8
        })
        .collect()
}

async fn predict(client: &reqwest::Client, server: &Server, query: &str, image: Vec<u8>) -> Value {
    let resp = client
        .post(server.url(&format!("/v1/models/mnist/predict{query}")))
        .header("content-type", "image/png")
        .body(image)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// Predicts the images `range` of `data` (pixels from `image`); returns their feedback items.
async fn traffic(
    client: &reqwest::Client,
    server: &Server,
    data: &Dataset,
    range: std::ops::Range<usize>,
    image: impl Fn(usize) -> Vec<u8>,
    query: &str,
) -> Vec<Value> {
    let mut feedback = Vec::new();
    for i in range {
        let p = predict(client, server, query, png(&image(i))).await;
        feedback.push(json!({"prediction_id": p["prediction_id"], "label": data.labels[i]}));
    }
    feedback
}

/// The page's format of a fraction (app.js `pct`): a percentage with two decimals.
fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

#[tokio::test]
async fn dashboard_shows_the_live_monitor_and_predicts_an_uploaded_image() {
    let repo = mnist_repo();
    let server =
        Server::with_repository(&repo.path().join("models"), &repo.path().join("calib"), &[]);
    let client = reqwest::Client::new();
    let mnist = load("mnist:test");
    let fashion = load("fashion-mnist:test");

    // Labelled traffic: 300 clean digits and 150 degraded ones.
    let mut items = traffic(
        &client,
        &server,
        &mnist,
        0..300,
        |i| mnist.image(i).to_vec(),
        "",
    )
    .await;
    items.extend(
        traffic(
            &client,
            &server,
            &mnist,
            300..450,
            |i| degraded(mnist.image(i), i),
            "",
        )
        .await,
    );
    let resp = server.feedback(&client, &items).await;
    assert_eq!(resp["accepted"], 450, "{resp}");
    let monitor = server.monitor(&client, "mnist").await;
    let ece = monitor["live"]["ece"].as_f64().unwrap();
    assert_eq!(monitor["live"]["labelled"], 450);

    let browser = Browser::start(WIDTH, 1000).await;
    // `/` redirects to the page; a short poll period keeps the test quick.
    browser
        .goto(&server.url("/?model=mnist&interval=300"))
        .await;
    let shown = browser
        .wait_for("the ECE on the page", 30, || async {
            let t = browser.text("#ece").await;
            t.ends_with('%').then_some(t)
        })
        .await;
    assert_eq!(shown, pct(ece), "the page shows the monitor's ECE");
    let raw = browser
        .execute(
            "return document.getElementById('ece').dataset.value;",
            json!([]),
        )
        .await;
    assert_eq!(raw.as_str().unwrap().parse::<f64>().unwrap(), ece);
    let bars = browser
        .execute(
            "return document.querySelectorAll('#reliability rect.bar').length;",
            json!([]),
        )
        .await;
    assert!(bars.as_u64().unwrap() >= 2, "reliability bars: {bars}");

    // Unlabelled traffic while the page polls: Fashion-MNIST (out of distribution) and digits
    // asked to abstain below 99.9% confidence, so that the rate charts have something to show.
    for round in 0..4 {
        let r = round * 30;
        traffic(
            &client,
            &server,
            &fashion,
            r..r + 10,
            |i| fashion.image(i).to_vec(),
            "",
        )
        .await;
        traffic(
            &client,
            &server,
            &mnist,
            500 + r..520 + r,
            |i| degraded(mnist.image(i), i),
            "?min_confidence=0.999",
        )
        .await;
        let polls = browser
            .execute(
                "return document.getElementById('rate').dataset.points;",
                json!([]),
            )
            .await;
        let seen = polls
            .as_str()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        browser
            .wait_for("another poll", 10, || async {
                let now = browser
                    .execute(
                        "return document.getElementById('rate').dataset.points;",
                        json!([]),
                    )
                    .await;
                (now.as_str()
                    .and_then(|p| p.parse::<u32>().ok())
                    .unwrap_or(0)
                    > seen)
                    .then_some(())
            })
            .await;
    }
    let ood_rate = browser
        .wait_for("the OOD-flag rate", 10, || async {
            let t = browser.text("#ood-rate").await;
            (t != "—" && t != "0.0%").then_some(t)
        })
        .await;
    let abstain_rate = browser.text("#abstain-rate").await;
    assert_ne!(abstain_rate, "0.0%", "abstentions were counted");
    assert_ne!(browser.text("#drift-verdict").await, "no test");
    assert!(
        browser.text("#ece-interval").await.contains('%'),
        "bootstrap interval shown"
    );

    // The upload box: a real MNIST digit as PNG, chosen through the file input.
    let dir = tempfile::tempdir().unwrap();
    let digit: PathBuf = dir.path().join("mnist-test-0.png");
    let bytes = png(mnist.image(0));
    std::fs::write(&digit, &bytes).unwrap();
    let api = predict(&client, &server, "?top_k=5", bytes).await;
    browser.choose_file("#upload", &digit).await;
    let label = browser
        .wait_for("the uploaded image's prediction", 30, || async {
            let t = browser.text("#result-label").await;
            (!t.is_empty()).then_some(t)
        })
        .await;
    assert_eq!(label, api["label"].as_str().unwrap());
    assert_eq!(label, mnist.labels[0].to_string());
    let ood = browser.text("#result-ood").await;
    let want = if api["ood"]["is_ood"] == true {
        "out of distribution"
    } else {
        "in distribution"
    };
    assert_eq!(ood, want);
    let set: Vec<String> = api["prediction_set"]
        .as_array()
        .expect("the bundled model has a conformal predictor")
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert_eq!(browser.text("#result-set").await, set.concat());
    let rows = browser
        .execute(
            "return document.querySelectorAll('#topk .row').length;",
            json!([]),
        )
        .await;
    assert_eq!(rows, 5);

    let errors: Vec<String> = browser
        .console()
        .await
        .into_iter()
        .filter(|m| m.starts_with("SEVERE"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // The screenshots carry clocks and timings, so they differ on every run: they replace the
    // committed ones only when asked (CALIPER_UPDATE_SCREENSHOTS=1), else go to a temporary
    // folder, so that `make test` leaves the checkout clean. Taking them is tested either way.
    let tmp = tempfile::tempdir().unwrap();
    let img = if std::env::var_os("CALIPER_UPDATE_SCREENSHOTS").is_some() {
        manifest().join("docs/img")
    } else {
        tmp.path().to_path_buf()
    };
    browser
        .screenshot_element("#try", &img.join("dashboard-try.png"))
        .await;
    browser
        .screenshot_page(&img.join("dashboard.png"), WIDTH)
        .await;
    eprintln!("ECE {shown}, OOD-flag rate {ood_rate}, abstention rate {abstain_rate}");
}

/// The page's files are public and self-contained even when the API needs a key (the data they
/// poll keeps its authentication), `/` leads to the page, and abstentions are counted in
/// `caliper_abstained_total`, which the page's abstention rate reads.
#[tokio::test]
async fn page_files_are_public_and_abstentions_are_counted() {
    use axum::http::header;
    use common::{MODEL, config, digit, get, post, send, state};

    let repo = common::repo();
    let mut c = config(repo.path());
    c.api_key = Some("secret".into());
    let s = state(c);
    for (path, ctype) in [
        ("/ui", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
    ] {
        let (status, body, headers) = send(&s, get(path)).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers[header::CONTENT_TYPE], ctype, "{path}");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        // Nothing is fetched from elsewhere: no absolute URL in any of the three files (the SVG
        // namespace is a name, not a fetch).
        let text = body
            .as_str()
            .unwrap()
            .replace("http://www.w3.org/2000/svg", "");
        assert!(!text.contains("://"), "{path} names another origin");
    }
    let (status, _, headers) = send(&s, get("/")).await;
    assert_eq!(status, 307);
    assert_eq!(headers[header::LOCATION], "/ui");
    let (status, _, _) = send(&s, get(&format!("/v1/models/{MODEL}/monitor"))).await;
    assert_eq!(status, 401, "the data still needs the key");

    let mut req = post(
        &format!("/v1/models/{MODEL}/predict?min_confidence=1"),
        "image/png",
        digit("7.png"),
    );
    req.headers_mut()
        .insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
    let (status, p, _) = send(&s, req).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["abstain_reason"], "low_confidence");
    let (_, metrics, _) = send(&s, get("/metrics")).await;
    let line = format!("caliper_abstained_total{{model=\"{MODEL}\",reason=\"low_confidence\"}} 1");
    assert!(metrics.as_str().unwrap().contains(&line), "{metrics}");
}
