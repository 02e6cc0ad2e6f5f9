//! The one API error type: every failure maps to a status code and a JSON body
//! `{"error": "...", "code": "..."}` (the `error` member is what KServe V2 clients read).
//! 5xx bodies carry no internals; those are logged instead.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::repository::RepositoryError;
use crate::serve::infer::{InferError, PreprocessError};

/// The machine-readable error code, stored in the response's extensions so that the metrics
/// middleware can count rejections by reason.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// Errors answered to clients.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request (bad JSON, bad query, wrong tensor).
    #[error("{0}")]
    BadRequest(String),
    /// No such model is loaded.
    #[error("model {0:?} is not loaded")]
    ModelNotFound(String),
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The body is larger than `--max-body-bytes`.
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// An image has more pixels than `--max-image-pixels`.
    #[error("{0}")]
    ImageTooLarge(String),
    /// The content type or image format is not supported.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The image data is corrupt.
    #[error("{0}")]
    CorruptImage(String),
    /// One request holds more images than the server could ever queue at once: retrying
    /// cannot help, so this is not a 429.
    #[error("{0}")]
    TooManyImages(String),
    /// The body did not arrive at the minimum transfer rate (`--body-min-bytes-per-s`).
    #[error("the request body arrived too slowly")]
    BodyTimeout,
    /// A feedback label that is neither a class index (non-negative integer) nor a class name.
    #[error("{0}")]
    InvalidLabel(String),
    /// One image or body needs more than the whole decode memory budget.
    #[error("{0}")]
    OverBudget(String),
    /// The decode memory budget stayed taken by other requests (retry later).
    #[error("the server's decode memory budget is in use by other requests, retry later")]
    DecodeBusy,
    /// Too many requests in flight or a full queue.
    #[error("server overloaded, retry later")]
    Overloaded,
    /// The request ran past `--request-timeout-ms`.
    #[error("request timed out")]
    Timeout,
    /// The model exists but cannot serve right now.
    #[error("{0}")]
    Unavailable(String),
    /// The model produced NaN or infinite logits.
    #[error("the model produced non-finite outputs")]
    NonFiniteOutput,
    /// A reload failed; the previous version keeps serving. The message is for the operator.
    #[error("reload failed, previous version still serving: {0}")]
    ReloadFailed(String),
    /// A resource of a loaded model does not exist (e.g. no reliability summary).
    #[error("{0}")]
    NotFoundDetail(String),
    /// A prediction id that does not verify (tampered, foreign key, malformed).
    #[error("{0}")]
    InvalidPredictionId(String),
    /// A prediction id older than `--feedback-max-age-s`.
    #[error("{0}")]
    PredictionExpired(String),
    /// A feedback label that is not a class of the model.
    #[error("{0}")]
    UnknownLabel(String),
    /// The feedback log could not be written; nothing was acknowledged.
    #[error("feedback could not be stored; retry later")]
    FeedbackNotStored(String),
    /// A recalibration from feedback that the data cannot support (too few labels, no error
    /// to fit on); the previous calibrator keeps serving.
    #[error("{0}")]
    CannotRecalibrate(String),
    /// Anything else; details are logged, not sent.
    #[error("internal server error")]
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: String,
    code: &'a str,
}

impl ApiError {
    /// Status and code of each variant (exhaustive on purpose: a new variant must choose).
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::ModelNotFound(_) => (StatusCode::NOT_FOUND, "model_not_found"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::ImageTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::CorruptImage(_) => (StatusCode::BAD_REQUEST, "corrupt_image"),
            ApiError::TooManyImages(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_images"),
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::InvalidLabel(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_label"),
            ApiError::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            ApiError::DecodeBusy => (StatusCode::SERVICE_UNAVAILABLE, "decode_busy"),
            ApiError::OverBudget(_) => (StatusCode::PAYLOAD_TOO_LARGE, "over_memory_budget"),
            ApiError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::NonFiniteOutput => (StatusCode::INTERNAL_SERVER_ERROR, "nonfinite_output"),
            ApiError::ReloadFailed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "reload_failed"),
            ApiError::NotFoundDetail(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::InvalidPredictionId(_) => (StatusCode::UNAUTHORIZED, "invalid_prediction_id"),
            ApiError::PredictionExpired(_) => (StatusCode::GONE, "prediction_expired"),
            ApiError::UnknownLabel(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_label"),
            ApiError::FeedbackNotStored(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "feedback_not_stored")
            }
            ApiError::CannotRecalibrate(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "cannot_recalibrate")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(detail) | ApiError::FeedbackNotStored(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut resp = (
            status,
            Json(Body {
                error: self.to_string(),
                code,
            }),
        )
            .into_response();
        if matches!(self, ApiError::Overloaded | ApiError::DecodeBusy) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp.extensions_mut().insert(ErrorCode(code));
        resp
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::Image { index, source } => {
                let msg = format!("image {index}: {source}");
                match source {
                    PreprocessError::TooLarge { .. } | PreprocessError::AspectRatio { .. } => {
                        ApiError::ImageTooLarge(msg)
                    }
                    // Only seen by a request already answered 504.
                    PreprocessError::Cancelled => ApiError::Timeout,
                    PreprocessError::Unsupported(_) => ApiError::UnsupportedMediaType(msg),
                    PreprocessError::Empty | PreprocessError::Corrupt(_) => {
                        ApiError::CorruptImage(msg)
                    }
                }
            }
            InferError::OverBudget { index, source } => ApiError::OverBudget(format!(
                "image {index}: {source} (--max-decode-memory-mib); send a smaller image"
            )),
            InferError::BudgetBusy => ApiError::DecodeBusy,
            InferError::QueueFull => ApiError::Overloaded,
            InferError::Policy(e) => ApiError::BadRequest(e.to_string()),
            InferError::Unavailable(m) => {
                ApiError::Unavailable(format!("model {m} is not available"))
            }
            InferError::NonFiniteLogits(_) => ApiError::NonFiniteOutput,
            InferError::Calibration(crate::trust::calibration::CalibrationError::NonFinite(_)) => {
                ApiError::NonFiniteOutput
            }
            InferError::Repository(RepositoryError::InvalidName(n)) => ApiError::ModelNotFound(n),
            InferError::Repository(RepositoryError::NotFound { name, .. }) => {
                ApiError::ModelNotFound(name)
            }
            e @ (InferError::Runtime(_)
            | InferError::Calibration(_)
            | InferError::Repository(_)
            | InferError::Session(_)
            | InferError::LabelCount { .. }
            | InferError::FeatureMismatch { .. }
            | InferError::Internal(_)) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::serve::kserve::V2Error> for ApiError {
    fn from(e: crate::serve::kserve::V2Error) -> Self {
        use crate::serve::kserve::V2Error;
        match e {
            V2Error::BadRequest(m) => ApiError::BadRequest(m),
            V2Error::TooManyImages(most) => super::v1::too_many_images(most),
            V2Error::Timeout => ApiError::Timeout,
            V2Error::Infer(e) => ApiError::from(e),
        }
    }
}

impl From<crate::serve::kserve::repository::RepositoryCallError> for ApiError {
    fn from(e: crate::serve::kserve::repository::RepositoryCallError) -> Self {
        use crate::serve::kserve::repository::RepositoryCallError;
        match e {
            RepositoryCallError::NotFound(name) => ApiError::ModelNotFound(name),
            e @ RepositoryCallError::Removed(_) => ApiError::NotFoundDetail(e.to_string()),
            RepositoryCallError::Failed(why) => ApiError::ReloadFailed(why),
            e @ RepositoryCallError::Internal(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::serve::monitor::FeedbackError> for ApiError {
    fn from(e: crate::serve::monitor::FeedbackError) -> Self {
        use crate::serve::monitor::{FeedbackError, TokenError};
        let msg = e.to_string();
        match e {
            FeedbackError::Token(TokenError::Expired { .. }) => ApiError::PredictionExpired(msg),
            FeedbackError::Token(TokenError::Malformed | TokenError::BadSignature) => {
                ApiError::InvalidPredictionId(msg)
            }
            FeedbackError::UnknownModel(model) => ApiError::ModelNotFound(model),
            FeedbackError::UnknownLabel { .. } => ApiError::UnknownLabel(msg),
            FeedbackError::Log(detail) => ApiError::FeedbackNotStored(detail),
        }
    }
}
