//! The trainer: an ONNX graph builder whose layers emit forward and backward nodes, the losses,
//! optimizers, the training loop on ONNX Runtime and the export to the model repository.
