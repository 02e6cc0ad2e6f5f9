//! `caliper`: the calibrated inference server and its tools. Thin: parse, set up tracing,
//! dispatch into the library, turn an error into an exit code.

use std::process::ExitCode;

use caliper::cli;
use clap::{Parser, Subcommand};

/// Calibrated probabilities from ONNX image classifiers.
#[derive(Debug, Parser)]
#[command(name = "caliper", version, about)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "CALIPER_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the models of a repository over HTTP (caliper API + KServe V2).
    // Boxed: the server's flags are most of the enum's size.
    Serve(Box<cli::serve::ServeArgs>),
    /// Run the serving pipeline offline on image files and print the same JSON as the server.
    Predict(cli::predict::PredictArgs),
    /// Fit a calibrator on validation logits and write calib/NAME.json.
    Calibrate(cli::calibrate::CalibrateArgs),
    /// Compute calibration metrics (ECE family, NLL, Brier, ...) of logits or of a model.
    Eval(cli::eval::EvalArgs),
    /// Evaluate the OOD scores of a model on an in-distribution and an OOD dataset.
    EvalOod(cli::eval_ood::EvalOodArgs),
    /// Import a third-party ONNX classifier into the model repository (writes model.toml).
    Import(cli::import::ImportArgs),
    /// Offline monitoring: `replay` joins labels with a payload log into the monitor's report.
    Monitor(cli::monitor::MonitorArgs),
}

fn main() -> ExitCode {
    // SAFETY: first statement of `main`, so the process has one thread.
    #[allow(unsafe_code)]
    unsafe {
        caliper::runtime::opt_out_of_telemetry()
    };
    let cli = Cli::parse();
    // `serve` installs its own subscriber: it may add OpenTelemetry export (--otlp-endpoint).
    if !matches!(cli.command, Command::Serve(_)) {
        caliper::logging::init_tracing(cli.log_json);
    }
    let result = match cli.command {
        Command::Serve(a) => cli::serve::run(*a, cli.log_json),
        Command::Predict(a) => cli::predict::run(a),
        Command::Calibrate(a) => cli::calibrate::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::EvalOod(a) => cli::eval_ood::run(a),
        Command::Import(a) => cli::import::run(a),
        Command::Monitor(a) => cli::monitor::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
