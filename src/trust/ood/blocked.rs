//! Matrix-vector products for the served OOD scores (KNN similarities, the Mahalanobis `P x`),
//! fast and bit for bit equal to the plain row-by-row sums.
//!
//! The rows are stored interleaved in blocks of [`LANES`]: `blocks[(b * dim + j) * LANES + r]`
//! is column `j` of row `b * LANES + r`, the last block padded with zero rows. The products of a
//! block advance together one column at a time, so each row still adds its products in column
//! order from -0.0, exactly as `Iterator::sum` over `row[j] * z[j]` does (fitted thresholds and
//! served scores do not move), while the `LANES` independent sums fill the vector units instead
//! of each waiting on its own chain of additions. Row by row, these products were the largest
//! caliper items of the server's profile (issue 19).
//!
//! The same loop is compiled three times and chosen at run time: for AVX-512, for AVX2 and for
//! the baseline x86-64 (SSE2) the binary is built for. Only the vector width changes: Rust never
//! fuses a multiply and an add into an FMA (which would round once instead of twice), so every
//! version gives the same bits, which a test checks on the machine it runs on.

// `unsafe` only calls a `#[target_feature]` copy of the portable loop after the CPU was
// checked for that feature (std's cached `is_x86_feature_detected!`).
#![allow(unsafe_code)]

use std::ops::{Add, Mul};

/// Rows whose products are computed together: 64 f32 are four AVX-512 or eight AVX2 registers,
/// enough independent sums to hide the latency of an addition.
pub const LANES: usize = 64;

/// A floating-point element of a [`BlockedRows`].
pub trait Element: Copy + Add<Output = Self> + Mul<Output = Self> + PartialEq {
    /// Where `Iterator::sum` starts.
    const NEG_ZERO: Self;
    /// Padding rows.
    const ZERO: Self;
}

impl Element for f32 {
    const NEG_ZERO: f32 = -0.0;
    const ZERO: f32 = 0.0;
}

impl Element for f64 {
    const NEG_ZERO: f64 = -0.0;
    const ZERO: f64 = 0.0;
}

/// A `rows x dim` matrix stored for [`BlockedRows::products_into`].
#[derive(Debug, Clone, PartialEq)]
pub struct BlockedRows<T> {
    rows: usize,
    dim: usize,
    blocks: Vec<T>,
}

impl<T: Element> BlockedRows<T> {
    /// From row-major values, `dim` per row (a partial last row is ignored; `dim` 0 gives no
    /// rows).
    pub fn from_rows(values: &[T], dim: usize) -> Self {
        if dim == 0 {
            return BlockedRows {
                rows: 0,
                dim,
                blocks: Vec::new(),
            };
        }
        let rows = values.len() / dim;
        let mut blocks = vec![T::ZERO; rows.div_ceil(LANES) * LANES * dim];
        for (i, row) in values.chunks_exact(dim).enumerate() {
            let (b, r) = (i / LANES, i % LANES);
            for (j, &v) in row.iter().enumerate() {
                blocks[(b * dim + j) * LANES + r] = v;
            }
        }
        BlockedRows { rows, dim, blocks }
    }

    /// From rows of equal length `dim`.
    pub fn from_row_vecs(rows: &[Vec<T>], dim: usize) -> Self {
        debug_assert!(rows.iter().all(|r| r.len() == dim));
        let values: Vec<T> = rows.iter().flatten().copied().collect();
        BlockedRows {
            rows: rows.len(),
            ..Self::from_rows(&values, dim)
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The rows, row-major.
    pub fn to_rows(&self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.rows * self.dim);
        for i in 0..self.rows {
            let (b, r) = (i / LANES, i % LANES);
            out.extend((0..self.dim).map(|j| self.blocks[(b * self.dim + j) * LANES + r]));
        }
        out
    }

    /// `row . z` for every row, in row order, into `out` (cleared first). `z` has `dim` values.
    pub fn products_into(&self, z: &[T], out: &mut Vec<T>) {
        debug_assert_eq!(z.len(), self.dim);
        out.clear();
        if self.dim == 0 {
            // Empty sums.
            out.resize(self.rows, T::NEG_ZERO);
            return;
        }
        out.reserve(self.blocks.len() / self.dim.max(1));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, the only feature the function enables.
                unsafe { products_avx512(&self.blocks, self.dim, z, out) };
                out.truncate(self.rows);
                return;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, the only feature the function enables.
                unsafe { products_avx2(&self.blocks, self.dim, z, out) };
                out.truncate(self.rows);
                return;
            }
        }
        products(&self.blocks, self.dim, z, out);
        out.truncate(self.rows);
    }

    /// [`Self::products_into`] into a new vector.
    pub fn products(&self, z: &[T]) -> Vec<T> {
        let mut out = Vec::new();
        self.products_into(z, &mut out);
        out
    }
}

/// The portable loop; the feature-specific copies inline it.
#[inline(always)]
fn products<T: Element>(blocks: &[T], dim: usize, z: &[T], out: &mut Vec<T>) {
    if dim == 0 {
        return;
    }
    for block in blocks.chunks_exact(dim * LANES) {
        let mut acc = [T::NEG_ZERO; LANES];
        for (column, &zj) in block.chunks_exact(LANES).zip(z) {
            for (a, &b) in acc.iter_mut().zip(column) {
                *a = *a + b * zj;
            }
        }
        out.extend_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn products_avx512<T: Element>(blocks: &[T], dim: usize, z: &[T], out: &mut Vec<T>) {
    products(blocks, dim, z, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn products_avx2<T: Element>(blocks: &[T], dim: usize, z: &[T], out: &mut Vec<T>) {
    products(blocks, dim, z, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values with long mantissas and both signs.
    fn values(n: usize, seed: usize) -> Vec<f64> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f64 / 997.0 - 0.5) * 1.37)
            .collect()
    }

    fn check<T: Element + std::fmt::Debug>(rows: usize, dim: usize, conv: fn(f64) -> T) {
        let m: Vec<T> = values(rows * dim, 1).into_iter().map(conv).collect();
        let z: Vec<T> = values(dim, 2).into_iter().map(conv).collect();
        let blocked = BlockedRows::from_rows(&m, dim);
        assert_eq!(blocked.to_rows(), m);
        assert_eq!(blocked.rows(), rows);
        // The plain row-by-row sum, written out as `Iterator::sum` does it.
        let plain: Vec<T> = m
            .chunks_exact(dim)
            .map(|row| {
                row.iter()
                    .zip(&z)
                    .fold(T::NEG_ZERO, |acc, (&a, &b)| acc + a * b)
            })
            .collect();
        // Whichever copy this CPU dispatches to, and the portable loop itself.
        let mut portable = Vec::new();
        products(&blocked.blocks, dim, &z, &mut portable);
        portable.truncate(rows);
        for got in [blocked.products(&z), portable] {
            assert_eq!(got.len(), rows);
            for (a, b) in got.iter().zip(&plain) {
                assert!(a == b, "{a:?} != {b:?}");
            }
        }
    }

    #[test]
    fn blocked_products_equal_the_row_by_row_sums_bit_for_bit() {
        // Whole blocks, a padded one, fewer rows than a block, one column.
        for (rows, dim) in [(2 * LANES, 37), (2 * LANES + 6, 37), (5, 128), (70, 1)] {
            check::<f32>(rows, dim, |v| v as f32);
            check::<f64>(rows, dim, |v| v);
        }
        let f32_bits = |v: f32| v.to_bits();
        let m = BlockedRows::from_rows(&[1.5f32, -2.25, 3.0, 0.5], 2);
        assert_eq!(
            m.products(&[0.1, 0.3])
                .into_iter()
                .map(f32_bits)
                .collect::<Vec<_>>(),
            [1.5f32 * 0.1 + -2.25 * 0.3, 3.0 * 0.1 + 0.5 * 0.3].map(f32_bits)
        );
        // Sums start at -0.0, as `Iterator::sum` does: a row of -0.0 products stays -0.0.
        let zero = BlockedRows::from_rows(&[-0.0f64, 0.0], 2);
        assert!(zero.products(&[1.0, -1.0])[0].is_sign_negative());
    }
}
