//! ONNX Runtime: finding and loading the shared library, and the sessions that run models. This
//! is the only place besides the trainer's graph runner that touches `ort`.

mod library;
pub mod onnx_proto;
mod session;

pub use library::{OrtLibraryError, environment, init_onnxruntime, resolve_library_path};
pub use session::{BatchOutput, ClassifierSession, RuntimeError, to_channels_first};
