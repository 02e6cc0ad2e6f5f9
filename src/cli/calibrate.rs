//! `caliper calibrate`: fit a calibrator on validation logits and write `calib/NAME.json`
//! with the fit's data summary and the validation metrics before and after.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use ndarray::Array2;

use super::input::{InputArgs, Loaded};
use super::model_logits;

use crate::repository::{Adapt, BundleInput, FitArgs, fit_bundle};
use crate::trust::calibration::Method;
use crate::trust::diagram::write_diagram;
use crate::trust::ood::artifacts::FeatureData;

/// Arguments of `caliper calibrate`.
#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub input: super::input::InputArgs,
    /// Calibration method. Without it: ATS, adapted to the data (fewer pieces, then plain
    /// temperature scaling when the validation set is too small, each with a warning); with it,
    /// the method and its options are taken as given (too little data is an error).
    #[arg(long, env = "CALIPER_METHOD", value_enum)]
    pub method: Option<Method>,
    /// Output file (default: calib/<model>.json, or calib/calibrator.json without --model).
    #[arg(long, env = "CALIPER_CALIB_OUT")]
    pub out: Option<PathBuf>,
    /// sha256 of the model file the logits came from (default: hashed from
    /// <models-dir>/<model>/model.onnx when it exists).
    #[arg(long, env = "CALIPER_MODEL_SHA256")]
    pub model_sha256: Option<String>,
    /// Calibrator options (shared with `caliper-train train`).
    #[command(flatten)]
    pub fit: FitArgs,
    /// Bins of the ECE family in the recorded validation metrics.
    #[arg(long, env = "CALIPER_BINS", default_value_t = crate::trust::metrics::DEFAULT_BINS)]
    pub bins: usize,
    /// Also write the validation reliability diagram (before / after) to this .svg or .png.
    #[arg(long, env = "CALIPER_DIAGRAM")]
    pub diagram: Option<PathBuf>,
    /// The model's training split (spec syntax, e.g. `mnist:train[fit=0.1,seed=0]`): fits the
    /// Mahalanobis OOD detector (class means and shared covariance of the model's features);
    /// its threshold comes from --data. Needs --model, --data and a features output.
    #[arg(long, env = "CALIPER_TRAIN_DATA", requires = "data")]
    pub train_data: Option<String>,
}

/// Features of the validation split (`--data`) and of the training split (`--train-data`).
struct Features {
    val: Array2<f64>,
    train: Array2<f64>,
    train_labels: Vec<usize>,
}

/// Runs the model over `--data` (logits and features) and `--train-data` (features).
fn with_features(
    input: &InputArgs,
    train_spec: &str,
) -> anyhow::Result<(Loaded, Option<Features>)> {
    let (Some(model), Some(spec)) = (input.model.as_deref(), input.data.as_deref()) else {
        anyhow::bail!("--train-data needs --model NAME --data SPEC");
    };
    let val = model_logits::open_labelled(&input.models_dir, model, &input.data_dir, spec)?;
    let v = model_logits::run_on(&input.models_dir, model, &val.images, spec, true)?;
    let train = model_logits::open_labelled(&input.models_dir, model, &input.data_dir, train_spec)?;
    let t = model_logits::run_on(&input.models_dir, model, &train.images, train_spec, true)?;
    let (Some(val_f), Some(train_f)) = (v.features, t.features) else {
        anyhow::bail!("{model}: the session returned no features");
    };
    Ok((
        Loaded {
            logits: v.logits,
            labels: val.labels,
            source: format!("{model} on {spec}"),
        },
        Some(Features {
            val: val_f,
            train: train_f,
            train_labels: train.labels,
        }),
    ))
}

/// Runs `caliper calibrate`.
pub fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    let opts = args.fit.options();
    opts.validate()?;
    if args.bins == 0 {
        anyhow::bail!("--bins must be at least 1");
    }
    // Checked before any model runs; `with_method` checks again against what was fitted.
    if !crate::trust::ood::artifacts::METHODS.contains(&args.fit.ood_method.as_str()) {
        anyhow::bail!(
            "--ood-method {:?}: expected one of {}",
            args.fit.ood_method,
            crate::trust::ood::artifacts::METHODS.join(", ")
        );
    }
    if crate::trust::ood::artifacts::needs_features(&args.fit.ood_method)
        && args.train_data.is_none()
    {
        anyhow::bail!(
            "--ood-method {} needs --train-data SPEC (it is fitted on training features)",
            args.fit.ood_method
        );
    }
    let (data, features) = match &args.train_data {
        None => (args.input.load()?, None),
        Some(train) => with_features(&args.input, train)?,
    };
    let sha = match (&args.model_sha256, args.input.model_dir()) {
        (Some(s), _) => s.clone(),
        (None, Some(dir)) => {
            let onnx = dir.join("model.onnx");
            crate::fsutil::sha256_file(&onnx)
                .with_context(|| format!("hashing {}", onnx.display()))?
        }
        (None, None) => {
            tracing::warn!(
                "no --model-sha256 and no model file to hash: the calibrator is not bound to a \
                 model file"
            );
            String::new()
        }
    };
    let model = args.input.model.clone().unwrap_or_default();
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = if model.is_empty() {
            "calibrator"
        } else {
            &model
        };
        PathBuf::from("calib").join(format!("{stem}.json"))
    });
    let feature_data = features.as_ref().map(|f| FeatureData {
        val: f.val.view(),
        train: f.train.view(),
        train_labels: &f.train_labels,
    });
    let fitted = fit_bundle(&BundleInput {
        model: &model,
        model_sha256: &sha,
        source: &data.source,
        logits: data.logits.view(),
        labels: &data.labels,
        features: feature_data,
        method: args.method.unwrap_or(Method::Ats),
        options: &opts,
        bins: args.bins,
        ood_method: &args.fit.ood_method,
        adapt: if args.method.is_some() {
            Adapt::Never
        } else {
            Adapt::ToData
        },
    })?;
    fitted.file.save(&out)?;
    let (summary, fit_ms) = (&fitted.summary, fitted.fit_ms);
    let method = fitted.calibrator.method();
    if let (Some(path), Some(panels)) = (&args.diagram, summary.reliability_panels(method)) {
        write_diagram(path, &panels)?;
    }
    if let (Some(b), Some(a)) = (&summary.before, &summary.after) {
        writeln!(
            std::io::stdout(),
            "{method}: {} samples, {} classes, fit {fit_ms:.1} ms -> {}",
            summary.samples,
            data.logits.ncols(),
            out.display()
        )?;
        writeln!(
            std::io::stdout(),
            "validation (in-sample) ECE {:.2}% -> {:.2}%, NLL {:.4} -> {:.4}, accuracy {:.2}% -> {:.2}%",
            100.0 * b.ece,
            100.0 * a.ece,
            b.nll,
            a.nll,
            100.0 * b.accuracy,
            100.0 * a.accuracy
        )?;
    }
    Ok(())
}
