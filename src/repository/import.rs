//! `caliper import`: a third-party ONNX classifier into the repository as `models/<name>/` with a
//! complete `model.toml`. The input name, layout and size come from the graph (what the server
//! cannot feed is refused with the reason), the labels from a file checked against the output
//! width, the preprocessing from a preset or flags, the provenance from the source file.
//!
//! A penultimate-features output (for Mahalanobis and other feature-based OOD scores) is added
//! when asked, by appending a second `graph` record that holds only the new output: protobuf
//! merges repeated occurrences of a message field, so the original bytes stay untouched (the
//! subset of ONNX types in `runtime::onnx_proto` would drop fields if the model were re-encoded).
//!
//! Nothing is written in place: the files go to a temporary folder beside the target, the model
//! runs once there on a blank batch, and the folder is renamed into place. See docs/IMPORT.md.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use prost::Message;
use sha2::{Digest, Sha256};

use super::metadata::{
    InputSpec, METADATA_SCHEMA_VERSION, ModelMetadata, OutputSpec, Provenance, ResizePolicy,
};
use super::scan::validate_name;
use crate::runtime::ClassifierSession;
use crate::runtime::onnx_proto::{
    DT_FLOAT, DimValue, GraphProto, ModelProto, NodeProto, TypeProto, TypeProtoTensor,
    ValueInfoProto,
};

/// Errors importing a model. Each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Not an ONNX model.
    #[error("{path}: not an ONNX model: {reason}")]
    NotOnnx { path: String, reason: String },
    /// The graph is one the server cannot feed or read; the reason says why.
    #[error("cannot serve this model: {0}")]
    Unservable(String),
    /// The labels file is malformed or does not match the model.
    #[error("labels: {0}")]
    Labels(String),
    /// Invalid options (preprocessing, names).
    #[error("{0}")]
    Options(String),
    /// The blank-batch check failed in ONNX Runtime.
    #[error("the model does not run: {0}")]
    Run(String),
    /// The target folder already exists.
    #[error("{0} already exists: remove it first or choose another --name")]
    Exists(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// How pixels are prepared: the `[input]` fields of `model.toml` that the graph cannot tell.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    /// Per-channel mean after scaling to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation after scaling to [0, 1].
    pub std: Vec<f32>,
    /// Resize policy.
    pub resize: ResizePolicy,
    /// Shorter side before the centre crop.
    pub resize_shorter: Option<u32>,
}

/// The names [`Preprocessing::preset`] knows.
pub const PRESETS: [&str; 3] = ["imagenet", "inception", "raw255"];

impl Preprocessing {
    /// A named preset (docs/IMPORT.md lists them and what each sets).
    pub fn preset(name: &str) -> Result<Self, ImportError> {
        match name {
            // torchvision's ImageNet evaluation transform: Resize(256), CenterCrop(224), Normalize.
            "imagenet" => Ok(Self {
                mean: vec![0.485, 0.456, 0.406],
                std: vec![0.229, 0.224, 0.225],
                resize: ResizePolicy::CenterCrop,
                resize_shorter: Some(256),
            }),
            // Keras/TensorFlow "tf" mode (Inception, MobileNet, EfficientNetV2 without its
            // built-in rescaling): x / 127.5 - 1, i.e. [-1, 1]; the image stretched to the input.
            "inception" => Ok(Self {
                mean: vec![0.5; 3],
                std: vec![0.5; 3],
                resize: ResizePolicy::Stretch,
                resize_shorter: None,
            }),
            // Graphs that rescale inside (Keras EfficientNet, ConvNeXt, many TF Hub exports) take
            // raw 0..255 pixels: (x / 255 - 0) / (1 / 255) = x.
            "raw255" => Ok(Self {
                mean: vec![0.0; 3],
                std: vec![1.0 / 255.0; 3],
                resize: ResizePolicy::Stretch,
                resize_shorter: None,
            }),
            other => Err(ImportError::Options(format!(
                "unknown preset {other:?} (known: {})",
                PRESETS.join(", ")
            ))),
        }
    }
}

/// Which tensor becomes the `features` output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FeatureChoice {
    /// No features output (Mahalanobis unavailable).
    #[default]
    None,
    /// The input of the final Gemm/MatMul before the logits.
    Auto,
    /// A tensor named in the graph.
    Tensor(String),
}

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The ONNX file.
    pub source: PathBuf,
    /// The model name (folder under `models_dir`).
    pub name: String,
    /// Class labels in output order.
    pub labels: Vec<String>,
    /// The repository.
    pub models_dir: PathBuf,
    /// Pixel preparation.
    pub preprocessing: Preprocessing,
    /// `(height, width)`, needed when the graph leaves them dynamic.
    pub input_size: Option<(usize, usize)>,
    /// The logits tensor; default: the graph's only output.
    pub logits: Option<String>,
    /// The features output.
    pub features: FeatureChoice,
    /// `version` in `model.toml`.
    pub version: String,
    /// The command line, recorded in the provenance.
    pub command: String,
}

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct Imported {
    /// `models_dir/name`.
    pub dir: PathBuf,
    /// The `model.toml` written.
    pub metadata: ModelMetadata,
    /// Width of the features output, when there is one.
    pub features_dim: Option<usize>,
    /// Outputs added to the graph.
    pub added_outputs: Vec<String>,
    /// Choices the import made that the user did not spell out (printed by the CLI).
    pub notes: Vec<String>,
}

/// Reads labels: a JSON array of strings, or one label per line (trailing blank lines ignored).
/// Labels must be non-empty and unique (feedback and label files name classes by label).
pub fn read_labels(path: &Path) -> Result<Vec<String>, ImportError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let labels: Vec<String> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).map_err(|e| {
            ImportError::Labels(format!(
                "{}: not a JSON array of strings: {e}",
                path.display()
            ))
        })?
    } else {
        let mut lines: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
        while lines.last().is_some_and(String::is_empty) {
            lines.pop();
        }
        lines
    };
    if let Some(i) = labels.iter().position(|l| l.trim().is_empty()) {
        return Err(ImportError::Labels(format!(
            "{}: label {i} is empty",
            path.display()
        )));
    }
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dups = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        if let Some(j) = first.insert(l, i) {
            dups.push(format!("{l:?} at {j} and {i}"));
        }
    }
    if !dups.is_empty() {
        let more = dups.len().saturating_sub(3);
        dups.truncate(3);
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        return Err(ImportError::Labels(format!(
            "{}: labels must be unique: {}{tail}",
            path.display(),
            dups.join(", ")
        )));
    }
    Ok(labels)
}

/// The facts about a graph that `model.toml` needs.
#[derive(Debug, Clone, PartialEq)]
struct GraphFacts {
    input: String,
    /// The input is `[N, H, W, C]`.
    channels_last: bool,
    channels: usize,
    size: (Option<usize>, Option<usize>),
    outputs: Vec<String>,
    nodes: Vec<NodeProto>,
    initializers: HashSet<String>,
}

const ELEM_TYPES: [(i32, &str); 8] = [
    (2, "uint8"),
    (3, "int8"),
    (6, "int32"),
    (7, "int64"),
    (9, "bool"),
    (10, "float16"),
    (11, "double"),
    (16, "bfloat16"),
];

fn dim(d: &crate::runtime::onnx_proto::Dimension) -> Option<usize> {
    match d.value {
        Some(DimValue::DimValue(v)) if v > 0 => Some(v as usize),
        _ => None,
    }
}

/// Reads the graph and refuses inputs the server cannot feed (it feeds one `[N, C, H, W]` f32
/// tensor with C = 1 or 3).
fn graph_facts(model: ModelProto) -> Result<GraphFacts, ImportError> {
    let graph = model
        .graph
        .ok_or_else(|| ImportError::Unservable("the model has no graph".into()))?;
    let initializers: HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    // Older exporters also list the weights as graph inputs.
    let inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(&i.name))
        .collect();
    let input = match inputs.as_slice() {
        [one] => *one,
        [] => return Err(ImportError::Unservable("the graph has no input".into())),
        many => {
            let names: Vec<&str> = many.iter().map(|i| i.name.as_str()).collect();
            return Err(ImportError::Unservable(format!(
                "the graph has {} inputs ({}); caliper feeds one image tensor",
                many.len(),
                names.join(", ")
            )));
        }
    };
    let tensor = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| {
            ImportError::Unservable(format!("input {:?} is not a tensor", input.name))
        })?;
    if tensor.elem_type != DT_FLOAT {
        let ty = ELEM_TYPES
            .iter()
            .find(|(t, _)| *t == tensor.elem_type)
            .map_or_else(
                || format!("type {}", tensor.elem_type),
                |(_, n)| (*n).to_string(),
            );
        return Err(ImportError::Unservable(format!(
            "input {:?} is {ty}; caliper feeds float32 pixels (re-export the model with a float \
             input, casting inside the graph if needed)",
            input.name
        )));
    }
    let dims: Vec<Option<usize>> = tensor
        .shape
        .as_ref()
        .map(|s| s.dim.iter().map(dim).collect())
        .unwrap_or_default();
    let shown = || {
        let d: Vec<String> = dims
            .iter()
            .map(|d| d.map_or_else(|| "?".to_string(), |v| v.to_string()))
            .collect();
        format!("[{}]", d.join(", "))
    };
    if dims.len() != 4 {
        return Err(ImportError::Unservable(format!(
            "input {:?} has shape {}; caliper serves image classifiers with a 4-D [N, C, H, W] \
             input",
            input.name,
            shown()
        )));
    }
    // Channels first (PyTorch) when dimension 1 holds 1 or 3; else channels last (Keras, TF).
    let is_channels = |d: Option<usize>| matches!(d, Some(1 | 3));
    let channels_last = match (is_channels(dims[1]), is_channels(dims[3])) {
        (true, _) => false,
        (false, true) => true,
        (false, false) => {
            return Err(ImportError::Unservable(format!(
                "input {:?} has shape {}: it needs 1 (grayscale) or 3 (RGB) channels in \
                 dimension 1 (NCHW) or 3 (NHWC)",
                input.name,
                shown()
            )));
        }
    };
    let (c, h, w) = if channels_last { (3, 1, 2) } else { (1, 2, 3) };
    Ok(GraphFacts {
        input: input.name.clone(),
        channels_last,
        channels: dims[c].unwrap_or(0),
        size: (dims[h], dims[w]),
        outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
        nodes: graph.node,
        initializers,
    })
}

impl GraphFacts {
    fn producer(&self, tensor: &str) -> Option<&NodeProto> {
        self.nodes
            .iter()
            .find(|n| n.output.iter().any(|o| o == tensor))
    }

    fn has_tensor(&self, name: &str) -> bool {
        name == self.input || self.producer(name).is_some()
    }

    /// The input of the last Gemm/MatMul before `logits`, walking back through ops that keep the
    /// class axis (bias Add, Flatten, Reshape, Squeeze, Identity, Dropout).
    fn final_dense_input(&self, logits: &str) -> Result<String, ImportError> {
        let mut at = logits.to_string();
        for _ in 0..16 {
            let Some(node) = self.producer(&at) else {
                break;
            };
            match node.op_type.as_str() {
                "Gemm" | "MatMul" => return Ok(node.input[0].clone()),
                "Add" | "Flatten" | "Reshape" | "Squeeze" | "Identity" | "Dropout" => {
                    // Of an Add, follow the operand that is not a weight.
                    let next = node
                        .input
                        .iter()
                        .find(|i| !self.initializers.contains(*i) && self.producer(i).is_some());
                    match next {
                        Some(n) => at = n.clone(),
                        None => break,
                    }
                }
                other => {
                    return Err(ImportError::Unservable(format!(
                        "--features auto: {at:?} comes from a {other} node, not from a final \
                         Gemm/MatMul; name the penultimate tensor with --features NAME"
                    )));
                }
            }
        }
        Err(ImportError::Unservable(format!(
            "--features auto: found no Gemm/MatMul before {logits:?}; name the penultimate \
             tensor with --features NAME"
        )))
    }
}

/// The bytes that, appended to a serialized `ModelProto`, add `names` as float graph outputs of
/// unknown shape (ONNX Runtime infers it).
fn appended_outputs(names: &[String]) -> Vec<u8> {
    let output = names
        .iter()
        .map(|n| ValueInfoProto {
            name: n.clone(),
            r#type: Some(TypeProto {
                tensor_type: Some(TypeProtoTensor {
                    elem_type: DT_FLOAT,
                    shape: None,
                }),
            }),
            doc_string: String::new(),
        })
        .collect();
    ModelProto {
        graph: Some(GraphProto {
            output,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Removes the temporary folder unless disarmed.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Imports `opts.source` as `opts.models_dir/opts.name`. See the module docs.
pub fn import(opts: &ImportOptions) -> Result<Imported, ImportError> {
    validate_name(&opts.name).map_err(|e| ImportError::Options(e.to_string()))?;
    let target = opts.models_dir.join(&opts.name);
    if target.exists() {
        return Err(ImportError::Exists(target.display().to_string()));
    }
    let bytes = std::fs::read(&opts.source).map_err(io(&opts.source))?;
    let source_sha256 = hex::encode(Sha256::digest(&bytes));
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| ImportError::NotOnnx {
        path: opts.source.display().to_string(),
        reason: e.to_string(),
    })?;
    let facts = graph_facts(model)?;

    let (height, width) = match (facts.size, opts.input_size) {
        ((Some(h), Some(w)), None) => (h, w),
        ((Some(h), Some(w)), Some(given)) if given == (h, w) => (h, w),
        ((Some(h), Some(w)), Some((gh, gw))) => {
            return Err(ImportError::Options(format!(
                "--input-size {gh},{gw} contradicts the graph's fixed {h}x{w}"
            )));
        }
        (_, Some(given)) => given,
        (_, None) => {
            return Err(ImportError::Unservable(format!(
                "input {:?} has a dynamic height or width; give the size the model was trained \
                 at with --input-size H,W",
                facts.input
            )));
        }
    };

    // A channel-uniform preset (inception, raw255) fits grayscale models too.
    let mut p = opts.preprocessing.clone();
    for v in [&mut p.mean, &mut p.std] {
        if v.len() > 1 && v.iter().all(|x| *x == v[0]) {
            v.resize(facts.channels, v[0]);
            v.truncate(facts.channels);
        }
    }
    let p = &p;
    if p.mean.len() != facts.channels || p.std.len() != facts.channels {
        return Err(ImportError::Options(format!(
            "the model takes {} channel(s) but the preprocessing gives {} mean and {} std values",
            facts.channels,
            p.mean.len(),
            p.std.len()
        )));
    }

    let mut notes = Vec::new();
    let logits = match (&opts.logits, facts.outputs.as_slice()) {
        (Some(name), _) => name.clone(),
        // A final Softmax (Keras' default head) gives probabilities; serving them as logits
        // would apply softmax twice. Its input is the logits.
        (None, [one]) => match facts.producer(one) {
            Some(node) if node.op_type == "Softmax" && facts.has_tensor(&node.input[0]) => {
                notes.push(format!(
                    "output {one:?} is a Softmax (probabilities): serving its input {:?} as the \
                     logits (pass --logits to choose another tensor)",
                    node.input[0]
                ));
                node.input[0].clone()
            }
            _ => one.clone(),
        },
        (None, many) => {
            return Err(ImportError::Options(format!(
                "the graph has {} outputs ({}); say which are the logits with --logits NAME",
                many.len(),
                many.join(", ")
            )));
        }
    };
    if !facts.has_tensor(&logits) {
        return Err(ImportError::Options(format!(
            "--logits {logits:?}: the graph has no such tensor"
        )));
    }
    if let Some(node) = facts.producer(&logits)
        && node.op_type == "Softmax"
    {
        return Err(ImportError::Unservable(format!(
            "output {logits:?} is a Softmax (probabilities); caliper needs the logits before \
             it: add --logits {:?}",
            node.input[0]
        )));
    }
    let features = match &opts.features {
        FeatureChoice::None => None,
        FeatureChoice::Auto => Some(facts.final_dense_input(&logits)?),
        FeatureChoice::Tensor(name) if facts.has_tensor(name) => Some(name.clone()),
        FeatureChoice::Tensor(name) => {
            return Err(ImportError::Options(format!(
                "--features {name:?}: the graph has no such tensor"
            )));
        }
    };
    let added: Vec<String> = std::iter::once(&logits)
        .chain(features.as_ref())
        .filter(|n| !facts.outputs.contains(n))
        .cloned()
        .collect();
    let mut out_bytes = bytes;
    if !added.is_empty() {
        out_bytes.extend(appended_outputs(&added));
    }

    std::fs::create_dir_all(&opts.models_dir).map_err(io(&opts.models_dir))?;
    // '~' is not valid in a model name, so the server never lists this folder.
    let tmp_path = opts
        .models_dir
        .join(format!(".import~{}~{}", opts.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp_path);
    std::fs::create_dir(&tmp_path).map_err(io(&tmp_path))?;
    let mut tmp = TempDir(Some(tmp_path.clone()));
    let onnx_path = tmp_path.join("model.onnx");
    std::fs::write(&onnx_path, &out_bytes).map_err(io(&onnx_path))?;
    let sha256 = hex::encode(Sha256::digest(&out_bytes));

    let layout = if facts.channels_last { "NHWC" } else { "NCHW" };
    let features_dim = blank_run(
        &onnx_path,
        &facts.input,
        &logits,
        features.as_deref(),
        ([facts.channels, height, width], facts.channels_last),
        opts.labels.len(),
    )?;

    let metadata = ModelMetadata {
        schema_version: METADATA_SCHEMA_VERSION,
        version: opts.version.clone(),
        labels: opts.labels.clone(),
        device: None,
        input: InputSpec {
            name: facts.input.clone(),
            layout: layout.into(),
            channels: facts.channels,
            height,
            width,
            mean: p.mean.clone(),
            std: p.std.clone(),
            resize: p.resize,
            resize_shorter: p.resize_shorter,
        },
        output: OutputSpec { logits, features },
        provenance: Provenance {
            sha256,
            arch: "imported".into(),
            command: opts.command.clone(),
            source: opts.source.display().to_string(),
            source_sha256,
            ..Default::default()
        },
    };
    metadata
        .validate()
        .map_err(|reason| ImportError::Options(format!("invalid preprocessing: {reason}")))?;
    metadata
        .save(&tmp_path.join("model.toml"))
        .map_err(|e| ImportError::Options(e.to_string()))?;
    std::fs::rename(&tmp_path, &target).map_err(io(&target))?;
    tmp.0 = None;
    Ok(Imported {
        dir: target,
        metadata,
        features_dim,
        added_outputs: added,
        notes,
    })
}

/// Runs the model once on a batch of zeros; checks the logits width against the labels and
/// returns the features width.
fn blank_run(
    path: &Path,
    input: &str,
    logits: &str,
    features: Option<&str>,
    (shape, channels_last): ([usize; 3], bool),
    labels: usize,
) -> Result<Option<usize>, ImportError> {
    let run = |e: crate::runtime::RuntimeError| ImportError::Run(e.to_string());
    let mut session = ClassifierSession::new(path, input, logits, shape, 1)
        .and_then(|s| s.channels_last(channels_last))
        .map_err(run)?;
    if let Some(f) = features {
        session = session.with_features(f).map_err(run)?;
    }
    let batch = session.fixed_batch().unwrap_or(1);
    let out = session
        .run_outputs(&vec![0.0; batch * session.image_len()])
        .map_err(run)?;
    if out.classes != labels {
        return Err(ImportError::Labels(format!(
            "{labels} labels for {} outputs: the labels file must list one label per output, in \
             output order",
            out.classes
        )));
    }
    if out.logits.iter().any(|v| !v.is_finite()) {
        return Err(ImportError::Run(
            "non-finite logits on a blank batch".into(),
        ));
    }
    Ok(out.features.map(|(_, d)| d))
}

#[cfg(test)]
mod tests;
