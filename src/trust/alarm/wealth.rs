//! The wealth of a mixture of bettors, kept in logs: the capital of each bettor is held
//! normalised to sum 1 and the scale is accumulated as a log, so the value can grow past f64's
//! range without overflow. Shared by the exchangeability martingale and the label-shift
//! e-process.

/// ln of a mixture's wealth, and of the largest wealth reached (what Ville's inequality bounds).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct LogWealth {
    log_value: f64,
    log_max: f64,
}

impl LogWealth {
    /// Takes the scale out of `capital` (renormalised to sum 1) into the log wealth.
    pub fn rescale(&mut self, capital: &mut [f64]) {
        let total: f64 = capital.iter().sum();
        capital.iter_mut().for_each(|c| *c /= total);
        self.log_value += total.ln();
        self.log_max = self.log_max.max(self.log_value);
    }

    /// ln of the wealth now.
    pub fn log_value(&self) -> f64 {
        self.log_value
    }

    /// The wealth now (saturates at f64::MAX).
    pub fn value(&self) -> f64 {
        self.log_value.exp().min(f64::MAX)
    }

    /// The largest wealth reached so far.
    pub fn max_value(&self) -> f64 {
        self.log_max.exp().min(f64::MAX)
    }
}
