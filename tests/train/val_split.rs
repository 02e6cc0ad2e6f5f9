//! `caliper-train --val-split` on real PneumoniaMNIST (issue 6): the run validates on the
//! archive's own 524 `val` images instead of a split carved out of `train`, says so in its
//! provenance, and `caliper calibrate` given the recorded spec refits the very same calibrator,
//! OOD thresholds and conformal quantiles. A linear model and one epoch keep it to seconds.

use std::path::Path;
use std::process::Command;

use caliper::data::DatasetSpec;
use caliper::repository::CalibrationFile;
use caliper::repository::ModelMetadata;

fn data_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

#[test]
fn trains_on_all_of_train_and_calibrates_on_the_official_val_split() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s);
    let mut train = Command::new(env!("CARGO_BIN_EXE_caliper-train"));
    train
        .args([
            "train",
            "--out",
            "pn",
            "--dataset",
            "pneumonia",
            "--val-split",
            "val",
            "--arch",
            "linear",
            "--loss",
            "gce",
            "--epochs",
            "1",
            "--lr",
            "0.05",
            "--threads",
            "2",
            "--no-progress",
        ])
        .arg("--data-dir")
        .arg(data_dir())
        .arg("--models-dir")
        .arg(p("models"))
        .arg("--calib-dir")
        .arg(p("calib"))
        .arg("--run-dir")
        .arg(p("run"));
    succeed(train);

    // Provenance: which validation images, as a spec; no carved fraction.
    let meta = ModelMetadata::load(&p("models/pn/model.toml")).unwrap();
    let hp = &meta.provenance.hyperparameters;
    assert_eq!(hp["val_split"].as_str(), Some("val"));
    assert_eq!(hp["val_data"].as_str(), Some("pneumonia:val"));
    assert!(hp.get("val_fraction").is_none(), "{hp:?}");
    // All 4,708 training images are trained on; the 524 official validation images validate.
    assert_eq!(hp["train_samples"].as_integer(), Some(4708));
    assert_eq!(hp["val_samples"].as_integer(), Some(524));
    // Normalisation from the training split alone (MedMNIST's val images would shift it).
    let train = DatasetSpec::Pneumonia(caliper::data::spec::Split::Train)
        .load(&data_dir())
        .unwrap();
    assert_eq!(meta.input.mean, train.channel_stats().mean);

    // The saved validation logits are those of the official split, in its order.
    let val = hp["val_data"]
        .as_str()
        .unwrap()
        .parse::<DatasetSpec>()
        .unwrap()
        .load(&data_dir())
        .unwrap();
    let labels: ndarray::Array1<i64> = ndarray_npy::read_npy(p("run/val_labels.npy")).unwrap();
    let want: Vec<i64> = val.labels.iter().map(|&l| l as i64).collect();
    assert_eq!(labels.to_vec(), want);
    let logits: ndarray::Array2<f32> = ndarray_npy::read_npy(p("run/val_logits.npy")).unwrap();
    assert_eq!(logits.dim(), (524, 2));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p("models/pn/report.json")).unwrap()).unwrap();
    assert_eq!(report["validation"]["data"], "pneumonia:val");
    assert_eq!(report["validation"]["samples"], 524);

    // The calibration file was fitted on those images, and `caliper calibrate` with the
    // recorded spec (and the whole training split for the Mahalanobis detector) refits it.
    let trained = CalibrationFile::load(&p("calib/pn.json")).unwrap();
    let fit = trained.fit.as_ref().unwrap();
    assert_eq!((fit.source.as_str(), fit.samples), ("pneumonia:val", 524));
    let refit_path = p("refit.json");
    let mut calibrate = Command::new(env!("CARGO_BIN_EXE_caliper"));
    calibrate
        .args([
            "calibrate",
            "--model",
            "pn",
            "--data",
            "pneumonia:val",
            "--train-data",
            "pneumonia:train",
        ])
        .arg("--models-dir")
        .arg(p("models"))
        .arg("--data-dir")
        .arg(data_dir())
        .arg("--out")
        .arg(&refit_path);
    succeed(calibrate);
    let refit = CalibrationFile::load(&refit_path).unwrap();
    assert_eq!(refit.model_sha256, trained.model_sha256);
    let refit_fit = refit.fit.as_ref().unwrap();
    assert_eq!(
        (refit_fit.samples, &refit_fit.label_counts),
        (fit.samples, &fit.label_counts)
    );
    // The trainer scores with the weights as graph inputs, `calibrate` runs model.onnx with
    // them baked in: the logits agree to float rounding (seen: 1e-6 relative in the fitted
    // temperatures), not bit for bit.
    let json = |v: &CalibrationFile| serde_json::to_value(v).unwrap();
    let (a, b) = (json(&refit), json(&trained));
    assert!(b["ood"]["mahalanobis"].is_object(), "{}", b["ood"]);
    for key in ["calibrator", "conformal", "ood"] {
        assert!(!b[key].is_null(), "the trainer wrote no {key}");
        assert_close(&a[key], &b[key], key);
    }
}

/// Runs `cmd`, failing the test with its stderr unless it succeeds.
fn succeed(mut cmd: Command) {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {err}");
}

/// Same JSON shape, and every number within 1e-4 relative (1e-9 absolute).
fn assert_close(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
    use serde_json::Value;
    // ViM's principal basis is defined up to rotations within near-equal eigenvalues, so its
    // entries are not comparable one by one; the subspace is checked through the ViM threshold
    // (ood.thresholds.vim), which the two files must agree on like every other number.
    if at.starts_with("ood.vim.principal") {
        return;
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            // ViM's origin -pinv(W) b comes from a least-squares fit of the last layer to f32
            // logits, which amplifies their last-bit differences between the two graphs: its
            // numbers near zero agree to 1e-6 absolute, not 1e-9.
            let floor = if at.starts_with("ood.vim") {
                1e-6
            } else {
                1e-9
            };
            assert!(
                (x - y).abs() <= 1e-4 * x.abs().max(y.abs()) + floor,
                "{at}: {x} vs {y}"
            );
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_close(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}"
            );
            for (k, v) in x {
                assert_close(v, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

#[test]
fn val_split_errors_name_the_datasets_that_have_one() {
    let fails = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_caliper-train"))
            .args(["train", "--out", "x"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = fails(&["--dataset", "mnist", "--val-split", "val"], &[]);
    assert!(
        e.contains("no split named \"val\"") && e.contains("pneumonia"),
        "{e}"
    );
    // A validation fraction from the environment conflicts as one on the command line does.
    let own = ["--dataset", "pneumonia", "--val-split", "val"];
    let e = fails(&own, &[("CALIPER_VAL_FRACTION", "0.1")]);
    assert!(e.contains("exclude each other"), "{e}");
}
