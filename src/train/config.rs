//! `caliper-train`'s subcommand arguments (clap derive) and their validation into a
//! [`TrainConfig`]; the command itself is `crate::cli::train`.

use std::path::PathBuf;

use clap::Args;

use super::dataset::{Carve, Validation};
use super::layers::LinearInit;
use super::loss::Loss;
use super::optim::Optimizer;
use super::runner::Device;
use super::schedule::Schedule;

/// `caliper-train check-step`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Network options.
    #[command(flatten)]
    pub net: NetArgs,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// cpu (the NCHWc lowering against the graph as written) or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// ONNX Runtime intra-op threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Largest allowed difference per output: the L2 norm of the difference over the
    /// reference's (float32 sums in another order differ by 1e-6 to about 5e-5 here, a wrong
    /// kernel by order 1; the tests hold the CPU lowering to 1e-4).
    #[arg(long, default_value_t = 1e-3)]
    pub tolerance: f32,
    /// Seed of the random inputs and state (the next seeds are tried when a ReLU mask flips).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The network of `bench` and `check-step`: model and loss options, input shape, classes.
#[derive(Debug, Clone, Args)]
pub struct NetArgs {
    /// Model options.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Per-sample input shape C,H,W.
    #[arg(long, value_delimiter = ',', default_value = "1,28,28")]
    pub input_shape: Vec<i64>,
    /// Classes K.
    #[arg(long, default_value_t = 10)]
    pub classes: i64,
}

impl NetArgs {
    /// The network these options describe.
    pub fn net(&self) -> Result<super::arch::Net, super::arch::ArchError> {
        super::arch::Net::new(
            &self.model.arch,
            &self.input_shape,
            self.classes,
            self.model.width,
        )
    }
}

/// `caliper-train plot`.
#[derive(Debug, Clone, Args)]
pub struct PlotArgs {
    /// A calibration file with a fit summary (calib/NAME.json).
    #[arg(long)]
    pub calib: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

/// `caliper-train bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Network options.
    #[command(flatten)]
    pub net: NetArgs,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// ONNX Runtime intra-op threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Replay each step as a captured CUDA graph (CUDA only).
    #[arg(long)]
    pub cuda_graph: bool,
}

/// Model and loss options shared by `train` and `graph`.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Architecture: linear, mlp, lenet or resnet20.
    #[arg(long, env = "CALIPER_ARCH", default_value = "lenet")]
    pub arch: String,
    /// Channel / hidden-size multiplier (mlp, resnet20).
    #[arg(long, env = "CALIPER_WIDTH", default_value_t = 1.0)]
    pub width: f64,
    /// Loss: ce, gce, focal, flsd53, dual-focal or label-smoothing.
    #[arg(long, env = "CALIPER_LOSS", default_value = "gce")]
    pub loss: String,
    /// GCE regularizer weight lambda (1 = GCE exactly).
    #[arg(long, env = "CALIPER_GCE_LAMBDA", default_value_t = 1.0)]
    pub gce_lambda: f32,
    /// Focal / dual-focal gamma (>= 1).
    #[arg(long, env = "CALIPER_FOCAL_GAMMA", default_value_t = 3.0)]
    pub focal_gamma: f32,
    /// Label-smoothing epsilon.
    #[arg(long, env = "CALIPER_LABEL_SMOOTHING", default_value_t = 0.1)]
    pub label_smoothing: f32,
    /// Optimizer: sgd or adamw.
    #[arg(long, env = "CALIPER_OPTIMIZER", default_value = "sgd")]
    pub optimizer: String,
    /// SGD momentum (0 = plain SGD, no state tensors); default 0.9 for `train`, 0 for `graph`.
    #[arg(long, env = "CALIPER_MOMENTUM")]
    pub momentum: Option<f32>,
    /// Nesterov momentum.
    #[arg(long, env = "CALIPER_NESTEROV")]
    pub nesterov: bool,
    /// Weight decay (L2 for SGD, decoupled for AdamW).
    #[arg(long, env = "CALIPER_WEIGHT_DECAY", default_value_t = 5e-4)]
    pub weight_decay: f32,
}

/// `caliper-train train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Model name: writes models/NAME/ and calib/NAME.json.
    #[arg(long, env = "CALIPER_OUT")]
    pub out: String,
    /// Dataset with train and test splits (caliper::data specs, docs/DATA.md): mnist,
    /// fashion-mnist, cifar10, cifar10-bin, pneumonia, npz:PATH, or your images:
    /// `folder:DIR` (`DIR/<class>/*`, or `DIR/{train,val,test}/<class>/*`) or
    /// `manifest:FILE.csv|.jsonl` (`path,label`); their classes become the model's labels.
    #[arg(long, env = "CALIPER_DATASET", default_value = "mnist")]
    pub dataset: String,
    /// Model input size `H,W` for `folder:` and `manifest:` datasets (images are resized to it
    /// as the server will) [default: the median image size, rounded to a multiple of 4].
    #[arg(long, env = "CALIPER_INPUT_SIZE", value_delimiter = ',')]
    pub input_size: Vec<usize>,
    /// Folder holding the datasets (`<dir>/mnist/...`).
    #[arg(long, env = "CALIPER_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Model options.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Epochs.
    #[arg(long, env = "CALIPER_EPOCHS", default_value_t = 10)]
    pub epochs: usize,
    /// Stop after this many epochs of the `--epochs` schedule and export the best of them: a
    /// run of a longer recipe truncated to a budget, its learning rates those of the whole
    /// schedule (not a shorter schedule). `--resume` with a larger value continues it.
    #[arg(long, env = "CALIPER_STOP_AFTER_EPOCHS")]
    pub stop_after_epochs: Option<usize>,
    /// Batch size (the last partial batch of an epoch is dropped: GCE depends on the batch).
    #[arg(long, env = "CALIPER_BATCH_SIZE", default_value_t = 128)]
    pub batch_size: usize,
    /// Base learning rate.
    #[arg(long, env = "CALIPER_LR", default_value_t = 0.05)]
    pub lr: f64,
    /// Schedule: constant, step or cosine.
    #[arg(long, env = "CALIPER_SCHEDULE", default_value = "cosine")]
    pub schedule: String,
    /// Step schedule milestones (epochs), comma separated.
    #[arg(
        long,
        env = "CALIPER_MILESTONES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub milestones: Vec<String>,
    /// Step schedule factor.
    #[arg(long, env = "CALIPER_LR_GAMMA", default_value_t = 0.1)]
    pub lr_gamma: f64,
    /// Linear warm-up length in epochs (may be fractional).
    #[arg(long, env = "CALIPER_WARMUP_EPOCHS", default_value_t = 0.0)]
    pub warmup_epochs: f64,
    /// Fraction of the training split held out (seeded, stratified) for validation and
    /// calibration [default: 0.1 without --val-split].
    #[arg(long, env = "CALIPER_VAL_FRACTION")]
    pub val_fraction: Option<f64>,
    /// Validate on the dataset's own split of this name instead of carving one out of the
    /// training split (e.g. `val` for pneumonia, whose MedMNIST archive ships train / val /
    /// test); the whole training split is trained on. Excludes --val-fraction.
    #[arg(long, env = "CALIPER_VAL_SPLIT")]
    pub val_split: Option<String>,
    /// Hold out the same number of images of every class, `--val-fraction` of the rarest
    /// class's count, instead of `--val-fraction` of each class: a class-balanced validation
    /// split for long-tailed data (`--imbalance-ratio`), whose test split is balanced. The
    /// rarest class bounds it (Fashion-MNIST-LT ratio 100, fraction 0.2: 12 per class, 120 in
    /// all); a fraction that holds out none, or all, of the rarest class is an error.
    #[arg(long, env = "CALIPER_VAL_BALANCED")]
    pub val_balanced: bool,
    /// Take `--train-fraction` before carving the validation split, so that validation scales
    /// with the fraction (1% of MNIST: 540 training and 60 validation images) instead of being
    /// carved from the full training split first (540 and 6,000).
    #[arg(long, env = "CALIPER_VAL_AFTER_FRACTION")]
    pub val_after_fraction: bool,
    /// Use only this fraction of the remaining training samples (seeded), for quick runs.
    #[arg(long, env = "CALIPER_TRAIN_FRACTION", default_value_t = 1.0)]
    pub train_fraction: f64,
    /// Long-tailed training data: keep `n_max * rho^(-k/(K-1))` images of class k (CIFAR-10-LT
    /// construction) before the validation split; 1 keeps everything. The test split stays
    /// balanced.
    #[arg(long, env = "CALIPER_IMBALANCE_RATIO", default_value_t = 1.0)]
    pub imbalance_ratio: f64,
    /// Random seed (split, initialisation, shuffling).
    #[arg(long, env = "CALIPER_SEED", default_value_t = 0)]
    pub seed: u64,
    /// How the classifier head starts: `he` (He-uniform weight, zero bias, the rule of every
    /// other layer) or `linear-default` (PyTorch's `nn.Linear` default: U(±1/sqrt(fan_in)) for
    /// weight and bias, 2.45 times narrower). docs/TRAINING.md#initialisation.
    #[arg(long, env = "CALIPER_HEAD_INIT", value_enum, default_value_t = LinearInit::He)]
    pub head_init: LinearInit,
    /// ONNX Runtime intra-op threads.
    #[arg(long, env = "CALIPER_THREADS", default_value_t = 2)]
    pub threads: usize,
    /// cpu or cuda:N.
    #[arg(long, env = "CALIPER_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Replay full-size batches as captured CUDA graphs (CUDA only): one launch per step
    /// instead of one per node.
    #[arg(long, env = "CALIPER_CUDA_GRAPH")]
    pub cuda_graph: bool,
    /// Model repository folder.
    #[arg(long, env = "CALIPER_MODELS", default_value = "models")]
    pub models_dir: PathBuf,
    /// Calibration folder.
    #[arg(long, env = "CALIPER_CALIB", default_value = "calib")]
    pub calib_dir: PathBuf,
    /// Folder for checkpoints and the JSONL epoch log (default runs/NAME).
    #[arg(long, env = "CALIPER_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Continue from the run folder's last checkpoint.
    #[arg(long, env = "CALIPER_RESUME")]
    pub resume: bool,
    /// Training augmentation: auto (crop + flip for CIFAR-10, none otherwise), none, crop-flip.
    #[arg(long, env = "CALIPER_AUGMENT", default_value = "auto")]
    pub augment: String,
    /// Calibrator fitted on the validation split and written to calib/NAME.json.
    #[arg(long, env = "CALIPER_CALIBRATOR", value_enum, default_value_t = crate::trust::calibration::Method::Ats)]
    pub calibrator: crate::trust::calibration::Method,
    /// Calibrator and OOD options, as `caliper calibrate` takes them. When the validation
    /// split is too small for the pieces asked for, the export fits fewer, then plain TS, and
    /// says so.
    #[command(flatten)]
    pub fit: crate::repository::FitArgs,
    /// Hide the progress bar (logs still go to the JSONL file).
    #[arg(long, env = "CALIPER_NO_PROGRESS")]
    pub no_progress: bool,
}

/// `caliper-train graph`.
#[derive(Debug, Clone, Args)]
pub struct GraphArgs {
    /// Model options (defaults: plain SGD, so the only inputs are x, y, lr and the parameters).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Flat input features D (inputs x: [N, D]); give either this or --input-shape.
    #[arg(long)]
    pub in_features: Option<i64>,
    /// Per-sample input shape C,H,W.
    #[arg(long, value_delimiter = ',')]
    pub input_shape: Vec<i64>,
    /// Classes K.
    #[arg(long, default_value_t = 10)]
    pub classes: i64,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Validation fraction of `train` when neither `--val-fraction` nor `--val-split` is given.
pub const DEFAULT_VAL_FRACTION: f64 = 0.1;

/// SGD momentum of `train` when `--momentum` is not given.
pub const DEFAULT_MOMENTUM: f32 = 0.9;

/// Invalid option values.
#[derive(Debug, thiserror::Error)]
#[error("invalid option: {0}")]
pub struct ConfigError(pub String);

impl ModelArgs {
    /// The loss.
    pub fn loss(&self) -> Result<Loss, ConfigError> {
        let gamma_ok = |g: f32| {
            if g.is_finite() && g >= 1.0 {
                Ok(g)
            } else {
                Err(ConfigError(format!("--focal-gamma must be >= 1, got {g}")))
            }
        };
        Ok(match self.loss.as_str() {
            "ce" => Loss::Ce,
            "gce" => {
                if !(self.gce_lambda.is_finite() && self.gce_lambda >= 0.0) {
                    return Err(ConfigError("--gce-lambda must be >= 0".into()));
                }
                Loss::Gce {
                    lambda: self.gce_lambda,
                }
            }
            "focal" => Loss::Focal {
                gamma: gamma_ok(self.focal_gamma)?,
            },
            "flsd53" => Loss::Flsd53,
            "dual-focal" => Loss::DualFocal {
                gamma: gamma_ok(self.focal_gamma)?,
            },
            "label-smoothing" => {
                if !(0.0..1.0).contains(&self.label_smoothing) {
                    return Err(ConfigError("--label-smoothing must be in [0, 1)".into()));
                }
                Loss::LabelSmoothing {
                    eps: self.label_smoothing,
                }
            }
            other => {
                return Err(ConfigError(format!(
                    "unknown loss {other:?} (ce, gce, focal, flsd53, dual-focal, label-smoothing)"
                )));
            }
        })
    }

    /// The optimizer; `default_momentum` applies when `--momentum` is not given.
    pub fn optimizer(&self, default_momentum: f32) -> Result<Optimizer, ConfigError> {
        let momentum = self.momentum.unwrap_or(default_momentum);
        if !(0.0..1.0).contains(&momentum) {
            return Err(ConfigError("--momentum must be in [0, 1)".into()));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(ConfigError("--weight-decay must be >= 0".into()));
        }
        match self.optimizer.as_str() {
            "sgd" => Ok(Optimizer::Sgd {
                momentum,
                nesterov: self.nesterov,
                weight_decay: self.weight_decay,
            }),
            "adamw" => Ok(Optimizer::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: self.weight_decay,
            }),
            other => Err(ConfigError(format!(
                "unknown optimizer {other:?} (sgd, adamw)"
            ))),
        }
    }
}

/// Validated training configuration.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The raw arguments (kept for provenance).
    pub args: TrainArgs,
    /// Loss.
    pub loss: Loss,
    /// Optimizer.
    pub optimizer: Optimizer,
    /// Schedule.
    pub schedule: Schedule,
    /// Device.
    pub device: Device,
    /// Checkpoint / log folder.
    pub run_dir: PathBuf,
    /// Training augmentation.
    pub augment: crate::data::Augment,
    /// Where the validation images come from (`--val-fraction` or `--val-split`).
    pub validation: Validation,
}

impl TrainArgs {
    /// Validates the arguments.
    pub fn validate(self) -> Result<TrainConfig, ConfigError> {
        let bad = |s: &str| Err(ConfigError(s.into()));
        if self.out.is_empty()
            || !self
                .out
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad("--out must be a non-empty name of letters, digits, '-' and '_'");
        }
        if self.epochs == 0 || self.batch_size < 2 {
            return bad("--epochs must be >= 1 and --batch-size >= 2");
        }
        if self
            .stop_after_epochs
            .is_some_and(|n| n == 0 || n > self.epochs)
        {
            return bad("--stop-after-epochs must be in 1..=--epochs");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("--lr must be > 0");
        }
        let validation = match (&self.val_split, self.val_fraction) {
            (Some(_), Some(_)) => {
                return bad(
                    "--val-split and --val-fraction exclude each other: validate on the \
                     dataset's own split or on a fraction carved out of its training split",
                );
            }
            (Some(_), None) if self.val_balanced || self.val_after_fraction => {
                return bad(
                    "--val-balanced and --val-after-fraction shape a carved validation split, \
                     not the dataset's own --val-split",
                );
            }
            (Some(name), None) => {
                Validation::own_split(&self.dataset, name).map_err(ConfigError)?
            }
            (None, f) => {
                let f = f.unwrap_or(DEFAULT_VAL_FRACTION);
                if !(f > 0.0 && f < 0.9) {
                    return bad("--val-fraction must be in (0, 0.9)");
                }
                Validation::Carved(Carve {
                    fraction: f,
                    balanced: self.val_balanced,
                    after_fraction: self.val_after_fraction,
                })
            }
        };
        if !self.input_size.is_empty() {
            if super::dataset::file_dataset(&self.dataset).is_none() {
                return bad("--input-size applies to folder: and manifest: datasets only");
            }
            if self.input_size.len() != 2 || self.input_size.iter().any(|&v| v == 0 || v % 4 != 0) {
                return bad("--input-size must be H,W, each a positive multiple of 4");
            }
        }
        if !(self.train_fraction > 0.0 && self.train_fraction <= 1.0) {
            return bad("--train-fraction must be in (0, 1]");
        }
        if !(self.imbalance_ratio.is_finite() && self.imbalance_ratio >= 1.0) {
            return bad("--imbalance-ratio must be >= 1");
        }
        if self.threads == 0 {
            return bad("--threads must be >= 1");
        }
        let schedule = match self.schedule.as_str() {
            "constant" => Schedule::Constant,
            "cosine" => Schedule::Cosine,
            "step" => {
                let milestones = self
                    .milestones
                    .iter()
                    .filter(|s| !s.is_empty())
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ConfigError(format!("--milestones: {e}")))?;
                if milestones.is_empty() {
                    return bad("--schedule step needs --milestones");
                }
                Schedule::Step {
                    milestones,
                    gamma: self.lr_gamma,
                }
            }
            other => {
                return Err(ConfigError(format!(
                    "unknown schedule {other:?} (constant, step, cosine)"
                )));
            }
        };
        self.fit
            .options()
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        let ood = crate::trust::ood::artifacts::METHODS;
        if !ood.contains(&self.fit.ood_method.as_str()) {
            return Err(ConfigError(format!(
                "--ood-method {:?}: expected one of {}",
                self.fit.ood_method,
                ood.join(", ")
            )));
        }
        let device = self.device.parse().map_err(ConfigError)?;
        let augment = match self.augment.as_str() {
            "auto" => super::dataset::auto_augment(&self.dataset),
            "none" => crate::data::Augment::NONE,
            "crop-flip" => crate::data::Augment::CIFAR,
            other => {
                return Err(ConfigError(format!(
                    "unknown augmentation {other:?} (auto, none, crop-flip)"
                )));
            }
        };
        let run_dir = self
            .run_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(&self.out));
        Ok(TrainConfig {
            loss: self.model.loss()?,
            optimizer: self.model.optimizer(DEFAULT_MOMENTUM)?,
            schedule,
            device,
            run_dir,
            augment,
            validation,
            args: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::train::{Cli, Command};
    use clap::Parser;

    fn train_args(extra: &[&str]) -> Result<TrainConfig, String> {
        let argv = ["caliper-train", "train", "--out", "m"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string());
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Train(a) => (*a).validate().map_err(|e| e.to_string()),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = train_args(&[]).unwrap();
        assert_eq!(c.loss, Loss::Gce { lambda: 1.0 });
        assert_eq!(
            c.optimizer,
            Optimizer::Sgd {
                momentum: 0.9,
                nesterov: false,
                weight_decay: 5e-4
            }
        );
        assert_eq!(c.schedule, Schedule::Cosine);
        assert_eq!(c.device, Device::Cpu);
        assert_eq!(c.run_dir, PathBuf::from("runs/m"));
        assert_eq!(c.augment, crate::data::Augment::NONE);
        assert_eq!(c.validation, Validation::Carved(Carve::stratified(0.1)));
        assert_eq!(c.args.head_init, LinearInit::He);
        assert_eq!(c.args.stop_after_epochs, None);
        let c = train_args(&["--head-init", "linear-default"]).unwrap();
        assert_eq!(c.args.head_init, LinearInit::LinearDefault);
        let c = train_args(&["--dataset", "cifar10"]).unwrap();
        assert_eq!(c.augment, crate::data::Augment::CIFAR);
        let c = train_args(&["--schedule", "step", "--milestones", "3,6"]).unwrap();
        assert_eq!(
            c.schedule,
            Schedule::Step {
                milestones: vec![3, 6],
                gamma: 0.1
            }
        );
    }

    #[test]
    fn bad_options_are_named_in_the_error() {
        for (args, needle) in [
            (&["--loss", "hinge"][..], "unknown loss"),
            (&["--optimizer", "lbfgs"], "unknown optimizer"),
            (&["--momentum", "1.5"], "--momentum"),
            (&["--epochs", "0"], "--epochs"),
            (&["--lr=-1"], "--lr"),
            (&["--val-fraction", "0"], "--val-fraction"),
            (&["--schedule", "step"], "--milestones"),
            (&["--device", "tpu"], "invalid device"),
            (&["--augment", "mixup"], "unknown augmentation"),
            (&["--gce-lambda=-1"], "--gce-lambda"),
            (&["--val-fraction", "0.95"], "--val-fraction"),
            (&["--pieces", "0"], "--pieces"),
            (&["--ood-method", "odin"], "--ood-method"),
            (&["--head-init", "xavier"], "--head-init"),
            (
                &["--epochs", "4", "--stop-after-epochs", "5"],
                "--stop-after-epochs",
            ),
            (&["--stop-after-epochs", "0"], "--stop-after-epochs"),
        ] {
            let e = train_args(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn validation_comes_from_a_fraction_or_the_datasets_own_split() {
        let c = train_args(&["--val-fraction", "0.2"]).unwrap();
        assert_eq!(c.validation, Validation::Carved(Carve::stratified(0.2)));
        let c = train_args(&["--val-balanced", "--val-after-fraction"]).unwrap();
        let both = Carve {
            fraction: 0.1,
            balanced: true,
            after_fraction: true,
        };
        assert_eq!(c.validation, Validation::Carved(both));
        let e = train_args(&[
            "--dataset",
            "pneumonia",
            "--val-split",
            "val",
            "--val-balanced",
        ])
        .unwrap_err();
        assert!(e.contains("carved validation split"), "{e}");
        let c = train_args(&["--dataset", "pneumonia", "--val-split", "val"]).unwrap();
        assert_eq!(c.validation, Validation::Split("val".into()));
        // Any split name of an npz archive parses; loading checks that it is there.
        let c = train_args(&["--dataset", "npz:x.npz", "--val-split", "dev"]).unwrap();
        assert_eq!(c.validation, Validation::Split("dev".into()));
        for (args, needles) in [
            (
                &[
                    "--dataset",
                    "pneumonia",
                    "--val-split",
                    "val",
                    "--val-fraction",
                    "0.1",
                ][..],
                &["exclude each other"][..],
            ),
            (
                &["--dataset", "mnist", "--val-split", "val"],
                &["mnist has no split named \"val\"", "pneumonia", "npz:PATH"],
            ),
            (
                &["--dataset", "cifar10", "--val-split", "val"],
                &["cifar10 has no split", "--val-fraction"],
            ),
            // `cifar10-bin:val` would parse as a batch file: the bundled table decides.
            (
                &["--dataset", "cifar10-bin", "--val-split", "val"],
                &["cifar10-bin has no split"],
            ),
            (
                &["--dataset", "pneumonia", "--val-split", "test"],
                &["other than train and test"],
            ),
            (
                &["--dataset", "pneumonia", "--val-split", "train"],
                &["other than train and test"],
            ),
        ] {
            let e = train_args(args).unwrap_err();
            for n in needles {
                assert!(e.contains(n), "{args:?}: {e}");
            }
        }
    }
}
