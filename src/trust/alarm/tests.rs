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

/// A draw from the categorical distribution `p`.
fn categorical(rng: &mut ChaCha8Rng, p: &[f64]) -> usize {
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for (j, &pj) in p.iter().enumerate() {
        acc += pj;
        if u < acc {
            return j;
        }
    }
    p.len() - 1
}

/// An uneven 10-class predicted-class distribution (MNIST's validation predictions, roughly).
const P_TRUE: [f64; 10] = [
    0.098, 0.112, 0.1, 0.102, 0.097, 0.09, 0.099, 0.104, 0.098, 0.1,
];

/// Counts of `m` draws from `p`: a validation set's predicted classes.
fn validation_counts(rng: &mut ChaCha8Rng, p: &[f64], m: usize) -> Vec<u64> {
    let mut counts = vec![0u64; p.len()];
    for _ in 0..m {
        counts[categorical(rng, p)] += 1;
    }
    counts
}

/// Runs `n` served predictions from `p` (from `shift_at` on, from `shifted`); the prediction
/// at which the e-process first reached `threshold`.
fn run_label_shift(
    e: &mut LabelShiftEProcess,
    rng: &mut ChaCha8Rng,
    n: usize,
    shift_at: usize,
    shifted: &[f64],
    threshold: f64,
) -> Option<usize> {
    (0..n).find_map(|t| {
        let p = if t >= shift_at { shifted } else { &P_TRUE[..] };
        e.observe(categorical(rng, p));
        (e.value() >= threshold).then_some(t + 1)
    })
}

#[test]
fn label_shift_eprocess_is_valid_at_tolerance_zero_against_the_true_distribution() {
    // p0 exactly the serving distribution, eps = 0: a martingale; Ville bounds the crossings.
    let alpha = 0.05;
    let counts: Vec<u64> = P_TRUE.iter().map(|p| (p * 1e6) as u64).collect();
    let crossed = (0..200)
        .filter(|&s| {
            let mut rng = ChaCha8Rng::seed_from_u64(20_000 + s);
            let mut e = LabelShiftEProcess::new(&counts, 0.0).unwrap();
            run_label_shift(&mut e, &mut rng, 2_000, usize::MAX, &P_TRUE, 1.0 / alpha).is_some()
        })
        .count();
    eprintln!("label shift, eps = 0, p0 = p: {crossed}/200 streams of 2,000 crossed 20");
    assert!(crossed <= 10, "{crossed} of 200 null runs crossed");
}

#[test]
fn label_shift_eprocess_with_an_estimated_p0_rarely_crosses_and_detects_a_shift() {
    let alpha = 0.01;
    let m = 6_000;
    let eps = label_shift_tolerance(10, m as u64, alpha / 3.0);
    // p0 from 6,000 validation draws, served traffic from the true p, threshold 3 / alpha.
    let mut null_max = 0.0f64;
    let crossed = (0..200)
        .filter(|&s| {
            let mut rng = ChaCha8Rng::seed_from_u64(30_000 + s);
            let counts = validation_counts(&mut rng, &P_TRUE, m);
            let mut e = LabelShiftEProcess::new(&counts, eps).unwrap();
            let hit = run_label_shift(&mut e, &mut rng, 3_000, usize::MAX, &P_TRUE, 3.0 / alpha);
            null_max = null_max.max(e.max_value());
            hit.is_some()
        })
        .count();
    // 80% of traffic from classes 3 and 7 from prediction 1,000 on (TV about 0.6).
    let mut shifted = [0.025; 10];
    (shifted[3], shifted[7]) = (0.4, 0.4);
    let mut delays: Vec<usize> = (0..20)
        .map(|s| {
            let mut rng = ChaCha8Rng::seed_from_u64(40_000 + s);
            let counts = validation_counts(&mut rng, &P_TRUE, m);
            let mut e = LabelShiftEProcess::new(&counts, eps).unwrap();
            run_label_shift(&mut e, &mut rng, 3_000, 1_000, &shifted, 3.0 / alpha)
                .expect("alarm under label shift")
                - 1_000
        })
        .collect();
    delays.sort_unstable();
    // A milder shift: class 3 at a quarter of traffic (TV 0.15).
    let mut mild = [0.75 / 9.0; 10];
    mild[3] = 0.25;
    let mild_delays: Vec<Option<usize>> = (0..20)
        .map(|s| {
            let mut rng = ChaCha8Rng::seed_from_u64(50_000 + s);
            let counts = validation_counts(&mut rng, &P_TRUE, m);
            let mut e = LabelShiftEProcess::new(&counts, eps).unwrap();
            run_label_shift(&mut e, &mut rng, 5_000, 1_000, &mild, 3.0 / alpha).map(|t| t - 1_000)
        })
        .collect();
    let mut mild_fired: Vec<usize> = mild_delays.iter().flatten().copied().collect();
    mild_fired.sort_unstable();
    eprintln!(
        "label shift, eps = {eps:.4} (M = {m}): {crossed}/200 null streams of 3,000 crossed \
         {:.0} (largest e-value {null_max:.3}); 80% from two classes: 20/20 fired, median \
         delay {}, max {}; class 3 at 0.25: {}/20 fired within 4,000, median delay {:?}",
        3.0 / alpha,
        delays[10],
        delays[19],
        mild_fired.len(),
        mild_fired.get(mild_fired.len() / 2)
    );
    assert!(crossed <= 2, "{crossed} of 200 null runs crossed");
    assert!(delays[19] < 300, "delays {delays:?}");
    assert_eq!(mild_fired.len(), 20, "{mild_delays:?}");
}

#[test]
fn label_shift_eprocess_bets_after_a_long_quiet_stretch_and_handles_edge_cases() {
    // 20,000 null predictions, then the shift: detected about as fast as from the start.
    let counts: Vec<u64> = P_TRUE.iter().map(|p| (p * 6_000.0) as u64).collect();
    let mut shifted = [0.025; 10];
    (shifted[0], shifted[1]) = (0.4, 0.4);
    let mut rng = ChaCha8Rng::seed_from_u64(60_000);
    let mut e = LabelShiftEProcess::new(&counts, 0.04).unwrap();
    let delay = run_label_shift(&mut e, &mut rng, 21_000, 20_000, &shifted, 300.0)
        .expect("alarm after the quiet stretch")
        - 20_000;
    eprintln!("label shift after 20,000 quiet predictions: delay {delay}");
    assert!(delay < 300, "delay {delay}");
    // The point estimate follows the shift as q_hat forgets (TV(shifted, P_TRUE) = 0.59).
    run_label_shift(&mut e, &mut rng, 3_000, 0, &shifted, f64::INFINITY);
    assert!((e.distance() - 0.59).abs() < 0.1, "{}", e.distance());
    // No counts, one class: no process; an index out of range is ignored; NaN reads as 0.
    assert!(LabelShiftEProcess::new(&[0, 0], 0.0).is_none());
    assert!(LabelShiftEProcess::new(&[5], 0.0).is_none());
    let mut e = LabelShiftEProcess::new(&[1, 1], f64::NAN).unwrap();
    e.observe(2);
    assert_eq!((e.samples(), e.tolerance(), e.value()), (0, 0.0, 1.0));
    // The default tolerance: 1/2 sqrt(9/6000) + sqrt(ln(300)/12000) for MNIST's file at
    // alpha = 0.01; it shrinks with more rows; nothing to test without rows.
    let eps = label_shift_tolerance(10, 6_000, 0.01 / 3.0);
    assert!((eps - 0.04115).abs() < 1e-4, "{eps}");
    assert!(label_shift_tolerance(10, 60_000, 0.01 / 3.0) < eps / 3.0);
    assert_eq!(label_shift_tolerance(10, 0, 0.01), 1.0);
}

fn bin(
    count: u64,
    confidence: f64,
    accuracy: f64,
    lower: f64,
    upper: f64,
) -> crate::trust::metrics::Bin {
    crate::trust::metrics::Bin {
        lower,
        upper,
        count,
        confidence,
        accuracy,
    }
}

#[test]
fn calibration_tolerance_matches_hand_computed_cases() {
    // Two bins of 100 at delta = 0.04 (ln(4 / delta) = ln 100). Unbiased: b_hat = 0,
    // sum x^2 bound = 100 (0.7 * 0.5^2 + 0.3 * 0.75^2) + 100 (0.8 * 0.25^2 + 0.2 * 1^2) = 59.375,
    // V = 200/199 * 59.375/200 = 0.298367; eps = sqrt(2 V ln 100 / 200) + 14 ln 100 / (3 * 199).
    let mut bins = vec![
        bin(100, 0.6, 0.7, 0.5, 0.75),
        bin(0, 0.0, 0.0, 0.25, 0.5),
        bin(100, 0.9, 0.8, 0.75, 1.0),
    ];
    let eps = calibration_tolerance(&bins, 0.04).unwrap();
    assert!((eps - 0.225213).abs() < 1e-6, "{eps}");
    // Over-confident by 5 points: |b_hat| = 0.05 adds, and V = 0.342965 grows the bound.
    bins[2].accuracy = 0.7;
    let eps = calibration_tolerance(&bins, 0.04).unwrap();
    assert!((eps - 0.283669).abs() < 1e-6, "{eps}");
    // More rows, a smaller bound; a smaller delta, a larger one.
    let many: Vec<_> = bins
        .iter()
        .map(|b| bin(b.count * 100, b.confidence, b.accuracy, b.lower, b.upper))
        .collect();
    let eps_many = calibration_tolerance(&many, 0.04).unwrap();
    assert!(eps_many < eps && eps_many > 0.05, "{eps_many}");
    assert!(calibration_tolerance(&bins, 0.001).unwrap() > eps);
    // Nothing to derive it from: fewer than two rows.
    assert_eq!(calibration_tolerance(&[], 0.01), None);
    assert_eq!(
        calibration_tolerance(&[bin(1, 0.9, 1.0, 0.8, 1.0)], 0.01),
        None
    );
}

#[test]
fn calibration_tolerance_from_validation_keeps_like_traffic_in_h0_and_a_real_drift_out() {
    // A calibrator that is 1 point over-confident on its own validation data (the bias a fit
    // leaves) and traffic drawn like it: with eps derived from 5,000 validation rows at
    // delta = alpha / 3, no stream of 3,000 labels reaches 3 / alpha. (At eps = 0 the null is
    // false, and the count printed says how many streams that bias sets off.)
    let alpha = 0.01;
    let bias = -0.01;
    let mut tolerances = Vec::new();
    let crossed = (0..20)
        .filter(|&s| {
            let mut rng = ChaCha8Rng::seed_from_u64(70_000 + s);
            let mut acc = crate::trust::metrics::BinnedAccumulator::new(15).unwrap();
            for _ in 0..5_000 {
                let c = 0.4 + 0.6 * rng.random::<f64>();
                acc.add(c, rng.random::<f64>() < c + bias).unwrap();
            }
            let eps = calibration_tolerance(&acc.bin_stats(), alpha / 3.0).unwrap();
            tolerances.push(eps);
            run_eprocess(80_000 + s, 3_000, bias, eps, 3.0 / alpha).is_some()
        })
        .count();
    let at_zero = (0..20)
        .filter(|&s| run_eprocess(80_000 + s, 3_000, bias, 0.0, 3.0 / alpha).is_some())
        .count();
    tolerances.sort_by(f64::total_cmp);
    eprintln!(
        "calibration tolerance from 5,000 validation rows (bias -0.01): median {:.4}, range \
         [{:.4}, {:.4}]; {crossed}/20 like-validation streams of 3,000 crossed {} ({at_zero}/20 \
         at eps = 0)",
        tolerances[10],
        tolerances[0],
        tolerances[19],
        3.0 / alpha
    );
    assert_eq!(crossed, 0);
    // Every tolerance covers the true bias; the bound adds about 0.03 to |b_hat| here
    // (sqrt(2 V ln(1200) / 5000) with V about 0.2, plus 14 ln(1200) / 15000).
    assert!(
        tolerances[0] > bias.abs() && tolerances[19] < 0.06,
        "{tolerances:?}"
    );
    // Traffic 15 points over-confident is outside every such H0: all 20 streams fire, even at
    // the widest of these tolerances.
    let fired = (0..20)
        .filter(|&s| run_eprocess(90_000 + s, 3_000, -0.15, tolerances[19], 3.0 / alpha).is_some())
        .count();
    assert_eq!(fired, 20);
}
