//! The trainer's data plumbing on top of `caliper::data`: loading a bundled dataset's train and
//! test splits, the seeded stratified validation split and training subset, normalisation from
//! the training split, and the batch options of training and evaluation.

use std::path::Path;
use std::str::FromStr;

use crate::data::split::TrainValSplit;
use crate::data::{Augment, BatchOptions, DataError, Dataset, DatasetSpec, Normalization};

/// The splits a run uses.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Dataset spec name, e.g. "mnist".
    pub name: String,
    /// Training images (the training split minus validation, possibly subsampled).
    pub train: Dataset,
    /// Validation images (held out from the training split; early stopping and calibration).
    pub val: Dataset,
    /// The test split.
    pub test: Dataset,
    /// Normalisation computed on `train`.
    pub normalization: Normalization,
}

/// Loads `NAME:train` and `NAME:test` (see `caliper::data::DatasetSpec`) from `data_dir`.
pub fn load(name: &str, data_dir: &Path) -> Result<(Dataset, Dataset), DataError> {
    let train = DatasetSpec::from_str(&format!("{name}:train"))?.load(data_dir)?;
    let test = DatasetSpec::from_str(&format!("{name}:test"))?.load(data_dir)?;
    Ok((train, test))
}

/// Makes `train` long-tailed with `imbalance_ratio` (1 = unchanged), carves a seeded, stratified
/// validation split out of it, keeps `train_fraction` of the rest (stratified, seeded) and
/// computes the normalisation on what remains. The validation split is therefore as imbalanced
/// as the training data, as it would be in a real long-tailed deployment.
pub fn split(
    name: &str,
    train: &Dataset,
    test: Dataset,
    val_fraction: f64,
    train_fraction: f64,
    imbalance_ratio: f64,
    seed: u64,
) -> Result<Splits, DataError> {
    let (tr, va) = TrainValSplit {
        val_fraction,
        train_fraction,
        imbalance_ratio,
        seed,
    }
    .indices(&train.labels, train.num_classes())?;
    let tr_set = train.subset(&tr);
    let normalization = tr_set.channel_stats();
    Ok(Splits {
        name: name.into(),
        train: tr_set,
        val: train.subset(&va),
        test,
        normalization,
    })
}

/// Augmentation for a dataset when `--augment auto`: the CIFAR recipe (pad 4, crop, flip) for
/// CIFAR-10, none otherwise (flipping digits changes them).
pub fn auto_augment(name: &str) -> Augment {
    if name.starts_with("cifar10") {
        Augment::CIFAR
    } else {
        Augment::NONE
    }
}

/// Options of one training epoch's batches.
pub fn train_batches(
    batch_size: usize,
    augment: Augment,
    normalization: &Normalization,
    seed: u64,
    epoch: u64,
) -> BatchOptions {
    BatchOptions {
        batch_size,
        shuffle: true,
        // GCE depends on the batch: a final tiny batch would be a different loss.
        drop_last: true,
        augment,
        normalization: normalization.clone(),
        seed,
        epoch,
        workers: 1,
        prefetch: 2,
    }
}

/// Per-sample shape `[C, H, W]` as graph dimensions.
pub fn sample_shape(d: &Dataset) -> Vec<i64> {
    vec![
        d.shape.channels as i64,
        d.shape.height as i64,
        d.shape.width as i64,
    ]
}
