//! One ONNX Runtime session for an image classifier: built from a file with a bounded intra-op
//! thread count, fed an `[N, C, H, W]` f32 batch (transposed here to `[N, H, W, C]` for a
//! channels-last graph, [`ClassifierSession::channels_last`]), answering the `[N, K]` logits and, when
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
    #[error("{path}: input {name:?} is declared {declared:?} but model.toml says {expected}")]
    InputShape {
        path: PathBuf,
        name: String,
        declared: Vec<i64>,
        /// The shape model.toml implies, e.g. `[N, 3, 224, 224]`.
        expected: String,
    },
    /// ONNX Runtime failed during `run`.
    #[error("inference failed: {0}")]
    Run(String),
    /// The logits output is not `[N, K]` (or `[N, K, 1, 1]`) for the batch that was fed.
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
    /// The graph takes `[N, H, W, C]`: `run` transposes each `[C, H, W]` image into `scratch`.
    channels_last: bool,
    /// The graph's declared input dimensions (`<= 0`: dynamic), when it declares them.
    declared: Option<Vec<i64>>,
    /// Reused buffer for the channels-last transpose.
    scratch: Vec<f32>,
    /// The batch size the graph is fixed to, when its first dimension is not dynamic.
    fixed_batch: Option<usize>,
    /// The model file, for errors.
    path: PathBuf,
    /// Where it runs.
    device: Device,
    /// IoBinding from pinned host memory (CUDA); `None`: `Session::run` on the caller's slice.
    binding: Option<HostBinding>,
    /// Sessions of their own for some batch sizes ([`ClassifierSession::dedicate_size`]).
    sized: Vec<SizedSession>,
    /// The intra-op thread bound, for the sessions of `sized`.
    intra_op_threads: usize,
}

/// A session that only ever runs batches of `size` images.
#[derive(Debug)]
struct SizedSession {
    size: usize,
    session: Session,
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
        let session = commit(path, intra_op_threads, device)?;
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
        let declared = declared_input(&session, input_name);
        let binding = host_binding(&session, device);
        let mut s = Self {
            binding,
            session,
            sized: Vec::new(),
            intra_op_threads,
            fixed_batch: None,
            input_name: input_name.to_string(),
            logits_name: logits_name.to_string(),
            features_name: None,
            image_shape,
            channels_last: false,
            declared,
            scratch: Vec::new(),
            path: path.to_path_buf(),
            device,
        };
        // A graph whose declared shape only fits channels-last is fed that way; model.toml's
        // layout then confirms it (`channels_last`).
        s.fixed_batch = match s.check_input_shape() {
            Ok(b) => b,
            Err(e) => {
                s.channels_last = true;
                s.check_input_shape().map_err(|_| e)?
            }
        };
        Ok(s)
    }

    /// Gives batches of `size` images a session of its own on this device; any other batch
    /// runs on the first session. Why (CUDA): ONNX Runtime's cuDNN convolutions set themselves
    /// up again whenever their input shape differs from their previous run's, which cost far
    /// more than the run itself on an H200 even with every shape warmed up: a server whose
    /// batch sizes varied from run to run (ResNet-20, 64 clients) took 80-315 ms per run of ~20
    /// images against 0.5-0.7 ms for one, 169 requests/s; with a session per size 0.71 ms per
    /// run of 17.5 images, 37,385 requests/s (HEURISTIC algorithm search instead: 47 ms;
    /// docs/BENCHMARKS.md, CUDA serving, session 25). A session per size never sees its shape
    /// change. Costs the size's own copy of the weights and memory arena.
    pub fn dedicate_size(&mut self, size: usize) -> Result<(), RuntimeError> {
        if self.sized.iter().any(|s| s.size == size) {
            return Ok(());
        }
        let session = commit(&self.path, self.intra_op_threads, self.device)?;
        let binding = host_binding(&session, self.device);
        self.sized.push(SizedSession {
            size,
            session,
            binding,
        });
        Ok(())
    }

    /// Drops the session of its own that batches of `size` had (their memory with it): they run
    /// on the first session again.
    pub fn release_size(&mut self, size: usize) {
        self.sized.retain(|s| s.size != size);
    }

    /// Feed the graph `[N, H, W, C]` (model.toml's `layout = "NHWC"`, what Keras and TensorFlow
    /// export) or `[N, C, H, W]`: callers always pass `[C, H, W]` images and `run` transposes
    /// them. Errors when the graph's declared shape contradicts that layout.
    pub fn channels_last(mut self, yes: bool) -> Result<Self, RuntimeError> {
        self.channels_last = yes;
        self.fixed_batch = self.check_input_shape()?;
        Ok(self)
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
        let (shape, input) = if self.channels_last {
            to_channels_last(input, self.image_shape, &mut self.scratch);
            ([batch, h, w, c], self.scratch.as_slice())
        } else {
            ([batch, c, h, w], input)
        };
        let (session, binding) = match self.sized.iter_mut().find(|s| s.size == batch) {
            Some(s) => (&mut s.session, s.binding.as_mut()),
            None => (&mut self.session, self.binding.as_mut()),
        };
        match binding {
            Some(b) => {
                let mut outputs = vec![names.logits];
                outputs.extend(names.features);
                let bound = b
                    .bind(&self.input_name, shape, input, &outputs)
                    .map_err(run_err)?;
                let out = session.run_binding(bound).map_err(run_err)?;
                collect(&out, &names, batch)
            }
            None => {
                let tensor = TensorRef::from_array_view((shape, input)).map_err(run_err)?;
                let out = session
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

/// An ONNX Runtime session for the model at `path` on `device`: every optimisation, at most
/// `intra_op_threads` threads of its own, and on CUDA the device's errors explained.
fn commit(path: &Path, intra_op_threads: usize, device: Device) -> Result<Session, RuntimeError> {
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
    Ok(session)
}

/// IoBinding from pinned host memory for a CUDA session (`None` on the CPU).
fn host_binding(session: &Session, device: Device) -> Option<HostBinding> {
    match device {
        Device::Cpu => None,
        Device::Cuda(_) => match HostBinding::new(session, true) {
            Ok(b) => Some(b),
            Err(e) => {
                // Still correct, only slower: the copies go through pageable memory.
                tracing::warn!(error = %e, "no pinned host memory; feeding the GPU with Session::run");
                None
            }
        },
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
    // [N, K], or [N, K, 1, 1] from graphs that end in a 1x1 convolution or a global pool
    // (SqueezeNet, Caffe2 exports): trailing unit dimensions change nothing.
    let (logits, classes) = match dims.as_slice() {
        [n, k, rest @ ..] if *n as usize == batch && *k > 0 && rest.iter().all(|&d| d == 1) => {
            (data.to_vec(), *k as usize)
        }
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

/// The declared dimensions of input `name` (`<= 0` where dynamic), if the graph declares them.
fn declared_input(session: &Session, name: &str) -> Option<Vec<i64>> {
    session
        .inputs()
        .iter()
        .find(|o| o.name() == name)
        .and_then(|o| o.dtype().tensor_shape())
        .map(|shape| shape.iter().copied().collect())
}

impl ClassifierSession {
    /// Compares the graph's declared input shape (where it is static) with the metadata's, in
    /// this session's layout, so that a mismatch is a clear load-time error instead of a failure
    /// on every request. Returns the fixed batch size, if the first dimension is static.
    fn check_input_shape(&self) -> Result<Option<usize>, RuntimeError> {
        let Some(dims) = &self.declared else {
            return Ok(None);
        };
        let [c, h, w] = self.image_shape;
        let (expected, shown) = if self.channels_last {
            ([h, w, c], format!("[N, {h}, {w}, {c}] (NHWC)"))
        } else {
            ([c, h, w], format!("[N, {c}, {h}, {w}]"))
        };
        let static_ok = dims.len() == 4
            && dims[1..]
                .iter()
                .zip(expected)
                .all(|(&d, e)| d <= 0 || d as usize == e);
        if !static_ok {
            return Err(RuntimeError::InputShape {
                path: self.path.clone(),
                name: self.input_name.clone(),
                declared: dims.clone(),
                expected: shown,
            });
        }
        Ok((dims[0] > 0).then_some(dims[0] as usize))
    }
}

/// One `[H, W, C]` image (a channels-last client tensor) as `[C, H, W]`, the layout every
/// preprocessed image has inside caliper.
pub fn to_channels_first(image: &[f32], [h, w, c]: [usize; 3]) -> Vec<f32> {
    let plane = h * w;
    let mut out = vec![0.0; image.len()];
    for (p, pixel) in image.chunks_exact(c).enumerate().take(plane) {
        for (ch, &v) in pixel.iter().enumerate() {
            out[ch * plane + p] = v;
        }
    }
    out
}

/// Writes the `[C, H, W]` images of `input` as `[H, W, C]` into `out`.
fn to_channels_last(input: &[f32], [c, h, w]: [usize; 3], out: &mut Vec<f32>) {
    let plane = h * w;
    out.clear();
    out.resize(input.len(), 0.0);
    for (src, dst) in input
        .chunks_exact(c * plane)
        .zip(out.chunks_exact_mut(c * plane))
    {
        for (ch, channel) in src.chunks_exact(plane).enumerate() {
            for (p, &v) in channel.iter().enumerate() {
                dst[p * c + ch] = v;
            }
        }
    }
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

    /// The test graph with its features fetched.
    fn with_features() -> ClassifierSession {
        ClassifierSession::new(&fixture(), "input", "logits", [1, 28, 28], 1)
            .unwrap()
            .with_features("features")
            .unwrap()
    }

    /// Runs batches of each of `sizes` on both sessions and compares their outputs.
    fn assert_same_answers(a: &mut ClassifierSession, b: &mut ClassifierSession, sizes: &[usize]) {
        for &n in sizes {
            let x: Vec<f32> = (0..n * 784)
                .map(|i| ((i * 7919) % 255) as f32 / 255.0)
                .collect();
            assert_eq!(
                a.run_outputs(&x).unwrap(),
                b.run_outputs(&x).unwrap(),
                "batch {n}"
            );
        }
    }

    #[test]
    fn the_bound_path_answers_what_run_answers() {
        let (mut plain, mut bound) = (with_features(), with_features().with_host_binding());
        // Several batch sizes, each twice, and back: the kept tensors are reused and rebound.
        assert_same_answers(&mut bound, &mut plain, &[3, 1, 3, 8, 1]);
    }

    #[test]
    fn a_batch_of_a_dedicated_size_runs_on_its_own_session_with_the_same_answers() {
        let (mut plain, mut sized) = (with_features(), with_features());
        for n in [2, 8, 2, 4] {
            sized.dedicate_size(n).unwrap();
        }
        let sizes = |s: &ClassifierSession| s.sized.iter().map(|s| s.size).collect::<Vec<_>>();
        assert_eq!(sizes(&sized), [2, 8, 4]);
        assert_same_answers(&mut sized, &mut plain, &[2, 1, 8, 3, 2, 4]);
        sized.release_size(8);
        assert_eq!(sizes(&sized), [2, 4]);
        assert_same_answers(&mut sized, &mut plain, &[8, 2]);
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

    #[test]
    fn transposes_images_to_channels_last() {
        // Two 2-channel 1x3 images: channel planes [a0 a1 a2][b0 b1 b2] become pixel-major.
        let input = [1., 2., 3., 10., 20., 30., 4., 5., 6., 40., 50., 60.];
        let mut out = Vec::new();
        to_channels_last(&input, [2, 1, 3], &mut out);
        assert_eq!(out, [1., 10., 2., 20., 3., 30., 4., 40., 5., 50., 6., 60.]);
        assert_eq!(to_channels_first(&out[..6], [1, 3, 2]), input[..6]);
    }

    #[test]
    fn checks_the_declared_shape_in_the_chosen_layout() {
        // The fixture declares [N, 1, 28, 28]: as channels-last it would need [N, 28, 28, 1].
        let s = ClassifierSession::new(&fixture(), "input", "logits", [1, 28, 28], 1).unwrap();
        let e = s.channels_last(true).unwrap_err();
        assert!(e.to_string().contains("[N, 28, 28, 1] (NHWC)"), "{e}");
    }
}
