//! The monitor's statistics that act on what they measure (issue 22): label-shift estimates
//! over the window of served probability vectors ([`super::served`]), the anytime-valid
//! calibration alarm, and the adaptive conformal level of each model.
//!
//! One mutex over a map of per-model states, separate from the feedback state's lock: a
//! prediction only touches this one (the feedback path takes the feedback lock, then this one,
//! never the other way round). Estimates are recomputed outside the lock from a copy of the
//! window, and cached: the request path (`?adapt=label_shift`) reuses an estimate until the
//! window has moved by [`refresh_every`] predictions.
//!
//! What survives a restart: the e-process and the adaptive level are replayed from the labelled
//! records the feedback log still holds (in log order); the served window, its estimates, the
//! exchangeability martingale and the label-shift e-process start empty (they are label-free and
//! not logged). The e-process's tolerance comes from the model's calibration file, which the
//! server reads after the log is replayed, and it must be fixed before the first bet: replayed
//! labels wait, in order, until the server registers the loaded model ([`Monitor::model_loaded`]),
//! which builds the e-process and feeds them to it. The adaptive level is built at the model's
//! first request after the restart (its target is the level the request path reads from the
//! calibration file); the replayed outcomes of adaptive sets wait for it the same way. What waits
//! is bounded ([`MAX_PENDING_LABELS`], the newest kept): a model that is never loaded again, or
//! never asked, must not hold memory that grows with every label of its old predictions.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use super::served::ServedWindow;
use super::{FeedbackRecord, Monitor};
use crate::trust::alarm::{
    CalibrationEProcess, ExchangeabilityMartingale, LabelShiftEProcess, calibration_tolerance,
    label_shift_tolerance,
};
use crate::trust::conformal::aci::AdaptiveAlpha;
use crate::trust::metrics::Bin;
use crate::trust::shift::{self, EmOptions};

/// Served predictions needed before a prior is estimated (and a correction applied).
pub const MIN_SHIFT_SAMPLES: usize = 100;
/// Classes up to which per-class series (priors, coverage) are exported as gauges.
pub const MAX_CLASS_SERIES: usize = 100;
/// Statistics of the alarm, which share its alpha (Bonferroni): each crosses at this / alpha.
pub const ALARM_STATISTICS: f64 = 3.0;
/// Labels kept per model while they wait for the calibration e-process, and outcomes of adaptive
/// sets while they wait for the adaptive level (see the module doc); past it the oldest are
/// dropped and counted. Dropping the oldest is sound: an e-process, or an ACI level, started on a
/// later stretch of the labels is still valid (the test simply starts later), whereas memory that
/// grows with every label of a model that is never loaded, or never asked, is not acceptable.
/// 10,000 is the default labelled window (`--monitor-window`): plenty of evidence for either
/// statistic, at 24 bytes a label at most 240 KB per model. A constant, not that flag, so that no
/// setting can unbound it.
pub const MAX_PENDING_LABELS: usize = 10_000;
/// Why a statistic that needs the validation confusion matrix is missing.
const NO_CONFUSION: &str =
    "the calibration file has no validation confusion matrix (refit it with `caliper calibrate`)";

/// Models named by a flag: a list, or `*` for all.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelSelection(pub Vec<String>);

impl ModelSelection {
    /// Whether `model` is selected.
    pub fn contains(&self, model: &str) -> bool {
        self.0.iter().any(|m| m == model || m == "*")
    }
}

/// Settings of the shift estimates, the alarm and adaptive conformal inference.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustConfig {
    /// Served probability vectors kept per model (also bounded by bytes, see `served`).
    pub shift_window: usize,
    /// Alarm level: the calibration alarm fires with probability at most this under no drift.
    pub alarm_alpha: f64,
    /// Tolerated |E[correct - confidence]| before the calibration e-process bets against it;
    /// None: derived per model from its calibration file's validation reliability bins
    /// ([`calibration_tolerance`] at delta = alpha / 3), 0 for a file without them.
    pub alarm_tolerance: Option<f64>,
    /// Tolerated total variation between the served and the validation predicted-class
    /// distributions before the label-shift e-process bets against it; None: derived per model
    /// from its validation size ([`label_shift_tolerance`] at delta = alpha / 3).
    pub alarm_shift_tolerance: Option<f64>,
    /// Step of adaptive conformal inference.
    pub aci_gamma: f64,
    /// Models whose predictions are corrected for label shift unless a request says
    /// `?adapt=none`.
    pub adapt_label_shift: ModelSelection,
    /// Models whose conformal sets use the adaptive level when a request names no `alpha`.
    pub adaptive_conformal: ModelSelection,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            shift_window: 5_000,
            alarm_alpha: 0.01,
            alarm_tolerance: None,
            alarm_shift_tolerance: None,
            aci_gamma: 0.005,
            adapt_label_shift: ModelSelection::default(),
            adaptive_conformal: ModelSelection::default(),
        }
    }
}

/// What the estimators and the alarm need from a model's calibration file.
#[derive(Debug, Clone, Copy)]
pub struct ShiftSource<'a> {
    /// Classes of the model.
    pub classes: usize,
    /// Validation label counts (the source prior), when the file has them.
    pub label_counts: Option<&'a [usize]>,
    /// Validation confusion matrix (`[predicted][label]`), when the file has it.
    pub confusion: Option<&'a [Vec<u64>]>,
    /// Reliability bins of the calibrated validation predictions (`fit.reliability.after`),
    /// when the file has them: the calibration e-process's default tolerance comes from them.
    pub reliability: Option<&'a [Bin]>,
}

/// The label-free estimates of one model (`estimated` in `GET /v1/models/{model}/monitor`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimated {
    /// Served probability vectors in the window.
    pub served: usize,
    /// Most vectors the window holds.
    pub window: usize,
    /// The class prior of served traffic by EM (Saerens et al. 2002); null below
    /// [`MIN_SHIFT_SAMPLES`] predictions.
    pub prior: Option<Vec<f64>>,
    /// The same by black-box shift estimation (Lipton et al. 2018); null when unavailable.
    pub prior_bbse: Option<Vec<f64>>,
    /// Why `prior_bbse` is null, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bbse_unavailable: Option<String>,
    /// p-value of the likelihood-ratio test of "the served prior is the source prior".
    pub shift_pvalue: Option<f64>,
    /// The likelihood-ratio statistic behind it.
    pub shift_statistic: Option<f64>,
    /// Label-free expected accuracy: the mean max calibrated probability over the window.
    pub accuracy: Option<f64>,
    /// The source prior the estimates correct against.
    pub source_prior: Vec<f64>,
    /// Where it comes from: "validation" (label counts stored by the fit) or "uniform".
    pub source_prior_from: &'static str,
}

/// The calibration alarm of one model (`alarm` in the monitor JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmReport {
    /// 1 once a statistic has crossed its threshold (latched until a restart or a reset).
    pub alarm: bool,
    /// The level: the alarm fires with probability at most this if nothing drifts.
    pub alpha: f64,
    /// Threshold of each statistic: 3 / alpha (the three share alpha, Bonferroni).
    pub threshold: f64,
    /// Which statistic crossed first: "calibration", "exchangeability" or "label_shift".
    pub reason: Option<&'static str>,
    /// When it fired (Unix seconds).
    pub since_s: Option<u64>,
    /// The betting e-process on 1[correct] - confidence of labelled feedback.
    pub calibration_evalue: f64,
    /// Labels it has seen.
    pub calibration_labels: u64,
    /// Mean of 1[correct] - confidence over those labels.
    pub calibration_mean_error: Option<f64>,
    /// The tolerance it tests.
    pub calibration_tolerance: f64,
    /// Where that tolerance comes from: "derived" (from the calibration file's validation
    /// reliability bins), "flag" (`--alarm-tolerance`), "none" (0: the file has no reliability
    /// bins, or the model has no calibration file) or "pending" (labels replayed from the
    /// feedback log wait for the model's calibration file to be read; 0 until then).
    pub calibration_tolerance_from: &'static str,
    /// Labels dropped, oldest first, while waiting: more than [`MAX_PENDING_LABELS`] waited.
    pub calibration_labels_dropped: u64,
    /// The conformal test martingale on served max-probabilities.
    pub exchangeability_martingale: f64,
    /// Its largest value so far.
    pub exchangeability_max: f64,
    /// Served predictions it has seen.
    pub exchangeability_samples: u64,
    /// The label-shift e-process on served predicted classes against validation's; null when
    /// absent (see `label_shift_unavailable`).
    pub label_shift_evalue: Option<f64>,
    /// Its largest value so far.
    pub label_shift_max: Option<f64>,
    /// Served predictions it has seen.
    pub label_shift_samples: u64,
    /// The total-variation tolerance it tests (`--alarm-shift-tolerance`, or derived).
    pub label_shift_tolerance: Option<f64>,
    /// Total variation between the recent served predicted-class frequency and validation's.
    pub label_shift_distance: Option<f64>,
    /// Why the label-shift e-process is absent, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_shift_unavailable: Option<&'static str>,
}

/// Adaptive conformal inference of one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AciReport {
    /// The calibration file's miscoverage level, the target.
    pub target_alpha: f64,
    /// Step size.
    pub gamma: f64,
    /// alpha_t (may leave [0, 1]).
    pub alpha: f64,
    /// The level sets are built with now (alpha_t clamped into (0, 1)).
    pub serving_alpha: f64,
    /// Labelled adaptive sets seen, and how many missed their label.
    pub labels: u64,
    /// Misses among them.
    pub misses: u64,
    /// Outcomes dropped, oldest first, while waiting for the level: more than
    /// [`MAX_PENDING_LABELS`] waited.
    pub labels_dropped: u64,
}

#[derive(Debug, Clone)]
struct Cached {
    at_total: u64,
    estimated: Estimated,
    ratio: Option<Vec<f64>>,
}

#[derive(Debug)]
struct ModelTrust {
    served: Option<ServedWindow>,
    exchange: ExchangeabilityMartingale,
    /// Built with the served window (it needs the model's classes and calibration file); the
    /// error says why it is absent.
    label_shift: Result<LabelShiftEProcess, &'static str>,
    calibration: Calibration,
    aci: Option<AdaptiveAlpha>,
    /// Whether each labelled adaptive set covered its label, in log order, while `aci` does not
    /// exist yet (labels replayed from the log before the first request): fed to it when built.
    /// At most [`MAX_PENDING_LABELS`], the newest.
    aci_pending: VecDeque<bool>,
    /// Labels of `Calibration::Pending` dropped past [`MAX_PENDING_LABELS`] (reported).
    calibration_dropped: u64,
    /// Outcomes of `aci_pending` dropped past [`MAX_PENDING_LABELS`] (reported).
    aci_dropped: u64,
    alarm: Option<(&'static str, u64)>,
    cache: Option<Cached>,
    refreshing: bool,
    /// When the state was last reset (Unix seconds; 0: never): labels of predictions made
    /// before then judged the previous calibrator and are not fed to the new state.
    since_s: u64,
}

/// The calibration e-process of a model, or the labels that wait for it: its tolerance comes
/// from the model's calibration file (see the module doc).
#[derive(Debug)]
enum Calibration {
    /// (correct, confidence, arrival in Unix seconds) of each label, in log order; at most
    /// [`MAX_PENDING_LABELS`], the newest.
    Pending(VecDeque<(bool, f64, u64)>),
    /// The e-process and where its tolerance came from (`calibration_tolerance_from`).
    Ready(CalibrationEProcess, &'static str),
}

impl ModelTrust {
    fn new(since_s: u64) -> Self {
        ModelTrust {
            served: None,
            exchange: ExchangeabilityMartingale::new(),
            label_shift: Err("no prediction served yet"),
            calibration: Calibration::Pending(VecDeque::new()),
            aci: None,
            aci_pending: VecDeque::new(),
            calibration_dropped: 0,
            aci_dropped: 0,
            alarm: None,
            cache: None,
            refreshing: false,
            since_s,
        }
    }
}

/// Per-model live trust state.
#[derive(Debug)]
pub struct LiveTrust {
    config: TrustConfig,
    models: Mutex<HashMap<String, ModelTrust>>,
}

/// How many new predictions make a cached estimate stale: a twentieth of the window, at
/// least 50.
pub fn refresh_every(window: usize) -> u64 {
    (window / 20).max(50) as u64
}

impl LiveTrust {
    /// Empty state.
    pub fn new(config: TrustConfig) -> Self {
        Self {
            config,
            models: Mutex::new(HashMap::new()),
        }
    }

    fn with<R>(&self, model: &str, f: impl FnOnce(&mut ModelTrust, &TrustConfig) -> R) -> R {
        let mut map = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let t = super::model_entry(&mut map, model, || ModelTrust::new(0));
        f(t, &self.config)
    }

    /// A labelled prediction: feeds the calibration e-process and, when its set was built at
    /// the adaptive level, the level. Called for each new record, in log order.
    pub(super) fn on_label(&self, r: &FeedbackRecord, now_s: u64) {
        self.with(&r.model, |t, cfg| {
            if r.issued_at_s < t.since_s {
                // Served before the calibrator was replaced: evidence about the old one.
                return;
            }
            t.calibration_label(&r.model, r.predicted == r.label, r.confidence, now_s);
            if let Some(set) = r.set
                && set.adaptive
            {
                match t.aci.as_mut() {
                    Some(aci) => aci.update(set.covered),
                    None => wait_bounded(
                        &mut t.aci_pending,
                        set.covered,
                        &mut t.aci_dropped,
                        &r.model,
                        "adaptive conformal",
                    ),
                }
            }
            t.check_alarm(cfg, now_s);
        });
    }
}

/// Appends `item` to a buffer that waits for its statistic, dropping the oldest past
/// [`MAX_PENDING_LABELS`] (O(1) either way); warns at the first drop of the model's state, not at
/// every one.
fn wait_bounded<T>(
    buffer: &mut VecDeque<T>,
    item: T,
    dropped: &mut u64,
    model: &str,
    statistic: &str,
) {
    if buffer.len() >= MAX_PENDING_LABELS {
        buffer.pop_front();
        *dropped += 1;
        if *dropped == 1 {
            tracing::warn!(
                model,
                statistic,
                kept = MAX_PENDING_LABELS,
                "more labels wait for the model's statistic than are kept: dropping the oldest \
                 (it starts on the newest once the model is loaded, or asked)"
            );
        }
    }
    buffer.push_back(item);
}

impl ModelTrust {
    /// Feeds one label to the calibration e-process, or keeps it until the e-process exists.
    fn calibration_label(&mut self, model: &str, correct: bool, confidence: f64, at_s: u64) {
        match &mut self.calibration {
            Calibration::Pending(labels) => wait_bounded(
                labels,
                (correct, confidence, at_s),
                &mut self.calibration_dropped,
                model,
                "calibration",
            ),
            Calibration::Ready(e, _) => e.update(correct, confidence),
        }
    }

    fn check_alarm(&mut self, cfg: &TrustConfig, now_s: u64) {
        if self.alarm.is_some() {
            return;
        }
        let log_threshold = (ALARM_STATISTICS / cfg.alarm_alpha).ln();
        let calibration = match &self.calibration {
            Calibration::Ready(e, _) => e.log_value(),
            Calibration::Pending(_) => 0.0,
        };
        if calibration >= log_threshold {
            self.alarm = Some(("calibration", now_s));
        } else if self.exchange.log_value() >= log_threshold {
            self.alarm = Some(("exchangeability", now_s));
        } else if self
            .label_shift
            .as_ref()
            .is_ok_and(|e| e.log_value() >= log_threshold)
        {
            self.alarm = Some(("label_shift", now_s));
        }
    }
}

impl Monitor {
    /// The live trust settings.
    pub fn trust_config(&self) -> &TrustConfig {
        &self.config.trust
    }

    /// Records a served calibrated probability vector (before any label-shift correction) for
    /// the shift estimates, the exchangeability martingale and the label-shift e-process (whose
    /// reference, the validation predicted-class distribution, comes from `source` when the
    /// model's first prediction, or the first after a reset, arrives).
    pub fn observe_served(&self, model: &str, probabilities: &[f64], source: &ShiftSource<'_>) {
        let top = probabilities.iter().copied().fold(0.0, f64::max);
        // The served class (before any correction), as the response derives it.
        let class = crate::numeric::argmax(probabilities);
        let tau: f64 = rand::random();
        self.live.with(model, |t, cfg| {
            let k = probabilities.len();
            if t.served.as_ref().is_none_or(|w| w.classes() != k) {
                // First prediction, or the model now has other classes: start over.
                t.served = Some(ServedWindow::new(k, cfg.shift_window));
                t.cache = None;
                t.label_shift = label_shift_process(cfg, k, source.confusion);
            }
            if let Some(w) = t.served.as_mut() {
                w.push(probabilities);
            }
            t.exchange.observe(top, tau);
            if let Ok(e) = t.label_shift.as_mut() {
                e.observe(class);
            }
            t.check_alarm(cfg, super::now_s());
        });
    }

    /// Estimates the served class prior now (and refreshes the cache the request path uses).
    /// None when the model has served nothing.
    pub fn estimate_shift(&self, model: &str, source: &ShiftSource<'_>) -> Option<Estimated> {
        let (rows, k, capacity, total) = self.live.with(model, |t, _| {
            let w = t.served.as_ref()?;
            Some((w.rows().to_vec(), w.classes(), w.capacity(), w.total()))
        })?;
        let cached = compute(&rows, k, capacity, source);
        let estimated = cached.estimated.clone();
        self.live.with(model, |t, _| {
            t.cache = Some(Cached {
                at_total: total,
                ..cached
            });
        });
        Some(estimated)
    }

    /// The estimate of the cache when it is at most [`refresh_every`] predictions old, else a
    /// fresh one (for the scrape, which should not rerun EM on an unchanged window).
    pub fn estimate_shift_cached(
        &self,
        model: &str,
        source: &ShiftSource<'_>,
    ) -> Option<Estimated> {
        let cached = self.live.with(model, |t, _| {
            let w = t.served.as_ref()?;
            t.cache
                .as_ref()
                .filter(|c| w.total() < c.at_total + refresh_every(w.capacity()))
                .map(|c| c.estimated.clone())
        });
        cached.or_else(|| self.estimate_shift(model, source))
    }

    /// The prior ratios w_k = q_k / p_k to correct `model`'s predictions with, from an estimate
    /// at most [`refresh_every`] predictions old (recomputed here when older); None until the
    /// window holds [`MIN_SHIFT_SAMPLES`] predictions.
    pub fn label_shift_ratio(&self, model: &str, source: &ShiftSource<'_>) -> Option<Vec<f64>> {
        enum Step {
            Use(Option<Vec<f64>>),
            Refresh(Option<Vec<f64>>),
        }
        let step = self.live.with(model, |t, _| {
            let w = t.served.as_ref()?;
            let ratio = t.cache.as_ref().and_then(|c| c.ratio.clone());
            let due = t
                .cache
                .as_ref()
                .is_none_or(|c| w.total() >= c.at_total + refresh_every(w.capacity()));
            if due && !t.refreshing && w.len() >= MIN_SHIFT_SAMPLES {
                t.refreshing = true;
                Some(Step::Refresh(ratio))
            } else {
                Some(Step::Use(ratio))
            }
        })?;
        match step {
            Step::Use(ratio) => ratio,
            Step::Refresh(stale) => {
                // This caller refreshes; concurrent ones use the stale ratio meanwhile.
                self.estimate_shift(model, source);
                self.live
                    .with(model, |t, _| {
                        t.refreshing = false;
                        t.cache.as_ref().and_then(|c| c.ratio.clone())
                    })
                    .or(stale)
            }
        }
    }

    /// The level to build `model`'s next conformal set with, when the model uses adaptive
    /// conformal inference (`--adaptive-conformal`); `target` is the calibration file's level.
    pub fn adaptive_alpha(&self, model: &str, target: f64) -> Option<f64> {
        if !self.config.trust.adaptive_conformal.contains(model) {
            return None;
        }
        Some(self.live.with(model, |t, cfg| {
            let pending = &mut t.aci_pending;
            t.aci
                .get_or_insert_with(|| {
                    let mut aci = AdaptiveAlpha::new(target, cfg.aci_gamma);
                    std::mem::take(pending)
                        .into_iter()
                        .for_each(|covered| aci.update(covered));
                    aci
                })
                .serving_alpha()
        }))
    }

    /// The alarm of `model`, when it has seen a prediction or a label.
    pub fn alarm_report(&self, model: &str) -> Option<AlarmReport> {
        let map = self.live.models.lock().unwrap_or_else(|e| e.into_inner());
        let t = map.get(model)?;
        let alpha = self.config.trust.alarm_alpha;
        let pending = CalibrationEProcess::new(0.0);
        let (calibration, tolerance_from) = match &t.calibration {
            Calibration::Ready(e, from) => (e, *from),
            Calibration::Pending(_) => (&pending, "pending"),
        };
        Some(AlarmReport {
            alarm: t.alarm.is_some(),
            alpha,
            threshold: ALARM_STATISTICS / alpha,
            reason: t.alarm.map(|a| a.0),
            since_s: t.alarm.map(|a| a.1),
            calibration_evalue: calibration.value(),
            calibration_labels: calibration.samples(),
            calibration_mean_error: calibration.mean_error(),
            calibration_tolerance: calibration.tolerance(),
            calibration_tolerance_from: tolerance_from,
            calibration_labels_dropped: t.calibration_dropped,
            exchangeability_martingale: t.exchange.value(),
            exchangeability_max: t.exchange.max_value(),
            exchangeability_samples: t.exchange.samples(),
            label_shift_evalue: t.label_shift.as_ref().ok().map(|e| e.value()),
            label_shift_max: t.label_shift.as_ref().ok().map(|e| e.max_value()),
            label_shift_samples: t.label_shift.as_ref().map_or(0, |e| e.samples()),
            label_shift_tolerance: t.label_shift.as_ref().ok().map(|e| e.tolerance()),
            label_shift_distance: t.label_shift.as_ref().ok().map(|e| e.distance()),
            label_shift_unavailable: t.label_shift.as_ref().err().copied(),
        })
    }

    /// Adaptive conformal inference of `model`, once it has built a set with it.
    pub fn aci_report(&self, model: &str) -> Option<AciReport> {
        let map = self.live.models.lock().unwrap_or_else(|e| e.into_inner());
        let t = map.get(model)?;
        let a = t.aci.as_ref()?;
        let (labels, misses) = a.counts();
        Some(AciReport {
            target_alpha: a.target(),
            gamma: a.gamma(),
            alpha: a.alpha(),
            serving_alpha: a.serving_alpha(),
            labels,
            misses,
            labels_dropped: t.aci_dropped,
        })
    }

    /// Registers a loaded model's calibration file (`source`): the server calls it after every
    /// load that put `model` in service. The first builds the calibration e-process at the
    /// tolerance the file gives and feeds it the labels replayed from the feedback log, which
    /// waited for it; later loads of the same files change nothing. `replaced`: the load
    /// swapped in another model file or calibrator (a recalibration, or a `load` of a changed
    /// calibration file), after which the old evidence no longer applies, so the live trust
    /// state is forgotten first (served window and estimates, the three alarm statistics and
    /// the latched alarm, adaptive level) and the e-process starts afresh at the new file's
    /// tolerance. Labels that arrive later for predictions served before such a reset (by the
    /// second) are not fed to the new state.
    pub fn model_loaded(&self, model: &str, source: &ShiftSource<'_>, replaced: bool) {
        self.model_loaded_at(model, source, replaced, super::now_s());
    }

    fn model_loaded_at(&self, model: &str, source: &ShiftSource<'_>, replaced: bool, now: u64) {
        let cfg = &self.config.trust;
        let mut map = self.live.models.lock().unwrap_or_else(|e| e.into_inner());
        if replaced {
            map.insert(model.to_string(), ModelTrust::new(now));
            tracing::info!(model, "live trust state reset: the calibrator changed");
        }
        let t = map
            .entry(model.to_string())
            .or_insert_with(|| ModelTrust::new(0));
        if let Calibration::Pending(labels) = &mut t.calibration {
            let labels = std::mem::take(labels);
            let (tolerance, from) = calibration_tolerance_of(cfg, source);
            t.calibration = Calibration::Ready(CalibrationEProcess::new(tolerance), from);
            for (correct, confidence, at_s) in labels {
                t.calibration_label(model, correct, confidence, at_s);
                t.check_alarm(cfg, at_s);
            }
            tracing::info!(model, tolerance, from, "calibration e-process built");
        }
    }
}

/// The calibration e-process's tolerance for a model and where it comes from: `--alarm-tolerance`
/// when set, else derived from the calibration file's validation reliability bins with
/// delta = alpha / 3 (the statistic's share of alpha), else 0 (nothing to derive it from).
fn calibration_tolerance_of(cfg: &TrustConfig, source: &ShiftSource<'_>) -> (f64, &'static str) {
    if let Some(t) = cfg.alarm_tolerance {
        return (t, "flag");
    }
    source
        .reliability
        .and_then(|bins| calibration_tolerance(bins, cfg.alarm_alpha / ALARM_STATISTICS))
        .map_or((0.0, "none"), |t| (t, "derived"))
}

/// The label-shift e-process of a model with `k` classes: against the predicted-class counts of
/// its validation confusion matrix (`[predicted][label]`: row sums), at the configured tolerance
/// or the one derived from the validation size with delta = alpha / 3, the statistic's share.
fn label_shift_process(
    cfg: &TrustConfig,
    k: usize,
    confusion: Option<&[Vec<u64>]>,
) -> Result<LabelShiftEProcess, &'static str> {
    let c = confusion.ok_or(NO_CONFUSION)?;
    if c.len() != k || c.iter().any(|r| r.len() != k) {
        return Err("the validation confusion matrix does not match the model's classes");
    }
    let predicted: Vec<u64> = c.iter().map(|r| r.iter().sum()).collect();
    let rows = predicted.iter().sum();
    let eps = cfg
        .alarm_shift_tolerance
        .unwrap_or_else(|| label_shift_tolerance(k, rows, cfg.alarm_alpha / ALARM_STATISTICS));
    LabelShiftEProcess::new(&predicted, eps).ok_or("the validation confusion matrix is empty")
}

/// Runs both estimators on a copy of the window.
fn compute(rows: &[f32], k: usize, capacity: usize, source: &ShiftSource<'_>) -> Cached {
    let served = rows.len() / k.max(1);
    let from_validation = source.label_counts.is_some_and(|c| c.len() == k);
    let source_prior = shift::source_prior(source.label_counts, k);
    let accuracy = (served > 0).then(|| {
        rows.chunks_exact(k)
            .map(|r| r.iter().copied().fold(0.0f32, f32::max) as f64)
            .sum::<f64>()
            / served as f64
    });
    let mut out = Estimated {
        served,
        window: capacity,
        prior: None,
        prior_bbse: None,
        bbse_unavailable: None,
        shift_pvalue: None,
        shift_statistic: None,
        accuracy,
        source_prior: source_prior.clone(),
        source_prior_from: if from_validation {
            "validation"
        } else {
            "uniform"
        },
    };
    let mut ratio = None;
    if served < MIN_SHIFT_SAMPLES {
        out.bbse_unavailable = Some(format!("fewer than {MIN_SHIFT_SAMPLES} served predictions"));
        return Cached {
            at_total: 0,
            estimated: out,
            ratio,
        };
    }
    let options = EmOptions {
        tolerance: 1e-6,
        max_iterations: 300,
    };
    match shift::em_prior(rows, k, &source_prior, options) {
        Ok(e) => {
            ratio = Some(shift::prior_ratio(&e.prior, &source_prior));
            out.shift_pvalue = Some(e.pvalue);
            out.shift_statistic = Some(e.lr_statistic);
            out.prior = Some(e.prior);
        }
        Err(e) => tracing::warn!(error = %e, "label-shift EM failed"),
    }
    match source.confusion {
        None => out.bbse_unavailable = Some(NO_CONFUSION.into()),
        Some(c) => {
            let mut predicted = vec![0u64; k];
            for r in rows.chunks_exact(k) {
                let top = (0..k).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap_or(0);
                predicted[top] += 1;
            }
            match shift::bbse_prior(c, &predicted) {
                Ok(b) => out.prior_bbse = Some(b.prior),
                Err(e) => out.bbse_unavailable = Some(e.to_string()),
            }
        }
    }
    Cached {
        at_total: 0,
        estimated: out,
        ratio,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{FeedbackItem, LabelRef, MonitorConfig, TokenSigner};
    use super::*;

    fn monitor(trust: TrustConfig) -> Monitor {
        let cfg = MonitorConfig {
            window: 10_000,
            max_age_s: 1_000,
            state_dir: None,
            bins: 15,
            trust,
        };
        Monitor::open(cfg, TokenSigner::new(b"k")).unwrap().0
    }

    /// A monitor whose feedback log lives in `dir` (reopened to test a restart).
    fn open_in(dir: &std::path::Path, trust: TrustConfig) -> Monitor {
        let cfg = MonitorConfig {
            window: 10_000,
            max_age_s: 1_000,
            state_dir: Some(dir.into()),
            bins: 15,
            trust,
        };
        Monitor::open(cfg, TokenSigner::new(b"k")).unwrap().0
    }

    /// Records labelled items, every one of which must be accepted.
    fn record_all(m: &Monitor, items: &[FeedbackItem]) {
        let out = m.record(items, &labels, super::super::now_s());
        assert!(out.iter().all(|r| r.is_ok()));
    }

    fn labels(model: &str) -> Option<Vec<String>> {
        (model == "m").then(|| vec!["a".into(), "b".into()])
    }

    #[test]
    fn estimates_need_a_hundred_predictions_then_follow_the_served_mix() {
        let m = monitor(TrustConfig::default());
        let source = ShiftSource {
            classes: 2,
            label_counts: Some(&[50, 50]),
            confusion: None,
            reliability: None,
        };
        assert!(m.estimate_shift("m", &source).is_none(), "nothing served");
        for _ in 0..99 {
            m.observe_served("m", &[0.9, 0.1], &source);
        }
        let e = m.estimate_shift("m", &source).unwrap();
        assert_eq!((e.served, e.prior.clone()), (99, None));
        assert_eq!(m.label_shift_ratio("m", &source), None);
        // 300 rows: posteriors of class a (0.9, 0.1) three times as often as of b (0.1, 0.9).
        for i in 0..201 {
            let p = if i % 3 == 2 { [0.1, 0.9] } else { [0.9, 0.1] };
            m.observe_served("m", &p, &source);
        }
        let e = m.estimate_shift("m", &source).unwrap();
        let q = e.prior.unwrap();
        assert!((q[0] - 0.8).abs() < 0.05, "{q:?}");
        assert_eq!(e.source_prior_from, "validation");
        assert!(e.bbse_unavailable.unwrap().contains("confusion"));
        assert!(e.shift_pvalue.unwrap() < 1e-6);
        assert!((e.accuracy.unwrap() - 0.9).abs() < 1e-6);
        let w = m.label_shift_ratio("m", &source).unwrap();
        assert!(w[0] > 1.5 && w[1] < 0.5, "{w:?}");
    }

    /// A two-class model's calibration file without reliability bins: tolerance 0 ("none").
    const BARE: ShiftSource<'static> = ShiftSource {
        classes: 2,
        label_counts: None,
        confusion: None,
        reliability: None,
    };

    #[test]
    fn overconfident_labels_raise_the_alarm_and_a_reset_clears_it() {
        let m = monitor(TrustConfig::default());
        m.model_loaded("m", &BARE, false);
        let now = super::super::now_s();
        // Confidence 0.95, right half the time: E[correct - confidence] = -0.45.
        let items: Vec<FeedbackItem> = (0..200)
            .map(|i| FeedbackItem {
                prediction_id: m.issue_token("m", "1", 0, 0.95, &[0.95, 0.05]),
                label: LabelRef::Index(i % 2),
            })
            .collect();
        assert!(m.record(&items, &labels, now).iter().all(|r| r.is_ok()));
        let a = m.alarm_report("m").unwrap();
        assert!(a.alarm, "{a:?}");
        assert_eq!((a.reason, a.calibration_labels), (Some("calibration"), 200));
        assert_eq!(
            (a.calibration_tolerance, a.calibration_tolerance_from),
            (0.0, "none")
        );
        assert!(a.calibration_evalue >= a.threshold);
        // The same files loaded again change nothing; a swap starts afresh.
        m.model_loaded("m", &BARE, false);
        assert!(m.alarm_report("m").unwrap().alarm);
        m.model_loaded("m", &BARE, true);
        let a = m.alarm_report("m").unwrap();
        assert!(!a.alarm && a.calibration_labels == 0, "{a:?}");
        // A late label of a prediction served before the reset judges the old calibrator: not
        // fed to the new e-process (the reset is dated 10 s after the prediction here).
        let late = FeedbackItem {
            prediction_id: m.issue_token("m", "1", 0, 0.95, &[0.95, 0.05]),
            label: LabelRef::Index(1),
        };
        m.model_loaded_at("m", &BARE, true, now + 10);
        assert!(m.record(&[late], &labels, now + 10)[0].is_ok());
        assert_eq!(m.alarm_report("m").unwrap().calibration_labels, 0);
    }

    #[test]
    fn served_classes_away_from_validation_raise_the_label_shift_alarm() {
        let m = monitor(TrustConfig::default());
        // Validation predicted each class 500 times. Every served row has max-probability 0.9, so
        // the exchangeability martingale sees only ties (uniform p-values) and stays quiet.
        let confusion = vec![vec![450, 50], vec![50, 450]];
        let source = ShiftSource {
            classes: 2,
            label_counts: Some(&[500, 500]),
            confusion: Some(&confusion),
            reliability: None,
        };
        let row = |class: usize| if class == 0 { [0.9, 0.1] } else { [0.1, 0.9] };
        for i in 0..2_000 {
            m.observe_served("m", &row(i % 2), &source);
        }
        let a = m.alarm_report("m").unwrap();
        assert!(!a.alarm, "{a:?}");
        assert_eq!(a.label_shift_samples, 2_000);
        let eps = label_shift_tolerance(2, 1_000, 0.01 / 3.0);
        assert_eq!(a.label_shift_tolerance, Some(eps));
        assert!(a.label_shift_distance.unwrap() < eps, "{a:?}");
        // Nine in ten now predicted as class 0: the label-shift statistic fires within 100.
        for i in 0..100 {
            m.observe_served("m", &row(usize::from(i % 10 == 9)), &source);
        }
        let a = m.alarm_report("m").unwrap();
        assert_eq!((a.alarm, a.reason), (true, Some("label_shift")), "{a:?}");
        assert!(a.label_shift_evalue.unwrap() >= a.threshold && a.threshold == 300.0);
        // A swap forgets it; a file without the confusion matrix has no such statistic.
        let none = ShiftSource {
            confusion: None,
            ..source
        };
        m.model_loaded("m", &none, true);
        m.observe_served("m", &row(0), &none);
        let a = m.alarm_report("m").unwrap();
        assert!(!a.alarm && a.label_shift_evalue.is_none(), "{a:?}");
        assert!(a.label_shift_unavailable.unwrap().contains("confusion"));
    }

    #[test]
    fn the_adaptive_level_moves_with_labelled_adaptive_sets_only() {
        let trust = TrustConfig {
            adaptive_conformal: ModelSelection(vec!["m".into()]),
            aci_gamma: 0.01,
            ..TrustConfig::default()
        };
        let m = monitor(trust);
        assert_eq!(m.adaptive_alpha("other", 0.1), None);
        assert_eq!(m.adaptive_alpha("m", 0.1), Some(0.1));
        let set = |adaptive| super::super::ServedSet {
            classes: vec![0],
            alpha: 0.1,
            adaptive,
            num_classes: 2,
        };
        let id =
            |adaptive| m.issue_token_with_set("m", "1", 0, 0.9, &[0.9, 0.1], Some(set(adaptive)));
        // A miss at the adaptive level lowers alpha by gamma (1 - alpha); a fixed-level set
        // changes nothing.
        let items = [
            FeedbackItem {
                prediction_id: id(true),
                label: LabelRef::Index(1),
            },
            FeedbackItem {
                prediction_id: id(false),
                label: LabelRef::Index(1),
            },
        ];
        let out = m.record(&items, &labels, super::super::now_s());
        assert!(!out[0].as_ref().unwrap().record.set.unwrap().covered);
        let r = m.aci_report("m").unwrap();
        assert_eq!((r.labels, r.misses), (1, 1));
        assert!((r.alpha - (0.1 - 0.01 * 0.9)).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn the_adaptive_level_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let trust = TrustConfig {
                adaptive_conformal: ModelSelection(vec!["m".into()]),
                aci_gamma: 0.01,
                ..TrustConfig::default()
            };
            open_in(dir.path(), trust)
        };
        let m = open();
        let alpha = m.adaptive_alpha("m", 0.1).unwrap();
        let set = super::super::ServedSet {
            classes: vec![0],
            alpha,
            adaptive: true,
            num_classes: 2,
        };
        // Three misses and a hit at the adaptive level.
        let items: Vec<FeedbackItem> = [1, 1, 0, 1]
            .into_iter()
            .map(|label| FeedbackItem {
                prediction_id: m.issue_token_with_set(
                    "m",
                    "1",
                    0,
                    0.9,
                    &[0.9, 0.1],
                    Some(set.clone()),
                ),
                label: LabelRef::Index(label),
            })
            .collect();
        record_all(&m, &items);
        let live = m.aci_report("m").unwrap();
        assert_eq!((live.labels, live.misses), (4, 3));
        drop(m);
        // Replayed before any request, the outcomes wait for the level and then move it.
        let m = open();
        assert!(m.aci_report("m").is_none());
        let replayed = m.adaptive_alpha("m", 0.1).unwrap();
        assert_eq!(m.aci_report("m").unwrap(), live);
        assert!(replayed < 0.1, "{replayed}");
    }

    #[test]
    fn replayed_labels_wait_for_the_calibration_file_and_keep_its_derived_tolerance() {
        let dir = tempfile::tempdir().unwrap();
        let open = |alarm_tolerance| {
            let trust = TrustConfig {
                alarm_tolerance,
                ..TrustConfig::default()
            };
            open_in(dir.path(), trust)
        };
        // A file whose calibrator was 3 points over-confident on 1,000 validation predictions.
        let bins = [
            Bin {
                lower: 0.5,
                upper: 0.75,
                count: 400,
                confidence: 0.65,
                accuracy: 0.62,
            },
            Bin {
                lower: 0.75,
                upper: 1.0,
                count: 600,
                confidence: 0.9,
                accuracy: 0.87,
            },
        ];
        let source = ShiftSource {
            reliability: Some(&bins),
            ..BARE
        };
        let eps = calibration_tolerance(&bins, 0.01 / 3.0).unwrap();
        // By hand: 0.03 + sqrt(2 V ln(1200) / 1000) + 14 ln(1200) / 2997, V <= 0.2575.
        assert!((eps - 0.12354).abs() < 1e-4, "{eps}");
        // 300 labels at confidence 0.9, right 3 times in 4: E[correct - confidence] = -0.15,
        // 0.03 past eps: no alarm at the derived tolerance (yet), an alarm at 0.
        let m = open(None);
        m.model_loaded("m", &source, false);
        let items: Vec<FeedbackItem> = (0..300)
            .map(|i| FeedbackItem {
                prediction_id: m.issue_token("m", "1", 0, 0.9, &[0.9, 0.1]),
                label: LabelRef::Index(u64::from(i % 4 == 0)),
            })
            .collect();
        record_all(&m, &items);
        let live = m.alarm_report("m").unwrap();
        assert_eq!(
            (live.calibration_tolerance, live.calibration_tolerance_from),
            (eps, "derived")
        );
        assert_eq!(
            (live.alarm, live.calibration_labels),
            (false, 300),
            "{live:?}"
        );
        drop(m);

        // After a restart the replayed labels wait for the file, then give the same e-process.
        let m = open(None);
        let waiting = m.alarm_report("m").unwrap();
        assert_eq!(
            (
                waiting.calibration_tolerance_from,
                waiting.calibration_labels
            ),
            ("pending", 0)
        );
        m.model_loaded("m", &source, false);
        assert_eq!(m.alarm_report("m").unwrap(), live);
        // A swap to a file without reliability bins starts afresh at 0, and says so.
        m.model_loaded("m", &BARE, true);
        let swapped = m.alarm_report("m").unwrap();
        assert_eq!(
            (
                swapped.calibration_tolerance,
                swapped.calibration_tolerance_from
            ),
            (0.0, "none")
        );
        assert_eq!(swapped.calibration_labels, 0);
        drop(m);

        // The flag wins over the file: replayed at tolerance 0, the same labels fire.
        let m = open(Some(0.0));
        m.model_loaded("m", &source, false);
        let flagged = m.alarm_report("m").unwrap();
        assert_eq!(flagged.calibration_tolerance_from, "flag");
        assert_eq!(
            (flagged.alarm, flagged.reason),
            (true, Some("calibration")),
            "{flagged:?}"
        );
    }

    /// A labelled record of model "m" (adaptive set: `Some(covered)`), fed to the live state
    /// directly: the bound is about what waits, not about the feedback path.
    fn labelled(correct: bool, confidence: f64, adaptive: Option<bool>) -> FeedbackRecord {
        FeedbackRecord {
            model: "m".into(),
            model_version: "1".into(),
            nonce: 0,
            issued_at_s: 0,
            received_at_s: 0,
            predicted: 0,
            label: u16::from(!correct),
            confidence,
            set: adaptive.map(|covered| super::super::SetOutcome {
                covered,
                size: 1,
                alpha: 0.1,
                adaptive: true,
            }),
            probabilities: None,
        }
    }

    #[test]
    fn labels_waiting_for_a_model_keep_only_the_newest() {
        let trust = TrustConfig {
            adaptive_conformal: ModelSelection(vec!["m".into()]),
            ..TrustConfig::default()
        };
        let m = monitor(trust);
        // Five wrong labels (a missed adaptive set each), then the cap's worth of right ones
        // (covered): only the right ones may be left when the model is loaded and asked.
        let old = 5;
        for i in 0..old + MAX_PENDING_LABELS {
            let newer = i >= old;
            m.live.on_label(&labelled(newer, 0.5, Some(newer)), 1);
        }
        let waiting = m.alarm_report("m").unwrap();
        assert_eq!(
            (
                waiting.calibration_tolerance_from,
                waiting.calibration_labels_dropped
            ),
            ("pending", old as u64)
        );
        m.model_loaded("m", &BARE, false);
        let a = m.alarm_report("m").unwrap();
        assert_eq!(
            (a.calibration_labels, a.calibration_labels_dropped),
            (MAX_PENDING_LABELS as u64, old as u64)
        );
        // Every kept label is right at confidence 0.5.
        assert_eq!(a.calibration_mean_error, Some(0.5), "{a:?}");
        m.adaptive_alpha("m", 0.1).unwrap();
        let r = m.aci_report("m").unwrap();
        assert_eq!(
            (r.labels, r.misses, r.labels_dropped),
            (MAX_PENDING_LABELS as u64, 0, old as u64)
        );
        // Once built, the statistics take every label: nothing more is dropped.
        m.live.on_label(&labelled(false, 0.5, Some(false)), 2);
        let a = m.alarm_report("m").unwrap();
        assert_eq!(a.calibration_labels, MAX_PENDING_LABELS as u64 + 1);
        assert_eq!(a.calibration_labels_dropped, old as u64);
        let r = m.aci_report("m").unwrap();
        assert_eq!(
            (r.labels, r.misses, r.labels_dropped),
            (MAX_PENDING_LABELS as u64 + 1, 1, old as u64)
        );
    }

    #[test]
    fn labels_up_to_the_cap_all_wait_and_none_is_dropped() {
        let m = monitor(TrustConfig::default());
        for _ in 0..MAX_PENDING_LABELS {
            m.live.on_label(&labelled(true, 0.5, None), 1);
        }
        m.model_loaded("m", &BARE, false);
        let a = m.alarm_report("m").unwrap();
        assert_eq!(
            (a.calibration_labels, a.calibration_labels_dropped),
            (MAX_PENDING_LABELS as u64, 0)
        );
    }

    #[test]
    fn the_shipped_calibration_files_give_the_documented_tolerances() {
        // docs/MONITORING.md: 0.0241 for CIFAR-10 (b_hat 0.0016, M 5,000) and 0.0114 for MNIST
        // (M 6,000) at alpha = 0.01.
        for (model, expected) in [("cifar10", 0.0241), ("mnist", 0.0114)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("calib")
                .join(format!("{model}.json"));
            let file = crate::repository::CalibrationFile::load(&path).unwrap();
            let fit = file.fit.unwrap();
            let bins = &fit.reliability.unwrap().after;
            let eps = calibration_tolerance_of(
                &TrustConfig::default(),
                &ShiftSource {
                    reliability: Some(bins),
                    ..BARE
                },
            );
            assert_eq!(eps.1, "derived");
            assert!((eps.0 - expected).abs() < 5e-5, "{model}: {}", eps.0);
        }
    }
}
