//! KServe V2 / Open Inference Protocol over HTTP (JSON): server and model metadata, health,
//! readiness, `infer`, and the repository extension's `load` (reload). Shapes follow the
//! protocol so that existing V2 clients work unchanged; errors are `{"error": "..."}`.

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
use crate::repository::RepositoryError;
use crate::serve::infer::{
    InferError, LoadedModel, RequestOptions, Scored, predict_images, predict_tensors,
};

/// Name of the BYTES input that carries encoded images.
const IMAGE_INPUT: &str = "image";
/// Outputs returned when the request names none.
const DEFAULT_OUTPUTS: [&str; 3] = ["probabilities", "label", "confidence"];

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
struct OutputTensor {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<usize>,
    data: Value,
}

/// The V2 inference response.
#[derive(Debug, Serialize)]
struct InferResponse {
    model_name: String,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<OutputTensor>,
    /// What a V2 client needs for label feedback (`POST /v1/feedback`) and the OOD verdict,
    /// one entry per input row: see `feedback_parameters`.
    parameters: Value,
}

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "caliper",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["model_repository"],
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
    let meta = &m.files.metadata;
    let i = &meta.input;
    let k = meta.labels.len() as i64;
    Ok(Json(json!({
        "name": m.files.name,
        "versions": [meta.version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": i.name, "datatype": "FP32", "shape": [-1, i.channels, i.height, i.width]},
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
            {"name": "logits", "datatype": "FP32", "shape": [-1, k]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "confidence", "datatype": "FP32", "shape": [-1]},
            {"name": "prediction_id", "datatype": "BYTES", "shape": [-1]},
            {"name": "ood_score", "datatype": "FP32", "shape": [-1]},
            {"name": "is_ood", "datatype": "BOOL", "shape": [-1]},
        ],
        "parameters": {
            "labels": meta.labels,
            "calibrated": m.is_calibrated(),
            "calibration_method": m.calibrator.method(),
            "device": m.device.to_string(),
            "max_batch_size": m.max_batch_size,
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

/// Turns the request's single input into per-image model inputs or encoded images.
enum Batch {
    Tensors(Vec<Vec<f32>>),
    Images(Vec<Bytes>),
}

fn parse_input(model: &LoadedModel, input: &RequestInput) -> Result<Batch, ApiError> {
    let bad = |m: String| ApiError::BadRequest(format!("input {:?}: {m}", input.name));
    let spec = &model.files.metadata.input;
    let most = model.queue_capacity();
    match (input.name.as_str(), input.datatype.as_str()) {
        (name, "FP32") if name == spec.name => {
            let want = [spec.channels, spec.height, spec.width];
            let n = match input.shape.as_slice() {
                [n, c, h, w] if *n >= 0 && [*c, *h, *w] == want.map(|d| d as i64) => *n as usize,
                _ => {
                    return Err(bad(format!(
                        "shape {:?} is not [N, {}, {}, {}]",
                        input.shape, want[0], want[1], want[2]
                    )));
                }
            };
            // Checked: a batch dimension near 2^64 / per would wrap to a small product.
            let per = want
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad("the model's input size overflows".into()))?;
            let expected = n
                .checked_mul(per)
                .ok_or_else(|| bad(format!("shape {:?} holds too many elements", input.shape)))?;
            if n > most {
                return Err(super::v1::too_many_images(most));
            }
            let mut data = Vec::new();
            flatten(&input.data, &mut data, &fp32).map_err(bad)?;
            if n == 0 || data.len() != expected {
                return Err(bad(format!(
                    "expected {expected} values for shape {:?}, got {}",
                    input.shape,
                    data.len()
                )));
            }
            Ok(Batch::Tensors(
                data.chunks_exact(per).map(<[f32]>::to_vec).collect(),
            ))
        }
        (IMAGE_INPUT, "BYTES") => {
            let mut data = Vec::new();
            flatten(&input.data, &mut data, &|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("unexpected element {v}"))
            })
            .map_err(bad)?;
            let n = data.len();
            if n > most {
                return Err(super::v1::too_many_images(most));
            }
            if n == 0 || input.shape.as_slice() != [n as i64] {
                return Err(bad(format!(
                    "shape {:?} does not match {n} base64 strings",
                    input.shape
                )));
            }
            let engine = base64::engine::general_purpose::STANDARD;
            data.iter()
                .enumerate()
                .map(|(i, s)| {
                    engine
                        .decode(s.trim())
                        .map(Bytes::from)
                        .map_err(|e| bad(format!("element {i} is not base64: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Batch::Images)
        }
        (name, dt) => Err(bad(format!(
            "expected FP32 {:?} [N, C, H, W] or BYTES {IMAGE_INPUT:?} [N], got {dt} {name:?}",
            spec.name
        ))),
    }
}

fn output(name: &str, scored: &[Scored]) -> Result<OutputTensor, ApiError> {
    let n = scored.len();
    let k = scored.first().map_or(0, |s| s.logits.len());
    Ok(match name {
        "probabilities" => OutputTensor {
            name: "probabilities",
            datatype: "FP32",
            shape: vec![n, k],
            data: scored
                .iter()
                .flat_map(|s| s.prediction.probabilities.iter().map(|&p| p as f32))
                .collect(),
        },
        "logits" => OutputTensor {
            name: "logits",
            datatype: "FP32",
            shape: vec![n, k],
            data: scored
                .iter()
                .flat_map(|s| s.logits.iter().copied())
                .collect(),
        },
        "label" => OutputTensor {
            name: "label",
            datatype: "BYTES",
            shape: vec![n],
            data: scored.iter().map(|s| s.prediction.label.clone()).collect(),
        },
        "confidence" => OutputTensor {
            name: "confidence",
            datatype: "FP32",
            shape: vec![n],
            data: scored
                .iter()
                .map(|s| s.prediction.confidence as f32)
                .collect(),
        },
        "prediction_id" => OutputTensor {
            name: "prediction_id",
            datatype: "BYTES",
            shape: vec![n],
            data: scored
                .iter()
                .map(|s| s.prediction.prediction_id.clone())
                .collect(),
        },
        "ood_score" => OutputTensor {
            name: "ood_score",
            datatype: "FP32",
            shape: vec![n],
            data: scored
                .iter()
                .map(|s| s.prediction.ood.score as f32)
                .collect(),
        },
        "is_ood" => OutputTensor {
            name: "is_ood",
            datatype: "BOOL",
            shape: vec![n],
            data: scored.iter().map(|s| s.prediction.ood.is_ood).collect(),
        },
        other => return Err(ApiError::BadRequest(format!("unknown output {other:?}"))),
    })
}

/// The response-level `parameters` of an inference answer: the rows' signed prediction ids
/// (what `POST /v1/feedback` takes), the OOD method, its per-row scores and verdicts, and its
/// threshold (null without an OOD section in the calibration file). Always present, whatever
/// the requested outputs, so that any V2 client can send label feedback.
fn feedback_parameters(scored: &[Scored]) -> Value {
    let first = scored.first().map(|s| &s.prediction.ood);
    json!({
        "prediction_ids": scored.iter().map(|s| s.prediction.prediction_id.as_str()).collect::<Vec<_>>(),
        "ood_method": first.map(|o| o.method.as_str()),
        "ood_threshold": first.and_then(|o| o.threshold),
        "ood_scores": scored.iter().map(|s| s.prediction.ood.score).collect::<Vec<_>>(),
        "is_ood": scored.iter().map(|s| s.prediction.ood.is_ood).collect::<Vec<_>>(),
    })
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
    let [input] = request.inputs.as_slice() else {
        return Err(ApiError::BadRequest(format!(
            "expected exactly 1 input, got {}",
            request.inputs.len()
        )));
    };
    let wanted: Vec<String> = match &request.outputs {
        Some(o) if !o.is_empty() => o.iter().map(|o| o.name.clone()).collect(),
        _ => DEFAULT_OUTPUTS.map(String::from).to_vec(),
    };
    // Check the requested names before spending any inference on the request.
    for w in &wanted {
        output(w, &[])?;
    }
    let options = RequestOptions {
        top_k: model.files.metadata.labels.len(),
        ..RequestOptions::default()
    };
    let mut scored = match parse_input(&model, input)? {
        Batch::Tensors(t) => state
            .within_budget(predict_tensors(&model, t, &options))
            .await
            .map_err(|e| match e {
                // The client chose the values: outputs they drive to infinity are its error.
                ApiError::NonFiniteOutput => ApiError::BadRequest(
                    "the model produced non-finite outputs for these input values".into(),
                ),
                e => e,
            })?,
        Batch::Images(i) => {
            state
                .within_budget(predict_images(&model, i, state.image_limits(), &options))
                .await?
        }
    };
    // Each row gets its signed prediction id (returned in `parameters` and as the
    // `prediction_id` output) and feeds the label-free monitor.
    for s in &mut scored {
        crate::serve::infer::feedback::stamp(
            &state.monitor,
            &state.metrics,
            std::slice::from_mut(&mut s.prediction),
        );
    }
    let outputs = wanted
        .iter()
        .map(|w| output(w, &scored))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(InferResponse {
        model_name: model.files.name.clone(),
        model_version: model.files.metadata.version.clone(),
        id: request.id,
        parameters: feedback_parameters(&scored),
        outputs,
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
    let registry = std::sync::Arc::clone(&state.registry);
    let loaded = tokio::task::spawn_blocking(move || registry.load(&name))
        .await
        .map_err(|e| ApiError::Internal(format!("reload task failed: {e}")))?;
    match loaded {
        Ok(m) => Ok(Json(json!({
            "name": m.files.name,
            "version": m.files.metadata.version,
            "sha256": m.files.sha256,
            "calibration_method": m.calibrator.method(),
            "loaded": true,
        }))),
        Err(InferError::Repository(RepositoryError::NotFound { name, .. })) => {
            if state.registry.unload(&name) {
                tracing::warn!(model = %name, "model folder removed from the repository: unloaded");
                Err(ApiError::NotFoundDetail(format!(
                    "model {name:?} is no longer in the repository; it was unloaded"
                )))
            } else {
                Err(ApiError::ModelNotFound(name))
            }
        }
        Err(InferError::Repository(RepositoryError::InvalidName(name))) => {
            Err(ApiError::ModelNotFound(name))
        }
        Err(e) => {
            tracing::warn!(error = %e, "reload failed; previous version keeps serving");
            Err(ApiError::ReloadFailed(e.to_string()))
        }
    }
}
