//! The payload log (`caliper serve --payload-log DIR`): one JSON line per served prediction
//! (v1 and KServe V2), what users join delayed labels and audits to (`caliper monitor replay`).
//!
//! Off the request path: a request only samples its predictions and clones them into a bounded
//! channel (`try_send`); one writer thread turns them into lines and writes the rotating files
//! (`files`). A full channel drops the record and counts it in
//! `caliper_payload_log_dropped_total{reason="queue_full"}` rather than make a request wait on
//! a disk. The line format is documented in docs/API.md ("Payload log").

mod files;
mod time;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::numeric::top_indices;
use crate::serve::infer::Prediction;
use crate::serve::monitor::MAX_EMBEDDED_CLASSES;
use crate::serve::prometheus::ServerMetrics;
use crate::trust::ood::policy::OodVerdict;

pub use files::list as log_files;
pub use time::rfc3339_utc;

/// Models with more classes than the prediction token embeds log their `top_k` this long
/// instead of every probability: the same cut as the live monitor's, so that a replay of the
/// log computes exactly what the monitor did (the full metric report needs every probability).
pub const LOGGED_TOP_K: usize = 5;

/// Records that may wait for the writer before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 8192;

/// Settings of the payload log.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadLogConfig {
    /// Directory of the log files.
    pub dir: PathBuf,
    /// Fraction of predictions logged, in [0, 1].
    pub sample: f64,
    /// A file moves to the next past this many bytes.
    pub max_bytes: u64,
    /// Files kept (the oldest are deleted).
    pub max_files: usize,
    /// Log the request's encoded image (base64) with each prediction made from one.
    pub images: bool,
}

/// What the writer thread receives.
enum Message {
    Record(Box<Entry>),
    /// Flush buffered lines to the OS, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

/// One sampled prediction as the request path hands it over: the serialisation happens on the
/// writer thread.
struct Entry {
    /// Its `probabilities` are logged unless `top_k` is set.
    prediction: Prediction,
    /// The most probable classes, instead of every probability (large models).
    top_k: Option<Vec<LoggedClass>>,
    request_id: Option<String>,
    time: SystemTime,
    image: Option<Bytes>,
}

/// A top-k entry of a logged line (for models with more than [`MAX_EMBEDDED_CLASSES`] classes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedClass {
    /// Class index.
    pub index: usize,
    /// Class label.
    pub label: String,
    /// Calibrated probability.
    pub probability: f64,
}

/// One line of the log as written.
#[derive(Serialize)]
struct Line<'a> {
    prediction_id: &'a str,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    model: &'a str,
    model_version: &'a str,
    label: &'a str,
    class_index: usize,
    confidence: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    probabilities: Option<&'a [f64]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<&'a [LoggedClass]>,
    calibrated: bool,
    calibration_method: &'a str,
    ood: &'a OodVerdict,
    abstained: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
}

/// What `caliper monitor replay` reads back of a line (unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LoggedPrediction {
    /// The signed prediction id the client received.
    pub prediction_id: String,
    /// RFC 3339 UTC time of the prediction.
    pub time: String,
    /// The request's `X-Request-Id` (or V2 `id`).
    #[serde(default)]
    pub request_id: Option<String>,
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// Predicted class.
    pub class_index: usize,
    /// Calibrated confidence of the predicted class, bit for bit what the client received.
    pub confidence: f64,
    /// Every calibrated probability, for models with at most [`MAX_EMBEDDED_CLASSES`] classes.
    #[serde(default)]
    pub probabilities: Option<Vec<f64>>,
    /// The most probable classes, for larger models.
    #[serde(default)]
    pub top_k: Option<Vec<LoggedClass>>,
}

/// The `n` most probable classes, most probable first, ties by index (the order of a
/// response's `top_k`).
fn top_classes(probabilities: &[f64], labels: &[String], n: usize) -> Vec<LoggedClass> {
    top_indices(probabilities, n)
        .into_iter()
        .map(|i| LoggedClass {
            index: i,
            label: labels.get(i).cloned().unwrap_or_else(|| i.to_string()),
            probability: probabilities[i],
        })
        .collect()
}

impl Entry {
    fn line(&self) -> serde_json::Result<Vec<u8>> {
        let p = &self.prediction;
        let line = Line {
            prediction_id: &p.prediction_id,
            time: rfc3339_utc(self.time),
            request_id: self.request_id.as_deref(),
            model: &p.model,
            model_version: &p.model_version,
            label: &p.label,
            class_index: p.class_index,
            confidence: p.confidence,
            probabilities: self.top_k.is_none().then_some(p.probabilities.as_slice()),
            top_k: self.top_k.as_deref(),
            calibrated: p.calibrated,
            calibration_method: p.calibration_method,
            ood: &p.ood,
            abstained: p.abstained,
            image: self
                .image
                .as_ref()
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        };
        let mut out = serde_json::to_vec(&line)?;
        out.push(b'\n');
        Ok(out)
    }
}

/// The request path's handle on the log.
pub struct PayloadLog {
    tx: SyncSender<Message>,
    sample: f64,
    images: bool,
    metrics: std::sync::Arc<ServerMetrics>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for PayloadLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadLog")
            .field("sample", &self.sample)
            .field("images", &self.images)
            .finish_non_exhaustive()
    }
}

impl PayloadLog {
    /// Opens a new file in `config.dir` and starts the writer thread.
    pub fn start(
        config: &PayloadLogConfig,
        metrics: std::sync::Arc<ServerMetrics>,
    ) -> std::io::Result<Self> {
        Self::with_capacity(config, metrics, QUEUE_CAPACITY)
    }

    /// [`PayloadLog::start`] with a channel of `capacity` records.
    pub fn with_capacity(
        config: &PayloadLogConfig,
        metrics: std::sync::Arc<ServerMetrics>,
        capacity: usize,
    ) -> std::io::Result<Self> {
        let file = files::RotatingFile::open(&config.dir, config.max_bytes, config.max_files)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        let m = std::sync::Arc::clone(&metrics);
        let writer = std::thread::Builder::new()
            .name("caliper-payload-log".into())
            .spawn(move || write_loop(file, &rx, &m))?;
        let mut log = Self::handle(config, metrics, tx);
        log.writer = Mutex::new(Some(writer));
        Ok(log)
    }

    /// A handle on a channel whose receiver someone else drains.
    fn handle(
        config: &PayloadLogConfig,
        metrics: std::sync::Arc<ServerMetrics>,
        tx: SyncSender<Message>,
    ) -> Self {
        Self {
            tx,
            sample: config.sample,
            images: config.images,
            metrics,
            writer: Mutex::new(None),
        }
    }

    /// Whether the requests' images are logged (the handlers then keep a reference to them).
    pub fn logs_images(&self) -> bool {
        self.images
    }

    /// Samples `predictions` (already stamped with their ids) of a model with class names
    /// `labels` and queues the chosen ones, never waiting. `images[i]` is the encoded image of
    /// prediction `i`, when logged.
    pub fn offer<'a>(
        &self,
        predictions: impl IntoIterator<Item = &'a Prediction>,
        labels: &[String],
        request_id: Option<&str>,
        images: Option<&[Bytes]>,
    ) {
        let time = SystemTime::now();
        for (i, p) in predictions.into_iter().enumerate() {
            if self.sample < 1.0 && rand::random::<f64>() >= self.sample {
                continue;
            }
            let entry = Entry {
                top_k: (p.probabilities.len() > MAX_EMBEDDED_CLASSES)
                    .then(|| top_classes(&p.probabilities, labels, LOGGED_TOP_K)),
                prediction: p.clone(),
                request_id: request_id.map(str::to_string),
                time,
                image: images
                    .filter(|_| self.images)
                    .and_then(|im| im.get(i).cloned()),
            };
            match self.tx.try_send(Message::Record(Box::new(entry))) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => self.dropped("queue_full"),
                Err(TrySendError::Disconnected(_)) => self.dropped("writer_gone"),
            }
        }
    }

    fn dropped(&self, reason: &str) {
        self.metrics
            .payload_log_dropped
            .with_label_values(&[reason])
            .inc();
    }

    /// Waits (at most `timeout`) until every record queued so far is handed to the OS. At
    /// shutdown, and in tests.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = std::sync::mpsc::channel();
        let deadline = std::time::Instant::now() + timeout;
        // The queue may be full: retry until the deadline rather than block on it.
        let mut msg = Message::Flush(ack);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        done.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .is_ok()
    }
}

impl Drop for PayloadLog {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it wrote what was queued.
        let (tx, _) = std::sync::mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(w) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = w.join();
        }
    }
}

fn write_loop(mut file: files::RotatingFile, rx: &Receiver<Message>, metrics: &ServerMetrics) {
    let mut failing = false;
    let mut handle = |msg: Message, file: &mut files::RotatingFile| match msg {
        Message::Record(entry) => {
            let result = entry
                .line()
                .map_err(std::io::Error::other)
                .and_then(|line| {
                    if failing {
                        // The last write failed mid-line: end that file, start a clean one.
                        file.rotate()?;
                    }
                    file.write_line(&line)
                });
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!("payload log writes again");
                    }
                    failing = false;
                    metrics.payload_log_written.inc();
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "payload log write failed; dropping records until it works");
                    }
                    failing = true;
                    metrics
                        .payload_log_dropped
                        .with_label_values(&["write_error"])
                        .inc();
                }
            }
        }
        Message::Flush(ack) => {
            let _ = file.flush();
            let _ = ack.send(());
        }
    };
    while let Ok(msg) = rx.recv() {
        handle(msg, &mut file);
        // Write what else is queued, then flush once the queue is empty: lines reach the OS
        // within a burst's time, without a syscall per line under load.
        while let Ok(msg) = rx.try_recv() {
            handle(msg, &mut file);
        }
        let _ = file.flush();
    }
    let _ = file.flush();
}

/// What reading a log found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReadReport {
    /// Files read.
    pub files: usize,
    /// Lines that did not parse (a torn last line after a crash), skipped.
    pub skipped_lines: usize,
}

/// Every logged prediction in `dir`, oldest file first, in write order.
pub fn read(dir: &Path) -> std::io::Result<(Vec<LoggedPrediction>, ReadReport)> {
    let mut out = Vec::new();
    let mut report = ReadReport::default();
    for (_, path) in log_files(dir)? {
        report.files += 1;
        let text = std::fs::read(&path)?;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<LoggedPrediction>(line) {
                Ok(p) => out.push(p),
                Err(_) => report.skipped_lines += 1,
            }
        }
    }
    Ok((out, report))
}

#[cfg(test)]
mod tests;
