//! `POST /v2/repository/models/{model}/recalibrate` (admin token): fit a calibrator from the
//! model's label feedback, write it as `calib/<model>.json` and swap it in
//! (`serve::infer::recalibrate`). Body: `{"method": "ts" | "ats", "window": N}` (both optional:
//! TS over the whole recalibration window).

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::serve::infer::recalibrate::{
    RecalibrateError, RecalibrateRequest, RecalibrationReport, Trigger, recalibrate as run,
};
use crate::trust::calibration::Method;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    window: Option<usize>,
}

/// `POST /v2/repository/models/{model}/recalibrate`.
pub async fn recalibrate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<RecalibrationReport>, ApiError> {
    let body: Body = if body.iter().all(u8::is_ascii_whitespace) {
        Body {
            method: None,
            window: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "expected {{\"method\": \"ts\" | \"ats\", \"window\": N}}: {e}"
            ))
        })?
    };
    let method = match body.method.as_deref().unwrap_or("ts") {
        "ts" => Method::Ts,
        "ats" => Method::Ats,
        other => {
            return Err(ApiError::BadRequest(format!(
                "method {other:?}: only \"ts\" and \"ats\" are fitted from feedback"
            )));
        }
    };
    let window = body.window.unwrap_or(state.recal.config().window);
    if window == 0 {
        return Err(ApiError::BadRequest("window must be at least 1".into()));
    }
    state.model(&name)?;
    let req = RecalibrateRequest {
        method,
        window,
        trigger: Trigger::Manual,
    };
    let s = state.clone();
    let report =
        tokio::task::spawn_blocking(move || run(&s.registry, &s.recal, &s.metrics, &name, req))
            .await
            .map_err(|e| ApiError::Internal(format!("recalibration task failed: {e}")))?;
    report.map(Json).map_err(|e| match e {
        RecalibrateError::ModelNotFound(m) => ApiError::ModelNotFound(m),
        e @ (RecalibrateError::Method(_)
        | RecalibrateError::TooFewLabels { .. }
        | RecalibrateError::Fit(_)) => ApiError::CannotRecalibrate(e.to_string()),
        RecalibrateError::Reload(e) => ApiError::ReloadFailed(e.to_string()),
        e @ RecalibrateError::Write(_) => ApiError::Internal(e.to_string()),
    })
}
