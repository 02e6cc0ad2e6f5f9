//! The trainer: an ONNX graph builder whose layers emit forward and backward nodes, the losses,
//! optimizers, the training loop on ONNX Runtime and the export to the model repository.
//!
//! Training runs as ordinary ONNX graphs of standard operators (see `shared/onnxruntime.md`: no
//! training-enabled ONNX Runtime is reachable): [`step::training_step`] builds one graph per
//! configuration that does forward, loss, backward and the optimizer update, and
//! [`runner::Trainer`] runs it with the parameters kept as ONNX Runtime values on the training
//! device (on CUDA optionally replayed as captured CUDA graphs, `replay`).

pub mod arch;
pub mod bench;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod export;
pub mod fit;
pub mod graph;
pub mod layers;
pub mod loss;
pub mod nchwc;
pub mod onnx;
pub mod optim;
pub mod plot;
mod replay;
pub mod runner;
pub mod schedule;
pub mod step;

use anyhow::Context;

pub use config::{Cli, Command};

/// Runs `caliper-train` for parsed arguments (the binary's whole body); `command` is the
/// command line, recorded in the model's provenance.
pub fn run(cli: Cli, command: &str) -> anyhow::Result<()> {
    match cli.command {
        Command::Graph(g) => {
            let input = match (g.in_features, g.input_shape.is_empty()) {
                (Some(d), true) => vec![d],
                (None, false) => g.input_shape.clone(),
                _ => anyhow::bail!("give exactly one of --in-features and --input-shape"),
            };
            let net = arch::Net::new(&g.model.arch, &input, g.classes, g.model.width)?;
            let graph = step::training_step(&net, g.model.loss()?, &g.model.optimizer(0.0)?, true);
            crate::fsutil::write_atomic(&g.out, &graph.bytes)
                .with_context(|| format!("writing {}", g.out.display()))?;
            println!(
                "wrote {} ({} bytes, {} state tensors)",
                g.out.display(),
                graph.bytes.len(),
                graph.state.len()
            );
            Ok(())
        }
        Command::Plot(p) => {
            let file = crate::calibration::CalibrationFile::load(&p.calib)?;
            let rel = file
                .fit
                .and_then(|f| f.reliability)
                .with_context(|| format!("{} has no reliability bins", p.calib.display()))?;
            plot::reliability_png(&[&rel.before, &rel.after])
                .save(&p.out)
                .with_context(|| format!("writing {}", p.out.display()))?;
            Ok(())
        }
        Command::CheckStep(c) => {
            let report = check::run(&c)?;
            println!("{}", serde_json::to_string(&report)?);
            anyhow::ensure!(
                report.ok,
                "{} differs from the reference: {} by {:.2e} of its scale (tolerance {:.1e})",
                report.device,
                report.worst_output,
                report.worst_relative,
                report.tolerance
            );
            Ok(())
        }
        Command::Bench(b) => {
            let report = bench::run(&b)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Train(args) => {
            let cfg = (*args).validate()?;
            tracing::info!(config = ?cfg, "starting training");
            let a = &cfg.args;
            let splits = dataset::load_splits(
                &a.dataset,
                &a.data_dir,
                &cfg.validation,
                a.train_fraction,
                a.imbalance_ratio,
                a.seed,
            )?;
            // The export fits the Mahalanobis OOD detector on the features of these two.
            let feature_splits = export::FeatureSplits {
                train: splits.train.clone(),
                val: splits.val.clone(),
            };
            let trained = fit::train(&cfg, splits, cfg.augment)?;
            let out = export::export(&cfg, &trained, &feature_splits, command)?;
            println!("{}", serde_json::to_string_pretty(&out.report)?);
            println!("wrote {} and {}", out.model.display(), out.calib.display());
            Ok(())
        }
    }
}
