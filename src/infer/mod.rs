//! The request path below HTTP: admission, image preprocessing, the per-model queue and dynamic
//! batcher, and turning logits into calibrated predictions.
