//! Where predictions meet the live monitor: every served prediction gets a signed
//! `prediction_id` and feeds the label-free window (its logits kept for recalibration); every
//! label that comes back is verified, stored durably, counted in the Prometheus calibration
//! metrics and scored against the shadow calibrators, which are refitted (and, with
//! `--auto-recalibrate`, promoted) on the blocking pool.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::serve::monitor::recal::{LabelEvent, Recalibration};
use crate::serve::monitor::shadow::ShadowScore;
use crate::serve::monitor::token::nonce_of;
use crate::serve::monitor::{Accepted, FeedbackError, FeedbackItem, Monitor, ServedSet, now_s};
use crate::serve::prometheus::ServerMetrics;

use super::recalibrate::{RecalibrateRequest, Trigger, recalibrate};
use super::{LoadedModel, ModelRegistry, Prediction, Scored};

/// Gives each prediction its signed `prediction_id`, records its confidence for the label-free
/// figures (mean confidence, drift) and counts the ones flagged out-of-distribution and the
/// ones that abstained.
pub fn stamp(monitor: &Monitor, metrics: &ServerMetrics, predictions: &mut [Prediction]) {
    for p in predictions {
        if let Some(reason) = p.abstain_reason {
            metrics
                .abstained
                .with_label_values(&[p.model.as_str(), reason.as_str()])
                .inc();
        }
        if p.ood.is_ood {
            metrics
                .calibration
                .ood_flagged
                .with_label_values(&[&p.model])
                .inc();
        }
        let set = p.served_set.as_ref().map(|s| ServedSet {
            classes: s
                .classes
                .iter()
                .map(|&c| u16::try_from(c).unwrap_or(u16::MAX))
                .collect(),
            alpha: s.alpha,
            adaptive: s.adaptive,
            num_classes: u16::try_from(p.probabilities.len()).unwrap_or(u16::MAX),
        });
        p.prediction_id = monitor.issue_token_with_set(
            &p.model,
            &p.model_version,
            p.class_index,
            p.confidence,
            &p.probabilities,
            set,
        );
        monitor.observe_prediction(&p.model, p.confidence);
    }
}

/// Keeps the logits of freshly stamped rows for the recalibration shadows
/// (`monitor::recal`), keyed by their prediction ids' nonces.
pub fn remember_logits(recal: &Recalibration, model: &LoadedModel, scored: &[Scored]) {
    for s in scored {
        if let Some(nonce) = nonce_of(&s.prediction.prediction_id) {
            recal.remember(&model.files.name, &model.files.sha256, nonce, &s.logits);
        }
    }
}

/// Records a batch of labels (blocking: the feedback log is fsynced before this returns),
/// updates the calibration metrics and scores the labels against the shadow calibrators.
/// Results are in item order.
pub fn submit(
    monitor: &Monitor,
    registry: &Arc<ModelRegistry>,
    metrics: &Arc<ServerMetrics>,
    recal: &Arc<Recalibration>,
    items: &[FeedbackItem],
) -> Vec<Result<Accepted, FeedbackError>> {
    let labels_of = |model: &str| registry.get(model).map(|m| m.files.metadata.labels.clone());
    let results = monitor.record(items, &labels_of, now_s());
    let m = &metrics.calibration;
    let mut touched: Vec<&str> = Vec::new();
    let mut events: BTreeMap<&str, Vec<LabelEvent>> = BTreeMap::new();
    for r in &results {
        match r {
            Ok(a) if a.new => {
                let model = a.record.model.as_str();
                events.entry(model).or_default().push(LabelEvent {
                    nonce: a.record.nonce,
                    label: usize::from(a.record.label),
                    received_s: a.record.received_at_s,
                });
                let bin = a.bin.to_string();
                m.feedback.with_label_values(&[model, "accepted"]).inc();
                m.bin_samples.with_label_values(&[model, &bin]).inc();
                m.bin_confidence
                    .with_label_values(&[model, &bin])
                    .inc_by(a.record.confidence);
                if a.record.predicted == a.record.label {
                    m.bin_correct.with_label_values(&[model, &bin]).inc();
                }
                if !touched.contains(&model) {
                    touched.push(model);
                }
            }
            Ok(a) => m
                .feedback
                .with_label_values(&[a.record.model.as_str(), "duplicate"])
                .inc(),
            // The model of a refused token is not trustworthy: count under "unknown".
            Err(_) => m.feedback.with_label_values(&["unknown", "rejected"]).inc(),
        }
    }
    for model in touched {
        publish_gauges(monitor, metrics, model);
    }
    for (model, events) in events {
        shadow_step(registry, metrics, recal, model, &events);
    }
    results
}

/// Scores new labels against the shadows, publishes their gauges, and starts a refit or an
/// automatic promotion in the background when `monitor::recal` asks for one.
fn shadow_step(
    registry: &Arc<ModelRegistry>,
    metrics: &Arc<ServerMetrics>,
    recal: &Arc<Recalibration>,
    model: &str,
    events: &[LabelEvent],
) {
    let Some(loaded) = registry.get(model) else {
        return;
    };
    let observed = recal.observe(model, &loaded.files.sha256, &loaded.calibrator, events);
    if observed.unusable > 0 {
        metrics
            .recal
            .unusable
            .with_label_values(&[model])
            .inc_by(observed.unusable);
    }
    for (method, score) in recal.scores(model) {
        publish_shadow(
            metrics,
            model,
            &format!("{method:?}").to_lowercase(),
            &score,
        );
    }
    if let Some(job) = observed.fit {
        let recal = Arc::clone(recal);
        in_background(move || recal.install(job.run()));
    }
    if let Some(method) = observed.promote {
        let (registry, metrics, recal) =
            (Arc::clone(registry), Arc::clone(metrics), Arc::clone(recal));
        let model = model.to_string();
        in_background(move || {
            let req = RecalibrateRequest {
                method,
                window: recal.config().window,
                trigger: Trigger::Auto,
            };
            // Logged and counted inside; a failure leaves the incumbent serving.
            let _ = recalibrate(&registry, &recal, &metrics, &model, req);
        });
    }
}

/// Publishes one shadow's prequential score (absent figures remove their series).
fn publish_shadow(metrics: &ServerMetrics, model: &str, shadow: &str, s: &ShadowScore) {
    let m = &metrics.recal;
    m.labels
        .with_label_values(&[model, shadow])
        .set(i64::try_from(s.n).unwrap_or(i64::MAX));
    for (vec, scored, v) in [
        (&m.nll, "shadow", s.nll),
        (&m.nll, "incumbent", s.incumbent_nll),
        (&m.ece, "shadow", s.ece),
        (&m.ece, "incumbent", s.incumbent_ece),
    ] {
        match v {
            Some(v) => vec.with_label_values(&[model, shadow, scored]).set(v),
            None => {
                let _ = vec.remove_label_values(&[model, shadow, scored]);
            }
        }
    }
    for (vec, v) in [(&m.p_value, s.p_value), (&m.e_value, s.e_value)] {
        match v {
            Some(v) => vec.with_label_values(&[model, shadow]).set(v),
            None => {
                let _ = vec.remove_label_values(&[model, shadow]);
            }
        }
    }
}

/// Runs `f` on the blocking pool when there is a runtime (the server), else at once (tools and
/// tests without one): a fit or a promotion never holds up the label that triggered it.
fn in_background(f: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn_blocking(f);
        }
        Err(_) => f(),
    }
}

/// Publishes the window gauges of `model` (ECE, accuracy, window samples) from the monitor's
/// current labelled window: after each accepted label, and at start-up from the rebuilt window.
pub fn publish_gauges(monitor: &Monitor, metrics: &ServerMetrics, model: &str) {
    if let Some(window) = monitor.accumulator(model) {
        metrics.calibration.set_window(model, &window);
    }
}

/// Publishes what a (re)started process knows before any new label: the gauges of every window
/// rebuilt from the feedback log, and its per-bin counters at 0. The counters are not replayed
/// from the rebuilt window: they count labels received by this process, and a counter that came
/// back at the window's content would read to `increase()` as that many new labels (see
/// docs/MONITORING.md, "After a restart").
pub fn publish_restored(monitor: &Monitor, metrics: &ServerMetrics) {
    for model in monitor.models() {
        publish_gauges(monitor, metrics, &model);
        metrics.calibration.zero_bins(&model, monitor.config().bins);
    }
}
