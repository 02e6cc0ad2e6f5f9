//! OOD verdicts, abstention and conformal prediction sets end to end (issue 5): the fixture
//! model's logits on 1,000 real MNIST test images (through KServe V2) fit the thresholds and the
//! conformal predictor with `ood::artifacts::fit_trust_artifacts`; the calibration file is
//! rewritten and the model reloaded over HTTP; then 1,000 other test images are served through
//! the caliper API with `?alpha=0.1`, and the empirical coverage of the sets is checked.

use crate::common;

use base64::Engine;
use caliper::data::{Dataset, DatasetSpec};
use caliper::repository::CalibrationFile;
use caliper::serve::http::AppState;
use caliper::trust::ood::artifacts::fit_trust_artifacts;
use common::*;
use ndarray::Array2;
use serde_json::{Value, json};

/// Raw logits of images `range` through the V2 endpoint (one batched request).
async fn logits(s: &AppState, test: &Dataset, range: std::ops::Range<usize>) -> Array2<f64> {
    let n = range.len();
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: Vec<String> = range.map(|i| b64.encode(png(test.image(i)))).collect();
    let body = json!({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [n], "data": data}],
        "outputs": [{"name": "logits"}]
    });
    let (status, v, _) = send(s, post_json(&format!("/v2/models/{MODEL}/infer"), &body)).await;
    assert_eq!(status, 200, "{v}");
    let flat: Vec<f64> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    Array2::from_shape_vec((n, flat.len() / n), flat).unwrap()
}

async fn predict(s: &AppState, bytes: Vec<u8>, query: &str) -> (u16, Value) {
    let uri = format!("/v1/models/{MODEL}/predict{query}");
    let (status, v, _) = send(s, post(&uri, "image/png", bytes)).await;
    (status.as_u16(), v)
}

#[tokio::test]
async fn ood_verdicts_abstention_and_conformal_sets_with_coverage() {
    let repo = repo();
    let s = state(config(repo.path()));
    let test = mnist_test();

    // Before: the fixture file has no conformal predictor, so an alpha is a clear 400.
    let (status, v) = predict(&s, digit("7.png"), "?alpha=0.1").await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("conformal"), "{v}");

    // Fit on images 0..1000, write the calibration file, reload the model.
    let z = logits(&s, &test, 0..1000).await;
    let labels: Vec<usize> = test.labels[0..1000].to_vec();
    let path = repo.path().join(format!("calib/{MODEL}.json"));
    let file = CalibrationFile::load(&path).unwrap();
    let trust = fit_trust_artifacts(z.view(), &labels, None, &file.calibrator).unwrap();
    file.with_trust(trust).save(&path).unwrap();
    let (status, v, _) = send(
        &s,
        post(
            &format!("/v2/repository/models/{MODEL}/load"),
            "application/json",
            "",
        ),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // The default response carries the verdict, the scores and the default-alpha set.
    let (status, p) = predict(&s, digit("7.png"), "").await;
    assert_eq!(status, 200, "{p}");
    let ood = &p["ood"];
    assert_eq!(ood["method"], "msp");
    assert!(
        ood["threshold"].as_f64().is_some() && ood["is_ood"] == false,
        "{p}"
    );
    for k in ["msp", "max_logit", "energy", "entropy"] {
        assert!(ood[k].is_f64(), "{k} missing: {p}");
    }
    assert_eq!(p["abstained"], false);
    assert!(
        p["prediction_set"]
            .as_array()
            .unwrap()
            .contains(&json!("7")),
        "{p}"
    );

    // Abstention: a confidence floor above the prediction's confidence.
    let conf = p["confidence"].as_f64().unwrap();
    let floor = (conf + 1.0) / 2.0;
    let (_, a) = predict(&s, digit("7.png"), &format!("?min_confidence={floor}")).await;
    assert_eq!(
        (a["abstained"].as_bool(), a["abstain_reason"].as_str()),
        (Some(true), Some("low_confidence")),
        "{a}"
    );
    assert_eq!(
        a["probabilities"], p["probabilities"],
        "probabilities stay present"
    );
    let (status, _) = predict(&s, digit("7.png"), "?min_confidence=1.5").await;
    assert_eq!(status, 400);

    // Real out-of-distribution inputs: Fashion-MNIST test images. With reject_ood, every flagged
    // one abstains for that reason, and the Prometheus counter counts them.
    let data_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let fashion = "fashion-mnist:test"
        .parse::<DatasetSpec>()
        .unwrap()
        .load(&data_dir)
        .unwrap();
    let mut flagged = 0;
    for i in 0..50 {
        let (_, n) = predict(&s, png(fashion.image(i)), "?reject_ood=true").await;
        if n["ood"]["is_ood"] == true {
            flagged += 1;
            assert_eq!(n["abstain_reason"], "out_of_distribution", "{n}");
        } else {
            assert_eq!(n["abstained"], false, "{n}");
        }
    }
    assert!(
        flagged >= 10,
        "only {flagged} of 50 Fashion-MNIST images flagged at 95% TPR"
    );
    let (_, text, _) = send(&s, get("/metrics")).await;
    let line = format!("caliper_ood_flagged_total{{model=\"{MODEL}\"}} ");
    let counted: f64 = text
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.parse().ok())
        .unwrap();
    assert!(
        counted >= f64::from(flagged),
        "counter {counted} < {flagged}"
    );

    // Coverage of the LAC sets at alpha = 0.1 on 1,000 held-out test images (1000..2000):
    // split conformal guarantees >= 0.9 in expectation; allow 3 binomial standard errors.
    let mut covered = 0;
    let mut sizes = 0;
    for i in 1000..2000 {
        let (status, p) = predict(&s, png(test.image(i)), "?alpha=0.1").await;
        assert_eq!(status, 200);
        let set = p["prediction_set"].as_array().unwrap();
        sizes += set.len();
        if set.contains(&json!(test.labels[i].to_string())) {
            covered += 1;
        }
    }
    let coverage = f64::from(covered) / 1000.0;
    eprintln!(
        "flagged {flagged}/50 Fashion-MNIST; coverage {coverage}, mean set size {}",
        sizes as f64 / 1000.0
    );
    let tolerance = 3.0 * (0.9f64 * 0.1 / 1000.0).sqrt();
    assert!(
        coverage >= 0.9 - tolerance,
        "coverage {coverage} (mean set size {})",
        sizes as f64 / 1000.0
    );
}
