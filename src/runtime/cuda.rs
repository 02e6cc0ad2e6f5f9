//! Loading the CUDA 13 / cuDNN 9 libraries that `scripts/fetch-onnxruntime.sh --cuda` unpacks
//! next to the GPU build of ONNX Runtime, so that its CUDA provider loads with no
//! `LD_LIBRARY_PATH`.
//!
//! Why this is needed: ONNX Runtime opens `libonnxruntime_providers_cuda.so` from its own folder,
//! but that provider carries no RUNPATH, so the dynamic loader would look for `libcudart.so.13`,
//! `libcublas.so.13`, ... only on the system paths. When a library with the same soname is
//! already loaded, the loader uses it instead of searching. So before the provider is
//! registered, the libraries listed in `preload.txt` (one file name a line, each after those it
//! links against; written by the fetch script) are opened from that folder and kept loaded for
//! the life of the process. cuDNN finds its own sub-libraries through its RUNPATH `$ORIGIN`.
//! Without a `preload.txt` (the CUDA image, a hand-set `ORT_DYLIB_PATH`) nothing is loaded and
//! the system's libraries are used, as ONNX Runtime itself would.
//!
//! The only `unsafe` of the crate: `dlopen` runs the libraries' initialisers, which is what
//! loading any shared library (ONNX Runtime included, inside `ort`) does; these are NVIDIA's
//! own runtime libraries, the ones the provider would load anyway.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The list of libraries to load before the CUDA provider, next to `libonnxruntime.so`.
pub const PRELOAD_LIST: &str = "preload.txt";

/// Loads, once per process, the libraries that `preload.txt` next to `library` (the loaded
/// `libonnxruntime.so`) lists. Returns the files loaded (none without a list), or why one
/// could not be loaded.
pub fn preload(library: &Path) -> Result<&'static [PathBuf], String> {
    static DONE: OnceLock<Result<Vec<PathBuf>, String>> = OnceLock::new();
    DONE.get_or_init(|| load_list(library))
        .as_ref()
        .map(Vec::as_slice)
        .map_err(Clone::clone)
}

fn load_list(library: &Path) -> Result<Vec<PathBuf>, String> {
    // The list sits next to the real file (libonnxruntime.so is usually a symlink beside it).
    let dir = library.parent().unwrap_or(Path::new("."));
    let list = dir.join(PRELOAD_LIST);
    let Ok(text) = std::fs::read_to_string(&list) else {
        return Ok(Vec::new());
    };
    let mut loaded = Vec::new();
    for name in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(name);
        open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        loaded.push(path);
    }
    tracing::debug!(count = loaded.len(), dir = %dir.display(), "CUDA libraries loaded");
    Ok(loaded)
}

#[cfg(unix)]
fn open(path: &Path) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // SAFETY: see the module header; the handle is leaked on purpose, so the library is never
    // unloaded while ONNX Runtime's provider uses it.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) };
    lib.map(std::mem::forget).map_err(|e| e.to_string())
}

#[cfg(not(unix))]
fn open(_path: &Path) -> Result<(), String> {
    Err("preloading CUDA libraries is implemented for Linux only".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_list_loads_nothing_and_a_bad_list_says_which_file() {
        let dir = std::env::temp_dir().join(format!("caliper-preload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join("libonnxruntime.so");
        assert_eq!(load_list(&lib), Ok(Vec::new()));
        std::fs::write(dir.join(PRELOAD_LIST), "\nlibmissing.so.1\n").unwrap();
        let e = load_list(&lib).unwrap_err();
        assert!(e.contains("libmissing.so.1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
