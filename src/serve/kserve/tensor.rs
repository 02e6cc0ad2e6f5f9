//! The tensors of a V2 inference request and response, whatever carries them: the one input a
//! caliper model takes (an FP32 `[N, C, H, W]` batch of preprocessed images, or a BYTES `[N]`
//! batch of encoded images), checked against the model before any data is read, and the output
//! tensors built from the scored rows.

use bytes::Bytes;

use super::V2Error;
use crate::repository::InputSpec;
use crate::serve::infer::{LoadedModel, Scored};

/// Name of the BYTES input that carries encoded images.
pub const IMAGE_INPUT: &str = "image";

/// The outputs a request may ask for, in the order model metadata lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputName {
    /// Calibrated probabilities, FP32 `[N, K]`.
    Probabilities,
    /// Raw logits, FP32 `[N, K]`.
    Logits,
    /// Label of the most probable class, BYTES `[N]`.
    Label,
    /// Its calibrated probability, FP32 `[N]`.
    Confidence,
    /// Signed id for label feedback, BYTES `[N]`.
    PredictionId,
    /// The OOD score, FP32 `[N]`.
    OodScore,
    /// The OOD verdict, BOOL `[N]`.
    IsOod,
}

impl OutputName {
    /// Every output, in metadata order.
    pub const ALL: [OutputName; 7] = [
        OutputName::Probabilities,
        OutputName::Logits,
        OutputName::Label,
        OutputName::Confidence,
        OutputName::PredictionId,
        OutputName::OodScore,
        OutputName::IsOod,
    ];

    /// Outputs returned when the request names none.
    pub const DEFAULT: [OutputName; 3] = [
        OutputName::Probabilities,
        OutputName::Label,
        OutputName::Confidence,
    ];

    /// The tensor name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputName::Probabilities => "probabilities",
            OutputName::Logits => "logits",
            OutputName::Label => "label",
            OutputName::Confidence => "confidence",
            OutputName::PredictionId => "prediction_id",
            OutputName::OodScore => "ood_score",
            OutputName::IsOod => "is_ood",
        }
    }

    /// The V2 datatype.
    pub fn datatype(self) -> &'static str {
        match self {
            OutputName::Probabilities
            | OutputName::Logits
            | OutputName::Confidence
            | OutputName::OodScore => "FP32",
            OutputName::Label | OutputName::PredictionId => "BYTES",
            OutputName::IsOod => "BOOL",
        }
    }

    /// Whether the tensor has a class dimension (`[N, K]`) rather than one value per row.
    pub fn per_class(self) -> bool {
        matches!(self, OutputName::Probabilities | OutputName::Logits)
    }
}

/// What the request's input declares, checked against the model: how many rows and what each
/// holds. The transport then reads exactly that much data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// FP32 `[rows, C, H, W]`: `per_row` = C * H * W values each.
    Tensors { rows: usize, per_row: usize },
    /// BYTES `[rows]`: one encoded image each.
    Images { rows: usize },
}

/// The request's input, ready for the request path.
#[derive(Debug)]
pub enum Batch {
    /// Preprocessed inputs, `C * H * W` values each.
    Tensors(Vec<Vec<f32>>),
    /// Encoded images.
    Images(Vec<Bytes>),
}

fn bad(input: &str, reason: impl std::fmt::Display) -> V2Error {
    V2Error::BadRequest(format!("input {input:?}: {reason}"))
}

impl Plan {
    /// Checks an input's name, datatype and shape against the model (see [`Plan::check`]).
    pub fn new(
        model: &LoadedModel,
        name: &str,
        datatype: &str,
        shape: &[i64],
    ) -> Result<Self, V2Error> {
        let spec = &model.files.metadata.input;
        Self::check(spec, model.queue_capacity(), name, datatype, shape)
    }

    /// Checks an input's name, datatype and shape against the model's input `spec`. Shape
    /// arithmetic is checked: a batch dimension near 2^64 / (C * H * W) would otherwise wrap
    /// to a small product. A batch of more than `most` rows (the model's queue) could never be
    /// queued: `TooManyImages`.
    pub fn check(
        spec: &InputSpec,
        most: usize,
        name: &str,
        datatype: &str,
        shape: &[i64],
    ) -> Result<Self, V2Error> {
        // The element count is checked first: a shape whose count wraps is malformed (400),
        // whatever the queue could hold.
        let rows = |n: i64, per_row: usize| -> Result<usize, V2Error> {
            let n = usize::try_from(n).map_err(|_| bad(name, format!("shape {shape:?}")))?;
            n.checked_mul(per_row)
                .ok_or_else(|| bad(name, format!("shape {shape:?} holds too many elements")))?;
            if n == 0 {
                return Err(bad(name, "the batch dimension is 0: send at least one row"));
            }
            if n > most {
                return Err(V2Error::TooManyImages(most));
            }
            Ok(n)
        };
        match datatype {
            "FP32" if name == spec.name => {
                let want = [spec.channels, spec.height, spec.width];
                let n = match shape {
                    [n, c, h, w] if [*c, *h, *w] == want.map(|d| d as i64) => *n,
                    _ => {
                        return Err(bad(
                            name,
                            format!(
                                "shape {shape:?} is not [N, {}, {}, {}]",
                                want[0], want[1], want[2]
                            ),
                        ));
                    }
                };
                let per_row = want
                    .iter()
                    .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                    .ok_or_else(|| bad(name, "the model's input size overflows"))?;
                Ok(Plan::Tensors {
                    rows: rows(n, per_row)?,
                    per_row,
                })
            }
            "BYTES" if name == IMAGE_INPUT => match shape {
                [n] => Ok(Plan::Images { rows: rows(*n, 1)? }),
                _ => Err(bad(name, format!("shape {shape:?} is not [N]"))),
            },
            dt => Err(bad(
                name,
                format!(
                    "expected FP32 {:?} [N, C, H, W] or BYTES {IMAGE_INPUT:?} [N], got {dt} {name:?}",
                    spec.name
                ),
            )),
        }
    }

    /// How many elements the input's data must hold.
    pub fn elements(&self) -> usize {
        match *self {
            // Checked in `new`.
            Plan::Tensors { rows, per_row } => rows * per_row,
            Plan::Images { rows } => rows,
        }
    }

    /// The batch from FP32 data (`input` names it in errors).
    pub fn tensors(&self, input: &str, data: Vec<f32>) -> Result<Batch, V2Error> {
        let Plan::Tensors { per_row, .. } = *self else {
            return Err(bad(input, "FP32 data for a BYTES input"));
        };
        if data.len() != self.elements() {
            return Err(bad(
                input,
                format!("expected {} values, got {}", self.elements(), data.len()),
            ));
        }
        Ok(Batch::Tensors(
            data.chunks_exact(per_row).map(<[f32]>::to_vec).collect(),
        ))
    }

    /// The batch from BYTES data, one encoded image per element.
    pub fn images(&self, input: &str, data: Vec<Bytes>) -> Result<Batch, V2Error> {
        let Plan::Images { rows } = *self else {
            return Err(bad(input, "BYTES data for an FP32 input"));
        };
        if data.len() != rows {
            return Err(bad(
                input,
                format!("shape [{rows}] does not match {} elements", data.len()),
            ));
        }
        Ok(Batch::Images(data))
    }
}

/// The elements of an output tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    /// FP32 values.
    Fp32(Vec<f32>),
    /// BYTES values (labels, prediction ids: UTF-8 text).
    Bytes(Vec<String>),
    /// BOOL values.
    Bool(Vec<bool>),
}

impl OutputData {
    /// The elements in the binary layout (`raw_output_contents`, HTTP binary data).
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            OutputData::Fp32(v) => super::raw::encode_fp32(v),
            OutputData::Bytes(v) => super::raw::encode_bytes(v.iter().map(String::as_bytes)),
            OutputData::Bool(v) => super::raw::encode_bool(v),
        }
    }
}

/// One output tensor of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    /// Which output.
    pub name: OutputName,
    /// `[N, K]` or `[N]`.
    pub shape: Vec<usize>,
    /// Row-major elements.
    pub data: OutputData,
}

/// The outputs a request names, checked before any inference is spent on it; the defaults
/// when it names none.
pub fn requested_outputs<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<OutputName>, V2Error> {
    let wanted = names
        .into_iter()
        .map(|n| {
            OutputName::ALL
                .into_iter()
                .find(|o| o.as_str() == n)
                .ok_or_else(|| V2Error::BadRequest(format!("unknown output {n:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if wanted.is_empty() {
        OutputName::DEFAULT.to_vec()
    } else {
        wanted
    })
}

/// Output `name` of the scored rows.
pub fn output(name: OutputName, scored: &[Scored]) -> OutputTensor {
    let n = scored.len();
    let k = scored.first().map_or(0, |s| s.logits.len());
    let per_row = |f: &dyn Fn(&Scored) -> f32| OutputData::Fp32(scored.iter().map(f).collect());
    let text = |f: &dyn Fn(&Scored) -> String| OutputData::Bytes(scored.iter().map(f).collect());
    let data = match name {
        OutputName::Probabilities => OutputData::Fp32(
            scored
                .iter()
                .flat_map(|s| s.prediction.probabilities.iter().map(|&p| p as f32))
                .collect(),
        ),
        OutputName::Logits => OutputData::Fp32(
            scored
                .iter()
                .flat_map(|s| s.logits.iter().copied())
                .collect(),
        ),
        OutputName::Label => text(&|s| s.prediction.label.clone()),
        OutputName::Confidence => per_row(&|s| s.prediction.confidence as f32),
        OutputName::PredictionId => text(&|s| s.prediction.prediction_id.clone()),
        OutputName::OodScore => per_row(&|s| s.prediction.ood.score as f32),
        OutputName::IsOod => {
            OutputData::Bool(scored.iter().map(|s| s.prediction.ood.is_ood).collect())
        }
    };
    let shape = if name.per_class() {
        vec![n, k]
    } else {
        vec![n]
    };
    OutputTensor { name, shape, data }
}
