//! Virtual-logit matching (ViM; Wang, Li, Feng and Zhang 2022, "ViM: Out-of-distribution with
//! virtual-logit matching"): the part of a feature vector outside the principal subspace of the
//! training features becomes a virtual logit, scaled to match the real logits, and the score is
//! `alpha |x_res| - logsumexp(logits)` (higher = more OOD; the paper's virtual-class softmax
//! probability is a monotone function of it).
//!
//! ViM needs the classifier's last layer `logits = W x + b` to place the origin at
//! `u = -pinv(W) b`. caliper has the model as an ONNX graph, not its weights, so the layer is
//! recovered by least squares from validation features and logits; when those are not linear
//! in each other (the features are not the input of the final linear layer) the fit is refused.
//! The principal subspace has the paper's dimension: 1000 for D >= 2048, 512 for D >= 768, else
//! D / 2.

use std::sync::OnceLock;

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::blocked::BlockedRows;

use super::fit::{OodError, check_rows, dot};
use super::linalg::{ridge_least_squares, symmetric_eigen};
use crate::numeric::log_sum_exp;

/// Largest relative RMS error of the recovered last layer for the features to count as its
/// input.
const MAX_LINEAR_ERROR: f64 = 1e-3;

/// A fitted ViM detector (the calibration file stores these fields).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vim {
    /// The origin `u = -pinv(W) b`, `[D]`.
    pub origin: Vec<f64>,
    /// Orthonormal basis of the principal subspace, `[D_p][D]` (one row per direction).
    pub principal: Vec<Vec<f64>>,
    /// Scale of the virtual logit: mean max training logit over mean training residual norm.
    pub alpha: f64,
    /// `principal` stored for fast products, built at the first score (not in the file; a
    /// fitted detector's basis never changes after that).
    #[serde(skip)]
    principal_rows: OnceLock<BlockedRows<f64>>,
}

/// Equal when the stored fields are (the cache of products is not part of the detector).
impl PartialEq for Vim {
    fn eq(&self, other: &Self) -> bool {
        (&self.origin, &self.principal, self.alpha)
            == (&other.origin, &other.principal, other.alpha)
    }
}

/// The principal-subspace dimension for D features.
pub fn principal_dim(d: usize) -> usize {
    if d >= 2048 {
        1000
    } else if d >= 768 {
        512
    } else {
        d / 2
    }
}

impl Vim {
    /// Fits on validation features and logits (to recover the last layer) and training
    /// features (the subspace and alpha).
    // Index loops mirror the covariance formula (lower triangle, then mirrored).
    #[allow(clippy::needless_range_loop)]
    pub fn fit(
        val_features: ArrayView2<'_, f64>,
        val_logits: ArrayView2<'_, f64>,
        train: ArrayView2<'_, f64>,
    ) -> Result<Self, OodError> {
        let (d, k) = (train.ncols(), val_logits.ncols());
        let dp = principal_dim(d);
        if dp < 1 || dp >= d {
            return Err(OodError::InvalidOption(format!(
                "ViM needs more features than its {dp}-dimensional principal subspace, got {d}"
            )));
        }
        if val_features.ncols() != d || val_features.nrows() != val_logits.nrows() {
            return Err(OodError::Shape(format!(
                "ViM: {:?} validation features, {:?} logits, {d} training features",
                val_features.dim(),
                val_logits.dim()
            )));
        }
        check_rows("validation features", val_features)?;
        check_rows("training features", train)?;
        // Last layer by least squares on [x, 1] -> z, with a tiny ridge for collinear units.
        let x: Vec<Vec<f64>> = val_features
            .outer_iter()
            .map(|r| r.iter().copied().chain([1.0]).collect())
            .collect();
        let z: Vec<Vec<f64>> = val_logits.outer_iter().map(|r| r.to_vec()).collect();
        let scale = x.iter().flatten().map(|v| v * v).sum::<f64>() / x.len().max(1) as f64;
        let beta = ridge_least_squares(&x, &z, 1e-9 * scale.max(1e-12))?;
        let (mut err, mut total) = (0.0, 0.0);
        for (xr, zr) in x.iter().zip(&z) {
            for (j, zj) in zr.iter().enumerate() {
                let fit: f64 = xr.iter().zip(&beta).map(|(a, b)| a * b[j]).sum();
                err += (fit - zj).powi(2);
                total += zj * zj;
            }
        }
        let rel = (err / total.max(f64::MIN_POSITIVE)).sqrt();
        // NaN (no logits at all) fails too.
        if rel.is_nan() || rel > MAX_LINEAR_ERROR {
            return Err(OodError::InvalidOption(format!(
                "ViM: the logits are not a linear function of these features (relative error \
                 {rel:.2e}); name the input of the final linear layer as the features output"
            )));
        }
        // W is [K][D] (column j of beta's first D rows), b = beta's last row.
        let w: Vec<Vec<f64>> = (0..k)
            .map(|j| beta[..d].iter().map(|row| row[j]).collect())
            .collect();
        let b = &beta[d];
        // u = -W^T (W W^T)^-1 b.
        let wwt: Vec<Vec<f64>> = w
            .iter()
            .map(|a| w.iter().map(|c| dot(a, c)).collect())
            .collect();
        let inv = super::fit::spd_inverse(&wwt, 0.0)?;
        let y: Vec<f64> = inv.iter().map(|row| dot(row, b)).collect();
        let origin: Vec<f64> = (0..d)
            .map(|i| -w.iter().zip(&y).map(|(wr, yj)| wr[i] * yj).sum::<f64>())
            .collect();
        // Principal subspace of the training features about u (uncentred covariance, as ViM).
        let mut cov = vec![vec![0.0; d]; d];
        let mut c = vec![0.0; d];
        for r in train.outer_iter() {
            for ((ci, xi), ui) in c.iter_mut().zip(r.iter()).zip(&origin) {
                *ci = xi - ui;
            }
            for i in 0..d {
                let ci = c[i];
                for (acc, cj) in cov[i][..=i].iter_mut().zip(&c) {
                    *acc += ci * cj;
                }
            }
        }
        let n = train.nrows().max(1) as f64;
        for i in 0..d {
            for j in 0..=i {
                cov[i][j] /= n;
                cov[j][i] = cov[i][j];
            }
        }
        let (_, vectors) = symmetric_eigen(&cov);
        // The largest dp eigenvalues are the last columns.
        let principal: Vec<Vec<f64>> = (d - dp..d)
            .map(|j| vectors.iter().map(|row| row[j]).collect())
            .collect();
        let mut vim = Vim {
            origin,
            principal,
            alpha: 1.0,
            principal_rows: OnceLock::new(),
        };
        let (mut max_logit, mut residual) = (0.0, 0.0);
        for r in train.outer_iter() {
            let x = r.to_vec();
            residual += vim.residual_norm(&x);
            max_logit += w
                .iter()
                .zip(b)
                .map(|(wr, bj)| dot(wr, &x) + bj)
                .fold(f64::NEG_INFINITY, f64::max);
        }
        vim.alpha = max_logit / residual;
        if !(vim.alpha.is_finite() && vim.alpha > 0.0) {
            return Err(OodError::InvalidOption(format!(
                "ViM: alpha {} (mean max logit {:.3}, mean residual {:.3}) is not positive",
                vim.alpha,
                max_logit / n,
                residual / n
            )));
        }
        Ok(vim)
    }

    /// Feature dimension D.
    pub fn dim(&self) -> usize {
        self.origin.len()
    }

    /// `|x - u|` outside the principal subspace.
    fn residual_norm(&self, x: &[f64]) -> f64 {
        let c: Vec<f64> = x.iter().zip(&self.origin).map(|(a, u)| a - u).collect();
        let rows = self
            .principal_rows
            .get_or_init(|| BlockedRows::from_row_vecs(&self.principal, self.dim()));
        // The same values as `dot(p, &c)` for each direction p.
        let inside: f64 = rows.products(&c).iter().map(|v| v.powi(2)).sum();
        (dot(&c, &c) - inside).max(0.0).sqrt()
    }

    /// `alpha |x_res| - logsumexp(logits)` (higher = more OOD).
    pub fn score(&self, features: &[f64], logits: &[f64]) -> Result<f64, OodError> {
        if features.len() != self.dim() {
            return Err(OodError::Shape(format!(
                "feature vector has {} values, ViM was fitted on {}",
                features.len(),
                self.dim()
            )));
        }
        if features.iter().chain(logits).any(|v| !v.is_finite()) {
            return Err(OodError::NonFinite {
                what: "features",
                row: 0,
            });
        }
        Ok(self.alpha * self.residual_norm(features) - log_sum_exp(logits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// The test's last layer: 4 logits, linear in 8 features.
    fn head(x: &[f64]) -> Vec<f64> {
        (0..4)
            .map(|j| {
                x.iter()
                    .enumerate()
                    .map(|(i, v)| v * (((i * 5 + j * 3) % 7) as f64 - 3.0) * 0.3)
                    .sum::<f64>()
                    + j as f64 * 0.1
            })
            .collect()
    }

    /// Features in a 3-dimensional subspace of R^8 (plus small noise), logits [`head`] of them:
    /// an input with a large component outside that subspace scores higher.
    fn setup() -> (Array2<f64>, Array2<f64>) {
        let feats = Array2::from_shape_fn((400, 8), |(r, i)| {
            let t = r as f64;
            let base = match i {
                0 => (t * 0.37).sin() * 3.0,
                1 => (t * 0.11).cos() * 2.0,
                2 => (t * 0.23).sin() + 1.0,
                _ => 0.0,
            };
            base + ((r * 13 + i * 7) % 11) as f64 * 1e-3
        });
        let logits = Array2::from_shape_fn((400, 4), |(r, j)| head(&feats.row(r).to_vec())[j]);
        (feats, logits)
    }

    #[test]
    fn off_subspace_inputs_score_higher() {
        let (f, z) = setup();
        let vim = Vim::fit(f.view(), z.view(), f.view()).unwrap();
        assert_eq!(vim.principal.len(), 4);
        let id = f.row(7).to_vec();
        let mut ood = id.clone();
        ood[6] += 5.0;
        let (s_id, s_ood) = (
            vim.score(&id, &head(&id)).unwrap(),
            vim.score(&ood, &head(&ood)).unwrap(),
        );
        assert!(s_ood > s_id + 1.0, "{s_id} {s_ood}");
        let json = serde_json::to_string(&vim).unwrap();
        assert_eq!(serde_json::from_str::<Vim>(&json).unwrap(), vim);
    }

    #[test]
    fn features_that_are_not_the_last_layers_input_are_refused() {
        let (f, mut z) = setup();
        z.mapv_inplace(|v| v * v);
        let e = Vim::fit(f.view(), z.view(), f.view())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a linear function"), "{e}");
    }
}
