//! Running a model's sessions: the session threads that drain its queue in batches, and the
//! inline run that answers a request on its own task when the model is idle.
//!
//! Each session sits in a [`SessionSlot`]: its thread locks it for every batch, and a request
//! that finds the model idle (nothing queued, no session running) may lock a free one and run
//! its images at once, on the calling thread. On a 2-core VM the queue path costs two thread
//! wake-ups per request (the session thread, then the request's task), tens of microseconds
//! each, which at one client were most of the latency (issue 19); under load the sessions are
//! busy, requests queue, and batching works as before. Inline runs are allowed only for models
//! whose single-image run is short ([`INLINE_RUN_MAX`]), since they hold an async worker, only
//! on the CPU (a GPU wants batches), only with greedy batching (a `--max-queue-delay-us` above 0
//! asks runs to wait for more images), and not while traces are exported (the `queue_wait` and
//! `inference` spans describe the queue path).
//!
//! A queued image is a model input or, for images too large to decode inline, the encoded image
//! itself: the session thread decodes it right before the run ([`JobInput`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{Span, info_span};

use bytes::Bytes;

use super::batcher::{BatchPolicy, BatchQueue, Queued, padded_len};
use super::{ImageLimits, InferError, Reservation, preprocess};
use crate::repository::InputSpec;
use crate::runtime::{BatchOutput, ClassifierSession, RuntimeError};
use crate::serve::prometheus::ServerMetrics;
use crate::serve::telemetry;

/// Longest single-image run (measured at load) for which a request may run inline: about what
/// the two thread hops it saves cost, so that an inline run never holds an async worker for
/// longer than a few queue-path requests would.
pub const INLINE_RUN_MAX: Duration = Duration::from_micros(250);

/// The model outputs of one input.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOutput {
    /// Raw logits, class order.
    pub logits: Vec<f32>,
    /// Penultimate features, when model.toml names a features output.
    pub features: Option<Vec<f32>>,
}

/// The fastest of a few single-image runs of `session` (warmed up).
pub(super) fn fastest_run(session: &mut ClassifierSession) -> Result<Duration, RuntimeError> {
    let image = vec![0.0; session.image_len()];
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        session.run_outputs(&image)?;
        fastest = fastest.min(start.elapsed());
    }
    Ok(fastest)
}

/// How much dearer per image than the cheapest measured batch size another size may be and
/// still be chosen by [`cheapest_batch`]: above the spread of the probe's median on a busy
/// machine, so that a model whose cost per image does not depend on the batch (ResNet-20) keeps
/// the largest, whose per-batch hand-offs the server then saves (ResNet-20 served at batch 8:
/// 2-3% less CPU per request than at 4, 5% less than at 1); below what a larger batch adds where
/// it makes each image dearer (EfficientNet-Lite0 on two sessions: 2-9% at 2, 5-9% at 4).
const BATCH_COST_MARGIN: f64 = 0.03;
/// Most time [`cheapest_batch`] spends measuring at load (the largest sizes are dropped when
/// their passes would take longer).
const BATCH_PROBE_BUDGET: Duration = Duration::from_millis(1500);
/// Passes over all the sizes; a size's cost is the median of its passes.
const BATCH_PROBE_PASSES: u32 = 5;
/// Untimed runs of each size before the passes.
const BATCH_PROBE_WARMUP: u32 = 2;
/// Shortest timed measurement of one size in one pass.
const BATCH_PROBE_SLICE: Duration = Duration::from_millis(5);

/// The batch size a model's CPU sessions should run at, at most `max`: on a CPU a larger batch
/// saves the per-run overhead, which is most of a small model's run, but a large model's
/// activations at a larger batch outgrow the caches the sessions share, and each image then
/// costs more (EfficientNet-Lite0 at 224x224 on two sessions: 8-13% more per image at 8 than
/// at 1; `docs/BENCHMARKS.md`, sessions 21 and 22). So every session runs batches of 1, 2, 4,
/// ... up to `max` at once, as they run under load, and a size's cost per image is the wall
/// time of a few runs on all of them over the images each ran: a throughput, not the fastest
/// run, which may have had the caches to itself. The sizes are measured in
/// [`BATCH_PROBE_PASSES`] interleaved passes, each size's measurement about as long as one run
/// of the largest (at least [`BATCH_PROBE_SLICE`]), and a size's cost is the median of its
/// passes: the machine's speed drifts and stalls during the probe, and a size measured in one
/// stretch would carry whatever happened then. `single`, the single-image run, sizes the runs
/// and keeps the probe within [`BATCH_PROBE_BUDGET`] (the largest sizes are dropped first).
/// Returns [`choose_batch`] of the medians, with the medians.
pub(super) fn cheapest_batch(
    sessions: &mut [ClassifierSession],
    max: usize,
    single: Duration,
) -> Result<(usize, Vec<(usize, Duration)>), RuntimeError> {
    let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |s| s.checked_mul(2))
        .take_while(|&s| s < max)
        .chain(std::iter::once(max.max(1)))
        .collect();
    // Two untimed runs of each size first: ONNX Runtime plans a new shape's memory on its first
    // run and allocates it on the second. The first timed pass still reads dearer on this VM
    // (EfficientNet-Lite0: 5-25% at every size), which the median leaves out.
    let plan = loop {
        let plan = probe_plan(&sizes, single);
        let images: u32 = plan
            .iter()
            .map(|&(s, runs)| s as u32 * (runs * BATCH_PROBE_PASSES + BATCH_PROBE_WARMUP))
            .sum();
        if single.saturating_mul(images) <= BATCH_PROBE_BUDGET || sizes.pop().is_none() {
            break plan;
        }
    };
    for &(size, _) in &plan {
        run_on_every_session(sessions, size, BATCH_PROBE_WARMUP)?;
    }
    let mut passes: Vec<Vec<Duration>> = vec![Vec::new(); plan.len()];
    for _ in 0..BATCH_PROBE_PASSES {
        for (&(size, runs), times) in plan.iter().zip(&mut passes) {
            let start = Instant::now();
            run_on_every_session(sessions, size, runs)?;
            times.push(start.elapsed() / (runs * size as u32));
        }
    }
    let per_image: Vec<(usize, Duration)> = plan
        .iter()
        .zip(passes)
        .map(|(&(size, _), mut times)| {
            times.sort_unstable();
            (size, times[times.len() / 2])
        })
        .collect();
    Ok((choose_batch(&per_image), per_image))
}

/// `(size, timed runs per pass)` for each of `sizes`: every size's measurement about as long as
/// one run of the largest, and at least [`BATCH_PROBE_SLICE`], estimated from `single`.
fn probe_plan(sizes: &[usize], single: Duration) -> Vec<(usize, u32)> {
    let largest = sizes.last().copied().unwrap_or(1) as u32;
    let slice = single.saturating_mul(largest).max(BATCH_PROBE_SLICE);
    sizes
        .iter()
        .map(|&size| {
            let run = single
                .saturating_mul(size as u32)
                .max(Duration::from_nanos(1));
            (
                size,
                slice.as_nanos().div_ceil(run.as_nanos()).clamp(1, 1000) as u32,
            )
        })
        .collect()
}

/// `runs` runs of `size` images on every session at once, one thread each.
fn run_on_every_session(
    sessions: &mut [ClassifierSession],
    size: usize,
    runs: u32,
) -> Result<(), RuntimeError> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = sessions
            .iter_mut()
            .map(|s| {
                scope.spawn(move || {
                    let input = vec![0.0; size * s.image_len()];
                    (0..runs).try_for_each(|_| s.run_outputs(&input).map(drop))
                })
            })
            .collect();
        threads
            .into_iter()
            .try_for_each(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
    })
}

/// The batch size to run from `per_image`, `(size, run time / size)` in increasing sizes: among
/// the sizes within [`BATCH_COST_MARGIN`] of the cheapest, the largest where batching costs
/// nothing per image (fewer runs, fewer hand-offs), but the smallest where the largest size is
/// itself dearer than that: then the model's images cost more the more of them run together
/// (their activations outgrow the caches), and of sizes the probe cannot tell apart the
/// smaller holds less memory and answers sooner. 1 when empty.
pub(super) fn choose_batch(per_image: &[(usize, Duration)]) -> usize {
    let cheapest = per_image
        .iter()
        .map(|&(_, t)| t)
        .min()
        .unwrap_or(Duration::ZERO);
    let near = |t: Duration| t.as_secs_f64() <= cheapest.as_secs_f64() * (1.0 + BATCH_COST_MARGIN);
    let candidates = per_image
        .iter()
        .filter(|&&(_, t)| near(t))
        .map(|&(size, _)| size);
    match per_image.last() {
        Some(&(_, largest)) if !near(largest) => candidates.min(),
        _ => candidates.max(),
    }
    .unwrap_or(1)
}

/// How many images a request may run inline on a CPU session whose single-image run takes
/// `fastest`: as many as fit in [`INLINE_RUN_MAX`].
pub(super) fn inline_images(fastest: Duration) -> usize {
    (INLINE_RUN_MAX.as_nanos() / fastest.as_nanos().max(1)) as usize
}

/// One queued image.
pub(super) struct Job {
    pub input: JobInput,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<RowOutput, InferError>>,
    pub trace: JobTrace,
}

/// What a queued image holds: the model input, or the encoded image that its session thread
/// decodes right before the run (see `infer::predict_images`).
pub(super) enum JobInput {
    /// `C * H * W` preprocessed values.
    Tensor(Vec<f32>),
    /// An encoded image whose header was already checked.
    Encoded(EncodedImage),
}

/// An encoded image and what its decode needs.
pub(super) struct EncodedImage {
    pub bytes: Bytes,
    /// Its position in the request, for the error.
    pub index: usize,
    pub spec: Arc<InputSpec>,
    pub limits: ImageLimits,
    /// The request's admission permit, held until the image is decoded (or its job dropped):
    /// a timed-out request's slot stays taken while its work goes on, as on the pool path.
    pub admission: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
    /// The request's decode-memory reservation, shared by its images and released when the
    /// last of them is decoded (or dropped unrun), not when the request ends: a request that
    /// timed out while one of its images was being decoded keeps the bytes until that decode
    /// is over, as on the pool path.
    pub decodes: Arc<Reservation>,
}

/// The spans a queued image carries to its session thread, whose thread-local "current span"
/// is not the request's: the request's span (explicit parent of the `inference` span) and the
/// request's `queue_wait` span, shared by its images and closed when the last of them leaves
/// the queue. Both are `Span::none()` when traces are not exported.
#[derive(Clone)]
pub(super) struct JobTrace {
    request: Span,
    queue: Span,
}

impl JobTrace {
    pub fn new(model: &str, images: usize) -> Self {
        if !telemetry::enabled() {
            return Self {
                request: Span::none(),
                queue: Span::none(),
            };
        }
        Self {
            request: Span::current(),
            queue: info_span!(
                "queue_wait",
                caliper.model = model,
                caliper.images = images as i64
            ),
        }
    }
}

impl Queued for Job {
    fn enqueued_at(&self) -> Instant {
        self.enqueued
    }
    fn is_abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// A session, shared by its thread and inline runs.
pub(super) type SessionSlot = Arc<Mutex<ClassifierSession>>;

// A panic inside ONNX Runtime's run leaves the session as usable as an error return does.
fn lock(slot: &SessionSlot) -> MutexGuard<'_, ClassifierSession> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The model's sessions as seen by the request path.
#[derive(Debug)]
pub(super) struct Sessions {
    slots: Vec<SessionSlot>,
    /// Sessions running a batch now (threads and inline runs).
    busy: Arc<AtomicUsize>,
    /// Most images a request may run inline (0: never).
    inline_images: usize,
    /// The model's name and metric handles, looked up once (not per request).
    name: Arc<str>,
    metrics: Arc<RunMetrics>,
}

/// Counts a running session while alive.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        Busy(n)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The metric handles of one model's runs.
#[derive(Debug)]
struct RunMetrics {
    gone: prometheus::IntCounter,
    queue: prometheus::Histogram,
    inference: prometheus::Histogram,
    batch: prometheus::Histogram,
    nonfinite: prometheus::IntCounter,
}

impl RunMetrics {
    fn new(name: &str, metrics: &ServerMetrics) -> Self {
        RunMetrics {
            gone: metrics.rejected.with_label_values(&["client_gone"]),
            queue: metrics.queue_duration.with_label_values(&[name]),
            inference: metrics.inference_duration.with_label_values(&[name]),
            batch: metrics.batch_size.with_label_values(&[name]),
            nonfinite: metrics.nonfinite_logits.with_label_values(&[name]),
        }
    }
}

impl Sessions {
    /// Wraps the warmed-up sessions of model `name`; requests of at most `inline_images` images
    /// may run inline ([`inline_images`]).
    pub fn new(
        name: &str,
        sessions: Vec<ClassifierSession>,
        inline_images: usize,
        metrics: &ServerMetrics,
    ) -> Self {
        Sessions {
            slots: sessions
                .into_iter()
                .map(|s| Arc::new(Mutex::new(s)))
                .collect(),
            busy: Arc::new(AtomicUsize::new(0)),
            inline_images,
            name: name.into(),
            metrics: Arc::new(RunMetrics::new(name, metrics)),
        }
    }

    /// Starts one thread per session on `queue`.
    pub fn spawn_threads(
        &self,
        queue: &Arc<BatchQueue<Job>>,
        policy: BatchPolicy,
        padded: &[usize],
    ) -> std::io::Result<()> {
        for (i, slot) in self.slots.iter().enumerate() {
            let (q, m, name) = (
                Arc::clone(queue),
                Arc::clone(&self.metrics),
                Arc::clone(&self.name),
            );
            let (slot, busy, padded) = (Arc::clone(slot), Arc::clone(&self.busy), padded.to_vec());
            std::thread::Builder::new()
                .name(format!("caliper-{name}-{i}"))
                .spawn(move || session_thread(&name, &slot, &busy, &q, &policy, &padded, &m))?;
        }
        Ok(())
    }

    /// Runs `inputs` at once on this thread when the model is idle (nothing queued, no session
    /// running) and a session is free; `None` leaves them to the queue.
    pub fn try_inline(
        &self,
        queue: &BatchQueue<Job>,
        inputs: &[Vec<f32>],
    ) -> Option<Vec<Result<RowOutput, InferError>>> {
        if inputs.len() > self.inline_images
            || telemetry::enabled()
            || self.busy.load(Ordering::Acquire) != 0
            || !queue.is_empty()
        {
            return None;
        }
        let mut session = self.slots.iter().find_map(|s| s.try_lock().ok())?;
        let _busy = Busy::enter(&self.busy);
        let m = &self.metrics;
        let start = Instant::now();
        m.queue.observe(0.0);
        m.batch.observe(inputs.len() as f64);
        let result = match inputs {
            [one] => session.run_outputs(one),
            _ => session.run_outputs(&inputs.concat()),
        };
        drop(session);
        m.inference.observe(start.elapsed().as_secs_f64());
        Some(answers(&self.name, result, inputs.len(), m))
    }
}

/// Splits a run's outputs into one answer per input: its logits and features, or an error for
/// a row with non-finite logits, or the run's error for every row.
fn answers(
    name: &str,
    result: Result<BatchOutput, RuntimeError>,
    rows: usize,
    m: &RunMetrics,
) -> Vec<Result<RowOutput, InferError>> {
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            tracing::error!(model = name, error = %e, batch = rows, "batch failed");
            return (0..rows)
                .map(|_| Err(InferError::Runtime(e.to_string())))
                .collect();
        }
    };
    let k = out.classes;
    let mut features = out
        .features
        .as_ref()
        .map(|(f, d)| f.chunks_exact(*d).map(<[f32]>::to_vec));
    // Padded rows (GPU) come after the real ones and are never read.
    out.logits
        .chunks_exact(k)
        .take(rows)
        .map(|row| {
            let features = features.as_mut().and_then(Iterator::next);
            if row.iter().all(|v| v.is_finite()) {
                Ok(RowOutput {
                    logits: row.to_vec(),
                    features,
                })
            } else {
                m.nonfinite.inc();
                Err(InferError::NonFiniteLogits(name.to_string()))
            }
        })
        .collect()
}

/// The loop of one session thread: form a batch, run it, answer every entry. Ends when the
/// model is dropped (queue closed).
fn session_thread(
    name: &str,
    slot: &SessionSlot,
    busy: &AtomicUsize,
    queue: &BatchQueue<Job>,
    policy: &BatchPolicy,
    padded: &[usize],
    m: &RunMetrics,
) {
    let per = lock(slot).image_len();
    // One input buffer for the thread's lifetime: batches are copied into it, never allocated.
    let mut input: Vec<f32> = Vec::with_capacity(padded_len(padded, policy.max_batch_size) * per);
    // The other sessions can form their next batch while this one runs.
    while let Some(batch) = queue.next_batch(policy, |_| m.gone.inc()) {
        let _busy = Busy::enter(busy);
        let taken = Instant::now();
        for job in &batch {
            m.queue
                .observe(taken.duration_since(job.enqueued).as_secs_f64());
        }
        input.clear();
        let mut batch = fill_input(&mut input, batch);
        if batch.is_empty() {
            continue;
        }
        let start = Instant::now();
        let spans = if telemetry::enabled() {
            inference_spans(name, &mut batch)
        } else {
            Vec::new()
        };
        m.batch.observe(batch.len() as f64);
        // On a GPU: zero rows up to a warmed-up size; their outputs are never read.
        input.resize(padded_len(padded, batch.len()) * per, 0.0);
        let result = lock(slot).run_outputs(&input);
        m.inference.observe(start.elapsed().as_secs_f64());
        if result.is_err() {
            spans.iter().for_each(|s| {
                s.record("otel.status_code", "ERROR");
            });
        }
        // The inference spans end with the run, before the answers wake their requests.
        drop(spans);
        let n = batch.len();
        for (job, answer) in batch.into_iter().zip(answers(name, result, n, m)) {
            // A receiver that left in the meantime is fine to ignore.
            let _ = job.reply.send(answer);
        }
    }
}

/// Appends each job's model input to `input`, decoding encoded images here, on the session
/// thread, as the raw loop does: the decode then runs between two inferences on this core
/// instead of preempting one from another thread (EfficientNet-Lite0: -1.5 to -4.8% CPU per
/// request, docs/BENCHMARKS.md session 17). A job whose image fails to decode is answered with
/// its error and left out of the run.
fn fill_input(input: &mut Vec<f32>, batch: Vec<Job>) -> Vec<Job> {
    let mut kept = Vec::with_capacity(batch.len());
    for mut job in batch {
        match std::mem::replace(&mut job.input, JobInput::Tensor(Vec::new())) {
            JobInput::Tensor(values) => input.extend_from_slice(&values),
            JobInput::Encoded(e) => {
                let decoded = preprocess(&e.bytes, &e.spec, e.limits);
                // Its decode has ended: as on the pool path, the request's slot and decode memory
                // are released here (once its last image is decoded).
                drop(e.admission);
                drop(e.decodes);
                match decoded {
                    Ok(values) => input.extend_from_slice(&values),
                    Err(source) => {
                        let index = e.index;
                        let _ = job.reply.send(Err(InferError::Image { index, source }));
                        continue;
                    }
                }
            }
        }
        kept.push(job);
    }
    kept
}

/// Ends the `queue_wait` spans of a batch leaving the queue and opens one `inference` span per
/// request in it, a child of that request's span: each trace shows the run its request took
/// part in and how full it was (`caliper.batch_size` images from `caliper.batch_requests`
/// requests, `caliper.images` of them its own).
fn inference_spans(model: &str, batch: &mut [Job]) -> Vec<Span> {
    for job in batch.iter_mut() {
        // The request's last image to leave the queue closes its queue_wait span.
        job.trace.queue = Span::none();
    }
    // A request's images are queued at once (`push_all`), so they are adjacent in a batch.
    let mut requests: Vec<(&Span, usize)> = Vec::new();
    for job in batch.iter() {
        match requests.last_mut() {
            Some((span, n)) if span.id() == job.trace.request.id() => *n += 1,
            _ => requests.push((&job.trace.request, 1)),
        }
    }
    requests
        .iter()
        .map(|&(request, images)| {
            info_span!(
                parent: request,
                "inference",
                caliper.model = model,
                caliper.batch_size = batch.len() as i64,
                caliper.batch_requests = requests.len() as i64,
                caliper.images = images as i64,
                otel.status_code = tracing::field::Empty
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn session() -> ClassifierSession {
        let model =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/mnist-mlp/model.onnx");
        ClassifierSession::new(&model, "input", "logits", [1, 28, 28], 1).unwrap()
    }

    #[test]
    fn the_batch_is_the_largest_as_cheap_as_the_cheapest_unless_batching_makes_images_dearer() {
        let us = Duration::from_micros;
        // A small model: each run is mostly overhead, so the largest batch is far cheaper.
        assert_eq!(
            choose_batch(&[(1, us(40)), (2, us(22)), (4, us(12)), (8, us(7))]),
            8
        );
        // Flat within the margin (ResNet-20): the largest, which saves hand-offs.
        assert_eq!(
            choose_batch(&[(1, us(487)), (2, us(474)), (4, us(472)), (8, us(469))]),
            8
        );
        // Dearer per image the more images run together (EfficientNet-Lite0 on two sessions):
        // the smallest size about as cheap as the cheapest, here one image though 2 read 2%
        // cheaper.
        let effnet = [(1, us(6018)), (2, us(5871)), (4, us(6220)), (8, us(6669))];
        assert_eq!(choose_batch(&effnet), 1);
        assert_eq!(
            choose_batch(&[(1, us(6276)), (2, us(5944)), (4, us(6408)), (8, us(6770))]),
            2
        );
        // Cheapest in the middle and the largest dearer: the smallest size within the margin.
        assert_eq!(
            choose_batch(&[(1, us(100)), (2, us(80)), (4, us(81)), (8, us(95))]),
            2
        );
        // Cheapest in the middle and the largest within the margin: the largest.
        assert_eq!(
            choose_batch(&[(1, us(100)), (2, us(80)), (4, us(79)), (8, us(81))]),
            8
        );
        assert_eq!(choose_batch(&[(1, us(50))]), 1);
        assert_eq!(choose_batch(&[]), 1);
    }

    #[test]
    fn the_batch_probe_measures_every_session_at_each_size() {
        let mut sessions = vec![session(), session()];
        let single = fastest_run(&mut sessions[0]).unwrap();
        let (size, per_image) = cheapest_batch(&mut sessions, 8, single).unwrap();
        let sizes: Vec<usize> = per_image.iter().map(|&(b, _)| b).collect();
        assert_eq!(sizes, [1, 2, 4, 8]);
        assert!(per_image.iter().all(|&(_, t)| t > Duration::ZERO));
        assert_eq!(size, choose_batch(&per_image));
        // A size that is not a power of two is measured as the last.
        let (_, per_image) = cheapest_batch(&mut sessions[..1], 6, single).unwrap();
        assert_eq!(
            per_image.iter().map(|&(b, _)| b).collect::<Vec<_>>(),
            [1, 2, 4, 6]
        );
        // A slow model loses its largest sizes to the budget: at 10 ms an image, 8 would take
        // 1.9 s (5 passes of 32 images and 30 warm-up images).
        let (_, per_image) = cheapest_batch(&mut sessions, 8, Duration::from_millis(10)).unwrap();
        assert_eq!(
            per_image.iter().map(|&(b, _)| b).collect::<Vec<_>>(),
            [1, 2, 4]
        );
        // Past the budget nothing is run, and one image is the answer.
        let (size, per_image) = cheapest_batch(&mut sessions, 8, Duration::from_secs(1)).unwrap();
        assert_eq!((size, per_image.len()), (1, 0));
    }

    #[test]
    fn every_size_is_measured_about_as_long_as_one_run_of_the_largest() {
        let ms = Duration::from_millis;
        assert_eq!(
            probe_plan(&[1, 2, 4, 8], ms(6)),
            [(1, 8), (2, 4), (4, 2), (8, 1)]
        );
        // Short runs: each measurement at least the slice (5 ms).
        assert_eq!(
            probe_plan(&[1, 2, 4, 8], Duration::from_micros(50)),
            [(1, 100), (2, 50), (4, 25), (8, 13)]
        );
        assert_eq!(probe_plan(&[1], Duration::ZERO), [(1, 1000)]);
    }

    #[test]
    fn an_idle_model_runs_small_requests_inline_and_busy_ones_queue() {
        let metrics = ServerMetrics::new().unwrap();
        let queue = BatchQueue::<Job>::new(16);
        let sessions = Sessions::new("m", vec![session()], 2, &metrics);
        let image: Vec<f32> = (0..784).map(|i| (i % 255) as f32 / 255.0).collect();
        let want = session().run(&image).unwrap().0;
        let rows = sessions
            .try_inline(&queue, std::slice::from_ref(&image))
            .expect("an idle model runs inline");
        assert_eq!(rows[0].as_ref().unwrap().logits, want);
        // Two images fit, three do not.
        let two = vec![image.clone(), image.clone()];
        assert_eq!(sessions.try_inline(&queue, &two).unwrap().len(), 2);
        assert!(
            sessions
                .try_inline(&queue, &[image.clone(), image.clone(), image.clone()])
                .is_none()
        );
        // A running session (thread or inline) sends requests to the queue.
        let running = Busy::enter(&sessions.busy);
        assert!(sessions.try_inline(&queue, &two).is_none());
        drop(running);
        // So does a session locked by its thread.
        let held = sessions.slots[0].lock().unwrap();
        assert!(sessions.try_inline(&queue, &two).is_none());
        drop(held);
        // Never inline when the model is not allowed to.
        let never = Sessions::new("m", vec![session()], 0, &metrics);
        assert!(never.try_inline(&queue, &two[..1]).is_none());
    }

    /// A request's decode memory is given back when its last queued image has been decoded or
    /// dropped unrun (a client gone, a timed-out request), whether or not anyone waits for the
    /// answer.
    #[tokio::test]
    async fn the_decode_reservation_ends_with_the_last_decode_not_the_answer() {
        let budget = super::super::MemoryBudget::new(1 << 20);
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let digit = Bytes::from(std::fs::read(data.join("digits/7.png")).unwrap());
        let metadata =
            crate::repository::ModelMetadata::load(&data.join("models/mnist-mlp/model.toml"))
                .unwrap();
        let spec = Arc::new(metadata.input);
        let decodes = Arc::new(budget.reserve(512 << 10).await.unwrap());
        let mut receivers = Vec::new();
        let mut job = |index| {
            let (reply, rx) = oneshot::channel();
            receivers.push(rx);
            Job {
                input: JobInput::Encoded(EncodedImage {
                    bytes: digit.clone(),
                    index,
                    spec: Arc::clone(&spec),
                    limits: ImageLimits {
                        max_pixels: 1 << 20,
                    },
                    admission: None,
                    decodes: Arc::clone(&decodes),
                }),
                enqueued: Instant::now(),
                reply,
                trace: JobTrace::new("m", 1),
            }
        };
        let (first, second, third) = (job(0), job(1), job(2));
        drop(decodes);
        assert_eq!(budget.available_bytes(), 512 << 10);
        let mut input = Vec::new();
        let kept = fill_input(&mut input, vec![first, second]);
        assert_eq!((kept.len(), input.len()), (2, 2 * 784));
        // One image of the request is still queued: the bytes stay taken.
        assert_eq!(budget.available_bytes(), 512 << 10);
        // Dropped unrun, as the batcher drops the job of a request that is gone.
        drop(third);
        assert_eq!(budget.available_bytes(), 1 << 20);
        assert_eq!(receivers.len(), 3, "no answer was sent or awaited");
    }
}
