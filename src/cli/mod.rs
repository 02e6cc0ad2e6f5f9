//! The subcommands of both binaries: `caliper` (serve, predict, calibrate, eval, eval-ood, import, monitor) and
//! `caliper-train` (`train`). Each submodule owns its clap arguments and a `run` function; the
//! binaries only dispatch.

pub mod calibrate;
pub mod eval;
pub mod eval_ood;
pub mod import;
pub mod input;
pub mod model_logits;
pub mod monitor;
pub mod predict;
pub mod serve;
pub mod train;
