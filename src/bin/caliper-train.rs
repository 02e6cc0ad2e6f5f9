//! `caliper-train`: trains an image classifier with GCE or a baseline loss on ONNX Runtime and
//! exports it to the model repository. Thin: parse, set up logging, call `caliper::cli::train`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // SAFETY: first statement of `main`, so the process has one thread.
    #[allow(unsafe_code)]
    unsafe {
        caliper::runtime::opt_out_of_telemetry()
    };
    caliper::logging::init_tracing(false);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    match caliper::cli::train::run(caliper::cli::train::Cli::parse(), &command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
