//! caliper's own API: `POST /v1/models/{model}/predict` (one raw image, or several as
//! multipart/form-data) and `GET /v1/models`.

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, AppState};
use crate::serve::infer::live::{self, Adapt};
use crate::serve::infer::{DEFAULT_TOP_K, PredictionList, RequestOptions, predict_images};
use crate::trust::conformal::ScoreKind;
use crate::trust::ood::policy::TrustQuery;

/// Query parameters of the predict endpoint.
#[derive(Debug, Deserialize)]
pub struct PredictQuery {
    /// How many classes `top_k` lists (default 5, capped at the class count).
    top_k: Option<usize>,
    /// Abstain when the calibrated confidence is below this (in [0, 1]).
    min_confidence: Option<f64>,
    /// Abstain when the input is flagged out-of-distribution.
    #[serde(default)]
    reject_ood: bool,
    /// Miscoverage of the conformal prediction set (default from the calibration file).
    alpha: Option<f64>,
    /// Conformal score of the set: `lac`, `aps`, `aps_randomized` or `raps` (default from the
    /// calibration file); parsed here so an unknown name is a 400 naming the choices.
    conformal: Option<String>,
    /// Whether the answer carries the full `probabilities` vector (default true).
    probabilities: Option<bool>,
    /// `label_shift` corrects the probabilities for the estimated label shift of served
    /// traffic; `none` opts out of a model's default (`--adapt-label-shift`).
    adapt: Option<String>,
}

/// Maps a body-reading failure: a body over the limit is 413, anything else 400.
pub(super) fn body_error(status: StatusCode, detail: String, limit: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(limit)
    } else {
        ApiError::BadRequest(format!("cannot read the request body: {detail}"))
    }
}

pub(super) fn bytes_error(e: BytesRejection, limit: usize) -> ApiError {
    body_error(e.status(), e.body_text(), limit)
}

/// A request with more images than the model's queue holds: it could never be queued, so it is
/// refused as too large (413), not as overload (429 would invite a retry that cannot succeed).
pub(super) fn too_many_images(most: usize) -> ApiError {
    ApiError::TooManyImages(format!(
        "a request may hold at most {most} images (the model's queue: \
         --max-concurrent-requests x max(32, --max-batch-size)); split it into smaller requests"
    ))
}

/// `POST /v1/models/{model}/predict`.
pub async fn predict(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<PredictQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let top_k = q.top_k.unwrap_or(DEFAULT_TOP_K);
    let conformal_score = q
        .conformal
        .as_deref()
        .map(str::parse::<ScoreKind>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let adapt = q
        .adapt
        .as_deref()
        .map(str::parse::<Adapt>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let model = state.model(&name)?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let limit = state.config.max_body_bytes;
    let request_id = state
        .payload_log
        .as_ref()
        .and_then(|_| super::request_id(req.headers()));
    let admission = req
        .extensions()
        .get::<super::middleware::Admission>()
        .cloned();
    let multipart = content_type.starts_with("multipart/form-data");
    let images: Vec<Bytes> = if multipart {
        let mut form = Multipart::from_request(req, &state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let mut files = Vec::new();
        let most = model.queue_capacity();
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| body_error(e.status(), e.body_text(), limit))?
        {
            // Text fields without a file name are ignored; files keep their upload order.
            let is_file = field.file_name().is_some()
                || field
                    .content_type()
                    .is_some_and(|t| !t.starts_with("text/"));
            let data = field
                .bytes()
                .await
                .map_err(|e| body_error(e.status(), e.body_text(), limit))?;
            if is_file {
                if files.len() == most {
                    return Err(too_many_images(most));
                }
                files.push(data);
            }
        }
        if files.is_empty() {
            return Err(ApiError::BadRequest("the form holds no file".into()));
        }
        files
    } else if content_type.starts_with("image/") || content_type == "application/octet-stream" {
        vec![
            Bytes::from_request(req, &state)
                .await
                .map_err(|e| bytes_error(e, limit))?,
        ]
    } else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {content_type:?}: send an image/* body or multipart/form-data"
        )));
    };
    let mut options = RequestOptions {
        top_k,
        trust: TrustQuery {
            min_confidence: q.min_confidence,
            reject_ood: q.reject_ood,
            alpha: q.alpha,
            conformal: conformal_score,
        },
        probabilities: q.probabilities.unwrap_or(true),
    };
    let plan = live::plan(&state.monitor, &model, adapt, &mut options);
    let logged_images = state.logs_images().then(|| images.clone());
    let mut scored = state
        .within_budget(predict_images(
            &model,
            images,
            &state.image_work(admission),
            &options,
        ))
        .await?;
    live::stamp_scored(
        &state.monitor,
        &state.metrics,
        &state.recal,
        &model,
        &mut scored,
        plan,
    );
    let mut predictions: Vec<_> = scored.into_iter().map(|s| s.prediction).collect();
    // Logged before `finish`: `?probabilities=false` trims the answer, not the log.
    state.log_payload(
        &model,
        &predictions,
        request_id.as_deref(),
        logged_images.as_deref(),
    );
    predictions.iter_mut().for_each(|p| p.finish(&options));
    let capacity = prediction_len_hint(&model) * predictions.len();
    if multipart {
        json_response(&PredictionList { predictions }, capacity)
    } else {
        // Exactly one image was sent, so exactly one prediction came back.
        json_response(&predictions.into_iter().next(), capacity)
    }
}

/// Bytes of one serialised prediction, roughly: one buffer allocation instead of axum's
/// `Json`, which starts at 128 bytes and grows several times for a ~1.5 KB prediction.
fn prediction_len_hint(model: &crate::serve::infer::LoadedModel) -> usize {
    1024 + 64 * model.files.metadata.labels.len()
}

/// Serialises `value` as the JSON body of a 200 response into a buffer of `capacity` bytes.
pub(super) fn json_response<T: Serialize>(
    value: &T,
    capacity: usize,
) -> Result<Response, ApiError> {
    let mut body = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut body, value)
        .map_err(|e| ApiError::Internal(format!("cannot serialise the response: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Serialize)]
struct ModelSummary {
    name: String,
    version: String,
    labels: Vec<String>,
    calibrated: bool,
    calibration_method: &'static str,
    stale_calibration: bool,
    sha256: String,
    /// Where the model runs: "cpu" or "cuda:N".
    device: String,
}

/// `GET /v1/models`: loaded models and start-up failures.
pub async fn list_models(State(state): State<AppState>) -> Json<serde_json::Value> {
    let models: Vec<ModelSummary> = state
        .registry
        .names()
        .iter()
        .filter_map(|n| state.registry.get(n))
        .map(|m| ModelSummary {
            name: m.files.name.clone(),
            version: m.files.metadata.version.clone(),
            labels: m.files.metadata.labels.clone(),
            calibrated: m.is_calibrated(),
            calibration_method: m.calibrator.method(),
            stale_calibration: m.files.stale_calibration,
            sha256: m.files.sha256.clone(),
            device: m.device.to_string(),
        })
        .collect();
    Json(json!({ "models": models, "failed": state.registry.failures() }))
}
