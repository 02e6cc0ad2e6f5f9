//! Seeded runs under the null (the alarm crosses 1/alpha in at most an alpha share of them,
//! Ville's inequality) and under drift (it crosses, and soon).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// Labelled stream: confidence uniform in [0.4, 1], correct with probability confidence + bias.
fn run_eprocess(seed: u64, n: usize, bias: f64, tolerance: f64, threshold: f64) -> Option<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut e = CalibrationEProcess::new(tolerance);
    for t in 0..n {
        let c = 0.4 + 0.6 * rng.random::<f64>();
        let correct = rng.random::<f64>() < (c + bias).clamp(0.0, 1.0);
        e.update(correct, c);
        if e.value() >= threshold {
            return Some(t + 1);
        }
    }
    None
}

#[test]
fn eprocess_rarely_crosses_under_calibration_and_crosses_under_drift() {
    let alpha = 0.05;
    let false_alarms = (0..200)
        .filter(|&s| run_eprocess(s, 2_000, 0.0, 0.0, 1.0 / alpha).is_some())
        .count();
    assert!(
        false_alarms <= 10,
        "{false_alarms} of 200 null runs alarmed"
    );
    // Over-confident by 0.1: every run alarms at alpha = 0.01, within a few hundred labels.
    let mut delays: Vec<usize> = (0..20)
        .map(|s| run_eprocess(1_000 + s, 2_000, -0.1, 0.0, 100.0).expect("alarm under drift"))
        .collect();
    delays.sort_unstable();
    eprintln!(
        "e-process: {false_alarms}/200 null runs crossed 20; median delay at 100 under a \
         0.1 over-confidence: {} labels",
        delays[10]
    );
    assert!(delays[10] < 800, "median delay {}", delays[10]);
    // Under-confidence is caught too (two-sided).
    assert!(run_eprocess(7, 2_000, 0.1, 0.0, 100.0).is_some());
}

#[test]
fn a_tolerance_absorbs_a_small_bias() {
    // A bias of 0.005 inside a tolerance of 0.01: never alarms at alpha = 0.01 in these runs.
    for s in 0..20 {
        assert_eq!(run_eprocess(500 + s, 5_000, -0.005, 0.01, 100.0), None);
    }
    let e = CalibrationEProcess::new(f64::NAN);
    assert_eq!((e.tolerance(), e.value(), e.mean_error()), (0.0, 1.0, None));
}

#[test]
fn eprocess_ignores_invalid_confidences_and_never_overflows() {
    let mut e = CalibrationEProcess::new(0.0);
    e.update(true, f64::NAN);
    e.update(true, 1.5);
    assert_eq!(e.samples(), 0);
    for _ in 0..100_000 {
        e.update(false, 1.0);
    }
    assert!(e.log_value() > 1_000.0 && e.value().is_finite());
    assert_eq!(e.mean_error(), Some(-1.0));
}

/// Scores: 1 - u^k for uniform u (a skew towards 1 like max-probabilities); k = 8 before the
/// change, 2 after (lower confidences).
fn score(rng: &mut ChaCha8Rng, k: i32) -> f64 {
    1.0 - rng.random::<f64>().powi(k)
}

#[test]
fn exchangeability_martingale_is_valid_under_exchangeability() {
    let alpha = 0.05;
    let mut false_alarms = 0;
    let mut p_sum = 0.0;
    for seed in 0..200 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut m = ExchangeabilityMartingale::new();
        for _ in 0..1_000 {
            let s = score(&mut rng, 8);
            p_sum += m.observe(s, rng.random());
        }
        if m.max_value() >= 1.0 / alpha {
            false_alarms += 1;
        }
    }
    assert!(
        false_alarms <= 10,
        "{false_alarms} of 200 null runs alarmed"
    );
    // Conformal p-values are uniform: mean 1/2.
    let mean = p_sum / 200_000.0;
    eprintln!("exchangeability: {false_alarms}/200 null runs crossed 20, mean p {mean:.4}");
    assert!((mean - 0.5).abs() < 0.005, "mean p-value {mean}");
}

#[test]
fn exchangeability_martingale_detects_a_change_after_a_quiet_stretch() {
    let mut delays = Vec::new();
    for seed in 0..20 {
        let mut rng = ChaCha8Rng::seed_from_u64(10_000 + seed);
        let mut m = ExchangeabilityMartingale::new();
        for _ in 0..3_000 {
            m.observe(score(&mut rng, 8), rng.random());
        }
        let delay = (1..=1_000).find(|_| {
            m.observe(score(&mut rng, 2), rng.random());
            m.value() >= 100.0
        });
        delays.push(delay.expect("alarm after the change"));
    }
    delays.sort_unstable();
    eprintln!(
        "exchangeability: median delay {} after 3,000 quiet scores",
        delays[10]
    );
    assert!(delays[10] < 300, "median delay {}", delays[10]);
}

#[test]
fn bins_are_monotone_and_bounded() {
    let b: Vec<usize> = [0.0, 0.5, 0.9, 0.99, 0.999_999, 1.0]
        .iter()
        .map(|&s| ExchangeabilityMartingale::bin(s))
        .collect();
    assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
    assert_eq!(b[5], EXCHANGEABILITY_BINS - 1);
    assert_eq!(ExchangeabilityMartingale::bin(f64::NAN), 0);
}
