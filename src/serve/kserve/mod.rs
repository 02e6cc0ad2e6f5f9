//! The KServe V2 / Open Inference Protocol apart from its transport: what both the HTTP/JSON
//! handlers (`serve::http::v2`) and the gRPC service (`serve::grpc`) answer, so that the two
//! serve the same models with the same calibration, OOD verdicts, prediction ids and limits.
//! Each transport only decodes its wire format into these types and encodes the results.
//!
//! - [`tensor`]: the request's input checked against the model ([`Plan`]) and the outputs;
//! - [`raw`]: the binary tensor layout (gRPC raw contents, HTTP binary data);
//! - [`repository`]: the model repository extension (index, load, unload);
//! - here: metadata, the response parameters, and [`infer`], the one call that runs a request.

pub mod raw;
pub mod repository;
pub mod tensor;

use std::time::Duration;

use serde::Serialize;

pub use tensor::{Batch, OutputData, OutputName, OutputTensor, Plan, output, requested_outputs};

use crate::serve::infer::{
    ImageWork, InferError, LoadedModel, RequestOptions, Scored, predict_images, predict_tensors,
};
use crate::serve::monitor::Monitor;
use crate::serve::monitor::recal::Recalibration;
use crate::serve::prometheus::ServerMetrics;

/// The server name in server metadata.
pub const SERVER_NAME: &str = "caliper";
/// The protocol extensions caliper serves.
pub const EXTENSIONS: [&str; 1] = ["model_repository"];
/// The platform in model metadata.
pub const PLATFORM: &str = "onnxruntime_onnx";

/// Why a V2 request failed, before the transport maps it to its status.
#[derive(Debug, thiserror::Error)]
pub enum V2Error {
    /// A malformed request: wrong input, shape, datatype or data, unknown output.
    #[error("{0}")]
    BadRequest(String),
    /// More rows than the model's queue holds (the most it takes): retrying cannot help.
    #[error("a request may hold at most {0} images")]
    TooManyImages(usize),
    /// The request ran past its time budget.
    #[error("request timed out")]
    Timeout,
    /// The request path failed.
    #[error(transparent)]
    Infer(#[from] InferError),
}

/// The one input of a request: caliper models take exactly one.
pub fn single_input<T>(inputs: &[T]) -> Result<&T, V2Error> {
    match inputs {
        [input] => Ok(input),
        _ => Err(V2Error::BadRequest(format!(
            "expected exactly 1 input, got {}",
            inputs.len()
        ))),
    }
}

/// A tensor of model metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorMetadata {
    /// Tensor name.
    pub name: String,
    /// V2 datatype.
    pub datatype: &'static str,
    /// Shape, -1 for the batch dimension.
    pub shape: Vec<i64>,
}

/// Model metadata: the inputs a model takes (preprocessed FP32 or encoded images) and every
/// output a request may ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Its one served version.
    pub version: String,
    /// Inputs.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs.
    pub outputs: Vec<TensorMetadata>,
}

impl ModelMetadata {
    /// The metadata of a loaded model.
    pub fn of(m: &LoadedModel) -> Self {
        let meta = &m.files.metadata;
        let i = &meta.input;
        let k = meta.labels.len() as i64;
        let tensor = |name: &str, datatype, shape: Vec<i64>| TensorMetadata {
            name: name.to_string(),
            datatype,
            shape,
        };
        Self {
            name: m.files.name.clone(),
            version: meta.version.clone(),
            inputs: vec![
                tensor(
                    &i.name,
                    "FP32",
                    vec![-1, i.channels as i64, i.height as i64, i.width as i64],
                ),
                tensor(tensor::IMAGE_INPUT, "BYTES", vec![-1]),
            ],
            outputs: OutputName::ALL
                .into_iter()
                .map(|o| {
                    let shape = if o.per_class() { vec![-1, k] } else { vec![-1] };
                    tensor(o.as_str(), o.datatype(), shape)
                })
                .collect(),
        }
    }
}

/// What an inference response carries besides its tensors, one entry per row: the signed
/// prediction ids (what `POST /v1/feedback` takes), the OOD method, its per-row scores and
/// verdicts, and its threshold (None without an OOD section in the calibration file). Always
/// sent, whatever outputs were requested, so that any V2 client can send label feedback.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackParameters<'a> {
    /// Signed prediction ids.
    pub prediction_ids: Vec<&'a str>,
    /// The OOD score the verdicts use.
    pub ood_method: Option<&'a str>,
    /// Its fitted threshold.
    pub ood_threshold: Option<f64>,
    /// The score of each row.
    pub ood_scores: Vec<f64>,
    /// The verdict of each row.
    pub is_ood: Vec<bool>,
}

impl<'a> FeedbackParameters<'a> {
    /// The parameters of the scored rows.
    pub fn of(scored: &'a [Scored]) -> Self {
        let first = scored.first().map(|s| &s.prediction.ood);
        Self {
            prediction_ids: scored
                .iter()
                .map(|s| s.prediction.prediction_id.as_str())
                .collect(),
            ood_method: first.map(|o| o.method.as_str()),
            ood_threshold: first.and_then(|o| o.threshold),
            ood_scores: scored.iter().map(|s| s.prediction.ood.score).collect(),
            is_ood: scored.iter().map(|s| s.prediction.ood.is_ood).collect(),
        }
    }
}

/// What running a request needs from the server, whatever the transport.
#[derive(Clone)]
pub struct Context<'a> {
    /// Signs prediction ids and feeds the label-free figures.
    pub monitor: &'a Monitor,
    /// Counts OOD flags.
    pub metrics: &'a ServerMetrics,
    /// Image size limits and the decode memory budget.
    pub work: ImageWork,
    /// The logit store of the recalibration shadows.
    pub recal: &'a Recalibration,
    /// The request's time budget.
    pub budget: Duration,
}

/// Runs a V2 request's batch through the request path under the time budget (dropping the
/// future on timeout abandons its queue entries), with no `top_k` (no V2 output carries one: a
/// 1,000-class model cloned 1,000 labels per image for nothing), then stamps each
/// row with its signed prediction id and feeds the label-free monitor.
pub async fn infer(
    model: &LoadedModel,
    batch: Batch,
    ctx: Context<'_>,
) -> Result<Vec<Scored>, V2Error> {
    let options = RequestOptions {
        top_k: 0,
        ..RequestOptions::default()
    };
    let client_values = matches!(batch, Batch::Tensors(_));
    let run = async {
        match batch {
            Batch::Tensors(t) => predict_tensors(model, t, &options).await,
            Batch::Images(i) => predict_images(model, i, &ctx.work, &options).await,
        }
    };
    let mut scored = match tokio::time::timeout(ctx.budget, run).await {
        Err(_) => return Err(V2Error::Timeout),
        Ok(Err(e)) if client_values && is_non_finite(&e) => {
            // The client chose the values: outputs they drive to infinity are its error.
            return Err(V2Error::BadRequest(
                "the model produced non-finite outputs for these input values".into(),
            ));
        }
        Ok(r) => r?,
    };
    // The same stamping as HTTP V2 without `?adapt`: ids, served sets, label-free figures and
    // the logits the recalibration shadows refit on.
    crate::serve::infer::live::stamp_scored(
        ctx.monitor,
        ctx.metrics,
        ctx.recal,
        model,
        &mut scored,
        crate::serve::infer::live::LivePlan::default(),
    );
    Ok(scored)
}

/// Whether the model's outputs were NaN or infinite (logits, or the calibrated row).
fn is_non_finite(e: &InferError) -> bool {
    matches!(
        e,
        InferError::NonFiniteLogits(_)
            | InferError::Calibration(crate::trust::calibration::CalibrationError::NonFinite(_))
    )
}
