//! The trainer: an ONNX graph builder whose layers emit forward and backward nodes, the losses,
//! optimizers, the training loop on ONNX Runtime and the export to the model repository.
//!
//! Training runs as ordinary ONNX graphs of standard operators (see `docs/METHOD.md#training-on-onnx-runtime`: no
//! training-enabled ONNX Runtime is reachable): [`step::training_step`] builds one graph per
//! configuration that does forward, loss, backward and the optimizer update, and
//! [`runner::Trainer`] runs it with the parameters kept as ONNX Runtime values on the training
//! device (on CUDA optionally replayed as captured CUDA graphs, `replay`).

pub mod arch;
pub mod bench;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod export;
pub mod fit;
pub mod graph;
pub mod layers;
pub mod loss;
pub mod nchwc;
pub mod optim;

pub mod runner;
pub mod schedule;
pub mod step;
