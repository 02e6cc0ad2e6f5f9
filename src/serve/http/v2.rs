//! KServe V2 / Open Inference Protocol over HTTP (JSON): server and model metadata, health,
//! readiness, `infer`, and the repository extension's `load` (reload). Shapes follow the
//! protocol so that existing V2 clients work unchanged; errors are `{"error": "..."}`. What is
//! not JSON (checking the input against the model, running it, the outputs, the response
//! parameters, the repository calls) is `serve::kserve`, shared with the gRPC service.

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::v1::bytes_error;
use super::{ApiError, AppState};
use crate::serve::infer::LoadedModel;
use crate::serve::kserve::{
    self, Batch, FeedbackParameters, ModelMetadata, OutputData, OutputTensor, Plan,
};

/// A V2 inference request.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

/// One input tensor.
#[derive(Debug, Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    /// Row-major, flat or nested.
    data: Value,
}

/// One requested output.
#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
}

/// One output tensor of the response.
#[derive(Debug, Serialize)]
struct JsonOutput {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<usize>,
    data: Value,
}

impl From<OutputTensor> for JsonOutput {
    fn from(t: OutputTensor) -> Self {
        Self {
            name: t.name.as_str(),
            datatype: t.name.datatype(),
            shape: t.shape,
            // f32 -> f64 -> JSON number, as before the transports shared this code.
            data: match t.data {
                OutputData::Fp32(v) => v.into_iter().collect(),
                OutputData::Bytes(v) => v.into_iter().collect(),
                OutputData::Bool(v) => v.into_iter().collect(),
            },
        }
    }
}

/// The V2 inference response.
#[derive(Debug, Serialize)]
struct InferResponse<'a> {
    model_name: String,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<JsonOutput>,
    /// What a V2 client needs for label feedback (`POST /v1/feedback`) and the OOD verdict,
    /// one entry per input row: see `kserve::FeedbackParameters`.
    parameters: FeedbackParameters<'a>,
}

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": kserve::SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": kserve::EXTENSIONS,
    }))
}

/// `GET /v2/health/live`: the process is up.
pub async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// `GET /v2/health/ready`: 200 once every model loaded and ran its warm-up batch, else 503.
pub async fn ready(State(state): State<AppState>) -> Response {
    let ready = state.registry.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "models": state.registry.names(),
        "failed": state.registry.failures(),
    });
    (status, Json(body)).into_response()
}

/// `GET /v2/models/{model}/ready`.
pub async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = state.model(&name)?;
    Ok(Json(json!({ "name": m.files.name, "ready": true })))
}

/// `GET /v2/models/{model}`: metadata with `-1` for the batch dimension.
pub async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = state.model(&name)?;
    let meta = ModelMetadata::of(&m);
    Ok(Json(json!({
        "name": meta.name,
        "versions": [meta.version],
        "platform": kserve::PLATFORM,
        "inputs": meta.inputs,
        "outputs": meta.outputs,
        "parameters": {
            "labels": m.files.metadata.labels,
            "calibrated": m.is_calibrated(),
            "calibration_method": m.calibrator.method(),
        },
    })))
}

/// Flattens a nested JSON array into `out` (row-major), failing on anything but arrays and
/// leaves accepted by `leaf`.
fn flatten<T>(
    v: &Value,
    out: &mut Vec<T>,
    leaf: &impl Fn(&Value) -> Result<T, String>,
) -> Result<(), String> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|x| flatten(x, out, leaf)),
        other => leaf(other).map(|x| out.push(x)),
    }
}

/// An FP32 element: a JSON number that is finite as a 32-bit float (1e300 is not: it would
/// reach the model as infinity).
fn fp32(v: &Value) -> Result<f32, String> {
    match v.as_f64().map(|x| x as f32) {
        Some(x) if x.is_finite() => Ok(x),
        Some(_) => Err(format!(
            "element {v} is outside the range of a 32-bit float"
        )),
        None => Err(format!("unexpected element {v}")),
    }
}

/// Turns the request's single input into per-image model inputs or encoded images: the shape
/// is checked against the model before the data is read.
fn parse_input(model: &LoadedModel, input: &RequestInput) -> Result<Batch, ApiError> {
    let plan = Plan::new(model, &input.name, &input.datatype, &input.shape)?;
    let bad = |m: String| ApiError::BadRequest(format!("input {:?}: {m}", input.name));
    let batch = match plan {
        Plan::Tensors { .. } => {
            let mut data = Vec::new();
            flatten(&input.data, &mut data, &fp32).map_err(bad)?;
            plan.tensors(&input.name, data)?
        }
        Plan::Images { .. } => {
            let mut data = Vec::new();
            flatten(&input.data, &mut data, &|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("unexpected element {v}"))
            })
            .map_err(bad)?;
            let engine = base64::engine::general_purpose::STANDARD;
            let images = data
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    engine
                        .decode(s.trim())
                        .map(Bytes::from)
                        .map_err(|e| bad(format!("element {i} is not base64: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            plan.images(&input.name, images)?
        }
    };
    Ok(batch)
}

/// `POST /v2/models/{model}/infer`.
pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let model = state.model(&name)?;
    let limit = state.config.max_body_bytes;
    let body = Bytes::from_request(req, &state)
        .await
        .map_err(|e| bytes_error(e, limit))?;
    let request: InferRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid inference request: {e}")))?;
    let input = kserve::single_input(&request.inputs)?;
    let wanted =
        kserve::requested_outputs(request.outputs.iter().flatten().map(|o| o.name.as_str()))?;
    let batch = parse_input(&model, input)?;
    let scored = kserve::infer(&model, batch, state.kserve_context()).await?;
    Ok(Json(InferResponse {
        model_name: model.files.name.clone(),
        model_version: model.files.metadata.version.clone(),
        id: request.id,
        parameters: FeedbackParameters::of(&scored),
        outputs: wanted
            .into_iter()
            .map(|w| kserve::output(w, &scored).into())
            .collect(),
    })
    .into_response())
}

/// `POST /v2/repository/models/{model}/load`: re-reads the model and its calibrator and swaps
/// them in; on failure the previous version keeps serving. A model whose folder is gone from
/// the repository is unloaded and answered 404: the repository on disk is what a load makes the
/// server serve, and a model that exists nowhere but in memory would vanish at the next restart.
pub async fn load_model(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = kserve::repository::load(&state.registry, &name).await?;
    Ok(Json(json!({
        "name": m.files.name,
        "version": m.files.metadata.version,
        "sha256": m.files.sha256,
        "calibration_method": m.calibrator.method(),
        "loaded": true,
    })))
}
