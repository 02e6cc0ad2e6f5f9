//! Recalibration from label feedback (issue 22, section 2): fit a calibrator on the labelled
//! logits of a model's feedback window, check it on held-out feedback, write it as the model's
//! `calib/<name>.json` (the previous file kept as `calib/<name>.json.prev`) and swap it in.
//! `POST /v2/repository/models/M/recalibrate` and `--auto-recalibrate` both come here.
//!
//! The held-out check fits on the oldest 70% of the window and scores that fit and the incumbent
//! on the newest 30% (the labels most like the traffic to come); the file written is then fitted
//! on the whole window. The file goes through the same bundle code as `caliper calibrate`
//! (`repository::fit_bundle`): same sha256 binding to `model.onnx`, the OOD thresholds, conformal
//! predictors and drift reference refitted with the new calibrator on the feedback logits. What
//! the feedback cannot refit (the Mahalanobis detector, which needs features) is carried over from
//! the previous file: it does not depend on the calibrator.

use crate::trust::ood::artifacts::needs_features;
use ndarray::{ArrayView2, Axis};
use serde::Serialize;

use super::{InferError, ModelRegistry};
use crate::repository::fit_bundle::plan_fit;
use crate::repository::{
    Adapt, BundleInput, CalibrationFile, FeedbackProvenance, HeldOutCheck, HeldOutFigures,
    fit_bundle,
};
use crate::serve::monitor::now_s;
use crate::serve::monitor::recal::Recalibration;
use crate::serve::prometheus::ServerMetrics;
use crate::trust::calibration::{Calibrator, FitOptions, Method, calibrate_rows, fit};
use crate::trust::metrics::Samples;

/// Fewest usable labelled predictions a recalibration fits on.
pub const MIN_RECALIBRATION_LABELS: usize = 100;

/// Share of the window the held-out check fits on (the oldest labels).
pub const FIT_SHARE: f64 = 0.7;

/// What asked for the recalibration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `POST /v2/repository/models/M/recalibrate`.
    Manual,
    /// `--auto-recalibrate`: the promotion rule chose a shadow.
    Auto,
}

impl Trigger {
    /// The label value of the metric and the provenance.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Auto => "auto",
        }
    }
}

/// One recalibration.
#[derive(Debug, Clone, Copy)]
pub struct RecalibrateRequest {
    /// `Ts` or `Ats`.
    pub method: Method,
    /// Fit on at most the last `window` usable labels.
    pub window: usize,
    /// Who asked.
    pub trigger: Trigger,
}

/// Why a recalibration did not happen (the previous calibrator keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum RecalibrateError {
    /// The model is not loaded.
    #[error("model {0:?} is not loaded")]
    ModelNotFound(String),
    /// Only the temperature methods are refitted from feedback.
    #[error("method {0:?} cannot be fitted from feedback here: use \"ts\" or \"ats\"")]
    Method(String),
    /// Not enough labelled predictions with their logits.
    #[error(
        "{have} labelled predictions with logits in the feedback window of this replica, at least \
         {need} are needed (labels whose logits left the store do not count: see --logit-store)"
    )]
    TooFewLabels { have: usize, need: usize },
    /// The fit failed (e.g. no misclassified prediction in the window).
    #[error("fitting from feedback: {0}")]
    Fit(String),
    /// The calibration file could not be written.
    #[error("writing the calibration file: {0}")]
    Write(String),
    /// The new file was written but the model did not load with it; the previous file was put
    /// back.
    #[error("the recalibrated model did not load (previous calibration restored): {0}")]
    Reload(InferError),
}

/// The answer of a recalibration.
#[derive(Debug, Clone, Serialize)]
pub struct RecalibrationReport {
    /// Model name.
    pub model: String,
    /// Method fitted (ATS may fall back to TS on a short window: see `warnings`).
    pub method: &'static str,
    /// Method of the calibrator it replaced.
    pub replaced: &'static str,
    /// Who asked.
    pub trigger: Trigger,
    /// Labelled predictions the written calibrator was fitted on.
    pub labels: usize,
    /// Arrival of the first and last of them (Unix seconds).
    pub first_label_s: u64,
    /// See `first_label_s`.
    pub last_label_s: u64,
    /// Before (incumbent) and after (trial fit on the oldest 70%) on the newest 30%.
    pub held_out: HeldOutCheck,
    /// The calibrator now serving.
    pub calibrator: Calibrator,
    /// The calibration file written.
    pub file: String,
    /// Where the replaced file was kept (None when the model had no calibration file).
    pub previous_file: Option<String>,
    /// Adaptations and degenerate-data diagnostics of the fit.
    pub warnings: Vec<String>,
}

/// Fits, checks, writes and swaps in a calibrator from `name`'s feedback window. Blocking (a
/// fit, two file writes, a model reload): call it on the blocking pool. One at a time per server
/// (`Recalibration::promotion_lock`). Counted in `caliper_recalibrations_total` and logged.
pub fn recalibrate(
    registry: &ModelRegistry,
    recal: &Recalibration,
    metrics: &ServerMetrics,
    name: &str,
    req: RecalibrateRequest,
) -> Result<RecalibrationReport, RecalibrateError> {
    let result = {
        let _one_at_a_time = recal.promotion_lock();
        run(registry, recal, name, req)
    };
    // The incumbent changed (or an automatic attempt failed): scores start again, so that a
    // failing promotion is not retried on every label.
    if result.is_ok() || req.trigger == Trigger::Auto {
        recal.reset_scores(name);
    }
    match &result {
        Ok(r) => {
            metrics
                .recal
                .recalibrations
                .with_label_values(&[name, r.method, req.trigger.as_str()])
                .inc();
            tracing::info!(
                model = name,
                method = r.method,
                trigger = req.trigger.as_str(),
                labels = r.labels,
                before_nll = r.held_out.before.nll,
                after_nll = r.held_out.after.nll,
                before_ece = r.held_out.before.ece,
                after_ece = r.held_out.after.ece,
                file = %r.file,
                "calibrator recalibrated from feedback and swapped in"
            );
        }
        Err(e) => {
            tracing::warn!(model = name, trigger = req.trigger.as_str(), error = %e, "recalibration from feedback not done")
        }
    }
    result
}

fn run(
    registry: &ModelRegistry,
    recal: &Recalibration,
    name: &str,
    req: RecalibrateRequest,
) -> Result<RecalibrationReport, RecalibrateError> {
    if !matches!(req.method, Method::Ts | Method::Ats) {
        return Err(RecalibrateError::Method(format!("{:?}", req.method)));
    }
    let model = registry
        .get(name)
        .ok_or_else(|| RecalibrateError::ModelNotFound(name.to_string()))?;
    let bins = recal.config().bins;
    let data = recal
        .feedback(name, &model.files.sha256, req.window)
        .filter(|d| d.labels.len() >= MIN_RECALIBRATION_LABELS)
        .ok_or_else(|| RecalibrateError::TooFewLabels {
            have: recal.window_len(name).min(req.window),
            need: MIN_RECALIBRATION_LABELS,
        })?;
    let n = data.labels.len();
    let opts = FitOptions::default();

    // The held-out check: fit on the oldest 70%, score both on the newest 30%.
    let split = ((n as f64) * FIT_SHARE).round() as usize;
    // (ndarray's `s!` macro expands to an `allow(unsafe_code)`, which the crate forbids.)
    let (older, newer) = data.logits.view().split_at(Axis(0), split);
    let (older_y, newer_y) = data.labels.split_at(split);
    let plan = plan_fit(req.method, &opts, split, Adapt::ToData)
        .map_err(|e| RecalibrateError::Fit(e.to_string()))?;
    let trial = fit(plan.method, &plan.options, older, older_y)
        .map_err(|e| RecalibrateError::Fit(e.to_string()))?;
    let held_out = HeldOutCheck {
        fit_labels: split,
        held_out_labels: n - split,
        before: figures(&model.calibrator, newer, newer_y, bins)?,
        after: figures(&trial, newer, newer_y, bins)?,
    };

    // The file: fitted on the whole window through the bundle code of `caliper calibrate`.
    let plan = plan_fit(req.method, &opts, n, Adapt::ToData)
        .map_err(|e| RecalibrateError::Fit(e.to_string()))?;
    let previous = model.files.calibration.as_ref();
    let prev_ood = previous.and_then(|f| f.ood.as_ref());
    let ood_method = prev_ood
        .map(|o| o.method.as_str())
        .filter(|m| !needs_features(m))
        .unwrap_or(crate::trust::ood::artifacts::DEFAULT_METHOD);
    let source = format!(
        "fitted from feedback: {n} labelled predictions received {}..{} (Unix s)",
        data.from_s, data.to_s
    );
    let bundle = fit_bundle(&BundleInput {
        model: name,
        model_sha256: &model.files.sha256,
        source: &source,
        logits: data.logits.view(),
        labels: &data.labels,
        features: None,
        method: plan.method,
        options: &plan.options,
        bins,
        ood_method,
        adapt: Adapt::Never,
    })
    .map_err(|e| RecalibrateError::Fit(e.to_string()))?;
    let mut warnings = plan.warnings;
    warnings.extend(bundle.warnings);
    let mut file = bundle.file;
    // Feedback carries no features: the feature-based detectors and their thresholds (which
    // do not depend on the calibrator) are carried over from the previous file.
    if let (Some(old), Some(new)) = (prev_ood, file.ood.as_mut())
        && !old.detectors.is_empty()
    {
        new.detectors = old.detectors.clone();
        for (name, t) in old.thresholds.iter().filter(|(n, _)| needs_features(n)) {
            new.thresholds.insert(name.clone(), *t);
        }
        if needs_features(&old.method) {
            new.method = old.method.clone();
        }
    }
    let replaced = model.calibrator.method();
    file.provenance = Some(FeedbackProvenance {
        source: "fitted from feedback".into(),
        trigger: req.trigger.as_str().into(),
        labels: n,
        first_label_s: data.from_s,
        last_label_s: data.to_s,
        fitted_at_s: now_s(),
        replaced: replaced.into(),
        held_out: Some(held_out.clone()),
    });
    let calibrator = file.calibrator.clone();
    let (path, previous_file) = write_and_swap(registry, name, &file)?;
    Ok(RecalibrationReport {
        model: name.to_string(),
        method: calibrator.method(),
        replaced,
        trigger: req.trigger,
        labels: n,
        first_label_s: data.from_s,
        last_label_s: data.to_s,
        held_out,
        calibrator,
        file: path,
        previous_file,
        warnings,
    })
}

/// NLL, ECE and accuracy of `calibrator` on logits and labels.
fn figures(
    calibrator: &Calibrator,
    logits: ArrayView2<'_, f64>,
    labels: &[usize],
    bins: usize,
) -> Result<HeldOutFigures, RecalibrateError> {
    let err = |e: String| RecalibrateError::Fit(format!("scoring held-out feedback: {e}"));
    let probs = calibrate_rows(calibrator, logits).map_err(|e| err(e.to_string()))?;
    let samples = Samples::new(probs.view(), labels).map_err(|e| err(e.to_string()))?;
    let all: Vec<usize> = (0..labels.len()).collect();
    let r = samples.report(&all, bins).map_err(|e| err(e.to_string()))?;
    Ok(HeldOutFigures {
        nll: r.nll,
        ece: r.ece,
        accuracy: r.accuracy,
    })
}

/// Keeps the current file as `<name>.json.prev`, writes the new one (both atomically) and
/// reloads the model. When the reload fails the previous file is put back (or the new one
/// removed when there was none), so that disk and memory agree on what serves.
fn write_and_swap(
    registry: &ModelRegistry,
    name: &str,
    file: &CalibrationFile,
) -> Result<(String, Option<String>), RecalibrateError> {
    let dir = registry.calib_dir();
    let path = dir.join(format!("{name}.json"));
    let prev_path = dir.join(format!("{name}.json.prev"));
    let write_err = |p: &std::path::Path, e: &dyn std::fmt::Display| {
        RecalibrateError::Write(format!("{}: {e}", p.display()))
    };
    let previous = match std::fs::read(&path) {
        Ok(bytes) => {
            crate::fsutil::write_atomic(&prev_path, &bytes)
                .map_err(|e| write_err(&prev_path, &e))?;
            Some(bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(write_err(&path, &e)),
    };
    file.save(&path).map_err(|e| write_err(&path, &e))?;
    if let Err(e) = registry.load(name) {
        let restored = match &previous {
            Some(bytes) => crate::fsutil::write_atomic(&path, bytes),
            None => std::fs::remove_file(&path),
        };
        if let Err(r) = restored {
            tracing::error!(model = name, error = %r, "could not restore the previous calibration file");
        }
        return Err(RecalibrateError::Reload(e));
    }
    Ok((
        path.display().to_string(),
        previous.map(|_| prev_path.display().to_string()),
    ))
}
