//! Prequential scoring of a shadow calibrator against the incumbent, and the rule that decides
//! when a shadow may replace it (issue 22, section 2).
//!
//! Prequential (Dawid 1984): each label is scored by the shadow that was fitted *before* the label
//! arrived, and by the incumbent, on the same prediction. Neither has seen the label, so the running
//! means are honest out-of-sample figures even though the shadow is refitted as labels come in.
//!
//! The promotion rule is anytime-valid: a test martingale that bets, label by label, against
//! H0 `E[c(d_t) | past] <= margin`, where `d = nll(incumbent) - nll(shadow)` is the label's NLL
//! gain and `c` clips it to `[-GAIN_CLIP, GAIN_CLIP]` nats. The payoff
//! `g = (c(d) - margin) / (GAIN_CLIP + margin)` lies in `[-1, 1]`, and the bettor
//! ([`OneSidedEProcess`]) stakes a fraction in `[0, 1/2]` chosen from past labels only, so under
//! H0 its wealth is a nonnegative supermartingale started at 1 and, by Ville's inequality, ever
//! reaches `1/alpha` with probability at most alpha, however many labels arrive and however
//! often the rule looks. A shadow is promoted when `n >= min_labels`, `mean(d) > margin` and the
//! e-value is at least `1/alpha`. Why the clip: a martingale bet needs a payoff bounded below
//! (one label's log-loss is unbounded when a calibrator puts almost nothing on the true class),
//! and the clipped gain is the quantity the null is stated for; 4 nats (a probability ratio of
//! about 55 on the true class) is far beyond the per-label gains of a temperature change on
//! all but the rare confidently-wrong predictions, so the clip seldom binds, and a larger bound
//! would shrink the stakes (and the power) in proportion. The paired t statistic's p-value is
//! still reported, as a description of the scores so far: repeated at every label, it is not a
//! valid test, and it decides nothing. Pure: no I/O, no locks, so it is unit-tested on
//! hand-computed cases and seeded simulations.

use serde::Serialize;

use crate::numeric::argmax;
use crate::trust::alarm::OneSidedEProcess;
use crate::trust::metrics::BinnedAccumulator;

/// Per-label NLL gains are clipped to `[-GAIN_CLIP, GAIN_CLIP]` nats before the promotion
/// e-process bets on them (see the module header).
pub const GAIN_CLIP: f64 = 4.0;

/// Running NLL and binned top-label statistics of one calibrator on the scored labels.
#[derive(Debug, Clone)]
struct Side {
    nll_sum: f64,
    binned: BinnedAccumulator,
}

impl Side {
    fn new(bins: usize) -> Self {
        Side {
            nll_sum: 0.0,
            binned: BinnedAccumulator::new(bins.max(1)).expect("bins >= 1"),
        }
    }

    /// Adds one labelled probability vector; returns its NLL.
    fn add(&mut self, probs: &[f64], label: usize) -> f64 {
        let nll = label_nll(probs, label);
        self.nll_sum += nll;
        let top = argmax(probs);
        // Probabilities come from a validated calibrator: finite and in [0, 1].
        let _ = self.binned.add(probs[top].clamp(0.0, 1.0), top == label);
        nll
    }
}

/// `-ln p[label]`, clamped like `trust::metrics` so that a zero probability stays finite.
pub fn label_nll(probs: &[f64], label: usize) -> f64 {
    -probs
        .get(label)
        .copied()
        .unwrap_or(0.0)
        .max(f64::MIN_POSITIVE)
        .ln()
}

/// The prequential comparison of one shadow with the incumbent.
#[derive(Debug, Clone)]
pub struct Prequential {
    shadow: Side,
    incumbent: Side,
    /// Welford's running mean and sum of squared deviations of `d = nll_inc - nll_shadow`.
    n: u64,
    mean: f64,
    m2: f64,
    /// The promotion margin the e-process tests against.
    margin: f64,
    /// The betting e-process on the clipped gains.
    eprocess: OneSidedEProcess,
}

/// What `GET /v1/models/M/monitor` shows of one shadow (`shadow.ts`, `shadow.ats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowScore {
    /// Labels scored (each by the shadow fitted before it arrived).
    pub n: u64,
    /// Mean NLL of the shadow on them.
    pub nll: Option<f64>,
    /// ECE (equal-width bins) of the shadow on them.
    pub ece: Option<f64>,
    /// Mean NLL of the incumbent on the same labels.
    pub incumbent_nll: Option<f64>,
    /// ECE of the incumbent on the same labels.
    pub incumbent_ece: Option<f64>,
    /// Mean of `nll(incumbent) - nll(shadow)`: positive when the shadow is better.
    pub nll_gain: Option<f64>,
    /// E-value of the promotion test: the betting e-process against "the clipped gain is at
    /// most the promotion margin" (see the module header); a promotion needs `1/alpha`.
    pub e_value: Option<f64>,
    /// One-sided p-value of the paired t statistic against the margin: descriptive only (a
    /// fixed-sample test looked at after every label is not valid, see the module header).
    pub p_value: Option<f64>,
}

impl Prequential {
    /// An empty comparison with `bins` equal-width ECE bins, testing gains against `margin`
    /// (nats per label, clamped into `[0, GAIN_CLIP / 2]`).
    pub fn new(bins: usize, margin: f64) -> Self {
        Prequential {
            shadow: Side::new(bins),
            incumbent: Side::new(bins),
            n: 0,
            mean: 0.0,
            m2: 0.0,
            margin: if margin.is_finite() {
                margin.clamp(0.0, GAIN_CLIP / 2.0)
            } else {
                0.0
            },
            eprocess: OneSidedEProcess::new(),
        }
    }

    /// Scores one label: `shadow` and `incumbent` are the two calibrators' probabilities of the
    /// same prediction.
    pub fn add(&mut self, shadow: &[f64], incumbent: &[f64], label: usize) {
        let d = self.incumbent.add(incumbent, label) - self.shadow.add(shadow, label);
        self.n += 1;
        let delta = d - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (d - self.mean);
        let clipped = if d.is_nan() {
            0.0
        } else {
            d.clamp(-GAIN_CLIP, GAIN_CLIP)
        };
        self.eprocess
            .update((clipped - self.margin) / (GAIN_CLIP + self.margin));
    }

    /// The promotion e-value (1 before any label).
    pub fn e_value(&self) -> f64 {
        self.eprocess.value()
    }

    /// Labels scored.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether no label was scored yet.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Mean NLL gain of the shadow over the incumbent.
    pub fn mean_gain(&self) -> Option<f64> {
        (self.n > 0).then_some(self.mean)
    }

    /// One-sided p-value of H0 `E[d] <= margin` (normal approximation of the paired t-test):
    /// descriptive, see the module header.
    pub fn p_value(&self, margin: f64) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        let sd = (self.m2 / (n - 1.0)).max(0.0).sqrt();
        let excess = self.mean - margin;
        if sd == 0.0 {
            // Every difference is the same number: the data leave no doubt either way.
            return Some(if excess > 0.0 { 0.0 } else { 1.0 });
        }
        Some(normal_upper_tail(excess / (sd / n.sqrt())))
    }

    /// The figures shown in the monitor.
    pub fn score(&self) -> ShadowScore {
        let mean = |s: &Side| (self.n > 0).then(|| s.nll_sum / self.n as f64);
        ShadowScore {
            n: self.n,
            nll: mean(&self.shadow),
            ece: self.shadow.binned.ece(),
            incumbent_nll: mean(&self.incumbent),
            incumbent_ece: self.incumbent.binned.ece(),
            nll_gain: self.mean_gain(),
            e_value: (self.n > 0).then(|| self.e_value()),
            p_value: self.p_value(self.margin),
        }
    }
}

/// When a shadow replaces the incumbent (`--auto-recalibrate`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PromotionRule {
    /// Fewest prequentially scored labels before any promotion.
    pub min_labels: u64,
    /// Level of the test: a promotion needs an e-value of at least `1/alpha`.
    pub alpha: f64,
    /// Smallest mean NLL gain per label (nats) worth a promotion.
    pub margin: f64,
}

/// The rule's answer for one shadow.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough labels scored yet.
    TooFewLabels { have: u64, need: u64 },
    /// The gain is not shown to exceed the margin at level alpha.
    Keep { gain: f64, e_value: f64 },
    /// The shadow beats the incumbent by more than the margin: the e-value reached `1/alpha`.
    Promote { gain: f64, e_value: f64 },
}

impl PromotionRule {
    /// Applies the rule to a comparison (scored against the same margin: `Prequential::new`).
    pub fn decide(&self, s: &Prequential) -> Verdict {
        let need = self.min_labels.max(1);
        if s.len() < need {
            return Verdict::TooFewLabels {
                have: s.len(),
                need,
            };
        }
        let gain = s.mean_gain().unwrap_or(0.0);
        let e_value = s.e_value();
        if gain > self.margin && e_value >= 1.0 / self.alpha {
            Verdict::Promote { gain, e_value }
        } else {
            Verdict::Keep { gain, e_value }
        }
    }
}

/// `P(Z >= z)` for a standard normal Z, through the complementary error function (Numerical
/// Recipes' `erfcc`, relative error below 1.2e-7 everywhere).
pub fn normal_upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tail_matches_reference_values() {
        // Reference: 0.5 * math.erfc(z / sqrt(2)) in Python.
        for (z, want) in [
            (0.0, 0.5),
            (1.0, 0.158_655_253_931_457_05),
            (2.326_347_874, 0.01),
            (4.242_640_687_119_285, 1.104_524_849_929_7e-5),
            (-1.0, 0.841_344_746_068_543),
        ] {
            let got = normal_upper_tail(z);
            assert!(
                (got - want).abs() <= 2e-7 * want.max(1e-3),
                "{z}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn prequential_scores_match_a_hand_computation() {
        let mut p = Prequential::new(10, 0.0);
        // Label 0 each time. Shadow: 0.9 then 0.6 on the label; incumbent: 0.5 then 0.2 (the
        // incumbent's top class is wrong on the second).
        p.add(&[0.9, 0.1], &[0.5, 0.5], 0);
        p.add(&[0.6, 0.4], &[0.2, 0.8], 0);
        let s = p.score();
        assert_eq!(s.n, 2);
        let nll_s = (-(0.9f64).ln() - (0.6f64).ln()) / 2.0;
        let nll_i = (-(0.5f64).ln() - (0.2f64).ln()) / 2.0;
        assert!((s.nll.unwrap() - nll_s).abs() < 1e-12);
        assert!((s.incumbent_nll.unwrap() - nll_i).abs() < 1e-12);
        assert!((s.nll_gain.unwrap() - (nll_i - nll_s)).abs() < 1e-12);
        // Shadow: bins (0.8, 0.9] right at 0.9 -> |1 - 0.9|, (0.5, 0.6] right at 0.6 -> 0.4.
        assert!((s.ece.unwrap() - (0.1 + 0.4) / 2.0).abs() < 1e-12);
        // Incumbent: 0.5 (argmax 0, right) -> 0.5; 0.8 on class 1 (wrong) -> 0.8.
        assert!((s.incumbent_ece.unwrap() - (0.5 + 0.8) / 2.0).abs() < 1e-12);
        // d = [ln(0.9/0.5), ln(0.6/0.2)]: mean and sd by hand, then the normal tail.
        let d = [(0.9f64 / 0.5).ln(), (0.6f64 / 0.2).ln()];
        let mean = (d[0] + d[1]) / 2.0;
        let sd = ((d[0] - mean).powi(2) + (d[1] - mean).powi(2)).sqrt();
        let want = normal_upper_tail(mean / (sd / 2f64.sqrt()));
        assert!((s.p_value.unwrap() - want).abs() < 1e-12);
    }

    /// Scores one label whose NLL gain is exactly `d` (d <= 3): label 0 of two classes, the
    /// incumbent puts e^-3 on it, the shadow e^(d - 3).
    fn add_gain(p: &mut Prequential, d: f64) {
        let inc = (-3.0f64).exp();
        let sh = (d - 3.0).exp();
        p.add(&[sh, 1.0 - sh], &[inc, 1.0 - inc], 0);
    }

    fn with_gains(margin: f64, gains: &[f64]) -> Prequential {
        let mut p = Prequential::new(15, margin);
        for &g in gains {
            add_gain(&mut p, g);
        }
        p
    }

    #[test]
    fn the_rule_waits_for_enough_labels_then_needs_the_evalue_and_the_margin() {
        let rule = PromotionRule {
            min_labels: 50,
            alpha: 0.01,
            margin: 0.0,
        };
        assert_eq!(
            rule.decide(&with_gains(0.0, &[0.5; 49])),
            Verdict::TooFewLabels { have: 49, need: 50 }
        );
        // A steady gain of 0.5 nats: the bettor's wealth grows every label.
        let clear = with_gains(0.0, &[0.5; 200]);
        let s = clear.score();
        assert!((s.nll_gain.unwrap() - 0.5).abs() < 1e-9);
        match rule.decide(&clear) {
            Verdict::Promote { gain, e_value } => {
                assert!((gain - 0.5).abs() < 1e-9);
                assert!(e_value >= 100.0 && s.e_value == Some(e_value), "{e_value}");
            }
            v => panic!("{v:?}"),
        }
        // The same gains against a margin of 0.5: the payoff is 0, the e-value stays at 1.
        let strict = PromotionRule {
            margin: 0.5,
            ..rule
        };
        match strict.decide(&with_gains(0.5, &[0.5; 200])) {
            Verdict::Keep { e_value, .. } => assert!((e_value - 1.0).abs() < 1e-9),
            v => panic!("{v:?}"),
        }
        // A worse shadow is never promoted; the bettor never stakes on it (e-value stays 1).
        match rule.decide(&with_gains(0.0, &[-0.2; 200])) {
            Verdict::Keep { gain, e_value } => assert!(gain < 0.0 && e_value <= 1.0),
            v => panic!("{v:?}"),
        }
        // Gains beyond the clip count as GAIN_CLIP: the payoff of a 6-nat gain is 1 exactly,
        // and one such label cannot be worth more than a factor 1.5.
        let mut p = Prequential::new(15, 0.0);
        p.add(&[0.5, 0.5], &[0.5 * (-6.0f64).exp(), 1.0], 0);
        assert!(p.e_value() <= 1.5);
    }

    /// Seeded runs of `n` labels with gains drawn by `draw`; returns how many crossed 1/alpha
    /// (with min_labels 1, i.e. the rule looking after every label) and the median crossing.
    fn crossings(
        runs: u64,
        n: usize,
        margin: f64,
        alpha: f64,
        draw: impl Fn(&mut ChaCha8Rng) -> f64,
    ) -> (usize, Option<usize>) {
        let rule = PromotionRule {
            min_labels: 1,
            alpha,
            margin,
        };
        let mut at: Vec<usize> = (0..runs)
            .filter_map(|seed| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut p = Prequential::new(15, margin);
                (1..=n).find(|_| {
                    add_gain(&mut p, draw(&mut rng));
                    matches!(rule.decide(&p), Verdict::Promote { .. })
                })
            })
            .collect();
        at.sort_unstable();
        (at.len(), at.get(at.len() / 2).copied())
    }

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn under_the_null_the_rule_promotes_in_at_most_about_alpha_of_runs() {
        let (alpha, margin) = (0.05, 0.01);
        // Symmetric noise around the margin: E[d] = margin exactly.
        let (sym, _) = crossings(300, 3_000, margin, alpha, |r| {
            margin + 0.6 * (r.random::<f64>() - 0.5)
        });
        // The shape of real gains: most labels lose a little (the shadow is less sure of the
        // right answers), a few gain a lot; E[d] = margin again.
        let (skew, _) = crossings(300, 3_000, margin, alpha, |r| {
            if r.random::<f64>() < 0.1 {
                (margin + 0.9 * 0.02) / 0.1
            } else {
                -0.02
            }
        });
        // Ville: at most alpha = 5% of runs in expectation (15 of 300); allow sampling noise.
        eprintln!("promotion e-process under H0: {sym}/300 and {skew}/300 runs crossed 20");
        assert!(sym <= 24 && skew <= 24, "{sym}, {skew} of 300");
        // The fixed-sample t-test, applied after every label the old way, errs far more often.
        let naive = (0..300u64)
            .filter(|&seed| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut p = Prequential::new(15, margin);
                (1..=3_000).any(|i| {
                    add_gain(&mut p, margin + 0.6 * (rng.random::<f64>() - 0.5));
                    i >= 30 && p.p_value(margin).is_some_and(|v| v < alpha)
                })
            })
            .count();
        eprintln!("repeated t-test under H0: {naive}/300 runs rejected");
        assert!(naive > sym, "{naive} vs {sym}");
    }

    #[test]
    fn a_real_gain_is_promoted_in_every_run() {
        let (alpha, margin) = (0.01, 0.01);
        // Mean gain 0.06 nats (0.05 above the margin), same skewed shape as the null test.
        let (hit, median) = crossings(50, 5_000, margin, alpha, |r| {
            if r.random::<f64>() < 0.1 {
                (0.06 + 0.9 * 0.02) / 0.1
            } else {
                -0.02
            }
        });
        eprintln!("promotion e-process, gain 0.06: {hit}/50 crossed 100, median {median:?} labels");
        assert_eq!(hit, 50);
    }
}
