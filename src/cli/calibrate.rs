//! `caliper calibrate`.

/// Arguments of `caliper calibrate`.
#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {}

/// Runs `caliper calibrate`.
pub fn run(_args: CalibrateArgs) -> anyhow::Result<()> {
    anyhow::bail!("`caliper calibrate` is not implemented yet")
}
