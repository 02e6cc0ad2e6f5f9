//! `caliper serve`.

/// Arguments of `caliper serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Runs `caliper serve`.
pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`caliper serve` is not implemented yet")
}
