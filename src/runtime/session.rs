//! One ONNX Runtime session for an image classifier: built from a file with a bounded intra-op
//! thread count, fed an `[N, C, H, W]` f32 batch, answering the `[N, K]` logits and, when
//! `model.toml` names one ([`ClassifierSession::with_features`]), the `[N, D]` penultimate
//! features that the Mahalanobis OOD detector scores.
//!
//! On a CUDA device ([`ClassifierSession::open`]) the batch goes to the device in one copy per
//! run, from page-locked host memory through IoBinding (`super::binding`), and each output comes
//! back in one copy into page-locked memory after the last node.
//!
//! `Session::run` needs `&mut self` (ONNX Runtime internals are not thread safe), so a
//! [`ClassifierSession`] is meant to be owned by exactly one thread (see `infer::worker`).

use std::path::{Path, PathBuf};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionOutputs};
use ort::value::TensorRef;

use super::binding::HostBinding;
use super::{CudaOptions, Device, DeviceError, OrtLibraryError, environment};

/// Errors building or running a session.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The ONNX Runtime library itself is unavailable.
    #[error(transparent)]
    Library(#[from] OrtLibraryError),
    /// The session's device cannot be used (no GPU build of ONNX Runtime, no driver, no device).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The model file could not be turned into a session.
    #[error("{path}: cannot create an ONNX Runtime session: {reason}")]
    Load { path: PathBuf, reason: String },
    /// The model lacks an input or output named in its metadata.
    #[error("{path}: the model has no {kind} named {name:?} (it has: {available})")]
    MissingTensor {
        path: PathBuf,
        kind: &'static str,
        name: String,
        available: String,
    },
    /// The model's declared input shape contradicts `model.toml`.
    #[error("{path}: input {name:?} is declared {declared:?} but model.toml says [N, {c}, {h}, {w}]", c = expected[0], h = expected[1], w = expected[2])]
    InputShape {
        path: PathBuf,
        name: String,
        declared: Vec<i64>,
        expected: [usize; 3],
    },
    /// ONNX Runtime failed during `run`.
    #[error("inference failed: {0}")]
    Run(String),
    /// The logits output is not `[N, K]` for the batch that was fed.
    #[error("unexpected logits shape {got:?} for a batch of {batch}")]
    OutputShape { got: Vec<i64>, batch: usize },
    /// The features output is not `[N, ...]` for the batch that was fed.
    #[error("unexpected features shape {got:?} for a batch of {batch}")]
    FeatureShape { got: Vec<i64>, batch: usize },
}

/// The outputs of one batch, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutput {
    /// Logits `[N, K]`.
    pub logits: Vec<f32>,
    /// K.
    pub classes: usize,
    /// Features `[N, D]` (trailing dimensions flattened) and D, when the session fetches them.
    pub features: Option<(Vec<f32>, usize)>,
}

/// A session plus the names and shape it is fed with.
#[derive(Debug)]
pub struct ClassifierSession {
    session: Session,
    input_name: String,
    logits_name: String,
    /// The features output, when it is fetched.
    features_name: Option<String>,
    /// `[C, H, W]` of one image.
    image_shape: [usize; 3],
    /// The batch size the graph is fixed to, when its first dimension is not dynamic.
    fixed_batch: Option<usize>,
    /// The model file, for errors.
    path: PathBuf,
    /// Where it runs.
    device: Device,
    /// IoBinding from pinned host memory (CUDA); `None`: `Session::run` on the caller's slice.
    binding: Option<HostBinding>,
}

impl ClassifierSession {
    /// Builds a session for `path` whose input `input_name` takes `[N, C, H, W]` images and whose
    /// output `logits_name` is `[N, K]`. `intra_op_threads` bounds ONNX Runtime's own pool, so that
    /// several sessions share the cores instead of oversubscribing them.
    pub fn new(
        path: &Path,
        input_name: &str,
        logits_name: &str,
        image_shape: [usize; 3],
        intra_op_threads: usize,
    ) -> Result<Self, RuntimeError> {
        Self::open(
            path,
            input_name,
            logits_name,
            image_shape,
            intra_op_threads,
            Device::Cpu,
        )
    }

    /// Like [`new`](Self::new), on `device`. A CUDA device that cannot be used is a
    /// [`RuntimeError::Device`] (never a silent CPU session).
    pub fn open(
        path: &Path,
        input_name: &str,
        logits_name: &str,
        image_shape: [usize; 3],
        intra_op_threads: usize,
        device: Device,
    ) -> Result<Self, RuntimeError> {
        let env = environment()?;
        let load = |e: String| RuntimeError::Load {
            path: path.to_path_buf(),
            reason: e,
        };
        let builder = Session::builder(env)
            .map_err(|e| load(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load(e.to_string()))?
            .with_intra_threads(intra_op_threads)
            .map_err(|e| load(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| load(e.to_string()))?;
        // TF32 off: served logits are float32 like the CPU's, which the calibration was fitted
        // on (TF32 rounds convolution inputs to 10 mantissa bits, moving logits by ~1e-3).
        let cuda = CudaOptions {
            tf32: false,
            ..CudaOptions::default()
        };
        let session = super::place(builder, device, cuda)?
            .commit_from_file(path)
            .map_err(|e| {
                let reason = e.to_string();
                // The CUDA provider meets the device only when the session is created: a
                // missing or busy GPU surfaces here, and is a device error, not a model error.
                match (device, super::init_onnxruntime()) {
                    (Device::Cuda(_), Ok(lib)) if reason.contains("CUDA") => {
                        RuntimeError::Device(super::explain(device, lib, None, &reason))
                    }
                    _ => load(reason),
                }
            })?;
        let check = |kind: &'static str, name: &str, names: Vec<&str>| {
            if names.contains(&name) {
                Ok(())
            } else {
                Err(RuntimeError::MissingTensor {
                    path: path.to_path_buf(),
                    kind,
                    name: name.to_string(),
                    available: names.join(", "),
                })
            }
        };
        check(
            "input",
            input_name,
            session.inputs().iter().map(|o| o.name()).collect(),
        )?;
        check(
            "output",
            logits_name,
            session.outputs().iter().map(|o| o.name()).collect(),
        )?;
        let fixed_batch = check_input_shape(&session, path, input_name, image_shape)?;
        let binding = match device {
            Device::Cpu => None,
            Device::Cuda(_) => match HostBinding::new(&session, true) {
                Ok(b) => Some(b),
                Err(e) => {
                    // Still correct, only slower: the copies go through pageable memory.
                    tracing::warn!(error = %e, "no pinned host memory; feeding the GPU with Session::run");
                    None
                }
            },
        };
        Ok(Self {
            binding,
            session,
            fixed_batch,
            input_name: input_name.to_string(),
            logits_name: logits_name.to_string(),
            features_name: None,
            image_shape,
            path: path.to_path_buf(),
            device,
        })
    }

    /// Where the session runs.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Also fetch the output `name` (penultimate features, `[N, D]` or `[N, D, 1, 1]`) on every
    /// run. Errors when the graph has no such output. Without this, runs copy only the logits.
    pub fn with_features(mut self, name: &str) -> Result<Self, RuntimeError> {
        let names: Vec<&str> = self.session.outputs().iter().map(|o| o.name()).collect();
        if !names.contains(&name) {
            return Err(RuntimeError::MissingTensor {
                path: self.path.clone(),
                kind: "output",
                name: name.to_string(),
                available: names.join(", "),
            });
        }
        self.features_name = Some(name.to_string());
        Ok(self)
    }

    /// The batch size the graph accepts when it is fixed (`None`: any batch size).
    pub fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    /// Number of f32 values in one image.
    pub fn image_len(&self) -> usize {
        self.image_shape.iter().product()
    }

    /// Runs a batch of `input.len() / image_len()` images laid out contiguously, returning the
    /// logits row-major and the class count K.
    pub fn run(&mut self, input: &[f32]) -> Result<(Vec<f32>, usize), RuntimeError> {
        let out = self.run_outputs(input)?;
        Ok((out.logits, out.classes))
    }

    /// Like [`run`](Self::run), plus the features when [`with_features`](Self::with_features)
    /// named them.
    pub fn run_outputs(&mut self, input: &[f32]) -> Result<BatchOutput, RuntimeError> {
        let per = self.image_len();
        let batch = input.len() / per;
        debug_assert_eq!(batch * per, input.len(), "caller passes whole images");
        let [c, h, w] = self.image_shape;
        let run_err = |e: ort::Error| RuntimeError::Run(e.to_string());
        let names = Names {
            logits: &self.logits_name,
            features: self.features_name.as_deref(),
        };
        match &mut self.binding {
            Some(b) => {
                let mut outputs = vec![names.logits];
                outputs.extend(names.features);
                let bound = b
                    .bind(&self.input_name, [batch, c, h, w], input, &outputs)
                    .map_err(run_err)?;
                let out = self.session.run_binding(bound).map_err(run_err)?;
                collect(&out, &names, batch)
            }
            None => {
                let tensor =
                    TensorRef::from_array_view(([batch, c, h, w], input)).map_err(run_err)?;
                let out = self
                    .session
                    .run(ort::inputs![self.input_name.as_str() => tensor])
                    .map_err(run_err)?;
                collect(&out, &names, batch)
            }
        }
    }

    /// Feeds this session through IoBinding from ONNX Runtime's plain host allocator: the
    /// CUDA path's code on the CPU, for the tests.
    #[cfg(test)]
    fn with_host_binding(mut self) -> Self {
        self.binding = Some(HostBinding::new(&self.session, false).unwrap());
        self
    }
}

/// The output names a run fetches.
struct Names<'a> {
    logits: &'a str,
    features: Option<&'a str>,
}

/// Copies the logits (and features) of a run of `batch` images out of ONNX Runtime, checking
/// their shapes.
fn collect(
    out: &SessionOutputs<'_>,
    names: &Names<'_>,
    batch: usize,
) -> Result<BatchOutput, RuntimeError> {
    let extract = |name: &str| {
        out[name]
            .try_extract_tensor::<f32>()
            .map(|(shape, data)| (shape.iter().copied().collect::<Vec<i64>>(), data))
            .map_err(|e| RuntimeError::Run(e.to_string()))
    };
    let (dims, data) = extract(names.logits)?;
    let (logits, classes) = match dims.as_slice() {
        [n, k] if *n as usize == batch && *k > 0 => (data.to_vec(), *k as usize),
        _ => return Err(RuntimeError::OutputShape { got: dims, batch }),
    };
    let features = match names.features {
        None => None,
        Some(name) => {
            let (dims, data) = extract(name)?;
            // [N, D] or [N, D, 1, 1] (a pooled convolution): flatten what follows N.
            let d: i64 = dims.iter().skip(1).product();
            if dims.len() < 2 || dims[0] as usize != batch || d <= 0 {
                return Err(RuntimeError::FeatureShape { got: dims, batch });
            }
            Some((data.to_vec(), d as usize))
        }
    };
    Ok(BatchOutput {
        logits,
        classes,
        features,
    })
}

/// Compares the graph's declared input shape (where it is static) with the metadata, so that a
/// mismatch is a clear load-time error instead of a failure on every request. Returns the fixed
/// batch size, if the first dimension is static.
fn check_input_shape(
    session: &Session,
    path: &Path,
    name: &str,
    expected: [usize; 3],
) -> Result<Option<usize>, RuntimeError> {
    let Some(shape) = session
        .inputs()
        .iter()
        .find(|o| o.name() == name)
        .and_then(|o| o.dtype().tensor_shape())
    else {
        return Ok(None);
    };
    let dims: Vec<i64> = shape.iter().copied().collect();
    let static_ok = dims.len() == 4
        && dims[1..]
            .iter()
            .zip(expected)
            .all(|(&d, e)| d <= 0 || d as usize == e);
    if !static_ok {
        return Err(RuntimeError::InputShape {
            path: path.to_path_buf(),
            name: name.to_string(),
            declared: dims,
            expected,
        });
    }
    Ok((dims[0] > 0).then_some(dims[0] as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/mnist-mlp/model.onnx")
    }

    #[test]
    fn runs_a_batch_and_reports_k() {
        let mut s = ClassifierSession::new(&fixture(), "input", "logits", [1, 28, 28], 1).unwrap();
        let (logits, k) = s.run(&vec![0.0; 3 * 784]).unwrap();
        assert_eq!(k, 10);
        assert_eq!(logits.len(), 30);
        // Identical images give identical rows.
        assert_eq!(logits[..10], logits[10..20]);
    }

    #[test]
    fn fetches_features_only_when_asked() {
        let mut s = ClassifierSession::new(&fixture(), "input", "logits", [1, 28, 28], 1).unwrap();
        let plain = s.run_outputs(&vec![0.5; 2 * 784]).unwrap();
        assert_eq!(plain.features, None);
        let mut s = s.with_features("features").unwrap();
        let out = s.run_outputs(&vec![0.5; 2 * 784]).unwrap();
        assert_eq!(out.logits, plain.logits);
        let (f, d) = out.features.unwrap();
        // The fixture MLP is 784-32-10: its penultimate layer has 32 units.
        assert_eq!((f.len(), d), (2 * 32, 32));
        assert_eq!(f[..32], f[32..]);
        let s = ClassifierSession::new(&fixture(), "input", "logits", [1, 28, 28], 1).unwrap();
        let e = s.with_features("penultimate").unwrap_err();
        assert!(e.to_string().contains("\"penultimate\""), "{e}");
    }

    #[test]
    fn the_bound_path_answers_what_run_answers() {
        let open = || {
            ClassifierSession::new(&fixture(), "input", "logits", [1, 28, 28], 1)
                .unwrap()
                .with_features("features")
                .unwrap()
        };
        let (mut plain, mut bound) = (open(), open().with_host_binding());
        // Several batch sizes, each twice, and back: the kept tensors are reused and rebound.
        for n in [3usize, 1, 3, 8, 1] {
            let x: Vec<f32> = (0..n * 784)
                .map(|i| ((i * 7919) % 255) as f32 / 255.0)
                .collect();
            assert_eq!(
                bound.run_outputs(&x).unwrap(),
                plain.run_outputs(&x).unwrap(),
                "batch {n}"
            );
        }
    }

    #[test]
    fn names_missing_tensors_and_files() {
        assert_eq!(
            ClassifierSession::new(&fixture(), "input", "logits", [1, 28, 28], 1)
                .unwrap()
                .fixed_batch(),
            None
        );
        let e = ClassifierSession::new(&fixture(), "input", "logits", [3, 28, 28], 1).unwrap_err();
        assert!(matches!(e, RuntimeError::InputShape { .. }), "{e}");
        let e = ClassifierSession::new(&fixture(), "pixels", "logits", [1, 28, 28], 1).unwrap_err();
        assert!(e.to_string().contains("\"pixels\""), "{e}");
        let e = ClassifierSession::new(
            Path::new("/nonexistent.onnx"),
            "input",
            "logits",
            [1, 1, 1],
            1,
        )
        .unwrap_err();
        assert!(matches!(e, RuntimeError::Load { .. }));
    }
}
