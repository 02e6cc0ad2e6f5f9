//! KServe V2 / Open Inference Protocol over HTTP: server and model metadata, health,
//! readiness, `infer` (JSON tensors, or binary ones after the JSON header: `v2_binary`), and the
//! repository extension's `load` (reload). Shapes follow the protocol so that existing V2 clients
//! work unchanged; errors are `{"error": "..."}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::v1::bytes_error;
use super::v2_binary::{self, BinarySection};
use super::{ApiError, AppState};
use crate::repository::RepositoryError;
use crate::serve::infer::live::{self, Adapt};
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
    /// Echoed in the response (the request's `X-Request-Id` when absent).
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
    /// Unknown parameters (Triton's `priority`, `timeout`, ...) are ignored.
    #[serde(default)]
    parameters: Option<RequestParameters>,
}

/// Request-level parameters caliper acts on.
#[derive(Debug, Default, Deserialize)]
struct RequestParameters {
    /// Every output as binary data unless the output says otherwise (binary extension).
    #[serde(default)]
    binary_data_output: bool,
}

/// One input tensor.
#[derive(Debug, Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    /// Row-major, flat or nested, parsed straight into its element type; absent when the
    /// tensor is binary.
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    parameters: Option<InputParameters>,
}

/// Input parameters caliper acts on.
#[derive(Debug, Default, Deserialize)]
struct InputParameters {
    /// The tensor is this many bytes of the binary section (binary extension).
    binary_data_size: Option<u64>,
    /// Triton's shared-memory extension, which caliper does not implement.
    shared_memory_region: Option<String>,
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
    /// JSON strings, base64-decoded as they are read (the only strings caliper takes are
    /// BYTES images): the text is decoded straight from the request body, never copied into a
    /// `String` of its own (a 224x224 photo is ~160 KB of text). A string that is not base64
    /// keeps its error until the input's shape and count have been checked.
    Strings(Vec<Result<Bytes, base64::DecodeError>>),
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut data = Data::Empty;
        Flatten(&mut data).deserialize(d)?;
        Ok(data)
    }
}

impl Data {
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

    fn push_string(&mut self, text: &str) -> Result<(), String> {
        let decoded = || decode_base64(text.trim()).map(Bytes::from);
        match self {
            Data::Empty => *self = Data::Strings(vec![decoded()]),
            Data::Strings(v) => v.push(decoded()),
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
        self.0.push_string(v).map_err(E::custom)
    }
}

/// One requested output.
#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<OutputParameters>,
}

/// Output parameters caliper acts on.
#[derive(Debug, Default, Deserialize)]
struct OutputParameters {
    /// Return this output as binary data (overrides `binary_data_output`).
    binary_data: Option<bool>,
    /// Triton's classification extension, which caliper does not implement.
    classification: Option<u64>,
    /// Triton's shared-memory extension, which caliper does not implement.
    shared_memory_region: Option<String>,
}

/// The elements of one output tensor.
#[derive(Debug)]
enum OutputData {
    Fp32(Vec<f32>),
    Bytes(Vec<String>),
    Bool(Vec<bool>),
}

impl Serialize for OutputData {
    /// As JSON numbers, strings and booleans; FP32 as the f64 of the value, as the JSON path
    /// has always written it.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OutputData::Fp32(v) => s.collect_seq(v.iter().map(|&x| f64::from(x))),
            OutputData::Bytes(v) => s.collect_seq(v),
            OutputData::Bool(v) => s.collect_seq(v),
        }
    }
}

impl OutputData {
    /// The binary form (binary extension): little-endian FP32, BOOL as one byte, BYTES with
    /// 4-byte length prefixes.
    fn to_binary(&self) -> Vec<u8> {
        match self {
            OutputData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutputData::Bytes(v) => v2_binary::encode_bytes(v.iter().map(String::as_bytes)),
            OutputData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
        }
    }
}

/// One output tensor of the response.
#[derive(Debug)]
struct OutputTensor {
    name: &'static str,
    datatype: &'static str,
    shape: Vec<usize>,
    data: OutputData,
}

/// One output as the response's JSON carries it: with its `data`, or with
/// `parameters.binary_data_size` when its data follows the JSON.
#[derive(Debug, Serialize)]
struct WireOutput<'a> {
    name: &'static str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a OutputData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

/// The V2 inference response.
#[derive(Debug, Serialize)]
struct InferResponse<'a> {
    model_name: String,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<WireOutput<'a>>,
    /// What a V2 client needs for label feedback (`POST /v1/feedback`) and the OOD verdict,
    /// one entry per input row: see `feedback_parameters`.
    parameters: Value,
}

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "caliper",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["model_repository", "binary_tensor_data"],
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

/// `GET /v2/models/{model}/versions/{version}/ready`.
pub async fn model_version_ready(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let m = state.model_version(&name, &version)?;
    Ok(Json(json!({ "name": m.files.name, "ready": true })))
}

/// `GET /v2/models/{model}`: metadata with `-1` for the batch dimension.
pub async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let m = state.model(&name)?;
    Ok(Json(metadata(&m)))
}

/// `GET /v2/models/{model}/versions/{version}`.
pub async fn model_version_metadata(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let m = state.model_version(&name, &version)?;
    Ok(Json(metadata(&m)))
}

fn metadata(m: &LoadedModel) -> Value {
    let meta = &m.files.metadata;
    let i = &meta.input;
    let t = i.tensor_dims();
    let k = meta.labels.len() as i64;
    json!({
        "name": m.files.name,
        "versions": [meta.version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": i.name, "datatype": "FP32", "shape": [-1, t[0], t[1], t[2]]},
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
    })
}

/// Where one input's elements are: in its JSON `data`, or in the binary section.
enum InputData {
    Json(Data),
    Binary(Bytes),
}

/// Pairs each input with its data, taking binary tensors from the binary section in request
/// order; fails on an input with both or neither, on a short section and on bytes left over.
fn input_data(
    inputs: Vec<RequestInput>,
    binary: Bytes,
) -> Result<Vec<(RequestInput, InputData)>, ApiError> {
    let mut section = BinarySection::new(binary);
    let mut out = Vec::with_capacity(inputs.len());
    for mut input in inputs {
        let bad = |m: String| ApiError::BadRequest(format!("input {:?}: {m}", input.name));
        let params = input.parameters.take().unwrap_or_default();
        if params.shared_memory_region.is_some() {
            return Err(bad(
                "the shared-memory extension is not supported; send the tensor \
                            as JSON data or binary data"
                    .into(),
            ));
        }
        let data = match (input.data.take(), params.binary_data_size) {
            (Some(_), Some(_)) => {
                return Err(bad("has both data and parameters.binary_data_size".into()));
            }
            (Some(v), None) => InputData::Json(v),
            (None, Some(size)) => InputData::Binary(section.take(&input.name, size).map_err(bad)?),
            (None, None) => {
                return Err(bad(
                    "has neither data nor parameters.binary_data_size (binary tensor data \
                     extension)"
                        .into(),
                ));
            }
        };
        out.push((input, data));
    }
    section.finish().map_err(ApiError::BadRequest)?;
    Ok(out)
}

/// Turns the request's single input into per-image model inputs or encoded images.
enum Batch {
    Tensors(Vec<Vec<f32>>),
    Images(Vec<Bytes>),
}

fn parse_input(
    model: &LoadedModel,
    input: &RequestInput,
    data: InputData,
) -> Result<Batch, ApiError> {
    let bad = |m: String| ApiError::BadRequest(format!("input {:?}: {m}", input.name));
    let spec = &model.files.metadata.input;
    let most = model.queue_capacity();
    match (input.name.as_str(), input.datatype.as_str()) {
        (name, "FP32") if name == spec.name => {
            let want = spec.tensor_dims();
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
            let data = match data {
                InputData::Json(Data::Numbers(v)) => v,
                InputData::Json(Data::Empty) => Vec::new(),
                InputData::Json(Data::Strings(_)) => {
                    return Err(bad("FP32 data holds strings".into()));
                }
                InputData::Binary(raw) => v2_binary::decode_fp32(&raw, expected).map_err(bad)?,
            };
            if n == 0 || data.len() != expected {
                return Err(bad(format!(
                    "expected {expected} values for shape {:?}, got {}",
                    input.shape,
                    data.len()
                )));
            }
            // Inside caliper every image is [C, H, W]; a channels-last client sent [H, W, C].
            Ok(Batch::Tensors(
                data.chunks_exact(per)
                    .map(|img| match spec.channels_last() {
                        true => crate::runtime::to_channels_first(img, want),
                        false => img.to_vec(),
                    })
                    .collect(),
            ))
        }
        (IMAGE_INPUT, "BYTES") => {
            let images = match data {
                InputData::Json(Data::Strings(v)) => Encoded::Base64(v),
                InputData::Json(Data::Empty) => Encoded::Base64(Vec::new()),
                InputData::Json(Data::Numbers(_)) => {
                    return Err(bad("BYTES data must be base64 strings".into()));
                }
                // Binary BYTES elements are the encoded files themselves, no base64.
                InputData::Binary(raw) => Encoded::Raw(v2_binary::decode_bytes(&raw).map_err(bad)?),
            };
            let n = images.len();
            if n > most {
                return Err(super::v1::too_many_images(most));
            }
            if n == 0 || input.shape.as_slice() != [n as i64] {
                return Err(bad(format!(
                    "shape {:?} does not match {n} {}",
                    input.shape,
                    images.what()
                )));
            }
            images.decode().map_err(bad).map(Batch::Images)
        }
        (name, dt) => Err(bad(format!(
            "expected FP32 {:?} [N, C, H, W] or BYTES {IMAGE_INPUT:?} [N], got {dt} {name:?}",
            spec.name
        ))),
    }
}

/// The encoded images of a BYTES input: base64 strings (JSON, decoded as they were read) or
/// the files' bytes (binary).
enum Encoded {
    Base64(Vec<Result<Bytes, base64::DecodeError>>),
    Raw(Vec<Bytes>),
}

impl Encoded {
    fn len(&self) -> usize {
        match self {
            Encoded::Base64(v) => v.len(),
            Encoded::Raw(v) => v.len(),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Encoded::Base64(_) => "base64 strings",
            Encoded::Raw(_) => "binary BYTES elements",
        }
    }

    fn decode(self) -> Result<Vec<Bytes>, String> {
        match self {
            Encoded::Raw(v) => Ok(v),
            Encoded::Base64(strings) => strings
                .into_iter()
                .enumerate()
                .map(|(i, s)| s.map_err(|e| format!("element {i} is not base64: {e}")))
                .collect(),
        }
    }
}

/// Standard base64 with canonical padding, decoded with SIMD (`base64-simd`: 11 us for a 118 KB
/// image here, against 40 with the `base64` crate, which was about a third of what a 32-image
/// V2 upload cost beyond multipart). What it refuses goes through the `base64` crate, which
/// refuses the same strings and says where and why.
fn decode_base64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64_simd::STANDARD
        .decode_to_vec(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(s))
}

fn output(name: &str, scored: &[Scored]) -> Result<OutputTensor, ApiError> {
    let n = scored.len();
    let k = scored.first().map_or(0, |s| s.logits.len());
    let (name, datatype, shape, data) = match name {
        "probabilities" => (
            "probabilities",
            "FP32",
            vec![n, k],
            OutputData::Fp32(
                scored
                    .iter()
                    .flat_map(|s| s.prediction.probabilities.iter().map(|&p| p as f32))
                    .collect(),
            ),
        ),
        "logits" => (
            "logits",
            "FP32",
            vec![n, k],
            OutputData::Fp32(
                scored
                    .iter()
                    .flat_map(|s| s.logits.iter().copied())
                    .collect(),
            ),
        ),
        "label" => (
            "label",
            "BYTES",
            vec![n],
            OutputData::Bytes(scored.iter().map(|s| s.prediction.label.clone()).collect()),
        ),
        "confidence" => (
            "confidence",
            "FP32",
            vec![n],
            OutputData::Fp32(
                scored
                    .iter()
                    .map(|s| s.prediction.confidence as f32)
                    .collect(),
            ),
        ),
        "prediction_id" => (
            "prediction_id",
            "BYTES",
            vec![n],
            OutputData::Bytes(
                scored
                    .iter()
                    .map(|s| s.prediction.prediction_id.clone())
                    .collect(),
            ),
        ),
        "ood_score" => (
            "ood_score",
            "FP32",
            vec![n],
            OutputData::Fp32(
                scored
                    .iter()
                    .map(|s| s.prediction.ood.score as f32)
                    .collect(),
            ),
        ),
        "is_ood" => (
            "is_ood",
            "BOOL",
            vec![n],
            OutputData::Bool(scored.iter().map(|s| s.prediction.ood.is_ood).collect()),
        ),
        other => return Err(ApiError::BadRequest(format!("unknown output {other:?}"))),
    };
    Ok(OutputTensor {
        name,
        datatype,
        shape,
        data,
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
        // "label_shift" when the probabilities were corrected (`?adapt=label_shift`), else null.
        "adaptation": scored.first().and_then(|s| s.prediction.adaptation),
    })
}

/// The outputs a request asks for, each with whether it goes back as binary data: the output's
/// `binary_data`, else the request's `binary_data_output`. Refuses unknown names and the Triton
/// extensions caliper does not implement before any inference is spent on the request.
fn wanted_outputs(request: &InferRequest) -> Result<Vec<(String, bool)>, ApiError> {
    let all_binary = request
        .parameters
        .as_ref()
        .is_some_and(|p| p.binary_data_output);
    let wanted: Vec<(String, bool)> = match &request.outputs {
        Some(o) if !o.is_empty() => o
            .iter()
            .map(|o| {
                let p = o.parameters.as_ref();
                if p.is_some_and(|p| p.classification.is_some()) {
                    return Err(ApiError::BadRequest(format!(
                        "output {:?}: the classification extension is not supported; request \
                         \"label\", \"confidence\" or \"probabilities\"",
                        o.name
                    )));
                }
                if p.is_some_and(|p| p.shared_memory_region.is_some()) {
                    return Err(ApiError::BadRequest(format!(
                        "output {:?}: the shared-memory extension is not supported",
                        o.name
                    )));
                }
                let binary = p.and_then(|p| p.binary_data).unwrap_or(all_binary);
                Ok((o.name.clone(), binary))
            })
            .collect::<Result<_, _>>()?,
        _ => DEFAULT_OUTPUTS
            .map(|n| (n.to_string(), all_binary))
            .to_vec(),
    };
    for (w, _) in &wanted {
        output(w, &[])?;
    }
    Ok(wanted)
}

/// Query parameters of the V2 infer endpoint (caliper's extension; the body stays standard).
#[derive(Debug, Deserialize)]
pub struct InferQuery {
    /// `label_shift` corrects the probabilities for the estimated label shift (see v1).
    adapt: Option<String>,
}

/// `POST /v2/models/{model}/infer`.
pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<InferQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let adapt = q
        .adapt
        .as_deref()
        .map(str::parse::<Adapt>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let model = state.model(&name)?;
    infer_model(state, model, req, adapt).await
}

/// `POST /v2/models/{model}/versions/{version}/infer`: 404 unless `version` is the one served.
pub async fn infer_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let model = state.model_version(&name, &version)?;
    infer_model(state, model, req, None).await
}

async fn infer_model(
    state: AppState,
    model: Arc<LoadedModel>,
    req: Request,
    adapt: Option<Adapt>,
) -> Result<Response, ApiError> {
    let limit = state.config.max_body_bytes;
    let header_len = req.headers().get(v2_binary::HEADER_LENGTH).cloned();
    let x_request_id = super::request_id(req.headers());
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
    let (json_part, binary) = v2_binary::split_body(header_len.as_ref(), body)?;
    let inline = json_part.len() <= INLINE_PARSE_MAX_BYTES;
    let parse = move || {
        serde_json::from_slice::<InferRequest>(&json_part)
            .map_err(|e| ApiError::BadRequest(format!("invalid inference request: {e}")))
    };
    // Large bodies on the blocking pool: parsing 16 MB takes long enough to stall an async
    // worker (and readiness with it); small ones are not worth two thread hops.
    let mut request = if inline {
        parse()?
    } else {
        tokio::task::spawn_blocking(parse)
            .await
            .map_err(|e| ApiError::Internal(format!("parsing task failed: {e}")))??
    };
    let wanted = wanted_outputs(&request)?;
    if request.inputs.len() != 1 {
        return Err(ApiError::BadRequest(format!(
            "expected exactly 1 input, got {}",
            request.inputs.len()
        )));
    }
    let inputs = std::mem::take(&mut request.inputs);
    let Some((input, data)) = input_data(inputs, binary)?.pop() else {
        return Err(ApiError::Internal("one input in, none out".into()));
    };
    // No V2 output or parameter carries a top-k (see `kserve::infer`).
    let mut options = RequestOptions {
        top_k: 0,
        ..RequestOptions::default()
    };
    let plan = live::plan(&state.monitor, &model, adapt, &mut options);
    let mut logged_images = None;
    let batch = parse_input(&model, &input, data)?;
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
            if state.logs_images() {
                logged_images = Some(i.clone());
            }
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
    live::stamp_scored(
        &state.monitor,
        &state.metrics,
        &state.recal,
        &model,
        &mut scored,
        plan,
    );
    let id = request.id.take().or(x_request_id);
    state.log_payload(
        &model,
        scored.iter().map(|s| &s.prediction),
        id.as_deref(),
        logged_images.as_deref(),
    );
    let tensors = wanted
        .iter()
        .map(|(w, binary)| output(w, &scored).map(|t| (t, *binary)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut binary = Vec::new();
    let outputs = tensors
        .iter()
        .map(|(t, as_binary)| {
            let (data, parameters) = if *as_binary {
                let raw = t.data.to_binary();
                let size = raw.len();
                binary.push(raw);
                (None, Some(json!({ "binary_data_size": size })))
            } else {
                (Some(&t.data), None)
            };
            WireOutput {
                name: t.name,
                datatype: t.datatype,
                shape: &t.shape,
                data,
                parameters,
            }
        })
        .collect();
    let response = InferResponse {
        model_name: model.files.name.clone(),
        model_version: model.files.metadata.version.clone(),
        id,
        parameters: feedback_parameters(&scored),
        outputs,
    };
    if binary.is_empty() {
        return Ok(Json(response).into_response());
    }
    let header = serde_json::to_vec(&response)
        .map_err(|e| ApiError::Internal(format!("cannot serialise the response: {e}")))?;
    Ok(v2_binary::response(header, &binary))
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

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::{Data, decode_base64};

    /// BYTES strings are decoded as they are parsed: straight from the body when the JSON text
    /// has no escapes, from serde's unescaped copy when it has (`\/` is how some encoders write
    /// base64's `/`), trimmed; a string that is not base64 keeps its own error, and nested
    /// arrays flatten in order.
    #[test]
    fn bytes_strings_decode_while_parsing_escaped_or_not() {
        let engine = base64::engine::general_purpose::STANDARD;
        let files: [&[u8]; 3] = [b"\xff\xfe\xfd?", b"caliper", b""];
        let plain: Vec<String> = files.iter().map(|f| engine.encode(f)).collect();
        assert!(plain[0].contains('/'), "the test needs a '/' to escape");
        let escaped = plain[0].replace('/', "\\/");
        let body = format!(
            r#"[["{escaped}"], [" {} \n", "{}"], "***"]"#,
            plain[1], plain[2]
        );
        let Data::Strings(got) = serde_json::from_str::<Data>(&body).unwrap() else {
            panic!("strings expected");
        };
        assert_eq!(got.len(), 4);
        for (g, want) in got.iter().zip(files) {
            assert_eq!(g.as_ref().unwrap().as_ref(), want);
        }
        assert_eq!(
            got[3].as_ref().unwrap_err(),
            &engine.decode("***").unwrap_err()
        );
        assert!(serde_json::from_str::<Data>(r#"["AAAA", 1]"#).is_err());
        assert!(serde_json::from_str::<Data>(r#"[1, "AAAA"]"#).is_err());
    }

    /// The SIMD decoder must accept exactly what the `base64` crate accepted, with the same
    /// bytes: random strings over the alphabet, padding, whitespace and a foreign character,
    /// of every length up to 40, plus the encodings of random bytes.
    #[test]
    fn base64_decoding_accepts_and_refuses_what_the_base64_crate_does() {
        const CHARS: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \n-";
        let engine = base64::engine::general_purpose::STANDARD;
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut accepted, mut refused) = (0, 0);
        for len in 0..=40 {
            for _ in 0..400 {
                let mut s: Vec<u8> = (0..len)
                    .map(|_| CHARS[next() as usize % CHARS.len()])
                    .collect();
                if next() % 2 == 0 {
                    // Mostly the alphabet, so that valid strings come up too.
                    s.iter_mut().for_each(|c| {
                        if !c.is_ascii_alphanumeric() && next() % 4 != 0 {
                            *c = b'Q';
                        }
                    });
                }
                let s = String::from_utf8(s).unwrap();
                let want = engine.decode(&s);
                let got = decode_base64(&s);
                assert_eq!(got.is_ok(), want.is_ok(), "{s:?}");
                if let (Ok(g), Ok(w)) = (&got, &want) {
                    assert_eq!(g, w, "{s:?}");
                    accepted += 1;
                } else {
                    assert_eq!(got.unwrap_err(), want.unwrap_err(), "{s:?}");
                    refused += 1;
                }
            }
            let bytes: Vec<u8> = (0..len * 3).map(|_| next() as u8).collect();
            assert_eq!(decode_base64(&engine.encode(&bytes)).unwrap(), bytes);
        }
        assert!(accepted > 100 && refused > 100, "{accepted} / {refused}");
    }
}
