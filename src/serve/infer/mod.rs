//! The request path below HTTP: image preprocessing, the per-model queue and dynamic batcher,
//! the session threads, and turning logits into calibrated predictions. Every entry point
//! (HTTP, KServe V2, `caliper predict`) goes through [`predict_images`] or [`predict_tensors`],
//! which score each row once with the request's [`RequestOptions`].

pub mod batcher;
pub mod budget;
pub mod feedback;
pub mod live;
mod model;
pub mod prediction;
pub mod preprocess;
pub mod recalibrate;
mod registry;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use crate::repository::preprocess::DecodePlan;
use batcher::Announced;
pub use batcher::DeviceDefaults;
pub use budget::{BudgetError, MemoryBudget, Reservation};
pub use model::{ExplicitBatching, LoadedModel, ModelOptions};
pub use prediction::{
    Calibrated, DEFAULT_TOP_K, Prediction, PredictionError, PredictionList, RequestOptions,
    ServedSetInfo, TopK, build_prediction, calibrate, score,
};
pub use preprocess::{ImageLimits, PreprocessError, preprocess};
pub use registry::{ModelRegistry, RegistryOptions};
use worker::EncodedImage;
pub use worker::RowOutput;

use tracing::info_span;

use crate::repository::RepositoryError;
use crate::runtime::RuntimeError;
use crate::serve::telemetry;
use crate::trust::calibration::CalibrationError;

/// Errors of the request path and of model loading.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Image `index` of the request could not be turned into an input.
    #[error("image {index}: {source}")]
    Image {
        index: usize,
        source: PreprocessError,
    },
    /// Image `index` alone needs more memory than the whole decode budget.
    #[error("image {index}: {source}")]
    OverBudget { index: usize, source: BudgetError },
    /// The decode memory budget stayed taken by other requests (retry later).
    #[error("the decode memory budget is busy")]
    BudgetBusy,
    /// The model's queue is full.
    #[error("the model queue is full")]
    QueueFull,
    /// The model's session threads are gone (it is being replaced or shutting down).
    #[error("model {0} is not available")]
    Unavailable(String),
    /// A batch failed inside ONNX Runtime.
    #[error("inference failed: {0}")]
    Runtime(String),
    /// The model produced NaN or infinite logits.
    #[error("model {0} produced non-finite logits")]
    NonFiniteLogits(String),
    /// Calibration of a row failed.
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
    /// The request's trust options cannot be served (a client error).
    #[error(transparent)]
    Policy(#[from] crate::trust::ood::policy::PolicyError),
    /// The model's files are missing or inconsistent.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// A session could not be built or warmed up.
    #[error(transparent)]
    Session(#[from] RuntimeError),
    /// The calibration file's Mahalanobis detector does not fit the model's features output.
    #[error("model {model}: {reason}")]
    FeatureMismatch {
        /// The model.
        model: String,
        /// What does not fit.
        reason: String,
    },
    /// The model has a different number of outputs than labels.
    #[error("model {model}: logits have {outputs} columns but model.toml has {labels} labels")]
    LabelCount {
        model: String,
        outputs: usize,
        labels: usize,
    },
    /// Anything else that should not happen (a worker panicked, a thread could not spawn).
    #[error("internal error: {0}")]
    Internal(String),
}

/// One answered input: the raw logits (for KServe's `logits` output) and the prediction.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Raw logits, class order.
    pub logits: Vec<f32>,
    /// Penultimate features, when the model exports them (`output.features` in model.toml).
    pub features: Option<Vec<f32>>,
    /// The calibrated prediction.
    pub prediction: Prediction,
}

/// Requests whose images hold at most this many pixels in all are decoded on the calling task.
/// A 28x28 PNG decodes in about 10 us, less than the two thread hops to the blocking pool and
/// back cost on a small VM (measured: they were the largest item of the server's profile);
/// 128x128 in all keeps an inline decode well under a millisecond. Larger images, and anything
/// whose header cannot be read, go to the blocking pool so that the executor never stalls.
pub const INLINE_DECODE_MAX_PIXELS: u64 = 128 * 128;

/// Every image's header, read once per request: its decode plan, or why it cannot be decoded
/// (reported in upload order by [`plan_decodes`] when the images leave this task).
fn read_headers(
    images: &[Bytes],
    spec: &crate::repository::InputSpec,
    limits: ImageLimits,
) -> Vec<Result<DecodePlan, PreprocessError>> {
    images
        .iter()
        .map(|b| preprocess::plan(b, spec, limits))
        .collect()
}

/// Whether the images are small enough to decode without leaving the async task. Unreadable
/// headers take the budgeted path, which reports the error.
fn decode_inline(headers: &[Result<DecodePlan, PreprocessError>]) -> bool {
    let mut total = 0u64;
    headers.iter().all(|h| {
        h.as_ref().is_ok_and(|p| {
            total += u64::from(p.width) * u64::from(p.height);
            total <= INLINE_DECODE_MAX_PIXELS
        })
    })
}

fn preprocess_all(
    images: &[Bytes],
    spec: &crate::repository::InputSpec,
    limits: ImageLimits,
) -> Result<Vec<Vec<f32>>, InferError> {
    images
        .iter()
        .enumerate()
        .map(|(index, b)| {
            preprocess(b, spec, limits).map_err(|source| InferError::Image { index, source })
        })
        .collect()
}

/// What a request's image work runs under (issue 23): the decode limits, the server's memory
/// budget, and the admission permit of the request, which the work keeps until it really stops
/// (a timed-out request is answered 504 at once, but its slot stays taken until the decode on
/// the blocking pool has seen the cancellation).
#[derive(Debug, Clone)]
pub struct ImageWork {
    /// Pixel limit per image.
    pub limits: ImageLimits,
    /// Memory budget of decodes in flight, shared by every request.
    pub budget: MemoryBudget,
    /// The request's admission permit (None outside the HTTP path).
    pub admission: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
    /// Decodes running at once on the blocking pool, shared by every request.
    pub decoders: DecodeSlots,
}

/// How many blocking-pool decodes run at once: one per core. Decoding is CPU-bound, so more at
/// once only adds threads that preempt each other and the session threads, and each thread's
/// working set (a 224x224 image is ~0.8 MB between the RGB pixels and the float tensor) evicts
/// the others' and the model's from the caches; 64 clients of a 224x224 model had 64 decodes in
/// flight on 2 cores (issue 19). Waiting requests hold no memory reservation.
#[derive(Debug, Clone)]
pub struct DecodeSlots(Arc<tokio::sync::Semaphore>);

impl DecodeSlots {
    /// One slot per core the process may use.
    pub fn per_core() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        DecodeSlots(Arc::new(tokio::sync::Semaphore::new(cores)))
    }
}

impl ImageWork {
    /// Limits alone, with a budget of its own (`caliper predict`: one caller, no admission).
    pub fn standalone(limits: ImageLimits, budget_bytes: u64) -> Self {
        ImageWork {
            limits,
            budget: MemoryBudget::new(budget_bytes),
            admission: None,
            decoders: DecodeSlots::per_core(),
        }
    }
}

/// Set when the future that owns it is dropped (a request timeout drops the request's future);
/// the blocking work polls it between images and between resize tiles.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Images decoded per trip to the blocking pool at most, and the bytes of budget one trip
/// reserves at most (unless a single image needs more): small images share a trip, large
/// ones take the budget one at a time.
const GROUP_IMAGES: usize = 64;
const GROUP_BYTES: u64 = 32 << 20;

/// Every image's estimated decode bytes, from its header: a request that cannot be served is
/// refused before any decoding (an unreadable header, or an image larger than the whole budget).
fn plan_decodes(
    headers: Vec<Result<DecodePlan, PreprocessError>>,
    work: &ImageWork,
) -> Result<Vec<u64>, InferError> {
    headers
        .into_iter()
        .enumerate()
        .map(|(index, h)| {
            let plan = h.map_err(|source| InferError::Image { index, source })?;
            work.budget
                .check(plan.estimated_bytes)
                .map_err(|source| InferError::OverBudget { index, source })?;
            Ok(plan.estimated_bytes)
        })
        .collect()
}

/// A failed reservation as the request's error: busy (retry later), or over the whole budget
/// from image `index` on.
fn budget_error(e: BudgetError, index: usize) -> InferError {
    match e {
        BudgetError::Busy => InferError::BudgetBusy,
        source => InferError::OverBudget { index, source },
    }
}

/// Largest decode (estimated peak bytes, decode and resize) a session thread takes on: about a
/// 1,000 x 1,000 RGB photo. Larger images decode on the blocking pool, so that no run of other
/// requests' images waits long behind one decode.
const SESSION_DECODE_MAX_BYTES: u64 = 8 << 20;

/// The decode bytes a request reserves when its images are decoded by the session threads
/// right before their run rather than on the blocking pool (`worker::fill_input`), or None for
/// the pool: where [`session_threads_decode`], every image at most
/// [`SESSION_DECODE_MAX_BYTES`], and the reservation at most a pool group's. A session thread
/// decodes one batch at a time, so the reservation (held by the request's queued images until
/// the last of them is decoded or dropped unrun) is the request's largest image times the
/// images of it one batch can hold; the requests waiting in the queue hold theirs too, so the
/// budget covers more than is being decoded at any moment.
fn session_decode_bytes(model: &LoadedModel, need: &[u64], work: &ImageWork) -> Option<u64> {
    let largest = need.iter().copied().max()?;
    let at_once = largest.saturating_mul(need.len().min(model.max_batch_size) as u64);
    let usable = session_threads_decode(model)
        && largest <= SESSION_DECODE_MAX_BYTES
        && at_once <= GROUP_BYTES.min(work.budget.total_bytes() / 4);
    usable.then_some(at_once)
}

/// Whether the model's session threads may decode its images: on the CPU (a GPU's host thread
/// should keep the device busy) and without exported traces (the `decode` span describes the
/// calling task's and the pool's decodes).
fn session_threads_decode(model: &LoadedModel) -> bool {
    !model.device.is_cuda() && !telemetry::enabled()
}

/// Decodes `images` on the blocking pool in groups, each after reserving its estimated bytes
/// from the budget; the reservation and the admission permit travel with the blocking work and
/// are released when it ends, not when the request is answered.
async fn preprocess_budgeted(
    images: Vec<Bytes>,
    need: &[u64],
    spec: &Arc<crate::repository::InputSpec>,
    work: &ImageWork,
) -> Result<Vec<Vec<f32>>, InferError> {
    let budget = &work.budget;
    let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    let group_cap = GROUP_BYTES.min(budget.total_bytes() / 4);
    let mut out = Vec::with_capacity(images.len());
    let mut first = 0;
    while first < images.len() {
        let mut end = first;
        let mut bytes = 0u64;
        while end < images.len()
            && (end == first || (bytes + need[end] <= group_cap && end - first < GROUP_IMAGES))
        {
            bytes += need[end];
            end += 1;
        }
        // A slot first: a request waiting for a core should not hold bytes others could use.
        let slot = work
            .decoders
            .0
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| InferError::Internal("the decode slots were closed".to_string()))?;
        let reservation = budget
            .reserve(bytes)
            .await
            .map_err(|e| budget_error(e, first))?;
        let group = images[first..end].to_vec();
        let (spec, limits) = (Arc::clone(spec), work.limits);
        let (flag, admission) = (Arc::clone(&cancel.0), work.admission.clone());
        let done = tokio::task::spawn_blocking(move || {
            let _held = (reservation, admission, slot);
            let cancelled = || flag.load(Ordering::Acquire);
            group
                .iter()
                .enumerate()
                .map(|(k, b)| {
                    let index = first + k;
                    if cancelled() {
                        return Err(InferError::Image {
                            index,
                            source: PreprocessError::Cancelled,
                        });
                    }
                    preprocess::preprocess_cancellable(b, &spec, limits, &cancelled)
                        .map_err(|source| InferError::Image { index, source })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| InferError::Internal(format!("preprocessing task failed: {e}")))??;
        out.extend(done);
        first = end;
    }
    Ok(out)
}

/// Decodes and preprocesses encoded images (small ones in place, others off the async
/// executor under the memory budget; traced as `decode`), then predicts them.
#[tracing::instrument(level = "debug", skip_all, fields(model = %model.files.name, images = images.len()))]
pub async fn predict_images(
    model: &LoadedModel,
    images: Vec<Bytes>,
    work: &ImageWork,
    options: &RequestOptions,
) -> Result<Vec<Scored>, InferError> {
    let spec = &model.files.metadata.input;
    // From here until they are queued, a session filling a batch may wait for these images.
    let announced = model.announce();
    // Small images decode on this task for a model with short runs (LeNet: the decode is a
    // tenth of its run, and on the session threads it lengthened every batch: -8% requests/s)
    // or where the session threads cannot decode. A long run's session thread decodes them
    // right before the run, as the raw loop does, so that no decode here preempts a run on
    // the same core (ResNet-20 at 64 clients: -1% CPU per request; docs/BENCHMARKS.md, session
    // 18).
    let headers = read_headers(&images, spec, work.limits);
    let inline = decode_inline(&headers) && !(model.long_runs && session_threads_decode(model));
    let span = telemetry::span(|| {
        info_span!(
            "decode",
            caliper.model = %model.files.name,
            caliper.images = images.len() as i64,
            caliper.inline = inline
        )
    });
    if inline {
        let inputs = span.in_scope(|| preprocess_all(&images, spec, work.limits))?;
        drop(span);
        return predict_announced(model, inputs, options, Some(announced)).await;
    }
    // The model inputs outlive the decodes (they wait in the queue): reserved until answered.
    let input_bytes = (spec.channels * spec.height * spec.width * 4) as u64;
    let _inputs = work
        .budget
        .reserve(input_bytes.saturating_mul(images.len() as u64))
        .await
        .map_err(|e| budget_error(e, 0))?;
    let need = plan_decodes(headers, work)?;
    if let Some(bytes) = session_decode_bytes(model, &need, work) {
        drop(span);
        let decodes = Arc::new(
            work.budget
                .reserve(bytes)
                .await
                .map_err(|e| budget_error(e, 0))?,
        );
        let encoded = images
            .into_iter()
            .enumerate()
            .map(|(index, bytes)| EncodedImage {
                bytes,
                index,
                spec: Arc::clone(&model.input),
                limits: work.limits,
                admission: work.admission.clone(),
                decodes: Arc::clone(&decodes),
            })
            .collect();
        // The images hold the reservation now: it ends with the last decode, not the request.
        drop(decodes);
        let rows = model.outputs_of_encoded(encoded, announced).await?;
        return score_rows(model, rows, options);
    }
    let inputs = {
        use tracing::Instrument;
        preprocess_budgeted(images, &need, &model.input, work)
            .instrument(span)
            .await?
    };
    predict_announced(model, inputs, options, Some(announced)).await
}

impl From<PredictionError> for InferError {
    fn from(e: PredictionError) -> Self {
        match e {
            PredictionError::Calibration(e) => InferError::Calibration(e),
            PredictionError::Policy(e) => InferError::Policy(e),
        }
    }
}

/// Predicts already preprocessed inputs (`C * H * W` values each, checked by the caller): queue
/// and run them (`queue_wait`, `inference`), then calibrate every row (`calibration`) and score
/// it (`scoring`: top-k, OOD, abstention, conformal set).
pub async fn predict_tensors(
    model: &LoadedModel,
    inputs: Vec<Vec<f32>>,
    options: &RequestOptions,
) -> Result<Vec<Scored>, InferError> {
    predict_announced(model, inputs, options, None).await
}

/// [`predict_tensors`] for inputs whose queueing was announced (see [`LoadedModel::announce`]).
async fn predict_announced(
    model: &LoadedModel,
    inputs: Vec<Vec<f32>>,
    options: &RequestOptions,
    announced: Option<Announced<'_>>,
) -> Result<Vec<Scored>, InferError> {
    let rows = model.outputs(inputs, announced).await?;
    score_rows(model, rows, options)
}

/// Calibrates every row (`calibration`) and scores it (`scoring`: top-k, OOD, abstention,
/// conformal set).
fn score_rows(
    model: &LoadedModel,
    rows: Vec<RowOutput>,
    options: &RequestOptions,
) -> Result<Vec<Scored>, InferError> {
    let ctx = model.prediction_context();
    let span = telemetry::span(|| {
        info_span!(
            "calibration",
            caliper.model = ctx.model,
            caliper.method = ctx.calibrator.method(),
            caliper.images = rows.len() as i64
        )
    });
    let calibrated = span.in_scope(|| {
        rows.iter()
            .map(|r| calibrate(&ctx, &r.logits))
            .collect::<Result<Vec<_>, _>>()
    })?;
    drop(span);
    let span = telemetry::span(|| {
        info_span!(
            "scoring",
            caliper.model = ctx.model,
            caliper.images = rows.len() as i64
        )
    });
    let scored = span.in_scope(|| {
        rows.into_iter()
            .zip(calibrated)
            .map(|(RowOutput { logits, features }, c)| {
                let prediction = score(&ctx, c, features.as_deref(), options)?;
                Ok(Scored {
                    logits,
                    features,
                    prediction,
                })
            })
            .collect::<Result<Vec<_>, InferError>>()
    })?;
    drop(span);
    model.count_predictions(scored.len());
    Ok(scored)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use image::{DynamicImage, ImageFormat};

    use super::*;

    fn png(w: u32, h: u32) -> Bytes {
        let mut out = Cursor::new(Vec::new());
        DynamicImage::new_luma8(w, h)
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        Bytes::from(out.into_inner())
    }

    #[test]
    fn only_small_readable_images_decode_inline() {
        let spec = crate::repository::ModelMetadata::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/mnist/model.toml"),
        )
        .unwrap()
        .input;
        let inline =
            |images: &[Bytes]| decode_inline(&read_headers(images, &spec, ImageLimits::default()));
        assert!(inline(&[png(28, 28)]));
        assert!(inline(&[png(128, 128)]));
        // The budget is for the whole request, not per image.
        assert!(!inline(&[png(128, 128), png(1, 1)]));
        assert!(!inline(&[png(129, 128)]));
        // Unreadable headers take the blocking path, which reports the error.
        assert!(!inline(&[Bytes::from_static(b"not an image")]));
        assert!(!inline(&[Bytes::new()]));
    }

    /// A model whose runs are long decodes even small images on its session threads: the same
    /// answers, bit for bit, but through the budgeted path (which a budget of one byte refuses,
    /// where the inline decode of a short-running model never asks it).
    #[tokio::test]
    async fn a_long_running_model_decodes_small_images_on_its_session_threads() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let config =
            crate::serve::config::Config::with_repository(root.join("models"), root.join("calib"));
        let files = crate::repository::load_model_files(
            &config.models_dir,
            &config.calib_dir,
            "mnist-mlp",
            false,
        )
        .unwrap();
        let metrics = Arc::new(crate::serve::prometheus::ServerMetrics::new().unwrap());
        let mut model = LoadedModel::start(files, &config.model_options(), metrics).unwrap();
        let digit = Bytes::from(std::fs::read(root.join("digits/7.png")).unwrap());
        let limits = ImageLimits {
            max_pixels: 1 << 24,
        };
        let options = RequestOptions::default();
        let predict = async |model: &LoadedModel, budget| {
            let work = ImageWork::standalone(limits, budget);
            predict_images(model, vec![digit.clone(), digit.clone()], &work, &options).await
        };
        assert!(!model.long_runs, "the test model runs in microseconds");
        let short = predict(&model, 1).await.unwrap();
        model.long_runs = true;
        assert!(matches!(
            predict(&model, 1).await,
            Err(InferError::OverBudget { index: 0, .. })
        ));
        let long = predict(&model, 64 << 20).await.unwrap();
        for (a, b) in short.iter().zip(&long) {
            assert_eq!(a.logits, b.logits);
            assert_eq!(a.prediction.probabilities, b.prediction.probabilities);
        }
    }
}
