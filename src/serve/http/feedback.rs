//! Label feedback, the live monitor and the model's calibration: `POST /v1/feedback`,
//! `GET /v1/models/{model}/monitor` (+ `/monitor/reliability.svg`) and
//! `GET /v1/models/{model}/calibration` (+ `/reliability.svg`). Wire shapes are documented in
//! `docs/MONITORING.md` and `docs/API.md`.

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::v1::bytes_error;
use super::{ApiError, AppState};
use crate::serve::monitor::{FeedbackItem, LabelRef};
use crate::trust::diagram::{ReliabilityPanel, reliability_svg};
use crate::trust::metrics::BootstrapOptions;

/// Most items in one feedback batch.
pub const MAX_FEEDBACK_ITEMS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    prediction_id: String,
    /// Any JSON value: one that is neither a class index nor a name is refused per item (422),
    /// not as a malformed body.
    label: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FeedbackBody {
    Batch { feedback: Vec<Entry> },
    Single(Entry),
}

/// Outcome of one item of a batch.
#[derive(Serialize)]
struct ItemResult {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
}

fn item(e: Entry) -> Result<FeedbackItem, ApiError> {
    let label = match e.label {
        serde_json::Value::String(name) => LabelRef::Name(name),
        serde_json::Value::Number(n) if n.as_u64().is_some() => {
            LabelRef::Index(n.as_u64().expect("checked"))
        }
        other => {
            return Err(ApiError::InvalidLabel(format!(
                "label must be a class index (an integer >= 0) or a class name, got {other}"
            )));
        }
    };
    Ok(FeedbackItem {
        prediction_id: e.prediction_id,
        label,
    })
}

/// `POST /v1/feedback`: one `{"prediction_id", "label"}` or `{"feedback": [...]}`.
pub async fn submit(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| bytes_error(e, state.config.max_body_bytes))?;
    let parsed: FeedbackBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"prediction_id\": ..., \"label\": ...}} or {{\"feedback\": [...]}}: {e}"
        ))
    })?;
    let (entries, single) = match parsed {
        FeedbackBody::Single(e) => (vec![e], true),
        FeedbackBody::Batch { feedback } => {
            if feedback.is_empty() || feedback.len() > MAX_FEEDBACK_ITEMS {
                return Err(ApiError::BadRequest(format!(
                    "a feedback batch holds 1 to {MAX_FEEDBACK_ITEMS} items, got {}",
                    feedback.len()
                )));
            }
            (feedback, false)
        }
    };
    let parsed: Vec<Result<FeedbackItem, ApiError>> = entries.into_iter().map(item).collect();
    let valid: Vec<FeedbackItem> = parsed
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    // The log append fsyncs: keep it off the async executor.
    let s = state.clone();
    let recorded = if valid.is_empty() {
        Vec::new()
    } else {
        tokio::task::spawn_blocking(move || {
            crate::serve::infer::feedback::submit(
                &s.monitor,
                &s.registry,
                &s.metrics,
                &s.recal,
                &valid,
            )
        })
        .await
        .map_err(|e| ApiError::Internal(format!("feedback task failed: {e}")))?
    };
    // A failed write refuses the whole batch: nothing of it was acknowledged.
    if let Some(Err(crate::serve::monitor::FeedbackError::Log(detail))) = recorded
        .iter()
        .find(|r| matches!(r, Err(crate::serve::monitor::FeedbackError::Log(_))))
    {
        return Err(ApiError::FeedbackNotStored(detail.clone()));
    }
    // Back in request order: the recorded results fill the places of the valid items.
    let mut recorded = recorded.into_iter();
    let results: Vec<Result<crate::serve::monitor::Accepted, ApiError>> = parsed
        .into_iter()
        .map(|p| match p {
            Ok(_) => recorded
                .next()
                .expect("one result per valid item")
                .map_err(ApiError::from),
            Err(e) => Err(e),
        })
        .collect();

    if single {
        let r = results
            .into_iter()
            .next()
            .expect("one item in, one result out");
        let a = r?;
        let status = if a.new { "accepted" } else { "duplicate" };
        return Ok(
            Json(serde_json::json!({ "status": status, "model": a.record.model })).into_response(),
        );
    }
    let mut counts = [0usize; 3];
    let items: Vec<ItemResult> = results
        .into_iter()
        .map(|r| match r {
            Ok(a) => {
                counts[usize::from(!a.new)] += 1;
                let status = if a.new { "accepted" } else { "duplicate" };
                ItemResult {
                    status,
                    model: Some(a.record.model),
                    error: None,
                    code: None,
                }
            }
            Err(err) => {
                counts[2] += 1;
                let code = err.status_and_code().1;
                ItemResult {
                    status: "rejected",
                    model: None,
                    error: Some(err.to_string()),
                    code: Some(code),
                }
            }
        })
        .collect();
    Ok(Json(serde_json::json!({
        "accepted": counts[0],
        "duplicates": counts[1],
        "rejected": counts[2],
        "results": items,
    }))
    .into_response())
}

/// Query of the monitor endpoint.
#[derive(Debug, Deserialize)]
pub struct MonitorQuery {
    /// Bootstrap resamples for confidence intervals (0 = none, at most 2000).
    #[serde(default)]
    bootstrap: usize,
}

/// `GET /v1/models/{model}/monitor`: every live figure and the per-bin statistics.
pub async fn monitor(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<MonitorQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if q.bootstrap > 2000 {
        return Err(ApiError::BadRequest(
            "bootstrap must be at most 2000".into(),
        ));
    }
    let model = state.model(&name)?;
    let boot = (q.bootstrap >= 2).then_some(BootstrapOptions {
        resamples: q.bootstrap,
        seed: 0,
        level: 0.95,
    });
    let reference = model
        .files
        .calibration
        .as_ref()
        .and_then(|c| c.reference.clone());
    // Bootstrap intervals cost seconds of CPU each: a few at a time, 429 beyond.
    let permit = match boot {
        Some(_) => Some(
            std::sync::Arc::clone(&state.reports)
                .try_acquire_owned()
                .map_err(|_| ApiError::Overloaded)?,
        ),
        None => None,
    };
    let s = state.clone();
    let m = std::sync::Arc::clone(&model);
    let (report, trust) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        (
            s.monitor.report(&name, reference.as_ref(), boot.as_ref()),
            crate::serve::infer::live::report(&s.monitor, &m, true),
        )
    })
    .await
    .map_err(|e| ApiError::Internal(format!("monitor task failed: {e}")))?;
    let shadow = state.recal.report(
        &model.files.name,
        &model.files.sha256,
        model.files.metadata.labels.len(),
    );
    let mut body = serde_json::to_value(crate::serve::monitor::MonitorReport {
        model: model.files.name.clone(),
        model_version: model.files.metadata.version.clone(),
        window: state.config.monitor.window,
        bins: state.config.monitor.bins,
        live: report,
        shadow: Some(shadow),
    })
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    // The label-free estimates, the alarm and coverage (`infer::live`) sit beside the report.
    if let Some(o) = body.as_object_mut() {
        let trust = serde_json::json!({
            "estimated": trust.estimated,
            "alarm": trust.alarm,
            "conformal": trust.conformal,
            "adaptive_conformal": trust.adaptive_conformal,
        });
        if let serde_json::Value::Object(t) = trust {
            o.extend(t);
        }
    }
    Ok(Json(body).into_response())
}

fn svg(body: String) -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response()
}

/// `GET /v1/models/{model}/monitor/reliability.svg`: the live reliability diagram, beside the
/// validation diagram of the calibration file when it has one.
pub async fn monitor_svg(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let model = state.model(&name)?;
    let mut panels = Vec::new();
    if let Some(file) = &model.files.calibration
        && let Some(mut fit) = file
            .fit
            .as_ref()
            .and_then(|f| f.reliability_panels(file.calibrator.method()))
    {
        panels.push(fit.remove(1));
    }
    let acc = state.monitor.accumulator(&name).unwrap_or_else(|| {
        crate::trust::metrics::BinnedAccumulator::new(state.config.monitor.bins).expect("bins >= 1")
    });
    let title = format!("Live: last {} labelled", acc.count());
    panels.push(ReliabilityPanel::from_accumulator(&title, &acc));
    Ok(svg(reliability_svg(&panels)))
}

/// `GET /v1/models/{model}/calibration`: the calibrator, its parameters and validation metrics.
pub async fn calibration(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let model = state.model(&name)?;
    Ok(Json(match &model.files.calibration {
        Some(file) => serde_json::json!({
            "model": model.files.name,
            "calibrated": true,
            "stale": model.files.stale_calibration,
            "method": file.calibrator.method(),
            "calibration": file,
        }),
        None => serde_json::json!({
            "model": model.files.name,
            "calibrated": false,
            "method": "identity",
        }),
    }))
}

/// `GET /v1/models/{model}/reliability.svg`: the validation reliability diagram (before and after
/// calibration) stored in the calibration file.
pub async fn calibration_svg(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let model = state.model(&name)?;
    let panels = model
        .files
        .calibration
        .as_ref()
        .and_then(|f| f.fit.as_ref()?.reliability_panels(f.calibrator.method()))
        .ok_or_else(|| {
            ApiError::NotFoundDetail(format!(
                "model {name:?} has no calibration file with a validation reliability summary"
            ))
        })?;
    Ok(svg(reliability_svg(&panels)))
}
