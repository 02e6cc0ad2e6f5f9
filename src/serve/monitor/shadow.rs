//! Prequential scoring of a shadow calibrator against the incumbent, and the rule that decides
//! when a shadow may replace it (issue 22, section 2).
//!
//! Prequential (Dawid 1984): each label is scored by the shadow that was fitted *before* the label
//! arrived, and by the incumbent, on the same prediction. Neither has seen the label, so the running
//! means are honest out-of-sample figures even though the shadow is refitted as labels come in.
//!
//! The promotion rule is a one-sided paired test on the per-label NLL differences
//! `d = nll(incumbent) - nll(shadow)`: H0 `E[d] <= margin` against H1 `E[d] > margin`, with
//! `t = (mean(d) - margin) / (sd(d) / sqrt(n))` and the normal tail as p-value (the rule needs
//! hundreds of labels, where Student's t and the normal agree to the third decimal). A shadow is
//! promoted only when `n >= min_labels`, `mean(d) > margin` and `p < alpha`. Pure: no I/O, no
//! locks, so it is unit-tested on hand-computed cases.

use serde::Serialize;

use crate::numeric::argmax;
use crate::trust::metrics::BinnedAccumulator;

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
    /// One-sided p-value of "the gain is at most the promotion margin" (see the module header).
    pub p_value: Option<f64>,
}

impl Prequential {
    /// An empty comparison with `bins` equal-width ECE bins.
    pub fn new(bins: usize) -> Self {
        Prequential {
            shadow: Side::new(bins),
            incumbent: Side::new(bins),
            n: 0,
            mean: 0.0,
            m2: 0.0,
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

    /// One-sided p-value of H0 `E[d] <= margin` (normal approximation of the paired t-test).
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

    /// The figures shown in the monitor, the p-value against `margin`.
    pub fn score(&self, margin: f64) -> ShadowScore {
        let mean = |s: &Side| (self.n > 0).then(|| s.nll_sum / self.n as f64);
        ShadowScore {
            n: self.n,
            nll: mean(&self.shadow),
            ece: self.shadow.binned.ece(),
            incumbent_nll: mean(&self.incumbent),
            incumbent_ece: self.incumbent.binned.ece(),
            nll_gain: self.mean_gain(),
            p_value: self.p_value(margin),
        }
    }
}

/// When a shadow replaces the incumbent (`--auto-recalibrate`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PromotionRule {
    /// Fewest prequentially scored labels before any promotion.
    pub min_labels: u64,
    /// Level of the one-sided test.
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
    Keep { gain: f64, p_value: f64 },
    /// The shadow beats the incumbent by more than the margin, significantly.
    Promote { gain: f64, p_value: f64 },
}

impl PromotionRule {
    /// Applies the rule to a comparison.
    pub fn decide(&self, s: &Prequential) -> Verdict {
        let need = self.min_labels.max(2);
        if s.len() < need {
            return Verdict::TooFewLabels {
                have: s.len(),
                need,
            };
        }
        let gain = s.mean_gain().unwrap_or(0.0);
        let p_value = s.p_value(self.margin).unwrap_or(1.0);
        if gain > self.margin && p_value < self.alpha {
            Verdict::Promote { gain, p_value }
        } else {
            Verdict::Keep { gain, p_value }
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
        let mut p = Prequential::new(10);
        // Label 0 each time. Shadow: 0.9 then 0.6 on the label; incumbent: 0.5 then 0.2 (the
        // incumbent's top class is wrong on the second).
        p.add(&[0.9, 0.1], &[0.5, 0.5], 0);
        p.add(&[0.6, 0.4], &[0.2, 0.8], 0);
        let s = p.score(0.0);
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

    fn with_gains(gains: &[f64]) -> Prequential {
        // A two-class label 0 with incumbent p = 0.5 and shadow p = 0.5 * exp(g): d = g exactly.
        let mut p = Prequential::new(15);
        for &g in gains {
            let s = 0.5 * g.exp();
            p.add(&[s, 1.0 - s], &[0.5, 0.5], 0);
        }
        p
    }

    #[test]
    fn the_rule_waits_for_enough_labels_then_needs_a_significant_margin() {
        let rule = PromotionRule {
            min_labels: 5,
            alpha: 0.01,
            margin: 0.0,
        };
        assert_eq!(
            rule.decide(&with_gains(&[0.5; 4])),
            Verdict::TooFewLabels { have: 4, need: 5 }
        );
        // d = 0.1, 0.2, ..., 0.5: mean 0.3, sd 0.158, t = 4.243, p = 1.1e-5.
        let clear = with_gains(&[0.1, 0.2, 0.3, 0.4, 0.5]);
        match rule.decide(&clear) {
            Verdict::Promote { gain, p_value } => {
                assert!((gain - 0.3).abs() < 1e-9);
                assert!((p_value - 1.104_524_849_929_7e-5).abs() < 1e-8, "{p_value}");
            }
            v => panic!("{v:?}"),
        }
        // The same gains against a margin of 0.25: t = 0.707, p = 0.24 -> keep.
        let strict = PromotionRule {
            margin: 0.25,
            ..rule
        };
        assert!(matches!(strict.decide(&clear), Verdict::Keep { .. }));
        // A noisy gain around zero is never promoted.
        let noisy = with_gains(&[0.4, -0.5, 0.3, -0.2, 0.1, -0.3]);
        assert!(matches!(rule.decide(&noisy), Verdict::Keep { .. }));
        // A worse shadow: negative gain, p near 1.
        match rule.decide(&with_gains(&[-0.1, -0.2, -0.3, -0.2, -0.1])) {
            Verdict::Keep { gain, p_value } => assert!(gain < 0.0 && p_value > 0.99),
            v => panic!("{v:?}"),
        }
    }
}
