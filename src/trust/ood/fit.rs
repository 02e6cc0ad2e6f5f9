//! OOD detection fitted on data: the Mahalanobis detector on penultimate features (class means
//! and one shared covariance, Lee et al. 2018), the threshold at a target true-positive rate of
//! in-distribution validation scores, and the evaluation metrics AUROC, FPR at 95% TPR and AUPR.
//!
//! Convention throughout (docs/METHOD.md#ood-scores-and-thresholds): a higher score means more out-of-distribution;
//! in-distribution (ID) samples are the "positives" that a threshold keeps (`score <= threshold`).

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::blocked::BlockedRows;
use crate::trust::metrics;

/// Errors of fitting or evaluating OOD detectors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OodError {
    /// No samples where some are needed.
    #[error("{0}: no samples")]
    Empty(&'static str),
    /// A value is NaN or infinite.
    #[error("{what}: non-finite value at row {row}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Row of the first bad value.
        row: usize,
    },
    /// Inputs whose sizes do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A label outside `0..classes`.
    #[error("label {label} at row {row} is out of range for {classes} classes")]
    Label {
        /// Row of the label.
        row: usize,
        /// The label.
        label: usize,
        /// Number of classes.
        classes: usize,
    },
    /// A class without training samples has no mean.
    #[error("class {0} has no training samples, so it has no mean")]
    EmptyClass(usize),
    /// The regularised covariance is still not positive definite.
    #[error("the covariance is not positive definite with ridge {0}; use a larger ridge")]
    NotPositiveDefinite(f64),
    /// An option outside its range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

/// The stored form of a [`Mahalanobis`] detector (what goes into the calibration file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MahalanobisParts {
    /// Class means of the training features, `[K][D]`.
    pub means: Vec<Vec<f64>>,
    /// Inverse of the regularised shared covariance, `[D][D]`.
    pub precision: Vec<Vec<f64>>,
    /// The absolute ridge that was added to the covariance diagonal.
    pub ridge: f64,
}

/// Mahalanobis OOD detector: score = min over classes of the squared Mahalanobis distance of a
/// feature vector to the class mean under the shared covariance. Validated on construction and
/// on deserialisation; serialises as [`MahalanobisParts`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "MahalanobisParts", into = "MahalanobisParts")]
pub struct Mahalanobis {
    parts: MahalanobisParts,
    /// P, stored for fast products (the same bits as row-by-row dots).
    precision: BlockedRows<f64>,
    /// mu_k^T P mu_k per class, so a score costs one D x D product, not K of them.
    mean_norms: Vec<f64>,
}

impl TryFrom<MahalanobisParts> for Mahalanobis {
    type Error = OodError;

    fn try_from(parts: MahalanobisParts) -> Result<Self, OodError> {
        let d = parts.precision.len();
        if d == 0 || parts.means.is_empty() {
            return Err(OodError::Empty("Mahalanobis parameters"));
        }
        if parts.precision.iter().any(|r| r.len() != d) {
            return Err(OodError::Shape("precision matrix is not square".into()));
        }
        if let Some(k) = parts.means.iter().position(|m| m.len() != d) {
            return Err(OodError::Shape(format!(
                "mean of class {k} has {} values, precision is {d}x{d}",
                parts.means[k].len()
            )));
        }
        for (what, rows) in [("means", &parts.means), ("precision", &parts.precision)] {
            if let Some(row) = rows.iter().position(|r| r.iter().any(|v| !v.is_finite())) {
                return Err(OodError::NonFinite { what, row });
            }
        }
        let precision = BlockedRows::from_row_vecs(&parts.precision, d);
        let mean_norms = parts
            .means
            .iter()
            .map(|m| dot(m, &precision.products(m)))
            .collect();
        Ok(Mahalanobis {
            parts,
            precision,
            mean_norms,
        })
    }
}

impl From<Mahalanobis> for MahalanobisParts {
    fn from(m: Mahalanobis) -> Self {
        m.parts
    }
}

pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Checks that every value of a `[N, D]` view is finite.
pub(super) fn check_rows(what: &'static str, x: ArrayView2<'_, f64>) -> Result<(), OodError> {
    match x
        .outer_iter()
        .position(|r| r.iter().any(|v| !v.is_finite()))
    {
        Some(row) => Err(OodError::NonFinite { what, row }),
        None => Ok(()),
    }
}

/// Inverse of a symmetric positive definite matrix through its Cholesky factor L (A = L L^T):
/// A^-1 = L^-T L^-1. Errors when a pivot is not positive.
// Index loops mirror the matrix formulas (Cholesky, triangular solves, outer products).
#[allow(clippy::needless_range_loop)]
pub(super) fn spd_inverse(a: &[Vec<f64>], ridge: f64) -> Result<Vec<Vec<f64>>, OodError> {
    let d = a.len();
    let mut l = vec![vec![0.0; d]; d];
    for i in 0..d {
        for j in 0..=i {
            let s = a[i][j] - dot(&l[i][..j], &l[j][..j]);
            if i == j {
                if !(s > 0.0 && s.is_finite()) {
                    return Err(OodError::NotPositiveDefinite(ridge));
                }
                l[i][i] = s.sqrt();
            } else {
                l[i][j] = s / l[j][j];
            }
        }
    }
    // L^-1 by forward substitution, column by column of the identity.
    let mut linv = vec![vec![0.0; d]; d];
    for c in 0..d {
        for i in c..d {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for k in c..i {
                s -= l[i][k] * linv[k][c];
            }
            linv[i][c] = s / l[i][i];
        }
    }
    // A^-1[i][j] = sum_k linv[k][i] linv[k][j] (k >= max(i, j)).
    let mut inv = vec![vec![0.0; d]; d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (i..d).map(|k| linv[k][i] * linv[k][j]).sum();
            inv[i][j] = s;
            inv[j][i] = s;
        }
    }
    Ok(inv)
}

impl Mahalanobis {
    /// Fits class means and the shared covariance `1/N sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T`
    /// on training features `[N, D]`. `relative_ridge` times the mean variance
    /// (`trace / D`, or 1 when that is 0) is added to the diagonal so that collapsed or
    /// low-rank features (ReLU units that never fire, D > N) still give an invertible matrix;
    /// 1e-6 is a good default.
    #[allow(clippy::needless_range_loop)]
    pub fn fit(
        features: ArrayView2<'_, f64>,
        labels: &[usize],
        classes: usize,
        relative_ridge: f64,
    ) -> Result<Self, OodError> {
        let (n, d) = features.dim();
        if n == 0 || d == 0 {
            return Err(OodError::Empty("training features"));
        }
        if labels.len() != n {
            return Err(OodError::Shape(format!(
                "{} labels for {n} feature rows",
                labels.len()
            )));
        }
        if !(relative_ridge.is_finite() && relative_ridge >= 0.0) {
            return Err(OodError::InvalidOption(format!(
                "ridge must be >= 0, got {relative_ridge}"
            )));
        }
        check_rows("training features", features)?;
        let mut means = vec![vec![0.0; d]; classes];
        let mut counts = vec![0usize; classes];
        for (row, (x, &y)) in features.outer_iter().zip(labels).enumerate() {
            let m = means.get_mut(y).ok_or(OodError::Label {
                row,
                label: y,
                classes,
            })?;
            for (a, b) in m.iter_mut().zip(x.iter()) {
                *a += b;
            }
            counts[y] += 1;
        }
        if let Some(k) = counts.iter().position(|&c| c == 0) {
            return Err(OodError::EmptyClass(k));
        }
        for (m, &c) in means.iter_mut().zip(&counts) {
            m.iter_mut().for_each(|v| *v /= c as f64);
        }
        let mut cov = vec![vec![0.0; d]; d];
        let mut r = vec![0.0; d];
        for (x, &y) in features.outer_iter().zip(labels) {
            for ((ri, xi), mi) in r.iter_mut().zip(x.iter()).zip(&means[y]) {
                *ri = xi - mi;
            }
            for i in 0..d {
                let ri = r[i];
                for (c, rj) in cov[i][..=i].iter_mut().zip(&r) {
                    *c += ri * rj;
                }
            }
        }
        for i in 0..d {
            for j in 0..=i {
                cov[i][j] /= n as f64;
                cov[j][i] = cov[i][j];
            }
        }
        let scale = (0..d).map(|i| cov[i][i]).sum::<f64>() / d as f64;
        let ridge = relative_ridge * if scale > 0.0 { scale } else { 1.0 };
        for (i, row) in cov.iter_mut().enumerate() {
            row[i] += ridge;
        }
        let precision = spd_inverse(&cov, ridge)?;
        Mahalanobis::try_from(MahalanobisParts {
            means,
            precision,
            ridge,
        })
    }

    /// [`Mahalanobis::fit`] on the feature columns that vary over the training split; columns
    /// constant there (ReLU units that never fire) are dropped from the distance: their rows
    /// and columns of the precision are zero and their means the constant, so the detector
    /// still takes full `[D]` feature vectors. Without this a dead unit's variance is the ridge
    /// alone and any activation of it at serving time swamps every other feature. Returns the
    /// detector and the dropped columns.
    pub fn fit_varying(
        features: ArrayView2<'_, f64>,
        labels: &[usize],
        classes: usize,
        relative_ridge: f64,
    ) -> Result<(Self, Vec<usize>), OodError> {
        let dead = constant_features(features);
        if dead.is_empty() {
            return Ok((Self::fit(features, labels, classes, relative_ridge)?, dead));
        }
        let d = features.ncols();
        let live: Vec<usize> = (0..d).filter(|j| dead.binary_search(j).is_err()).collect();
        if live.is_empty() {
            return Err(OodError::Empty("training features that vary"));
        }
        let reduced = features.select(ndarray::Axis(1), &live);
        let fitted = Self::fit(reduced.view(), labels, classes, relative_ridge)?;
        let first = features.row(0);
        let mut means = vec![vec![0.0; d]; classes];
        for (full, part) in means.iter_mut().zip(&fitted.parts.means) {
            for &j in &dead {
                full[j] = first[j];
            }
            for (&j, &v) in live.iter().zip(part) {
                full[j] = v;
            }
        }
        let mut precision = vec![vec![0.0; d]; d];
        for (&i, row) in live.iter().zip(&fitted.parts.precision) {
            for (&j, &v) in live.iter().zip(row) {
                precision[i][j] = v;
            }
        }
        let m = Mahalanobis::try_from(MahalanobisParts {
            means,
            precision,
            ridge: fitted.parts.ridge,
        })?;
        Ok((m, dead))
    }

    /// Feature dimension D.
    pub fn dim(&self) -> usize {
        self.parts.precision.len()
    }

    /// The stored parameters.
    pub fn parts(&self) -> &MahalanobisParts {
        &self.parts
    }

    /// Score of one feature vector: `min_k (x - mu_k)^T P (x - mu_k)` (higher = more OOD).
    pub fn score(&self, x: &[f64]) -> Result<f64, OodError> {
        let d = self.class_distances(x)?;
        Ok(d.into_iter().fold(f64::INFINITY, f64::min))
    }

    /// Squared Mahalanobis distance of `x` to every class mean. `softmax(-d / 2)` is the
    /// posterior of the matching Gaussian (LDA) classifier with equal class priors.
    pub fn class_distances(&self, x: &[f64]) -> Result<Vec<f64>, OodError> {
        if x.len() != self.dim() {
            return Err(OodError::Shape(format!(
                "feature vector has {} values, the detector was fitted on {}",
                x.len(),
                self.dim()
            )));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(OodError::NonFinite {
                what: "features",
                row: 0,
            });
        }
        // (x - mu)^T P (x - mu) = x^T P x - 2 mu^T (P x) + mu^T P mu, P symmetric.
        let px = self.precision.products(x);
        let xpx = dot(x, &px);
        // Rounding can take an exact zero slightly negative; a squared distance is never < 0.
        Ok(self
            .parts
            .means
            .iter()
            .zip(&self.mean_norms)
            .map(|(m, c)| (xpx - 2.0 * dot(m, &px) + c).max(0.0))
            .collect())
    }

    /// Scores of every row of `[N, D]` features.
    pub fn score_rows(&self, features: ArrayView2<'_, f64>) -> Result<Vec<f64>, OodError> {
        check_rows("features", features)?;
        features
            .outer_iter()
            .map(|r| self.score(&r.to_vec()))
            .collect()
    }
}

/// Columns of `[N, D]` features that take one value on every row (dead or constant units), in
/// increasing order.
pub fn constant_features(features: ArrayView2<'_, f64>) -> Vec<usize> {
    if features.nrows() == 0 {
        return Vec::new();
    }
    features
        .columns()
        .into_iter()
        .enumerate()
        .filter(|(_, c)| c.iter().all(|v| *v == c[0]))
        .map(|(j, _)| j)
        .collect()
}

fn check_scores(what: &'static str, s: &[f64]) -> Result<(), OodError> {
    if s.is_empty() {
        return Err(OodError::Empty(what));
    }
    match s.iter().position(|v| !v.is_finite()) {
        Some(row) => Err(OodError::NonFinite { what, row }),
        None => Ok(()),
    }
}

/// The smallest threshold that keeps at least `tpr` of the in-distribution scores
/// (`score <= threshold`): the `ceil(tpr * n)`-th smallest ID score. An input is flagged OOD
/// when its score is above the threshold.
pub fn threshold_at_tpr(id_scores: &[f64], tpr: f64) -> Result<f64, OodError> {
    check_scores("in-distribution scores", id_scores)?;
    if !(tpr > 0.0 && tpr <= 1.0) {
        return Err(OodError::InvalidOption(format!(
            "TPR must be in (0, 1], got {tpr}"
        )));
    }
    let mut s = id_scores.to_vec();
    s.sort_by(f64::total_cmp);
    // The epsilon keeps exact products (0.95 * 20 = 19.000000000000004) from rounding up.
    let k = ((tpr * s.len() as f64) - 1e-9).ceil().max(1.0) as usize;
    Ok(s[k.min(s.len()) - 1])
}

/// A fitted OOD threshold as stored in the calibration file: inputs scoring above `threshold`
/// are flagged; `tpr` is the fraction of in-distribution validation scores it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// The target true-positive rate the threshold was fitted for (e.g. 0.95).
    pub tpr: f64,
    /// The score threshold (`score > threshold` means out-of-distribution).
    pub threshold: f64,
}

impl Threshold {
    /// Fits on in-distribution validation scores with [`threshold_at_tpr`].
    pub fn fit(id_scores: &[f64], tpr: f64) -> Result<Self, OodError> {
        Ok(Threshold {
            tpr,
            threshold: threshold_at_tpr(id_scores, tpr)?,
        })
    }

    /// Whether `score` is out-of-distribution (NaN counts as out-of-distribution).
    pub fn is_ood(&self, score: f64) -> bool {
        score.is_nan() || score > self.threshold
    }
}

/// Fraction of OOD scores at or below the threshold that keeps `tpr` of the ID scores: the OOD
/// inputs that would be accepted as in-distribution.
pub fn fpr_at_tpr(id_scores: &[f64], ood_scores: &[f64], tpr: f64) -> Result<f64, OodError> {
    let t = threshold_at_tpr(id_scores, tpr)?;
    check_scores("OOD scores", ood_scores)?;
    Ok(ood_scores.iter().filter(|&&s| s <= t).count() as f64 / ood_scores.len() as f64)
}

/// AUROC of telling OOD from ID by the score (OOD positive): [`metrics::auroc`] on checked
/// scores.
pub fn auroc(id_scores: &[f64], ood_scores: &[f64]) -> Result<f64, OodError> {
    check_scores("in-distribution scores", id_scores)?;
    check_scores("OOD scores", ood_scores)?;
    metrics::auroc(ood_scores, id_scores).ok_or(OodError::Empty("OOD scores"))
}

/// Average precision of `positive` against `negative` scores (higher = more positive):
/// [`metrics::average_precision`] on checked scores.
pub fn average_precision(positive: &[f64], negative: &[f64]) -> Result<f64, OodError> {
    check_scores("positive scores", positive)?;
    check_scores("negative scores", negative)?;
    metrics::average_precision(positive, negative).ok_or(OodError::Empty("positive scores"))
}

/// The OOD evaluation of one score on an ID set and an OOD set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodMetrics {
    /// AUROC (OOD positive; symmetric in the choice).
    pub auroc: f64,
    /// Fraction of OOD inputs accepted at the threshold keeping 95% of ID inputs.
    pub fpr_at_95_tpr: f64,
    /// Average precision with OOD as the positive class (AUPR-Out).
    pub aupr_out: f64,
    /// Average precision with ID as the positive class and the negated score (AUPR-In).
    pub aupr_in: f64,
    /// Number of ID scores.
    pub id_samples: usize,
    /// Number of OOD scores.
    pub ood_samples: usize,
}

/// AUROC, FPR at 95% TPR and both AUPRs of a score (higher = more OOD).
pub fn ood_metrics(id_scores: &[f64], ood_scores: &[f64]) -> Result<OodMetrics, OodError> {
    let neg = |v: &[f64]| v.iter().map(|s| -s).collect::<Vec<_>>();
    Ok(OodMetrics {
        auroc: auroc(id_scores, ood_scores)?,
        fpr_at_95_tpr: fpr_at_tpr(id_scores, ood_scores, 0.95)?,
        aupr_out: average_precision(ood_scores, id_scores)?,
        aupr_in: average_precision(&neg(id_scores), &neg(ood_scores))?,
        id_samples: id_scores.len(),
        ood_samples: ood_scores.len(),
    })
}

#[cfg(test)]
mod tests;
