//! Live calibration monitoring from label feedback (issue 5).
//!
//! Every prediction gets a signed token ([`token`]); a label posted later with that token is
//! verified, de-duplicated, appended to the durable feedback log ([`log`]) and added to the
//! model's sliding window ([`window`]), from which the live ECE family and accuracy are computed.
//! Label-free figures (mean confidence, drift) come from a window of served confidences.
//!
//! De-duplication is per process: a nonce is remembered for as long as its token could still be
//! accepted (`--feedback-max-age`), and it survives restarts because the log keeps those records.
//! Two replicas that both receive the same label each count it once (documented in README).
//!
//! Issue 22 adds, in their own submodules: the window of served probability vectors
//! ([`served`]), label-shift estimates, the anytime-valid alarm and adaptive conformal levels
//! ([`live`]), and the live coverage of served conformal sets ([`coverage`]).

pub mod coverage;
pub mod live;
pub mod log;
pub mod logits;
pub mod recal;
pub mod replay;
pub mod served;
pub mod shadow;
pub mod token;
pub mod window;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

pub use live::{ShiftSource, TrustConfig};
pub use log::{FeedbackLog, FeedbackRecord, LogError, RecoveryReport, SetOutcome};
pub use token::{MAX_EMBEDDED_CLASSES, PredictionToken, ServedSet, TokenError, TokenSigner};
pub use window::{LiveReport, ModelWindow};

use crate::trust::metrics::{BinnedAccumulator, BootstrapOptions, ConfidenceReference};

/// The body of `GET /v1/models/{model}/monitor`, which `caliper monitor replay` prints too.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MonitorReport {
    /// The model.
    pub model: String,
    /// Its version.
    pub model_version: String,
    /// Labelled predictions the window holds at most.
    pub window: usize,
    /// Equal-width bins of the ECE.
    pub bins: usize,
    /// The figures; null before the model saw a prediction or a label.
    pub live: Option<LiveReport>,
    /// The shadow calibrators refitted from feedback (absent from `caliper monitor replay`,
    /// which has no logits to refit on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<recal::ShadowReport>,
}

/// Settings of the monitor.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// Labelled predictions kept per model (the sliding window).
    pub window: usize,
    /// Feedback older than this (seconds since the prediction) is refused.
    pub max_age_s: u64,
    /// Where the feedback log lives; None keeps feedback in memory only (lost on restart).
    pub state_dir: Option<PathBuf>,
    /// Equal-width bins of the live ECE and of the Prometheus per-bin counters.
    pub bins: usize,
    /// Label-shift estimates, the calibration alarm and adaptive conformal inference.
    pub trust: TrustConfig,
}

/// A label as a client sends it: a class name or a class index.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelRef {
    /// Index into the model's labels.
    Index(u64),
    /// One of the model's label names.
    Name(String),
}

/// One feedback item.
#[derive(Debug, Clone)]
pub struct FeedbackItem {
    /// The `prediction_id` returned with the prediction.
    pub prediction_id: String,
    /// The true label.
    pub label: LabelRef,
}

/// An accepted label, with what the caller needs to update counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The stored record.
    pub record: FeedbackRecord,
    /// Its confidence bin (equal-width, as the live ECE uses).
    pub bin: usize,
    /// False when this prediction had already been labelled (counted once, not again).
    pub new: bool,
}

/// Why one feedback item was refused.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    /// Bad, foreign or expired token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token names a model this server does not serve.
    #[error("prediction_id refers to model {0:?}, which is not served here")]
    UnknownModel(String),
    /// The label is not one of the model's classes.
    #[error("label {label} is not a class of model {model:?} (classes: {classes})")]
    UnknownLabel {
        label: String,
        model: String,
        classes: String,
    },
    /// The log could not be written: nothing of the batch was acknowledged.
    #[error("feedback could not be stored: {0}")]
    Log(String),
}

struct State {
    log: Option<FeedbackLog>,
    windows: HashMap<String, ModelWindow>,
    /// nonce -> issued_at_s of every labelled prediction that could still be re-sent.
    seen: HashMap<u64, u64>,
    /// Every record appended since the last prune plus those still needed (in a window or inside
    /// the de-duplication horizon), in log order: what a compaction would keep.
    retained: VecDeque<FeedbackRecord>,
    /// When `retained` and `seen` were last pruned (Unix seconds).
    last_prune_s: u64,
}

/// The live monitor shared by all requests.
pub struct Monitor {
    signer: TokenSigner,
    config: MonitorConfig,
    state: Mutex<State>,
    /// Shift estimates, alarm and adaptive conformal state (its own lock; see `live`).
    live: live::LiveTrust,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The entry of `key` in a per-model map, made by `make` when missing. The key is copied only
/// then, not on every call (`entry` takes an owned key, and these run for every prediction).
fn model_entry<'a, V>(
    map: &'a mut HashMap<String, V>,
    key: &str,
    make: impl FnOnce() -> V,
) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), make());
    }
    map.get_mut(key).expect("the entry exists: inserted above")
}

/// Current Unix time in seconds.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Monitor {
    /// Opens the feedback log and rebuilds every window from it.
    pub fn open(
        config: MonitorConfig,
        signer: TokenSigner,
    ) -> Result<(Self, RecoveryReport), LogError> {
        let (log, records, report) = match &config.state_dir {
            Some(dir) => {
                let (log, records, report) = FeedbackLog::open(dir)?;
                (Some(log), records, report)
            }
            None => (None, Vec::new(), RecoveryReport::default()),
        };
        let mut state = State {
            log,
            windows: HashMap::new(),
            seen: HashMap::new(),
            retained: VecDeque::new(),
            last_prune_s: 0,
        };
        let live = live::LiveTrust::new(config.trust.clone());
        for r in records {
            live.on_label(&r, r.received_at_s);
            state.admit(r, &config);
        }
        Ok((
            Monitor {
                signer,
                config,
                state: Mutex::new(state),
                live,
            },
            report,
        ))
    }

    /// The monitor's settings.
    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// Issues the signed `prediction_id` of a prediction made now.
    pub fn issue_token(
        &self,
        model: &str,
        model_version: &str,
        class_index: usize,
        confidence: f64,
        probabilities: &[f64],
    ) -> String {
        self.signer.issue(
            model,
            model_version,
            class_index,
            confidence,
            probabilities,
            None,
        )
    }

    /// Issues the signed `prediction_id` of a prediction served with a conformal set (the
    /// token carries the set, so that its label can be scored for coverage).
    pub fn issue_token_with_set(
        &self,
        model: &str,
        model_version: &str,
        class_index: usize,
        confidence: f64,
        probabilities: &[f64],
        set: Option<ServedSet>,
    ) -> String {
        self.signer.issue(
            model,
            model_version,
            class_index,
            confidence,
            probabilities,
            set,
        )
    }

    /// Records a served confidence for the label-free figures (mean confidence, drift).
    pub fn observe_prediction(&self, model: &str, confidence: f64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.window_mut(model, &self.config)
            .observe_confidence(confidence);
    }

    /// Verifies, de-duplicates and durably records a batch of labels. `labels_of(model)` gives the
    /// class names of a served model. New records are fsynced to the log before this returns.
    pub fn record(
        &self,
        items: &[FeedbackItem],
        labels_of: &dyn Fn(&str) -> Option<Vec<String>>,
        now: u64,
    ) -> Vec<Result<Accepted, FeedbackError>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Result<Accepted, FeedbackError>> = Vec::with_capacity(items.len());
        let mut fresh = Vec::new();
        for item in items {
            let res = self.check(item, labels_of, now).map(|record| {
                let new = !st.seen.contains_key(&record.nonce)
                    && !fresh
                        .iter()
                        .any(|r: &FeedbackRecord| r.nonce == record.nonce);
                if new {
                    fresh.push(record.clone());
                }
                let bin = crate::trust::metrics::BinnedAccumulator::bin_index(
                    self.config.bins,
                    record.confidence,
                );
                Accepted { record, bin, new }
            });
            out.push(res);
        }
        if let Err(e) = st.log.as_mut().map_or(Ok(()), |log| log.append(&fresh)) {
            // Nothing was acknowledged: every accepted item of this batch becomes the log error.
            tracing::error!(error = %e, "feedback log append failed");
            let msg = e.to_string();
            return out
                .into_iter()
                .map(|r| r.and_then(|_| Err(FeedbackError::Log(msg.clone()))))
                .collect();
        }
        for r in fresh {
            self.live.on_label(&r, now);
            st.admit(r, &self.config);
        }
        st.prune_and_maybe_compact(now, &self.config);
        out
    }

    fn check(
        &self,
        item: &FeedbackItem,
        labels_of: &dyn Fn(&str) -> Option<Vec<String>>,
        now: u64,
    ) -> Result<FeedbackRecord, FeedbackError> {
        let t = self
            .signer
            .verify(&item.prediction_id, now, self.config.max_age_s)?;
        let classes =
            labels_of(&t.model).ok_or_else(|| FeedbackError::UnknownModel(t.model.clone()))?;
        let label = match &item.label {
            LabelRef::Index(i) => usize::try_from(*i).ok().filter(|&i| i < classes.len()),
            LabelRef::Name(n) => classes.iter().position(|c| c == n),
        }
        .ok_or_else(|| FeedbackError::UnknownLabel {
            label: match &item.label {
                LabelRef::Index(i) => i.to_string(),
                LabelRef::Name(n) => format!("{n:?}"),
            },
            model: t.model.clone(),
            // A few names, not all of a 1000-class model's.
            classes: crate::data::files::few(
                &classes.iter().map(String::as_str).collect::<Vec<_>>(),
            ),
        })?;
        Ok(FeedbackRecord {
            model: t.model,
            model_version: t.model_version,
            nonce: t.nonce,
            issued_at_s: t.issued_at_s,
            received_at_s: now,
            predicted: t.class_index,
            label: label as u16,
            confidence: t.confidence,
            set: t.set.as_ref().map(|s| SetOutcome {
                covered: s.classes.contains(&(label as u16)),
                size: u16::try_from(s.classes.len()).unwrap_or(u16::MAX),
                alpha: s.alpha,
                adaptive: s.adaptive,
            }),
            probabilities: t.probabilities,
        })
    }

    /// The live figures of one model, or None when it has seen neither predictions nor labels.
    /// `reference` enables the drift test; `bootstrap` adds intervals (costly).
    pub fn report(
        &self,
        model: &str,
        reference: Option<&ConfidenceReference>,
        bootstrap: Option<&BootstrapOptions>,
    ) -> Option<LiveReport> {
        // A copy taken under the lock, computed on after it is released: a report (a bootstrap
        // takes seconds) never holds up the predictions and labels that need the lock.
        let window = self.window_snapshot(model)?;
        Some(window.report(self.config.bins, reference, bootstrap))
    }

    /// A copy of one model's windows, or None when it has seen neither predictions nor labels.
    pub fn window_snapshot(&self, model: &str) -> Option<ModelWindow> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.windows.get(model).cloned()
    }

    /// The equal-width binned statistics of one model's labelled window (for the gauges).
    pub fn accumulator(&self, model: &str) -> Option<BinnedAccumulator> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.windows
            .get(model)
            .map(|w| w.accumulator(self.config.bins))
    }

    /// Models with a window, sorted.
    pub fn models(&self) -> Vec<String> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = st.windows.keys().cloned().collect();
        v.sort();
        v
    }
}

impl State {
    fn window_mut(&mut self, model: &str, cfg: &MonitorConfig) -> &mut ModelWindow {
        self.windows
            .entry(model.to_string())
            .or_insert_with(|| ModelWindow::new(cfg.window))
    }

    fn admit(&mut self, r: FeedbackRecord, cfg: &MonitorConfig) {
        self.seen.insert(r.nonce, r.issued_at_s);
        self.window_mut(&r.model, cfg).push(r.clone());
        self.retained.push_back(r);
    }

    /// Forgets what can no longer matter (at most once a minute: it is linear in what is kept)
    /// and rewrites the log once it holds more than twice what is needed.
    fn prune_and_maybe_compact(&mut self, now: u64, cfg: &MonitorConfig) {
        let lines = self.log.as_ref().map_or(0, FeedbackLog::lines);
        if now < self.last_prune_s + 60 && lines <= 2 * self.retained.len() + 1024 {
            return;
        }
        self.last_prune_s = now;
        let horizon = now.saturating_sub(cfg.max_age_s);
        self.seen.retain(|_, issued| *issued >= horizon);
        let in_window: std::collections::HashSet<u64> =
            self.windows.values().flat_map(|w| w.nonces()).collect();
        let seen = &self.seen;
        self.retained
            .retain(|r| seen.contains_key(&r.nonce) || in_window.contains(&r.nonce));
        if let Some(log) = self
            .log
            .as_mut()
            .filter(|l| l.lines() > 2 * self.retained.len() + 1024)
        {
            let keep: Vec<FeedbackRecord> = self.retained.iter().cloned().collect();
            if let Err(e) = log.compact(&keep) {
                // Compaction is an optimisation: the uncompacted log is still complete.
                tracing::warn!(error = %e, "feedback log compaction failed; will retry later");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(model: &str) -> Option<Vec<String>> {
        (model == "m").then(|| vec!["cat".into(), "dog".into(), "eel".into()])
    }

    fn open(dir: &std::path::Path) -> Monitor {
        let cfg = MonitorConfig {
            window: 3,
            max_age_s: 100,
            state_dir: Some(dir.into()),
            bins: 15,
            trust: TrustConfig::default(),
        };
        Monitor::open(cfg, TokenSigner::new(b"key")).unwrap().0
    }

    fn item(id: &str, label: LabelRef) -> FeedbackItem {
        FeedbackItem {
            prediction_id: id.into(),
            label,
        }
    }

    #[test]
    fn counts_each_prediction_once_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(dir.path());
        let a = m.issue_token("m", "1", 1, 0.7, &[0.1, 0.7, 0.2]);
        let b = m.issue_token("m", "1", 0, 0.6, &[0.6, 0.3, 0.1]);
        let now = now_s();
        let out = m.record(
            &[
                item(&a, LabelRef::Name("dog".into())),
                item(&a, LabelRef::Index(1)),
                item(&b, LabelRef::Index(2)),
            ],
            &labels,
            now,
        );
        let new: Vec<bool> = out.iter().map(|r| r.as_ref().unwrap().new).collect();
        assert_eq!(new, [true, false, true]);
        let r = m.report("m", None, None).unwrap();
        assert_eq!((r.labelled, r.accuracy), (2, Some(0.5)));
        // ECE by hand: bins (0.6, 0.6667] and (0.6667, 0.7333]: |0 - 0.6| / 2 + |1 - 0.7| / 2.
        assert!((r.ece.unwrap() - 0.45).abs() < 1e-12);
        drop(m);

        let m = open(dir.path());
        let r = m.report("m", None, None).unwrap();
        assert_eq!(r.labelled, 2);
        assert!((r.ece.unwrap() - 0.45).abs() < 1e-12);
        assert!(r.full.is_some(), "probabilities travel in the token");
        // Still a duplicate after the restart.
        let again = m.record(&[item(&a, LabelRef::Index(1))], &labels, now);
        assert!(!again[0].as_ref().unwrap().new);
    }

    #[test]
    fn refuses_foreign_expired_unknown_model_and_unknown_label() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(dir.path());
        let good = m.issue_token("m", "1", 1, 0.7, &[0.1, 0.7, 0.2]);
        let foreign = TokenSigner::new(b"other").sign(&PredictionToken {
            nonce: 1,
            issued_at_s: now_s(),
            model: "m".into(),
            model_version: "1".into(),
            class_index: 0,
            confidence: 0.5,
            probabilities: None,
            set: None,
        });
        let other_model = m.issue_token("zzz", "1", 0, 0.5, &[0.5, 0.5]);
        let now = now_s();
        let out = m.record(
            &[
                item(&foreign, LabelRef::Index(0)),
                item(&good, LabelRef::Index(3)),
                item(&good, LabelRef::Name("fox".into())),
                item(&other_model, LabelRef::Index(0)),
            ],
            &labels,
            now,
        );
        assert!(matches!(
            out[0],
            Err(FeedbackError::Token(TokenError::BadSignature))
        ));
        assert!(matches!(out[1], Err(FeedbackError::UnknownLabel { .. })));
        assert!(
            out[2]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains(r#""cat", "dog", "eel""#)
        );
        assert!(matches!(out[3], Err(FeedbackError::UnknownModel(_))));
        let late = m.record(&[item(&good, LabelRef::Index(1))], &labels, now + 101);
        assert!(matches!(
            late[0],
            Err(FeedbackError::Token(TokenError::Expired { .. }))
        ));
        assert!(m.report("m", None, None).is_none(), "nothing was accepted");
    }

    #[test]
    fn window_slides_and_the_log_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let m = open(dir.path());
        let now = now_s();
        // 30 batches of 50, a minute apart (pruning runs at most once a minute).
        for batch in 0..30u64 {
            let t_now = now + 61 * batch;
            let items: Vec<FeedbackItem> = (0..50u64)
                .map(|j| {
                    let t = m.signer.sign(&PredictionToken {
                        nonce: batch * 50 + j,
                        issued_at_s: t_now,
                        model: "m".into(),
                        model_version: "1".into(),
                        class_index: (j % 3) as u16,
                        confidence: 0.9,
                        probabilities: None,
                        set: None,
                    });
                    item(&t, LabelRef::Index(0))
                })
                .collect();
            assert!(
                m.record(&items, &labels, t_now)
                    .iter()
                    .all(|r| r.as_ref().unwrap().new)
            );
        }
        assert_eq!(m.report("m", None, None).unwrap().labelled, 3);
        let lines = std::fs::read_to_string(dir.path().join(log::LOG_FILE))
            .unwrap()
            .lines()
            .count();
        assert!(lines < 1500, "log was compacted to {lines} lines");
        // After a restart the window holds the same last three records.
        let before: Vec<u64> = {
            let st = m.state.lock().unwrap();
            st.windows["m"].nonces().collect()
        };
        drop(m);
        let m = open(dir.path());
        let after: Vec<u64> = m.state.lock().unwrap().windows["m"].nonces().collect();
        assert_eq!(before, after);
    }
}
