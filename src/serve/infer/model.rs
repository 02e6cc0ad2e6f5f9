//! A loaded, servable model: its checked files, its calibrator, and the session threads that
//! drain its queue. Dropping the last handle closes the queue and the threads exit.
//!
//! Each ONNX Runtime session is owned by one OS thread (its `run` needs `&mut self`). The threads
//! share one bounded queue; whichever is free forms the next batch ([`BatchQueue::next_batch`]),
//! so work spreads over the sessions without a separate dispatcher.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::InferError;
use super::batcher::{Announced, BatchPolicy, BatchQueue, DeviceDefaults, PushError, padded_sizes};
use super::prediction::PredictionContext;
use super::worker::{self, EncodedImage, Job, JobInput, JobTrace, RowOutput, Sessions};
use crate::repository::{InputSpec, ModelFiles};
use crate::runtime::{ClassifierSession, Device};
use crate::serve::prometheus::ServerMetrics;
use crate::trust::calibration::Calibrator;

/// Queue room per admitted request, in images, whatever the batch size: the largest upload a
/// client may send is `--max-concurrent-requests` x max(this, `--max-batch-size`). 32 keeps the
/// limit the server had when 32 was the CPU's batch size.
pub const QUEUE_IMAGES_PER_REQUEST: usize = 32;

/// A model ready to serve.
#[derive(Debug)]
pub struct LoadedModel {
    /// The checked files (metadata, sha256, calibration file).
    pub files: ModelFiles,
    /// The calibrator applied to every prediction (identity without a calibration file).
    pub calibrator: Calibrator,
    /// Where its sessions run.
    pub device: Device,
    /// Most images per run (after the device's defaults and a fixed graph batch).
    pub max_batch_size: usize,
    /// Whether a CPU session's single-image run is longer than an inline run may be
    /// (`worker::INLINE_RUN_MAX`): then even small images are decoded by the session threads
    /// (`infer::predict_images`).
    pub(super) long_runs: bool,
    /// `files.metadata.input`, shared by the decodes that leave the request's task (cloned
    /// once here, not once per request: four allocations).
    pub(super) input: Arc<InputSpec>,
    queue: Arc<BatchQueue<Job>>,
    sessions: Sessions,
    metrics: Arc<ServerMetrics>,
}

impl Drop for LoadedModel {
    /// Closes the queue: the session threads finish what is queued, then exit.
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// How a model is run: the part of the server configuration the request path needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelOptions {
    /// ONNX Runtime sessions (one thread each) per model.
    pub sessions_per_model: usize,
    /// Intra-op threads per session.
    pub intra_op_threads: usize,
    /// Most images per ONNX Runtime run.
    pub max_batch_size: usize,
    /// Longest wait for a batch to fill.
    pub max_queue_delay: std::time::Duration,
    /// The server's admission limit: the queue has room for this many full batches.
    pub max_concurrent_requests: usize,
    /// The server's device (`--device`); a model's `device` in model.toml overrides it.
    pub device: Device,
    /// The batching flags the operator set; the rest follow the device ([`DeviceDefaults`]).
    pub explicit: ExplicitBatching,
}

/// Batching flags given on the command line (or by their variables), `None` where the device's
/// default applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExplicitBatching {
    /// `--max-batch-size`.
    pub max_batch_size: Option<usize>,
    /// `--max-queue-delay-us`.
    pub max_queue_delay: Option<std::time::Duration>,
    /// `--sessions-per-model`.
    pub sessions_per_model: Option<usize>,
}

impl ModelOptions {
    /// The options of a model that runs on `device`: the same as the server's when it is the
    /// server's device, else the flags that were set plus `device`'s defaults.
    pub fn on(&self, device: Device) -> ModelOptions {
        if device == self.device {
            return *self;
        }
        let d = DeviceDefaults::for_device(device);
        let e = &self.explicit;
        ModelOptions {
            device,
            max_batch_size: e.max_batch_size.unwrap_or(d.max_batch_size),
            max_queue_delay: e.max_queue_delay.unwrap_or(d.max_queue_delay),
            sessions_per_model: e.sessions_per_model.unwrap_or(d.sessions_per_model),
            ..*self
        }
    }
}

impl LoadedModel {
    /// Builds [`session_count`] sessions on the model's device (model.toml's `device`, else
    /// the server's), runs a warm-up batch through each (which also checks that the logits have
    /// one column per label and that the features fit the calibration file's Mahalanobis
    /// detector; on a GPU, one batch of every size the batcher will run: [`padded_sizes`]), then
    /// starts one thread per session.
    pub fn start(
        files: ModelFiles,
        config: &ModelOptions,
        metrics: Arc<ServerMetrics>,
    ) -> Result<Self, InferError> {
        let device = files.metadata.device.unwrap_or(config.device);
        let config = &config.on(device);
        let mut first = open_session(&files, config, device)?;
        // A CPU session's single-image run decides inline runs and, by default, the session count.
        let fastest = match device.is_cuda() {
            true => None,
            false => Some(worker::fastest_run(&mut first)?),
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let count = session_count(config, fastest, cores);
        if count != config.sessions_per_model {
            tracing::info!(
                model = %files.name,
                sessions = count,
                run_us = fastest.map_or(0, |d| d.as_micros() as u64),
                cores,
                "one session: the model's runs are short on a small CPU"
            );
        }
        let mut sessions = Vec::with_capacity(count);
        sessions.push(first);
        for _ in 1..count {
            sessions.push(open_session(&files, config, device)?);
        }
        // A graph exported with a fixed batch dimension can only run batches of exactly that size.
        let fixed = sessions.first().and_then(ClassifierSession::fixed_batch);
        if fixed.is_some_and(|b| b != 1) {
            return Err(InferError::Internal(format!(
                "model {}: the graph's batch dimension is fixed to {fixed:?}; export it with a dynamic or unit batch",
                files.name
            )));
        }
        // Without `--max-batch-size`, a CPU model runs at the largest batch (up to the device's
        // default) that does not make each image dearer: measured here, with every session running.
        let max_batch_size = match fastest {
            Some(single) if config.explicit.max_batch_size.is_none() && fixed.is_none() => {
                let (size, per_image) =
                    worker::cheapest_batch(&mut sessions, config.max_batch_size, single)?;
                // ONNX Runtime's arena keeps what the largest probe run needed; fresh sessions
                // hold only what the chosen size needs (EfficientNet-Lite0 after load: 180 MB
                // resident against the probe's 361 MB peak).
                if per_image.iter().any(|&(b, _)| b > size) {
                    for s in &mut sessions {
                        *s = open_session(&files, config, device)?;
                    }
                }
                tracing::info!(
                    model = %files.name,
                    max_batch_size = size,
                    per_image_us = ?per_image
                        .iter()
                        .map(|&(b, t)| (b, t.as_micros() as u64))
                        .collect::<Vec<_>>(),
                    "batch size measured at load (per image at each size)"
                );
                size
            }
            _ => config.max_batch_size,
        };
        // Room for every admitted request to queue a full batch of images (at least
        // QUEUE_IMAGES_PER_REQUEST, so that a small batch size does not shrink the largest
        // upload a client may send); beyond it, 429.
        let capacity = config
            .max_concurrent_requests
            .saturating_mul(config.max_batch_size.max(QUEUE_IMAGES_PER_REQUEST))
            .clamp(64, 1 << 16);
        let queue = Arc::new(BatchQueue::new(capacity));
        let policy = BatchPolicy {
            max_batch_size: if fixed.is_some() { 1 } else { max_batch_size },
            max_queue_delay: config.max_queue_delay,
        };
        let sizes = padded_sizes(device, policy.max_batch_size);
        let started = Instant::now();
        for s in &mut sessions {
            // Size 1 runs on the session opened above, which has run nothing else.
            for &n in sizes.iter().filter(|&&n| n > 1) {
                warm_up_size(s, n, &files.name)?;
            }
        }
        if device.is_cuda() {
            tracing::info!(
                model = %files.name,
                %device,
                sizes = ?sizes,
                seconds = started.elapsed().as_secs_f64(),
                "warmed up every batch size"
            );
        }
        // A queue delay is the operator asking runs to wait for company: no inline runs then.
        let inline_images = match fastest {
            Some(run) if policy.max_queue_delay.is_zero() => worker::inline_images(run),
            _ => 0,
        };
        let sessions = Sessions::new(&files.name, sessions, inline_images, &metrics);
        if let Err(e) = sessions.spawn_threads(&queue, policy, &sizes) {
            // Lets the threads already started exit.
            queue.close();
            return Err(InferError::Internal(format!(
                "cannot spawn a session thread: {e}"
            )));
        }
        let calibrator = files
            .calibration
            .as_ref()
            .map_or(Calibrator::Identity, |c| c.calibrator.clone());
        metrics
            .model_info
            .with_label_values(&[
                files.name.as_str(),
                files.metadata.version.as_str(),
                files.sha256.as_str(),
                calibrator.method(),
                device.to_string().as_str(),
            ])
            .set(1);
        Ok(Self {
            input: Arc::new(files.metadata.input.clone()),
            files,
            calibrator,
            device,
            max_batch_size: policy.max_batch_size,
            long_runs: fastest.is_some_and(|run| run > worker::INLINE_RUN_MAX),
            queue,
            sessions,
            metrics,
        })
    }

    /// Announces images that are about to be queued (their request is decoding them): until
    /// they are, a session filling a batch waits for them within the queue delay.
    pub fn announce(&self) -> Announced<'_> {
        self.queue.announce()
    }

    /// Queues preprocessed images (`C * H * W` values each), ending their announcement if
    /// they had one, and returns their outputs in the same order. Dropping the future abandons
    /// the entries; the batcher then skips them.
    pub async fn outputs(
        &self,
        inputs: Vec<Vec<f32>>,
        announced: Option<Announced<'_>>,
    ) -> Result<Vec<RowOutput>, InferError> {
        if let Some(rows) = self.sessions.try_inline(&self.queue, &inputs) {
            return rows.into_iter().collect();
        }
        self.run_queued(
            inputs.into_iter().map(JobInput::Tensor).collect(),
            announced,
        )
        .await
    }

    /// Queues encoded images (headers checked) for the session threads to decode right before
    /// their run, and returns their outputs in the same order; an image that fails to decode
    /// fails the request with its index.
    pub(super) async fn outputs_of_encoded(
        &self,
        images: Vec<EncodedImage>,
        announced: Announced<'_>,
    ) -> Result<Vec<RowOutput>, InferError> {
        self.run_queued(
            images.into_iter().map(JobInput::Encoded).collect(),
            Some(announced),
        )
        .await
    }

    async fn run_queued(
        &self,
        inputs: Vec<JobInput>,
        announced: Option<Announced<'_>>,
    ) -> Result<Vec<RowOutput>, InferError> {
        let trace = JobTrace::new(&self.files.name, inputs.len());
        let enqueued = Instant::now();
        let (jobs, replies): (Vec<Job>, Vec<_>) = inputs
            .into_iter()
            .map(|input| {
                let (reply, rx) = oneshot::channel();
                let job = Job {
                    input,
                    enqueued,
                    reply,
                    trace: trace.clone(),
                };
                (job, rx)
            })
            .unzip();
        // The jobs hold the only handles on `queue_wait` now: it closes as they leave the queue.
        drop(trace);
        self.queue.push_all(jobs, announced).map_err(|e| match e {
            PushError::Full(_) => InferError::QueueFull,
            PushError::Closed(_) => InferError::Unavailable(self.files.name.clone()),
        })?;
        let mut out = Vec::with_capacity(replies.len());
        for rx in replies {
            out.push(
                rx.await
                    .map_err(|_| InferError::Unavailable(self.files.name.clone()))??,
            );
        }
        Ok(out)
    }

    /// Most images the queue holds: a request with more can never be queued.
    pub fn queue_capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// The context every prediction of this model is built with.
    pub fn prediction_context(&self) -> PredictionContext<'_> {
        PredictionContext {
            model: &self.files.name,
            version: &self.files.metadata.version,
            labels: &self.files.metadata.labels,
            calibrator: &self.calibrator,
            calibrated: self.is_calibrated(),
            calibration: self.files.calibration.as_ref(),
        }
    }

    /// Counts `n` predictions returned to clients.
    pub fn count_predictions(&self, n: usize) {
        self.metrics
            .predictions
            .with_label_values(&[self.files.name.as_str()])
            .inc_by(n as u64);
    }

    /// The `caliper_model_info` labels of this model.
    pub fn info_labels(&self) -> [String; 5] {
        [
            self.files.name.clone(),
            self.files.metadata.version.clone(),
            self.files.sha256.clone(),
            self.calibrator.method().to_string(),
            self.device.to_string(),
        ]
    }

    /// Whether a calibration file was loaded.
    pub fn is_calibrated(&self) -> bool {
        self.files.calibration.is_some()
    }
}

/// Opens one session of the model on `device` and runs one image through it, which checks
/// that the logits have one column per label and that the features fit the calibration file's
/// detectors.
fn open_session(
    files: &ModelFiles,
    config: &ModelOptions,
    device: Device,
) -> Result<ClassifierSession, InferError> {
    let spec = &files.metadata.input;
    let mut s = ClassifierSession::open(
        &files.onnx_path,
        &spec.name,
        &files.metadata.output.logits,
        spec.image_shape(),
        config.intra_op_threads,
        device,
    )?
    .channels_last(spec.channels_last())?;
    if let Some(name) = &files.metadata.output.features {
        s = s.with_features(name)?;
    }
    let out = s.run_outputs(&vec![0.0; s.image_len()])?;
    if out.classes != files.metadata.labels.len() {
        return Err(InferError::LabelCount {
            model: files.name.clone(),
            outputs: out.classes,
            labels: files.metadata.labels.len(),
        });
    }
    check_features(files, out.features.as_ref().map(|f| f.1))?;
    Ok(s)
}

/// Gives batches of `n` images a session of their own on `s` (a GPU; see
/// [`ClassifierSession::dedicate_size`]) and runs one. When the device cannot hold another
/// session (a large model on a small GPU), batches of `n` share the first session instead: slower
/// when batch sizes vary, but served, as before sessions per size.
fn warm_up_size(s: &mut ClassifierSession, n: usize, model: &str) -> Result<(), InferError> {
    let zeros = vec![0.0; n * s.image_len()];
    if let Err(e) = s.dedicate_size(n).and_then(|()| s.run_outputs(&zeros)) {
        s.release_size(n);
        tracing::warn!(
            model,
            device = %s.device(),
            batch = n,
            error = %e,
            "no session of its own for this batch size: its batches share the first session"
        );
        s.run_outputs(&zeros)?;
    }
    Ok(())
}

/// Single-image runs shorter than this count as short (LeNet: about 50-75 us; ResNet-20 about
/// 480 us on the 2-core VM).
pub const SHORT_RUN: Duration = Duration::from_micros(150);

/// Sessions of a model: `--sessions-per-model` when the operator set it, else the device's
/// default, except that a CPU model whose single-image run (`fastest`) is [`SHORT_RUN`] or
/// less gets one session on a machine of fewer than 4 cores. Its runs then take less time than
/// the rest of a request's work, so one session keeps up with the other core's HTTP side, and
/// a second only adds thread hand-offs and preemptions: LeNet on the 2-core VM used 20% less
/// CPU per request and served 18% more requests with one (issue 19, docs/BENCHMARKS.md session
/// 14), while ResNet-20, whose runs are the bulk of a request, lost 36% of its throughput.
pub fn session_count(config: &ModelOptions, fastest: Option<Duration>, cores: usize) -> usize {
    match fastest {
        Some(run)
            if config.explicit.sessions_per_model.is_none() && run <= SHORT_RUN && cores < 4 =>
        {
            1
        }
        _ => config.sessions_per_model,
    }
}

/// A calibration file with feature-based detectors needs features of their dimension `dim`.
fn check_features(files: &ModelFiles, dim: Option<usize>) -> Result<(), InferError> {
    let detector = files
        .calibration
        .as_ref()
        .and_then(|c| c.ood.as_ref())
        .and_then(|o| o.detectors.dim());
    let reason = match (detector, dim) {
        (None, _) => return Ok(()),
        (Some(_), None) => "the calibration file has feature-based OOD detectors but model.toml \
                            names no features output (output.features)"
            .to_string(),
        (Some(m), Some(d)) if m != d => format!(
            "the calibration file's OOD detectors have {m} features, the model's features \
             output has {d}: refit them (caliper calibrate --train-data)"
        ),
        (Some(_), Some(_)) => return Ok(()),
    };
    Err(InferError::FeatureMismatch {
        model: files.name.clone(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(explicit: Option<usize>) -> ModelOptions {
        let d = DeviceDefaults::for_device(Device::Cpu);
        ModelOptions {
            sessions_per_model: explicit.unwrap_or(d.sessions_per_model),
            intra_op_threads: 1,
            max_batch_size: d.max_batch_size,
            max_queue_delay: d.max_queue_delay,
            max_concurrent_requests: 64,
            device: Device::Cpu,
            explicit: ExplicitBatching {
                sessions_per_model: explicit,
                ..ExplicitBatching::default()
            },
        }
    }

    #[test]
    fn short_models_get_one_session_on_a_small_cpu_unless_the_operator_says() {
        let (short, long) = (Some(Duration::from_micros(60)), Some(SHORT_RUN * 3));
        let default = options(None);
        assert_eq!(default.sessions_per_model, 2);
        assert_eq!(session_count(&default, short, 2), 1);
        assert_eq!(session_count(&default, short, 3), 1);
        // A model whose runs are the bulk of a request needs both cores.
        assert_eq!(session_count(&default, long, 2), 2);
        // Four cores and up keep the device's default.
        assert_eq!(session_count(&default, short, 4), 2);
        // A GPU model is not measured: the device's default.
        assert_eq!(session_count(&default, None, 2), 2);
        // The flag wins, whatever it says.
        assert_eq!(session_count(&options(Some(2)), short, 2), 2);
        assert_eq!(session_count(&options(Some(3)), short, 2), 3);
    }
}
