//! `caliper eval`: every metric of logits (optionally before and after a calibration file),
//! with percentile bootstrap intervals, as a table or JSON, and a reliability diagram.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use crate::repository::CalibrationFile;
use crate::trust::calibration::{Calibrator, calibrate_rows};
use crate::trust::diagram::{ReliabilityPanel, write_diagram};
use crate::trust::metrics::{BootstrapOptions, MetricReport, Samples, bootstrap};

/// Arguments of `caliper eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub input: super::input::InputArgs,
    /// Calibration file to apply (also compares against the uncalibrated softmax).
    #[arg(long, env = "CALIPER_CALIB")]
    pub calib: Option<PathBuf>,
    /// Bins of the ECE family (15 as Guo et al.; the paper reports 20).
    #[arg(long, env = "CALIPER_BINS", default_value_t = crate::trust::metrics::DEFAULT_BINS)]
    pub bins: usize,
    /// Print JSON (fractions, not percent) instead of a table.
    #[arg(long, env = "CALIPER_JSON")]
    pub json: bool,
    /// Write a reliability diagram to this .svg or .png.
    #[arg(long, env = "CALIPER_DIAGRAM")]
    pub diagram: Option<PathBuf>,
    /// Percentile bootstrap intervals from this many resamples (0 = none).
    #[arg(long, env = "CALIPER_BOOTSTRAP", default_value_t = 0)]
    pub bootstrap: usize,
    /// Seed of the bootstrap resampling.
    #[arg(long, env = "CALIPER_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Coverage of the bootstrap intervals.
    #[arg(long, env = "CALIPER_LEVEL", default_value_t = 0.95)]
    pub level: f64,
}

/// One evaluated column: a title, its report, its intervals and its reliability bins.
struct Column {
    key: &'static str,
    title: String,
    report: MetricReport,
    intervals: Option<Map<String, Value>>,
    panel: ReliabilityPanel,
}

fn evaluate_column(
    key: &'static str,
    title: String,
    calibrator: &Calibrator,
    data: &super::input::Loaded,
    args: &EvalArgs,
) -> anyhow::Result<Column> {
    let probs = calibrate_rows(calibrator, data.logits.view())?;
    let samples = Samples::new(probs.view(), &data.labels)?;
    let all: Vec<usize> = (0..samples.len()).collect();
    let report = samples.report(&all, args.bins)?;
    let panel = ReliabilityPanel::from_accumulator(&title, &samples.binned(&all, args.bins)?);
    let intervals = if args.bootstrap > 0 {
        let opts = BootstrapOptions {
            resamples: args.bootstrap,
            seed: args.seed,
            level: args.level,
        };
        let ci = bootstrap(&samples, args.bins, &opts)?;
        Some(
            ci.into_iter()
                .map(|(k, v)| (k.to_string(), json!([v.low, v.high])))
                .collect(),
        )
    } else {
        None
    };
    Ok(Column {
        key,
        title,
        report,
        intervals,
        panel,
    })
}

/// Runs `caliper eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    if args.bins == 0 {
        bail!("--bins must be at least 1");
    }
    let data = args.input.load()?;
    let mut columns = vec![evaluate_column(
        "uncalibrated",
        "Uncalibrated".into(),
        &Calibrator::Identity,
        &data,
        &args,
    )?];
    if let Some(path) = &args.calib {
        let file = CalibrationFile::load(path)?;
        if file.num_classes != data.logits.ncols() {
            bail!(
                "{} is for {} classes but the logits have {}",
                path.display(),
                file.num_classes,
                data.logits.ncols()
            );
        }
        let title = format!("Calibrated: {}", file.calibrator.method());
        columns.push(
            evaluate_column("calibrated", title, &file.calibrator, &data, &args)
                .with_context(|| format!("applying {}", path.display()))?,
        );
    }
    if let Some(path) = &args.diagram {
        let panels: Vec<ReliabilityPanel> = columns.iter().map(|c| c.panel.clone()).collect();
        write_diagram(path, &panels)?;
    }
    if args.json {
        let objects: Vec<Value> = columns
            .iter()
            .map(|c| {
                let mut v = serde_json::to_value(&c.report).unwrap_or_default();
                if let (Some(ci), Value::Object(m)) = (&c.intervals, &mut v) {
                    m.insert("ci".into(), Value::Object(ci.clone()));
                }
                v
            })
            .collect();
        let out = if columns.len() == 1 {
            objects.into_iter().next().unwrap_or_default()
        } else {
            let mut m = Map::new();
            for (c, v) in columns.iter().zip(objects) {
                m.insert(c.key.into(), v);
            }
            Value::Object(m)
        };
        writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        write!(std::io::stdout(), "{}", table(&columns, &data.source))?;
    }
    Ok(())
}

/// The human-readable table: percent for rates and the ECE family, raw values otherwise.
fn table(columns: &[Column], source: &str) -> String {
    let r0 = &columns[0].report;
    let mut out = format!(
        "{source}: {} samples, {} classes, {} bins\n{:<14}",
        r0.samples, r0.classes, r0.bins, "metric"
    );
    for c in columns {
        out.push_str(&format!("{:>32}", c.title));
    }
    out.push('\n');
    for (i, (name, _)) in r0.named().iter().enumerate() {
        out.push_str(&format!("{name:<14}"));
        let percent = matches!(
            *name,
            "accuracy" | "ece" | "adaece" | "mce" | "classwise_ece"
        );
        for c in columns {
            let show = |v: f64| {
                if percent {
                    format!("{:.2}%", 100.0 * v)
                } else {
                    format!("{v:.4}")
                }
            };
            let value = c.report.named()[i].1.map_or("n/a".into(), show);
            let ci = c
                .intervals
                .as_ref()
                .and_then(|m| m.get(*name))
                .and_then(|v| Some((v[0].as_f64()?, v[1].as_f64()?)))
                .map_or(String::new(), |(lo, hi)| {
                    format!(" [{}, {}]", show(lo), show(hi))
                });
            out.push_str(&format!("{:>32}", value + &ci));
        }
        out.push('\n');
    }
    out
}
