//! Bakes the default location of the ONNX Runtime library (fetched by
//! `scripts/fetch-onnxruntime.sh`) into the binaries, so that `make run` works without setting
//! `ORT_DYLIB_PATH`. No network access and no C library are needed at build time.
fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!(
        "cargo:rustc-env=CALIPER_DEFAULT_ORT_DYLIB={root}/third_party/onnxruntime/lib/libonnxruntime.so"
    );
    println!("cargo:rerun-if-changed=build.rs");
}
