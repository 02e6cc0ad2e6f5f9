//! Export of a trained model to the repository: `models/NAME/model.onnx` (inference graph,
//! weights baked in), `models/NAME/model.toml` (labels, preprocessing, provenance, sha256),
//! `calib/NAME.json` (calibrator fitted on the validation split, OOD thresholds, the
//! Mahalanobis detector on the training split's features, conformal predictors: all through
//! `repository::fit_bundle`, as `caliper calibrate` fits them) and `models/NAME/report.json`.
//!
//! An export must not fail after hours of training: [`preflight`] checks before the first epoch
//! what it needs (writable folders, enough validation data for the calibrator, every class in
//! the training split for the Mahalanobis detector), and the calibrator adapts to a small
//! validation split with a warning. The export is atomic: everything is written into a hidden
//! folder beside the destination and renamed into place, so a failure leaves the previous
//! model (or none), never a half-written folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::config::TrainConfig;
use super::dataset::Validation;
use super::fit::{ECE_BINS, TrainError, Trained, logits_report, predict_outputs};
use super::runner::Evaluator;
use super::step;
use crate::data::{Dataset, Normalization};
use crate::repository::fit_bundle::{FitPlan, plan_fit};
use crate::repository::{Adapt, BundleInput, fit_bundle};
use crate::repository::{
    InputSpec, METADATA_SCHEMA_VERSION, ModelMetadata, OutputSpec, Provenance, ResizePolicy,
};
use crate::trust::calibration::{Calibrator, Method};
use crate::trust::ood::artifacts::FeatureData;

/// Fewer optimiser steps than this over the whole run earn a warning: a few hundred updates is
/// about the least at which the bundled recipes leave the initialisation behind (one MNIST
/// epoch at batch 128 is 421 steps); below it a "trained" model is mostly its random start.
pub const MIN_STEPS: usize = 200;

/// Errors writing the export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file could not be written (the message carries the cause; not repeated as a source).
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// Metadata could not be written.
    #[error(transparent)]
    Metadata(#[from] crate::repository::MetadataError),
    /// The calibrator could not be fitted or written.
    #[error(transparent)]
    Calibration(#[from] crate::trust::calibration::CalibrationError),
    /// The calibration bundle could not be fitted.
    #[error(transparent)]
    Bundle(#[from] crate::repository::FitBundleError),
    /// Something export needs is missing; found before training.
    #[error("cannot export: {0}")]
    Preflight(String),
    /// Scoring the calibrated model failed.
    #[error("scoring the exported model: {0}")]
    Report(String),
}

/// The splits whose features the exported model's Mahalanobis OOD detector is fitted on: class
/// means and covariance from `train`, the threshold from `val` (issue 5).
#[derive(Debug, Clone)]
pub struct FeatureSplits {
    /// The training split the model was trained on.
    pub train: Dataset,
    /// The validation split (the one `Trained::val` holds logits of).
    pub val: Dataset,
}

/// Paths written by [`export`].
#[derive(Debug, Clone)]
pub struct Exported {
    /// `models/NAME/model.onnx`.
    pub model: PathBuf,
    /// `calib/NAME.json`.
    pub calib: PathBuf,
    /// The report.
    pub report: serde_json::Value,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |error| ExportError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// What [`preflight`] found: the calibrator the export will fit and the warnings so far.
#[derive(Debug, Clone)]
pub struct Preflight {
    /// The calibrator fit, adapted to the validation size.
    pub fit: FitPlan,
    /// Whether the Mahalanobis detector can be fitted (every class has training samples).
    pub mahalanobis: bool,
    /// Warnings that do not come from the calibrator plan (too few steps, missing classes).
    pub warnings: Vec<String>,
}

/// Checks, before the first epoch, everything [`export`] needs: the models and calibration
/// folders are writable, the validation split can fit the chosen calibrator (else the plan
/// has fewer pieces or TS, with a warning), every class has training samples for the
/// Mahalanobis detector (else it is skipped, with a warning; an error when it is the OOD
/// method asked for), and the run makes at least [`MIN_STEPS`] optimiser steps (a warning).
/// Logs nothing: the caller decides when to say it.
pub fn preflight(cfg: &TrainConfig, splits: &FeatureSplits) -> Result<Preflight, ExportError> {
    let a = &cfg.args;
    check_writable(&a.models_dir)?;
    check_writable(&a.calib_dir)?;
    let fit = plan_fit(
        a.calibrator,
        &a.fit.options(),
        splits.val.len(),
        Adapt::ToData,
    )?;
    let mut warnings = Vec::new();
    let counts = splits.train.class_counts();
    let k = splits.train.num_classes().max(counts.len());
    let missing: Vec<String> = (0..k)
        .filter(|&c| counts.get(c).copied().unwrap_or(0) == 0)
        .map(|c| {
            splits
                .train
                .class_names
                .get(c)
                .cloned()
                .unwrap_or_else(|| c.to_string())
        })
        .collect();
    if !missing.is_empty() {
        let why = format!(
            "class(es) {} have no training samples, so the Mahalanobis detector has no class \
             mean for them",
            missing.join(", ")
        );
        if crate::trust::ood::artifacts::needs_features(&a.fit.ood_method) {
            return Err(ExportError::Preflight(format!(
                "{why}; choose another --ood-method"
            )));
        }
        warnings.push(format!("{why}: it is not fitted"));
    }
    let steps = a.epochs * (splits.train.len() / a.batch_size.max(1));
    if steps < MIN_STEPS {
        warnings.push(format!(
            "only {steps} optimiser steps ({} epochs of {} training images at batch size {}); \
             fewer than {MIN_STEPS} rarely leave the initialisation behind: train longer, on \
             more images or with smaller batches",
            a.epochs,
            splits.train.len(),
            a.batch_size
        ));
    }
    Ok(Preflight {
        fit,
        mahalanobis: missing.is_empty(),
        warnings,
    })
}

/// Creates `dir` if needed and writes and removes a probe file in it.
fn check_writable(dir: &Path) -> Result<(), ExportError> {
    let fail = |e: std::io::Error| {
        ExportError::Preflight(format!("{} is not writable: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(format!(".caliper-write-probe.{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}

/// The hidden staging paths of one export; removed on drop unless committed.
struct Staging {
    dir: PathBuf,
    calib: PathBuf,
    committed: bool,
}

impl Staging {
    fn new(models_dir: &Path, calib_dir: &Path, name: &str) -> Result<Self, ExportError> {
        let pid = std::process::id();
        let s = Staging {
            dir: models_dir.join(format!(".{name}.partial.{pid}")),
            calib: calib_dir.join(format!(".{name}.json.partial.{pid}")),
            committed: false,
        };
        let _ = std::fs::remove_dir_all(&s.dir);
        std::fs::create_dir_all(&s.dir).map_err(io(&s.dir))?;
        Ok(s)
    }

    /// Renames the staged folder onto `dir` and the staged calibration file onto `calib`; an
    /// existing folder is moved aside first and restored if the second rename fails.
    fn commit(mut self, dir: &Path, calib: &Path) -> Result<(), ExportError> {
        let old = dir.with_file_name(format!(
            ".{}.old.{}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let had_old = dir.exists();
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(dir, &old).map_err(io(dir))?;
        }
        if let Err(e) = std::fs::rename(&self.dir, dir) {
            if had_old {
                let _ = std::fs::rename(&old, dir);
            }
            return Err(io(dir)(e));
        }
        if let Err(e) = std::fs::rename(&self.calib, calib) {
            let _ = std::fs::remove_dir_all(dir);
            if had_old {
                let _ = std::fs::rename(&old, dir);
            }
            return Err(io(calib)(e));
        }
        self.committed = true;
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_file(&self.calib);
        }
    }
}

/// Writes the model, its metadata, its calibrator and the report, atomically.
pub fn export(
    cfg: &TrainConfig,
    t: &Trained,
    splits: &FeatureSplits,
    command: &str,
) -> Result<Exported, ExportError> {
    let a = &cfg.args;
    let pre = preflight(cfg, splits)?;
    let dir = a.models_dir.join(&a.out);
    let model_path = dir.join("model.onnx");
    let calib_path = a.calib_dir.join(format!("{}.json", a.out));
    let stage = Staging::new(&a.models_dir, &a.calib_dir, &a.out)?;
    let meta_kv = [
        ("caliper.arch", a.model.arch.clone()),
        ("caliper.loss", cfg.loss.name().to_string()),
        ("caliper.dataset", a.dataset.clone()),
    ];
    let bytes = step::inference(&t.net, Some(&t.weights), &meta_kv);
    let staged_model = stage.dir.join("model.onnx");
    crate::fsutil::write_atomic(&staged_model, &bytes).map_err(io(&staged_model))?;
    let sha = crate::fsutil::sha256_file(&staged_model).map_err(io(&staged_model))?;

    let k = t.labels.len();
    // The validation images as a spec (`pneumonia:val`, `mnist:train[val=0.1,seed=0]`): the
    // fit summary's source and the provenance say which images fitted the calibrator.
    let val_data = cfg
        .validation
        .spec(&a.dataset, a.train_fraction, a.imbalance_ratio, a.seed)
        .map_err(|e| ExportError::Report(format!("validation spec: {e}")))?
        .to_string();
    let opts = a.fit.options();
    let vz = ndarray::Array2::from_shape_vec(
        (t.val.1.len(), k),
        t.val.0.iter().map(|&v| v as f64).collect(),
    )
    .map_err(|e| ExportError::Report(e.to_string()))?;
    let vy: Vec<usize> = t.val.1.iter().map(|&l| l as usize).collect();
    let features = if pre.mahalanobis {
        Some(Features::compute(cfg, &bytes, splits, &t.normalization)?)
    } else {
        None
    };
    let bundle = fit_bundle(&BundleInput {
        model: &a.out,
        model_sha256: &sha,
        source: &val_data,
        logits: vz.view(),
        labels: &vy,
        features: features.as_ref().map(Features::view),
        method: a.calibrator,
        options: &opts,
        bins: ECE_BINS,
        ood_method: &a.fit.ood_method,
        adapt: Adapt::ToData,
    })?;
    let calibrator = &bundle.calibrator;
    let summary = &bundle.summary;
    for w in &pre.warnings {
        tracing::warn!(model = %a.out, "{w}");
    }
    let warnings: Vec<&String> = pre.warnings.iter().chain(&bundle.warnings).collect();
    // TS beside the chosen calibrator in the report; a validation split without a single
    // error identifies no temperature, and the report then says so with a null.
    let ts = crate::trust::calibration::fit(Method::Ts, &pre.fit.options, vz.view(), &vy).ok();
    let rep = |logits: &[f32], labels: &[i64], c: &Calibrator| {
        logits_report(logits, labels, k, c)
            .map_err(|e: TrainError| ExportError::Report(e.to_string()))
    };
    let test_raw = rep(&t.test.0, &t.test.1, &Calibrator::Identity)?;
    let test_cal = rep(&t.test.0, &t.test.1, calibrator)?;
    let test_ts = ts
        .as_ref()
        .map(|ts| rep(&t.test.0, &t.test.1, ts))
        .transpose()?;

    // f32 options through their shortest decimal form (0.9, not 0.8999999761581421).
    let f = |v: f32| v.to_string().parse::<f64>().unwrap_or(v as f64);
    let mut hp = toml::Table::new();
    let mut put = |k: &str, v: toml::Value| {
        hp.insert(k.into(), v);
    };
    put("optimizer", cfg.optimizer.name().into());
    put("lr", a.lr.into());
    put("schedule", a.schedule.clone().into());
    put("warmup_epochs", a.warmup_epochs.into());
    if let super::optim::Optimizer::Sgd { momentum, .. } = cfg.optimizer {
        put("momentum", f(momentum).into());
    }
    put("nesterov", a.model.nesterov.into());
    put("weight_decay", f(a.model.weight_decay).into());
    put("epochs", (a.epochs as i64).into());
    if let Some(n) = a.stop_after_epochs {
        put("stop_after_epochs", (n.min(a.epochs) as i64).into());
    }
    if a.head_init != super::layers::LinearInit::He {
        put("head_init", "linear-default".into());
    }
    put("best_epoch", (t.best_epoch as i64).into());
    put("batch_size", (a.batch_size as i64).into());
    put("width", a.model.width.into());
    // Which validation images picked the epoch and fitted the calibrator (issue 6): the split
    // options and the spec `caliper calibrate --data` takes to load the same images.
    match &cfg.validation {
        Validation::Carved(c) => {
            put("val_fraction", c.fraction.into());
            if c.balanced {
                put("val_balanced", true.into());
            }
            if c.after_fraction {
                put("val_after_fraction", true.into());
            }
        }
        Validation::Split(name) => put("val_split", name.clone().into()),
    }
    put("val_data", val_data.clone().into());
    put("train_fraction", a.train_fraction.into());
    put("imbalance_ratio", a.imbalance_ratio.into());
    put("train_samples", (t.sizes[0] as i64).into());
    put("val_samples", (t.sizes[1] as i64).into());
    put("device", a.device.clone().into());
    if a.cuda_graph {
        put("cuda_graph", true.into());
    }
    for (name, v) in cfg.loss.hyperparameters() {
        put(name, v.into());
    }
    let [c, h, w] = [t.net.input[0], t.net.input[1], t.net.input[2]];
    let meta = ModelMetadata {
        schema_version: METADATA_SCHEMA_VERSION,
        version: "1".into(),
        labels: t.labels.clone(),
        device: None,
        input: InputSpec {
            name: "input".into(),
            layout: "NCHW".into(),
            channels: c as usize,
            height: h as usize,
            width: w as usize,
            mean: t.normalization.mean.clone(),
            std: t.normalization.std.clone(),
            resize: ResizePolicy::Stretch,
            resize_shorter: None,
        },
        output: OutputSpec {
            logits: "logits".into(),
            features: Some("features".into()),
        },
        provenance: Provenance {
            sha256: sha.clone(),
            dataset: a.dataset.clone(),
            arch: a.model.arch.clone(),
            loss: cfg.loss.name().into(),
            seed: a.seed,
            command: command.into(),
            hyperparameters: hp,
            ..Default::default()
        },
    };
    meta.save(&stage.dir.join("model.toml"))?;
    bundle.file.save(&stage.calib)?;

    let report = json!({
        "model": a.out,
        "sha256": sha,
        "dataset": a.dataset,
        "arch": a.model.arch,
        "loss": cfg.loss.name(),
        "best_epoch": t.best_epoch,
        "train_images_per_s": t.images_per_s,
        "calibrator": calibrator,
        "validation": {
            "data": val_data,
            "samples": t.val.1.len(),
            "before": summary.before,
            "after": summary.after,
        },
        "test": {
            "samples": t.test.1.len(),
            "uncalibrated": test_raw,
            "calibrated": test_cal,
            "ts": {"calibrator": ts, "metrics": test_ts},
        },
        "ece_bins": ECE_BINS,
        "warnings": warnings,
        "command": command,
    });
    if let Some(panels) = summary.reliability_panels(calibrator.method()) {
        let png = stage.dir.join("reliability.png");
        let bytes = crate::trust::diagram::reliability_png(&panels)
            .map_err(|e| ExportError::Report(e.to_string()))?;
        crate::fsutil::write_atomic(&png, &bytes).map_err(io(&png))?;
    }
    let rp = stage.dir.join("report.json");
    let text = serde_json::to_vec_pretty(&report).unwrap_or_default();
    crate::fsutil::write_atomic(&rp, &text).map_err(io(&rp))?;
    save_logits(&cfg.run_dir, t)?;
    stage.commit(&dir, &calib_path)?;
    Ok(Exported {
        model: model_path,
        calib: calib_path,
        report,
    })
}

/// Penultimate features of the exported graph over the training and validation splits.
struct Features {
    train: ndarray::Array2<f64>,
    val: ndarray::Array2<f64>,
    train_labels: Vec<usize>,
}

impl Features {
    /// Runs the exported inference graph (weights baked in, on the training device) over both
    /// splits.
    fn compute(
        cfg: &TrainConfig,
        model: &[u8],
        splits: &FeatureSplits,
        norm: &Normalization,
    ) -> Result<Self, ExportError> {
        let report = |e: String| ExportError::Report(format!("features: {e}"));
        let mut ev = Evaluator::new(model, Vec::new(), cfg.args.threads, cfg.device)
            .map_err(|e| report(e.to_string()))?;
        let none = BTreeMap::new();
        let mut run = |d: &Dataset| {
            let (_, f) =
                predict_outputs(&mut ev, &none, d, norm).map_err(|e| report(e.to_string()))?;
            let dim = f.len() / d.len().max(1);
            ndarray::Array2::from_shape_vec((d.len(), dim), f.into_iter().map(f64::from).collect())
                .map_err(|e| report(e.to_string()))
        };
        Ok(Features {
            train: run(&splits.train)?,
            val: run(&splits.val)?,
            train_labels: splits.train.labels.clone(),
        })
    }

    fn view(&self) -> FeatureData<'_> {
        FeatureData {
            val: self.val.view(),
            train: self.train.view(),
            train_labels: &self.train_labels,
        }
    }
}

/// Writes the best weights' validation and test logits (`f32 [N, K]`) and labels (`i64 [N]`) as
/// `.npy` into the run folder, so that `caliper calibrate` / `caliper eval` and the reproduction
/// scripts can refit and rescore any calibrator without running the model again.
fn save_logits(run_dir: &Path, t: &Trained) -> Result<(), ExportError> {
    let k = t.labels.len();
    for (split, (logits, labels)) in [("val", &t.val), ("test", &t.test)] {
        let z = ndarray::ArrayView2::from_shape((labels.len(), k), logits)
            .map_err(|e| ExportError::Report(e.to_string()))?;
        write_npy(&run_dir.join(format!("{split}_logits.npy")), &z)?;
        write_npy(
            &run_dir.join(format!("{split}_labels.npy")),
            &ndarray::ArrayView1::from(labels.as_slice()),
        )?;
    }
    Ok(())
}

fn write_npy(path: &Path, array: &impl ndarray_npy::WriteNpyExt) -> Result<(), ExportError> {
    let mut bytes = Vec::new();
    array
        .write_npy(&mut bytes)
        .map_err(|e| ExportError::Report(e.to_string()))?;
    crate::fsutil::write_atomic(path, &bytes).map_err(io(path))
}
