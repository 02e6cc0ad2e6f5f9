//! The `caliper` subcommands. Each submodule owns its clap arguments and a `run` function;
//! `src/main.rs` only dispatches.

pub mod calibrate;
pub mod eval;
pub mod eval_ood;
pub mod model_logits;
pub mod npy;
pub mod predict;
pub mod serve;
