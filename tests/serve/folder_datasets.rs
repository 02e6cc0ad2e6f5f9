//! Image-folder and manifest datasets (issue 16, items 2 and 3), on real CIFAR-10 photos and
//! MNIST digits resized to mixed sizes: `caliper calibrate`, `eval` and `eval-ood` match folder
//! names to the model's labels and preprocess every image as the server does (any size), their
//! accuracy equals the one `caliper predict` gives on the same files, unknown class names are
//! refused by name, manifests work with names and with indices, and `caliper-train` trains on a
//! folder (with and without split folders) and exports a model `caliper serve` loads. The
//! README's "Train on your own images" commands are the ones run here.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use caliper::repository::ModelMetadata;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// CIFAR-10 test photo `i` of `class`.
fn cifar(class: &str, i: usize) -> image::DynamicImage {
    image::open(root().join(format!("data/cifar10/test/{class}/{i:04}.jpg"))).unwrap()
}

/// A mixed image size for image `i`: 24..64 px on each side, rarely square.
fn size(i: usize) -> (u32, u32) {
    (24 + (i * 7 % 41) as u32, 24 + (i * 13 % 41) as u32)
}

/// Writes `n` photos of each class into `dir/<folder name>/`, resized to mixed sizes, alternately
/// PNG and JPEG; `start` offsets the photos taken. Returns the files and their class.
fn cifar_folder(
    dir: &Path,
    classes: &[(&str, &str)],
    n: usize,
    start: usize,
) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for (folder, class) in classes {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        for i in start..start + n {
            let (w, h) = size(i);
            let img = cifar(class, i).resize_exact(w, h, image::imageops::FilterType::Triangle);
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            let p = dir.join(folder).join(format!("{i:04}.{ext}"));
            img.to_rgb8().save(&p).unwrap();
            files.push((p, folder.to_string()));
        }
    }
    files
}

fn run(bin: &str, args: &[&str]) -> Output {
    let exe = match bin {
        "caliper" => env!("CARGO_BIN_EXE_caliper"),
        _ => env!("CARGO_BIN_EXE_caliper-train"),
    };
    Command::new(exe)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn ok(bin: &str, args: &[&str]) -> String {
    let out = run(bin, args);
    assert!(
        out.status.success(),
        "{bin} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Top-1 accuracy of `caliper predict` (the serving pipeline, no calibration file) on `files`.
fn predict_accuracy(files: &[(PathBuf, String)], empty_calib: &Path) -> f64 {
    let mut args = vec![
        "predict",
        "--model",
        "cifar10",
        "--calib",
        s(empty_calib),
        "--top-k",
        "1",
    ];
    args.extend(files.iter().map(|(p, _)| s(p)));
    let v: Value = serde_json::from_str(&ok("caliper", &args)).unwrap();
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), files.len());
    let right = preds
        .iter()
        .zip(files)
        .filter(|(p, (_, class))| p["label"].as_str() == Some(class.as_str()))
        .count();
    right as f64 / files.len() as f64
}

/// `caliper eval --json` accuracy on `spec`.
fn eval_accuracy(spec: &str) -> (f64, u64) {
    let v: Value = serde_json::from_str(&ok(
        "caliper",
        &["eval", "--model", "cifar10", "--data", spec, "--json"],
    ))
    .unwrap();
    (
        v["accuracy"].as_f64().unwrap(),
        v["samples"].as_u64().unwrap(),
    )
}

#[test]
fn calibrate_eval_and_eval_ood_match_folder_names_to_the_models_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    // A subset of the model's classes, so that sorted folder numbering (0, 1, 2) would be wrong.
    let classes = [("cat", "cat"), ("ship", "ship"), ("truck", "truck")];
    let files = cifar_folder(&dir, &classes, 40, 0);
    let labels = ModelMetadata::load(&root().join("models/cifar10/model.toml"))
        .unwrap()
        .labels;
    assert!(classes.iter().all(|(c, _)| labels.iter().any(|l| l == c)));
    let empty = tmp.path().join("no-calib");
    std::fs::create_dir_all(&empty).unwrap();
    let expected = predict_accuracy(&files, &empty);
    assert!(
        expected > 0.5,
        "the CIFAR-10 model should recognise most photos: {expected}"
    );

    let spec = format!("folder:{}", dir.display());
    let out_file = tmp.path().join("calib/cifar10.json");
    let stdout = ok(
        "caliper",
        &[
            "calibrate",
            "--model",
            "cifar10",
            "--data",
            &spec,
            "--method",
            "ts",
            "--out",
            s(&out_file),
        ],
    );
    let shown = format!("accuracy {:.2}% ->", 100.0 * expected);
    assert!(stdout.contains(&shown), "expected {shown:?} in {stdout}");
    let (acc, n) = eval_accuracy(&spec);
    assert_eq!(n, 120);
    assert!(
        (acc - expected).abs() < 1e-12,
        "eval {acc} vs predict {expected}"
    );

    // eval-ood with the photos as ID and grey MNIST digits of mixed sizes as OOD.
    let digits = tmp.path().join("digits/any");
    std::fs::create_dir_all(&digits).unwrap();
    let mnist = caliper::data::DatasetSpec::Mnist(caliper::data::spec::Split::Test)
        .load(&root().join("data"))
        .unwrap();
    for i in 0..50 {
        let (w, h) = size(i);
        let img = mnist
            .to_image(i)
            .resize_exact(w, h, image::imageops::FilterType::Triangle);
        img.to_luma8()
            .save(digits.join(format!("{i}.png")))
            .unwrap();
    }
    let report = ok(
        "caliper",
        &[
            "eval-ood",
            "--model",
            "cifar10",
            "--id",
            &spec,
            "--ood",
            &format!("folder:{}", digits.parent().unwrap().display()),
            "--calib-dir",
            s(out_file.parent().unwrap()),
        ],
    );
    assert!(
        report.contains("(120 images)") && report.contains("(50 images)"),
        "{report}"
    );
}

#[test]
fn unknown_class_names_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    cifar_folder(
        &dir,
        &[("cat", "cat"), ("spaceship", "ship"), ("kitten", "cat")],
        2,
        0,
    );
    let spec = format!("folder:{}", dir.display());
    let out = run(
        "caliper",
        &[
            "calibrate",
            "--model",
            "cifar10",
            "--data",
            &spec,
            "--out",
            s(&tmp.path().join("c.json")),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2 unknown class names")
            && err.contains("\"kitten\"")
            && err.contains("\"spaceship\""),
        "{err}"
    );
    assert!(!tmp.path().join("c.json").exists());
}

#[test]
fn manifests_of_names_and_of_indices_give_the_folders_result() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    let files = cifar_folder(&dir, &[("dog", "dog"), ("airplane", "airplane")], 15, 100);
    let labels = ModelMetadata::load(&root().join("models/cifar10/model.toml"))
        .unwrap()
        .labels;
    let rel = |p: &Path| p.strip_prefix(tmp.path()).unwrap().display().to_string();
    let csv: String = std::iter::once("path,label\n".to_string())
        .chain(files.iter().map(|(p, c)| format!("{},{c}\n", rel(p))))
        .collect();
    std::fs::write(tmp.path().join("m.csv"), csv).unwrap();
    let jsonl: String = files
        .iter()
        .map(|(p, c)| {
            let k = labels.iter().position(|l| l == c).unwrap();
            format!("{{\"path\": {:?}, \"label\": {k}}}\n", rel(p))
        })
        .collect();
    std::fs::write(tmp.path().join("m.jsonl"), jsonl).unwrap();
    let folder = eval_accuracy(&format!("folder:{}", dir.display()));
    let names = eval_accuracy(&format!("manifest:{}", tmp.path().join("m.csv").display()));
    let indices = eval_accuracy(&format!(
        "manifest:{}",
        tmp.path().join("m.jsonl").display()
    ));
    assert_eq!(folder.1, 30);
    assert_eq!(names, folder);
    assert_eq!(indices, folder);
    let empty = tmp.path().join("no-calib");
    std::fs::create_dir_all(&empty).unwrap();
    assert!((folder.0 - predict_accuracy(&files, &empty)).abs() < 1e-12);
}

/// Status code of `GET path` (plain HTTP/1.1 over a socket).
fn http_status(addr: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Trains 1 epoch on `spec`, checks the export and that `caliper serve` loads it.
fn train_and_serve(tmp: &Path, spec: &str, classes: &[&str], extra: &[&str]) -> ModelMetadata {
    let models = tmp.join("models");
    let calib = tmp.join("calib");
    let mut args = vec![
        "train",
        "--dataset",
        spec,
        "--out",
        "mine",
        "--loss",
        "gce",
        "--epochs",
        "1",
        "--arch",
        "linear",
        "--batch-size",
        "32",
        "--calibrator",
        "ts",
        "--no-progress",
        "--models-dir",
        s(&models),
        "--calib-dir",
        s(&calib),
    ];
    let run_dir = tmp.join("run");
    args.extend(["--run-dir", s(&run_dir)]);
    args.extend(extra);
    ok("caliper-train", &args);
    let meta = ModelMetadata::load(&models.join("mine/model.toml")).unwrap();
    assert_eq!(meta.labels, classes);
    assert!(calib.join("mine.json").is_file());
    let server = common::process::Server::with_repository(&models, &calib, &[]);
    assert_eq!(http_status(&server.addr, "/v2/health/ready"), 200);
    assert_eq!(http_status(&server.addr, "/v2/models/mine/ready"), 200);
    meta
}

#[test]
fn trains_on_a_folder_of_split_folders_and_the_model_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pets");
    let classes = [("cat", "cat"), ("dog", "dog"), ("frog", "frog")];
    cifar_folder(&dir.join("train"), &classes, 100, 0);
    cifar_folder(&dir.join("test"), &classes, 20, 100);
    let meta = train_and_serve(
        tmp.path(),
        &format!("folder:{}", dir.display()),
        &["cat", "dog", "frog"],
        &["--input-size", "32,32"],
    );
    assert_eq!(
        (meta.input.channels, meta.input.height, meta.input.width),
        (3, 32, 32)
    );
    // README: evaluate the served model, calibrated, on the test folder.
    let models = tmp.path().join("models");
    let calib = tmp.path().join("calib/mine.json");
    let test = format!("folder:{}", dir.join("test").display());
    let table = ok(
        "caliper",
        &[
            "eval",
            "--model",
            "mine",
            "--models-dir",
            s(&models),
            "--data",
            &test,
            "--calib",
            s(&calib),
        ],
    );
    assert!(table.contains("60 samples, 3 classes"), "{table}");
}

#[test]
fn trains_on_a_folder_of_classes_with_the_median_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("things");
    let files = cifar_folder(&dir, &[("ship", "ship"), ("truck", "truck")], 120, 0);
    let meta = train_and_serve(
        tmp.path(),
        &format!("folder:{}", dir.display()),
        &["ship", "truck"],
        &[],
    );
    // Default input size: the median height and width, rounded to a multiple of 4.
    let median = |f: fn((u32, u32)) -> u32| {
        let mut v: Vec<u32> = files
            .iter()
            .map(|(p, _)| image::image_dimensions(p).unwrap())
            .map(f)
            .collect();
        v.sort();
        let m = v[v.len() / 2] as usize;
        (m + 2) / 4 * 4
    };
    assert_eq!(meta.input.height, median(|(_, h)| h));
    assert_eq!(meta.input.width, median(|(w, _)| w));
    assert_eq!(meta.provenance.dataset, format!("folder:{}", dir.display()));
}
