//! Hand-computed cases, the never-empty APS sets and a coverage check on a simulated calibrated
//! classifier for every score.

use super::*;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// An unfitted predictor of `score` (no calibration scores), for its class scores.
fn scorer(score: ScoreKind, regularization: Option<Regularization>) -> SplitConformal {
    SplitConformal {
        score,
        alpha: 0.1,
        scores: vec![],
        regularization,
    }
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
}

#[test]
fn scores_match_hand_computation() {
    let p = [0.2, 0.5, 0.3];
    let lac = scorer(ScoreKind::Lac, None).class_scores(&p, 0.5);
    assert!(close(&lac, &[0.8, 0.5, 0.7]));
    // APS ranking 1, 2, 0: cumulative 0.5, 0.8, 1.0 (u ignored).
    let aps = scorer(ScoreKind::Aps, None).class_scores(&p, 0.5);
    assert!(close(&aps, &[1.0, 0.5, 0.8]));
    // Randomised: mass above + u * p: class 1: 0 + 0.25; class 2: 0.5 + 0.15; class 0: 0.8 + 0.1.
    let rand = scorer(ScoreKind::ApsRandomized, None).class_scores(&p, 0.5);
    assert!(close(&rand, &[0.9, 0.25, 0.65]));
    // u = 1 is the non-randomised score.
    assert!(close(
        &scorer(ScoreKind::ApsRandomized, None).class_scores(&p, 1.0),
        &aps
    ));
    // RAPS with k_reg 1, lambda 0.1: ranks 1, 2, 3 add 0, 0.1, 0.2.
    let reg = Regularization {
        lambda: 0.1,
        k_reg: 1,
    };
    let raps = scorer(ScoreKind::Raps, Some(reg)).class_scores(&p, 0.5);
    assert!(close(&raps, &[1.1, 0.25, 0.75]));
    // Ties rank the lower index first.
    assert!(close(
        &scorer(ScoreKind::Aps, None).class_scores(&[0.5, 0.5], 0.0),
        &[0.5, 1.0]
    ));
}

#[test]
fn aps_sets_are_never_empty_and_hold_the_crossing_class() {
    // Calibration scores 0.50, 0.51, ..., 0.99 (n = 50): alpha 0.5 -> rank ceil(51 * 0.5) = 26
    // -> q = 0.75.
    let fitted = |score, regularization| SplitConformal {
        score,
        alpha: 0.1,
        scores: (50..100).map(|i| f64::from(i) / 100.0).collect(),
        regularization,
    };
    let aps = fitted(ScoreKind::Aps, None);
    let q = aps.quantile(0.5).unwrap();
    assert!((q - 0.75).abs() < 1e-12);
    // The top probability (0.9) exceeds q: the old set {cumulative <= q} was empty.
    assert_eq!(
        aps.predict_set(&[0.05, 0.9, 0.05], 0.5, 0.0).unwrap(),
        vec![1]
    );
    // The mass crosses q at the second class (0.6 + 0.3 > 0.75): both are in, the third not.
    assert_eq!(
        aps.predict_set(&[0.3, 0.6, 0.1], 0.5, 0.0).unwrap(),
        vec![0, 1]
    );
    // Randomised scores: u = 1 would drop even the top class (0.9 > q); it stays.
    let reg = Some(DEFAULT_REGULARIZATION);
    for (score, r) in [(ScoreKind::ApsRandomized, None), (ScoreKind::Raps, reg)] {
        let c = fitted(score, r);
        assert_eq!(
            c.predict_set(&[0.05, 0.9, 0.05], 0.5, 1.0).unwrap(),
            vec![1]
        );
        // u = 0.5: 0.45 <= q keeps the top class; 0.9 + 0.025 > q drops the rest.
        assert_eq!(
            c.predict_set(&[0.05, 0.9, 0.05], 0.5, 0.5).unwrap(),
            vec![1]
        );
        // u = 0.1: class 0 scores 0.6 + 0.03 <= q and is in as well.
        assert_eq!(
            c.predict_set(&[0.3, 0.6, 0.1], 0.5, 0.1).unwrap(),
            vec![0, 1]
        );
    }
    // LAC sets stay empty when no class reaches 1 - q = 0.25.
    let lac = fitted(ScoreKind::Lac, None);
    assert!(lac.predict_set(&[0.2; 5], 0.5, 0.0).unwrap().is_empty());
    // u must be a probability.
    assert_eq!(
        aps.predict_set(&[0.2, 0.7, 0.1], 0.5, 1.5),
        Err(ConformalError::U(1.5))
    );
}

#[test]
fn every_aps_family_set_on_random_rows_is_nonempty_and_a_prefix_of_the_ranking() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (cp, cl) = simulate(&mut rng, 300, 10);
    let (tp, _) = simulate(&mut rng, 300, 10);
    for score in [ScoreKind::Aps, ScoreKind::ApsRandomized, ScoreKind::Raps] {
        let c = SplitConformal::fit(cp.view(), &cl, score, 0.1).unwrap();
        for alpha in [0.02, 0.1, 0.3, 0.6, 0.9] {
            for (row, set) in tp
                .outer_iter()
                .zip(c.predict_sets(tp.view(), alpha).unwrap())
            {
                assert!(!set.is_empty(), "{score:?} alpha {alpha}: empty set");
                // Every class in the set is at least as probable as every class outside it.
                let least_in = set.iter().map(|&k| row[k]).fold(1.0, f64::min);
                let most_out = (0..10)
                    .filter(|k| !set.contains(k))
                    .map(|k| row[k])
                    .fold(0.0, f64::max);
                assert!(least_in >= most_out, "{score:?}: {set:?} is not a prefix");
            }
        }
    }
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
        lac.predict_set(&[0.45, 0.42, 0.13], 0.4, 0.0).unwrap(),
        vec![0, 1]
    );
    assert_eq!(
        lac.predict_set(&[0.2, 0.3, 0.3], 0.4, 0.0).unwrap(),
        Vec::<usize>::new()
    );
    // alpha 0.2: rank 4 -> 0.6 as well; alpha 0.1: rank 5 > 4 -> everything.
    assert_eq!(
        lac.predict_set(&[0.2, 0.3, 0.3], 0.1, 0.0).unwrap(),
        vec![0, 1, 2]
    );

    let aps = SplitConformal::fit(probs.view(), &labels, ScoreKind::Aps, 0.2).unwrap();
    // APS scores: row0 y=0: 0.7; row1 y=1: 0.6; row2 y=2: 0.4; row3 y=1: 0.9.
    let want = [0.4, 0.6, 0.7, 0.9];
    for (a, b) in aps.scores.iter().zip(want) {
        assert!((a - b).abs() < 1e-12);
    }
    // alpha 0.4 -> rank 3 -> 0.7: [0.5, 0.3, 0.2] cumulates 0.5, 0.8: the mass crosses 0.7
    // at class 1, so {0, 1}; [0.8, 0.1, 0.1] crosses at once: {0}.
    assert_eq!(
        aps.predict_set(&[0.5, 0.3, 0.2], 0.4, 0.0).unwrap(),
        vec![0, 1]
    );
    assert_eq!(
        aps.predict_set(&[0.8, 0.1, 0.1], 0.4, 0.0).unwrap(),
        vec![0]
    );
    let json = serde_json::to_string(&aps).unwrap();
    assert!(json.contains("\"score\":\"aps\"") && !json.contains("regularization"));
    assert_eq!(serde_json::from_str::<SplitConformal>(&json).unwrap(), aps);

    // RAPS stores its regularisation; a refit with the default seed is identical.
    let raps = SplitConformal::fit(probs.view(), &labels, ScoreKind::Raps, 0.2).unwrap();
    assert_eq!(raps.regularization, Some(DEFAULT_REGULARIZATION));
    let json = serde_json::to_string(&raps).unwrap();
    assert!(json.contains("\"score\":\"raps\"") && json.contains("\"k_reg\":5"));
    assert_eq!(serde_json::from_str::<SplitConformal>(&json).unwrap(), raps);
    assert_eq!(
        SplitConformal::fit(probs.view(), &labels, ScoreKind::Raps, 0.2).unwrap(),
        raps
    );
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
    for k in ScoreKind::ALL {
        assert_eq!(k.name().parse::<ScoreKind>(), Ok(k));
        assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
    }
    assert!("thr".parse::<ScoreKind>().is_err());
    let bad = Regularization {
        lambda: -1.0,
        k_reg: 1,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    assert_eq!(
        SplitConformal::fit_with(p.view(), &[0], ScoreKind::Raps, 0.1, Some(bad), &mut rng),
        Err(ConformalError::Lambda(-1.0))
    );
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
    for score in ScoreKind::ALL {
        // Served sets, and the exact sets {k : score_k <= q} the guarantee is about (the served
        // ones add APS's crossing class and the randomised scores' top class).
        let (mut served, mut exact, mut sizes) = (0.0, 0.0, 0.0);
        for _ in 0..trials {
            let (cp, cl) = simulate(&mut rng, n_cal, k);
            let (tp, tl) = simulate(&mut rng, n_test, k);
            let c = SplitConformal::fit(cp.view(), &cl, score, alpha).unwrap();
            let q = c.quantile(alpha).unwrap();
            let mut sets = Vec::with_capacity(n_test);
            let mut exact_hits = 0usize;
            for (p, &y) in tp.outer_iter().zip(&tl) {
                let (p, u) = (p.to_vec(), rng.random::<f64>());
                let set = c.predict_set(&p, alpha, u).unwrap();
                let in_exact = c.class_scores(&p, u)[y] <= q;
                // The served set holds the exact one.
                assert!(!in_exact || set.contains(&y), "{score:?}");
                exact_hits += usize::from(in_exact);
                sets.push(set);
            }
            let (cov, size) = coverage_and_size(&sets, &tl);
            // One trial's coverage has sd ~ sqrt(a(1-a)/n_cal + a(1-a)/n_test) ~ 0.015.
            assert!(cov > 1.0 - alpha - 0.06, "{score:?}: trial coverage {cov}");
            served += cov;
            exact += exact_hits as f64 / n_test as f64;
            sizes += size;
        }
        let (served, exact) = (served / f64::from(trials), exact / f64::from(trials));
        // Theory: 1 - alpha <= E[coverage] <= 1 - alpha + 1/(n+1) (distinct scores); the mean
        // of 40 trials has sd ~ 0.0024, so 0.01 is four standard deviations.
        let upper = 1.0 - alpha + 1.0 / (n_cal as f64 + 1.0) + 0.01;
        assert!(
            exact >= 1.0 - alpha - 0.01 && exact <= upper,
            "{score:?}: exact-set coverage {exact}"
        );
        assert!(served >= exact, "{score:?}: {served} < {exact}");
        // Non-randomised APS is conservative by design; the others only add the top class
        // where u would drop it, which is rare when 1 - alpha is above the top-1 accuracy.
        if score != ScoreKind::Aps {
            assert!(served <= upper, "{score:?}: served coverage {served}");
        }
        let mean_size = sizes / f64::from(trials);
        assert!(
            mean_size > 1.0 && mean_size < k as f64,
            "{score:?}: size {mean_size}"
        );
    }
}
