//! Gauges of the live trust statistics (issue 22): label-shift estimates, the calibration alarm
//! and its statistics, conformal coverage and the adaptive level. They are set when `/metrics`
//! is scraped (`serve::infer::live::publish`), from the same functions as
//! `GET /v1/models/{model}/monitor`; a statistic that does not exist yet has no series rather
//! than a 0 that would read as a value.

use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};

/// The trust gauges.
#[derive(Debug, Clone)]
pub struct TrustMetrics {
    /// `caliper_label_shift_prior{model, class}`: served class prior by EM.
    pub prior: GaugeVec,
    /// `caliper_label_shift_prior_bbse{model, class}`: the same by BBSE.
    pub prior_bbse: GaugeVec,
    /// `caliper_label_shift_pvalue{model}`: p-value of "no label shift".
    pub shift_pvalue: GaugeVec,
    /// `caliper_expected_accuracy{model}`: mean max calibrated probability of served traffic.
    pub expected_accuracy: GaugeVec,
    /// `caliper_calibration_alarm{model}`: 1 once the anytime-valid alarm fired, else 0.
    pub alarm: IntGaugeVec,
    /// `caliper_calibration_evalue{model}`: the betting e-process on labelled feedback.
    pub evalue: GaugeVec,
    /// `caliper_exchangeability_martingale{model}`: the conformal test martingale.
    pub exchangeability: GaugeVec,
    /// `caliper_label_shift_evalue{model}`: the e-process on served predicted classes.
    pub label_shift_evalue: GaugeVec,
    /// `caliper_conformal_coverage{model}`: live coverage of served sets.
    pub coverage: GaugeVec,
    /// `caliper_conformal_set_size{model}`: their mean size.
    pub set_size: GaugeVec,
    /// `caliper_conformal_class_coverage{model, class}`: coverage by true class (<= 100 classes).
    pub class_coverage: GaugeVec,
    /// `caliper_conformal_alpha{model}`: the adaptive conformal level now served.
    pub aci_alpha: GaugeVec,
}

impl TrustMetrics {
    /// Creates and registers the gauges.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let model = &["model"];
        let class = &["model", "class"];
        let alarm = IntGaugeVec::new(
            Opts::new(
                "caliper_calibration_alarm",
                "1 once the anytime-valid calibration alarm fired (latched), else 0",
            ),
            model,
        )?;
        registry.register(Box::new(alarm.clone()))?;
        Ok(Self {
            prior: gauge(
                "caliper_label_shift_prior",
                "Class prior of served traffic estimated by EM on calibrated probabilities",
                class,
            )?,
            prior_bbse: gauge(
                "caliper_label_shift_prior_bbse",
                "Class prior of served traffic by black-box shift estimation",
                class,
            )?,
            shift_pvalue: gauge(
                "caliper_label_shift_pvalue",
                "p-value of the likelihood-ratio test of no label shift",
                model,
            )?,
            expected_accuracy: gauge(
                "caliper_expected_accuracy",
                "Label-free expected accuracy: mean max calibrated probability of served traffic",
                model,
            )?,
            alarm,
            evalue: gauge(
                "caliper_calibration_evalue",
                "Betting e-process on 1[correct] - confidence of labelled feedback",
                model,
            )?,
            exchangeability: gauge(
                "caliper_exchangeability_martingale",
                "Conformal test martingale on served max-probabilities",
                model,
            )?,
            label_shift_evalue: gauge(
                "caliper_label_shift_evalue",
                "Betting e-process on served predicted classes against the validation distribution",
                model,
            )?,
            coverage: gauge(
                "caliper_conformal_coverage",
                "Live coverage of served conformal sets (labelled window)",
                model,
            )?,
            set_size: gauge(
                "caliper_conformal_set_size",
                "Mean size of labelled served conformal sets",
                model,
            )?,
            class_coverage: gauge(
                "caliper_conformal_class_coverage",
                "Live coverage of served conformal sets by true class",
                class,
            )?,
            aci_alpha: gauge(
                "caliper_conformal_alpha",
                "Miscoverage level adaptive conformal inference serves now",
                model,
            )?,
        })
    }
}

/// Sets a gauge, or removes its series when there is no value.
pub fn set_or_remove(g: &GaugeVec, labels: &[&str], value: Option<f64>) {
    match value {
        Some(v) => g.with_label_values(labels).set(v),
        None => {
            // Removing a series never created fails harmlessly.
            let _ = g.remove_label_values(labels);
        }
    }
}
