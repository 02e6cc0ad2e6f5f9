//! Export of a trained model to the repository: `models/NAME/model.onnx` (inference graph,
//! weights baked in), `models/NAME/model.toml` (labels, preprocessing, provenance, sha256),
//! `calib/NAME.json` (calibrator fitted on the validation split, OOD thresholds, the
//! Mahalanobis detector on the training split's features, conformal predictors) and
//! `models/NAME/report.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::config::TrainConfig;
use super::dataset::Validation;
use super::fit::{ECE_BINS, TrainError, Trained, logits_report, predict_outputs};
use super::runner::Evaluator;
use super::step;
use crate::data::{Dataset, Normalization};
use crate::repository::{CalibrationFile, FitSummary};
use crate::repository::{
    InputSpec, METADATA_SCHEMA_VERSION, ModelMetadata, OutputSpec, Provenance, ResizePolicy,
};
use crate::trust::calibration::{Calibrator, FitOptions, Method};
use crate::trust::ood::artifacts::FeatureData;

/// Errors writing the export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Metadata could not be written.
    #[error(transparent)]
    Metadata(#[from] crate::repository::MetadataError),
    /// The calibrator could not be fitted or written.
    #[error(transparent)]
    Calibration(#[from] crate::trust::calibration::CalibrationError),
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
    move |source| ExportError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes the model, its metadata, its calibrator and the report.
pub fn export(
    cfg: &TrainConfig,
    t: &Trained,
    splits: &FeatureSplits,
    command: &str,
) -> Result<Exported, ExportError> {
    let a = &cfg.args;
    let dir = a.models_dir.join(&a.out);
    let model_path = dir.join("model.onnx");
    let meta_kv = [
        ("caliper.arch", a.model.arch.clone()),
        ("caliper.loss", cfg.loss.name().to_string()),
        ("caliper.dataset", a.dataset.clone()),
    ];
    let bytes = step::inference(&t.net, Some(&t.weights), &meta_kv);
    crate::fsutil::write_atomic(&model_path, &bytes).map_err(io(&model_path))?;
    let sha = crate::fsutil::sha256_file(&model_path).map_err(io(&model_path))?;

    let k = t.labels.len();
    // The validation images as a spec (`pneumonia:val`, `mnist:train[val=0.1,seed=0]`): the
    // fit summary's source and the provenance say which images fitted the calibrator.
    let val_data = cfg
        .validation
        .spec(&a.dataset, a.train_fraction, a.imbalance_ratio, a.seed)
        .map_err(|e| ExportError::Report(format!("validation spec: {e}")))?
        .to_string();
    let method = a.calibrator;
    let opts = FitOptions::default();
    let vz = ndarray::Array2::from_shape_vec(
        (t.val.1.len(), k),
        t.val.0.iter().map(|&v| v as f64).collect(),
    )
    .map_err(|e| ExportError::Report(e.to_string()))?;
    let vy: Vec<usize> = t.val.1.iter().map(|&l| l as usize).collect();
    let calibrator = crate::trust::calibration::fit(method, &opts, vz.view(), &vy)?;
    let ts = crate::trust::calibration::fit(Method::Ts, &opts, vz.view(), &vy)?;
    let summary = FitSummary::compute(&val_data, vz.view(), &vy, &calibrator, &opts, ECE_BINS)?;
    let rep = |logits: &[f32], labels: &[i64], c: &Calibrator| {
        logits_report(logits, labels, k, c)
            .map_err(|e: TrainError| ExportError::Report(e.to_string()))
    };
    let test_raw = rep(&t.test.0, &t.test.1, &Calibrator::Identity)?;
    let test_cal = rep(&t.test.0, &t.test.1, &calibrator)?;
    let test_ts = rep(&t.test.0, &t.test.1, &ts)?;

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
    put("best_epoch", (t.best_epoch as i64).into());
    put("batch_size", (a.batch_size as i64).into());
    put("width", a.model.width.into());
    // Which validation images picked the epoch and fitted the calibrator (issue 6): the split
    // options and the spec `caliper calibrate --data` takes to load the same images.
    match &cfg.validation {
        Validation::Carved(f) => put("val_fraction", (*f).into()),
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
    meta.save(&dir.join("model.toml"))?;

    let calib_path = a.calib_dir.join(format!("{}.json", a.out));
    let features = Features::compute(cfg, &bytes, splits, &t.normalization)?;
    let trust = crate::trust::ood::artifacts::fit_trust_artifacts(
        vz.view(),
        &vy,
        Some(features.view()),
        &calibrator,
    )
    .map_err(|e| ExportError::Report(e.to_string()))?;
    CalibrationFile::new(&a.out, &sha, k, calibrator.clone(), Some(summary.clone()))
        .with_trust(trust)
        .save(&calib_path)?;

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
        "command": command,
    });
    if let Some(rel) = &summary.reliability {
        let png = dir.join("reliability.png");
        let img = super::plot::reliability_png(&[&rel.before, &rel.after]);
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| ExportError::Report(e.to_string()))?;
        crate::fsutil::write_atomic(&png, &bytes).map_err(io(&png))?;
    }
    save_logits(&cfg.run_dir, t)?;
    let rp = dir.join("report.json");
    let text = serde_json::to_vec_pretty(&report).unwrap_or_default();
    crate::fsutil::write_atomic(&rp, &text).map_err(io(&rp))?;
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
