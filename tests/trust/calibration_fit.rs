//! Fitting calibrators on synthetic logits with a known miscalibration: TS finds the exact NLL
//! optimum, temperature-type calibrators keep the argmax, ATS beats TS when the miscalibration
//! depends on the confidence, and bad input is refused with a clear error.

use caliper::numeric::{argmax, softmax_with_temperature};
use caliper::repository::{CalibrationFile, FitSummary};
use caliper::trust::calibration::{
    CalibrationError, Calibrator, FitOptions, Method, calibrate_rows, fit,
};
use caliper::trust::metrics::evaluate;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` samples of `k` classes: labels drawn from softmax(g), observed logits `g * scale(c)`
/// where c is the true confidence, so the model is over-confident when it is sure and
/// under-confident when it is not: no single temperature fixes both.
fn synthetic(n: usize, k: usize, seed: u64) -> (Array2<f64>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut z = Array2::zeros((n, k));
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let spread = 0.5 + 3.0 * rng.random::<f64>();
        let g: Vec<f64> = (0..k)
            .map(|_| {
                // Box-Muller: a standard normal from two uniforms.
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
                spread * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            })
            .collect();
        let p = softmax_with_temperature(&g, 1.0);
        let c = p.iter().copied().fold(0.0, f64::max);
        let mut u = rng.random::<f64>();
        let label = p
            .iter()
            .position(|&q| {
                u -= q;
                u < 0.0
            })
            .unwrap_or(k - 1);
        y.push(label);
        let scale = if c > 0.7 { 2.5 } else { 0.6 };
        for j in 0..k {
            z[[i, j]] = g[j] * scale;
        }
    }
    (z, y)
}

fn nll_at(z: &Array2<f64>, y: &[usize], t: f64) -> f64 {
    let probs = calibrate_rows(&Calibrator::Ts { temperature: t }, z.view()).unwrap();
    evaluate(probs.view(), y, 15).unwrap().nll
}

#[test]
fn ts_is_the_nll_optimum_on_a_fine_grid() {
    let (z, y) = synthetic(2000, 5, 1);
    let Calibrator::Ts { temperature } =
        fit(Method::Ts, &FitOptions::default(), z.view(), &y).unwrap()
    else {
        panic!("ts expected")
    };
    let best = nll_at(&z, &y, temperature);
    let mut grid_best = (f64::INFINITY, 0.0);
    for i in 0..=2000 {
        let t = 0.2 + i as f64 * 0.002;
        let v = nll_at(&z, &y, t);
        if v < grid_best.0 {
            grid_best = (v, t);
        }
    }
    assert!(best <= grid_best.0 + 1e-12, "{best} vs grid {grid_best:?}");
    assert!(
        (temperature - grid_best.1).abs() <= 0.002,
        "{temperature} vs {grid_best:?}"
    );
}

#[test]
fn temperature_calibrators_never_change_the_argmax() {
    let (z, y) = synthetic(1500, 4, 2);
    for smooth in [false, true] {
        let opts = FitOptions {
            smooth,
            ..FitOptions::default()
        };
        for method in [Method::Ts, Method::Ats] {
            let cal = fit(method, &opts, z.view(), &y).unwrap();
            assert!(cal.preserves_argmax());
            let probs = calibrate_rows(&cal, z.view()).unwrap();
            for (zr, pr) in z.rows().into_iter().zip(probs.rows()) {
                assert_eq!(argmax(&zr.to_vec()), argmax(&pr.to_vec()));
                assert!((pr.sum() - 1.0).abs() < 1e-9);
            }
        }
    }
}

#[test]
fn ats_beats_ts_on_held_out_ece_when_miscalibration_depends_on_confidence() {
    let (zv, yv) = synthetic(6000, 5, 3);
    let (zt, yt) = synthetic(6000, 5, 4);
    let opts = FitOptions::default();
    let ece = |cal: &Calibrator| {
        let p = calibrate_rows(cal, zt.view()).unwrap();
        evaluate(p.view(), &yt, 15).unwrap()
    };
    let raw = ece(&Calibrator::Identity);
    let ts = ece(&fit(Method::Ts, &opts, zv.view(), &yv).unwrap());
    let ats = ece(&fit(Method::Ats, &opts, zv.view(), &yv).unwrap());
    // One temperature cannot fix both regimes (here it even worsens ECE); pieces can.
    assert!(ats.ece < 0.5 * ts.ece, "ATS {} vs TS {}", ats.ece, ts.ece);
    assert!(
        ats.ece < 0.5 * raw.ece,
        "ATS {} vs raw {}",
        ats.ece,
        raw.ece
    );
    assert!(ats.nll <= ts.nll, "ATS NLL {} vs TS {}", ats.nll, ts.nll);
    assert!((ats.accuracy - raw.accuracy).abs() < 1e-12);
}

#[test]
fn every_method_fits_and_round_trips_through_a_file() {
    let (z, y) = synthetic(1000, 3, 5);
    let dir = tempfile::tempdir().unwrap();
    let opts = FitOptions::default();
    for method in [
        Method::Identity,
        Method::Ts,
        Method::Vector,
        Method::Ats,
        Method::Histogram,
        Method::Isotonic,
    ] {
        let cal = fit(method, &opts, z.view(), &y).unwrap();
        let summary = FitSummary::compute("synthetic", z.view(), &y, &cal, &opts, 15).unwrap();
        let before = summary.before.as_ref().unwrap();
        let after = summary.after.as_ref().unwrap();
        if method != Method::Identity {
            assert!(
                after.nll < before.nll,
                "{method:?} did not lower in-sample NLL"
            );
        }
        let path = dir.path().join(format!("{method:?}.json"));
        CalibrationFile::new("m", "", 3, cal.clone(), Some(summary))
            .save(&path)
            .unwrap();
        let back = CalibrationFile::load(&path).unwrap();
        assert_eq!(back.calibrator, cal);
        assert_eq!(back.fit.unwrap().label_counts.iter().sum::<usize>(), 1000);
    }
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let opts = FitOptions::default();
    let (z, y) = synthetic(400, 3, 6);
    let mut nan = z.clone();
    nan[[7, 1]] = f64::NAN;
    let e = fit(Method::Ats, &opts, nan.view(), &y).unwrap_err();
    assert!(
        matches!(e, CalibrationError::NonFiniteRow { row: 7, .. }),
        "{e}"
    );
    let empty = Array2::<f64>::zeros((0, 3));
    assert!(matches!(
        fit(Method::Ts, &opts, empty.view(), &[]),
        Err(CalibrationError::Empty)
    ));
    let mut bad = y.clone();
    bad[3] = 3;
    assert!(matches!(
        fit(Method::Ts, &opts, z.view(), &bad),
        Err(CalibrationError::LabelOutOfRange { row: 3, .. })
    ));
    assert!(matches!(
        fit(Method::Ts, &opts, z.view(), &y[1..]),
        Err(CalibrationError::LengthMismatch { .. })
    ));
    // 400 samples cannot make 50 pieces of 10.
    let many = FitOptions {
        pieces: 50,
        ..FitOptions::default()
    };
    let e = fit(Method::Ats, &many, z.view(), &y).unwrap_err();
    assert!(e.to_string().contains("too few"), "{e}");
    // A validation set without errors identifies no temperature.
    let perfect: Vec<usize> = z.rows().into_iter().map(|r| argmax(&r.to_vec())).collect();
    let e = fit(Method::Ats, &opts, z.view(), &perfect).unwrap_err();
    assert!(matches!(e, CalibrationError::Degenerate(_)), "{e}");
    // A calibrator with a different class count refuses the row.
    let cal = fit(Method::Vector, &opts, z.view(), &y).unwrap();
    assert!(cal.probabilities(&[0.0, 1.0]).is_err());
}
