//! The API error type as gRPC statuses: the same message as HTTP's `error` member, the code the
//! gRPC status-code guide gives for the failure (NOT_FOUND for an unknown model,
//! INVALID_ARGUMENT for a bad tensor, RESOURCE_EXHAUSTED for overload, UNAUTHENTICATED for a
//! missing token, ...), and HTTP's machine-readable code in the `caliper-error-code` trailer.

use tonic::{Code, Status};

use crate::serve::http::ApiError;

/// The gRPC code of each error (exhaustive on purpose: a new variant must choose).
pub fn code(e: &ApiError) -> Code {
    match e {
        ApiError::BadRequest(_)
        | ApiError::ImageTooLarge(_)
        | ApiError::UnsupportedMediaType(_)
        | ApiError::CorruptImage(_)
        | ApiError::InvalidLabel(_)
        | ApiError::UnknownLabel(_) => Code::InvalidArgument,
        // Splitting the request helps, retrying it does not: not RESOURCE_EXHAUSTED.
        ApiError::TooManyImages(_) => Code::OutOfRange,
        ApiError::ModelNotFound(_) | ApiError::NotFoundDetail(_) => Code::NotFound,
        ApiError::Unauthorized | ApiError::InvalidPredictionId(_) => Code::Unauthenticated,
        ApiError::PayloadTooLarge(_)
        | ApiError::Overloaded
        | ApiError::OverBudget(_)
        | ApiError::DecodeBusy => Code::ResourceExhausted,
        ApiError::CannotRecalibrate(_) => Code::FailedPrecondition,
        ApiError::BodyTimeout | ApiError::Timeout => Code::DeadlineExceeded,
        ApiError::Unavailable(_) | ApiError::FeedbackNotStored(_) => Code::Unavailable,
        ApiError::PredictionExpired(_) => Code::FailedPrecondition,
        ApiError::NonFiniteOutput | ApiError::ReloadFailed(_) | ApiError::Internal(_) => {
            Code::Internal
        }
    }
}

/// The status of an error. Internal details are logged, not sent (as over HTTP).
pub fn from_api_error(e: ApiError) -> Status {
    if let ApiError::Internal(detail) | ApiError::FeedbackNotStored(detail) = &e {
        tracing::error!(%detail, "internal error");
    }
    let (_, reason) = e.status_and_code();
    let mut status = Status::new(code(&e), e.to_string());
    if let Ok(v) = reason.parse() {
        status.metadata_mut().insert("caliper-error-code", v);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_codes_clients_expect_without_internals() {
        assert_eq!(code(&ApiError::ModelNotFound("m".into())), Code::NotFound);
        assert_eq!(
            code(&ApiError::BadRequest("shape".into())),
            Code::InvalidArgument
        );
        assert_eq!(code(&ApiError::Overloaded), Code::ResourceExhausted);
        assert_eq!(code(&ApiError::Unauthorized), Code::Unauthenticated);
        let s = from_api_error(ApiError::Internal("secret path /x".into()));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("secret"), "{}", s.message());
        let reason = s.metadata().get("caliper-error-code");
        assert_eq!(reason.and_then(|v| v.to_str().ok()), Some("internal"));
    }
}
