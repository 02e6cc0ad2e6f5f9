//! The training loop: seeded split and shuffling, one graph run per batch, per-epoch validation
//! (accuracy, NLL, ECE), a JSON-lines epoch log, a checkpoint per epoch (atomic rename), the
//! best-validation checkpoint and `--resume`; then the export.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use rand::SeedableRng;
use serde::Serialize;

use super::arch::Net;
use super::checkpoint::{Checkpoint, Position};
use super::config::TrainConfig;
use super::dataset::{self, Splits};
use super::runner::{Backend, Evaluator, StateMap, Trainer};
use super::schedule::lr_at;
use super::step::{self, StateKind};
use crate::data::{Augment, BatchIter, BatchOptions, Dataset, Normalization};
use crate::trust::calibration::Calibrator;
use crate::trust::metrics::MetricReport;

/// Errors of a training run (the layers' errors, wrapped).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Bad options.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// The dataset could not be loaded.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The architecture does not fit the data.
    #[error(transparent)]
    Arch(#[from] super::arch::ArchError),
    /// ONNX Runtime failed.
    #[error(transparent)]
    Run(#[from] super::runner::RunError),
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] super::checkpoint::CheckpointError),
    /// Calibrating or scoring failed.
    #[error(transparent)]
    Calibration(#[from] crate::trust::calibration::CalibrationError),
    /// Scoring failed.
    #[error(transparent)]
    Metrics(#[from] crate::trust::metrics::MetricsError),
    /// Writing the log failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The run diverged or cannot continue.
    #[error("{0}")]
    Failed(String),
}

/// Bins of the ECE family in every report (Guo et al.'s 15).
pub const ECE_BINS: usize = 15;

/// All metrics (`caliper::trust::metrics`) of `[n * k]` logits after `calibrator`.
pub fn logits_report(
    logits: &[f32],
    labels: &[i64],
    k: usize,
    calibrator: &Calibrator,
) -> Result<MetricReport, TrainError> {
    let z = ndarray::Array2::from_shape_vec(
        (labels.len(), k),
        logits.iter().map(|&v| v as f64).collect(),
    )
    .map_err(|e| TrainError::Failed(e.to_string()))?;
    let probs = crate::trust::calibration::calibrate_rows(calibrator, z.view())?;
    let y: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    Ok(crate::trust::metrics::evaluate(probs.view(), &y, ECE_BINS)?)
}

/// One line of the JSONL epoch log.
#[derive(Debug, Serialize)]
struct EpochLog {
    epoch: usize,
    updates: u64,
    lr: f64,
    train_loss: f64,
    train_accuracy: f64,
    val: MetricReport,
    images_per_s: f64,
    seconds: f64,
    best_epoch: usize,
}

/// Everything a finished run hands to the export.
#[derive(Debug)]
pub struct Trained {
    /// The network.
    pub net: Net,
    /// Best-validation weights (parameters and buffers).
    pub weights: BTreeMap<String, Vec<f32>>,
    /// Normalisation statistics of the training split.
    pub normalization: Normalization,
    /// Validation logits of the best weights, `[n * K]`, with their labels.
    pub val: (Vec<f32>, Vec<i64>),
    /// Test logits of the best weights.
    pub test: (Vec<f32>, Vec<i64>),
    /// Best validation epoch (1-based) and summary.
    pub best_epoch: usize,
    /// The dataset's class names.
    pub labels: Vec<String>,
    /// Sizes of the train / validation / test splits.
    pub sizes: [usize; 3],
    /// Mean training throughput (images/s) over the epochs run in this process.
    pub images_per_s: f64,
}

/// What must not change across `--resume`. The epoch count may (to extend a finished run);
/// with a cosine schedule that changes the rates, so only a same-length resume is bit-for-bit.
fn config_fingerprint(cfg: &TrainConfig) -> String {
    let a = &cfg.args;
    // A carved split prints its fraction alone, as before `--val-split` existed, so that older
    // checkpoints still resume.
    let validation = match &cfg.validation {
        dataset::Validation::Carved(c) => format!(
            "{}{}{}",
            c.fraction,
            if c.balanced { "|balanced" } else { "" },
            if c.after_fraction {
                "|after_fraction"
            } else {
                ""
            }
        ),
        dataset::Validation::Split(name) => format!("split={name}"),
    };
    // Likewise the head's start is named only when it is not the original He rule.
    let head = match a.head_init {
        super::layers::LinearInit::He => String::new(),
        other => format!("|head={other:?}"),
    };
    format!(
        "{}|{}|{:?}|{:?}|{:?}|{}|{}|{}|{}|{}|{}|{}{head}",
        a.dataset,
        a.model.arch,
        cfg.loss,
        cfg.optimizer,
        cfg.schedule,
        a.model.width,
        a.batch_size,
        a.lr,
        validation,
        a.train_fraction,
        a.seed,
        a.imbalance_ratio
    )
}

/// Logits of a whole dataset through the evaluator, in batches, with weights from `state`.
pub fn predict(
    ev: &mut Evaluator,
    state: &StateMap,
    data: &Dataset,
    norm: &Normalization,
) -> Result<Vec<f32>, TrainError> {
    Ok(predict_outputs(ev, state, data, norm)?.0)
}

/// Logits `[n * K]` and penultimate features `[n * D]` of a whole dataset through the
/// evaluator (the export fits the Mahalanobis OOD detector on the features).
pub fn predict_outputs(
    ev: &mut Evaluator,
    state: &StateMap,
    data: &Dataset,
    norm: &Normalization,
) -> Result<(Vec<f32>, Vec<f32>), TrainError> {
    const EVAL_BATCH: usize = 500;
    let idx: Vec<usize> = (0..data.len()).collect();
    let opts = BatchOptions::eval(EVAL_BATCH, norm.clone());
    let mut out = Vec::with_capacity(data.len() * 16);
    let mut features = Vec::new();
    for (i, chunk) in idx.chunks(EVAL_BATCH).enumerate() {
        let b = crate::data::batch::make_batch(data, chunk, &opts, i);
        let shape = b
            .images
            .shape()
            .iter()
            .map(|&d| d as i64)
            .collect::<Vec<_>>();
        let (x, _) = b.images.into_raw_vec_and_offset();
        let (z, f) = ev.run(x, &shape, state)?;
        out.extend(z);
        features.extend(f);
    }
    Ok((out, features))
}

fn labels_i64(d: &Dataset) -> Vec<i64> {
    d.labels.iter().map(|&l| l as i64).collect()
}

/// Trains according to `cfg` on `splits` and returns the best-validation model (no files
/// besides the run folder are written here).
pub fn train(cfg: &TrainConfig, splits: Splits, augment: Augment) -> Result<Trained, TrainError> {
    let a = &cfg.args;
    let Splits {
        train,
        val,
        test,
        normalization: norm,
        ..
    } = splits;
    if train.len() < a.batch_size {
        return Err(TrainError::Failed(format!(
            "only {} training samples for batch size {}",
            train.len(),
            a.batch_size
        )));
    }
    let train = std::sync::Arc::new(train);
    let input = dataset::sample_shape(&train);
    let k = train.num_classes();
    let net = Net::new(&a.model.arch, &input, k as i64, a.model.width)?.with_head_init(a.head_init);
    let graph = step::training_step(&net, cfg.loss, &cfg.optimizer, false);

    std::fs::create_dir_all(&cfg.run_dir).map_err(|source| TrainError::Io {
        path: cfg.run_dir.display().to_string(),
        source,
    })?;
    let ck_path = cfg.run_dir.join("checkpoint.bin");
    let best_path = cfg.run_dir.join("best.bin");
    let log_path = cfg.run_dir.join("log.jsonl");
    let fingerprint = config_fingerprint(cfg);

    let backend = Backend {
        device: cfg.device,
        threads: a.threads,
        cuda_graph: a.cuda_graph,
    };
    let (mut trainer, mut pos) = if a.resume {
        let ck = Checkpoint::load(&ck_path)?;
        if ck.position.config != fingerprint {
            return Err(TrainError::Failed(format!(
                "{} was written with other settings ({}), not resuming",
                ck_path.display(),
                ck.position.config
            )));
        }
        let mut t = Trainer::with_values(&graph, backend, ck.values)?;
        t.updates = ck.position.updates;
        (t, ck.position)
    } else {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
        let t = Trainer::new(&graph, backend, &mut rng)?;
        // A fresh run starts a fresh log.
        let _ = std::fs::remove_file(&log_path);
        (
            t,
            Position {
                epoch: 0,
                updates: 0,
                best_val_acc: -1.0,
                best_epoch: 0,
                config: fingerprint,
            },
        )
    };
    let weight_names: Vec<String> = graph
        .state
        .iter()
        .filter(|s| s.kind != StateKind::Optim)
        .map(|s| s.spec.name.clone())
        .collect();
    let mut ev = Evaluator::new(
        &step::inference(&net, None, &[]),
        weight_names.clone(),
        a.threads,
        cfg.device,
    )?;

    let steps_per_epoch = train.len() / a.batch_size;
    let mut throughput = Vec::new();
    let last = a.stop_after_epochs.unwrap_or(a.epochs).min(a.epochs);
    for epoch in pos.epoch..last {
        let started = Instant::now();
        // Batches depend only on (seed, epoch, batch index), so a resumed run sees the same
        // batches; a worker thread prepares the next batch while the current step runs.
        let opts = dataset::train_batches(a.batch_size, augment, &norm, a.seed, epoch as u64);
        let batches = BatchIter::new(std::sync::Arc::clone(&train), opts)?;
        let bar = progress_bar(a.no_progress, steps_per_epoch, epoch, a.epochs);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = a.lr;
        for (it, batch) in batches.enumerate() {
            lr = lr_at(
                a.lr,
                &cfg.schedule,
                a.warmup_epochs,
                a.epochs,
                epoch,
                it as f64 / steps_per_epoch as f64,
            );
            let n = batch.labels.len();
            let shape: Vec<i64> = batch.images.shape().iter().map(|&d| d as i64).collect();
            let (x, _) = batch.images.into_raw_vec_and_offset();
            let y = batch.labels.to_vec();
            let r = trainer.step(x, &shape, y.clone(), lr as f32)?;
            if !r.loss.is_finite() {
                return Err(TrainError::Failed(format!(
                    "loss became {} at epoch {} step {it}; lower --lr",
                    r.loss,
                    epoch + 1
                )));
            }
            loss_sum += r.loss as f64;
            correct += r
                .logits
                .chunks_exact(k)
                .zip(&y)
                .filter(|(row, l)| {
                    let z: Vec<f64> = row.iter().map(|&v| v as f64).collect();
                    crate::numeric::argmax(&z) == **l as usize
                })
                .count();
            seen += n;
            let el = started.elapsed().as_secs_f64();
            bar.set_position(it as u64 + 1);
            bar.set_message(format!(
                "loss {:.4} acc {:.2}% {:.0} img/s",
                loss_sum / (it + 1) as f64,
                100.0 * correct as f64 / seen as f64,
                seen as f64 / el
            ));
        }
        let train_secs = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let ips = seen as f64 / train_secs;
        throughput.push(ips);
        let vlogits = predict(&mut ev, trainer.state(), &val, &norm)?;
        let vs = logits_report(&vlogits, &labels_i64(&val), k, &Calibrator::Identity)?;
        pos.epoch = epoch + 1;
        pos.updates = trainer.updates;
        let values = trainer.values()?;
        if vs.accuracy > pos.best_val_acc {
            pos.best_val_acc = vs.accuracy;
            pos.best_epoch = epoch + 1;
            let best: BTreeMap<String, Vec<f32>> = weight_names
                .iter()
                .filter_map(|n| values.get(n).map(|v| (n.clone(), v.clone())))
                .collect();
            Checkpoint {
                position: pos.clone(),
                values: best,
            }
            .save(&best_path)?;
        }
        Checkpoint {
            position: pos.clone(),
            values,
        }
        .save(&ck_path)?;
        let line = EpochLog {
            epoch: epoch + 1,
            updates: trainer.updates,
            lr,
            train_loss: loss_sum / steps_per_epoch as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val: vs.clone(),
            images_per_s: ips,
            seconds: started.elapsed().as_secs_f64(),
            best_epoch: pos.best_epoch,
        };
        append_jsonl(&log_path, &line)?;
        tracing::info!(
            epoch = epoch + 1,
            train_loss = line.train_loss,
            val_acc = vs.accuracy,
            val_nll = vs.nll,
            val_ece = vs.ece,
            images_per_s = ips,
            "epoch done"
        );
    }

    let best = Checkpoint::load(&best_path)?;
    let mut ev_best = Evaluator::new(
        &step::inference(&net, None, &[]),
        weight_names,
        a.threads,
        cfg.device,
    )?;
    let live = best_as_values(&best.values, &net)?;
    let vlogits = predict(&mut ev_best, &live, &val, &norm)?;
    let tlogits = predict(&mut ev_best, &live, &test, &norm)?;
    let images_per_s = if throughput.is_empty() {
        0.0
    } else {
        throughput.iter().sum::<f64>() / throughput.len() as f64
    };
    Ok(Trained {
        sizes: [train.len(), val.len(), test.len()],
        net,
        weights: best.values,
        val: (vlogits, labels_i64(&val)),
        test: (tlogits, labels_i64(&test)),
        best_epoch: best.position.best_epoch,
        labels: train.class_names.clone(),
        normalization: norm,
        images_per_s,
    })
}

fn best_as_values(w: &BTreeMap<String, Vec<f32>>, net: &Net) -> Result<StateMap, TrainError> {
    let mut all = net.params();
    all.extend(net.buffers());
    all.iter()
        .map(|p| {
            let v = w
                .get(&p.name)
                .cloned()
                .ok_or_else(|| TrainError::Failed(format!("best checkpoint lacks {}", p.name)))?;
            let t = ort::value::Tensor::from_array((p.shape.clone(), v))
                .map_err(|e| super::runner::RunError::Ort(e.to_string()))?;
            Ok((p.name.clone(), t))
        })
        .collect()
}

fn append_jsonl<T: Serialize>(path: &std::path::Path, v: &T) -> Result<(), TrainError> {
    let io = |source| TrainError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    let mut line = serde_json::to_vec(v).map_err(|e| TrainError::Failed(e.to_string()))?;
    line.push(b'\n');
    f.write_all(&line).map_err(io)
}

fn progress_bar(hidden: bool, len: usize, epoch: usize, epochs: usize) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
    bar
}
