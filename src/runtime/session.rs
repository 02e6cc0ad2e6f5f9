//! One ONNX Runtime session for an image classifier: built from a file with a bounded intra-op
//! thread count, fed an `[N, C, H, W]` f32 batch, answering the `[N, K]` logits.
//!
//! `Session::run` needs `&mut self` (ONNX Runtime internals are not thread safe), so a
//! [`ClassifierSession`] is meant to be owned by exactly one thread (see `infer::worker`).

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::{OrtLibraryError, environment};

/// Errors building or running a session.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The ONNX Runtime library itself is unavailable.
    #[error(transparent)]
    Library(#[from] OrtLibraryError),
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
    /// ONNX Runtime failed during `run`.
    #[error("inference failed: {0}")]
    Run(String),
    /// The logits output is not `[N, K]` for the batch that was fed.
    #[error("unexpected logits shape {got:?} for a batch of {batch}")]
    OutputShape { got: Vec<i64>, batch: usize },
}

/// A session plus the names and shape it is fed with.
#[derive(Debug)]
pub struct ClassifierSession {
    session: Session,
    input_name: String,
    logits_name: String,
    /// `[C, H, W]` of one image.
    image_shape: [usize; 3],
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
        let env = environment()?;
        let load = |e: String| RuntimeError::Load {
            path: path.to_path_buf(),
            reason: e,
        };
        let session = Session::builder(env)
            .map_err(|e| load(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load(e.to_string()))?
            .with_intra_threads(intra_op_threads)
            .map_err(|e| load(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| load(e.to_string()))?
            .commit_from_file(path)
            .map_err(|e| load(e.to_string()))?;
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
        Ok(Self {
            session,
            input_name: input_name.to_string(),
            logits_name: logits_name.to_string(),
            image_shape,
        })
    }

    /// Number of f32 values in one image.
    pub fn image_len(&self) -> usize {
        self.image_shape.iter().product()
    }

    /// Runs a batch of `input.len() / image_len()` images laid out contiguously, returning the
    /// logits row-major and the class count K.
    pub fn run(&mut self, input: &[f32]) -> Result<(Vec<f32>, usize), RuntimeError> {
        let per = self.image_len();
        let batch = input.len() / per;
        debug_assert_eq!(batch * per, input.len(), "caller passes whole images");
        let [c, h, w] = self.image_shape;
        let tensor = TensorRef::from_array_view(([batch, c, h, w], input))
            .map_err(|e| RuntimeError::Run(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => tensor])
            .map_err(|e| RuntimeError::Run(e.to_string()))?;
        let (shape, data) = outputs[self.logits_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| RuntimeError::Run(e.to_string()))?;
        let dims: Vec<i64> = shape.iter().copied().collect();
        match dims.as_slice() {
            [n, k] if *n as usize == batch && *k > 0 => Ok((data.to_vec(), *k as usize)),
            _ => Err(RuntimeError::OutputShape { got: dims, batch }),
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
    fn names_missing_tensors_and_files() {
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
