//! The OOD detectors fitted on penultimate features, together: Mahalanobis (Lee et al. 2018),
//! RMDS (relative Mahalanobis, Ren et al. 2021), KNN ([`super::knn`]) and ViM ([`super::vim`]).
//! The calibration file stores them side by side in its `ood` section; each is optional, so
//! files written before a detector existed still load, and a detector whose fit does not apply
//! to a model (ViM on features that are not the last layer's input) is left out with a reason.
//!
//! RMDS subtracts the Mahalanobis distance under one class-agnostic "background" Gaussian of
//! all training features from the class-conditional one: `min_k MD_k(x) - MD_0(x)`. This
//! cancels directions in which every class varies alike, which Mahalanobis over-weights.

use std::collections::BTreeMap;

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::fit::{Mahalanobis, OodError};
use super::knn::Knn;
use super::vim::Vim;

/// Names of the feature-based scores, in the order reports list them.
pub const FEATURE_METHODS: [&str; 4] = ["mahalanobis", "rmds", "knn", "vim"];

/// Relative ridge of the Mahalanobis covariances.
const RIDGE: f64 = 1e-6;

/// Feature-based detectors (the `ood` section of a calibration file holds these fields).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FeatureDetectors {
    /// Class means and shared precision of the training features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mahalanobis: Option<Mahalanobis>,
    /// The background Gaussian of RMDS (one "class": all training features).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmds_background: Option<Mahalanobis>,
    /// The KNN bank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn: Option<Knn>,
    /// The ViM subspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vim: Option<Vim>,
}

/// What [`FeatureDetectors::fit`] needs: training features with labels, and validation
/// features with their logits (ViM recovers the last layer from them).
#[derive(Debug, Clone, Copy)]
pub struct FeatureFit<'a> {
    pub train: ArrayView2<'a, f64>,
    pub train_labels: &'a [usize],
    pub val: ArrayView2<'a, f64>,
    pub val_logits: ArrayView2<'a, f64>,
    pub classes: usize,
}

impl FeatureDetectors {
    /// Fits every detector. Mahalanobis is required (its errors are returned); RMDS, KNN and
    /// ViM are left out when they cannot be fitted, each with a warning saying why.
    pub fn fit(f: FeatureFit<'_>) -> Result<(Self, Vec<String>), OodError> {
        let (mahalanobis, _) = Mahalanobis::fit_varying(f.train, f.train_labels, f.classes, RIDGE)?;
        let mut warnings = Vec::new();
        let background = vec![0; f.train.nrows()];
        let rmds_background = keep(
            &mut warnings,
            "RMDS",
            Mahalanobis::fit_varying(f.train, &background, 1, RIDGE).map(|(m, _)| m),
        );
        let knn = keep(&mut warnings, "KNN", Knn::fit(f.train));
        let vim = keep(&mut warnings, "ViM", Vim::fit(f.val, f.val_logits, f.train));
        Ok((
            FeatureDetectors {
                mahalanobis: Some(mahalanobis),
                rmds_background,
                knn,
                vim,
            },
            warnings,
        ))
    }

    /// Whether any detector is fitted.
    pub fn is_empty(&self) -> bool {
        self.mahalanobis.is_none() && self.knn.is_none() && self.vim.is_none()
    }

    /// Feature dimension the detectors expect.
    pub fn dim(&self) -> Option<usize> {
        self.mahalanobis
            .as_ref()
            .map(Mahalanobis::dim)
            .or_else(|| self.knn.as_ref().map(Knn::dim))
            .or_else(|| self.vim.as_ref().map(Vim::dim))
    }

    /// Every fitted score of one row into `out`. A row the detectors cannot score (wrong
    /// length, non-finite) scores NaN, which a threshold flags.
    pub fn score_into(
        &self,
        features: &[f64],
        logits: &[f64],
        out: &mut BTreeMap<&'static str, f64>,
    ) {
        let nan = |r: Result<f64, OodError>| r.unwrap_or(f64::NAN);
        if let Some(m) = &self.mahalanobis {
            let md = nan(m.score(features));
            out.insert("mahalanobis", md);
            if let Some(bg) = &self.rmds_background {
                out.insert("rmds", md - nan(bg.score(features)));
            }
        }
        if let Some(k) = &self.knn {
            out.insert("knn", nan(k.score(features)));
        }
        if let Some(v) = &self.vim {
            out.insert("vim", nan(v.score(features, logits)));
        }
    }
}

/// The fitted detector, or `None` with a warning naming it and why.
fn keep<T>(warnings: &mut Vec<String>, name: &str, r: Result<T, OodError>) -> Option<T> {
    r.map_err(|e| warnings.push(format!("no {name} detector: {e}")))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn every_detector_scores_a_far_input_higher_and_old_files_load() {
        // Two classes around (2, 0, ...) and (0, 2, ...) in 6 dimensions; logits linear in them.
        let n = 300;
        let feats = Array2::from_shape_fn((n, 6), |(r, i)| {
            let c = r % 2;
            let centre = if i == c { 2.0 } else { 0.0 };
            centre + (((r * 7 + i * 13) % 17) as f64 - 8.0) * 0.02
        });
        let labels: Vec<usize> = (0..n).map(|r| r % 2).collect();
        let head = |x: &[f64]| vec![x[0] - x[1], x[1] - x[0] + 0.5 * x[2]];
        let logits = Array2::from_shape_fn((n, 2), |(r, j)| head(&feats.row(r).to_vec())[j]);
        let (d, warnings) = FeatureDetectors::fit(FeatureFit {
            train: feats.view(),
            train_labels: &labels,
            val: feats.view(),
            val_logits: logits.view(),
            classes: 2,
        })
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let id = feats.row(4).to_vec();
        let far = vec![0.0, 0.0, 0.0, 3.0, -3.0, 3.0];
        let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
        d.score_into(&id, &head(&id), &mut a);
        d.score_into(&far, &head(&far), &mut b);
        for name in FEATURE_METHODS {
            assert!(b[name] > a[name], "{name}: {} vs {}", a[name], b[name]);
        }
        // A file from before RMDS, KNN and ViM: only the Mahalanobis field.
        let old = serde_json::json!({"mahalanobis": d.mahalanobis});
        let loaded: FeatureDetectors = serde_json::from_value(old).unwrap();
        assert!(loaded.knn.is_none() && loaded.mahalanobis.is_some());
        let mut s = BTreeMap::new();
        loaded.score_into(&id, &head(&id), &mut s);
        assert_eq!(s.keys().copied().collect::<Vec<_>>(), ["mahalanobis"]);
    }
}
