//! The one pipeline that fits what `calib/<name>.json` holds: the calibrator, its fit summary
//! and the trust artifacts (OOD thresholds, the Mahalanobis detector, conformal predictors, the
//! drift reference), with diagnostics of degenerate validation data. `caliper calibrate` and
//! the trainer's export both call [`fit_bundle`], so the two write identical files for the
//! same logits.
//!
//! The trainer asks for [`Adapt::ToData`]: a validation split too small for the requested
//! pieces gets fewer pieces, then plain temperature scaling, each with a warning, so that an
//! export never fails after training for want of data ([`plan_fit`] is checked before the
//! first epoch). `caliper calibrate` adapts the same way when no `--method` is given, and keeps
//! [`Adapt::Never`] when one is: a user who asked for ATS with 15 pieces gets an error, not a
//! silently different calibrator.

use ndarray::ArrayView2;

use super::{CalibrationFile, FitSummary};
use crate::trust::calibration::{
    CalibrationError, Calibrator, FitOptions, Method, Objective, calibrate_rows, fit,
};
use crate::trust::ood::artifacts::{ArtifactError, FeatureData, fit_trust_artifacts, score_rows};
use crate::trust::ood::fit::{OodError, constant_features};

/// Most penultimate features the trainer's export fits a Mahalanobis detector on.
pub const MAX_MAHALANOBIS_DIM: usize = 2048;

/// Share of validation predictions on one class above which the model is called a constant
/// predictor (issue 16: "one class > 95% of validation predictions").
pub const CONSTANT_PREDICTOR_SHARE: f64 = 0.95;

/// Errors of [`fit_bundle`] and [`plan_fit`].
#[derive(Debug, thiserror::Error)]
pub enum FitBundleError {
    /// The calibrator could not be fitted (the message names the method and the data).
    #[error("fitting {method:?} on {source_name}: {error}")]
    Fit {
        /// The method.
        method: Method,
        /// Where the validation data came from.
        source_name: String,
        /// Why.
        error: CalibrationError,
    },
    /// The summary's metrics could not be computed.
    #[error(transparent)]
    Summary(CalibrationError),
    /// The OOD thresholds, detector or conformal predictors could not be fitted.
    #[error(transparent)]
    Artifacts(ArtifactError),
    /// The requested OOD method has no threshold.
    #[error(transparent)]
    OodMethod(OodError),
    /// No validation data to fit on.
    #[error("the validation split is empty: nothing to fit a calibrator on")]
    NoValidation,
}

/// The calibrator and OOD options that `caliper calibrate` and `caliper-train train` share (one
/// clap definition for both commands; the calibrator itself is `--method` / `--calibrator`).
#[derive(Debug, Clone, clap::Args)]
pub struct FitArgs {
    /// ATS: number of equal-mass pieces of the uncalibrated confidence.
    #[arg(long, env = "CALIPER_ATS_PIECES", default_value_t = FitOptions::default().pieces)]
    pub pieces: usize,
    /// ATS: what each piece's temperature minimises.
    #[arg(long, env = "CALIPER_ATS_OBJECTIVE", value_enum, default_value_t = Objective::Nll)]
    pub objective: Objective,
    /// ATS: pull of each piece toward the global temperature, in pseudo-samples (0 = none).
    #[arg(long, env = "CALIPER_ATS_SHRINKAGE", default_value_t = FitOptions::default().shrinkage)]
    pub shrinkage: f64,
    /// ATS: interpolate 1/T linearly between piece centres (continuous confidences).
    #[arg(long, env = "CALIPER_ATS_SMOOTH")]
    pub smooth: bool,
    /// ATS and histogram: minimum samples per piece or bin.
    #[arg(long, env = "CALIPER_MIN_PIECE_SAMPLES", default_value_t = FitOptions::default().min_piece_samples)]
    pub min_piece_samples: usize,
    /// Histogram binning: number of equal-mass bins.
    #[arg(long, env = "CALIPER_HISTOGRAM_BINS", default_value_t = FitOptions::default().histogram_bins)]
    pub histogram_bins: usize,
    /// Smallest temperature searched.
    #[arg(long, env = "CALIPER_T_MIN", default_value_t = FitOptions::default().t_min)]
    pub t_min: f64,
    /// Largest temperature searched.
    #[arg(long, env = "CALIPER_T_MAX", default_value_t = FitOptions::default().t_max)]
    pub t_max: f64,
    /// Vector scaling: ridge toward the temperature-scaling solution.
    #[arg(long, env = "CALIPER_VECTOR_L2", default_value_t = FitOptions::default().vector_l2)]
    pub vector_l2: f64,
    /// OOD score the server decides `is_ood` with (the calibration file's default): msp,
    /// max_logit, energy, entropy, or mahalanobis (needs the model's features: `caliper
    /// calibrate --train-data`, always there for a trained model).
    #[arg(long, env = "CALIPER_OOD_METHOD", default_value = crate::trust::ood::artifacts::DEFAULT_METHOD)]
    pub ood_method: String,
}

impl FitArgs {
    /// The fit options these arguments give.
    pub fn options(&self) -> FitOptions {
        FitOptions {
            pieces: self.pieces,
            objective: self.objective,
            shrinkage: self.shrinkage,
            smooth: self.smooth,
            min_piece_samples: self.min_piece_samples,
            histogram_bins: self.histogram_bins,
            t_min: self.t_min,
            t_max: self.t_max,
            vector_l2: self.vector_l2,
        }
    }
}

/// Whether the fit may change the requested calibrator to suit the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapt {
    /// Fit exactly what was asked, or fail (`caliper calibrate`).
    Never,
    /// Fewer pieces or bins, then plain TS, when validation data is short; the identity when
    /// the validation split has no error to fit on (the trainer's export).
    ToData,
}

/// The calibrator a fit will run with, and why it differs from the request.
#[derive(Debug, Clone, PartialEq)]
pub struct FitPlan {
    /// Method actually fitted.
    pub method: Method,
    /// Options actually used.
    pub options: FitOptions,
    /// One line per change from the request.
    pub warnings: Vec<String>,
}

/// What `method` with `options` needs of `samples` validation samples, adapted under
/// [`Adapt::ToData`]: ATS (and histogram binning) need `min_piece_samples` per piece (bin), the
/// rule of `trust::calibration::fit`; with fewer samples the pieces shrink to what the data
/// holds, and below two pieces the fit becomes plain temperature scaling.
pub fn plan_fit(
    method: Method,
    options: &FitOptions,
    samples: usize,
    adapt: Adapt,
) -> Result<FitPlan, FitBundleError> {
    let mut plan = FitPlan {
        method,
        options: options.clone(),
        warnings: Vec::new(),
    };
    if samples == 0 {
        return Err(FitBundleError::NoValidation);
    }
    let wanted = match method {
        Method::Ats => options.pieces,
        Method::Histogram => options.histogram_bins,
        _ => return Ok(plan),
    };
    let per = options.min_piece_samples.max(1);
    if adapt == Adapt::Never || samples >= wanted * per {
        return Ok(plan);
    }
    let fits = samples / per;
    let what = if method == Method::Ats {
        "pieces"
    } else {
        "bins"
    };
    let why = format!(
        "{samples} validation samples are too few for {wanted} {what} of at least {per} samples"
    );
    if fits >= 2 {
        match method {
            Method::Ats => plan.options.pieces = fits,
            _ => plan.options.histogram_bins = fits,
        }
        plan.warnings.push(format!(
            "{why}: fitting {} with {fits} {what} instead (more validation data, or \
             --val-fraction, restores {wanted})",
            method_name(method)
        ));
    } else {
        plan.method = Method::Ts;
        plan.warnings.push(format!(
            "{why}, and too few for 2: fitting plain temperature scaling instead of {}",
            method_name(method)
        ));
    }
    Ok(plan)
}

fn method_name(m: Method) -> String {
    format!("{m:?}").to_lowercase()
}

/// Everything [`fit_bundle`] needs.
#[derive(Debug, Clone, Copy)]
pub struct BundleInput<'a> {
    /// Model name (the folder under `models/`).
    pub model: &'a str,
    /// sha256 of the `model.onnx` the logits came from.
    pub model_sha256: &'a str,
    /// Where the validation data came from (recorded in the fit summary).
    pub source: &'a str,
    /// Validation logits `[N, K]`.
    pub logits: ArrayView2<'a, f64>,
    /// Validation labels.
    pub labels: &'a [usize],
    /// Penultimate features for the Mahalanobis detector, when the model has them.
    pub features: Option<FeatureData<'a>>,
    /// Requested calibrator.
    pub method: Method,
    /// Requested options.
    pub options: &'a FitOptions,
    /// Bins of the ECE family in the summary.
    pub bins: usize,
    /// OOD score the server decides `is_ood` with.
    pub ood_method: &'a str,
    /// Whether the request may be adapted to the data.
    pub adapt: Adapt,
}

/// The fitted bundle, not yet written.
#[derive(Debug, Clone)]
pub struct FittedBundle {
    /// The calibration file's contents.
    pub file: CalibrationFile,
    /// The calibrator (also in `file`).
    pub calibrator: Calibrator,
    /// The fit summary (also in `file`).
    pub summary: FitSummary,
    /// Milliseconds the calibrator fit took.
    pub fit_ms: f64,
    /// Changes from the request and degenerate-data diagnostics, one line each (also logged).
    pub warnings: Vec<String>,
}

/// Fits the calibrator (adapted per `input.adapt`), its summary and the trust artifacts, and
/// checks the validation data for degenerate cases: a constant predictor, constant
/// (dead) feature columns dropped from the Mahalanobis distance, OOD thresholds that flag no
/// validation sample. Each warning is logged with `tracing::warn!` and returned.
pub fn fit_bundle(input: &BundleInput<'_>) -> Result<FittedBundle, FitBundleError> {
    let plan = plan_fit(input.method, input.options, input.labels.len(), input.adapt)?;
    let mut warnings = plan.warnings.clone();
    let fit_err = |error| FitBundleError::Fit {
        method: plan.method,
        source_name: input.source.to_string(),
        error,
    };
    let started = std::time::Instant::now();
    let calibrator = match fit(plan.method, &plan.options, input.logits, input.labels) {
        Ok(c) => c,
        Err(CalibrationError::Degenerate(why)) if input.adapt == Adapt::ToData => {
            warnings.push(format!(
                "no {} calibrator identified ({why}): the exported model is uncalibrated",
                method_name(plan.method)
            ));
            Calibrator::Identity
        }
        Err(e) => return Err(fit_err(e)),
    };
    let fit_ms = started.elapsed().as_secs_f64() * 1e3;
    let summary = FitSummary::compute(
        input.source,
        input.logits,
        input.labels,
        &calibrator,
        &plan.options,
        input.bins,
    )
    .map_err(FitBundleError::Summary)?;

    warnings.extend(constant_predictor(input.logits));
    let mut features = input.features;
    // The detector inverts a D x D covariance (O(D^3)) and stores D^2 numbers: beyond a
    // ResNet-50's 2048 features it costs minutes and gigabytes, which a trainer's export (whose
    // `linear` net has the input itself as features) must not spend unasked.
    if let Some(f) = features
        && input.adapt == Adapt::ToData
        && f.train.ncols() > MAX_MAHALANOBIS_DIM
    {
        warnings.push(format!(
            "no Mahalanobis detector: the model has {} features, more than the {} the \
             detector fits (its covariance grows with the square of the dimension)",
            f.train.ncols(),
            MAX_MAHALANOBIS_DIM
        ));
        features = None;
    }
    if let Some(f) = features {
        let dead = constant_features(f.train);
        if !dead.is_empty() {
            warnings.push(format!(
                "Mahalanobis: {} of {} features are constant on the training split (dead \
                 units); they are dropped from the distance",
                dead.len(),
                f.train.ncols()
            ));
        }
    }
    let trust = match fit_trust_artifacts(input.logits, input.labels, features, &calibrator) {
        Ok(t) => {
            warnings.extend(t.warnings.iter().cloned());
            t
        }
        Err(ArtifactError::Ood(e)) if input.adapt == Adapt::ToData && features.is_some() => {
            warnings.push(format!(
                "no Mahalanobis detector ({e}); the other OOD scores are fitted"
            ));
            features = None;
            fit_trust_artifacts(input.logits, input.labels, None, &calibrator)
                .map_err(FitBundleError::Artifacts)?
        }
        Err(e) => return Err(FitBundleError::Artifacts(e)),
    };
    let mut trust = trust;
    trust.ood = trust
        .ood
        .with_method(input.ood_method)
        .map_err(FitBundleError::OodMethod)?;
    warnings.extend(silent_thresholds(input, &calibrator, &trust.ood, features)?);

    for w in &warnings {
        tracing::warn!(model = input.model, "{w}");
    }
    let file = CalibrationFile::new(
        input.model,
        input.model_sha256,
        input.logits.ncols(),
        calibrator.clone(),
        Some(summary.clone()),
    )
    .with_trust(trust);
    Ok(FittedBundle {
        file,
        calibrator,
        summary,
        fit_ms,
        warnings,
    })
}

/// A warning when one class takes more than [`CONSTANT_PREDICTOR_SHARE`] of the argmax
/// predictions of `logits`.
pub fn constant_predictor(logits: ArrayView2<'_, f64>) -> Option<String> {
    let (n, k) = logits.dim();
    if n == 0 || k == 0 {
        return None;
    }
    let mut counts = vec![0usize; k];
    for row in logits.outer_iter() {
        counts[crate::numeric::argmax(&row.to_vec())] += 1;
    }
    let (class, &top) = counts.iter().enumerate().max_by_key(|(_, c)| **c)?;
    let share = top as f64 / n as f64;
    (share > CONSTANT_PREDICTOR_SHARE).then(|| {
        format!(
            "constant predictor: class {class} is {:.1}% of the {n} validation predictions \
             (more than {:.0}%); the model has not learned to tell the classes apart",
            100.0 * share,
            100.0 * CONSTANT_PREDICTOR_SHARE
        )
    })
}

/// Warnings for OOD thresholds above every validation score: they flag nothing on data like
/// the validation split (ties at the threshold, or too few samples for the 95% quantile).
fn silent_thresholds(
    input: &BundleInput<'_>,
    calibrator: &Calibrator,
    ood: &crate::trust::ood::artifacts::OodCalibration,
    features: Option<FeatureData<'_>>,
) -> Result<Vec<String>, FitBundleError> {
    let probs = calibrate_rows(calibrator, input.logits).map_err(FitBundleError::Summary)?;
    let scores = score_rows(
        input.logits,
        probs.view(),
        features.map(|f| (f.val, &ood.detectors)),
    )
    .map_err(FitBundleError::OodMethod)?;
    Ok(ood
        .thresholds
        .iter()
        .filter_map(|(name, t)| {
            let s = scores.get(name)?;
            (!s.iter().any(|&v| t.is_ood(v))).then(|| {
                format!(
                    "OOD threshold of {name} ({:.6}) flags none of the {} validation samples: \
                     it will not fire on data like them",
                    t.threshold,
                    s.len()
                )
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn small_validation_gets_fewer_pieces_then_ts() {
        let o = FitOptions::default();
        let exact = plan_fit(Method::Ats, &o, 150, Adapt::ToData).unwrap();
        assert_eq!((exact.method, exact.options.pieces), (Method::Ats, 15));
        assert!(exact.warnings.is_empty());
        let fewer = plan_fit(Method::Ats, &o, 90, Adapt::ToData).unwrap();
        assert_eq!((fewer.method, fewer.options.pieces), (Method::Ats, 9));
        assert!(
            fewer.warnings[0].contains("90 validation samples"),
            "{fewer:?}"
        );
        let ts = plan_fit(Method::Ats, &o, 19, Adapt::ToData).unwrap();
        assert_eq!(ts.method, Method::Ts);
        assert!(ts.warnings[0].contains("temperature scaling"), "{ts:?}");
        let bins = plan_fit(Method::Histogram, &o, 40, Adapt::ToData).unwrap();
        assert_eq!(
            (bins.method, bins.options.histogram_bins),
            (Method::Histogram, 4)
        );
        // Never adapted: the fit itself refuses, as `caliper calibrate` always has.
        let asked = plan_fit(Method::Ats, &o, 90, Adapt::Never).unwrap();
        assert_eq!((asked.method, asked.options.pieces), (Method::Ats, 15));
        assert!(matches!(
            plan_fit(Method::Ts, &o, 0, Adapt::ToData),
            Err(FitBundleError::NoValidation)
        ));
    }

    #[test]
    fn one_class_above_95_percent_is_a_constant_predictor() {
        let rows = |n_other: usize| {
            let mut z = Array2::zeros((100, 3));
            for i in 0..100 {
                z[[i, usize::from(i < n_other)]] = 1.0;
            }
            z
        };
        let w = constant_predictor(rows(4).view()).unwrap();
        assert!(w.contains("class 0 is 96.0%"), "{w}");
        assert!(constant_predictor(rows(5).view()).is_none());
    }

    fn data(n: usize) -> (Array2<f64>, Vec<usize>) {
        let mut z = Array2::zeros((n, 3));
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % 3;
            z[[i, c]] = 0.5 + (i as f64) * 0.03;
            y.push(if i % 7 == 0 { (c + 1) % 3 } else { c });
        }
        (z, y)
    }

    fn input<'a>(
        z: &'a Array2<f64>,
        y: &'a [usize],
        o: &'a FitOptions,
        adapt: Adapt,
    ) -> BundleInput<'a> {
        BundleInput {
            model: "m",
            model_sha256: "00",
            source: "test rows",
            logits: z.view(),
            labels: y,
            features: None,
            method: Method::Ats,
            options: o,
            bins: 15,
            ood_method: "msp",
            adapt,
        }
    }

    #[test]
    fn the_trainer_adapts_and_calibrate_refuses() {
        let (z, y) = data(60);
        let o = FitOptions::default();
        let b = fit_bundle(&input(&z, &y, &o, Adapt::ToData)).unwrap();
        assert_eq!(b.calibrator.method(), "ats");
        assert!(
            b.warnings.iter().any(|w| w.contains("6 pieces")),
            "{:?}",
            b.warnings
        );
        let e = fit_bundle(&input(&z, &y, &o, Adapt::Never)).unwrap_err();
        assert!(e.to_string().contains("--pieces"), "{e}");
    }

    #[test]
    fn a_threshold_that_flags_nothing_is_reported() {
        // 10 rows: the 95% quantile is the largest score, so no row is above any threshold.
        let (z, y) = data(10);
        let o = FitOptions::default();
        let mut i = input(&z, &y, &o, Adapt::ToData);
        i.method = Method::Ts;
        let b = fit_bundle(&i).unwrap();
        assert!(
            b.warnings.iter().any(|w| w.contains("threshold of msp")),
            "{:?}",
            b.warnings
        );
        // 200 rows with distinct scores: every threshold flags about 5%.
        let (z, y) = data(200);
        let mut i = input(&z, &y, &o, Adapt::ToData);
        i.method = Method::Ts;
        let b = fit_bundle(&i).unwrap();
        assert!(
            !b.warnings.iter().any(|w| w.contains("flags none")),
            "{:?}",
            b.warnings
        );
    }

    #[test]
    fn the_trainer_skips_a_detector_too_wide_to_fit() {
        let (z, y) = data(200);
        let o = FitOptions::default();
        let d = MAX_MAHALANOBIS_DIM + 1;
        let val = Array2::from_shape_fn((200, d), |(i, j)| ((i * 31 + j * 7) % 13) as f64);
        let train = val.clone();
        let mut i = input(&z, &y, &o, Adapt::ToData);
        i.method = Method::Ts;
        i.features = Some(FeatureData {
            val: val.view(),
            train: train.view(),
            train_labels: &y,
        });
        let b = fit_bundle(&i).unwrap();
        assert!(b.file.ood.as_ref().unwrap().detectors.mahalanobis.is_none());
        assert!(
            b.warnings
                .iter()
                .any(|w| w.contains("no Mahalanobis detector")),
            "{:?}",
            b.warnings
        );
    }
}
