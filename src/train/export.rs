//! Export of a trained model to the repository: `models/NAME/model.onnx` (inference graph,
//! weights baked in), `models/NAME/model.toml` (labels, preprocessing, provenance, sha256),
//! `calib/NAME.json` (calibrator fitted on the validation split) and `models/NAME/report.json`.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::config::TrainConfig;
use super::fit::{Trained, summarize};
use super::step;
use crate::calibration::{CalibrationFile, Calibrator, SCHEMA_VERSION};
use crate::repository::{
    InputSpec, METADATA_SCHEMA_VERSION, ModelMetadata, OutputSpec, Provenance, ResizePolicy,
};

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
    /// The calibration file could not be written.
    #[error(transparent)]
    Calibration(#[from] crate::calibration::CalibrationError),
}

/// The temperature minimising the NLL of `logits` (`[n * k]`) at labels, by bisection on the
/// derivative in beta = 1/T (the NLL is convex in beta, method.md §2).
/// TO BE REPLACED by `caliper::calibration`'s fitting once it is on main.
pub fn fit_temperature(logits: &[f32], labels: &[i64], k: usize) -> f64 {
    // d/dbeta NLL = mean_i (E_{softmax(beta z_i)}[z_i] - z_{i,y_i}), increasing in beta.
    let deriv = |beta: f64| -> f64 {
        let mut s = 0.0;
        for (row, &y) in logits.chunks_exact(k).zip(labels) {
            let z: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            let p = crate::numeric::softmax_with_temperature(&z, 1.0 / beta);
            let ez: f64 = p.iter().zip(&z).map(|(p, z)| p * z).sum();
            s += ez - z[y as usize];
        }
        s / labels.len().max(1) as f64
    };
    let (mut lo, mut hi) = (1e-3f64.ln(), 1e3f64.ln());
    if deriv(lo.exp()) >= 0.0 {
        return 1.0 / lo.exp();
    }
    if deriv(hi.exp()) <= 0.0 {
        return 1.0 / hi.exp();
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if deriv(mid.exp()) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    1.0 / (0.5 * (lo + hi)).exp()
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
pub fn export(cfg: &TrainConfig, t: &Trained, command: &str) -> Result<Exported, ExportError> {
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
    let temperature = fit_temperature(&t.val.0, &t.val.1, k);
    let val_raw = summarize(&t.val.0, &t.val.1, k, 1.0);
    let val_ts = summarize(&t.val.0, &t.val.1, k, temperature);
    let test_raw = summarize(&t.test.0, &t.test.1, k, 1.0);
    let test_ts = summarize(&t.test.0, &t.test.1, k, temperature);

    let mut hp = toml::Table::new();
    let mut put = |k: &str, v: toml::Value| {
        hp.insert(k.into(), v);
    };
    put("optimizer", cfg.optimizer.name().into());
    put("lr", a.lr.into());
    put("schedule", a.schedule.clone().into());
    put("warmup_epochs", a.warmup_epochs.into());
    if let super::optim::Optimizer::Sgd { momentum, .. } = cfg.optimizer {
        put("momentum", (momentum as f64).into());
    }
    put("nesterov", a.model.nesterov.into());
    put("weight_decay", (a.model.weight_decay as f64).into());
    put("epochs", (a.epochs as i64).into());
    put("best_epoch", (t.best_epoch as i64).into());
    put("batch_size", (a.batch_size as i64).into());
    put("width", a.model.width.into());
    put("val_fraction", a.val_fraction.into());
    put("train_fraction", a.train_fraction.into());
    put("train_samples", (t.sizes[0] as i64).into());
    put("val_samples", (t.sizes[1] as i64).into());
    put("device", a.device.clone().into());
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
            mean: t.mean.clone(),
            std: t.std.clone(),
            resize: ResizePolicy::Stretch,
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
        },
    };
    meta.save(&dir.join("model.toml"))?;

    let calib_path = a.calib_dir.join(format!("{}.json", a.out));
    CalibrationFile {
        schema_version: SCHEMA_VERSION,
        model: a.out.clone(),
        model_sha256: sha.clone(),
        num_classes: k,
        calibrator: Calibrator::Ts { temperature },
        fit: Some(json!({
            "split": "validation",
            "samples": t.val.1.len(),
            "objective": "nll",
            "before": val_raw,
            "after": val_ts,
        })),
    }
    .save(&calib_path)?;

    let report = json!({
        "model": a.out,
        "sha256": sha,
        "dataset": a.dataset,
        "arch": a.model.arch,
        "loss": cfg.loss.name(),
        "best_epoch": t.best_epoch,
        "train_images_per_s": t.images_per_s,
        "temperature": temperature,
        "validation": {"uncalibrated": val_raw, "ts": val_ts},
        "test": {"samples": t.test.1.len(), "uncalibrated": test_raw, "ts": test_ts},
        "command": command,
    });
    let rp = dir.join("report.json");
    let text = serde_json::to_vec_pretty(&report).unwrap_or_default();
    crate::fsutil::write_atomic(&rp, &text).map_err(io(&rp))?;
    Ok(Exported {
        model: model_path,
        calib: calib_path,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_fit_recovers_a_known_temperature() {
        // Labels drawn from softmax(z / 2): the NLL-optimal temperature is near 2.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (n, k) = (4000, 4);
        let mut logits = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..n {
            let z: Vec<f64> = (0..k).map(|_| rng.random_range(-4.0..4.0)).collect();
            let p = crate::numeric::softmax_with_temperature(&z, 2.0);
            let u: f64 = rng.random();
            let mut acc = 0.0;
            let y = p
                .iter()
                .position(|q| {
                    acc += q;
                    u < acc
                })
                .unwrap_or(k - 1);
            logits.extend(z.iter().map(|&v| v as f32));
            labels.push(y as i64);
        }
        let t = fit_temperature(&logits, &labels, k);
        assert!((t - 2.0).abs() < 0.15, "{t}");
    }
}
