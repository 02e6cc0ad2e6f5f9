//! The server's Prometheus metrics: one registry per server (no global state), the request,
//! batch and calibration families, and the text exposition.

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::trust::metrics::BinnedAccumulator;

pub mod recal;
pub use recal::RecalMetrics;
pub mod trust;

pub use trust::TrustMetrics;

/// Latency buckets in seconds: 100 us to 30 s, roughly x2.5 per step.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Batch-size buckets (images per ONNX Runtime run).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The server's Prometheus metrics, owning their own registry (no global state, so tests can
/// build as many servers as they like).
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    registry: Registry,
    /// `caliper_request_duration_seconds{route, method, status}`: by route template, never raw path.
    pub request_duration: HistogramVec,
    /// `caliper_queue_duration_seconds{model}`: enqueue to the start of the batch's run.
    pub queue_duration: HistogramVec,
    /// `caliper_inference_duration_seconds{model}`: one ONNX Runtime run of a batch.
    pub inference_duration: HistogramVec,
    /// `caliper_batch_size{model}`: images per run.
    pub batch_size: HistogramVec,
    /// `caliper_predictions_total{model}`: predictions returned.
    pub predictions: IntCounterVec,
    /// `caliper_abstained_total{model, reason}`: predictions whose request policy abstained
    /// (`low_confidence`, `out_of_distribution`); with `caliper_predictions_total`, the
    /// abstention rate of the dashboard and the Grafana board.
    pub abstained: IntCounterVec,
    /// `caliper_rejected_total{reason}`: requests answered with an error, and queue entries
    /// dropped because their client left (`reason="client_gone"`).
    pub rejected: IntCounterVec,
    /// `caliper_nonfinite_logits_total{model}`: rows with NaN or infinite logits (answered 500).
    pub nonfinite_logits: IntCounterVec,
    /// `caliper_in_flight_requests`: HTTP requests being handled.
    pub in_flight: IntGauge,
    /// `caliper_model_info{model, version, sha256, calibration, device}`: 1 per loaded model.
    pub model_info: IntGaugeVec,
    /// Live calibration from label feedback (issue 5).
    pub calibration: CalibrationMetrics,
    /// Shadow recalibration from feedback (issue 22).
    pub recal: RecalMetrics,
    /// `caliper_payload_log_records_total`: lines written to the payload log.
    pub payload_log_written: IntCounter,
    /// `caliper_payload_log_dropped_total{reason}`: sampled predictions not logged
    /// (`queue_full`: the writer fell behind; `write_error`; `writer_gone`).
    pub payload_log_dropped: IntCounterVec,
    /// Label shift, the calibration alarm and conformal coverage (issue 22).
    pub trust: TrustMetrics,
}

/// Live calibration metrics. The three per-bin counters make fleet-wide ECE exact in PromQL
/// (see `docs/MONITORING.md` and `docs/deploy/prometheus/caliper-rules.yml`).
#[derive(Debug, Clone)]
pub struct CalibrationMetrics {
    /// `caliper_calibration_ece{model}`: ECE of this replica's labelled window.
    pub ece: GaugeVec,
    /// `caliper_calibration_accuracy{model}`: accuracy of this replica's labelled window.
    pub accuracy: GaugeVec,
    /// `caliper_calibration_window_samples{model}`: labelled predictions in the window.
    pub window_samples: IntGaugeVec,
    /// `caliper_feedback_total{model, outcome}`: labels received (accepted, duplicate, rejected).
    pub feedback: IntCounterVec,
    /// `caliper_ood_flagged_total{model}`: predictions flagged out-of-distribution.
    pub ood_flagged: IntCounterVec,
    /// `caliper_calibration_bin_samples_total{model, bin}`: labelled predictions per bin.
    pub bin_samples: IntCounterVec,
    /// `caliper_calibration_bin_confidence_total{model, bin}`: sum of their confidences.
    pub bin_confidence: CounterVec,
    /// `caliper_calibration_bin_correct_total{model, bin}`: how many of them were right.
    pub bin_correct: IntCounterVec,
}

impl CalibrationMetrics {
    /// Sets the window gauges of `model` from its labelled window. An empty window publishes
    /// `window_samples = 0` and no ECE or accuracy (there is none: 0 would read as "perfect").
    pub fn set_window(&self, model: &str, window: &BinnedAccumulator) {
        self.window_samples
            .with_label_values(&[model])
            .set(i64::try_from(window.count()).unwrap_or(i64::MAX));
        match (window.ece(), window.accuracy()) {
            (Some(ece), Some(accuracy)) => {
                self.ece.with_label_values(&[model]).set(ece);
                self.accuracy.with_label_values(&[model]).set(accuracy);
            }
            _ => {
                // Absent series are what "no labelled window" means; removing one never seen fails.
                let _ = self.ece.remove_label_values(&[model]);
                let _ = self.accuracy.remove_label_values(&[model]);
            }
        }
    }

    /// Creates the three per-bin counters of `model` at 0 for every bin. They start from 0 in
    /// each process (standard counter semantics; `increase()` sees the reset), and exporting them
    /// before the first label makes `increase()` count that label too: Prometheus cannot see the
    /// increase that brings a series into existence.
    pub fn zero_bins(&self, model: &str, bins: usize) {
        for b in 0..bins {
            let bin = b.to_string();
            let labels = [model, bin.as_str()];
            self.bin_samples.with_label_values(&labels);
            self.bin_confidence.with_label_values(&labels);
            self.bin_correct.with_label_values(&labels);
        }
    }

    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        fn reg<T: prometheus::core::Collector + Clone + 'static>(
            r: &Registry,
            m: T,
        ) -> Result<T, prometheus::Error> {
            r.register(Box::new(m.clone()))?;
            Ok(m)
        }
        let model = &["model"];
        let bin = &["model", "bin"];
        Ok(Self {
            ece: reg(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "caliper_calibration_ece",
                        "Live ECE (15 equal-width bins) of the labelled window",
                    ),
                    model,
                )?,
            )?,
            accuracy: reg(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "caliper_calibration_accuracy",
                        "Accuracy of the labelled window",
                    ),
                    model,
                )?,
            )?,
            window_samples: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "caliper_calibration_window_samples",
                        "Labelled predictions in the live window",
                    ),
                    model,
                )?,
            )?,
            feedback: reg(
                registry,
                IntCounterVec::new(
                    Opts::new("caliper_feedback_total", "Labels received, by outcome"),
                    &["model", "outcome"],
                )?,
            )?,
            ood_flagged: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "caliper_ood_flagged_total",
                        "Predictions flagged out-of-distribution",
                    ),
                    model,
                )?,
            )?,
            bin_samples: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "caliper_calibration_bin_samples_total",
                        "Labelled predictions per confidence bin",
                    ),
                    bin,
                )?,
            )?,
            bin_confidence: reg(
                registry,
                CounterVec::new(
                    Opts::new(
                        "caliper_calibration_bin_confidence_total",
                        "Sum of calibrated confidences of labelled predictions per bin",
                    ),
                    bin,
                )?,
            )?,
            bin_correct: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "caliper_calibration_bin_correct_total",
                        "Correct labelled predictions per confidence bin",
                    ),
                    bin,
                )?,
            )?,
        })
    }
}

impl ServerMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let hist = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let request_duration = hist(
            "caliper_request_duration_seconds",
            "HTTP request latency by route template, method and status",
            LATENCY_BUCKETS,
            &["route", "method", "status"],
        )?;
        let queue_duration = hist(
            "caliper_queue_duration_seconds",
            "Time an image waited in the model queue before its batch ran",
            LATENCY_BUCKETS,
            &["model"],
        )?;
        let inference_duration = hist(
            "caliper_inference_duration_seconds",
            "ONNX Runtime run time of one batch",
            LATENCY_BUCKETS,
            &["model"],
        )?;
        let batch_size = hist(
            "caliper_batch_size",
            "Images per ONNX Runtime run",
            BATCH_BUCKETS,
            &["model"],
        )?;
        let predictions = counter(
            "caliper_predictions_total",
            "Predictions returned",
            &["model"],
        )?;
        let abstained = counter(
            "caliper_abstained_total",
            "Predictions that abstained under the request's policy, by reason",
            &["model", "reason"],
        )?;
        let rejected = counter(
            "caliper_rejected_total",
            "Requests answered with an error, by error code",
            &["reason"],
        )?;
        let nonfinite_logits = counter(
            "caliper_nonfinite_logits_total",
            "Rows of logits holding NaN or infinity",
            &["model"],
        )?;
        let in_flight = IntGauge::new("caliper_in_flight_requests", "HTTP requests in flight")?;
        registry.register(Box::new(in_flight.clone()))?;
        let model_info = IntGaugeVec::new(
            Opts::new("caliper_model_info", "Loaded models (value 1)"),
            &["model", "version", "sha256", "calibration", "device"],
        )?;
        registry.register(Box::new(model_info.clone()))?;
        let calibration = CalibrationMetrics::register(&registry)?;
        let recal = RecalMetrics::register(&registry)?;
        let payload_log_written = IntCounter::new(
            "caliper_payload_log_records_total",
            "Predictions written to the payload log",
        )?;
        registry.register(Box::new(payload_log_written.clone()))?;
        let payload_log_dropped = counter(
            "caliper_payload_log_dropped_total",
            "Sampled predictions the payload log dropped, by reason",
            &["reason"],
        )?;
        let trust = TrustMetrics::register(&registry)?;
        Ok(Self {
            registry,
            request_duration,
            queue_duration,
            inference_duration,
            batch_size,
            predictions,
            abstained,
            rejected,
            nonfinite_logits,
            in_flight,
            model_info,
            calibration,
            recal,
            payload_log_written,
            payload_log_dropped,
            trust,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics; an empty page is the fallback.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics_with_labels() {
        let m = ServerMetrics::new().unwrap();
        m.batch_size.with_label_values(&["m"]).observe(3.0);
        m.rejected.with_label_values(&["overloaded"]).inc();
        let text = m.render();
        assert!(
            text.contains("caliper_batch_size_bucket{model=\"m\",le=\"4\"} 1"),
            "{text}"
        );
        assert!(text.contains("caliper_rejected_total{reason=\"overloaded\"} 1"));
        assert!(text.contains("caliper_in_flight_requests 0"));
    }

    #[test]
    fn window_gauges_follow_the_window_and_bins_start_at_zero() {
        let m = ServerMetrics::new().unwrap();
        let mut acc = BinnedAccumulator::new(15).unwrap();
        acc.add(0.9, true).unwrap();
        acc.add(0.7, false).unwrap();
        m.calibration.set_window("m", &acc);
        let text = m.render();
        let want_ece = acc.ece().unwrap();
        assert!(text.contains(&format!(
            "caliper_calibration_ece{{model=\"m\"}} {want_ece}"
        )));
        assert!(text.contains("caliper_calibration_accuracy{model=\"m\"} 0.5"));
        assert!(text.contains("caliper_calibration_window_samples{model=\"m\"} 2"));
        // An empty window: no ECE or accuracy (0 would read as perfect), zero samples.
        m.calibration
            .set_window("m", &BinnedAccumulator::new(15).unwrap());
        let text = m.render();
        assert!(!text.contains("caliper_calibration_ece{"), "{text}");
        assert!(!text.contains("caliper_calibration_accuracy{"), "{text}");
        assert!(text.contains("caliper_calibration_window_samples{model=\"m\"} 0"));

        m.calibration.zero_bins("m", 15);
        let text = m.render();
        for name in [
            "caliper_calibration_bin_samples_total",
            "caliper_calibration_bin_confidence_total",
            "caliper_calibration_bin_correct_total",
        ] {
            let zeros = (0..15)
                .filter(|b| text.contains(&format!("{name}{{bin=\"{b}\",model=\"m\"}} 0\n")))
                .count();
            assert_eq!(zeros, 15, "{name}: {text}");
        }
    }
}
