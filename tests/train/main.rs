//! The trainer's integration tests, one binary: every layer's gradients (`gradients`), the
//! NCHWc lowering (`nchwc`), a short real MNIST run with export and resume (`mnist`) and
//! `caliper-train --val-split` on PneumoniaMNIST (`val_split`), and an export that cannot fail
//! late (`export_checks`).

mod export_checks;
mod gradients;
mod mnist;
mod nchwc;
mod val_split;
