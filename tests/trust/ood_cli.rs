//! The OOD command line on real data with the bundled LeNet (`models/mnist`, `calib/mnist.json`):
//! `caliper eval-ood` on MNIST test vs Fashion-MNIST test, `caliper calibrate --train-data`
//! reproducing the committed calibration file from the trainer's split selectors, and those
//! selectors picking exactly the trainer's validation images.

use crate::common;

use std::path::Path;

use caliper::data::DatasetSpec;
use caliper::repository::CalibrationFile;
use caliper::train::dataset;
use common::caliper_json;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn eval_ood_reports_every_score_for_mnist_vs_fashion() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("ood/mnist.json");
    let v = caliper_json([
        "eval-ood",
        "--model",
        "mnist",
        "--id",
        "mnist:test",
        "--ood",
        "fashion-mnist:test",
        "--json",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(v["calibration"], "ats");
    let scores = v["scores"].as_object().unwrap();
    let names: Vec<&str> = scores.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "energy",
            "entropy",
            "entropy_calibrated",
            "knn",
            "mahalanobis",
            "max_logit",
            "msp",
            "msp_raw",
            "rmds",
            "vim"
        ]
    );
    for (name, s) in scores {
        for k in ["auroc", "fpr_at_95_tpr", "aupr_out", "aupr_in"] {
            let x = s[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{name}.{k} = {x}");
        }
        assert_eq!(s["id_samples"], 10_000);
        assert_eq!(s["ood_samples"], 10_000);
    }
    // Seen: MSP 0.985, energy 0.996, Mahalanobis 0.855.
    assert!(scores["msp"]["auroc"].as_f64().unwrap() > 0.8, "{v}");
    assert!(scores["energy"]["auroc"].as_f64().unwrap() > 0.9, "{v}");
    assert!(
        scores["mahalanobis"]["auroc"].as_f64().unwrap() > 0.6,
        "{v}"
    );
    // The stored thresholds (95% TPR of the validation split) keep about 95% of MNIST test.
    let kept = 1.0 - scores["msp"]["id_flagged"].as_f64().unwrap();
    assert!((0.9..=0.99).contains(&kept), "msp keeps {kept}");
    assert!(scores["msp_raw"].get("threshold").is_none());
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written, v);
}

#[test]
fn calibrate_with_train_data_reproduces_the_committed_file() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("mnist.json");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_caliper"))
        .args([
            "calibrate",
            "--model",
            "mnist",
            "--data",
            "mnist:train[val=0.1,seed=0]",
            "--train-data",
            "mnist:train[fit=0.1,seed=0]",
            "--ood-method",
            "mahalanobis",
            "--out",
        ])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let fresh = CalibrationFile::load(&path).unwrap();
    let committed = CalibrationFile::load(&root().join("calib/mnist.json")).unwrap();
    assert_eq!(fresh.model_sha256, committed.model_sha256);
    assert_eq!(fresh.calibrator, committed.calibrator);
    assert_eq!(fresh.conformal, committed.conformal);
    let (f, c) = (fresh.ood.unwrap(), committed.ood.unwrap());
    assert_eq!(f.method, "mahalanobis");
    assert_eq!(f.thresholds, c.thresholds);
    assert_eq!(f.detectors, c.detectors);
    assert_eq!(f.detectors.mahalanobis.unwrap().dim(), 128);

    // A method without a threshold is refused before any model runs.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_caliper"))
        .args([
            "calibrate",
            "--model",
            "mnist",
            "--data",
            "mnist:test",
            "--ood-method",
            "mahalanobis",
            "--out",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--train-data"));
}

#[test]
fn split_selectors_pick_the_trainers_validation_and_training_images() {
    let data = root().join("data");
    let (train, test) = dataset::load("mnist", &data).unwrap();
    let splits = dataset::split("mnist", &train, test, 0.1, 1.0, 1.0, 0).unwrap();
    let load = |s: &str| s.parse::<DatasetSpec>().unwrap().load(&data).unwrap();
    let val = load("mnist:train[val=0.1,seed=0]");
    let fit = load("mnist:train[fit=0.1,seed=0]");
    assert_eq!((val.len(), fit.len()), (6000, 54_000));
    assert_eq!(val.labels, splits.val.labels);
    assert_eq!(val.images, splits.val.images);
    assert_eq!(fit.labels, splits.train.labels);
    assert_eq!(fit.images, splits.train.images);
    // Another seed is another split.
    assert_ne!(load("mnist:train[val=0.1,seed=1]").images, val.images);
}
