//! A label-free e-process for label shift: is the class the model predicts for served traffic
//! distributed as it was on the validation data?
//!
//! Let p0 be the predicted-class distribution on validation (the row sums of the calibration
//! file's confusion matrix `[predicted][label]`) and q_t that of the t-th served prediction given
//! the past. H0: TV(q_t, p0) <= eps at every t. At each step a set of classes
//! A_t = {j : q_hat(j) > p0(j)} is chosen from past predictions only (q_hat: a running frequency,
//! started at p0 with weight 20, that forgets at rate 1/500), and the payoff is
//!
//! ```text
//! g_t = 1[pred_t in A_t] - p0(A_t) - eps,   E[g_t | past] = q_t(A_t) - p0(A_t) - eps <= TV - eps <= 0
//! ```
//!
//! under H0 (TV(q, p) = max_A q(A) - p(A)). A label shift moves q away from p0 (the classifier's
//! predicted classes follow the labels through its confusion matrix), and A_t finds where.
//!
//! The bet is a mixture of fixed fractions lambda_i = f_i / (2 (p0(A_t) + eps)),
//! f_i in {0, 1, 1/2, ..., 1/32} (so 1 + lambda g >= 1/2: one prediction costs at most ln 2),
//! with a share 1/(n + 2) of the capital spread evenly over them before the n-th bet (fixed share
//! with a decreasing switching rate, Herbster and Warmuth 1998, Koolen and de Rooij 2013): the
//! capital is a nonnegative supermartingale under H0, because each step multiplies it by
//! 1 + (sum_i w_i lambda_i) g_t with predictable weights w_i >= 0. Under H0 the capital gathers
//! in the no-bet component (f = 0), so after n quiet predictions it has lost only about ln n,
//! not a multiple of n (a constant switching rate, as in the Composite Jumper, loses linearly),
//! and a shift at n is detected after about 2 ln n + ln 7 nats of extra evidence; an
//! online-Newton bettor, whose steps shrink with every payoff it has seen, would be much slower
//! after a long quiet stretch. Per prediction: O(K) arithmetic, no allocation.
//!
//! eps covers the sampling error of p0, estimated from M validation rows: see
//! [`default_tolerance`].

use super::wealth::LogWealth;

/// Fractions of the largest safe bet that the mixture holds (0: keep the capital).
const FRACTIONS: [f64; 7] = [0.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125];
/// The running frequency q_hat forgets at rate 1/MEMORY (after its first MEMORY predictions it
/// is an exponentially weighted mean over about that many).
const MEMORY: f64 = 500.0;
/// Pseudo-predictions at p0 that q_hat starts from.
const PRIOR_WEIGHT: f64 = 20.0;

/// The tolerance that covers the error of p0 estimated from `rows` validation predictions of
/// `classes` classes, with probability at least 1 - `delta` over the validation draw:
///
/// ```text
/// eps = 1/2 sqrt((K - 1) / M) + sqrt(ln(1/delta) / (2 M))
/// ```
///
/// The first term bounds E[TV(p_hat, p)] = 1/2 sum_j E|p_hat_j - p_j|
/// <= 1/2 sum_j sqrt(p_j (1 - p_j) / M) <= 1/2 sqrt((K - 1) / M) (Jensen, then Cauchy-Schwarz
/// with sum_j p_j (1 - p_j) <= 1 - 1/K); the second is McDiarmid's deviation of TV(p_hat, p),
/// which one row changes by at most 1/M. So traffic distributed exactly like the validation
/// data is within eps of p_hat (in H0) with probability at least 1 - delta. Clamped to [0, 1];
/// 1 (H0 always true, nothing tested) without rows.
pub fn default_tolerance(classes: usize, rows: u64, delta: f64) -> f64 {
    if rows == 0 || classes < 2 {
        return 1.0;
    }
    let m = rows as f64;
    let delta = delta.clamp(f64::MIN_POSITIVE, 1.0);
    let eps = 0.5 * ((classes - 1) as f64 / m).sqrt() + ((1.0 / delta).ln() / (2.0 * m)).sqrt();
    eps.clamp(0.0, 1.0)
}

/// The e-process and its running frequency.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelShiftEProcess {
    p0: Vec<f64>,
    q_hat: Vec<f64>,
    tolerance: f64,
    /// Capital per fraction, normalised to sum 1; the scale is `wealth`.
    capital: [f64; FRACTIONS.len()],
    wealth: LogWealth,
    samples: u64,
    bets: u64,
}

impl LabelShiftEProcess {
    /// A fresh process (value 1) against the predicted-class counts of the validation data,
    /// testing TV <= `tolerance` (clamped to [0, 1]; NaN reads as 0). None with fewer than two
    /// classes or no counts.
    pub fn new(predicted_counts: &[u64], tolerance: f64) -> Option<Self> {
        let total: u64 = predicted_counts.iter().sum();
        if predicted_counts.len() < 2 || total == 0 {
            return None;
        }
        let p0: Vec<f64> = predicted_counts
            .iter()
            .map(|&c| c as f64 / total as f64)
            .collect();
        Some(Self {
            q_hat: p0.clone(),
            p0,
            tolerance: if tolerance.is_nan() {
                0.0
            } else {
                tolerance.clamp(0.0, 1.0)
            },
            capital: [1.0 / FRACTIONS.len() as f64; FRACTIONS.len()],
            wealth: LogWealth::default(),
            samples: 0,
            bets: 0,
        })
    }

    /// Adds one served prediction's class (its calibrated argmax); an index out of range is
    /// ignored.
    pub fn observe(&mut self, class: usize) {
        if class >= self.p0.len() {
            return;
        }
        // A_t from the past only: q_hat has not seen this prediction yet.
        let (mut p0_a, mut in_a) = (0.0, 0usize);
        for (q, p) in self.q_hat.iter().zip(&self.p0) {
            if q > p {
                p0_a += p;
                in_a += 1;
            }
        }
        let floor = p0_a + self.tolerance;
        // An empty A, or one no payoff can beat, has g <= 0 surely: no bet (a choice made from
        // the past, so still predictable).
        if in_a > 0 && floor < 1.0 {
            let g = f64::from(u8::from(self.q_hat[class] > self.p0[class])) - floor;
            let cap = 0.5 / floor.max(1e-12);
            let jump = 1.0 / (self.bets as f64 + 2.0);
            self.bets += 1;
            for (c, f) in self.capital.iter_mut().zip(FRACTIONS) {
                *c = (1.0 - jump) * *c + jump / FRACTIONS.len() as f64;
                *c *= 1.0 + f * cap * g;
            }
            self.wealth.rescale(&mut self.capital);
        }
        self.samples += 1;
        let rate = (1.0 / (self.samples as f64 + PRIOR_WEIGHT)).max(1.0 / MEMORY);
        self.q_hat.iter_mut().for_each(|q| *q *= 1.0 - rate);
        self.q_hat[class] += rate;
    }

    /// ln of the e-value now.
    pub fn log_value(&self) -> f64 {
        self.wealth.log_value()
    }

    /// The e-value now (saturates at f64::MAX).
    pub fn value(&self) -> f64 {
        self.wealth.value()
    }

    /// The largest value reached so far (what Ville's inequality bounds).
    pub fn max_value(&self) -> f64 {
        self.wealth.max_value()
    }

    /// Predictions seen.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The tolerance eps tested.
    pub fn tolerance(&self) -> f64 {
        self.tolerance
    }

    /// Total variation between the running frequency of served predicted classes and p0 (a
    /// point estimate of the shift, for reading; the test does not use it).
    pub fn distance(&self) -> f64 {
        0.5 * self
            .q_hat
            .iter()
            .zip(&self.p0)
            .map(|(q, p)| (q - p).abs())
            .sum::<f64>()
    }
}
