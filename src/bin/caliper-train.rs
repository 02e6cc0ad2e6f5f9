//! `caliper-train`: trains an image classifier with GCE or a baseline loss on ONNX Runtime and
//! exports it to the model repository. Thin: parse, set up tracing, call `caliper::train`.

fn main() -> std::process::ExitCode {
    eprintln!("error: caliper-train is not implemented yet");
    std::process::ExitCode::FAILURE
}
