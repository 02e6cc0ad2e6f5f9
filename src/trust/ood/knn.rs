//! Deep nearest-neighbour OOD score (Sun, Ming, Zhu and Li 2022, "Out-of-distribution detection
//! with deep nearest neighbors"): the Euclidean distance from the L2-normalised penultimate
//! features of an input to its k-th nearest neighbour in a bank of L2-normalised training
//! features. Higher = more out-of-distribution.
//!
//! The bank is a seeded uniform subsample of the training features, at most [`BANK_VALUES`]
//! numbers (`rows x D`, clamped to [`MIN_ROWS`]..[`MAX_ROWS`] rows), so a served score costs at
//! most `rows x D` multiply-adds and the calibration file stays a few megabytes (the bank is
//! stored as base64 little-endian f32). The paper's k = 50 for the full CIFAR-10 training set
//! is scaled with the sampling ratio, as its subsampling experiment does: `k = round(50 rows /
//! N)`, at least 1.
//!
//! In memory the bank is a [`BlockedRows`] (the file keeps plain rows): its similarities are
//! the row-by-row dot products bit for bit, computed a block of rows at a time with the widest
//! vector units the CPU has. Row by row, a 2048 x 128 bank was the largest item of the server's
//! profile (issue 19). A quarter-size `i8` copy of the bank ([`CoarseRows`]) rules out most
//! rows first, so that only a few are computed exactly, with the same answer bit for bit.

use base64::Engine;
use ndarray::ArrayView2;
use rand::SeedableRng;
use rand::seq::index::sample;
use serde::{Deserialize, Serialize};

use super::blocked::BlockedRows;
use super::coarse::{CoarseRows, kth_largest};
use super::fit::{OodError, check_rows};

/// Most numbers (`rows x D`) in the bank.
pub const BANK_VALUES: usize = 1 << 18;
/// Fewest bank rows (when the training set has them), whatever D.
pub const MIN_ROWS: usize = 1000;
/// Most bank rows.
pub const MAX_ROWS: usize = 10_000;
/// The paper's k for a full training set.
const FULL_K: f64 = 50.0;
/// Seed of the subsample, so a refit writes the same file.
const SEED: u64 = 0x6b6e_6e00;

/// The stored form: `k`, `dim` and the bank rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KnnParts {
    k: usize,
    dim: usize,
    /// `rows x dim` little-endian f32, base64 (standard alphabet).
    bank_f32_base64: String,
}

/// A fitted KNN detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "KnnParts", into = "KnnParts")]
pub struct Knn {
    k: usize,
    /// The normalised bank rows.
    bank: BlockedRows<f32>,
    /// Their coarse copy (derived from `bank`; `None` for rows too wide for it).
    coarse: Option<CoarseRows>,
}

impl TryFrom<KnnParts> for Knn {
    type Error = OodError;

    fn try_from(p: KnnParts) -> Result<Self, OodError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p.bank_f32_base64.as_bytes())
            .map_err(|e| OodError::Shape(format!("KNN bank is not base64: {e}")))?;
        if p.dim == 0 || bytes.len() % (4 * p.dim) != 0 {
            return Err(OodError::Shape(format!(
                "KNN bank of {} bytes is not whole rows of {} f32 values",
                bytes.len(),
                p.dim
            )));
        }
        let bank: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let rows = bank.len() / p.dim;
        if p.k == 0 || p.k > rows {
            return Err(OodError::Shape(format!(
                "KNN k = {} with {rows} bank rows",
                p.k
            )));
        }
        if let Some(i) = bank.iter().position(|v| !v.is_finite()) {
            return Err(OodError::NonFinite {
                what: "KNN bank",
                row: i / p.dim,
            });
        }
        Ok(Knn::new(p.k, p.dim, bank))
    }
}

impl From<Knn> for KnnParts {
    fn from(m: Knn) -> Self {
        let bytes: Vec<u8> = m
            .bank
            .to_rows()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        KnnParts {
            k: m.k,
            dim: m.bank.dim(),
            bank_f32_base64: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

/// `x / |x|` (a zero vector stays zero).
fn normalised(x: impl Iterator<Item = f64> + Clone) -> impl Iterator<Item = f64> {
    let norm = x.clone().map(|v| v * v).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    x.map(move |v| v * scale)
}

impl Knn {
    /// Builds the bank from training features `[N, D]`.
    pub fn fit(train: ArrayView2<'_, f64>) -> Result<Self, OodError> {
        let (n, dim) = train.dim();
        if n == 0 || dim == 0 {
            return Err(OodError::Empty("training features"));
        }
        check_rows("training features", train)?;
        let rows = (BANK_VALUES / dim).clamp(MIN_ROWS, MAX_ROWS).min(n);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(SEED);
        let mut picked = sample(&mut rng, n, rows).into_vec();
        picked.sort_unstable();
        let mut bank = Vec::with_capacity(rows * dim);
        for i in picked {
            bank.extend(normalised(train.row(i).iter().copied()).map(|v| v as f32));
        }
        let k = ((FULL_K * rows as f64 / n as f64).round() as usize).clamp(1, rows);
        Ok(Knn::new(k, dim, bank))
    }

    fn new(k: usize, dim: usize, bank: Vec<f32>) -> Self {
        Knn {
            k,
            coarse: CoarseRows::new(&bank, dim),
            bank: BlockedRows::from_rows(&bank, dim),
        }
    }

    /// Feature dimension D.
    pub fn dim(&self) -> usize {
        self.bank.dim()
    }

    /// The k of the k-th neighbour.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Rows in the bank.
    pub fn rows(&self) -> usize {
        self.bank.rows()
    }

    /// Distance from normalised `x` to its k-th nearest bank row (higher = more OOD).
    pub fn score(&self, x: &[f64]) -> Result<f64, OodError> {
        if x.len() != self.dim() {
            return Err(OodError::Shape(format!(
                "feature vector has {} values, the KNN bank has {}",
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
        let z: Vec<f32> = normalised(x.iter().copied()).map(|v| v as f32).collect();
        // For unit vectors |z - b|^2 = 2 - 2 z.b: the k-th nearest is the k-th largest product,
        // found among the rows the coarse pass keeps, or among all.
        let coarse = self.coarse.as_ref();
        let kth = match coarse.and_then(|c| c.kth_largest_product(&z, self.k)) {
            Some(kth) => kth,
            None => kth_largest(&mut self.bank.products(&z), self.k, f32::total_cmp),
        };
        Ok((2.0 - 2.0 * f64::from(kth)).max(0.0).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn the_kth_largest_matches_a_full_sort() {
        let values: Vec<f32> = (0..300)
            .map(|i| ((i * 7919 % 101) as f32 - 50.0) * 0.37)
            .chain([0.0, -0.0, f32::MAX, f32::MIN])
            .collect();
        let mut sorted = values.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for k in [1, 2, 5, 16, 17, 100, values.len()] {
            let got = kth_largest(&mut values.clone(), k, f32::total_cmp);
            assert_eq!(got.to_bits(), sorted[k - 1].to_bits(), "k = {k}");
        }
    }

    #[test]
    fn far_inputs_score_higher_and_the_bank_round_trips() {
        // Training features on a narrow cone around (1, 1, 0); an input along (0, 0, 1) is far.
        let train = Array2::from_shape_fn((300, 3), |(i, j)| match j {
            2 => (i % 7) as f64 * 0.01,
            _ => 1.0 + (i % 5) as f64 * 0.02 * if j == 0 { 1.0 } else { -1.0 },
        });
        let m = Knn::fit(train.view()).unwrap();
        assert_eq!((m.rows(), m.k()), (300, 50));
        let near = m.score(&[2.0, 2.0, 0.01]).unwrap();
        let far = m.score(&[0.0, 0.1, 1.0]).unwrap();
        assert!(near < 0.05 && far > 1.0, "{near} {far}");
        // Scale does not matter: the features are normalised.
        assert!((m.score(&[20.0, 20.0, 0.1]).unwrap() - near).abs() < 1e-6);
        let json = serde_json::to_string(&m).unwrap();
        let back: Knn = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert!(m.score(&[1.0, 2.0]).is_err());
    }

    #[test]
    fn a_large_training_set_is_subsampled_with_k_scaled() {
        let train = Array2::from_shape_fn((20_000, 64), |(i, j)| ((i * 31 + j * 7) % 13) as f64);
        let m = Knn::fit(train.view()).unwrap();
        assert_eq!(m.rows(), BANK_VALUES / 64);
        assert_eq!(m.k(), (50.0 * 4096.0 / 20_000.0f64).round() as usize);
    }
}
