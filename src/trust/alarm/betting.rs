//! The betting e-process on top-label calibration error.
//!
//! Each bettor starts with wealth 1 and stakes a fraction lambda_t, chosen from the past only, on
//! the payoff g_t: wealth_t = prod (1 + lambda_s g_s). The upward bettor's payoff is
//! g = x - eps and the downward bettor's g = -x - eps, with x = 1[correct] - confidence in
//! [-1, 1] and eps >= 0 a tolerance: under H0: |E[x_t | past]| <= eps each wealth is a
//! nonnegative supermartingale, and so is their average (the two-sided e-process). With eps = 0
//! this tests exact calibration in the large; a small eps (say 0.01) keeps a model whose
//! validation bias is below it from alarming after millions of labels.
//!
//! lambda follows online Newton steps on the loss -ln(1 + lambda g), clipped to
//! [0, 1 / (2 (1 + eps))], so that 1 + lambda g >= 1/2: the wealth never reaches 0 and one bad
//! label costs at most ln 2 of log-wealth.
//!
//! eps covers the calibrator's own validation bias and its sampling error: see
//! [`default_tolerance`].

use crate::trust::metrics::Bin;

/// The tolerance that covers the calibration error in the large left by a calibrator's fit,
/// from the equal-width reliability bins of its calibrated validation predictions (what a
/// calibration file stores as `fit.reliability.after`), with probability at least 1 - `delta`
/// over the validation draw:
///
/// ```text
/// eps = |b_hat| + sqrt(2 V ln(4/delta) / M) + 14 ln(4/delta) / (3 (M - 1))
/// ```
///
/// b_hat = sum_bins n_b (accuracy_b - confidence_b) / M is the validation mean of
/// x = 1[correct] - confidence (exact: a bin stores its mean confidence and its share correct),
/// M the bins' count. The rest is the empirical-Bernstein bound (Maurer and Pontil 2009,
/// Theorem 4, rescaled from [0, 1] to x in [-1, 1]) on |b - b_hat|, b the bias on traffic drawn
/// like the validation data: one-sided at delta / 2 each way, hence ln(4/delta). V is the
/// sample variance of x, bounded from above from the bins alone: within a bin [l, u] a correct
/// prediction has x^2 = (1 - c)^2 <= (1 - l)^2 and a wrong one x^2 = c^2 <= u^2, so
/// V <= M / (M - 1) (sum_b n_b (a_b (1 - l_b)^2 + (1 - a_b) u_b^2) / M - b_hat^2); a larger V
/// only widens the bound. So traffic distributed like the validation data has |b| <= eps (is in
/// H0) with probability at least 1 - delta. Clamped to [0, 0.5] (the e-process's range); None
/// with fewer than two validation predictions in the bins.
pub fn default_tolerance(bins: &[Bin], delta: f64) -> Option<f64> {
    let m = bins.iter().map(|b| b.count).sum::<u64>() as f64;
    if m < 2.0 {
        return None;
    }
    let (mut sum_x, mut sum_x2) = (0.0, 0.0);
    for b in bins.iter().filter(|b| b.count > 0) {
        let (n, a) = (b.count as f64, b.accuracy.clamp(0.0, 1.0));
        sum_x += n * (a - b.confidence);
        sum_x2 += n * (a * (1.0 - b.lower).powi(2) + (1.0 - a) * b.upper.powi(2));
    }
    let b_hat = sum_x / m;
    let variance = (m / (m - 1.0) * (sum_x2 / m - b_hat * b_hat)).max(0.0);
    let log_term = (4.0 / delta.clamp(f64::MIN_POSITIVE, 1.0)).ln();
    let eps =
        b_hat.abs() + (2.0 * variance * log_term / m).sqrt() + 14.0 * log_term / (3.0 * (m - 1.0));
    eps.is_finite().then(|| eps.clamp(0.0, 0.5))
}

/// One-sided bettor: log-wealth and its ONS state.
#[derive(Debug, Clone, PartialEq)]
struct Bettor {
    log_wealth: f64,
    lambda: f64,
    /// Running sum of squared gradients (plus 1, the ONS regulariser).
    a: f64,
}

impl Bettor {
    fn new() -> Self {
        Self {
            log_wealth: 0.0,
            lambda: 0.0,
            a: 1.0,
        }
    }

    fn bet(&mut self, g: f64, lambda_max: f64) {
        let factor = 1.0 + self.lambda * g;
        self.log_wealth += factor.ln();
        // Gradient of -ln(1 + lambda g) in lambda is -g / (1 + lambda g).
        let z = g / factor;
        self.a += z * z;
        let step = 2.0 / (2.0 - 3f64.ln());
        self.lambda = (self.lambda + step * z / self.a).clamp(0.0, lambda_max);
    }
}

/// Two-sided betting e-process on E[1[correct] - confidence].
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationEProcess {
    tolerance: f64,
    up: Bettor,
    down: Bettor,
    samples: u64,
    sum: f64,
}

impl CalibrationEProcess {
    /// A fresh process (value 1) testing |E[correct - confidence]| <= `tolerance` (clamped to
    /// [0, 0.5]).
    pub fn new(tolerance: f64) -> Self {
        Self {
            tolerance: if tolerance.is_finite() {
                tolerance.clamp(0.0, 0.5)
            } else {
                0.0
            },
            up: Bettor::new(),
            down: Bettor::new(),
            samples: 0,
            sum: 0.0,
        }
    }

    /// Adds one labelled prediction. Confidences outside [0, 1] or NaN are ignored.
    pub fn update(&mut self, correct: bool, confidence: f64) {
        if !(0.0..=1.0).contains(&confidence) {
            return;
        }
        let x = f64::from(u8::from(correct)) - confidence;
        let lambda_max = 0.5 / (1.0 + self.tolerance);
        self.up.bet(x - self.tolerance, lambda_max);
        self.down.bet(-x - self.tolerance, lambda_max);
        self.samples += 1;
        self.sum += x;
    }

    /// ln of the e-value: ln((W_up + W_down) / 2), computed without overflow.
    pub fn log_value(&self) -> f64 {
        let (a, b) = (self.up.log_wealth, self.down.log_wealth);
        let m = a.max(b);
        m + ((a - m).exp() + (b - m).exp()).ln() - 2f64.ln()
    }

    /// The e-value (saturates at f64::MAX).
    pub fn value(&self) -> f64 {
        self.log_value().exp().min(f64::MAX)
    }

    /// Labels seen.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Mean of 1[correct] - confidence so far (positive: under-confident), None before any.
    pub fn mean_error(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.sum / self.samples as f64)
    }

    /// The tolerance tested.
    pub fn tolerance(&self) -> f64 {
        self.tolerance
    }
}

/// One-sided betting e-process for H0: E[g_t | past] <= 0, with payoffs g_t in [-1, 1]: the
/// wealth prod (1 + lambda_s g_s), lambda in [0, 1/2] chosen by online Newton steps from the
/// past only. Under H0 it is a nonnegative supermartingale with initial value 1, so by Ville's
/// inequality it reaches 1/alpha with probability at most alpha, however long it runs. The
/// shadow-promotion rule of `serve::monitor::shadow` bets with it on scaled NLL gains.
#[derive(Debug, Clone, PartialEq)]
pub struct OneSidedEProcess {
    bettor: Bettor,
    samples: u64,
}

impl Default for OneSidedEProcess {
    fn default() -> Self {
        Self::new()
    }
}

impl OneSidedEProcess {
    /// A fresh process (value 1).
    pub fn new() -> Self {
        Self {
            bettor: Bettor::new(),
            samples: 0,
        }
    }

    /// Adds one payoff. Values outside [-1, 1] are clamped into it, so the null tested is
    /// about the clamped payoff (the caller scales its data so that clamping is rare); NaN is
    /// ignored.
    pub fn update(&mut self, g: f64) {
        if g.is_nan() {
            return;
        }
        self.bettor.bet(g.clamp(-1.0, 1.0), 0.5);
        self.samples += 1;
    }

    /// ln of the e-value.
    pub fn log_value(&self) -> f64 {
        self.bettor.log_wealth
    }

    /// The e-value (saturates at f64::MAX).
    pub fn value(&self) -> f64 {
        self.log_value().exp().min(f64::MAX)
    }

    /// Payoffs seen.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}
