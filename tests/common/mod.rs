//! Helpers of the serving tests (`tests/serve`): a private copy of the fixture repository in
//! tests/data (a 784-32-10 MLP fitted on MNIST by scripts/make-test-model.py, with its
//! calibration file), real MNIST digits, and one-shot requests through `router(state)`. The other
//! test binaries include only the submodules they use (`cli`), so nothing here goes unused.

pub mod cli;
pub mod process;
pub mod webdriver;

pub use cli::caliper_json;

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use caliper::serve::config::Config;
use caliper::serve::http::{AppState, router};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// The fixture model's name.
pub const MODEL: &str = "mnist-mlp";

/// `tests/data`.
pub fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// A private copy of the fixture repository (models/ + calib/) that a test may modify.
pub fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("models").join(MODEL);
    std::fs::create_dir_all(&m).unwrap();
    std::fs::create_dir_all(dir.path().join("calib")).unwrap();
    for f in ["model.onnx", "model.toml"] {
        std::fs::copy(data().join("models").join(MODEL).join(f), m.join(f)).unwrap();
    }
    let calib = format!("calib/{MODEL}.json");
    std::fs::copy(data().join(&calib), dir.path().join(&calib)).unwrap();
    dir
}

/// A private repository holding only the bundled model `name` (`models/NAME` and
/// `calib/NAME.json` of this checkout).
pub fn bundled_repo(name: &str) -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("models").join(name);
    std::fs::create_dir_all(&to).unwrap();
    std::fs::create_dir_all(dir.path().join("calib")).unwrap();
    for e in std::fs::read_dir(root.join("models").join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    let calib = format!("calib/{name}.json");
    std::fs::copy(root.join(&calib), dir.path().join(&calib)).unwrap();
    dir
}

/// The MNIST test split under `data/` (fetched by scripts/fetch-data.sh).
pub fn mnist_test() -> caliper::data::Dataset {
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let spec: caliper::data::DatasetSpec = "mnist:test".parse().unwrap();
    spec.load(&data_dir)
        .expect("run scripts/fetch-data.sh mnist")
}

/// The metadata of model `model` in the repository `root`, and the FP32 input it expects for
/// the encoded `images` (caliper's one preprocessing path), flat `[N, C, H, W]`.
pub fn model_input(
    root: &Path,
    model: &str,
    images: &[Vec<u8>],
) -> (caliper::repository::ModelMetadata, Vec<f32>) {
    let toml = root.join("models").join(model).join("model.toml");
    let meta = caliper::repository::ModelMetadata::load(&toml).unwrap();
    let limits = caliper::serve::infer::ImageLimits {
        max_pixels: 1 << 20,
    };
    let tensor = images
        .iter()
        .flat_map(|b| caliper::serve::infer::preprocess(b, &meta.input, limits).unwrap())
        .collect();
    (meta, tensor)
}

/// Default configuration over a repository, one session per model.
pub fn config(root: &Path) -> Config {
    let mut c = Config::with_repository(root.join("models"), root.join("calib"));
    c.sessions_per_model = 1;
    c
}

/// State with every model loaded.
pub fn state(c: Config) -> AppState {
    let s = AppState::new(c).unwrap();
    s.registry.load_all().unwrap();
    s
}

/// Bytes of a real MNIST digit from tests/data/digits.
pub fn digit(name: &str) -> Vec<u8> {
    std::fs::read(data().join("digits").join(name)).unwrap()
}

/// The `label` of each prediction of a `{"predictions": [...]}` answer, in order.
pub fn prediction_labels(v: &Value) -> Vec<&str> {
    v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect()
}

/// The numbers of a JSON array (a V2 output's `data`).
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// A 28x28 grayscale image (e.g. an MNIST digit) encoded as PNG.
pub fn png(pixels: &[u8]) -> Vec<u8> {
    let img = image::GrayImage::from_raw(28, 28, pixels.to_vec()).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Sends one request; returns status, JSON body (or the text as a JSON string) and headers.
pub async fn send(s: &AppState, req: Request<Body>) -> (StatusCode, Value, axum::http::HeaderMap) {
    let resp = router(s.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v, headers)
}

/// A POST with a content type.
pub fn post(uri: &str, ctype: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, ctype)
        .body(body.into())
        .unwrap()
}

/// A POST of a JSON value.
pub fn post_json(uri: &str, v: &Value) -> Request<Body> {
    post(uri, "application/json", serde_json::to_vec(v).unwrap())
}

/// A GET.
pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}
