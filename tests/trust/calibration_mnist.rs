//! ATS on real logits: the bundled MNIST model run over MNIST test (via `--model/--data`
//! loading), fitted on one half and judged on the other. ATS must not make held-out NLL worse
//! than TS by more than noise (two paired standard errors), and must keep accuracy.

use std::path::PathBuf;

use caliper::cli::input::InputArgs;
use caliper::trust::calibration::{FitOptions, Method, calibrate_rows, fit};

#[test]
fn ats_is_no_worse_than_ts_on_held_out_mnist_logits() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let input = InputArgs {
        logits: None,
        labels: None,
        model: Some("mnist".into()),
        data: Some("mnist:test".into()),
        models_dir: root.join("models"),
        data_dir: root.join("data"),
    };
    let data = input
        .load()
        .expect("models/mnist and data/mnist (make fetch-data)");
    let n = data.labels.len();
    assert_eq!((n, data.logits.ncols()), (10_000, 10));
    // Interleaved halves: even rows fit, odd rows judge.
    let pick = |parity: usize| {
        let rows: Vec<usize> = (parity..n).step_by(2).collect();
        (
            data.logits.select(ndarray::Axis(0), &rows),
            rows.iter().map(|&i| data.labels[i]).collect::<Vec<_>>(),
        )
    };
    let (zv, yv) = pick(0);
    let (zt, yt) = pick(1);
    let opts = FitOptions::default();
    let per_sample_nll = |method| {
        let cal = fit(method, &opts, zv.view(), &yv).unwrap();
        let p = calibrate_rows(&cal, zt.view()).unwrap();
        yt.iter()
            .enumerate()
            .map(|(i, &y)| -p[[i, y]].max(f64::MIN_POSITIVE).ln())
            .collect::<Vec<f64>>()
    };
    let ts = per_sample_nll(Method::Ts);
    let ats = per_sample_nll(Method::Ats);
    let d: Vec<f64> = ats.iter().zip(&ts).map(|(a, t)| a - t).collect();
    let m = d.len() as f64;
    let mean = d.iter().sum::<f64>() / m;
    let se = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (m - 1.0) / m).sqrt();
    let mean_ts = ts.iter().sum::<f64>() / m;
    assert!(
        mean <= 2.0 * se,
        "held-out NLL: ATS is worse than TS ({mean_ts} + {mean}) by more than 2 SE ({se})"
    );
}
