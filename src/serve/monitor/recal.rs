//! Shadow recalibration from label feedback (issue 22, section 2): the labelled-logit window of
//! each model, the TS and ATS shadows refitted on it, their prequential scores against the
//! incumbent and the `--auto-recalibrate` decision.
//!
//! Flow: at predict time the logits go into the [`LogitStore`]; when a label arrives its logits
//! are taken out, the label is scored by each shadow (fitted before it arrived) and by the
//! incumbent ([`Prequential`]), and the (logits, label) pair joins the model's window. Every
//! `refit_every` usable labels a [`FitJob`] snapshot of the window is handed to the caller, who
//! runs it on the blocking pool (no lock is held during a fit) and installs the result. Writing a
//! new calibration file and swapping it in is `serve::infer::recalibrate`, which this module only
//! tells when (`Observed::promote`) and is told when it is done ([`Recalibration::reset_scores`]).
//!
//! The window is keyed by model name and model sha256: labels of an older model file never
//! refit the current one. Memory per model: `(logit_store + window) x classes x 4` bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use ndarray::Array2;
use serde::Serialize;

use super::logits::LogitStore;
use super::shadow::{Prequential, PromotionRule, ShadowScore, Verdict};
use crate::repository::fit_bundle::{Adapt, plan_fit};
use crate::trust::calibration::{Calibrator, FitOptions, Method, fit};

/// Fewest usable labels in the window before shadows are fitted.
pub const MIN_SHADOW_LABELS: usize = 100;

/// The methods kept as shadows, in report order.
pub const SHADOW_METHODS: [Method; 2] = [Method::Ts, Method::Ats];

/// Flags of shadow recalibration (part of `caliper serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct RecalArgs {
    /// Logits of the last N predictions kept per model for refitting calibrators from feedback
    /// (memory: N x classes x 4 bytes per model; 0 turns shadows and recalibration off).
    #[arg(long, env = "CALIPER_LOGIT_STORE", default_value_t = 10_000)]
    pub logit_store: usize,
    /// Labelled predictions (with their logits) per model that shadows and
    /// `POST /v2/repository/models/M/recalibrate` fit on (memory: N x classes x 4 bytes).
    #[arg(long, env = "CALIPER_RECALIBRATION_WINDOW", default_value_t = 5_000)]
    pub recalibration_window: usize,
    /// Refit the shadow calibrators every K new usable labels.
    #[arg(long, env = "CALIPER_SHADOW_REFIT_EVERY", default_value_t = 200)]
    pub shadow_refit_every: usize,
    /// Promote a shadow calibrator automatically when the promotion rule says so (see
    /// docs/MONITORING.md): written to calib/<model>.json and swapped in, logged and counted.
    #[arg(long, env = "CALIPER_AUTO_RECALIBRATE")]
    pub auto_recalibrate: bool,
    /// Promotion rule: fewest prequentially scored labels.
    #[arg(
        long,
        env = "CALIPER_AUTO_RECALIBRATE_MIN_LABELS",
        default_value_t = 500
    )]
    pub auto_recalibrate_min_labels: u64,
    /// Promotion rule: level of the anytime-valid test (a betting e-process on per-label NLL
    /// gains) that a promotion must pass: its e-value must reach 1/alpha.
    #[arg(long, env = "CALIPER_AUTO_RECALIBRATE_ALPHA", default_value_t = 0.01)]
    pub auto_recalibrate_alpha: f64,
    /// Promotion rule: smallest mean NLL gain per label, in nats.
    #[arg(long, env = "CALIPER_AUTO_RECALIBRATE_MARGIN", default_value_t = 0.01)]
    pub auto_recalibrate_margin: f64,
}

/// Validated settings of shadow recalibration.
#[derive(Debug, Clone, PartialEq)]
pub struct RecalConfig {
    /// Predictions whose logits are kept per model.
    pub logit_store: usize,
    /// Labelled logits kept per model for fitting.
    pub window: usize,
    /// Refit period in usable labels.
    pub refit_every: usize,
    /// The promotion rule (always set: it also gives the e-value shown in the monitor).
    pub rule: PromotionRule,
    /// Whether shadows are promoted automatically.
    pub auto: bool,
    /// Bins of the ECE figures.
    pub bins: usize,
}

impl Default for RecalConfig {
    fn default() -> Self {
        RecalConfig {
            logit_store: 10_000,
            window: 5_000,
            refit_every: 200,
            rule: PromotionRule {
                min_labels: 500,
                alpha: 0.01,
                margin: 0.01,
            },
            auto: false,
            bins: crate::trust::metrics::DEFAULT_BINS,
        }
    }
}

impl RecalArgs {
    /// Checks the values; `Err` names the flag and the rule it breaks.
    pub fn validate(&self, bins: usize) -> Result<RecalConfig, (&'static str, &'static str)> {
        if self.logit_store > 10_000_000 {
            return Err(("logit-store", "at most 10000000"));
        }
        if !(1..=10_000_000).contains(&self.recalibration_window) {
            return Err(("recalibration-window", "in 1..=10000000"));
        }
        if self.shadow_refit_every == 0 {
            return Err(("shadow-refit-every", "at least 1"));
        }
        if !(self.auto_recalibrate_alpha > 0.0 && self.auto_recalibrate_alpha < 1.0) {
            return Err(("auto-recalibrate-alpha", "in (0, 1)"));
        }
        if !(0.0..=super::shadow::GAIN_CLIP / 2.0).contains(&self.auto_recalibrate_margin) {
            return Err(("auto-recalibrate-margin", "in [0, 2] nats"));
        }
        Ok(RecalConfig {
            logit_store: self.logit_store,
            window: self.recalibration_window,
            refit_every: self.shadow_refit_every,
            rule: PromotionRule {
                min_labels: self.auto_recalibrate_min_labels,
                alpha: self.auto_recalibrate_alpha,
                margin: self.auto_recalibrate_margin,
            },
            auto: self.auto_recalibrate,
            bins,
        })
    }
}

/// One usable label: the prediction's logits, its label and when the label arrived.
#[derive(Debug, Clone)]
struct Labelled {
    logits: Vec<f32>,
    label: usize,
    received_s: u64,
}

/// One shadow: its current fit and its prequential score.
#[derive(Debug, Clone)]
struct Slot {
    method: Method,
    calibrator: Option<Calibrator>,
    score: Prequential,
    last_error: Option<String>,
}

/// The recalibration state of one model.
#[derive(Debug)]
struct ModelRecal {
    sha256: String,
    window: VecDeque<Labelled>,
    since_fit: usize,
    fitting: bool,
    refits: u64,
    promoting: bool,
    unusable: u64,
    slots: Vec<Slot>,
}

impl ModelRecal {
    fn new(sha256: &str, bins: usize, margin: f64) -> Self {
        ModelRecal {
            sha256: sha256.to_string(),
            window: VecDeque::new(),
            since_fit: 0,
            fitting: false,
            refits: 0,
            promoting: false,
            unusable: 0,
            slots: SHADOW_METHODS
                .iter()
                .map(|&method| Slot {
                    method,
                    calibrator: None,
                    score: Prequential::new(bins, margin),
                    last_error: None,
                })
                .collect(),
        }
    }
}

/// A label as the feedback path hands it over.
#[derive(Debug, Clone, Copy)]
pub struct LabelEvent {
    /// Nonce of the prediction id.
    pub nonce: u64,
    /// The true class.
    pub label: usize,
    /// When the label arrived (Unix seconds).
    pub received_s: u64,
}

/// A snapshot of a model's window to fit shadows on, off every lock.
#[derive(Debug)]
pub struct FitJob {
    /// Model name.
    pub model: String,
    sha256: String,
    logits: Array2<f64>,
    labels: Vec<usize>,
}

/// What a [`FitJob`] produced: one calibrator or error per shadow method.
#[derive(Debug)]
pub struct FitResult {
    model: String,
    sha256: String,
    fits: Vec<(Method, Result<Calibrator, String>)>,
}

impl FitJob {
    /// Fits every shadow method (ATS with fewer pieces when the window is short). Blocking: run
    /// it on the blocking pool.
    pub fn run(self) -> FitResult {
        let opts = FitOptions::default();
        let fits = SHADOW_METHODS
            .iter()
            .map(|&method| {
                let fitted = plan_fit(method, &opts, self.labels.len(), Adapt::ToData)
                    .map_err(|e| e.to_string())
                    .and_then(|plan| {
                        fit(plan.method, &plan.options, self.logits.view(), &self.labels)
                            .map_err(|e| e.to_string())
                    });
                (method, fitted)
            })
            .collect();
        FitResult {
            model: self.model,
            sha256: self.sha256,
            fits,
        }
    }
}

/// What one batch of labels led to.
#[derive(Debug, Default)]
pub struct Observed {
    /// Labels whose logits were no longer in the store.
    pub unusable: u64,
    /// Shadows to refit now (the caller runs it on the blocking pool, then `install`s it).
    pub fit: Option<FitJob>,
    /// A shadow method the promotion rule chose (only with `--auto-recalibrate`).
    pub promote: Option<Method>,
}

/// The labelled-logit windows, their data for a recalibration.
#[derive(Debug, Clone)]
pub struct FeedbackData {
    /// Logits `[N, K]`, oldest label first.
    pub logits: Array2<f64>,
    /// Labels.
    pub labels: Vec<usize>,
    /// Arrival time of the oldest and newest label (Unix seconds).
    pub from_s: u64,
    /// See `from_s`.
    pub to_s: u64,
}

/// The shadow part of `GET /v1/models/M/monitor`.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowReport {
    /// Temperature scaling refitted on the feedback window.
    pub ts: ShadowSlotReport,
    /// Adaptive temperature scaling refitted on the feedback window.
    pub ats: ShadowSlotReport,
    /// Usable labels (with logits) in the fitting window.
    pub window_labels: usize,
    /// Refits so far.
    pub refits: u64,
    /// Labels whose logits had been evicted from the store (not usable for refit).
    pub unusable_for_refit: u64,
    /// Logit rows held (predictions not yet labelled) and the store's size per model.
    pub logit_store: LogitStoreReport,
    /// The promotion rule, and whether it acts (`--auto-recalibrate`).
    pub promotion: PromotionReport,
}

/// One shadow in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowSlotReport {
    /// The shadow's current parameters (None before the first fit).
    pub calibrator: Option<Calibrator>,
    /// Its prequential score and the incumbent's on the same labels.
    #[serde(flatten)]
    pub score: ShadowScore,
    /// Why the last refit failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The logit store in the report.
#[derive(Debug, Clone, Serialize)]
pub struct LogitStoreReport {
    /// Predictions kept per model.
    pub capacity: usize,
    /// Rows held now for this model.
    pub held: usize,
    /// `capacity x classes x 4`.
    pub memory_bound_bytes: usize,
}

/// The promotion rule in the report.
#[derive(Debug, Clone, Serialize)]
pub struct PromotionReport {
    /// `--auto-recalibrate`.
    pub auto: bool,
    /// The rule's parameters.
    #[serde(flatten)]
    pub rule: PromotionRule,
}

/// Shadow recalibration of every model.
#[derive(Debug)]
pub struct Recalibration {
    config: RecalConfig,
    store: LogitStore,
    models: Mutex<HashMap<String, ModelRecal>>,
    /// Held while a calibration file is written and swapped in: one promotion at a time.
    promotion: Mutex<()>,
}

/// The store key of a model file.
fn key(model: &str, sha256: &str) -> String {
    // Sized once: this runs for every served prediction (`format!` grew its buffer twice).
    let mut k = String::with_capacity(model.len() + 1 + sha256.len());
    k.push_str(model);
    k.push('\0');
    k.push_str(sha256);
    k
}

impl Recalibration {
    /// Empty windows and store.
    pub fn new(config: RecalConfig) -> Self {
        Recalibration {
            store: LogitStore::new(config.logit_store),
            config,
            models: Mutex::new(HashMap::new()),
            promotion: Mutex::new(()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RecalConfig {
        &self.config
    }

    /// Remembers a served prediction's logits under its prediction id's nonce.
    pub fn remember(&self, model: &str, sha256: &str, nonce: u64, logits: &[f32]) {
        self.store.insert(&key(model, sha256), nonce, logits);
    }

    /// Scores a batch of new labels of one model against its shadows and the `incumbent`, adds
    /// them to the window, and says whether to refit or promote.
    pub fn observe(
        &self,
        model: &str,
        sha256: &str,
        incumbent: &Calibrator,
        events: &[LabelEvent],
    ) -> Observed {
        let k = key(model, sha256);
        // Logits are taken out before the window's lock: the two locks are never nested.
        let rows: Vec<(LabelEvent, Option<Vec<f32>>)> = events
            .iter()
            .map(|e| (*e, self.store.take(&k, e.nonce)))
            .collect();
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        let m = models
            .entry(model.to_string())
            .or_insert_with(|| ModelRecal::new(sha256, self.config.bins, self.config.rule.margin));
        if m.sha256 != sha256 {
            // Another model file: its labels and shadows say nothing about this one.
            *m = ModelRecal::new(sha256, self.config.bins, self.config.rule.margin);
        }
        let mut out = Observed::default();
        for (e, logits) in rows {
            let Some(logits) = logits else {
                m.unusable += 1;
                out.unusable += 1;
                continue;
            };
            let z: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
            // Rows were finite when served (non-finite rows are refused), so these cannot fail.
            if let Ok(inc) = incumbent.probabilities(&z) {
                for slot in &mut m.slots {
                    if let Some(Ok(p)) = slot.calibrator.as_ref().map(|c| c.probabilities(&z)) {
                        slot.score.add(&p, &inc, e.label);
                    }
                }
            }
            if m.window.len() >= self.config.window {
                m.window.pop_front();
            }
            m.window.push_back(Labelled {
                logits,
                label: e.label,
                received_s: e.received_s,
            });
            m.since_fit += 1;
        }
        let first_fit = m.refits == 0 && m.window.len() >= MIN_SHADOW_LABELS;
        if !m.fitting
            && m.window.len() >= MIN_SHADOW_LABELS
            && (m.since_fit >= self.config.refit_every || first_fit)
        {
            m.fitting = true;
            m.since_fit = 0;
            let (logits, labels) = matrix(m.window.iter());
            out.fit = Some(FitJob {
                model: model.to_string(),
                sha256: sha256.to_string(),
                logits,
                labels,
            });
        }
        if self.config.auto && !m.promoting {
            let best = m
                .slots
                .iter()
                .filter_map(|s| match self.config.rule.decide(&s.score) {
                    Verdict::Promote { gain, .. } => Some((s.method, gain)),
                    _ => None,
                })
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((method, _)) = best {
                m.promoting = true;
                out.promote = Some(method);
            }
        }
        out
    }

    /// Installs refitted shadows (a result for a model file no longer served is dropped).
    pub fn install(&self, result: FitResult) {
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(m) = models
            .get_mut(&result.model)
            .filter(|m| m.sha256 == result.sha256)
        else {
            return;
        };
        m.fitting = false;
        m.refits += 1;
        for (method, fitted) in result.fits {
            if let Some(slot) = m.slots.iter_mut().find(|s| s.method == method) {
                match fitted {
                    Ok(c) => {
                        slot.calibrator = Some(c);
                        slot.last_error = None;
                    }
                    // The previous shadow, if any, keeps being scored.
                    Err(e) => slot.last_error = Some(e),
                }
            }
        }
    }

    /// The last `last` usable labels of the model file `sha256`, oldest first.
    pub fn feedback(&self, model: &str, sha256: &str, last: usize) -> Option<FeedbackData> {
        let models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        let m = models.get(model).filter(|m| m.sha256 == sha256)?;
        let skip = m.window.len().saturating_sub(last);
        let rows: Vec<&Labelled> = m.window.iter().skip(skip).collect();
        let (from_s, to_s) = (rows.first()?.received_s, rows.last()?.received_s);
        let (logits, labels) = matrix(rows.into_iter());
        Some(FeedbackData {
            logits,
            labels,
            from_s,
            to_s,
        })
    }

    /// Usable labels in the model's window.
    pub fn window_len(&self, model: &str) -> usize {
        let models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        models.get(model).map_or(0, |m| m.window.len())
    }

    /// Serialises promotions: hold the guard while writing and swapping a calibration file.
    pub fn promotion_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.promotion
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// After a promotion (or a failed attempt): the incumbent changed, so every shadow's score
    /// starts again; the window and the shadows' fits stay.
    pub fn reset_scores(&self, model: &str) {
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = models.get_mut(model) {
            m.promoting = false;
            for s in &mut m.slots {
                s.score = Prequential::new(self.config.bins, self.config.rule.margin);
            }
        }
    }

    /// The scores of every shadow, for `/monitor` and the gauges.
    pub fn scores(&self, model: &str) -> Vec<(Method, ShadowScore)> {
        let models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        models.get(model).map_or_else(Vec::new, |m| {
            m.slots
                .iter()
                .map(|s| (s.method, s.score.score()))
                .collect()
        })
    }

    /// The shadow section of the monitor report for a model of `classes` classes served from
    /// the file `sha256`.
    pub fn report(&self, model: &str, sha256: &str, classes: usize) -> ShadowReport {
        let held = self.store.held(&key(model, sha256));
        let models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        let m = models.get(model).filter(|m| m.sha256 == sha256);
        let slot = |method: Method| {
            let s = m.and_then(|m| m.slots.iter().find(|s| s.method == method));
            ShadowSlotReport {
                calibrator: s.and_then(|s| s.calibrator.clone()),
                score: s.map_or_else(
                    || Prequential::new(self.config.bins, self.config.rule.margin).score(),
                    |s| s.score.score(),
                ),
                last_error: s.and_then(|s| s.last_error.clone()),
            }
        };
        ShadowReport {
            ts: slot(Method::Ts),
            ats: slot(Method::Ats),
            window_labels: m.map_or(0, |m| m.window.len()),
            refits: m.map_or(0, |m| m.refits),
            unusable_for_refit: m.map_or(0, |m| m.unusable),
            logit_store: LogitStoreReport {
                capacity: self.store.capacity(),
                held,
                memory_bound_bytes: self.store.memory_bound_bytes(classes),
            },
            promotion: PromotionReport {
                auto: self.config.auto,
                rule: self.config.rule,
            },
        }
    }
}

fn matrix<'a>(rows: impl Iterator<Item = &'a Labelled>) -> (Array2<f64>, Vec<usize>) {
    let rows: Vec<&Labelled> = rows.collect();
    let k = rows.first().map_or(0, |r| r.logits.len());
    let mut flat = Vec::with_capacity(rows.len() * k);
    let mut labels = Vec::with_capacity(rows.len());
    for r in &rows {
        flat.extend(r.logits.iter().map(|&v| f64::from(v)));
        labels.push(r.label);
    }
    // Every row of one model file has its class count.
    let logits =
        Array2::from_shape_vec((rows.len(), k), flat).unwrap_or_else(|_| Array2::zeros((0, k)));
    (logits, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three-class logits whose softmax at T = 1 is overconfident: the true class is the top
    /// one 80% of the time, but with a margin of 6.
    fn row(i: u64) -> (Vec<f32>, usize) {
        let top = (i % 3) as usize;
        let label = if i.is_multiple_of(5) {
            (top + 1) % 3
        } else {
            top
        };
        let mut z = vec![0.0f32; 3];
        z[top] = 6.0;
        (z, label)
    }

    fn config(auto: bool) -> RecalConfig {
        RecalConfig {
            logit_store: 1000,
            window: 400,
            refit_every: 100,
            rule: PromotionRule {
                min_labels: 200,
                alpha: 0.01,
                margin: 0.01,
            },
            auto,
            bins: 15,
        }
    }

    fn feed(r: &Recalibration, from: u64, to: u64) -> Observed {
        let mut out = Observed::default();
        for i in from..to {
            let (z, label) = row(i);
            r.remember("m", "sha", i, &z);
            let o = r.observe(
                "m",
                "sha",
                &Calibrator::Identity,
                &[LabelEvent {
                    nonce: i,
                    label,
                    received_s: i,
                }],
            );
            out.unusable += o.unusable;
            if let Some(job) = o.fit {
                r.install(job.run());
            }
            out.promote = out.promote.or(o.promote);
        }
        out
    }

    #[test]
    fn shadows_are_fitted_scored_before_each_label_and_promoted_by_the_rule() {
        let r = Recalibration::new(config(true));
        // Nothing to score before the first fit (100 labels).
        let o = feed(&r, 0, 100);
        assert!(o.promote.is_none());
        let rep = r.report("m", "sha", 3);
        assert_eq!((rep.refits, rep.window_labels), (1, 100));
        assert_eq!(
            rep.ts.score.n, 0,
            "labels before the first fit are not scored"
        );
        let Some(Calibrator::Ts { temperature }) = rep.ts.calibrator else {
            panic!("{:?}", rep.ts)
        };
        assert!(
            temperature > 2.0,
            "overconfident logits need T > 1: {temperature}"
        );
        // The shadow (T > 1) beats the identity on every later label: promoted once 200 are
        // scored.
        let o = feed(&r, 100, 300);
        assert!(o.promote.is_some());
        let s = r.report("m", "sha", 3).ts.score;
        assert_eq!(s.n, 200);
        assert!(s.nll.unwrap() < s.incumbent_nll.unwrap());
        assert!(s.ece.unwrap() < s.incumbent_ece.unwrap());
        // While a promotion is under way no second one is asked for; after it scores restart.
        assert!(feed(&r, 300, 310).promote.is_none());
        r.reset_scores("m");
        assert_eq!(r.report("m", "sha", 3).ts.score.n, 0);
        // The window keeps the last 400 usable labels.
        assert_eq!(r.window_len("m"), 310);
        let data = r.feedback("m", "sha", 50).unwrap();
        assert_eq!(
            (data.logits.nrows(), data.from_s, data.to_s),
            (50, 260, 309)
        );
    }

    #[test]
    fn evicted_logits_are_counted_and_another_model_file_starts_afresh() {
        let r = Recalibration::new(config(false));
        r.remember("m", "sha", 1, &[1.0, 0.0, 0.0]);
        let ev = |nonce| LabelEvent {
            nonce,
            label: 0,
            received_s: 0,
        };
        let o = r.observe("m", "sha", &Calibrator::Identity, &[ev(1), ev(2)]);
        assert_eq!((o.unusable, r.window_len("m")), (1, 1));
        assert_eq!(r.report("m", "sha", 3).unusable_for_refit, 1);
        // The logits were stored for the old file: a label after a model swap cannot use them.
        r.remember("m", "sha", 3, &[1.0, 0.0, 0.0]);
        let o = r.observe("m", "other", &Calibrator::Identity, &[ev(3)]);
        assert_eq!((o.unusable, r.window_len("m")), (1, 0));
        assert!(r.feedback("m", "sha", 10).is_none());
        // Without --auto-recalibrate nothing is ever promoted.
        assert!(
            feed(&Recalibration::new(config(false)), 0, 400)
                .promote
                .is_none()
        );
    }
}
