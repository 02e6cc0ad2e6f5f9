//! What to fit and how: the calibrator [`Method`], the ATS piece [`Objective`] and the
//! [`FitOptions`] with their documented defaults (`docs/CALIBRATION.md`; the ones marked
//! "our choice" in `docs/METHOD.md` are ours, not the papers').

use serde::{Deserialize, Serialize};

use super::CalibrationError;

/// Which calibrator to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// No calibration (softmax of the logits).
    Identity,
    /// Temperature scaling: one T, exact NLL optimum.
    Ts,
    /// Vector scaling: one weight and bias per class, NLL optimum.
    Vector,
    /// Adaptive piecewise temperature scaling (the default).
    #[default]
    Ats,
    /// Histogram binning of the top label.
    Histogram,
    /// Isotonic regression of the top label.
    Isotonic,
}

/// What each ATS piece's temperature minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Negative log-likelihood of the piece (convex in 1/T; the default).
    #[default]
    Nll,
    /// The piece's own calibration gap |accuracy - mean confidence|.
    Ece,
}

/// Fit settings. Every field has the default `docs/CALIBRATION.md` names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FitOptions {
    /// ATS: number of equal-mass pieces of the uncalibrated confidence.
    pub pieces: usize,
    /// ATS: what each piece's temperature minimises.
    pub objective: Objective,
    /// ATS: strength of the pull toward the global temperature, in pseudo-samples of average
    /// curvature (0 disables shrinkage).
    pub shrinkage: f64,
    /// ATS: interpolate 1/T linearly between piece centres.
    pub smooth: bool,
    /// ATS and histogram: refuse to fit with fewer samples than this per piece or bin.
    pub min_piece_samples: usize,
    /// Histogram binning: number of equal-mass bins.
    pub histogram_bins: usize,
    /// Smallest temperature searched (TS, ATS).
    pub t_min: f64,
    /// Largest temperature searched (TS, ATS).
    pub t_max: f64,
    /// Vector scaling: ridge penalty on the distance of the parameters from the TS solution,
    /// which keeps biases of classes absent from the validation set finite.
    pub vector_l2: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            pieces: 15,
            objective: Objective::Nll,
            shrinkage: 10.0,
            smooth: false,
            min_piece_samples: 10,
            histogram_bins: 15,
            t_min: 0.05,
            t_max: 10.0,
            vector_l2: 1e-4,
        }
    }
}

impl FitOptions {
    /// Rejects settings that would make the fit meaningless.
    pub fn validate(&self) -> Result<(), CalibrationError> {
        let bad = |m: &str| Err(CalibrationError::InvalidOption(m.into()));
        if self.pieces == 0 || self.histogram_bins == 0 {
            return bad("--pieces and --histogram-bins must be at least 1");
        }
        if !(self.shrinkage.is_finite() && self.shrinkage >= 0.0) {
            return bad("--shrinkage must be finite and >= 0");
        }
        if !(self.t_min.is_finite() && self.t_max.is_finite() && 0.0 < self.t_min)
            || self.t_min >= self.t_max
        {
            return bad("need 0 < --t-min < --t-max, both finite");
        }
        if !(self.vector_l2.is_finite() && self.vector_l2 >= 0.0) {
            return bad("--vector-l2 must be finite and >= 0");
        }
        Ok(())
    }
}
