//! Conformal scores per request (issue 17 item 3) on the shipped Fashion-MNIST model: the
//! model's logits on the whole Fashion-MNIST test split (through KServe V2) are cut into seeded
//! calibration and test halves. Against the shipped calibration file (fitted before randomised
//! APS and RAPS existed) `?conformal=` selects LAC or APS, names the fix for RAPS and rejects an
//! unknown name; then every score is refitted on the calibration half, the file rewritten and
//! the model reloaded. Coverage of each score is measured on the test half, and the sets the
//! server answers agree with the library's.

use crate::common;

use std::path::Path;

use base64::Engine;
use caliper::data::split::stratified_split;
use caliper::data::{Dataset, DatasetSpec};
use caliper::repository::CalibrationFile;
use caliper::serve::http::AppState;
use caliper::trust::calibration::calibrate_rows;
use caliper::trust::conformal::{ScoreKind, coverage_and_size};
use caliper::trust::ood::artifacts::ConformalCalibration;
use common::*;
use ndarray::{Array2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

const NAME: &str = "fashion-mnist";

/// A private repository holding the shipped model and its calibration file.
fn shipped_repo() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("models").join(NAME);
    std::fs::create_dir_all(&m).unwrap();
    std::fs::create_dir_all(dir.path().join("calib")).unwrap();
    for f in ["model.onnx", "model.toml"] {
        std::fs::copy(root.join("models").join(NAME).join(f), m.join(f)).unwrap();
    }
    let calib = format!("calib/{NAME}.json");
    std::fs::copy(root.join(&calib), dir.path().join(&calib)).unwrap();
    dir
}

fn fashion_test() -> Dataset {
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let spec: DatasetSpec = "fashion-mnist:test".parse().unwrap();
    spec.load(&data_dir)
        .expect("run scripts/fetch-data.sh fashion-mnist")
}

/// Raw logits of the images `idx` through the V2 endpoint, 1000 per request.
async fn logits(s: &AppState, test: &Dataset, idx: &[usize]) -> Array2<f64> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut rows: Vec<f64> = Vec::new();
    for chunk in idx.chunks(1000) {
        let data: Vec<String> = chunk
            .iter()
            .map(|&i| b64.encode(png(test.image(i))))
            .collect();
        let body = json!({
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [chunk.len()], "data": data}],
            "outputs": [{"name": "logits"}]
        });
        let (status, v, _) = send(s, post_json(&format!("/v2/models/{NAME}/infer"), &body)).await;
        assert_eq!(status, 200, "{v}");
        rows.extend(
            v["outputs"][0]["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap()),
        );
    }
    let n = idx.len();
    Array2::from_shape_vec((n, rows.len() / n), rows).unwrap()
}

/// `POST /v1/models/fashion-mnist/predict{query}` with the images `idx` as one multipart form.
async fn predict(s: &AppState, test: &Dataset, idx: &[usize], query: &str) -> (u16, Value) {
    let boundary = "caliper-conformal-boundary";
    let mut body = Vec::new();
    for &i in idx {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
                 filename=\"{i}.png\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&png(test.image(i)));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let uri = format!("/v1/models/{NAME}/predict{query}");
    let ctype = format!("multipart/form-data; boundary={boundary}");
    let (status, v, _) = send(s, post(&uri, &ctype, body)).await;
    (status.as_u16(), v)
}

/// Class indices of one served `prediction_set`.
fn served_set(p: &Value, labels: &[String]) -> Vec<usize> {
    let mut set: Vec<usize> = p["prediction_set"]
        .as_array()
        .unwrap_or_else(|| panic!("no prediction_set: {p}"))
        .iter()
        .map(|l| {
            labels
                .iter()
                .position(|x| x == l.as_str().unwrap())
                .unwrap()
        })
        .collect();
    set.sort_unstable();
    set
}

#[tokio::test]
async fn conformal_query_selects_the_score_and_every_score_covers() {
    let repo = shipped_repo();
    // A file with LAC and APS only and no default_score (as `calibrate` wrote them before RAPS):
    // the shipped one is cut back to that, so the refusals below have something to refuse.
    let path = repo.path().join(format!("calib/{NAME}.json"));
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let conformal = json["conformal"].as_object_mut().unwrap();
    for key in ["raps", "aps_randomized", "default_score"] {
        conformal.remove(key);
    }
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let s = state(config(repo.path()));
    let test = fashion_test();
    let few: Vec<usize> = (0..20).collect();

    // LAC is served by default.
    let (status, v) = predict(&s, &test, &few, "").await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["conformal"] == "lac")
    );
    let (status, v) = predict(&s, &test, &few, "?conformal=aps").await;
    assert_eq!(status, 200, "{v}");
    for p in v["predictions"].as_array().unwrap() {
        assert_eq!(p["conformal"], "aps");
        assert!(!p["prediction_set"].as_array().unwrap().is_empty(), "{p}");
    }
    for method in ["raps", "aps_randomized"] {
        let (status, v) = predict(&s, &test, &few, &format!("?conformal={method}")).await;
        assert_eq!(status, 400, "{v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(method) && e.contains("caliper calibrate"), "{e}");
    }
    let (status, v) = predict(&s, &test, &few, "?conformal=thr").await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("raps"), "{v}");

    // Calibration and test halves of the test split, seeded.
    let (test_idx, cal_idx) = stratified_split(&test.labels, 10, 0.5, 17).unwrap();
    let labels_of = |idx: &[usize]| idx.iter().map(|&i| test.labels[i]).collect::<Vec<_>>();
    let (y_cal, y_test) = (labels_of(&cal_idx), labels_of(&test_idx));
    let mut file = CalibrationFile::load(&path).unwrap();
    let p_cal = calibrate_rows(&file.calibrator, logits(&s, &test, &cal_idx).await.view()).unwrap();
    let p_test =
        calibrate_rows(&file.calibrator, logits(&s, &test, &test_idx).await.view()).unwrap();
    let conformal = ConformalCalibration::fit(p_cal.view(), &y_cal, 0.1).unwrap();
    let accuracy = p_test
        .outer_iter()
        .zip(&y_test)
        .filter(|(p, y)| caliper::numeric::argmax(&p.to_vec()) == **y)
        .count() as f64
        / y_test.len() as f64;

    // Coverage on the test half, of the exact sets {k : score_k <= q} the guarantee is about
    // and of the served sets (which add APS's crossing class and the randomised scores' top
    // class). Theory (distinct scores): 1 - alpha <= exact coverage <= 1 - alpha + 1/(n+1);
    // with 5,000 + 5,000 points one draw's sd is about 0.0044 at alpha 0.05, so 0.015 is over
    // three.
    let n_cal = y_cal.len() as f64;
    let tol = 0.015;
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for alpha in [0.05, 0.1] {
        for score in ScoreKind::ALL {
            let c = conformal.predictor(score).unwrap();
            let q = c.quantile(alpha).unwrap();
            let (mut sets, mut exact) = (Vec::new(), 0usize);
            for (p, &y) in p_test.outer_iter().zip(&y_test) {
                let (p, u) = (p.to_vec(), rng.random::<f64>());
                let set = c.predict_set(&p, alpha, u).unwrap();
                let in_exact = c.class_scores(&p, u)[y] <= q;
                assert!(
                    !in_exact || set.contains(&y),
                    "{score}: served misses the exact set"
                );
                exact += usize::from(in_exact);
                sets.push(set);
            }
            let exact = exact as f64 / y_test.len() as f64;
            let (cov, size) = coverage_and_size(&sets, &y_test);
            eprintln!(
                "{score} alpha {alpha}: served coverage {cov:.4}, exact-set coverage {exact:.4}, \
                 mean size {size:.3} (top-1 accuracy {accuracy:.4})"
            );
            assert!(
                exact >= 1.0 - alpha - tol && exact <= 1.0 - alpha + 1.0 / (n_cal + 1.0) + tol,
                "{score} alpha {alpha}: exact-set coverage {exact}"
            );
            assert!(cov >= exact, "{score} alpha {alpha}: {cov} < {exact}");
            if score != ScoreKind::Lac {
                assert!(sets.iter().all(|s| !s.is_empty()), "{score}: an empty set");
            }
        }
    }

    // Rewrite the file with every score, RAPS as the default, and reload the model.
    file.conformal = Some(ConformalCalibration {
        default_score: ScoreKind::Raps,
        ..conformal.clone()
    });
    file.save(&path).unwrap();
    let (status, v, _) = send(
        &s,
        post(
            &format!("/v2/repository/models/{NAME}/load"),
            "application/json",
            "",
        ),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // Served sets agree with the library's: LAC and APS exactly; a randomised set lies between
    // its u = 1 (smallest) and u = 0 (largest) sets, since every score grows with u.
    let served: Vec<usize> = test_idx[..200].to_vec();
    let labels = file_labels(repo.path());
    let (status, v) = predict(&s, &test, &served, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["predictions"][0]["conformal"], "raps",
        "the file's default"
    );
    for score in ScoreKind::ALL {
        let (status, v) = predict(
            &s,
            &test,
            &served,
            &format!("?conformal={score}&alpha=0.05"),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let c = conformal.predictor(score).unwrap();
        for (row, p) in v["predictions"].as_array().unwrap().iter().enumerate() {
            assert_eq!(p["conformal"], score.name());
            let got = served_set(p, &labels);
            let probs = p_test.index_axis(Axis(0), row).to_vec();
            let lo = c.predict_set(&probs, 0.05, 1.0).unwrap();
            let hi = c.predict_set(&probs, 0.05, 0.0).unwrap();
            assert!(
                lo.iter().all(|k| got.contains(k)) && got.iter().all(|k| hi.contains(k)),
                "{score} row {row}: served {got:?}, u=1 {lo:?}, u=0 {hi:?}"
            );
            if !score.is_randomized() {
                assert_eq!(lo, hi, "{score} does not depend on u");
            }
        }
    }
}

/// The model's labels, from its `model.toml`.
fn file_labels(root: &Path) -> Vec<String> {
    caliper::repository::load_model_files(&root.join("models"), &root.join("calib"), NAME, true)
        .unwrap()
        .metadata
        .labels
}
