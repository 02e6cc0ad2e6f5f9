//! `caliper-train`: its command line and the dispatch of each subcommand into `crate::train`.
//! The binary only parses, sets up logging and calls [`run`].

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::train;
use crate::train::config::{BenchArgs, CheckArgs, GraphArgs, PlotArgs, TrainArgs};
use crate::trust::diagram;

/// caliper-train: train an image classifier with GCE (or a baseline loss) on ONNX Runtime and
/// export it, calibrated, to the model repository.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model and export `models/NAME/` and `calib/NAME.json`.
    Train(Box<TrainArgs>),
    /// Write the training-step graph to a file (for inspection or outside checks).
    Graph(GraphArgs),
    /// Time training steps on random data (throughput only; see scripts/bench-train.sh).
    Bench(BenchArgs),
    /// Draw the reliability diagram (validation, before / after) of a calibration file as PNG.
    Plot(PlotArgs),
    /// Run one training step on random data on a device (as training runs it) and on the CPU
    /// with the graph exactly as written; compare every output (exit status 1 if they differ).
    CheckStep(CheckArgs),
}

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
            let net = train::arch::Net::new(&g.model.arch, &input, g.classes, g.model.width)?;
            let graph =
                train::step::training_step(&net, g.model.loss()?, &g.model.optimizer(0.0)?, true);
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
            let file = crate::repository::CalibrationFile::load(&p.calib)?;
            let panels = file
                .fit
                .as_ref()
                .and_then(|f| f.reliability_panels(file.calibrator.method()))
                .with_context(|| format!("{} has no reliability bins", p.calib.display()))?;
            let png = diagram::reliability_png(&panels)?;
            crate::fsutil::write_atomic(&p.out, &png)
                .with_context(|| format!("writing {}", p.out.display()))?;
            Ok(())
        }
        Command::CheckStep(c) => {
            let report = train::check::run(&c)?;
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
            let report = train::bench::run(&b)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Train(args) => {
            let cfg = (*args).validate()?;
            tracing::info!(config = ?cfg, "starting training");
            let a = &cfg.args;
            let splits = train::dataset::load_splits(
                &a.dataset,
                &a.data_dir,
                &cfg.validation,
                a.train_fraction,
                a.imbalance_ratio,
                a.seed,
                <[usize; 2]>::try_from(a.input_size.as_slice()).ok(),
            )?;
            // The export fits the Mahalanobis OOD detector on the features of these two.
            let feature_splits = train::export::FeatureSplits {
                train: splits.train.clone(),
                val: splits.val.clone(),
            };
            // Everything the export needs is checked now, not after the last epoch.
            let pre = train::export::preflight(&cfg, &feature_splits)?;
            for w in pre.fit.warnings.iter().chain(&pre.warnings) {
                tracing::warn!(model = %a.out, "{w}");
            }
            let trained = train::fit::train(&cfg, splits, cfg.augment)?;
            let out = train::export::export(&cfg, &trained, &feature_splits, command)?;
            println!("{}", serde_json::to_string_pretty(&out.report)?);
            println!("wrote {} and {}", out.model.display(), out.calib.display());
            Ok(())
        }
    }
}
