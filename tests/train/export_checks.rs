//! The trainer's export cannot fail late (issue 16, item 4) and says when a run is degenerate
//! (item 5): a validation split too small for 15 ATS pieces exports with fewer, with a warning;
//! an unwritable output folder fails before the first epoch; a failed calibration leaves the
//! previous model (or none), never a half-written folder; the report names a constant predictor
//! and a run of too few optimiser steps. Tiny LeNet runs on a few hundred real MNIST images.

use std::path::Path;

use caliper::cli::train::{Cli, Command};
use caliper::data::Dataset;
use caliper::repository::CalibrationFile;
use caliper::train::config::TrainConfig;
use caliper::train::dataset::{self, Splits};
use caliper::train::{export, fit};
use clap::Parser;

fn argv(dir: &Path, extra: &[&str]) -> Vec<String> {
    let d = |s: &str| dir.join(s).display().to_string();
    let mut v: Vec<String> = [
        "caliper-train",
        "train",
        "--out",
        "t",
        "--dataset",
        "mnist",
        "--data-dir",
        "data",
        "--arch",
        "lenet",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--no-progress",
        "--threads",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (k, p) in [
        ("--models-dir", d("models")),
        ("--calib-dir", d("calib")),
        ("--run-dir", d("run")),
    ] {
        v.push(k.into());
        v.push(p);
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn config(dir: &Path, extra: &[&str]) -> TrainConfig {
    match Cli::try_parse_from(argv(dir, extra))
        .expect("arguments")
        .command
    {
        Command::Train(a) => (*a).validate().expect("valid config"),
        other => panic!("expected the train subcommand, got {other:?}"),
    }
}

/// The first `n_train` MNIST training images (validation carved out at `val_fraction`) and the
/// first 200 test images.
fn small_splits(n_train: usize, val_fraction: f64) -> Splits {
    let (train, test) = dataset::load("mnist", Path::new("data")).expect("MNIST under data/mnist");
    let first = |d: &Dataset, n: usize| d.subset(&(0..n).collect::<Vec<_>>());
    dataset::split(
        "mnist",
        &first(&train, n_train),
        first(&test, 200),
        val_fraction,
        1.0,
        1.0,
        0,
    )
    .unwrap()
}

fn features(s: &Splits) -> export::FeatureSplits {
    export::FeatureSplits {
        train: s.train.clone(),
        val: s.val.clone(),
    }
}

/// Entries of `dir` whose names start with a dot (staged or moved-aside exports).
fn hidden(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn warnings(report: &serde_json::Value) -> Vec<String> {
    report["warnings"]
        .as_array()
        .expect("a warnings array in the report")
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_small_validation_split_exports_with_fewer_pieces_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // 600 images, 15% validation: about 90 samples, too few for 15 pieces of 10.
    let splits = small_splits(600, 0.15);
    let n_val = splits.val.len();
    assert!((20..150).contains(&n_val), "{n_val} validation samples");
    let pieces = n_val / 10;
    let cfg = config(dir.path(), &["--val-fraction", "0.15", "--lr", "0.05"]);
    let fs = features(&splits);
    let pre = export::preflight(&cfg, &fs).unwrap();
    assert_eq!(pre.fit.options.pieces, pieces, "{pre:?}");
    let trained = fit::train(&cfg, splits, cfg.augment).unwrap();
    let out = export::export(&cfg, &trained, &fs, "test").unwrap();

    let w = warnings(&out.report);
    assert!(
        w.iter()
            .any(|w| w.contains(&format!("{n_val} validation samples"))
                && w.contains(&format!("{pieces} pieces"))),
        "{w:?}"
    );
    let calib = CalibrationFile::load(&out.calib).unwrap();
    assert_eq!(calib.calibrator.method(), "ats");
    assert_eq!(calib.fit.unwrap().options.unwrap().pieces, pieces);
    // A complete model folder, servable, and nothing staged left behind.
    assert!(dir.path().join("models/t/model.toml").is_file());
    assert_eq!(
        caliper::repository::list_models(&dir.path().join("models")).unwrap(),
        ["t"]
    );
    caliper::repository::load_model_files(
        &dir.path().join("models"),
        &dir.path().join("calib"),
        "t",
        false,
    )
    .unwrap();
    assert!(hidden(&dir.path().join("models")).is_empty());
    assert!(hidden(&dir.path().join("calib")).is_empty());
}

#[test]
fn an_unwritable_output_folder_fails_before_the_first_epoch() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the models folder should be: no folder can be made there (even as root).
    std::fs::write(dir.path().join("models"), b"not a folder").unwrap();
    let cli = Cli::try_parse_from(argv(dir.path(), &["--train-fraction", "0.01"])).unwrap();
    let e = caliper::cli::train::run(cli, "test").unwrap_err();
    let shown = format!("{e:#}");
    assert!(shown.contains("not writable"), "{shown}");
    assert!(shown.contains("models"), "{shown}");
    // Training never started: no run folder, no checkpoint, no epoch log.
    assert!(!dir.path().join("run").exists());
}

#[test]
fn a_failed_calibration_leaves_the_previous_model_and_no_half_written_folder() {
    let dir = tempfile::tempdir().unwrap();
    let splits = small_splits(600, 0.3);
    let cfg = config(dir.path(), &["--val-fraction", "0.3"]);
    let fs = features(&splits);
    let mut trained = fit::train(&cfg, splits, cfg.augment).unwrap();
    let models = dir.path().join("models");

    // The calibration step fails (a non-finite validation logit): in a fresh repository no
    // model folder and no calibration file appear.
    let good = trained.val.0[0];
    trained.val.0[0] = f32::NAN;
    let e = export::export(&cfg, &trained, &fs, "test").unwrap_err();
    assert!(e.to_string().contains("non-finite"), "{e}");
    assert!(!models.join("t").exists());
    assert!(!dir.path().join("calib/t.json").exists());
    assert!(hidden(&models).is_empty() && hidden(&dir.path().join("calib")).is_empty());

    // Over an existing export, the failure leaves it exactly as it was.
    trained.val.0[0] = good;
    let first = export::export(&cfg, &trained, &fs, "test").unwrap();
    let toml = std::fs::read(models.join("t/model.toml")).unwrap();
    let calib = std::fs::read(&first.calib).unwrap();
    trained.val.0[0] = f32::NAN;
    assert!(export::export(&cfg, &trained, &fs, "test").is_err());
    assert_eq!(std::fs::read(models.join("t/model.toml")).unwrap(), toml);
    assert_eq!(std::fs::read(&first.calib).unwrap(), calib);
    assert!(models.join("t/model.onnx").is_file());
    assert!(hidden(&models).is_empty() && hidden(&dir.path().join("calib")).is_empty());
}

#[test]
fn the_report_names_a_constant_predictor_and_too_few_steps() {
    let dir = tempfile::tempdir().unwrap();
    // 270 training images at batch 32: 8 steps, at a learning rate that kills every ReLU of
    // LeNet's penultimate layer, so the model answers one class whatever the input. The run
    // must still export, saying what went wrong.
    let args = ["--train-fraction", "0.005", "--loss", "ce", "--lr", "0.5"];
    let cli = Cli::try_parse_from(argv(dir.path(), &args)).unwrap();
    caliper::cli::train::run(cli, "test").unwrap();
    // The model's validation predictions, counted here from the saved logits.
    let z: ndarray::Array2<f32> =
        ndarray_npy::read_npy(dir.path().join("run/val_logits.npy")).unwrap();
    let mut counts = vec![0usize; z.ncols()];
    for row in z.outer_iter() {
        let top = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        counts[top] += 1;
    }
    let share = *counts.iter().max().unwrap() as f64 / z.nrows() as f64;
    assert!(share > 0.95, "this run is meant to be constant: {counts:?}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("models/t/report.json")).unwrap())
            .unwrap();
    let w = warnings(&report);
    let has = |needle: &str| w.iter().any(|w| w.contains(needle));
    assert!(has("constant predictor"), "{w:?}");
    assert!(has("only 8 optimiser steps"), "{w:?}");
    // Dead features are named, and a threshold that never fires on validation data too.
    assert!(has("features are constant on the training split"), "{w:?}");
    assert!(has("flags none of the"), "{w:?}");
}
