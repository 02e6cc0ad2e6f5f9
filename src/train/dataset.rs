//! The trainer's data plumbing on top of `caliper::data`: loading a bundled dataset's train and
//! test splits, the validation images (a seeded stratified split carved out of the training
//! split, or the dataset's own validation split), the training subset, normalisation from the
//! training images only, and the batch options of training and evaluation.
//!
//! Image-file datasets (`folder:DIR`, `manifest:FILE`) define their own classes (folder names or
//! manifest labels) and are decoded at the model's input size (`--input-size H,W`, default the
//! median training image size) by the server's preprocessing (`repository::preprocess`), so
//! the images trained on are the images served. `DIR/{train,val,test}/<class>/*` gives the
//! splits; a folder of classes (or a manifest) gets a seeded, stratified test carve-out of
//! [`TEST_FRACTION`], then the validation carve-out like any dataset.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::data::files::labels_by_name;
use crate::data::spec::{SplitPart, bundled_has_split, datasets_with_split};
use crate::data::split::TrainValSplit;
use crate::data::{
    Augment, BatchOptions, DataError, Dataset, DatasetSpec, ImageFiles, ImageShape, Normalization,
};
use crate::repository::ResizePolicy;
use crate::repository::preprocess::{ImageLimits, decode, file_dimensions, resize_to_u8};

/// Fraction of a single-split image folder or manifest held out (seeded, stratified) as the test
/// split.
pub const TEST_FRACTION: f64 = 0.2;

/// The resize policy the export writes to `model.toml`: training images are resized the same way.
const RESIZE: ResizePolicy = ResizePolicy::Stretch;

/// The splits a run uses.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Dataset spec name, e.g. "mnist".
    pub name: String,
    /// Training images (the training split minus validation, possibly subsampled).
    pub train: Dataset,
    /// Validation images (early stopping and calibration): held out from the training split, or
    /// the dataset's own validation split (see [`Validation`]).
    pub val: Dataset,
    /// The test split.
    pub test: Dataset,
    /// Normalisation computed on `train`.
    pub normalization: Normalization,
}

/// Where a run's validation images come from. They pick the best epoch, and the export fits the
/// calibrator, the OOD thresholds and the conformal quantiles on them.
#[derive(Debug, Clone, PartialEq)]
pub enum Validation {
    /// `--val-fraction F` (with `--val-balanced`, `--val-after-fraction`): a seeded fraction
    /// of the training split.
    Carved(Carve),
    /// `--val-split NAME`: the dataset's own split `DATASET:NAME` (MedMNIST's `val`, issue 6);
    /// the whole training split is then trained on.
    Split(String),
}

/// How a validation split is carved out of the training split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Carve {
    /// `--val-fraction`: of each class, or with `balanced` of the rarest class.
    pub fraction: f64,
    /// `--val-balanced`: the same number of every class (long-tailed data, issue 18).
    pub balanced: bool,
    /// `--val-after-fraction`: carved after `--train-fraction`, so it scales with it.
    pub after_fraction: bool,
}

impl Carve {
    /// `fraction` of each class, carved before `--train-fraction` (the original split).
    pub fn stratified(fraction: f64) -> Self {
        Carve {
            fraction,
            balanced: false,
            after_fraction: false,
        }
    }

    /// The trainer's split of the training images with these options.
    pub fn split(&self, train_fraction: f64, imbalance_ratio: f64, seed: u64) -> TrainValSplit {
        TrainValSplit {
            val_fraction: self.fraction,
            train_fraction,
            imbalance_ratio,
            seed,
            balanced: self.balanced,
            val_after_fraction: self.after_fraction,
        }
    }
}

impl Validation {
    /// `--val-split NAME` for `dataset`, checked without loading anything: the split must not be
    /// `train` or `test`, a bundled dataset must ship it, and for other kinds (`npz:PATH`)
    /// `DATASET:NAME` must be a valid spec (loading tells whether the archive holds it). A
    /// `dataset` that is no spec name at all passes (loading it reports that error).
    pub fn own_split(dataset: &str, name: &str) -> Result<Self, String> {
        if name == "train" || name == "test" {
            return Err(format!(
                "--val-split must name a split other than train and test, got {name:?} \
                 (validating on the training or test images would leak them)"
            ));
        }
        let parses = |split: &str| DatasetSpec::from_str(&format!("{dataset}:{split}")).is_ok();
        let ok =
            bundled_has_split(dataset, name).unwrap_or_else(|| parses(name) || !parses("train"));
        if ok {
            return Ok(Validation::Split(name.into()));
        }
        Err(format!(
            "--val-split {name}: dataset {dataset} has no split named {name:?} (datasets with \
             one: {}); use --val-fraction to carve validation images out of its training split",
            datasets_with_split(name).join(", ")
        ))
    }

    /// The dataset spec of the validation images of a run on `dataset`: `pneumonia:val`, or
    /// `mnist:train[val=0.1,seed=0]` for a carved split. `caliper calibrate --data SPEC` loads
    /// exactly these images; the export records it as the model's provenance.
    pub fn spec(
        &self,
        dataset: &str,
        train_fraction: f64,
        imbalance_ratio: f64,
        seed: u64,
    ) -> Result<DatasetSpec, DataError> {
        match self {
            Validation::Split(name) => split_spec(dataset, name),
            Validation::Carved(carve) => Ok(DatasetSpec::Selected {
                base: Box::new(train_test_specs(dataset, seed)?.0),
                part: SplitPart::Val,
                split: carve.split(train_fraction, imbalance_ratio, seed),
            }),
        }
    }
}

/// The image-file spec `dataset` names (`folder:DIR`, `manifest:FILE`), if it names one.
pub fn file_dataset(dataset: &str) -> Option<DatasetSpec> {
    DatasetSpec::from_str(dataset)
        .ok()
        .filter(|s| matches!(s, DatasetSpec::Folder(_) | DatasetSpec::Manifest(_)))
}

/// The split `name` of `dataset` as a spec: `DATASET:NAME`, or `folder:DIR/NAME` for a folder of
/// split folders.
fn split_spec(dataset: &str, name: &str) -> Result<DatasetSpec, DataError> {
    match file_dataset(dataset) {
        Some(DatasetSpec::Folder(dir)) => Ok(DatasetSpec::Folder(dir.join(name))),
        Some(_) => Err(DataError::Spec {
            spec: dataset.into(),
            reason: format!("a manifest has no split {name:?}: use --val-fraction"),
        }),
        None => DatasetSpec::from_str(&format!("{dataset}:{name}")),
    }
}

/// The training and test images of `dataset` as specs: `NAME:train` and `NAME:test`; for a folder
/// of split folders `folder:DIR/train` and `folder:DIR/test`; for a folder of classes (or a
/// manifest, or split folders without `test`) the two sides of a seeded [`TEST_FRACTION`]
/// carve-out.
pub fn train_test_specs(dataset: &str, seed: u64) -> Result<(DatasetSpec, DatasetSpec), DataError> {
    let carve = |base: DatasetSpec| {
        let split = Carve::stratified(TEST_FRACTION).split(1.0, 1.0, seed);
        let side = |part| DatasetSpec::Selected {
            base: Box::new(base.clone()),
            part,
            split,
        };
        (side(SplitPart::Fit), side(SplitPart::Val))
    };
    Ok(match file_dataset(dataset) {
        Some(DatasetSpec::Folder(dir)) if dir.join("train").is_dir() => {
            let train = DatasetSpec::Folder(dir.join("train"));
            if dir.join("test").is_dir() {
                (train, DatasetSpec::Folder(dir.join("test")))
            } else {
                carve(train)
            }
        }
        Some(spec) => carve(spec),
        None => (
            DatasetSpec::from_str(&format!("{dataset}:train"))?,
            DatasetSpec::from_str(&format!("{dataset}:test"))?,
        ),
    })
}

/// Loads `NAME:train` and `NAME:test` (see `caliper::data::DatasetSpec`) from `data_dir`.
pub fn load(name: &str, data_dir: &Path) -> Result<(Dataset, Dataset), DataError> {
    let train = DatasetSpec::from_str(&format!("{name}:train"))?.load(data_dir)?;
    let test = DatasetSpec::from_str(&format!("{name}:test"))?.load(data_dir)?;
    Ok((train, test))
}

/// Loads every split of a run on dataset `name`: train and test ([`load`], or the image files of
/// [`train_test_specs`] decoded at `input_size` (`[H, W]`, default the median training image
/// size)), and the validation images per `validation` ([`split`] or [`with_own_validation`]).
pub fn load_splits(
    name: &str,
    data_dir: &Path,
    validation: &Validation,
    train_fraction: f64,
    imbalance_ratio: f64,
    seed: u64,
    input_size: Option<[usize; 2]>,
) -> Result<Splits, DataError> {
    let (train, test, shape) = if file_dataset(name).is_some() {
        let (train_spec, test_spec) = train_test_specs(name, seed)?;
        let train_files = listed(&train_spec)?;
        let shape = input_shape(&train_files, input_size)?;
        tracing::info!(
            train = %train_spec, test = %test_spec, ?shape,
            "image files decoded at the model's input size"
        );
        let train = decode_files(
            &train_files,
            &train_files.labels,
            &train_files.class_names,
            shape,
        )?;
        let test = decode_named(&listed(&test_spec)?, &train.class_names, shape, "test")?;
        (train, test, Some(shape))
    } else {
        let (train, test) = load(name, data_dir)?;
        (train, test, None)
    };
    match validation {
        Validation::Carved(carve) => split_with(
            name,
            &train,
            test,
            carve.split(train_fraction, imbalance_ratio, seed),
        ),
        Validation::Split(_) => {
            let spec = validation.spec(name, train_fraction, imbalance_ratio, seed)?;
            let val = match shape {
                Some(shape) => {
                    decode_named(&listed(&spec)?, &train.class_names, shape, "validation")?
                }
                None => spec.load(data_dir)?,
            };
            with_own_validation(
                name,
                &train,
                val,
                test,
                train_fraction,
                imbalance_ratio,
                seed,
            )
        }
    }
}

/// The files of a file-based spec.
fn listed(spec: &DatasetSpec) -> Result<ImageFiles, DataError> {
    spec.files().unwrap_or_else(|| {
        Err(DataError::Spec {
            spec: spec.to_string(),
            reason: "not an image-file dataset".into(),
        })
    })
}

/// The model input of an image-file dataset: grey if its first image is grey, else RGB; `size`
/// `[H, W]`, or the median height and width of the images (from their headers), each rounded to
/// a multiple of 4 (the architectures pool twice by 2).
fn input_shape(files: &ImageFiles, size: Option<[usize; 2]>) -> Result<ImageShape, DataError> {
    let first = &files.paths[0];
    let channels = if decode_path(first)?.color().has_color() {
        3
    } else {
        1
    };
    let [height, width] = match size {
        Some(s) => s,
        None => {
            let mut hs = Vec::with_capacity(files.len());
            let mut ws = Vec::with_capacity(files.len());
            for p in &files.paths {
                let (w, h) = file_dimensions(p).map_err(|e| DataError::Decode {
                    path: p.clone(),
                    detail: e.to_string(),
                })?;
                hs.push(h as usize);
                ws.push(w as usize);
            }
            [median_rounded(&mut hs), median_rounded(&mut ws)]
        }
    };
    Ok(ImageShape {
        channels,
        height,
        width,
    })
}

/// The median (upper one of an even count), rounded to the nearest multiple of 4, at least 4.
fn median_rounded(v: &mut [usize]) -> usize {
    v.sort_unstable();
    let m = v.get(v.len() / 2).copied().unwrap_or(4);
    ((m + 2) / 4 * 4).max(4)
}

fn decode_path(path: &Path) -> Result<image::DynamicImage, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode(&bytes, ImageLimits::default()).map_err(|e| DataError::Decode {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Decodes `files` whose class names are matched to `classes` by name.
fn decode_named(
    files: &ImageFiles,
    classes: &[String],
    shape: ImageShape,
    what: &str,
) -> Result<Dataset, DataError> {
    let labels = labels_by_name(files, classes, what)?;
    decode_files(files, &labels, classes, shape)
}

/// Decodes every file (on all cores) with the server's decoder, resized to `shape` with the
/// policy the export records.
fn decode_files(
    files: &ImageFiles,
    labels: &[usize],
    classes: &[String],
    shape: ImageShape,
) -> Result<Dataset, DataError> {
    let per = shape.len();
    let mut images = vec![0u8; files.len() * per];
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = files
            .paths
            .chunks(chunk)
            .zip(images.chunks_mut(chunk * per))
            .map(|(paths, out)| {
                s.spawn(move || -> Result<(), DataError> {
                    for (path, dst) in paths.iter().zip(out.chunks_exact_mut(per)) {
                        let img = decode_path(path)?;
                        let px =
                            resize_to_u8(&img, shape.channels, shape.height, shape.width, RESIZE);
                        dst.copy_from_slice(&px);
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("image decoding thread panicked"))
    })?;
    Dataset::new(
        &files.origin,
        shape,
        images,
        labels.to_vec(),
        classes.to_vec(),
    )
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
    let carve = Carve::stratified(val_fraction);
    split_with(
        name,
        train,
        test,
        carve.split(train_fraction, imbalance_ratio, seed),
    )
}

/// Like [`split`], with every option of the trainer's split (balanced validation, validation
/// after the training fraction).
pub fn split_with(
    name: &str,
    train: &Dataset,
    test: Dataset,
    split: TrainValSplit,
) -> Result<Splits, DataError> {
    let (tr, va) = split.indices(&train.labels, train.num_classes())?;
    Ok(assemble(name, train, &tr, train.subset(&va), test))
}

/// Like [`split`], but validates on `val`, the dataset's own validation split: the long tail and
/// `train_fraction` select the training images (same selections and seeds as [`split`] with no
/// images held out) and leave `val` as shipped. The normalisation still comes from the training
/// images only. `val` must have the training images' shape and classes.
pub fn with_own_validation(
    name: &str,
    train: &Dataset,
    mut val: Dataset,
    test: Dataset,
    train_fraction: f64,
    imbalance_ratio: f64,
    seed: u64,
) -> Result<Splits, DataError> {
    let origin = PathBuf::from(format!("{name} (validation split)"));
    if val.shape != train.shape {
        return Err(DataError::ShapeMismatch {
            path: origin,
            detail: format!(
                "validation images are {:?}, training images {:?}",
                val.shape, train.shape
            ),
        });
    }
    let k = train.num_classes();
    if let Some((index, &label)) = val.labels.iter().enumerate().find(|(_, l)| **l >= k) {
        return Err(DataError::LabelOutOfRange {
            path: origin,
            index,
            label: label as u64,
            classes: k,
        });
    }
    // Same labels, same classes: name them as training does (an archive without names numbers
    // only up to its own largest label).
    val.class_names = train.class_names.clone();
    let (tr, _) = Carve::stratified(0.0)
        .split(train_fraction, imbalance_ratio, seed)
        .indices(&train.labels, k)?;
    Ok(assemble(name, train, &tr, val, test))
}

/// The training images at `tr`, their normalisation, and the other two splits.
fn assemble(name: &str, train: &Dataset, tr: &[usize], val: Dataset, test: Dataset) -> Splits {
    let tr_set = train.subset(tr);
    let normalization = tr_set.channel_stats();
    Splits {
        name: name.into(),
        train: tr_set,
        val,
        test,
        normalization,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array3};
    use ndarray_npy::NpzWriter;

    /// A MedMNIST-style archive: 8 training images of 2x2 (labels 0,1,0,1,...), 3 validation
    /// images (labels 0 only, so its own class count is 1), 2 test images; `val_hw` sets the
    /// validation images' size.
    fn archive(dir: &Path, val_hw: usize) -> PathBuf {
        let p = dir.join("t.npz");
        let mut w = NpzWriter::new(std::fs::File::create(&p).unwrap());
        let images = |n: usize, hw: usize, base: usize| {
            Array3::from_shape_fn((n, hw, hw), |(i, y, x)| (base + i * 4 + y * 2 + x) as u8)
        };
        w.add_array("train_images", &images(8, 2, 0)).unwrap();
        w.add_array("train_labels", &Array1::from_shape_fn(8, |i| (i % 2) as u8))
            .unwrap();
        w.add_array("val_images", &images(3, val_hw, 200)).unwrap();
        w.add_array("val_labels", &Array1::from(vec![0u8; 3]))
            .unwrap();
        w.add_array("test_images", &images(2, 2, 100)).unwrap();
        w.add_array("test_labels", &Array1::from(vec![1u8, 0]))
            .unwrap();
        w.finish().unwrap();
        p
    }

    #[test]
    fn own_validation_split_is_loaded_as_shipped_and_train_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("npz:{}", archive(dir.path(), 2).display());
        let own = Validation::own_split(&name, "val").unwrap();
        let s = load_splits(&name, dir.path(), &own, 1.0, 1.0, 0, None).unwrap();
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (8, 3, 2));
        assert_eq!(s.val.image(0), &[200, 201, 202, 203]);
        // The validation archive numbers only its own labels; it gets the training classes.
        assert_eq!(s.val.class_names, ["0", "1"]);
        // Normalisation from the training images only (pixels 0..31, not the val's 200+).
        assert_eq!(s.normalization, s.train.channel_stats());
        assert!(s.normalization.mean[0] < 0.1);
        // train_fraction still subsamples training (stratified), never validation.
        let half = load_splits(&name, dir.path(), &own, 0.5, 1.0, 0, None).unwrap();
        assert_eq!((half.train.class_counts(), half.val.len()), (vec![2, 2], 3));
        // The carved split of the same archive holds validation images out of train instead.
        let carved = load_splits(
            &name,
            dir.path(),
            &Validation::Carved(Carve::stratified(0.25)),
            1.0,
            1.0,
            0,
            None,
        )
        .unwrap();
        assert_eq!((carved.train.len(), carved.val.len()), (6, 2));
    }

    #[test]
    fn validation_specs_name_the_images_calibrate_would_load() {
        let own = Validation::Split("val".into());
        assert_eq!(
            own.spec("pneumonia", 1.0, 1.0, 3).unwrap().to_string(),
            "pneumonia:val"
        );
        let carved = Validation::Carved(Carve::stratified(0.1));
        assert_eq!(
            carved.spec("mnist", 0.5, 1.0, 3).unwrap().to_string(),
            "mnist:train[val=0.1,seed=3,train_fraction=0.5]"
        );
        assert!(carved.spec("imagenet", 1.0, 1.0, 0).is_err());
    }

    #[test]
    fn image_folders_name_their_splits_as_specs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // A folder of classes: the test split and the validation split are seeded carve-outs.
        let name = format!("folder:{d}");
        let (train, test) = train_test_specs(&name, 3).unwrap();
        assert_eq!(train.to_string(), format!("folder:{d}[fit=0.2,seed=3]"));
        assert_eq!(test.to_string(), format!("folder:{d}[val=0.2,seed=3]"));
        assert_eq!(
            Validation::Carved(Carve::stratified(0.1))
                .spec(&name, 1.0, 1.0, 3)
                .unwrap()
                .to_string(),
            format!("folder:{d}[fit=0.2,seed=3][val=0.1,seed=3]")
        );
        // Split folders are used as they are.
        std::fs::create_dir_all(dir.path().join("train")).unwrap();
        std::fs::create_dir_all(dir.path().join("test")).unwrap();
        let (train, test) = train_test_specs(&name, 3).unwrap();
        assert_eq!(train.to_string(), format!("folder:{d}/train"));
        assert_eq!(test.to_string(), format!("folder:{d}/test"));
        let own = Validation::own_split(&name, "val").unwrap();
        assert_eq!(
            own.spec(&name, 1.0, 1.0, 0).unwrap().to_string(),
            format!("folder:{d}/val")
        );
        assert_eq!(median_rounded(&mut [31, 50, 33]), 32);
        assert_eq!(median_rounded(&mut [1]), 4);
    }

    #[test]
    fn a_missing_or_mismatched_validation_split_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("npz:{}", archive(dir.path(), 3).display());
        let error = |split: &str| {
            let own = Validation::Split(split.into());
            load_splits(&name, dir.path(), &own, 1.0, 1.0, 0, None)
                .unwrap_err()
                .to_string()
        };
        let e = error("val");
        assert!(
            e.contains("validation images are") && e.contains("height: 3"),
            "{e}"
        );
        let e = error("dev");
        assert!(e.contains("no arrays dev_images and dev_labels"), "{e}");
        // A label the training split does not have.
        let shape = crate::data::ImageShape {
            channels: 1,
            height: 1,
            width: 1,
        };
        let set = |labels: Vec<usize>, k| {
            let n = labels.len();
            Dataset::new(
                Path::new("x"),
                shape,
                vec![0; n],
                labels,
                crate::data::numbered_classes(k),
            )
            .unwrap()
        };
        let e = with_own_validation(
            "bad",
            &set(vec![0, 1], 2),
            set(vec![2], 3),
            set(vec![0], 2),
            1.0,
            1.0,
            0,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                DataError::LabelOutOfRange {
                    label: 2,
                    classes: 2,
                    ..
                }
            ),
            "{e}"
        );
    }
}
