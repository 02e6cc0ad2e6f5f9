//! `--model NAME --data SPEC`: logits (and, on request, penultimate features) of a model in the
//! repository over a dataset split, with the model's own preprocessing from `model.toml` (the
//! data layer's eval batches, the runtime's ONNX session). Used by `caliper calibrate`,
//! `caliper eval` and `caliper eval-ood`.

use std::path::Path;

use anyhow::{Context, bail};
use ndarray::Array2;

use crate::data::batch::make_batch;
use crate::data::{BatchOptions, Dataset, DatasetSpec, Normalization};
use crate::repository::ModelMetadata;
use crate::runtime::ClassifierSession;

/// Images per ONNX Runtime call.
const BATCH: usize = 256;

/// What a model produced over a dataset, one row per image in dataset order.
#[derive(Debug, Clone)]
pub struct ModelOutputs {
    /// Raw logits `[N, K]`.
    pub logits: Array2<f64>,
    /// Penultimate features `[N, D]`, when asked for.
    pub features: Option<Array2<f64>>,
}

/// Loads a dataset spec (e.g. `mnist:test`) from `data_dir`.
pub fn load_spec(data_dir: &Path, spec: &str) -> anyhow::Result<Dataset> {
    let parsed: DatasetSpec = spec.parse().map_err(|e| anyhow::anyhow!("{spec}: {e}"))?;
    parsed
        .load(data_dir)
        .with_context(|| format!("loading {spec}"))
}

/// Errors when `data` has more classes than the model has labels (its labels would index past
/// the model's classes). Only labelled uses need this: OOD sets may have any classes.
pub fn check_labels(
    models_dir: &Path,
    model: &str,
    data: &Dataset,
    what: &str,
) -> anyhow::Result<()> {
    let meta = ModelMetadata::load(&models_dir.join(model).join("model.toml"))?;
    if data.num_classes() > meta.labels.len() {
        bail!(
            "{what} has {} classes but {model} has {} labels",
            data.num_classes(),
            meta.labels.len()
        );
    }
    Ok(())
}

/// Runs the model over `data` (`what` names it in errors). With `features`, also returns the
/// output model.toml names `output.features`, and errors when it names none.
pub fn run_on(
    models_dir: &Path,
    model: &str,
    data: &Dataset,
    what: &str,
    features: bool,
) -> anyhow::Result<ModelOutputs> {
    let dir = models_dir.join(model);
    let meta = ModelMetadata::load(&dir.join("model.toml"))?;
    let i = &meta.input;
    let shape = [i.channels, i.height, i.width];
    let got = [data.shape.channels, data.shape.height, data.shape.width];
    if shape != got {
        bail!("{model} expects images {shape:?} (C, H, W) but {what} has {got:?}");
    }
    let mut session = ClassifierSession::new(
        &dir.join("model.onnx"),
        &i.name,
        &meta.output.logits,
        shape,
        2,
    )?;
    if features {
        let name = meta.output.features.as_deref().with_context(|| {
            format!("{model}/model.toml names no features output (output.features)")
        })?;
        session = session.with_features(name)?;
    }
    let norm = Normalization {
        mean: i.mean.clone(),
        std: i.std.clone(),
    };
    let batch = session.fixed_batch().unwrap_or(BATCH);
    let opts = BatchOptions::eval(batch, norm);
    let n = data.len();
    let (mut rows, mut feats): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let (mut classes, mut dim) = (0, 0);
    let order: Vec<usize> = (0..n).collect();
    for (b, chunk) in order.chunks(batch).enumerate() {
        let images = make_batch(data, chunk, &opts, b).images;
        let mut flat: Vec<f32> = images.iter().copied().collect();
        // A graph with a fixed batch size gets the last batch padded with zeros.
        flat.resize(batch * session.image_len(), 0.0);
        let take = if session.fixed_batch().is_some() {
            batch
        } else {
            chunk.len()
        };
        let out = session.run_outputs(&flat[..take * session.image_len()])?;
        classes = out.classes;
        rows.extend(
            out.logits[..chunk.len() * classes]
                .iter()
                .map(|&v| f64::from(v)),
        );
        if let Some((f, d)) = out.features {
            dim = d;
            feats.extend(f[..chunk.len() * d].iter().map(|&v| f64::from(v)));
        }
    }
    Ok(ModelOutputs {
        logits: Array2::from_shape_vec((n, classes), rows)?,
        features: features
            .then(|| Array2::from_shape_vec((n, dim), feats))
            .transpose()?,
    })
}
