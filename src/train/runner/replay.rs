//! The training step replayed as captured CUDA graphs (`caliper-train --cuda-graph`): a second
//! session of the step graph with ONNX Runtime's CUDA graph capture, fixed-address device
//! tensors for the batch, the learning rate and the outputs, and one captured graph per state
//! binding of the [`Trainer`].

use ort::session::{IoBinding, RunOptions, Session};
use ort::value::Tensor;

use super::{
    Backend, RunError, StateMap, StepResult, Trainer, ort_err, scalar, session, state_allocator,
    state_to_vec,
};

/// The training step replayed as captured CUDA graphs.
///
/// Per step the ordinary session launches one kernel per node (about 2,000 for ResNet-20), and
/// that launch cost, not the arithmetic, is most of a ResNet-20 step on a large GPU. ONNX
/// Runtime's CUDA provider can capture a run as a CUDA graph and replay it with one launch, on
/// two conditions: every input and output stays at the same device address, and the shapes
/// never change. So this session has its own fixed device tensors for `x`, `y`, `lr` (and
/// `step`), `loss` and `logits`, the host batch is copied into them before each run, and one
/// graph is captured per state binding (graph ids 0 and 1: set 0 to set 1 and back). Batches of
/// another shape (the last, smaller batch of an epoch) go to the ordinary session, which shares
/// the state tensors.
pub(super) struct Replay {
    session: Session,
    bindings: [IoBinding; 2],
    runs: [RunOptions; 2],
    pub(super) x_shape: Vec<i64>,
    x: Tensor<f32>,
    y: Tensor<i64>,
    lr: Tensor<f32>,
    step: Option<Tensor<f32>>,
    loss: Tensor<f32>,
    logits: Tensor<f32>,
}

impl Replay {
    pub(super) fn new(
        bytes: &[u8],
        backend: Backend,
        [a, b]: [&mut StateMap; 2],
        x_shape: &[i64],
        classes: i64,
        needs_step: bool,
    ) -> Result<Self, RunError> {
        let session = session(bytes, backend.threads, backend.device, true)?;
        let alloc = state_allocator(&session, backend.device)?;
        let f32s = |shape: Vec<i64>| Tensor::<f32>::new(&alloc, shape).map_err(ort_err);
        let n = x_shape[0];
        let mut r = Replay {
            bindings: [
                Trainer::bind(&session, a, b)?,
                Trainer::bind(&session, b, a)?,
            ],
            runs: [
                RunOptions::new().map_err(ort_err)?,
                RunOptions::new().map_err(ort_err)?,
            ],
            x_shape: x_shape.to_vec(),
            x: f32s(x_shape.to_vec())?,
            y: Tensor::<i64>::new(&alloc, vec![n]).map_err(ort_err)?,
            lr: f32s(vec![])?,
            step: needs_step.then(|| f32s(vec![])).transpose()?,
            loss: f32s(vec![])?,
            logits: f32s(vec![n, classes])?,
            session,
        };
        for (id, (binding, run)) in r.bindings.iter_mut().zip(&mut r.runs).enumerate() {
            run.set("gpu_graph_id", id.to_string()).map_err(ort_err)?;
            binding.bind_input("x", &r.x).map_err(ort_err)?;
            binding.bind_input("y", &r.y).map_err(ort_err)?;
            binding.bind_input("lr", &r.lr).map_err(ort_err)?;
            if let Some(step) = &r.step {
                binding.bind_input("step", step).map_err(ort_err)?;
            }
            binding.bind_output("loss", &mut r.loss).map_err(ort_err)?;
            binding
                .bind_output("logits", &mut r.logits)
                .map_err(ort_err)?;
        }
        Ok(r)
    }

    pub(super) fn step(
        &mut self,
        current: usize,
        x: Vec<f32>,
        y: Vec<i64>,
        lr: f32,
        step: Option<f32>,
    ) -> Result<StepResult, RunError> {
        let n = y.len() as i64;
        let host_x = Tensor::from_array((self.x_shape.clone(), x)).map_err(ort_err)?;
        host_x.copy_into(&mut self.x).map_err(ort_err)?;
        let host_y = Tensor::from_array((vec![n], y)).map_err(ort_err)?;
        host_y.copy_into(&mut self.y).map_err(ort_err)?;
        scalar(lr)?.copy_into(&mut self.lr).map_err(ort_err)?;
        if let (Some(t), Some(v)) = (&mut self.step, step) {
            scalar(v)?.copy_into(t).map_err(ort_err)?;
        }
        self.session
            .run_binding_with_options(&self.bindings[current], &self.runs[current])
            .map_err(ort_err)?;
        Ok(StepResult {
            loss: state_to_vec(&self.loss)?[0],
            logits: state_to_vec(&self.logits)?,
        })
    }
}
