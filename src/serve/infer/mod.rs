//! The request path below HTTP: image preprocessing, the per-model queue and dynamic batcher,
//! the session threads, and turning logits into calibrated predictions. Every entry point
//! (HTTP, KServe V2, `caliper predict`) goes through [`predict_images`] or [`predict_tensors`],
//! which score each row once with the request's [`RequestOptions`].

pub mod batcher;
pub mod feedback;
mod model;
pub mod prediction;
pub mod preprocess;
mod registry;

use bytes::Bytes;

pub use batcher::DeviceDefaults;
pub use model::{ExplicitBatching, LoadedModel, ModelOptions, RowOutput};
pub use prediction::{
    DEFAULT_TOP_K, Prediction, PredictionError, PredictionList, RequestOptions, TopK,
    build_prediction,
};
pub use preprocess::{ImageLimits, PreprocessError, preprocess};
pub use registry::{ModelRegistry, RegistryOptions};

use crate::repository::RepositoryError;
use crate::runtime::RuntimeError;
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

/// Whether `images` are small enough to decode without leaving the async task.
fn decode_inline(images: &[Bytes]) -> bool {
    let mut total = 0u64;
    images.iter().all(|b| {
        preprocess::dimensions(b).is_ok_and(|(w, h)| {
            total += u64::from(w) * u64::from(h);
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

/// Decodes and preprocesses encoded images (small ones in place, others off the async
/// executor), then predicts them.
#[tracing::instrument(level = "debug", skip_all, fields(model = %model.files.name, images = images.len()))]
pub async fn predict_images(
    model: &LoadedModel,
    images: Vec<Bytes>,
    limits: ImageLimits,
    options: &RequestOptions,
) -> Result<Vec<Scored>, InferError> {
    let inputs = if decode_inline(&images) {
        preprocess_all(&images, &model.files.metadata.input, limits)?
    } else {
        let spec = model.files.metadata.input.clone();
        tokio::task::spawn_blocking(move || preprocess_all(&images, &spec, limits))
            .await
            .map_err(|e| InferError::Internal(format!("preprocessing task failed: {e}")))??
    };
    predict_tensors(model, inputs, options).await
}

/// Predicts already preprocessed inputs (`C * H * W` values each, checked by the caller).
pub async fn predict_tensors(
    model: &LoadedModel,
    inputs: Vec<Vec<f32>>,
    options: &RequestOptions,
) -> Result<Vec<Scored>, InferError> {
    let rows = model.outputs(inputs).await?;
    let ctx = model.prediction_context();
    let scored = rows
        .into_iter()
        .map(|RowOutput { logits, features }| {
            let prediction = build_prediction(&ctx, &logits, features.as_deref(), options)
                .map_err(|e| match e {
                    PredictionError::Calibration(e) => InferError::Calibration(e),
                    PredictionError::Policy(e) => InferError::Policy(e),
                })?;
            Ok(Scored {
                logits,
                features,
                prediction,
            })
        })
        .collect::<Result<Vec<_>, InferError>>()?;
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
        assert!(decode_inline(&[png(28, 28)]));
        assert!(decode_inline(&[png(128, 128)]));
        // The budget is for the whole request, not per image.
        assert!(!decode_inline(&[png(128, 128), png(1, 1)]));
        assert!(!decode_inline(&[png(129, 128)]));
        // Unreadable headers take the blocking path, which reports the error.
        assert!(!decode_inline(&[Bytes::from_static(b"not an image")]));
        assert!(!decode_inline(&[Bytes::new()]));
    }
}
