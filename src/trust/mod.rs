//! What makes a probability trustworthy, independent of how it is served or trained:
//! post-hoc calibrators (`calibration`), calibration metrics (`metrics`), out-of-distribution
//! scores and thresholds (`ood`), split-conformal prediction sets (`conformal`) and reliability
//! diagrams (`diagram`), label-shift estimation (`shift`) and anytime-valid drift alarms
//! (`alarm`). Nothing here knows about HTTP, sessions or model folders.

pub mod alarm;
pub mod calibration;
pub mod conformal;
pub mod diagram;
pub mod metrics;
pub mod ood;
pub mod shift;
