//! Locating and loading the ONNX Runtime shared library (`ort` is built with `load-dynamic`).
//!
//! Resolution order, first hit wins:
//! 1. `ORT_DYLIB_PATH` (the variable `ort` itself documents);
//! 2. `libonnxruntime.so` next to the running executable (how the Docker image ships it);
//! 3. the path baked in by `build.rs`: `third_party/onnxruntime/lib/libonnxruntime.so`, where
//!    `scripts/fetch-onnxruntime.sh` (run by `make build`) puts the library from the PyPI wheel;
//!    in a build made with `make build CUDA=1`, `third_party/onnxruntime-cuda/lib/` instead (the
//!    `onnxruntime-gpu` wheel and the NVIDIA libraries its CUDA provider needs).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Why the ONNX Runtime library could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OrtLibraryError {
    /// No candidate path exists.
    #[error(
        "ONNX Runtime library not found (looked at: {searched}). Run `{fetch}` (or `make build{make}`), \
         or set ORT_DYLIB_PATH to a libonnxruntime.so of version 1.24 or newer",
        fetch = if built_for_cuda() { "scripts/fetch-onnxruntime.sh --cuda" } else { "scripts/fetch-onnxruntime.sh" },
        make = if built_for_cuda() { " CUDA=1" } else { "" }
    )]
    NotFound { searched: String },
    /// The file exists but could not be loaded or initialised.
    #[error("failed to load ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
}

const LIB_NAME: &str = "libonnxruntime.so";

/// The variable Microsoft's builds of ONNX Runtime read, when their environment is created, to
/// leave out their usage telemetry (1DS: an uploader thread that posts model producer and graph
/// names, operators and run counts to mobile.events.data.microsoft.com). The environment's own
/// switch, `DisableTelemetryEvents`, comes too late: the process event is queued at creation.
pub const TELEMETRY_OPT_OUT_VAR: &str = "ORT_DISABLE_TELEMETRY";

/// Sets [`TELEMETRY_OPT_OUT_VAR`] to `1` unless the user has set it, so that a caliper process
/// never reaches another host on its own. Both binaries call it first thing in `main`.
///
/// # Safety
/// Setting an environment variable races with any other thread reading the environment:
/// call it while the process has a single thread.
#[allow(unsafe_code)]
pub unsafe fn opt_out_of_telemetry() {
    if std::env::var_os(TELEMETRY_OPT_OUT_VAR).is_none() {
        // SAFETY: the caller guarantees that no other thread exists yet.
        unsafe { std::env::set_var(TELEMETRY_OPT_OUT_VAR, "1") };
    }
}

/// True when this binary was built with `make build CUDA=1`: its default library is the GPU
/// build of ONNX Runtime.
pub fn built_for_cuda() -> bool {
    env!("CALIPER_ORT_BUILD") == "cuda"
}

/// Candidate paths in resolution order (see the module docs).
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir.join(LIB_NAME));
    }
    out.push(PathBuf::from(env!("CALIPER_DEFAULT_ORT_DYLIB")));
    out
}

/// The library path that would be loaded, or a `NotFound` error naming every place looked at.
pub fn resolve_library_path() -> Result<PathBuf, OrtLibraryError> {
    let all = candidates();
    // An explicit ORT_DYLIB_PATH is authoritative: do not silently fall back past a typo.
    if std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| !p.is_empty()) {
        let p = all[0].clone();
        return if p.is_file() {
            Ok(p)
        } else {
            Err(OrtLibraryError::NotFound {
                searched: format!("ORT_DYLIB_PATH={}", p.display()),
            })
        };
    }
    all.iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| OrtLibraryError::NotFound {
            searched: all
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Loads ONNX Runtime once per process and creates the global environment. Later calls return
/// the first call's outcome, so every entry point (server, trainer, tests) may call it freely.
pub fn init_onnxruntime() -> Result<&'static Path, OrtLibraryError> {
    init()
        .as_ref()
        .map(|(p, _)| p.as_path())
        .map_err(Clone::clone)
}

/// The process-wide ONNX Runtime environment (loading the library first if needed); sessions
/// are built from it.
pub fn environment() -> Result<&'static ort::environment::Environment, OrtLibraryError> {
    init().as_ref().map(|(_, env)| env).map_err(Clone::clone)
}

type Loaded = Result<(PathBuf, ort::environment::Environment), OrtLibraryError>;

fn init() -> &'static Loaded {
    static INIT: OnceLock<Loaded> = OnceLock::new();
    INIT.get_or_init(|| {
        let path = resolve_library_path()?;
        let load_err = |reason: String| OrtLibraryError::Load {
            path: path.clone(),
            reason,
        };
        // Events after creation are off too (see `opt_out_of_telemetry` for those before).
        let env = ort::init_from(&path)
            .map_err(|e| load_err(e.to_string()))?
            .with_name("caliper")
            .with_telemetry(false)
            .build()
            .map_err(|e| load_err(e.to_string()))?;
        Ok((path, env))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_fetched_library() {
        let path = init_onnxruntime().expect("run scripts/fetch-onnxruntime.sh first");
        assert!(path.ends_with(LIB_NAME) || path.to_string_lossy().contains("onnxruntime"));
    }
}
