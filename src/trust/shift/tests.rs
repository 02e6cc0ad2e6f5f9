//! Known cases: chi-square tail values in closed form, and synthetic calibrated data with a
//! known class prior (three 1-D Gaussians, exact Bayes posteriors under the source prior) on
//! which EM and BBSE must recover the target prior.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

const MEANS: [f64; 3] = [-2.0, 0.0, 2.0];

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller.
    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn sample_class(rng: &mut ChaCha8Rng, prior: &[f64]) -> usize {
    let mut u: f64 = rng.random();
    for (k, p) in prior.iter().enumerate() {
        if u < *p {
            return k;
        }
        u -= p;
    }
    prior.len() - 1
}

/// Exact posterior p(k | x) under `prior`: calibrated by construction.
fn posterior(x: f64, prior: &[f64]) -> Vec<f64> {
    let w: Vec<f64> = MEANS
        .iter()
        .zip(prior)
        .map(|(m, p)| p * (-(x - m) * (x - m) / 2.0).exp())
        .collect();
    normalised(&w).unwrap()
}

/// `n` rows drawn with class prior `target`, as posteriors under `source`; and their labels.
fn draw(seed: u64, n: usize, target: &[f64], source: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = Vec::with_capacity(n * 3);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let y = sample_class(&mut rng, target);
        rows.extend(posterior(MEANS[y] + normal(&mut rng), source));
        labels.push(y);
    }
    (rows, labels)
}

fn argmax(row: &[f64]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]))
        .unwrap()
}

#[test]
fn chi2_tail_matches_closed_forms_and_tables() {
    // df = 2: exp(-x/2); df = 4: exp(-x/2) (1 + x/2).
    for x in [0.1, 1.0, 2.0, 7.5, 30.0] {
        assert!((chi2_sf(x, 2.0) - (-x / 2.0f64).exp()).abs() < 1e-12, "{x}");
        let want = (-x / 2.0f64).exp() * (1.0 + x / 2.0);
        assert!((chi2_sf(x, 4.0) - want).abs() < 1e-12, "{x}");
    }
    // Table values: the 95% quantiles of chi-square with 1 and 9 degrees of freedom.
    assert!((chi2_sf(3.841_458_820_694_124, 1.0) - 0.05).abs() < 1e-9);
    assert!((chi2_sf(16.918_977_604_620_448, 9.0) - 0.05).abs() < 1e-9);
    assert_eq!(chi2_sf(0.0, 3.0), 1.0);
}

#[test]
fn em_recovers_a_known_prior_and_its_test_sees_the_shift() {
    let source = [1.0 / 3.0; 3];
    let target = [0.7, 0.2, 0.1];
    let (rows, _) = draw(1, 5_000, &target, &source);
    let e = em_prior(&rows, 3, &source, EmOptions::default()).unwrap();
    assert!(e.converged);
    assert!(total_variation(&e.prior, &target) < 0.03, "{:?}", e.prior);
    assert!(e.pvalue < 1e-10, "p = {}", e.pvalue);
}

#[test]
fn em_under_no_shift_stays_at_the_source_prior_and_rarely_rejects() {
    let source = [0.5, 0.3, 0.2];
    let mut rejections = 0;
    for seed in 0..40 {
        let (rows, _) = draw(100 + seed, 1_000, &source, &source);
        let e = em_prior(&rows, 3, &source, EmOptions::default()).unwrap();
        assert!(total_variation(&e.prior, &source) < 0.06, "{:?}", e.prior);
        assert!((0.0..=1.0).contains(&e.pvalue));
        if e.pvalue < 0.05 {
            rejections += 1;
        }
    }
    // About 2 of 40 expected at the 5% level; 8 would be a badly miscalibrated test.
    assert!(rejections <= 7, "{rejections} of 40 rejected at 5%");
}

#[test]
fn bbse_recovers_a_known_prior_from_the_confusion_matrix() {
    let source = [1.0 / 3.0; 3];
    let target = [0.1, 0.3, 0.6];
    let (val, val_labels) = draw(7, 20_000, &source, &source);
    let mut confusion = vec![vec![0u64; 3]; 3];
    for (row, &y) in val.chunks_exact(3).zip(&val_labels) {
        confusion[argmax(row)][y] += 1;
    }
    let (served, _) = draw(8, 5_000, &target, &source);
    let mut predicted = vec![0u64; 3];
    for row in served.chunks_exact(3) {
        predicted[argmax(row)] += 1;
    }
    let b = bbse_prior(&confusion, &predicted).unwrap();
    assert!(total_variation(&b.prior, &target) < 0.03, "{:?}", b.prior);
    // EM on the same rows agrees.
    let e = em_prior(&served, 3, &source, EmOptions::default()).unwrap();
    assert!(total_variation(&b.prior, &e.prior) < 0.03);
}

#[test]
fn bbse_refuses_a_singular_matrix_and_mismatched_shapes() {
    // Class 2 is never predicted: the third row is zero.
    let c = vec![vec![5, 1, 2], vec![1, 5, 3], vec![0, 0, 0]];
    assert_eq!(bbse_prior(&c, &[3, 3, 0]), Err(ShiftError::Singular));
    assert!(matches!(bbse_prior(&c, &[1, 2]), Err(ShiftError::Shape(_))));
    assert_eq!(bbse_prior(&c, &[0, 0, 0]), Err(ShiftError::Empty));
}

#[test]
fn reweighting_by_the_true_ratio_gives_the_target_posterior() {
    let source = [1.0 / 3.0; 3];
    let target = [0.7, 0.2, 0.1];
    let ratio = prior_ratio(&target, &source);
    for x in [-3.0, -0.5, 0.0, 1.2] {
        let got = reweight(&posterior(x, &source), &ratio);
        let want = posterior(x, &target);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12);
        }
    }
    // A ratio that zeroes every class with mass leaves the row as it was.
    assert_eq!(reweight(&[0.0, 1.0], &[1.0, 0.0]), vec![0.0, 1.0]);
    assert_eq!(source_prior(Some(&[1, 3]), 2), vec![0.25, 0.75]);
    assert_eq!(source_prior(None, 4), vec![0.25; 4]);
    assert_eq!(source_prior(Some(&[1, 3]), 3), vec![1.0 / 3.0; 3]);
}

#[test]
fn em_refuses_bad_input() {
    let p = [0.5, 0.5];
    assert_eq!(
        em_prior::<f64>(&[], 2, &p, EmOptions::default()),
        Err(ShiftError::Empty)
    );
    assert!(matches!(
        em_prior(&[0.5, 0.5, 0.1], 2, &p, EmOptions::default()),
        Err(ShiftError::Shape(_))
    ));
    assert!(matches!(
        em_prior(&[f64::NAN, 0.5], 2, &p, EmOptions::default()),
        Err(ShiftError::Invalid(_))
    ));
    // f32 rows (the live window's storage) work too.
    let e = em_prior(&[0.9f32, 0.1, 0.8, 0.2], 2, &p, EmOptions::default()).unwrap();
    assert!(e.prior[0] > 0.5);
}
