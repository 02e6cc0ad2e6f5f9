//! The shipped models reproduce the test figures quoted in README and docs/REPRODUCTION.md:
//! `caliper eval --model NAME --data SPEC --calib calib/NAME.json --json` on each model listed in
//! docs/results/shipped-models.json (written by scripts/shipped-models.sh) must give the same
//! numbers. Also `make check-models`.

use crate::common;

use serde_json::Value;

#[test]
fn every_shipped_model_reproduces_its_recorded_test_figures() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let recorded: Value = serde_json::from_slice(
        &std::fs::read(root.join("docs/results/shipped-models.json")).unwrap(),
    )
    .unwrap();
    let recorded = recorded.as_object().unwrap();
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

    for (model, rec) in recorded {
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
