//! Bakes the default location of the ONNX Runtime library (fetched by
//! `scripts/fetch-onnxruntime.sh`) into the binaries, so that `make run` works without setting
//! `ORT_DYLIB_PATH`. No network access and no C library are needed at build time.
//!
//! `CALIPER_CUDA=1` (set by `make build CUDA=1`) bakes the GPU build instead,
//! `third_party/onnxruntime-cuda/lib/` (from `scripts/fetch-onnxruntime.sh --cuda`), where the
//! CUDA 13 / cuDNN 9 libraries its CUDA provider needs sit next to it (see `runtime::cuda`).
fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let cuda = std::env::var("CALIPER_CUDA").is_ok_and(|v| v == "1");
    let (dir, flavour) = if cuda {
        ("onnxruntime-cuda", "cuda")
    } else {
        ("onnxruntime", "cpu")
    };
    println!(
        "cargo:rustc-env=CALIPER_DEFAULT_ORT_DYLIB={root}/third_party/{dir}/lib/libonnxruntime.so"
    );
    println!("cargo:rustc-env=CALIPER_ORT_BUILD={flavour}");
    println!("cargo:rerun-if-env-changed=CALIPER_CUDA");
    println!("cargo:rerun-if-changed=build.rs");
}
