//! OOD metrics, the 95%-TPR threshold and conformal coverage on real data: a Gaussian (LDA)
//! model of 7x7 average-pooled MNIST pixels gives both the Mahalanobis OOD score (MNIST test vs
//! Fashion-MNIST test) and the class probabilities for split-conformal sets.

use std::path::Path;

use caliper::data::split::{stratified_fraction, stratified_split};
use caliper::data::{Dataset, DatasetSpec};
use caliper::numeric::softmax_with_temperature;
use caliper::trust::conformal::{ScoreKind, SplitConformal, coverage_and_size};
use caliper::trust::ood::fit::{Mahalanobis, ood_metrics, threshold_at_tpr};
use ndarray::Array2;

fn load(spec: &str) -> Dataset {
    spec.parse::<DatasetSpec>()
        .unwrap()
        .load(Path::new("data"))
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
}

/// 4x4 average pooling of 28x28 grey images to 49 features in [0, 1].
fn pooled(d: &Dataset) -> Array2<f64> {
    let mut out = Array2::zeros((d.len(), 49));
    for (i, mut row) in out.outer_iter_mut().enumerate() {
        let img = d.image(i);
        for (j, v) in row.iter_mut().enumerate() {
            let (by, bx) = (j / 7 * 4, j % 7 * 4);
            let s: u32 = (0..16)
                .map(|t| u32::from(img[(by + t / 4) * 28 + bx + t % 4]))
                .sum();
            *v = f64::from(s) / (16.0 * 255.0);
        }
    }
    out
}

#[test]
fn mahalanobis_separates_mnist_from_fashion_and_conformal_sets_cover() {
    let train = load("mnist:train");
    let sub = train.subset(&stratified_fraction(&train.labels, 10, 0.2, 1).unwrap());
    let m = Mahalanobis::fit(pooled(&sub).view(), &sub.labels, 10, 1e-3).unwrap();

    let test = load("mnist:test");
    let (cal_idx, eval_idx) = stratified_split(&test.labels, 10, 0.5, 2).unwrap();
    let (cal, eval) = (test.subset(&cal_idx), test.subset(&eval_idx));
    let fashion = load("fashion-mnist:test");
    let (fcal, feval) = (pooled(&cal), pooled(&eval));
    let id_cal = m.score_rows(fcal.view()).unwrap();
    let id_eval = m.score_rows(feval.view()).unwrap();
    let ood = m.score_rows(pooled(&fashion).view()).unwrap();

    let metrics = ood_metrics(&id_eval, &ood).unwrap();
    eprintln!("MNIST vs Fashion-MNIST, Mahalanobis on pooled pixels: {metrics:?}");
    assert!(metrics.auroc > 0.9, "{metrics:?}");
    // A threshold fitted on one half keeps about 95% of the other half (sd ~ 0.3%).
    let t = threshold_at_tpr(&id_cal, 0.95).unwrap();
    let kept = id_eval.iter().filter(|&&s| s <= t).count() as f64 / id_eval.len() as f64;
    assert!((kept - 0.95).abs() < 0.015, "kept {kept}");

    let probs = |f: &Array2<f64>| {
        let mut p = Array2::zeros((f.nrows(), 10));
        for (r, mut out) in f.outer_iter().zip(p.outer_iter_mut()) {
            let d = m.class_distances(&r.to_vec()).unwrap();
            let neg: Vec<f64> = d.iter().map(|v| -v / 2.0).collect();
            out.assign(&ndarray::ArrayView1::from(&softmax_with_temperature(
                &neg, 1.0,
            )));
        }
        p
    };
    let (pcal, peval) = (probs(&fcal), probs(&feval));
    for score in [ScoreKind::Lac, ScoreKind::Aps] {
        let c = SplitConformal::fit(pcal.view(), &cal.labels, score, 0.1).unwrap();
        let (cov, size) =
            coverage_and_size(&c.predict_sets(peval.view(), 0.1).unwrap(), &eval.labels);
        eprintln!("{score:?}: coverage {cov:.4}, mean set size {size:.3}");
        // 5000 test points: sd of the coverage ~ 0.006 (calibration and test halves together).
        assert!(cov >= 0.9 - 0.02, "{score:?}: coverage {cov}");
        assert!(size < 10.0);
    }
}
