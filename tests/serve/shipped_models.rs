//! The shipped models reproduce the test figures quoted in README and docs/REPRODUCTION.md:
//! `caliper eval --model NAME --data SPEC --calib calib/NAME.json --json` on each model listed in
//! docs/results/shipped-models.json (written by scripts/shipped-models.sh) must give the same
//! numbers. Also `make check-models`.
//!
//! And the OOD threshold each calibration file stores for its default method (fitted at 95% TPR
//! on the validation split) keeps 95% +- 1.5% of the model's test split when the images are
//! scored by a real `caliper serve` process over HTTP (issue 17, item 6): the verdict a client
//! sees, through the server's decoding and preprocessing, and the same fraction as the offline
//! `caliper eval-ood`.

use crate::common;

use std::path::Path;

use caliper::cli::model_logits::load_spec;
use caliper::data::Dataset;
use common::process::Server;
use serde_json::Value;

/// Images per multipart request.
const CHUNK: usize = 250;

#[test]
fn every_shipped_model_reproduces_its_recorded_test_figures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let recorded = recorded(root);
    // Every model folder with a calibrator is recorded, and only those.
    let mut shipped: Vec<String> = std::fs::read_dir(root.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|m| root.join("calib").join(format!("{m}.json")).exists())
        .collect();
    shipped.sort();
    let mut listed: Vec<String> = recorded.keys().cloned().collect();
    listed.sort();
    assert_eq!(shipped, listed, "run scripts/shipped-models.sh");

    for (model, rec) in &recorded {
        let data = rec["data"].as_str().unwrap();
        let calib = root.join("calib").join(format!("{model}.json"));
        let now = common::caliper_json([
            "eval",
            "--model",
            model,
            "--data",
            data,
            "--calib",
            calib.to_str().unwrap(),
            "--json",
            "--models-dir",
            root.join("models").to_str().unwrap(),
            "--data-dir",
            root.join("data").to_str().unwrap(),
        ]);
        for part in ["uncalibrated", "calibrated"] {
            let (want, got) = (&rec["eval"][part], &now[part]);
            for (key, w) in want.as_object().unwrap() {
                let g = &got[key];
                match (w.as_f64(), g.as_f64()) {
                    // Same CPU kind as the recording: differences come only from ONNX Runtime's
                    // kernel choice, far below the 2 decimals of a percentage that docs quote.
                    (Some(w), Some(g)) => assert!(
                        (w - g).abs() <= 1e-6,
                        "{model} {part}.{key}: recorded {w}, now {g}"
                    ),
                    _ => assert_eq!(w, g, "{model} {part}.{key}"),
                }
            }
        }
    }
}

/// The recorded shipped models: name -> `{"data": SPEC, ...}`.
fn recorded(root: &Path) -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_slice(
        &std::fs::read(root.join("docs/results/shipped-models.json")).unwrap(),
    )
    .unwrap();
    v.as_object().unwrap().clone()
}

/// Image `i` of `data` (u8, CHW) encoded as PNG, grey or RGB: lossless, so the server decodes
/// exactly the pixels the offline evaluation reads.
fn png_of(data: &Dataset, i: usize) -> Vec<u8> {
    let s = data.shape;
    let px = data.image(i);
    let plane = s.height * s.width;
    let (w, h) = (s.width as u32, s.height as u32);
    let mut out = std::io::Cursor::new(Vec::new());
    match s.channels {
        1 => image::GrayImage::from_raw(w, h, px.to_vec())
            .unwrap()
            .write_to(&mut out, image::ImageFormat::Png),
        3 => {
            let hwc: Vec<u8> = (0..plane)
                .flat_map(|p| (0..3).map(move |c| px[c * plane + p]))
                .collect();
            image::RgbImage::from_raw(w, h, hwc)
                .unwrap()
                .write_to(&mut out, image::ImageFormat::Png)
        }
        c => panic!("{c} channels"),
    }
    .unwrap();
    out.into_inner()
}

/// Serves `indices` of `data` to `model` in multipart requests; returns each prediction's `ood`.
async fn served_ood(
    client: &reqwest::Client,
    server: &Server,
    model: &str,
    data: &Dataset,
    indices: &[usize],
) -> Vec<Value> {
    let mut out = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(CHUNK) {
        let mut form = reqwest::multipart::Form::new();
        for &i in chunk {
            let part = reqwest::multipart::Part::bytes(png_of(data, i))
                .file_name(format!("{i}.png"))
                .mime_str("image/png")
                .unwrap();
            form = form.part(format!("f{i}"), part);
        }
        let resp = client
            .post(server.url(&format!("/v1/models/{model}/predict")))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{model}");
        let v: Value = resp.json().await.unwrap();
        let preds = v["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), chunk.len());
        out.extend(preds.iter().map(|p| p["ood"].clone()));
    }
    out
}

#[tokio::test]
async fn every_shipped_models_default_ood_threshold_keeps_95_percent_of_its_test_split_served() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = Server::with_repository(&root.join("models"), &root.join("calib"), &[]);
    let client = reqwest::Client::new();
    let mut report = Vec::new();
    for (model, rec) in recorded(root) {
        let calib: Value = serde_json::from_slice(
            &std::fs::read(root.join("calib").join(format!("{model}.json"))).unwrap(),
        )
        .unwrap();
        let method = calib["ood"]["method"].as_str().unwrap().to_string();
        let stored = &calib["ood"]["thresholds"][&method];
        let (tpr, threshold) = (
            stored["tpr"].as_f64().unwrap(),
            stored["threshold"].as_f64().unwrap(),
        );
        let test = load_spec(&root.join("data"), rec["data"].as_str().unwrap()).unwrap();
        // The whole split (at most 10,000 images here): at p = 0.95 the binomial standard error
        // is 0.22 points for 10,000 images, 0.87 for pneumonia's 624.
        let n = test.len();
        let indices: Vec<usize> = (0..n).collect();
        let oods = served_ood(&client, &server, &model, &test, &indices).await;
        for o in &oods {
            assert_eq!(o["method"], method.as_str(), "{model}: {o}");
            assert_eq!(o["threshold"].as_f64(), Some(threshold), "{model}: {o}");
        }
        let kept = oods.iter().filter(|o| o["is_ood"] == false).count() as f64 / n as f64;
        // The offline verdict on the same split (`caliper eval-ood`, which needs some OOD set:
        // a small one, it does not enter the ID figure) must be the served one.
        let ood_set = if model == "pneumonia" {
            "mnist:test"
        } else {
            "pneumonia:test"
        };
        let offline = common::caliper_json([
            "eval-ood",
            "--model",
            &model,
            "--id",
            rec["data"].as_str().unwrap(),
            "--ood",
            ood_set,
            "--json",
            "--models-dir",
            root.join("models").to_str().unwrap(),
            "--calib-dir",
            root.join("calib").to_str().unwrap(),
            "--data-dir",
            root.join("data").to_str().unwrap(),
        ]);
        let offline = &offline["scores"][&method];
        assert_eq!(offline["threshold"].as_f64(), Some(threshold), "{model}");
        let offline_kept = 1.0 - offline["id_flagged"].as_f64().unwrap();
        // Server and offline run the same graph on the same pixels; only ONNX Runtime's kernel
        // choice for another batch size may move a score at the threshold by an ulp.
        assert!(
            (kept - offline_kept).abs() <= 0.001,
            "{model}: {method} keeps {:.2}% served but {:.2}% offline",
            100.0 * kept,
            100.0 * offline_kept
        );
        report.push(format!(
            "{model} ({method}, threshold {threshold}): {:.2}% of {n} test images kept served, \
             {:.2}% offline",
            100.0 * kept,
            100.0 * offline_kept
        ));
        assert!(
            (kept - tpr).abs() <= 0.015,
            "{model}: the stored {method} threshold keeps {:.2}% of {n} served test images, \
             not {:.0}% +- 1.5%",
            100.0 * kept,
            100.0 * tpr
        );
    }
    eprintln!("{}", report.join("\n"));
}
