//! Where predictions meet the live monitor: every served prediction gets a signed
//! `prediction_id` and feeds the label-free window; every label that comes back is verified,
//! stored durably and counted in the Prometheus calibration metrics.

use crate::serve::monitor::{Accepted, FeedbackError, FeedbackItem, Monitor, ServedSet, now_s};
use crate::serve::prometheus::ServerMetrics;

use super::{ModelRegistry, Prediction};

/// Gives each prediction its signed `prediction_id`, records its confidence for the label-free
/// figures (mean confidence, drift) and counts the ones flagged out-of-distribution.
pub fn stamp(monitor: &Monitor, metrics: &ServerMetrics, predictions: &mut [Prediction]) {
    for p in predictions {
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

/// Records a batch of labels (blocking: the feedback log is fsynced before this returns) and
/// updates the calibration metrics. Results are in item order.
pub fn submit(
    monitor: &Monitor,
    registry: &ModelRegistry,
    metrics: &ServerMetrics,
    items: &[FeedbackItem],
) -> Vec<Result<Accepted, FeedbackError>> {
    let labels_of = |model: &str| registry.get(model).map(|m| m.files.metadata.labels.clone());
    let results = monitor.record(items, &labels_of, now_s());
    let m = &metrics.calibration;
    let mut touched: Vec<&str> = Vec::new();
    for r in &results {
        match r {
            Ok(a) if a.new => {
                let model = a.record.model.as_str();
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
    results
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
