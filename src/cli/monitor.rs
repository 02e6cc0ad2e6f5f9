//! `caliper monitor replay --log DIR --labels FILE`: the live monitor's report computed offline
//! from a payload log (`caliper serve --payload-log DIR`) and labels joined on `prediction_id`.
//! The join and the report are `serve::monitor::replay`; this module reads the files and prints
//! the JSON of `GET /v1/models/{model}/monitor`, plus a `replay` member that counts the join.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use crate::repository::{CalibrationFile, ModelMetadata};
use crate::serve::monitor::MonitorReport;
use crate::serve::monitor::replay::{JoinCounts, parse_labels, pick_model, replay};

/// Arguments of `caliper monitor`.
#[derive(Debug, clap::Args)]
pub struct MonitorArgs {
    #[command(subcommand)]
    pub command: MonitorCommand,
}

/// Subcommands of `caliper monitor`.
#[derive(Debug, clap::Subcommand)]
pub enum MonitorCommand {
    /// Join a labels file with a payload log and print the monitor report (ECE, accuracy, bins,
    /// drift) the live server computes from the same labels.
    Replay(ReplayArgs),
}

/// Arguments of `caliper monitor replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Payload log directory (`caliper serve --payload-log`).
    #[arg(long)]
    pub log: PathBuf,
    /// Labels: CSV `prediction_id,label` (optional header) or JSON lines
    /// `{"prediction_id": ..., "label": ...}`; a label is a class index or a class name.
    #[arg(long)]
    pub labels: PathBuf,
    /// The model to report on; needed when the log holds several.
    #[arg(long)]
    pub model: Option<String>,
    /// Model repository, for the class names of labels given by name.
    #[arg(long, env = "CALIPER_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Calibration files, for the drift test's validation reference (`calib/<model>.json`).
    #[arg(long, env = "CALIPER_CALIB", default_value = "calib")]
    pub calib: PathBuf,
    /// Labelled predictions in the window, as `caliper serve --monitor-window`.
    #[arg(long, env = "CALIPER_MONITOR_WINDOW", default_value_t = 10_000)]
    pub monitor_window: usize,
}

/// What `replay` prints.
#[derive(Debug, Serialize)]
struct Printed {
    #[serde(flatten)]
    report: MonitorReport,
    replay: ReplaySummary,
}

#[derive(Debug, Serialize)]
struct ReplaySummary {
    #[serde(flatten)]
    counts: JoinCounts,
    log_files: usize,
    log_lines_skipped: usize,
}

/// Runs `caliper monitor`.
pub fn run(args: MonitorArgs) -> anyhow::Result<()> {
    match args.command {
        MonitorCommand::Replay(a) => run_replay(&a),
    }
}

fn run_replay(a: &ReplayArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.monitor_window >= 1, "--monitor-window must be at least 1");
    let (log, read) = crate::serve::payload_log::read(&a.log)
        .with_context(|| format!("cannot read the payload log {}", a.log.display()))?;
    let text = std::fs::read_to_string(&a.labels)
        .with_context(|| format!("cannot read {}", a.labels.display()))?;
    let labels = parse_labels(&text)?;
    let model = pick_model(&log, a.model.as_deref())?;
    let toml = a.models.join(&model).join("model.toml");
    let classes = if toml.is_file() {
        Some(ModelMetadata::load(&toml)?.labels)
    } else {
        None
    };
    let calib = a.calib.join(format!("{model}.json"));
    let reference = if calib.is_file() {
        CalibrationFile::load(&calib)?.reference
    } else {
        None
    };
    let bins = crate::trust::metrics::DEFAULT_BINS;
    let r = replay(
        &log,
        &labels,
        &model,
        classes.as_deref(),
        a.monitor_window,
        bins,
        reference.as_ref(),
    )?;
    let c = &r.counts;
    if c.unmatched + c.duplicates + c.rejected > 0 || read.skipped_lines > 0 {
        eprintln!(
            "joined {} of {} labels: {} without a logged prediction of {model}, {} duplicates, \
             {} not a class{}; {} unreadable log lines skipped",
            c.joined,
            c.labels,
            c.unmatched,
            c.duplicates,
            c.rejected,
            if classes.is_none() {
                format!(" (no {} for class names)", toml.display())
            } else {
                String::new()
            },
            read.skipped_lines
        );
    }
    let printed = Printed {
        report: MonitorReport {
            model: r.model,
            model_version: r.model_version,
            window: a.monitor_window,
            bins,
            live: Some(r.report),
            shadow: None,
        },
        replay: ReplaySummary {
            counts: r.counts,
            log_files: read.files,
            log_lines_skipped: read.skipped_lines,
        },
    };
    println!("{}", serde_json::to_string_pretty(&printed)?);
    Ok(())
}
