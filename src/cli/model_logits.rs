//! `--model NAME --data SPEC`: logits (and, on request, penultimate features) of a model in the
//! repository over a dataset, every image going through the server's preprocessing
//! (`repository::preprocess`, as the model's `model.toml` says), so offline figures describe
//! what is served. Array datasets (`mnist:test`, ...) are held in memory as shipped; image-file
//! datasets (`folder:DIR`, `manifest:FILE`) are streamed: files are decoded a batch at a time,
//! so memory does not grow with the dataset, and any image size is fine. Used by
//! `caliper calibrate`, `caliper eval` and `caliper eval-ood`.

use std::path::Path;

use anyhow::{Context, bail};
use ndarray::Array2;

use crate::data::files::labels_by_name;
use crate::data::{Dataset, DatasetSpec, ImageFiles};
use crate::repository::preprocess::{ImageLimits, preprocess, preprocess_image};
use crate::repository::{InputSpec, ModelMetadata};
use crate::runtime::ClassifierSession;

/// Images per ONNX Runtime call (and the most decoded images held at once).
const BATCH: usize = 64;

/// What a model produced over a dataset, one row per image in dataset order.
#[derive(Debug, Clone)]
pub struct ModelOutputs {
    /// Raw logits `[N, K]`.
    pub logits: Array2<f64>,
    /// Penultimate features `[N, D]`, when asked for.
    pub features: Option<Array2<f64>>,
}

/// A set of images the model can be run over: each image becomes the model's input through the
/// shared preprocessing.
pub trait ImageSet: Sync {
    /// Number of images.
    fn count(&self) -> usize;
    /// The model input of image `i` (`C * H * W` values, normalised).
    fn input(&self, i: usize, spec: &InputSpec) -> anyhow::Result<Vec<f32>>;
}

impl ImageSet for Dataset {
    fn count(&self) -> usize {
        self.len()
    }
    fn input(&self, i: usize, spec: &InputSpec) -> anyhow::Result<Vec<f32>> {
        Ok(preprocess_image(&self.to_image(i), spec))
    }
}

impl ImageSet for ImageFiles {
    fn count(&self) -> usize {
        self.len()
    }
    fn input(&self, i: usize, spec: &InputSpec) -> anyhow::Result<Vec<f32>> {
        let path = &self.paths[i];
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        preprocess(&bytes, spec, ImageLimits::default())
            .with_context(|| format!("{}", path.display()))
    }
}

/// A dataset named by a spec: arrays in memory, or a list of image files.
#[derive(Debug, Clone)]
pub enum Images {
    /// A bundled or array dataset (`mnist:test`, `npz:...`), decoded.
    Memory(Dataset),
    /// Image files (`folder:DIR`, `manifest:FILE`), decoded batch by batch.
    Files(ImageFiles),
}

impl ImageSet for Images {
    fn count(&self) -> usize {
        match self {
            Images::Memory(d) => d.count(),
            Images::Files(f) => f.count(),
        }
    }
    fn input(&self, i: usize, spec: &InputSpec) -> anyhow::Result<Vec<f32>> {
        match self {
            Images::Memory(d) => d.input(i, spec),
            Images::Files(f) => f.input(i, spec),
        }
    }
}

/// Images and their labels as indices into the model's labels.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// The images.
    pub images: Images,
    /// Label of each image, a class of the model.
    pub labels: Vec<usize>,
}

/// Loads an array dataset spec (e.g. `mnist:test`) from `data_dir` into memory.
pub fn load_spec(data_dir: &Path, spec: &str) -> anyhow::Result<Dataset> {
    let parsed: DatasetSpec = spec.parse().map_err(|e| anyhow::anyhow!("{spec}: {e}"))?;
    parsed
        .load(data_dir)
        .with_context(|| format!("loading {spec}"))
}

/// Opens any dataset spec: image files are listed (not decoded), array datasets loaded.
pub fn open_spec(data_dir: &Path, spec: &str) -> anyhow::Result<Images> {
    let parsed: DatasetSpec = spec.parse().map_err(|e| anyhow::anyhow!("{spec}: {e}"))?;
    match parsed.files() {
        Some(files) => Ok(Images::Files(
            files.with_context(|| format!("listing {spec}"))?,
        )),
        None => Ok(Images::Memory(load_spec(data_dir, spec)?)),
    }
}

/// Opens a labelled dataset for `model`: the classes of image files are matched to the model's
/// labels by name (unknown names are an error naming them; classes without images are
/// allowed and reported); an array dataset's labels are its class indices and must be below
/// the model's label count.
pub fn open_labelled(
    models_dir: &Path,
    model: &str,
    data_dir: &Path,
    spec: &str,
) -> anyhow::Result<Labelled> {
    let meta = ModelMetadata::load(&models_dir.join(model).join("model.toml"))?;
    let images = open_spec(data_dir, spec)?;
    let labels = match &images {
        Images::Memory(data) => {
            if data.num_classes() > meta.labels.len() {
                bail!(
                    "{spec} has {} classes but {model} has {} labels",
                    data.num_classes(),
                    meta.labels.len()
                );
            }
            data.labels.clone()
        }
        Images::Files(files) => {
            let labels = labels_by_name(files, &meta.labels, spec)
                .with_context(|| format!("matching the classes of {spec} to {model}'s labels"))?;
            report_missing(model, spec, &meta.labels, &labels);
            labels
        }
    };
    Ok(Labelled { images, labels })
}

/// Says (info) which of the model's classes have no images in the dataset.
fn report_missing(model: &str, spec: &str, classes: &[String], labels: &[usize]) {
    let counts = crate::data::split::class_counts(labels, classes.len());
    let missing: Vec<&str> = classes
        .iter()
        .zip(&counts)
        .filter(|(_, n)| **n == 0)
        .map(|(c, _)| c.as_str())
        .collect();
    if !missing.is_empty() {
        tracing::info!(
            "{spec}: {} of {model}'s {} classes have no images ({}); fitting on the {} present",
            missing.len(),
            classes.len(),
            crate::data::files::few(&missing),
            classes.len() - missing.len()
        );
    }
}

/// Preprocesses images `range` of `data` on all cores, in order.
fn prepare<S: ImageSet + ?Sized>(
    data: &S,
    range: std::ops::Range<usize>,
    spec: &InputSpec,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let indices: Vec<usize> = range.collect();
    let per = indices.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = indices
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|&i| data.input(i, spec))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(indices.len());
        for w in workers {
            out.extend(
                w.join()
                    .map_err(|_| anyhow::anyhow!("a preprocessing thread panicked"))??,
            );
        }
        Ok(out)
    })
}

/// Runs the model over `data` (`what` names it in errors), `BATCH` images at a time. With
/// `features`, also returns the output model.toml names `output.features`, and errors when it
/// names none.
pub fn run_on<S: ImageSet + ?Sized>(
    models_dir: &Path,
    model: &str,
    data: &S,
    what: &str,
    features: bool,
) -> anyhow::Result<ModelOutputs> {
    let dir = models_dir.join(model);
    let meta = ModelMetadata::load(&dir.join("model.toml"))?;
    let i = &meta.input;
    let mut session = ClassifierSession::new(
        &dir.join("model.onnx"),
        &i.name,
        &meta.output.logits,
        i.image_shape(),
        2,
    )?
    .channels_last(i.channels_last())?;
    if features {
        let name = meta.output.features.as_deref().with_context(|| {
            format!("{model}/model.toml names no features output (output.features)")
        })?;
        session = session.with_features(name)?;
    }
    let batch = session.fixed_batch().unwrap_or(BATCH);
    let n = data.count();
    let (mut rows, mut feats): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let (mut classes, mut dim) = (0, 0);
    let mut flat: Vec<f32> = Vec::with_capacity(batch * session.image_len());
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let inputs =
            prepare(data, start..end, i).with_context(|| format!("preprocessing {what}"))?;
        flat.clear();
        for x in &inputs {
            flat.extend_from_slice(x);
        }
        drop(inputs);
        // A graph with a fixed batch size gets the last batch padded with zeros.
        let take = if session.fixed_batch().is_some() {
            batch
        } else {
            end - start
        };
        flat.resize(take * session.image_len(), 0.0);
        let out = session.run_outputs(&flat)?;
        classes = out.classes;
        rows.extend(
            out.logits[..(end - start) * classes]
                .iter()
                .map(|&v| f64::from(v)),
        );
        if let Some((f, d)) = out.features {
            dim = d;
            feats.extend(f[..(end - start) * d].iter().map(|&v| f64::from(v)));
        }
    }
    Ok(ModelOutputs {
        logits: Array2::from_shape_vec((n, classes), rows)?,
        features: features
            .then(|| Array2::from_shape_vec((n, dim), feats))
            .transpose()?,
    })
}
