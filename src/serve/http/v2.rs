//! KServe V2 / Open Inference Protocol over HTTP (JSON): server and model metadata, health,
//! readiness, `infer`, and the repository extension's `load` (reload). Shapes follow the
//! protocol so that existing V2 clients work unchanged; errors are `{"error": "..."}`.

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::v1::bytes_error;
use super::{ApiError, AppState};
use crate::repository::RepositoryError;
use crate::serve::infer::{
    BudgetError, InferError, LoadedModel, RequestOptions, Scored, predict_images, predict_tensors,
};

/// Name of the BYTES input that carries encoded images.
const IMAGE_INPUT: &str = "image";
/// Bodies up to this size are parsed on the calling task (one 28 x 28 image is ~6 KB of JSON).
const INLINE_PARSE_MAX_BYTES: usize = 64 * 1024;
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
    data: Data,
}

/// The `data` of an input, parsed straight into its element type while nested arrays are
/// flattened row-major (issue 23: a `serde_json::Value` tree of a 16 MB body took ~360 MB; this
/// takes 4 bytes per number, the base64 text per string).
#[derive(Debug, Default)]
enum Data {
    /// No element at all.
    #[default]
    Empty,
    /// JSON numbers, each finite as a 32-bit float.
    Numbers(Vec<f32>),
    /// JSON strings.
    Strings(Vec<String>),
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut data = Data::Empty;
        Flatten(&mut data).deserialize(d)?;
        Ok(data)
    }
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::Empty => 0,
            Data::Numbers(v) => v.len(),
            Data::Strings(v) => v.len(),
        }
    }

    fn push_number(&mut self, x: f64) -> Result<(), String> {
        let v = x as f32;
        if !v.is_finite() {
            return Err(format!(
                "element {x:e} is outside the range of a 32-bit float"
            ));
        }
        match self {
            Data::Empty => *self = Data::Numbers(vec![v]),
            Data::Numbers(n) => n.push(v),
            Data::Strings(_) => return Err(format!("unexpected number {x} among strings")),
        }
        Ok(())
    }

    fn push_string(&mut self, s: String) -> Result<(), String> {
        match self {
            Data::Empty => *self = Data::Strings(vec![s]),
            Data::Strings(v) => v.push(s),
            Data::Numbers(_) => return Err("unexpected string among numbers".into()),
        }
        Ok(())
    }
}

/// Appends every leaf of a (nested) JSON array to the [`Data`] it borrows.
struct Flatten<'a>(&'a mut Data);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("numbers or strings, in flat or nested arrays")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Flatten(data) = self;
        while seq.next_element_seed(Flatten(&mut *data))?.is_some() {}
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.0.push_number(v).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push_string(v.to_owned()).map_err(E::custom)
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<(), E> {
        self.0.push_string(v).map_err(E::custom)
    }
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
        },
    })))
}

/// Turns the request's single input into per-image model inputs or encoded images.
enum Batch {
    Tensors(Vec<Vec<f32>>),
    Images(Vec<Bytes>),
}

fn parse_input(model: &LoadedModel, input: RequestInput) -> Result<Batch, ApiError> {
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
            let data = match input.data {
                Data::Numbers(v) => v,
                Data::Empty => Vec::new(),
                Data::Strings(_) => return Err(bad("FP32 data holds strings".into())),
            };
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
            let n = input.data.len();
            let data = match input.data {
                Data::Strings(v) => v,
                Data::Empty => Vec::new(),
                Data::Numbers(_) => {
                    return Err(bad("BYTES data must be base64 strings".into()));
                }
            };
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
    let admission = req
        .extensions()
        .get::<super::middleware::Admission>()
        .cloned();
    let body = Bytes::from_request(req, &state)
        .await
        .map_err(|e| bytes_error(e, limit))?;
    // The parsed tensors (4 bytes per number, however short its text) and the rows cut from
    // them take up to about 4x the body; reserved from the decode budget until the answer.
    let mut parsed = state
        .budget
        .reserve(4 * body.len() as u64)
        .await
        .map_err(|e| match e {
            BudgetError::Busy => ApiError::DecodeBusy,
            e @ BudgetError::TooLarge { .. } => ApiError::OverBudget(format!(
                "parsing this {} byte body {e} (--max-decode-memory-mib)",
                body.len()
            )),
        })
        .map(Some)?;
    let inline = body.len() <= INLINE_PARSE_MAX_BYTES;
    let parse = move || {
        serde_json::from_slice::<InferRequest>(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid inference request: {e}")))
    };
    // Large bodies on the blocking pool: parsing 16 MB takes long enough to stall an async
    // worker (and readiness with it); small ones are not worth two thread hops.
    let InferRequest {
        id,
        inputs,
        outputs,
    } = if inline {
        parse()?
    } else {
        tokio::task::spawn_blocking(parse)
            .await
            .map_err(|e| ApiError::Internal(format!("parsing task failed: {e}")))??
    };
    let count = inputs.len();
    let Ok([input]) = <[RequestInput; 1]>::try_from(inputs) else {
        return Err(ApiError::BadRequest(format!(
            "expected exactly 1 input, got {count}"
        )));
    };
    let wanted: Vec<String> = match &outputs {
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
    let batch = parse_input(&model, input)?;
    if let Batch::Images(_) = batch {
        // The strings are gone; the decodes reserve for themselves.
        drop(parsed.take());
    }
    let mut scored = match batch {
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
                .within_budget(predict_images(
                    &model,
                    i,
                    &state.image_work(admission),
                    &options,
                ))
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
        id,
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
