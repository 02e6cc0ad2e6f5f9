//! `caliper eval`.

/// Arguments of `caliper eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {}

/// Runs `caliper eval`.
pub fn run(_args: EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("`caliper eval` is not implemented yet")
}
