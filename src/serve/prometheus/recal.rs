//! Metrics of shadow recalibration (issue 22, section 2): the prequential scores of the TS and
//! ATS shadows against the incumbent, promotions, and labels that could not be used for a refit.

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Shadow recalibration metrics.
#[derive(Debug, Clone)]
pub struct RecalMetrics {
    /// `caliper_shadow_nll{model, shadow, scored}`: mean prequential NLL of the shadow
    /// (`scored="shadow"`) and of the incumbent on the same labels (`scored="incumbent"`).
    pub nll: GaugeVec,
    /// `caliper_shadow_ece{model, shadow, scored}`: the same for ECE.
    pub ece: GaugeVec,
    /// `caliper_shadow_labels{model, shadow}`: labels scored since the last promotion.
    pub labels: IntGaugeVec,
    /// `caliper_shadow_promotion_pvalue{model, shadow}`: p-value of the paired t statistic of
    /// the gains (descriptive: the promotion decides on the e-value).
    pub p_value: GaugeVec,
    /// `caliper_shadow_promotion_evalue{model, shadow}`: the promotion e-process (a promotion
    /// needs 1/alpha).
    pub e_value: GaugeVec,
    /// `caliper_recalibrations_total{model, method, trigger}`: calibration files fitted from
    /// feedback and swapped in (`trigger` = `manual` or `auto`).
    pub recalibrations: IntCounterVec,
    /// `caliper_feedback_unusable_for_refit_total{model}`: labels whose logits had left the store.
    pub unusable: IntCounterVec,
}

impl RecalMetrics {
    /// Creates and registers the family.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let labels = IntGaugeVec::new(
            Opts::new(
                "caliper_shadow_labels",
                "Labels scored prequentially by each shadow calibrator since the last promotion",
            ),
            &["model", "shadow"],
        )?;
        registry.register(Box::new(labels.clone()))?;
        Ok(Self {
            nll: gauge(
                "caliper_shadow_nll",
                "Mean prequential NLL of a shadow calibrator and of the incumbent on the same labels",
                &["model", "shadow", "scored"],
            )?,
            ece: gauge(
                "caliper_shadow_ece",
                "Prequential ECE of a shadow calibrator and of the incumbent on the same labels",
                &["model", "shadow", "scored"],
            )?,
            labels,
            p_value: gauge(
                "caliper_shadow_promotion_pvalue",
                "One-sided p-value of the paired t statistic of the shadow's NLL gain against the \
                 promotion margin (descriptive; promotions decide on the e-value)",
                &["model", "shadow"],
            )?,
            e_value: gauge(
                "caliper_shadow_promotion_evalue",
                "Anytime-valid e-value that the shadow's NLL gain exceeds the promotion margin \
                 (a promotion needs 1/alpha)",
                &["model", "shadow"],
            )?,
            recalibrations: counter(
                "caliper_recalibrations_total",
                "Calibration files fitted from feedback and swapped in",
                &["model", "method", "trigger"],
            )?,
            unusable: counter(
                "caliper_feedback_unusable_for_refit_total",
                "Labels whose logits had been evicted from the logit store",
                &["model"],
            )?,
        })
    }
}
