//! Running the graphs on ONNX Runtime: the training-step session whose parameters and optimizer
//! state stay ONNX Runtime tensors on the training device between steps (IoBinding: each step's
//! `next.*` outputs are written into the tensors the next step reads), and the inference session
//! used for validation.

mod replay;

use replay::Replay;

use std::borrow::Cow;
use std::collections::BTreeMap;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::value::{DynValue, Tensor};
use rand::Rng;

use super::layers::Init;
use super::step::{NEXT, StateSpec, StepGraph};

/// Errors from ONNX Runtime while training.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The library could not be loaded.
    #[error(transparent)]
    Library(#[from] crate::runtime::OrtLibraryError),
    /// ONNX Runtime refused the graph or failed to run it.
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    /// The requested device is not available.
    #[error("device {0}")]
    Device(String),
    /// A checkpoint does not fit the graph.
    #[error("state mismatch: {0}")]
    State(String),
}

pub(super) fn ort_err<E: std::fmt::Display>(e: E) -> RunError {
    RunError::Ort(e.to_string())
}

/// Where the graphs run (shared with the server: `cpu` or `cuda:N`).
pub use crate::runtime::Device;

/// Where and how the training step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// The training device.
    pub device: Device,
    /// Intra-op threads.
    pub threads: usize,
    /// Replay full-size batches as captured CUDA graphs (`replay::Replay`; CUDA only).
    pub cuda_graph: bool,
}

/// Builds a session for `bytes` with `threads` intra-op threads on `device`; `cuda_graph` turns
/// on ONNX Runtime's CUDA graph capture (see `replay::Replay`). On the CPU the convolutions are
/// first lowered onto ONNX Runtime's NCHWc kernels (`nchwc`).
pub fn session(
    bytes: &[u8],
    threads: usize,
    device: Device,
    cuda_graph: bool,
) -> Result<Session, RunError> {
    open(
        bytes,
        SessionOptions {
            cuda_graph,
            ..SessionOptions::new(threads, device)
        },
    )
}

/// How [`open`] builds a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Intra-op threads.
    pub threads: usize,
    /// Where it runs.
    pub device: Device,
    /// ONNX Runtime's CUDA graph capture (see `replay::Replay`).
    pub cuda_graph: bool,
    /// CUDA's TF32 math for convolutions and MatMuls (ONNX Runtime's default; off, a CUDA step
    /// computes in float32 like the CPU: `caliper-train check-step`).
    pub tf32: bool,
    /// The NCHWc lowering on the CPU (off: the graph runs exactly as written, the reference the
    /// lowering is tested against).
    pub lower: bool,
}

impl SessionOptions {
    /// What training uses: no capture, TF32 on, the CPU lowering on.
    pub fn new(threads: usize, device: Device) -> Self {
        SessionOptions {
            threads,
            device,
            cuda_graph: false,
            tf32: true,
            lower: true,
        }
    }
}

/// Builds a session for `bytes` as `o` says.
pub fn open(bytes: &[u8], o: SessionOptions) -> Result<Session, RunError> {
    if let (true, Device::Cpu, Some(block)) = (o.lower, o.device, super::nchwc::block_size()) {
        let (lowered, n) = super::nchwc::lower(bytes, block).map_err(ort_err)?;
        if n > 0 {
            match build(&lowered, o) {
                Ok(session) => return Ok(session),
                // An ONNX Runtime that refuses a lowered node still trains, on the graph as
                // written (slower); the warning says why.
                Err(e) => tracing::warn!(
                    error = %e,
                    "ONNX Runtime refused the NCHWc-lowered graph; running it as written"
                ),
            }
        }
    }
    build(bytes, o)
}

fn build(bytes: &[u8], o: SessionOptions) -> Result<Session, RunError> {
    let SessionOptions {
        threads,
        device,
        cuda_graph,
        tf32,
        ..
    } = o;
    let env = crate::runtime::environment()?;
    let mut b = Session::builder(env)
        .map_err(ort_err)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(ort_err)?
        .with_intra_threads(threads)
        .map_err(ort_err)?
        // No busy-waiting between ops unless CALIPER_ORT_SPIN is set: on a shared CPU spinning
        // threads steal the cores the other intra-op thread (and other processes) need.
        .with_intra_op_spinning(std::env::var_os("CALIPER_ORT_SPIN").is_some())
        .map_err(ort_err)?;
    // Opt-in ONNX Runtime profile (a JSON trace of every node's time, written when the session
    // ends) for finding where a step goes; see docs/BENCHMARKS.md.
    if let Some(prefix) = std::env::var_os("CALIPER_ORT_PROFILE") {
        b = b.with_profiling(prefix).map_err(ort_err)?;
    }
    // Registration fails (instead of silently falling back to the CPU) when the loaded ONNX
    // Runtime has no CUDA provider or the provider cannot load; the error is one line saying
    // what is missing (`runtime::explain`).
    let cuda = crate::runtime::CudaOptions { cuda_graph, tf32 };
    b = crate::runtime::place(b, device, cuda).map_err(|e| RunError::Device(e.to_string()))?;
    b.commit_from_memory(bytes).map_err(ort_err)
}

/// Initial values for a state tensor.
pub fn init_values(spec: &StateSpec, rng: &mut impl Rng) -> Vec<f32> {
    let n = spec.spec.numel();
    match spec.spec.init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::HeUniform { fan_in } => {
            let b = (6.0 / fan_in as f64).sqrt() as f32;
            (0..n).map(|_| rng.random_range(-b..b)).collect()
        }
        Init::LinearDefault { fan_in } => {
            let b = (1.0 / fan_in as f64).sqrt() as f32;
            (0..n).map(|_| rng.random_range(-b..b)).collect()
        }
    }
}

fn tensor(shape: &[i64], data: Vec<f32>) -> Result<DynValue, RunError> {
    Ok(Tensor::from_array((shape.to_vec(), data))
        .map_err(ort_err)?
        .into_dyn())
}

/// Copies a float value out of ONNX Runtime.
pub fn to_vec(v: &DynValue) -> Result<Vec<f32>, RunError> {
    Ok(v.try_extract_tensor::<f32>().map_err(ort_err)?.1.to_vec())
}

/// Named state tensors (parameters, optimizer state, BatchNorm buffers), wherever they live.
pub type StateMap = BTreeMap<String, Tensor<f32>>;

/// Copies a state tensor to the host (a device tensor goes through a device-to-host copy).
pub(super) fn state_to_vec(t: &Tensor<f32>) -> Result<Vec<f32>, RunError> {
    if t.memory_info().is_cpu_accessible() {
        return Ok(t.extract_tensor().1.to_vec());
    }
    let host = t.to(AllocationDevice::CPU, 0).map_err(ort_err)?;
    Ok(host.extract_tensor().1.to_vec())
}

/// A state tensor from `allocator` (on the training device) holding `values`.
fn state_tensor(
    allocator: &Allocator,
    shape: &[i64],
    values: &[f32],
) -> Result<Tensor<f32>, RunError> {
    let mut t = Tensor::<f32>::new(allocator, shape.to_vec()).map_err(ort_err)?;
    if t.memory_info().is_cpu_accessible() {
        t.extract_tensor_mut().1.copy_from_slice(values);
    } else {
        let host = Tensor::from_array((shape.to_vec(), values.to_vec())).map_err(ort_err)?;
        host.copy_into(&mut t).map_err(ort_err)?;
    }
    Ok(t)
}

/// The allocator for state tensors on `device`, from `session`.
pub(super) fn state_allocator(session: &Session, device: Device) -> Result<Allocator, RunError> {
    let (dev, id) = match device {
        Device::Cpu => (AllocationDevice::CPU, 0),
        Device::Cuda(n) => (AllocationDevice::CUDA, n),
    };
    let info =
        MemoryInfo::new(dev, id, AllocatorType::Device, MemoryType::Default).map_err(ort_err)?;
    Allocator::new(session, info).map_err(ort_err)
}

/// What one step returned.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Mean loss.
    pub loss: f32,
    /// Logits `[N * K]`, row-major.
    pub logits: Vec<f32>,
}

/// The training-step session and its state.
///
/// The state lives in two sets of tensors on the training device, bound to the session once
/// (IoBinding): a step reads one set and writes its `next.*` outputs into the other, then the
/// roles swap. Parameters and optimizer state therefore never leave the device between steps;
/// per step only the batch goes in and the loss and logits come out. Two sets, not one updated
/// in place, because a step still reads a parameter (in the backward pass) after its update
/// may have been computed.
pub struct Trainer {
    session: Session,
    specs: Vec<StateSpec>,
    sets: [StateMap; 2],
    bindings: [IoBinding; 2],
    /// Which set holds the current state.
    current: usize,
    host_output: MemoryInfo<'static>,
    needs_step: bool,
    /// CUDA graph replay, when asked for.
    capture: Capture,
    /// Updates done so far (AdamW's `step` input is this plus one).
    pub updates: u64,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("state", &self.specs.len())
            .field("updates", &self.updates)
            .finish()
    }
}

impl Trainer {
    /// A session for `graph` with freshly initialised state from `rng`.
    pub fn new(graph: &StepGraph, backend: Backend, rng: &mut impl Rng) -> Result<Self, RunError> {
        let values = graph
            .state
            .iter()
            .map(|s| (s.spec.name.clone(), init_values(s, rng)))
            .collect();
        Self::with_values(graph, backend, values)
    }

    /// A session for `graph` with the given state (a checkpoint).
    pub fn with_values(
        graph: &StepGraph,
        backend: Backend,
        values: BTreeMap<String, Vec<f32>>,
    ) -> Result<Self, RunError> {
        let Backend {
            device, threads, ..
        } = backend;
        let session = session(&graph.bytes, threads, device, false)?;
        let allocator = state_allocator(&session, device)?;
        let (mut live, mut spare) = (StateMap::new(), StateMap::new());
        for s in &graph.state {
            let v = values
                .get(&s.spec.name)
                .ok_or_else(|| RunError::State(format!("no value for {}", s.spec.name)))?;
            if v.len() != s.spec.numel() {
                return Err(RunError::State(format!(
                    "{} has {} values, the graph wants {:?}",
                    s.spec.name,
                    v.len(),
                    s.spec.shape
                )));
            }
            live.insert(
                s.spec.name.clone(),
                state_tensor(&allocator, &s.spec.shape, v)?,
            );
            let empty = Tensor::<f32>::new(&allocator, s.spec.shape.clone()).map_err(ort_err)?;
            spare.insert(s.spec.name.clone(), empty);
        }
        let bindings = [
            Self::bind(&session, &live, &mut spare)?,
            Self::bind(&session, &spare, &mut live)?,
        ];
        let sets = [live, spare];
        let host_output = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::CPUOutput,
        )
        .map_err(ort_err)?;
        let capture = match (backend.cuda_graph, device) {
            (false, _) => Capture::Off,
            (true, Device::Cuda(_)) => Capture::Pending {
                bytes: graph.bytes.clone(),
                backend,
                classes: graph.classes,
            },
            (true, Device::Cpu) => {
                return Err(RunError::Device(
                    "CUDA graphs need a CUDA device (--device cuda:N)".into(),
                ));
            }
        };
        Ok(Trainer {
            session,
            specs: graph.state.clone(),
            sets,
            bindings,
            current: 0,
            host_output,
            needs_step: graph.needs_step,
            capture,
            updates: 0,
        })
    }

    /// A binding that reads the state from `from` and writes the updated state into `to`.
    pub(super) fn bind(
        session: &Session,
        from: &StateMap,
        to: &mut StateMap,
    ) -> Result<IoBinding, RunError> {
        let mut b = session.create_binding().map_err(ort_err)?;
        for (name, v) in from {
            b.bind_input(name.as_str(), v).map_err(ort_err)?;
        }
        for (name, v) in to.iter_mut() {
            // The binding keeps a handle on `v`'s memory and the step writes into it.
            b.bind_output(format!("{NEXT}{name}"), v).map_err(ort_err)?;
        }
        Ok(b)
    }

    /// One step on a batch: `x` row-major `[n, ...input]`, `y` labels.
    pub fn step(
        &mut self,
        x: Vec<f32>,
        x_shape: &[i64],
        y: Vec<i64>,
        lr: f32,
    ) -> Result<StepResult, RunError> {
        let step = self.needs_step.then_some((self.updates + 1) as f32);
        if let Capture::Pending {
            bytes,
            backend,
            classes,
        } = &self.capture
        {
            // The first batch fixes the shape the CUDA graphs are captured for.
            let [a, b] = &mut self.sets;
            let r = Replay::new(bytes, *backend, [a, b], x_shape, *classes, step.is_some())?;
            self.capture = Capture::Ready(Box::new(r));
        }
        let result = match &mut self.capture {
            Capture::Ready(r) if r.x_shape == x_shape => r.step(self.current, x, y, lr, step)?,
            _ => self.plain_step(x, x_shape, y, lr, step)?,
        };
        self.current ^= 1;
        self.updates += 1;
        Ok(result)
    }

    /// A step on the ordinary session (any batch size).
    fn plain_step(
        &mut self,
        x: Vec<f32>,
        x_shape: &[i64],
        y: Vec<i64>,
        lr: f32,
        step: Option<f32>,
    ) -> Result<StepResult, RunError> {
        let n = y.len() as i64;
        let b = &mut self.bindings[self.current];
        b.bind_input("x", &tensor(x_shape, x)?).map_err(ort_err)?;
        b.bind_input("y", &Tensor::from_array((vec![n], y)).map_err(ort_err)?)
            .map_err(ort_err)?;
        b.bind_input("lr", &scalar(lr)?).map_err(ort_err)?;
        if let Some(step) = step {
            b.bind_input("step", &scalar(step)?).map_err(ort_err)?;
        }
        // Rebound every step: the last batch of an epoch may be smaller, and an output bound to
        // a device keeps the previous run's buffer (and shape) otherwise.
        for out in ["loss", "logits"] {
            b.bind_output_to_device(out, &self.host_output)
                .map_err(ort_err)?;
        }
        let out = self.session.run_binding(b).map_err(ort_err)?;
        let get = |k: &str| {
            out.get(k)
                .ok_or_else(|| RunError::Ort(format!("no {k} output")))
                .and_then(to_vec)
        };
        Ok(StepResult {
            loss: get("loss")?[0],
            logits: get("logits")?,
        })
    }

    /// Copies every state tensor out (for checkpoints and export).
    pub fn values(&self) -> Result<BTreeMap<String, Vec<f32>>, RunError> {
        self.state()
            .iter()
            .map(|(k, v)| Ok((k.clone(), state_to_vec(v)?)))
            .collect()
    }

    /// The live state values, for feeding the inference session without a copy.
    pub fn state(&self) -> &StateMap {
        &self.sets[self.current]
    }
}

/// A float scalar tensor on the host.
pub(super) fn scalar(v: f32) -> Result<Tensor<f32>, RunError> {
    Tensor::from_array((Vec::<i64>::new(), vec![v])).map_err(ort_err)
}

/// Whether and how far the CUDA graph replay of a [`Trainer`] is set up.
enum Capture {
    /// Not asked for.
    Off,
    /// Asked for; set up on the first step, whose batch shape it needs.
    Pending {
        bytes: Vec<u8>,
        backend: Backend,
        classes: i64,
    },
    /// Replaying batches of one shape.
    Ready(Box<Replay>),
}

/// The inference graph with weights as inputs: evaluates the live training state.
pub struct Evaluator {
    session: Session,
    names: Vec<String>,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("weights", &self.names.len())
            .finish()
    }
}

impl Evaluator {
    /// A session for an inference graph whose weights `names` are inputs.
    pub fn new(
        bytes: &[u8],
        names: Vec<String>,
        threads: usize,
        device: Device,
    ) -> Result<Self, RunError> {
        Ok(Evaluator {
            session: session(bytes, threads, device, false)?,
            names,
        })
    }

    /// Logits `[n * K]` and features `[n * D]` of a batch, with weights from `state`.
    pub fn run(
        &mut self,
        x: Vec<f32>,
        x_shape: &[i64],
        state: &StateMap,
    ) -> Result<(Vec<f32>, Vec<f32>), RunError> {
        let xv = tensor(x_shape, x)?;
        let mut inputs: Vec<(Cow<str>, SessionInputValue)> = vec![("input".into(), (&xv).into())];
        for name in &self.names {
            let v = state
                .get(name)
                .ok_or_else(|| RunError::State(format!("no weight {name}")))?;
            inputs.push((Cow::Borrowed(name.as_str()), v.into()));
        }
        let out = self.session.run(inputs).map_err(ort_err)?;
        let get = |k: &str| {
            out.get(k)
                .ok_or_else(|| RunError::Ort(format!("no {k} output")))
                .and_then(to_vec)
        };
        Ok((get("logits")?, get("features")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_cuda_without_a_gpu_build_is_a_clear_error() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda:1".parse::<Device>(), Ok(Device::Cuda(1)));
        assert!("gpu".parse::<Device>().is_err() && "cuda:x".parse::<Device>().is_err());
        // The bundled library is the CPU build (and this machine has no GPU): registering CUDA
        // must fail loudly, not fall back.
        let err = session(b"", 1, Device::Cuda(0), false).unwrap_err();
        assert!(
            matches!(&err, RunError::Device(m) if m.starts_with("cuda:0: ")),
            "{err}"
        );
    }

    #[test]
    fn cuda_graphs_on_the_cpu_are_refused_not_ignored() {
        use crate::train::{arch::Net, loss::Loss, optim::Optimizer, step::training_step};
        use rand::SeedableRng;
        let net = Net::new("linear", &[4], 3, 1.0).unwrap();
        let opt = Optimizer::Sgd {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        };
        let graph = training_step(&net, Loss::Ce, &opt, false);
        let backend = Backend {
            device: Device::Cpu,
            threads: 1,
            cuda_graph: true,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let err = Trainer::new(&graph, backend, &mut rng).unwrap_err();
        assert!(
            matches!(&err, RunError::Device(m) if m.contains("CUDA graphs need a CUDA device")),
            "{err}"
        );
    }
}
