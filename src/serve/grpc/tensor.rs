//! `ModelInferRequest` -> the request's batch, and the scored rows -> `ModelInferResponse`.
//! Inputs come as `raw_input_contents` (what Triton's clients send by default) or as typed
//! `contents`; outputs always go as `raw_output_contents`, as Triton answers, which every V2
//! client reads. The response parameters carry the prediction ids and the OOD verdicts: list
//! values as JSON text (an `InferParameter` holds one scalar), the threshold as a double.

use std::collections::HashMap;

use bytes::Bytes;

use super::pb::infer_parameter::ParameterChoice;
use super::pb::model_infer_request::InferInputTensor;
use super::pb::model_infer_response::InferOutputTensor;
use super::pb::{InferParameter, ModelInferRequest, ModelInferResponse};
use crate::serve::infer::{LoadedModel, Scored};
use crate::serve::kserve::{self, Batch, FeedbackParameters, OutputName, Plan, V2Error, raw};

fn bad(input: &str, reason: impl std::fmt::Display) -> V2Error {
    V2Error::BadRequest(format!("input {input:?}: {reason}"))
}

/// The request's one input, checked against the model, with its data from
/// `raw_input_contents` or from `contents`.
pub fn decode_input(model: &LoadedModel, req: &ModelInferRequest) -> Result<Batch, V2Error> {
    let input = kserve::single_input(&req.inputs)?;
    let plan = Plan::new(model, &input.name, &input.datatype, &input.shape)?;
    decode_data(&plan, input, &req.raw_input_contents)
}

/// The data of `input`, whose declaration is `plan`, from `raw` (the request's
/// `raw_input_contents`) or from the input's typed `contents`.
fn decode_data(plan: &Plan, input: &InferInputTensor, raw: &[Bytes]) -> Result<Batch, V2Error> {
    let name = input.name.as_str();
    let raw = match (raw, &input.contents) {
        ([], _) => None,
        ([raw], None) => Some(raw),
        ([_], Some(_)) => {
            return Err(bad(name, "data in both raw_input_contents and contents"));
        }
        (many, _) => {
            return Err(V2Error::BadRequest(format!(
                "raw_input_contents has {} entries for 1 input",
                many.len()
            )));
        }
    };
    let contents = input.contents.as_ref();
    match plan {
        Plan::Tensors { .. } => {
            let data = match raw {
                Some(raw) => raw::decode_fp32(raw, plan.elements()).map_err(|e| bad(name, e))?,
                None => finite(contents.map_or(&[][..], |c| &c.fp32_contents))
                    .map_err(|e| bad(name, e))?,
            };
            plan.tensors(name, data)
        }
        Plan::Images { .. } => {
            let images = match raw {
                Some(raw) => raw::decode_bytes(raw).map_err(|e| bad(name, e))?,
                None => contents.map_or_else(Vec::new, |c| c.bytes_contents.clone()),
            };
            plan.images(name, images)
        }
    }
}

/// Typed FP32 contents, refusing NaN and infinities (they would reach the model as such).
fn finite(values: &[f32]) -> Result<Vec<f32>, String> {
    match values.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(format!("element {i} is {}, not a finite number", values[i])),
        None => Ok(values.to_vec()),
    }
}

fn string_param(s: String) -> InferParameter {
    InferParameter {
        parameter_choice: Some(ParameterChoice::StringParam(s)),
    }
}

/// The response parameters: `prediction_ids`, `ood_scores` and `is_ood` as JSON arrays (one
/// entry per row), `ood_method` as a string and `ood_threshold` as a double (both absent
/// without an OOD section in the calibration file).
pub fn parameters(p: &FeedbackParameters<'_>) -> HashMap<String, InferParameter> {
    let json = |v: serde_json::Value| string_param(v.to_string());
    let mut out = HashMap::from([
        (
            "prediction_ids".to_string(),
            json(p.prediction_ids.clone().into()),
        ),
        ("ood_scores".to_string(), json(p.ood_scores.clone().into())),
        ("is_ood".to_string(), json(p.is_ood.clone().into())),
    ]);
    if let Some(m) = p.ood_method {
        out.insert("ood_method".into(), string_param(m.to_string()));
    }
    if let Some(t) = p.ood_threshold {
        out.insert(
            "ood_threshold".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::DoubleParam(t)),
            },
        );
    }
    out
}

/// The response: the requested outputs in raw form, in request order, and the parameters.
pub fn encode_response(
    model: &LoadedModel,
    id: String,
    wanted: &[OutputName],
    scored: &[Scored],
) -> ModelInferResponse {
    let (outputs, raw_output_contents) = wanted
        .iter()
        .map(|&w| {
            let t = kserve::output(w, scored);
            let meta = InferOutputTensor {
                name: w.as_str().to_string(),
                datatype: w.datatype().to_string(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                parameters: HashMap::new(),
                contents: None,
            };
            (meta, Bytes::from(t.data.to_raw()))
        })
        .unzip();
    ModelInferResponse {
        model_name: model.files.name.clone(),
        model_version: model.files.metadata.version.clone(),
        id,
        parameters: parameters(&FeedbackParameters::of(scored)),
        outputs,
        raw_output_contents,
    }
}

#[cfg(test)]
mod tests {
    use super::super::pb::InferTensorContents;
    use super::*;
    use crate::repository::InputSpec;

    fn spec() -> InputSpec {
        InputSpec {
            name: "input".into(),
            layout: "NCHW".into(),
            channels: 1,
            height: 2,
            width: 2,
            mean: vec![0.0],
            std: vec![1.0],
            resize: Default::default(),
            resize_shorter: None,
        }
    }

    fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            parameters: HashMap::new(),
            contents: None,
        }
    }

    fn decode(i: &InferInputTensor, raw: &[Bytes]) -> Result<Batch, V2Error> {
        let plan = Plan::check(&spec(), 8, &i.name, &i.datatype, &i.shape)?;
        decode_data(&plan, i, raw)
    }

    fn message(r: Result<Batch, V2Error>) -> String {
        match r {
            Err(V2Error::BadRequest(m)) => m,
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn raw_fp32_rows_are_split_per_image() {
        // What tritonclient sends for np.array([[[[1,2],[3,4]]],[[[5,6],[7,8]]]], float32).
        let values: Vec<f32> = (1..=8).map(|x| x as f32).collect();
        let raw = Bytes::from(raw::encode_fp32(&values));
        let Batch::Tensors(rows) = decode(&input("input", "FP32", &[2, 1, 2, 2]), &[raw]).unwrap()
        else {
            panic!("tensors expected")
        };
        assert_eq!(rows, [vec![1.0, 2.0, 3.0, 4.0], vec![5.0, 6.0, 7.0, 8.0]]);
    }

    #[test]
    fn typed_contents_work_too_and_must_be_finite() {
        let mut i = input("input", "FP32", &[1, 1, 2, 2]);
        i.contents = Some(InferTensorContents {
            fp32_contents: vec![0.5, 0.25, 0.0, 1.0],
            ..Default::default()
        });
        let Batch::Tensors(rows) = decode(&i, &[]).unwrap() else {
            panic!("tensors expected")
        };
        assert_eq!(rows, [vec![0.5, 0.25, 0.0, 1.0]]);
        i.contents.as_mut().unwrap().fp32_contents[2] = f32::NAN;
        assert!(message(decode(&i, &[])).contains("element 2 is NaN"));
        // Data in both places is ambiguous.
        let raw = Bytes::from(raw::encode_fp32(&[0.0; 4]));
        assert!(message(decode(&i, &[raw])).contains("both"));
    }

    #[test]
    fn sizes_and_shapes_are_checked_before_use() {
        let short = Bytes::from(raw::encode_fp32(&[0.0; 3]));
        let m = message(decode(&input("input", "FP32", &[1, 1, 2, 2]), &[short]));
        assert!(m.contains("12 bytes but 4 FP32 elements take 16"), "{m}");
        let m = message(decode(&input("input", "FP32", &[1, 3, 2, 2]), &[]));
        assert!(m.contains("is not [N, 1, 2, 2]"), "{m}");
        let m = message(decode(&input("input", "FP32", &[-1, 1, 2, 2]), &[]));
        assert!(m.contains("shape"), "{m}");
        let m = message(decode(&input("input", "FP32", &[0, 1, 2, 2]), &[]));
        assert!(m.contains("batch dimension is 0"), "{m}");
        let m = message(decode(&input("input", "FP32", &[1, 1, 2, 2]), &[]));
        assert!(m.contains("expected 4 values, got 0"), "{m}");
        let m = message(decode(&input("pixels", "INT8", &[1]), &[]));
        assert!(m.contains("expected FP32 \"input\""), "{m}");
        // More rows than the queue holds: refused whatever the data, before reading it.
        assert!(matches!(
            decode(&input("input", "FP32", &[9, 1, 2, 2]), &[]),
            Err(V2Error::TooManyImages(8))
        ));
        // A batch dimension whose element count wraps around 2^64 is malformed.
        let m = message(decode(&input("input", "FP32", &[i64::MAX, 1, 2, 2]), &[]));
        assert!(m.contains("too many elements"), "{m}");
        let two = [Bytes::new(), Bytes::new()];
        let m = message(decode(&input("input", "FP32", &[1, 1, 2, 2]), &two));
        assert!(m.contains("2 entries for 1 input"), "{m}");
    }

    #[test]
    fn bytes_inputs_are_encoded_images_in_the_length_prefixed_layout() {
        let pngs: [&[u8]; 2] = [b"\x89PNG one", b"\x89PNG two"];
        let raw = Bytes::from(raw::encode_bytes(pngs));
        let Batch::Images(images) =
            decode(&input("image", "BYTES", &[2]), std::slice::from_ref(&raw)).unwrap()
        else {
            panic!("images expected")
        };
        assert_eq!(images.iter().map(|b| &b[..]).collect::<Vec<_>>(), pngs);
        let m = message(decode(
            &input("image", "BYTES", &[3]),
            std::slice::from_ref(&raw),
        ));
        assert!(m.contains("shape [3] does not match 2 elements"), "{m}");
        let m = message(decode(&input("image", "BYTES", &[2]), &[raw.slice(..10)]));
        assert!(m.contains("declares"), "{m}");
        let mut typed = input("image", "BYTES", &[1]);
        typed.contents = Some(InferTensorContents {
            bytes_contents: vec![Bytes::from_static(b"img")],
            ..Default::default()
        });
        assert!(matches!(decode(&typed, &[]), Ok(Batch::Images(i)) if i.len() == 1));
    }

    #[test]
    fn response_parameters_carry_ids_and_ood_as_json_and_scalars() {
        let p = FeedbackParameters {
            prediction_ids: vec!["a.b", "c.d"],
            ood_method: Some("energy"),
            ood_threshold: Some(-3.5),
            ood_scores: vec![-4.0, 1.25],
            is_ood: vec![false, true],
        };
        let params = parameters(&p);
        let text = |k: &str| match &params[k].parameter_choice {
            Some(ParameterChoice::StringParam(s)) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(text("prediction_ids"), r#"["a.b","c.d"]"#);
        assert_eq!(text("ood_scores"), "[-4.0,1.25]");
        assert_eq!(text("is_ood"), "[false,true]");
        assert_eq!(text("ood_method"), "energy");
        assert_eq!(
            params["ood_threshold"].parameter_choice,
            Some(ParameterChoice::DoubleParam(-3.5))
        );
        // Without an OOD section: no method, no threshold, the lists still there.
        let none = FeedbackParameters {
            ood_method: None,
            ood_threshold: None,
            ..p
        };
        let params = parameters(&none);
        assert!(!params.contains_key("ood_method") && !params.contains_key("ood_threshold"));
        assert!(params.contains_key("prediction_ids"));
    }
}
