//! `caliper calibrate` and `caliper eval` end to end on `.npy` and CSV files: the file they
//! write, the JSON they print, the diagrams, and the error messages for bad input.

use std::path::Path;
use std::process::{Command, Output};

use ndarray::Array2;
use ndarray_npy::WriteNpyExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn caliper(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_caliper"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("caliper runs")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "caliper failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    assert!(!o.status.success(), "caliper should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Over-confident 4-class logits (f32) and u8 labels written as `NAME.npy` and
/// `NAME_labels.npy` in `dir`.
fn write_set(dir: &Path, name: &str, n: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut z = Array2::<f32>::zeros((n, 4));
    let mut y = ndarray::Array1::<u8>::zeros(n);
    for i in 0..n {
        let label = rng.random_range(0..4u8);
        y[i] = label;
        for j in 0..4 {
            z[[i, j]] = 3.0 * rng.random::<f32>();
        }
        // The label gets a head start, so accuracy is high and confidences too high.
        z[[i, usize::from(label)]] += 2.0 * rng.random::<f32>();
    }
    let zp = dir.join(format!("{name}.npy"));
    let yp = dir.join(format!("{name}_labels.npy"));
    z.write_npy(std::fs::File::create(&zp).unwrap()).unwrap();
    y.write_npy(std::fs::File::create(&yp).unwrap()).unwrap();
}

#[test]
fn calibrate_then_eval_with_json_and_diagrams() {
    let d = tempfile::tempdir().unwrap();
    write_set(d.path(), "val", 2000, 1);
    write_set(d.path(), "test", 2000, 2);
    let out = stdout(&caliper(
        &[
            "calibrate",
            "--logits",
            "val.npy",
            "--labels",
            "val_labels.npy",
            "--model",
            "toy",
            "--model-sha256",
            "abc",
            "--diagram",
            "val.svg",
        ],
        d.path(),
    ));
    assert!(out.contains("ats"), "{out}");
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("calib/toy.json")).unwrap())
            .unwrap();
    assert_eq!(file["calibrator"]["method"], "ats");
    assert_eq!(file["model_sha256"], "abc");
    assert_eq!(file["num_classes"], 4);
    assert_eq!(file["fit"]["samples"], 2000);
    let before = file["fit"]["before"]["ece"].as_f64().unwrap();
    let after = file["fit"]["after"]["ece"].as_f64().unwrap();
    assert!(after < before, "in-sample ECE {before} -> {after}");
    assert!(
        std::fs::read_to_string(d.path().join("val.svg"))
            .unwrap()
            .contains("Calibrated: ats")
    );

    let json = stdout(&caliper(
        &[
            "eval",
            "--logits",
            "test.npy",
            "--labels",
            "test_labels.npy",
            "--calib",
            "calib/toy.json",
            "--json",
            "--bins",
            "20",
            "--bootstrap",
            "50",
            "--diagram",
            "test.png",
        ],
        d.path(),
    ));
    let v: Value = serde_json::from_str(&json).unwrap();
    for side in ["uncalibrated", "calibrated"] {
        for key in [
            "accuracy",
            "ece",
            "adaece",
            "mce",
            "classwise_ece",
            "nll",
            "brier",
            "aurc",
            "auroc",
        ] {
            assert!(v[side][key].is_number(), "{side}.{key} missing in {json}");
        }
        assert_eq!(v[side]["bins"], 20);
        let ci = &v[side]["ci"]["accuracy"];
        assert!(ci[0].as_f64().unwrap() <= ci[1].as_f64().unwrap());
    }
    assert_eq!(v["uncalibrated"]["accuracy"], v["calibrated"]["accuracy"]);
    assert!(v["calibrated"]["ece"].as_f64() < v["uncalibrated"]["ece"].as_f64());
    let png = std::fs::read(d.path().join("test.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));

    // Without --calib: one flat object; as a table: every metric named.
    let flat: Value = serde_json::from_str(&stdout(&caliper(
        &[
            "eval",
            "--logits",
            "test.npy",
            "--labels",
            "test_labels.npy",
            "--json",
        ],
        d.path(),
    )))
    .unwrap();
    assert!(flat["ece"].is_number() && flat.get("calibrated").is_none());
    let table = stdout(&caliper(
        &[
            "eval",
            "--logits",
            "test.npy",
            "--labels",
            "test_labels.npy",
        ],
        d.path(),
    ));
    assert!(
        table.contains("classwise_ece") && table.contains('%'),
        "{table}"
    );
}

#[test]
fn csv_input_and_every_method() {
    let d = tempfile::tempdir().unwrap();
    let mut logits = String::from("c0,c1,c2\n");
    let mut labels = String::new();
    for i in 0..300 {
        let y = i % 3;
        let z: Vec<String> = (0..3)
            .map(|j| {
                format!(
                    "{}",
                    if j == y {
                        2.0
                    } else {
                        ((i * 7 + j) % 5) as f64 * 0.6
                    }
                )
            })
            .collect();
        logits.push_str(&(z.join(",") + "\n"));
        labels.push_str(&format!("{y}\n"));
    }
    std::fs::write(d.path().join("z.csv"), logits).unwrap();
    std::fs::write(d.path().join("y.csv"), labels).unwrap();
    for method in ["identity", "ts", "vector", "ats", "histogram", "isotonic"] {
        let out = format!("{method}.json");
        stdout(&caliper(
            &[
                "calibrate",
                "--logits",
                "z.csv",
                "--labels",
                "y.csv",
                "--method",
                method,
                "--out",
                &out,
            ],
            d.path(),
        ));
        let text = std::fs::read_to_string(d.path().join(&out)).unwrap();
        assert!(
            text.contains(&format!("\"method\": \"{method}\"")),
            "{text}"
        );
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    write_set(d.path(), "a", 100, 3);
    write_set(d.path(), "b", 90, 4);
    let run = |args: &[&str]| stderr(&caliper(args, d.path()));

    // A 4-class calibrator relabelled as 7-class, for the eval case below.
    stdout(&caliper(
        &[
            "calibrate",
            "--logits",
            "a.npy",
            "--labels",
            "a_labels.npy",
            "--method",
            "ts",
            "--out",
            "ts.json",
        ],
        d.path(),
    ));
    let mut f: Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("ts.json")).unwrap()).unwrap();
    f["num_classes"] = 7.into();
    std::fs::write(d.path().join("ts7.json"), f.to_string()).unwrap();
    // (arguments, what the message must mention)
    let cases: [(&str, &[&str]); 7] = [
        (
            "calibrate --logits a.npy --labels b_labels.npy",
            &["100 rows", "90 labels"],
        ),
        (
            "calibrate --logits missing.npy --labels a_labels.npy",
            &["missing.npy"],
        ),
        // Asked for ATS explicitly: too little data is an error (without --method it adapts).
        (
            "calibrate --logits a.npy --labels a_labels.npy --method ats",
            &["too few", "--pieces"],
        ),
        ("eval --logits a_labels.npy --labels a_labels.npy", &["2-D"]),
        ("calibrate --labels a_labels.npy", &["--logits"]),
        // A calibrator for another class count is refused by eval.
        (
            "eval --logits a.npy --labels a_labels.npy --calib ts7.json",
            &["7 classes"],
        ),
        (
            "eval --logits a.npy --labels a_labels.npy --diagram x.gif",
            &[".svg or .png"],
        ),
    ];
    for (args, wants) in cases {
        let e = run(&args.split(' ').collect::<Vec<_>>());
        for w in wants {
            assert!(e.contains(w), "{args}: {e}");
        }
    }
}
