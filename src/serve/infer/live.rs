//! The request path's part in issue 22: before scoring, choose the adaptive conformal level;
//! after scoring, feed the monitor the uncorrected calibrated probabilities, correct them for the
//! estimated label shift when asked (`?adapt=label_shift` or `--adapt-label-shift`), then issue
//! the prediction ids. Also the monitor's `estimated` / `alarm` / `conformal` report and the
//! gauges published at each scrape.
//!
//! The correction (Saerens et al. 2002) replaces the probabilities by p_k w_k / sum_j p_j w_j
//! with w = q_hat / p (the EM prior over the source prior), then re-derives what depends on
//! them: label, class index, confidence and top-k. The response keeps its shape and gains
//! `"adaptation": "label_shift"`. The conformal set, the OOD verdict and abstention stay those of
//! the uncorrected probabilities (the calibration file's thresholds were fitted on them).

use std::str::FromStr;

use serde::Serialize;

use super::{LoadedModel, Prediction, RequestOptions, Scored, TopK};
use crate::numeric::{argmax, top_indices};
use crate::serve::monitor::coverage::{CoverageReport, coverage};
use crate::serve::monitor::live::{AciReport, AlarmReport, Estimated, MAX_CLASS_SERIES};
use crate::serve::monitor::recal::Recalibration;
use crate::serve::monitor::{Monitor, ShiftSource};
use crate::serve::prometheus::ServerMetrics;
use crate::serve::prometheus::trust::set_or_remove;
use crate::trust::shift::reweight;

/// What a request asks about label-shift correction (`?adapt=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapt {
    /// No correction, even where the model's default corrects.
    None,
    /// Correct by the estimated prior ratio.
    LabelShift,
}

impl FromStr for Adapt {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "label_shift" => Ok(Adapt::LabelShift),
            "none" => Ok(Adapt::None),
            other => Err(format!(
                "adapt must be \"label_shift\" or \"none\", got {other:?}"
            )),
        }
    }
}

/// What the live steps do for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LivePlan {
    /// Correct for label shift.
    pub label_shift: bool,
    /// The request's sets use the adaptive level.
    pub adaptive_set: bool,
}

/// Chooses the plan of a request to `model`; with adaptive conformal inference on and no
/// `alpha` in the request, sets the request's level to the adaptive one.
pub fn plan(
    monitor: &Monitor,
    model: &LoadedModel,
    adapt: Option<Adapt>,
    options: &mut RequestOptions,
) -> LivePlan {
    let name = model.files.name.as_str();
    let label_shift = match adapt {
        Some(a) => a == Adapt::LabelShift,
        None => monitor.trust_config().adapt_label_shift.contains(name),
    };
    let mut adaptive_set = false;
    if options.trust.alpha.is_none()
        && let Some(c) = model
            .files
            .calibration
            .as_ref()
            .and_then(|f| f.conformal.as_ref())
        && let Some(a) = monitor.adaptive_alpha(name, c.alpha)
    {
        options.trust.alpha = Some(a);
        adaptive_set = true;
    }
    LivePlan {
        label_shift,
        adaptive_set,
    }
}

/// What the estimators and the alarm need from `model`'s calibration file.
pub fn shift_source(model: &LoadedModel) -> ShiftSource<'_> {
    let fit = model
        .files
        .calibration
        .as_ref()
        .and_then(|c| c.fit.as_ref());
    ShiftSource {
        classes: model.files.metadata.labels.len(),
        label_counts: fit
            .map(|f| f.label_counts.as_slice())
            .filter(|c| !c.is_empty()),
        confusion: fit.and_then(|f| f.confusion.as_deref()),
        reliability: fit
            .and_then(|f| f.reliability.as_ref())
            .map(|r| r.after.as_slice())
            .filter(|b| !b.is_empty()),
    }
}

/// After scoring: records the uncorrected probabilities, applies the plan, issues the ids.
pub fn stamp(
    monitor: &Monitor,
    metrics: &ServerMetrics,
    model: &LoadedModel,
    predictions: &mut [Prediction],
    plan: LivePlan,
) {
    let name = model.files.name.as_str();
    let source = shift_source(model);
    for p in predictions.iter_mut() {
        monitor.observe_served(name, &p.probabilities, &source);
        if let Some(s) = p.served_set.as_mut() {
            s.adaptive = plan.adaptive_set;
        }
    }
    if plan.label_shift
        && let Some(ratio) = monitor.label_shift_ratio(name, &shift_source(model))
    {
        for p in predictions.iter_mut() {
            correct(p, &ratio, &model.files.metadata.labels);
        }
    }
    super::feedback::stamp(monitor, metrics, predictions);
}

/// [`stamp`] for every scored row of one request, then their logits are kept for the
/// recalibration shadows ([`super::feedback::remember_logits`]).
pub fn stamp_scored(
    monitor: &Monitor,
    metrics: &ServerMetrics,
    recal: &Recalibration,
    model: &LoadedModel,
    scored: &mut [Scored],
    plan: LivePlan,
) {
    for s in scored.iter_mut() {
        stamp(
            monitor,
            metrics,
            model,
            std::slice::from_mut(&mut s.prediction),
            plan,
        );
    }
    super::feedback::remember_logits(recal, model, scored);
}

/// Reweights one prediction by the prior ratio and re-derives label, confidence and top-k.
fn correct(p: &mut Prediction, ratio: &[f64], labels: &[String]) {
    if ratio.len() != p.probabilities.len() {
        return;
    }
    let probs = reweight(&p.probabilities, ratio);
    let top = argmax(&probs);
    p.top_k = top_indices(&probs, p.top_k.len())
        .into_iter()
        .map(|i| TopK {
            label: labels.get(i).cloned().unwrap_or_default(),
            index: i,
            probability: probs[i],
        })
        .collect();
    p.class_index = top;
    p.label = labels.get(top).cloned().unwrap_or_default();
    p.confidence = probs[top];
    p.probabilities = probs;
    p.adaptation = Some("label_shift");
}

/// The issue-22 part of `GET /v1/models/{model}/monitor`.
#[derive(Debug, Clone, Serialize)]
pub struct TrustReport {
    /// Label-shift estimates over the served window (null before any prediction).
    pub estimated: Option<Estimated>,
    /// The anytime-valid alarm (present from the model's load on).
    pub alarm: Option<AlarmReport>,
    /// Live coverage of the served conformal sets (labelled window).
    pub conformal: CoverageReport,
    /// Adaptive conformal inference, when the model uses it.
    pub adaptive_conformal: Option<AciReport>,
}

/// Computes the report (EM and BBSE run here: call it off the async executor). `fresh` runs
/// the estimators on the window as it is now; otherwise a cached estimate at most
/// `refresh_every` predictions old is reused.
pub fn report(monitor: &Monitor, model: &LoadedModel, fresh: bool) -> TrustReport {
    let name = model.files.name.as_str();
    let classes = model.files.metadata.labels.len();
    let conformal = match monitor.window_snapshot(name) {
        Some(w) => coverage(&w, classes, MAX_CLASS_SERIES),
        None => coverage(
            &crate::serve::monitor::ModelWindow::new(1),
            classes,
            MAX_CLASS_SERIES,
        ),
    };
    TrustReport {
        estimated: if fresh {
            monitor.estimate_shift(name, &shift_source(model))
        } else {
            monitor.estimate_shift_cached(name, &shift_source(model))
        },
        alarm: monitor.alarm_report(name),
        conformal,
        adaptive_conformal: monitor.aci_report(name),
    }
}

/// Publishes `model`'s trust gauges (at scrape time; blocking: it may run EM).
pub fn publish(monitor: &Monitor, metrics: &ServerMetrics, model: &LoadedModel) {
    let r = report(monitor, model, false);
    let name = model.files.name.as_str();
    let m = &metrics.trust;
    let labels = &model.files.metadata.labels;
    let per_class = labels.len() <= MAX_CLASS_SERIES;
    let est = r.estimated.as_ref();
    set_or_remove(&m.shift_pvalue, &[name], est.and_then(|e| e.shift_pvalue));
    set_or_remove(&m.expected_accuracy, &[name], est.and_then(|e| e.accuracy));
    for (i, label) in labels.iter().enumerate().take_while(|_| per_class) {
        let l = [name, label.as_str()];
        let at = |v: Option<&Vec<f64>>| v.and_then(|v| v.get(i).copied());
        set_or_remove(&m.prior, &l, at(est.and_then(|e| e.prior.as_ref())));
        set_or_remove(
            &m.prior_bbse,
            &l,
            at(est.and_then(|e| e.prior_bbse.as_ref())),
        );
        set_or_remove(
            &m.class_coverage,
            &l,
            r.conformal.per_class.get(i).and_then(|c| c.coverage),
        );
    }
    // The alarm series exists (at 0) for every served model, so `== 1` and `absent()` both work.
    m.alarm
        .with_label_values(&[name])
        .set(i64::from(r.alarm.as_ref().is_some_and(|a| a.alarm)));
    if let Some(a) = &r.alarm {
        m.evalue
            .with_label_values(&[name])
            .set(a.calibration_evalue);
        m.exchangeability
            .with_label_values(&[name])
            .set(a.exchangeability_martingale);
    }
    set_or_remove(
        &m.label_shift_evalue,
        &[name],
        r.alarm.as_ref().and_then(|a| a.label_shift_evalue),
    );
    set_or_remove(&m.coverage, &[name], r.conformal.coverage);
    set_or_remove(&m.set_size, &[name], r.conformal.mean_set_size);
    set_or_remove(
        &m.aci_alpha,
        &[name],
        r.adaptive_conformal.as_ref().map(|a| a.serving_alpha),
    );
}
