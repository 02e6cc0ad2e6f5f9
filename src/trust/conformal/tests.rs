//! Hand-computed cases and a coverage check on a simulated calibrated classifier.

use super::*;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn scores_match_hand_computation() {
    let p = [0.2, 0.5, 0.3];
    let lac = ScoreKind::Lac.class_scores(&p);
    assert!((lac[0] - 0.8).abs() < 1e-12 && (lac[1] - 0.5).abs() < 1e-12);
    // APS ranking 1, 2, 0: cumulative 0.5, 0.8, 1.0.
    let aps = ScoreKind::Aps.class_scores(&p);
    assert!((aps[1] - 0.5).abs() < 1e-12 && (aps[2] - 0.8).abs() < 1e-12);
    assert!((aps[0] - 1.0).abs() < 1e-12);
    assert_eq!(ScoreKind::Aps.label_score(&p, 2), aps[2]);
    // Ties rank the lower index first.
    assert_eq!(ScoreKind::Aps.class_scores(&[0.5, 0.5]), vec![0.5, 1.0]);
}

#[test]
fn quantile_uses_the_finite_sample_rank() {
    let s: Vec<f64> = (1..=9).map(|i| f64::from(i) / 10.0).collect();
    // n = 9: alpha 0.1 -> rank ceil(10 * 0.9) = 9; alpha 0.2 -> 8; alpha 0.25 -> ceil(7.5) = 8.
    assert_eq!(conformal_quantile(&s, 0.1).unwrap(), 0.9);
    assert_eq!(conformal_quantile(&s, 0.2).unwrap(), 0.8);
    assert_eq!(conformal_quantile(&s, 0.25).unwrap(), 0.8);
    assert_eq!(conformal_quantile(&s, 0.5).unwrap(), 0.5);
    // n = 9 cannot certify alpha 0.05 (rank 10 > 9): every class goes in.
    assert_eq!(conformal_quantile(&s, 0.05).unwrap(), f64::INFINITY);
    assert!(conformal_quantile(&s, 0.0).is_err() && conformal_quantile(&s, 1.0).is_err());
    assert!(conformal_quantile(&[], 0.1).is_err());
}

#[test]
fn fit_and_predict_a_small_case() {
    let probs = Array2::from_shape_vec(
        (4, 3),
        vec![
            0.7, 0.2, 0.1, //
            0.1, 0.6, 0.3, //
            0.3, 0.3, 0.4, //
            0.5, 0.4, 0.1,
        ],
    )
    .unwrap();
    let labels = [0, 1, 2, 1];
    let lac = SplitConformal::fit(probs.view(), &labels, ScoreKind::Lac, 0.2).unwrap();
    // LAC scores: 0.3, 0.4, 0.6, 0.6 (sorted). n = 4, alpha 0.4: rank ceil(5 * 0.6) = 3 -> 0.6.
    assert_eq!(lac.quantile(0.4).unwrap(), lac.scores[2]);
    assert!((lac.scores[2] - 0.6).abs() < 1e-12);
    // Classes with p >= 0.4 (up to rounding of 1 - p): [0.45, 0.42, 0.13] -> {0, 1}.
    assert_eq!(
        lac.predict_set(&[0.45, 0.42, 0.13], 0.4).unwrap(),
        vec![0, 1]
    );
    assert_eq!(
        lac.predict_set(&[0.2, 0.3, 0.3], 0.4).unwrap(),
        Vec::<usize>::new()
    );
    // alpha 0.2: rank 4 -> 0.6 as well; alpha 0.1: rank 5 > 4 -> everything.
    assert_eq!(
        lac.predict_set(&[0.2, 0.3, 0.3], 0.1).unwrap(),
        vec![0, 1, 2]
    );

    let aps = SplitConformal::fit(probs.view(), &labels, ScoreKind::Aps, 0.2).unwrap();
    // APS scores: row0 y=0: 0.7; row1 y=1: 0.6; row2 y=2: 0.4; row3 y=1: 0.9.
    let want = [0.4, 0.6, 0.7, 0.9];
    for (a, b) in aps.scores.iter().zip(want) {
        assert!((a - b).abs() < 1e-12);
    }
    // alpha 0.4 -> rank 3 -> 0.7: [0.5, 0.3, 0.2] cumulates 0.5, 0.8 -> {0}.
    assert_eq!(aps.predict_set(&[0.5, 0.3, 0.2], 0.4).unwrap(), vec![0]);
    let json = serde_json::to_string(&aps).unwrap();
    assert!(json.contains("\"score\":\"aps\""));
    assert_eq!(serde_json::from_str::<SplitConformal>(&json).unwrap(), aps);
}

#[test]
fn bad_inputs_are_errors() {
    let p = Array2::from_shape_vec((2, 2), vec![0.5, 0.5, f64::NAN, 1.0]).unwrap();
    assert_eq!(
        SplitConformal::fit(p.view(), &[0, 1], ScoreKind::Lac, 0.1),
        Err(ConformalError::BadProbability { row: 1 })
    );
    let p = Array2::from_shape_vec((1, 2), vec![0.5, 0.5]).unwrap();
    assert!(matches!(
        SplitConformal::fit(p.view(), &[2], ScoreKind::Lac, 0.1),
        Err(ConformalError::Label { label: 2, .. })
    ));
    assert!(SplitConformal::fit(p.view(), &[0, 1], ScoreKind::Lac, 0.1).is_err());
    assert!(SplitConformal::fit(p.view(), &[0], ScoreKind::Aps, 1.5).is_err());
    assert!("lac".parse::<ScoreKind>().is_ok() && "raps".parse::<ScoreKind>().is_err());
}

/// Rows of a classifier that is calibrated by construction: logits ~ N(0, 2^2), label drawn from
/// the softmax. Coverage must hold for any model; calibration only makes the sets informative.
fn simulate(rng: &mut ChaCha8Rng, n: usize, k: usize) -> (Array2<f64>, Vec<usize>) {
    let mut probs = Array2::zeros((n, k));
    let mut labels = Vec::with_capacity(n);
    for mut row in probs.outer_iter_mut() {
        // Box-Muller normals.
        let z: Vec<f64> = (0..k)
            .map(|_| {
                let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
                2.0 * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
            })
            .collect();
        let p = crate::numeric::softmax_with_temperature(&z, 1.0);
        let u: f64 = rng.random();
        let mut acc = 0.0;
        let y = p
            .iter()
            .position(|q| {
                acc += q;
                u < acc
            })
            .unwrap_or(k - 1);
        row.assign(&ndarray::ArrayView1::from(&p));
        labels.push(y);
    }
    (probs, labels)
}

#[test]
fn coverage_is_at_least_one_minus_alpha_within_finite_sample_tolerance() {
    let (n_cal, n_test, k, alpha, trials) = (500, 2000, 10, 0.1, 40);
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    for score in [ScoreKind::Lac, ScoreKind::Aps] {
        let mut total = 0.0;
        let mut sizes = 0.0;
        for _ in 0..trials {
            let (cp, cl) = simulate(&mut rng, n_cal, k);
            let (tp, tl) = simulate(&mut rng, n_test, k);
            let c = SplitConformal::fit(cp.view(), &cl, score, alpha).unwrap();
            let (cov, size) = coverage_and_size(&c.predict_sets(tp.view(), alpha).unwrap(), &tl);
            // One trial's coverage has sd ~ sqrt(a(1-a)/n_cal + a(1-a)/n_test) ~ 0.015.
            assert!(cov > 1.0 - alpha - 0.06, "{score:?}: trial coverage {cov}");
            total += cov;
            sizes += size;
        }
        let mean = total / f64::from(trials);
        // Theory: 1 - alpha <= E[coverage] <= 1 - alpha + 1/(n+1) (distinct scores); the mean
        // of 40 trials has sd ~ 0.0024, so 0.01 is four standard deviations.
        assert!(
            mean >= 1.0 - alpha - 0.01,
            "{score:?}: mean coverage {mean}"
        );
        assert!(
            mean <= 1.0 - alpha + 1.0 / (n_cal as f64 + 1.0) + 0.01,
            "{score:?}: {mean}"
        );
        let mean_size = sizes / f64::from(trials);
        assert!(
            mean_size > 1.0 && mean_size < k as f64,
            "{score:?}: size {mean_size}"
        );
    }
}
