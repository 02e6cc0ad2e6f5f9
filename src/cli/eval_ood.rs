//! `caliper eval-ood --model NAME --id SPEC --ood SPEC`: how well each OOD score tells an
//! in-distribution set from an out-of-distribution one (AUROC, FPR at 95% TPR, AUPR), with the
//! model's calibration file (calibrated MSP, the Mahalanobis detector, the served thresholds).
//! The maths is `ood::eval`; this module loads, runs the model and prints.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Serialize;

use super::model_logits::{ImageSet, ModelOutputs, open_labelled, open_spec, run_on};
use crate::repository::CalibrationFile;
use crate::repository::ModelMetadata;
use crate::trust::calibration::Calibrator;
use crate::trust::ood::eval::{OodEvaluation, SetOutputs, evaluate};

/// Arguments of `caliper eval-ood`.
#[derive(Debug, clap::Args)]
pub struct EvalOodArgs {
    /// Model name (a folder of --models-dir).
    #[arg(long, env = "CALIPER_MODEL")]
    pub model: String,
    /// In-distribution dataset (spec syntax, e.g. `mnist:test`).
    #[arg(long, env = "CALIPER_OOD_ID")]
    pub id: String,
    /// Out-of-distribution dataset (e.g. `fashion-mnist:test`).
    #[arg(long, env = "CALIPER_OOD_DATA")]
    pub ood: String,
    /// Folder holding one folder per model.
    #[arg(long, env = "CALIPER_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Folder of calibration files (`<model>.json`); without one, MSP is uncalibrated and
    /// there are no thresholds and no Mahalanobis score.
    #[arg(long, env = "CALIPER_CALIB_DIR", default_value = "calib")]
    pub calib_dir: PathBuf,
    /// Folder the dataset specs are resolved in.
    #[arg(long, env = "CALIPER_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Print the report as JSON instead of a Markdown table.
    #[arg(long, env = "CALIPER_JSON")]
    pub json: bool,
    /// Also write the JSON report to this file (e.g. docs/ood/NAME.json).
    #[arg(long, env = "CALIPER_OOD_OUT")]
    pub out: Option<PathBuf>,
}

/// The JSON report.
#[derive(Debug, Serialize)]
struct Report<'a> {
    model: &'a str,
    model_sha256: String,
    calibration: &'static str,
    id: &'a str,
    ood: &'a str,
    #[serde(flatten)]
    evaluation: OodEvaluation,
    command: String,
}

fn set(o: &ModelOutputs) -> SetOutputs<'_> {
    SetOutputs {
        logits: o.logits.view(),
        features: o.features.as_ref().map(|f| f.view()),
    }
}

/// Runs `caliper eval-ood`.
pub fn run(args: EvalOodArgs) -> anyhow::Result<()> {
    let dir = args.models_dir.join(&args.model);
    let onnx = dir.join("model.onnx");
    let sha =
        crate::fsutil::sha256_file(&onnx).with_context(|| format!("hashing {}", onnx.display()))?;
    let calib_path = args.calib_dir.join(format!("{}.json", args.model));
    let file = if calib_path.is_file() {
        let f = CalibrationFile::load(&calib_path)?;
        if f.model_sha256 != sha {
            bail!(
                "{} was fitted on another model file (sha256 {}, {} is {sha}): refit it with \
                 caliper calibrate",
                calib_path.display(),
                f.model_sha256,
                onnx.display()
            );
        }
        Some(f)
    } else {
        tracing::warn!(path = %calib_path.display(), "no calibration file: uncalibrated MSP, no thresholds");
        None
    };
    let ood_file = file.as_ref().and_then(|f| f.ood.as_ref());
    let meta = ModelMetadata::load(&dir.join("model.toml"))?;
    // Features cost a copy per image: fetch them only when there is a detector to score them.
    let features =
        meta.output.features.is_some() && ood_file.is_some_and(|o| !o.detectors.is_empty());
    let id_data = open_labelled(&args.models_dir, &args.model, &args.data_dir, &args.id)?;
    // The OOD set's classes mean nothing to the model; any image size or channel count is
    // brought to the model's input by the server's preprocessing (e.g. MNIST digits for a
    // CIFAR-10 model).
    let ood_data = open_spec(&args.data_dir, &args.ood)?;
    let id = run_on(
        &args.models_dir,
        &args.model,
        &id_data.images,
        &args.id,
        features,
    )?;
    let ood = run_on(
        &args.models_dir,
        &args.model,
        &ood_data,
        &args.ood,
        features,
    )?;
    let calibrator = file
        .as_ref()
        .map_or(Calibrator::Identity, |f| f.calibrator.clone());
    let evaluation = evaluate(set(&id), set(&ood), &calibrator, ood_file)?;
    let table = evaluation.markdown();
    let report = Report {
        model: &args.model,
        model_sha256: sha,
        calibration: calibrator.method(),
        id: &args.id,
        ood: &args.ood,
        evaluation,
        command: format!(
            "caliper eval-ood --model {} --id {} --ood {}",
            args.model, args.id, args.ood
        ),
    };
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &args.out {
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        crate::fsutil::write_atomic(out, format!("{json}\n").as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let mut stdout = std::io::stdout();
    if args.json {
        writeln!(stdout, "{json}")?;
    } else {
        writeln!(
            stdout,
            "{} ({}): {} ({} images) vs {} ({} images)\n\n{table}",
            args.model,
            report.calibration,
            args.id,
            id_data.labels.len(),
            args.ood,
            ood_data.count()
        )?;
    }
    Ok(())
}
