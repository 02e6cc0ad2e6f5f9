//! `caliper`: the calibrated inference server and its tools. Thin: parse, set up tracing,
//! dispatch into the library, turn an error into an exit code.

use std::process::ExitCode;

// The request path allocates and frees many small buffers on several threads (body, decoded
// image, logits, scores, response); glibc's malloc was a tenth of the server's CPU (issue 19),
// mimalloc's is a third of that. (ONNX Runtime keeps its own allocator.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (number 15 of its v3 `mi_option_e`; libmimalloc-sys does not
/// name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Returns freed memory to the OS at once instead of after mimalloc's default second: with its
/// defaults the LeNet server's peak RSS under load was 50% above glibc's; with this and lazy
/// arena commit (.cargo/config.toml) it is within a few percent, at a small CPU cost
/// (docs/BENCHMARKS.md). Set first thing, before any other thread exists.
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: a plain setter of an integer option, called before any other thread starts.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

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
    tune_allocator();
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
