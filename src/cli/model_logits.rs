//! `--model NAME --data SPEC`: logits of a model in the repository over a dataset split, with
//! the model's own preprocessing from `model.toml` (the data layer's eval batches, the runtime's
//! ONNX session). Used by `caliper calibrate` and `caliper eval`.

use std::path::Path;

use anyhow::{Context, bail};
use ndarray::Array2;

use super::npy::Loaded;
use crate::data::batch::make_batch;
use crate::data::{BatchOptions, DatasetSpec, Normalization};
use crate::repository::ModelMetadata;
use crate::runtime::ClassifierSession;

/// Images per ONNX Runtime call.
const BATCH: usize = 256;

/// Runs the model over the dataset split and returns its logits and the split's labels.
pub fn run(models_dir: &Path, model: &str, data_dir: &Path, spec: &str) -> anyhow::Result<Loaded> {
    let dir = models_dir.join(model);
    let meta = ModelMetadata::load(&dir.join("model.toml"))?;
    let parsed: DatasetSpec = spec
        .parse()
        .map_err(|e| anyhow::anyhow!("--data {spec}: {e}"))?;
    let data = parsed
        .load(data_dir)
        .with_context(|| format!("loading --data {spec}"))?;
    let i = &meta.input;
    let shape = [i.channels, i.height, i.width];
    let got = [data.shape.channels, data.shape.height, data.shape.width];
    if shape != got {
        bail!("{model} expects images {shape:?} (C, H, W) but {spec} has {got:?}");
    }
    if data.num_classes() > meta.labels.len() {
        bail!(
            "{spec} has {} classes but {model} has {} labels",
            data.num_classes(),
            meta.labels.len()
        );
    }
    let mut session = ClassifierSession::new(
        &dir.join("model.onnx"),
        &i.name,
        &meta.output.logits,
        shape,
        2,
    )?;
    let norm = Normalization {
        mean: i.mean.clone(),
        std: i.std.clone(),
    };
    let batch = session.fixed_batch().unwrap_or(BATCH);
    let opts = BatchOptions::eval(batch, norm);
    let n = data.len();
    let mut rows: Vec<f64> = Vec::new();
    let mut classes = 0;
    let order: Vec<usize> = (0..n).collect();
    for (b, chunk) in order.chunks(batch).enumerate() {
        let images = make_batch(&data, chunk, &opts, b).images;
        let mut flat: Vec<f32> = images.iter().copied().collect();
        // A graph with a fixed batch size gets the last batch padded with zeros.
        flat.resize(batch * session.image_len(), 0.0);
        let take = if session.fixed_batch().is_some() {
            batch
        } else {
            chunk.len()
        };
        let (logits, k) = session.run(&flat[..take * session.image_len()])?;
        classes = k;
        rows.extend(logits[..chunk.len() * k].iter().map(|&v| f64::from(v)));
    }
    let logits = Array2::from_shape_vec((n, classes), rows)?;
    Ok(Loaded {
        logits,
        labels: data.labels.clone(),
        source: format!("{model} on {spec}"),
    })
}
