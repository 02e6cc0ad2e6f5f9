//! Feeding a CUDA session through IoBinding from page-locked host memory.
//!
//! Why: with `Session::run`, ONNX Runtime copies the batch from the caller's pageable memory,
//! which the driver stages through a bounce buffer, and copies the outputs back the same way.
//! Here each batch is written once into a tensor that ONNX Runtime's CUDA provider allocated as
//! pinned (`CudaPinned`) host memory, bound as the input (one DMA copy to the device per run),
//! and the outputs are bound to pinned memory too (one copy back per output), read in place.
//! The input tensors are kept per batch size (the server runs a handful: `padded_sizes`), so
//! nothing is allocated per batch.
//!
//! The same code runs on the CPU with ONNX Runtime's plain host allocator (`pinned = false`),
//! which is how it is tested without a GPU: the answers must equal `Session::run`'s.

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::Tensor;

/// Input tensors kept, one per batch size; beyond this the least recently used is dropped.
const KEPT_SIZES: usize = 16;

/// An IoBinding and the host tensors it binds.
#[derive(Debug)]
pub(super) struct HostBinding {
    binding: IoBinding,
    allocator: Allocator,
    output: MemoryInfo<'static>,
    /// `(batch size, tensor)`, most recently used last.
    inputs: Vec<(usize, Tensor<f32>)>,
}

impl HostBinding {
    /// A binding for `session`: host memory from the CUDA provider's pinned allocator when
    /// `pinned`, else ONNX Runtime's CPU allocator.
    pub(super) fn new(session: &Session, pinned: bool) -> ort::Result<Self> {
        let device = if pinned {
            AllocationDevice::CUDA_PINNED
        } else {
            AllocationDevice::CPU
        };
        let input_info = if pinned {
            MemoryInfo::new(
                device.clone(),
                0,
                AllocatorType::Device,
                MemoryType::CPUInput,
            )?
        } else {
            MemoryInfo::new(
                device.clone(),
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )?
        };
        Ok(HostBinding {
            binding: session.create_binding()?,
            allocator: Allocator::new(session, input_info)?,
            output: MemoryInfo::new(device, 0, AllocatorType::Device, MemoryType::CPUOutput)?,
            inputs: Vec::new(),
        })
    }

    /// Copies `data` (shape `[n, c, h, w]`, or `[n, h, w, c]` for a channels-last graph) into the host tensor for batch size `n`, binds it as
    /// `input` and binds every name of `outputs` to host memory. Run the session on the binding
    /// returned.
    pub(super) fn bind(
        &mut self,
        input: &str,
        shape: [usize; 4],
        data: &[f32],
        outputs: &[&str],
    ) -> ort::Result<&IoBinding> {
        let n = shape[0];
        let at = match self.inputs.iter().position(|(size, _)| *size == n) {
            Some(i) => i,
            None => {
                if self.inputs.len() == KEPT_SIZES {
                    self.inputs.remove(0);
                }
                let t = Tensor::<f32>::new(&self.allocator, shape.map(|d| d as i64).to_vec())?;
                self.inputs.push((n, t));
                self.inputs.len() - 1
            }
        };
        let entry = self.inputs.remove(at);
        self.inputs.push(entry);
        let tensor = &mut self.inputs.last_mut().expect("just pushed").1;
        tensor.extract_tensor_mut().1.copy_from_slice(data);
        self.binding.bind_input(input, &*tensor)?;
        // Rebound every run: an output bound to memory keeps the previous run's shape otherwise.
        for name in outputs {
            self.binding.bind_output_to_device(*name, &self.output)?;
        }
        Ok(&self.binding)
    }
}
