//! `caliper-train`: trains an image classifier with GCE or a baseline loss on ONNX Runtime and
//! exports it to the model repository. Thin: parse, set up tracing, call `caliper::train`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    match caliper::train::run(caliper::train::Cli::parse(), &command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
