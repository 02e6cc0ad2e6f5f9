//! Metric values against the independent numpy reference in `tests/data/metric_reference.json`
//! (made by `scripts/make-metric-reference.py`), and the streaming accumulator against the
//! whole-set computation.

use caliper::trust::calibration::{Calibrator, FitOptions, Method, calibrate_rows, fit};
use caliper::trust::metrics::{BinnedAccumulator, evaluate};
use ndarray::Array2;
use serde_json::Value;

fn reference() -> (Value, Array2<f64>, Vec<usize>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/metric_reference.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rows: Vec<Vec<f64>> = serde_json::from_value(v["logits"].clone()).unwrap();
    let labels: Vec<usize> = serde_json::from_value(v["labels"].clone()).unwrap();
    let k = rows[0].len();
    let flat: Vec<f64> = rows.into_iter().flatten().collect();
    let z = Array2::from_shape_vec((labels.len(), k), flat).unwrap();
    (v, z, labels)
}

#[test]
fn every_metric_matches_numpy_for_every_bin_count() {
    let (v, z, y) = reference();
    let probs = calibrate_rows(&Calibrator::Identity, z.view()).unwrap();
    let cases = v["metrics"].as_object().unwrap();
    assert_eq!(cases.len(), 4);
    for (bins, expected) in cases {
        let report = evaluate(probs.view(), &y, bins.parse().unwrap()).unwrap();
        for (name, got) in report.named() {
            let want = expected[name].as_f64().unwrap();
            let got = got.unwrap();
            assert!(
                (got - want).abs() < 1e-10,
                "{name} with {bins} bins: caliper {got} vs numpy {want}"
            );
        }
    }
}

#[test]
fn ts_matches_the_reference_optimum() {
    let (v, z, y) = reference();
    let want = v["ts_temperature"].as_f64().unwrap();
    let Calibrator::Ts { temperature } =
        fit(Method::Ts, &FitOptions::default(), z.view(), &y).unwrap()
    else {
        panic!("ts expected")
    };
    assert!(
        (temperature - want).abs() < 1e-8 * want,
        "{temperature} vs {want}"
    );
}

#[test]
fn streaming_accumulator_agrees_with_the_batch_metrics() {
    let (v, z, y) = reference();
    let probs = calibrate_rows(&Calibrator::Identity, z.view()).unwrap();
    // Split the stream in three shards, as three monitor windows would, then merge.
    let mut shards = vec![BinnedAccumulator::new(15).unwrap(); 3];
    for (i, (p, &label)) in probs.rows().into_iter().zip(&y).enumerate() {
        let top = caliper::numeric::argmax(&p.to_vec());
        shards[i % 3].add(p[top], top == label).unwrap();
    }
    let mut merged = shards[0].clone();
    merged.merge(&shards[1]).unwrap();
    merged.merge(&shards[2]).unwrap();
    let want = &v["metrics"]["15"];
    assert!((merged.ece().unwrap() - want["ece"].as_f64().unwrap()).abs() < 1e-12);
    assert!((merged.mce().unwrap() - want["mce"].as_f64().unwrap()).abs() < 1e-12);
    assert!((merged.accuracy().unwrap() - want["accuracy"].as_f64().unwrap()).abs() < 1e-12);
}
