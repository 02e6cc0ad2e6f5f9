//! Dataset spec strings (`mnist:train`, `folder:PATH`, ...), parsed once and loaded against a
//! data directory; shared by `caliper-train` and the `caliper` tools. A trailing selector picks
//! one side of the trainer's validation split (`mnist:train[val=0.1,seed=0]`). Grammar:
//! docs/DATA.md.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::cifar::{CIFAR10_CLASSES, load_cifar10_bin};
use super::files::{ImageFiles, list_class_folder, read_manifest, split_folders};
use super::folder::load_folder;
use super::idx::load_idx_pair;
use super::npz::load_npz;
use super::split::TrainValSplit;
use super::{DataError, Dataset};

/// Fashion-MNIST's classes in label order (Zalando's README).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
/// PneumoniaMNIST's classes in label order (MedMNIST: 0 = normal, 1 = pneumonia).
pub const PNEUMONIA_CLASSES: [&str; 2] = ["normal", "pneumonia"];

/// A named split of a bundled dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training split (the validation split is carved out of it by `split::stratified_split`).
    Train,
    /// A split shipped as validation (PneumoniaMNIST only).
    Val,
    /// The test split.
    Test,
}

/// The named splits of each bundled dataset kind: what `KIND:SPLIT` accepts, in the order error
/// messages list them (one table, so the parser and [`datasets_with_split`] cannot disagree).
const BUNDLED_SPLITS: [(&str, &[Split]); 5] = [
    ("mnist", &[Split::Train, Split::Test]),
    ("fashion-mnist", &[Split::Train, Split::Test]),
    ("cifar10", &[Split::Train, Split::Test]),
    ("cifar10-bin", &[Split::Train, Split::Test]),
    ("pneumonia", &[Split::Train, Split::Val, Split::Test]),
];

/// The dataset names (`caliper-train --dataset`) that have a split called `split`: the bundled
/// kinds that ship it, then `npz:PATH`, whose archives may hold any `SPLIT_images` /
/// `SPLIT_labels`. For error messages such as "mnist has no val split; pneumonia has".
pub fn datasets_with_split(split: &str) -> Vec<String> {
    BUNDLED_SPLITS
        .iter()
        .filter(|(_, splits)| splits.iter().any(|s| s.as_str() == split))
        .map(|(kind, _)| kind.to_string())
        .chain([format!("npz:PATH (arrays {split}_images, {split}_labels)")])
        .collect()
}

/// Whether bundled dataset `kind` ships a split named `split`; `None` for a kind that is not
/// bundled (`npz:PATH`, `folder:PATH`, ...: only loading can tell). `cifar10-bin:val` parses as a
/// list of batch files, so parsing `KIND:SPLIT` is no test for this.
pub fn bundled_has_split(kind: &str, split: &str) -> Option<bool> {
    BUNDLED_SPLITS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, splits)| splits.iter().any(|s| s.as_str() == split))
}

impl Split {
    fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// Which side of the trainer's split a selector picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitPart {
    /// `[val=F,...]`: the held-out validation images.
    Val,
    /// `[fit=F,...]`: the images the trainer trains on (the rest, after `train_fraction`).
    Fit,
}

/// Which dataset to load: a bundled set under the data directory or explicit files.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetSpec {
    /// `mnist:train|test`: `<data-dir>/mnist/` IDX files (raw or .gz).
    Mnist(Split),
    /// `fashion-mnist:train|test`: `<data-dir>/fashion-mnist/` IDX files (.gz or raw).
    FashionMnist(Split),
    /// `cifar10:train|test`: the JPEG folders `<data-dir>/cifar10/{train,test}/<class>/`.
    Cifar10(Split),
    /// `cifar10-bin:train|test`: binary batches in `<data-dir>/cifar-10-batches-bin/`.
    Cifar10Bin(Split),
    /// `pneumonia:train|val|test`: `<data-dir>/pneumoniamnist.npz`.
    Pneumonia(Split),
    /// `idx:IMAGES,LABELS`: an explicit pair of IDX files.
    Idx {
        /// Image file `[N, H, W]`.
        images: PathBuf,
        /// Label file `[N]`.
        labels: PathBuf,
    },
    /// `folder:PATH`: an image folder with one subfolder per class (`PATH/<class>/*`), or, for
    /// the trainer, split folders `PATH/{train,val,test}/<class>/*`.
    Folder(PathBuf),
    /// `manifest:FILE`: a `.csv` or `.jsonl` list of `path,label` (see [`super::files`]).
    Manifest(PathBuf),
    /// `npz:PATH:SPLIT`: a MedMNIST-style archive with `SPLIT_images` / `SPLIT_labels`.
    Npz {
        /// The archive.
        path: PathBuf,
        /// The key prefix.
        split: String,
    },
    /// `cifar10-bin:FILE[,FILE...]`: explicit CIFAR-10 binary batch files, concatenated.
    Cifar10BinFiles(Vec<PathBuf>),
    /// `SPEC[val=F,seed=S,train_fraction=T,imbalance_ratio=R]` (or `fit=F`): one side of the
    /// split `caliper-train --val-fraction F --seed S ...` makes of `SPEC`.
    Selected {
        /// The dataset the split is made of.
        base: Box<DatasetSpec>,
        /// Which side.
        part: SplitPart,
        /// The trainer's split options.
        split: TrainValSplit,
    },
}

/// Parses the inside of a `[...]` selector: `val=F` or `fit=F`, then optional `seed=S`
/// (default 0), `train_fraction=T` (default 1) and `imbalance_ratio=R` (default 1).
fn parse_selector(sel: &str) -> Result<(SplitPart, TrainValSplit), String> {
    let mut part = None;
    let mut split = TrainValSplit {
        val_fraction: 0.0,
        train_fraction: 1.0,
        imbalance_ratio: 1.0,
        seed: 0,
        balanced: false,
        val_after_fraction: false,
    };
    for item in sel.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("selector item {item:?} is not KEY=VALUE"))?;
        let number = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("{key}={value:?} is not a number"))
        };
        match key {
            "val" | "fit" => {
                if part.is_some() {
                    return Err("give exactly one of val=F and fit=F".into());
                }
                part = Some(if key == "val" {
                    SplitPart::Val
                } else {
                    SplitPart::Fit
                });
                split.val_fraction = number()?;
            }
            "seed" => {
                split.seed = value
                    .parse()
                    .map_err(|_| format!("seed={value:?} is not a non-negative integer"))?;
            }
            "train_fraction" => split.train_fraction = number()?,
            "imbalance_ratio" => split.imbalance_ratio = number()?,
            "val_balanced" | "val_after_fraction" => {
                let on = match value {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(format!("{key}={value:?} is not 0 or 1")),
                };
                if key == "val_balanced" {
                    split.balanced = on;
                } else {
                    split.val_after_fraction = on;
                }
            }
            _ => {
                return Err(format!(
                    "unknown selector key {key:?} (val, fit, seed, train_fraction, \
                     imbalance_ratio, val_balanced, val_after_fraction)"
                ));
            }
        }
    }
    let part = part.ok_or("the selector needs val=F or fit=F")?;
    // The ranges of caliper-train's flags, checked here so that a bad spec fails before loading.
    if !(split.val_fraction > 0.0 && split.val_fraction < 1.0) {
        return Err(format!(
            "val/fit fraction must be in (0, 1), got {}",
            split.val_fraction
        ));
    }
    if !(split.train_fraction > 0.0 && split.train_fraction <= 1.0) {
        return Err(format!(
            "train_fraction must be in (0, 1], got {}",
            split.train_fraction
        ));
    }
    if split.imbalance_ratio < 1.0 {
        return Err(format!(
            "imbalance_ratio must be >= 1, got {}",
            split.imbalance_ratio
        ));
    }
    Ok((part, split))
}

impl FromStr for DatasetSpec {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        let err = |reason: &str| DataError::Spec {
            spec: s.to_string(),
            reason: reason.to_string(),
        };
        // A trailing `[...]` holding a `KEY=VALUE` is a selector (so `folder:x[1]` stays a path).
        if let Some((base, sel)) = s
            .strip_suffix(']')
            .and_then(|t| t.rsplit_once('['))
            .filter(|(_, sel)| sel.contains('='))
        {
            // Selectors nest: `folder:D[fit=0.2,seed=0][val=0.1,seed=0]` is the trainer's
            // validation split of a folder whose test images it carved out first.
            let base: DatasetSpec = base.parse()?;
            let (part, split) = parse_selector(sel).map_err(|r| err(&r))?;
            return Ok(DatasetSpec::Selected {
                base: Box::new(base),
                part,
                split,
            });
        }
        let (kind, arg) = s
            .split_once(':')
            .ok_or_else(|| err("expected KIND:ARGUMENT, e.g. mnist:train"))?;
        if arg.is_empty() {
            return Err(err("empty argument after the colon"));
        }
        // The bundled kind's named split (only called for the kinds of `BUNDLED_SPLITS`).
        let split = || {
            let allowed = BUNDLED_SPLITS
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(&[][..], |(_, splits)| *splits);
            allowed
                .iter()
                .copied()
                .find(|sp| sp.as_str() == arg)
                .ok_or_else(|| {
                    let names: Vec<_> = allowed.iter().map(|s| s.as_str()).collect();
                    err(&format!("split must be one of {}", names.join(", ")))
                })
        };
        Ok(match kind {
            "mnist" => DatasetSpec::Mnist(split()?),
            "fashion-mnist" => DatasetSpec::FashionMnist(split()?),
            "cifar10" => DatasetSpec::Cifar10(split()?),
            "cifar10-bin" if arg == "train" || arg == "test" => DatasetSpec::Cifar10Bin(split()?),
            "cifar10-bin" => {
                DatasetSpec::Cifar10BinFiles(arg.split(',').map(PathBuf::from).collect())
            }
            "pneumonia" => DatasetSpec::Pneumonia(split()?),
            "idx" => {
                let (images, labels) = arg
                    .split_once(',')
                    .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                    .ok_or_else(|| err("expected idx:IMAGES_PATH,LABELS_PATH"))?;
                DatasetSpec::Idx {
                    images: images.into(),
                    labels: labels.into(),
                }
            }
            "folder" => DatasetSpec::Folder(arg.into()),
            "manifest" => DatasetSpec::Manifest(arg.into()),
            "npz" => {
                let (path, split) = arg
                    .rsplit_once(':')
                    .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                    .ok_or_else(|| err("expected npz:PATH:SPLIT, e.g. npz:data/x.npz:test"))?;
                DatasetSpec::Npz {
                    path: path.into(),
                    split: split.into(),
                }
            }
            _ => {
                return Err(err(
                    "unknown kind (mnist, fashion-mnist, cifar10, cifar10-bin, pneumonia, idx, \
                     folder, manifest, npz)",
                ));
            }
        })
    }
}

impl fmt::Display for DatasetSpec {
    /// The canonical spec string; parsing it gives back the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetSpec::Mnist(s) => write!(f, "mnist:{}", s.as_str()),
            DatasetSpec::FashionMnist(s) => write!(f, "fashion-mnist:{}", s.as_str()),
            DatasetSpec::Cifar10(s) => write!(f, "cifar10:{}", s.as_str()),
            DatasetSpec::Cifar10Bin(s) => write!(f, "cifar10-bin:{}", s.as_str()),
            DatasetSpec::Pneumonia(s) => write!(f, "pneumonia:{}", s.as_str()),
            DatasetSpec::Idx { images, labels } => {
                write!(f, "idx:{},{}", images.display(), labels.display())
            }
            DatasetSpec::Folder(p) => write!(f, "folder:{}", p.display()),
            DatasetSpec::Manifest(p) => write!(f, "manifest:{}", p.display()),
            DatasetSpec::Npz { path, split } => write!(f, "npz:{}:{split}", path.display()),
            DatasetSpec::Cifar10BinFiles(files) => {
                let v: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
                write!(f, "cifar10-bin:{}", v.join(","))
            }
            DatasetSpec::Selected { base, part, split } => {
                let key = match part {
                    SplitPart::Val => "val",
                    SplitPart::Fit => "fit",
                };
                write!(f, "{base}[{key}={},seed={}", split.val_fraction, split.seed)?;
                if split.train_fraction != 1.0 {
                    write!(f, ",train_fraction={}", split.train_fraction)?;
                }
                if split.imbalance_ratio != 1.0 {
                    write!(f, ",imbalance_ratio={}", split.imbalance_ratio)?;
                }
                if split.balanced {
                    write!(f, ",val_balanced=1")?;
                }
                if split.val_after_fraction {
                    write!(f, ",val_after_fraction=1")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// `dir/name` if it exists, else `dir/name.gz` if that exists, else `dir/name` (so that the
/// "not found" error names the uncompressed file).
fn raw_or_gz(dir: &Path, name: &str) -> PathBuf {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    if !raw.exists() && gz.exists() {
        gz
    } else {
        raw
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn mnist_like(dir: &Path, split: Split, classes: Vec<String>) -> Result<Dataset, DataError> {
    let prefix = if split == Split::Train {
        "train"
    } else {
        "t10k"
    };
    load_idx_pair(
        &raw_or_gz(dir, &format!("{prefix}-images-idx3-ubyte")),
        &raw_or_gz(dir, &format!("{prefix}-labels-idx1-ubyte")),
        Some(classes),
    )
}

impl DatasetSpec {
    /// Loads the dataset. Bundled sets are looked up under `data_dir` (default `data/`), explicit
    /// paths are used as given; image folders cache their decoded pixels in `data_dir/cache/`.
    pub fn load(&self, data_dir: &Path) -> Result<Dataset, DataError> {
        let cache = data_dir.join("cache");
        match self {
            DatasetSpec::Mnist(s) => {
                mnist_like(&data_dir.join("mnist"), *s, super::numbered_classes(10))
            }
            DatasetSpec::FashionMnist(s) => mnist_like(
                &data_dir.join("fashion-mnist"),
                *s,
                names(&FASHION_MNIST_CLASSES),
            ),
            DatasetSpec::Cifar10(s) => {
                let d = load_folder(&data_dir.join("cifar10").join(s.as_str()), Some(&cache))?;
                check_classes(&d, &CIFAR10_CLASSES, &data_dir.join("cifar10"))?;
                Ok(d)
            }
            DatasetSpec::Cifar10Bin(s) => {
                let dir = data_dir.join("cifar-10-batches-bin");
                let files: Vec<PathBuf> = match s {
                    Split::Train => (1..=5)
                        .map(|i| dir.join(format!("data_batch_{i}.bin")))
                        .collect(),
                    _ => vec![dir.join("test_batch.bin")],
                };
                let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
                load_cifar10_bin(&refs)
            }
            DatasetSpec::Pneumonia(s) => load_npz(
                &data_dir.join("pneumoniamnist.npz"),
                s.as_str(),
                Some(names(&PNEUMONIA_CLASSES)),
            ),
            DatasetSpec::Idx { images, labels } => load_idx_pair(images, labels, None),
            DatasetSpec::Folder(p) => load_folder(p, Some(&cache)),
            DatasetSpec::Manifest(p) => Err(DataError::Spec {
                spec: format!("manifest:{}", p.display()),
                reason: "a manifest lists image files of any size: read it with \
                         DatasetSpec::files and preprocess each file for the model"
                    .into(),
            }),
            DatasetSpec::Npz { path, split } => load_npz(path, split, None),
            DatasetSpec::Cifar10BinFiles(files) => {
                let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
                load_cifar10_bin(&refs)
            }
            DatasetSpec::Selected { base, part, split } => {
                let d = base.load(data_dir)?;
                let (fit, val) = split.indices(&d.labels, d.num_classes())?;
                Ok(d.subset(match part {
                    SplitPart::Val => &val,
                    SplitPart::Fit => &fit,
                }))
            }
        }
    }
}

impl DatasetSpec {
    /// The image files of a file-based spec (`folder:`, `manifest:`, and selectors over them),
    /// listed but not decoded; `None` for the array datasets. A folder of split folders
    /// (`DIR/{train,val,test}`) is refused here: the tools need one split (`folder:DIR/val`).
    pub fn files(&self) -> Option<Result<ImageFiles, DataError>> {
        match self {
            DatasetSpec::Folder(dir) => Some(match split_folders(dir) {
                Some(splits) => Err(DataError::Spec {
                    spec: self.to_string(),
                    reason: format!(
                        "{} holds split folders ({}): name one, e.g. folder:{}",
                        dir.display(),
                        splits
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", "),
                        dir.join(splits.last().map_or("test", |(n, _)| *n))
                            .display()
                    ),
                }),
                None => list_class_folder(dir),
            }),
            DatasetSpec::Manifest(path) => Some(read_manifest(path)),
            DatasetSpec::Selected { base, part, split } => {
                let files = base.files()?;
                Some(files.and_then(|f| {
                    let (fit, val) = split.indices(&f.labels, f.class_names.len())?;
                    Ok(f.subset(match part {
                        SplitPart::Val => &val,
                        SplitPart::Fit => &fit,
                    }))
                }))
            }
            _ => None,
        }
    }
}

/// The CIFAR-10 folder must hold exactly the ten classes, or labels would silently shift.
fn check_classes(d: &Dataset, expected: &[&str], root: &Path) -> Result<(), DataError> {
    if d.class_names != expected {
        return Err(DataError::ShapeMismatch {
            path: root.to_path_buf(),
            detail: format!("class folders {:?}, expected {expected:?}", d.class_names),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_through_display() {
        for s in [
            "mnist:train",
            "mnist:test",
            "fashion-mnist:test",
            "cifar10:train",
            "cifar10-bin:test",
            "cifar10-bin:a.bin,b.bin",
            "pneumonia:val",
            "idx:a/img,a/lab",
            "folder:some/where",
            "npz:x/y.npz:test",
            "npz:C:/odd:path.npz:train",
            "mnist:train[val=0.1,seed=0]",
            "cifar10:train[fit=0.1,seed=3,train_fraction=0.5,imbalance_ratio=100]",
            "fashion-mnist:train[val=0.2,seed=1,imbalance_ratio=100,val_balanced=1]",
            "mnist:train[fit=0.1,seed=0,train_fraction=0.01,val_after_fraction=1]",
            "folder:a[b][val=0.2,seed=1]",
            "folder:a[b]",
            "manifest:x/m.csv",
            "folder:d[fit=0.2,seed=0][val=0.1,seed=0]",
        ] {
            let spec: DatasetSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        assert_eq!(
            "npz:a:b.npz:val".parse::<DatasetSpec>().unwrap(),
            DatasetSpec::Npz {
                path: "a:b.npz".into(),
                split: "val".into()
            }
        );
    }

    #[test]
    fn bad_specs_say_why() {
        for (s, why) in [
            ("mnist", "KIND:ARGUMENT"),
            ("mnist:val", "train, test"),
            ("pneumonia:dev", "train, val, test"),
            ("idx:onlyone", "IMAGES_PATH,LABELS_PATH"),
            ("npz:file.npz", "npz:PATH:SPLIT"),
            ("imagenet:train", "unknown kind"),
            ("folder:", "empty argument"),
            ("mnist:train[seed=0]", "val=F or fit=F"),
            ("mnist:train[val=0.1,seed]", "not KEY=VALUE"),
            ("mnist:train[val=0.1,fit=0.1]", "exactly one"),
            ("mnist:train[val=1]", "(0, 1)"),
            ("mnist:train[val=x]", "not a number"),
            ("mnist:train[val=0.1,seed=-1]", "non-negative"),
            ("mnist:train[val=0.1,train_fraction=0]", "(0, 1]"),
            ("mnist:train[val=0.1,imbalance_ratio=0.5]", ">= 1"),
            ("mnist:train[val=0.1,step=2]", "unknown selector key"),
            ("mnist:train[val=0.1,val_balanced=yes]", "not 0 or 1"),
            ("mnist:val[val=0.1]", "train, test"),
        ] {
            let e = s.parse::<DatasetSpec>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn datasets_with_a_split_follow_the_parser() {
        assert_eq!(
            datasets_with_split("val"),
            ["pneumonia", "npz:PATH (arrays val_images, val_labels)"]
        );
        assert_eq!(datasets_with_split("train").len(), 6);
        assert_eq!(datasets_with_split("dev").len(), 1);
        for (kind, _) in BUNDLED_SPLITS {
            for s in ["train", "val", "test"] {
                let parsed = format!("{kind}:{s}").parse::<DatasetSpec>();
                let has = bundled_has_split(kind, s).unwrap();
                if kind == "cifar10-bin" {
                    // cifar10-bin:val is a batch file named "val", not a split.
                    let files = matches!(parsed, Ok(DatasetSpec::Cifar10BinFiles(_)));
                    assert_eq!(files, !has, "{kind}:{s}");
                } else {
                    assert_eq!(parsed.is_ok(), has, "{kind}:{s}");
                }
            }
        }
        assert_eq!(bundled_has_split("npz:x.npz", "val"), None);
    }

    #[test]
    fn selectors_default_to_the_trainers_options() {
        let spec: DatasetSpec = "mnist:train[fit=0.25]".parse().unwrap();
        assert_eq!(
            spec,
            DatasetSpec::Selected {
                base: Box::new(DatasetSpec::Mnist(Split::Train)),
                part: SplitPart::Fit,
                split: TrainValSplit {
                    val_fraction: 0.25,
                    train_fraction: 1.0,
                    imbalance_ratio: 1.0,
                    seed: 0,
                    balanced: false,
                    val_after_fraction: false,
                }
            }
        );
        assert_eq!(spec.to_string(), "mnist:train[fit=0.25,seed=0]");
    }

    #[test]
    fn missing_data_points_to_the_fetch_script() {
        let dir = tempfile::tempdir().unwrap();
        for s in [
            "mnist:train",
            "pneumonia:test",
            "cifar10:test",
            "cifar10-bin:train",
        ] {
            let e = s
                .parse::<DatasetSpec>()
                .unwrap()
                .load(dir.path())
                .unwrap_err();
            assert!(matches!(e, DataError::Missing { .. }), "{s}: {e}");
            assert!(e.to_string().contains("scripts/fetch-data.sh"));
        }
    }
}
