//! ONNX Runtime: finding and loading the shared library, and the sessions that run models. This
//! is the only place besides the trainer's graph runner that touches `ort`.

mod binding;
pub mod cuda;
mod device;
mod library;
pub mod onnx_proto;
mod session;

pub use device::{CudaOptions, Device, DeviceError, explain, place, probe};
pub use library::{
    OrtLibraryError, TELEMETRY_OPT_OUT_VAR, built_for_cuda, environment, init_onnxruntime,
    opt_out_of_telemetry, resolve_library_path,
};
pub use session::{BatchOutput, ClassifierSession, RuntimeError, to_channels_first};
