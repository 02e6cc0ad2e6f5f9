//! Alarms whose false-alarm rate holds at every moment (issue 22, section 3), not only at a
//! sample size fixed in advance: all three statistics are nonnegative test (super)martingales with
//! initial value 1 under the null, so by Ville's inequality P(sup_t M_t >= 1/alpha) <= alpha,
//! however long the server runs and however often someone looks.
//!
//! - [`CalibrationEProcess`]: testing by betting (Waudby-Smith and Ramdas 2023) on the top-label
//!   calibration error of labelled feedback, x_t = 1[correct] - confidence. H0 says
//!   |E[x_t | past]| <= eps (the confidence is calibrated on average, whatever it is, up to a
//!   tolerance eps that by default covers the calibrator's validation bias and its sampling
//!   error, [`calibration_tolerance`]); two one-sided bettors with online-Newton-step bets
//!   (Cutkosky and Orabona 2018, as in Shekhar and Ramdas 2023) are averaged, which is itself
//!   an e-process for the two-sided null.
//! - [`ExchangeabilityMartingale`]: a conformal test martingale (Vovk, Gammerman and Shafer
//!   2005; Vovk 2021) on the label-free max-probability scores: conformal p-values against every
//!   earlier score, bet on by the Composite Jumper, which keeps its power after a long quiet
//!   stretch (the plain power martingale loses it).
//! - [`LabelShiftEProcess`]: a betting e-process on the label-free predicted class of served
//!   traffic against its distribution on validation, up to a total-variation tolerance that
//!   covers the validation sample's error ([`label_shift_tolerance`]); built for label shift,
//!   which barely moves the other two.
//! - [`OneSidedEProcess`]: the one-sided bettor alone, for H0: E[g_t | past] <= 0 with g in
//!   [-1, 1]; the shadow-promotion rule of `--auto-recalibrate` bets with it.

mod betting;
mod exchangeability;
mod label_shift;
#[cfg(test)]
mod tests;
mod wealth;

pub use betting::default_tolerance as calibration_tolerance;
pub use betting::{CalibrationEProcess, OneSidedEProcess};
pub use exchangeability::{EXCHANGEABILITY_BINS, ExchangeabilityMartingale};
pub use label_shift::LabelShiftEProcess;
pub use label_shift::default_tolerance as label_shift_tolerance;
