//! `caliper predict`.

/// Arguments of `caliper predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {}

/// Runs `caliper predict`.
pub fn run(_args: PredictArgs) -> anyhow::Result<()> {
    anyhow::bail!("`caliper predict` is not implemented yet")
}
