//! The exact k-th largest of a bank's products with a query, from a coarse pass over an `i8`
//! copy of the bank and exact products of the few rows it cannot rule out (issue 19).
//!
//! The KNN score streams its whole bank for every request (2048 x 128 f32 for LeNet, 1 MB):
//! memory-bound, and on a busy server the bank has left the caches between requests. An `i8`
//! copy is a quarter of the bytes. Each row `y` is stored as `s q` (a scale and integers in
//! -127..=127), the query `z` as `t p`, and `s t (q . p)`, an exact integer product, is within
//!
//! ```text
//! B = |z - t p| max|y| + |t p| max|y - s q| + gamma_D |z| max|y|
//! ```
//!
//! of the served f32 product `S`, the maxima over the rows making one bound for all, so that
//! the pass over them is a multiply and a compare (the first two terms by Cauchy-Schwarz on
//! `z.y - (t p).(s q) = (z - t p).y + (t p).(y - s q)`; the last is the rounding of an f32
//! dot product summed in order, `gamma_D = D u / (1 - D u)`, `u = 2^-24`). With `L` the k-th
//! largest lower bound `s t (q . p) - B`, at least k rows have `S >= L`, so every row among the
//! k largest has an upper bound `>= L`: those candidates (a few per thousand rows on the
//! shipped banks) are computed exactly and the k-th largest of them is the k-th largest of all,
//! bit for bit. The bounds are computed in f64 and widened by [`SLACK`], far above its
//! rounding. When the bounds rule out too little (a query of zeros, a bank of near-duplicates)
//! the caller computes every product, as before.
//!
//! The integer products run on AVX-512 VNNI where the CPU has it (`vpdpbusd`: 64 byte products
//! summed into 16 `i32` per instruction; a plain `i8` loop was no faster than the f32 bank),
//! else on a portable loop; integer sums are exact, so both give the same numbers. The layout
//! is VNNI's: blocks of [`ROWS`] rows, within them groups of 4 columns, 4 bytes per row.
//! `vpdpbusd` multiplies unsigned by signed bytes, so the query is offset by 128 and
//! `128 x (row sum)` subtracted.

// `unsafe` only loads and stores through pointers to whole 64-byte groups of slices whose
// lengths are checked, and calls the `#[target_feature]` copy after the CPU was checked.
#![allow(unsafe_code)]

/// Largest magnitude of a quantised value.
const LEVELS: f64 = 127.0;
/// Added to every bound: covers the f64 rounding of the bound itself (products and sums of
/// numbers of magnitude about 1 round at 1e-16) with a wide margin.
const SLACK: f64 = 1e-9;
/// Widest rows the `i32` sums stay exact for (`dim x 127 x 127 < 2^31`), with room to spare.
const MAX_DIM: usize = 100_000;
/// Past this fraction of the rows as candidates, every product is computed instead.
const MAX_CANDIDATE_SHARE: usize = 4;
/// Rows per block: the 16 `i32` lanes of an AVX-512 register.
const ROWS: usize = 16;
/// Bytes of one group of 4 columns of a block.
const GROUP: usize = ROWS * 4;

/// `i8` rows in VNNI's layout, and the integer products with a query.
#[derive(Debug, Clone, PartialEq)]
struct QuantisedRows {
    rows: usize,
    /// Groups of 4 columns per row (the last padded with zeros).
    groups: usize,
    /// `blocks[((b * groups + g) * ROWS + r) * 4 + c]` is column `4 g + c` of row `ROWS b + r`.
    blocks: Vec<i8>,
    /// Each row's sum, for the offset of the unsigned query.
    sums: Vec<i32>,
}

impl QuantisedRows {
    fn new(values: &[i8], dim: usize) -> Self {
        let rows = values.len() / dim;
        let groups = dim.div_ceil(4);
        let mut blocks = vec![0i8; rows.div_ceil(ROWS) * groups * GROUP];
        for (i, row) in values.chunks_exact(dim).enumerate() {
            let (b, r) = (i / ROWS, i % ROWS);
            for (j, &v) in row.iter().enumerate() {
                blocks[((b * groups + j / 4) * ROWS + r) * 4 + j % 4] = v;
            }
        }
        let sums = values
            .chunks_exact(dim)
            .map(|row| row.iter().map(|&v| i32::from(v)).sum())
            .collect();
        QuantisedRows {
            rows,
            groups,
            blocks,
            sums,
        }
    }

    /// `row . p` for every row, exactly (`p` has the rows' dim values in -127..=127), into `out`.
    #[cfg(test)]
    fn products_into(&self, p: &[i8], out: &mut Vec<i32>) {
        let packed = pack(p, self.groups);
        out.clear();
        out.resize(self.blocks.len() / (self.groups * 4), 0);
        #[cfg(target_arch = "x86_64")]
        let done = if vnni() {
            // SAFETY: the CPU has AVX-512F and VNNI, the only features the function enables.
            unsafe { offset_products_vnni(&self.blocks, &packed, out) };
            true
        } else {
            false
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = false;
        if !done {
            offset_products(&self.blocks, &packed, out);
        }
        out.truncate(self.rows);
        for (o, &s) in out.iter_mut().zip(&self.sums) {
            *o -= 128 * s;
        }
    }

    /// One pass over the rows for query `p` (quantised with scale `t`): every row's estimate
    /// `s (q . p) t` goes through `sel`, a block of [`ROWS`] rows at a time, without storing
    /// them all (the estimates, the top-k pass over them and the candidate scan were three
    /// passes over 48 KB of scratch per request; in one, KNN's score on ResNet-20's bank went
    /// from 7.9-8.5 to 6.7-6.8 us, docs/BENCHMARKS.md session 26).
    fn select(&self, p: &[i8], t: f64, scale: &[f64], sel: &mut Selection<'_>) {
        let packed = pack(p, self.groups);
        #[cfg(target_arch = "x86_64")]
        if vnni() {
            // SAFETY: the CPU has AVX-512F and VNNI, the only features the function enables.
            unsafe { self.select_vnni(&packed, t, scale, sel) };
            return;
        }
        self.select_portable(&packed, t, scale, sel);
    }

    /// [`Self::select`] with the portable products.
    fn select_portable(&self, packed: &[u32], t: f64, scale: &[f64], sel: &mut Selection<'_>) {
        let mut dots = [0i32; ROWS];
        for (b, block) in self.blocks.chunks_exact(self.groups * GROUP).enumerate() {
            dots.fill(0);
            offset_products(block, packed, &mut dots);
            let rows = b * ROWS..(b * ROWS + ROWS).min(self.rows);
            sel.block(rows.start, &dots, &self.sums[rows.clone()], &scale[rows], t);
        }
    }

    /// [`Self::select`] with `vpdpbusd`, a block's estimates computed and tested against the
    /// floor in registers (through memory, the conversions and the compare waited on stores).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vnni")]
    fn select_vnni(&self, packed: &[u32], t: f64, scale: &[f64], sel: &mut Selection<'_>) {
        use std::arch::x86_64::*;
        let times = _mm512_set1_pd(t);
        let mut floor = _mm512_set1_pd(sel.floor());
        let mut estimate = [0f64; ROWS];
        for (b, block) in self.blocks.chunks_exact(self.groups * GROUP).enumerate() {
            let sum = block_sums_vnni(block, packed);
            let first = b * ROWS;
            if first + ROWS > self.rows {
                // The last, partial block: through the portable steps.
                let mut dots = [0i32; ROWS];
                // SAFETY: `dots` is exactly 16 i32 (64 bytes); unaligned stores are allowed.
                unsafe { _mm512_storeu_si512(dots.as_mut_ptr().cast(), sum) };
                let rows = first..self.rows;
                sel.block(first, &dots, &self.sums[rows.clone()], &scale[rows], t);
                continue;
            }
            let sums = &self.sums[first..first + ROWS];
            let scales = &scale[first..first + ROWS];
            // SAFETY: `sums` is 16 i32 and `scales` 16 f64 (two groups of 8); unaligned loads
            // and stores are allowed, and `estimate` is 16 f64.
            unsafe {
                let dots = _mm512_sub_epi32(
                    sum,
                    _mm512_slli_epi32::<7>(_mm512_loadu_si512(sums.as_ptr().cast())),
                );
                let low = _mm512_cvtepi32_pd(_mm512_castsi512_si256(dots));
                let high = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64::<1>(dots));
                // `s d t` in that order, as the portable steps compute it.
                let low =
                    _mm512_mul_pd(_mm512_mul_pd(_mm512_loadu_pd(scales.as_ptr()), low), times);
                let high = _mm512_mul_pd(
                    _mm512_mul_pd(_mm512_loadu_pd(scales[8..].as_ptr()), high),
                    times,
                );
                let reach = _mm512_cmp_pd_mask::<_CMP_GE_OQ>(low, floor)
                    | _mm512_cmp_pd_mask::<_CMP_GE_OQ>(high, floor);
                if reach == 0 {
                    continue;
                }
                _mm512_storeu_pd(estimate.as_mut_ptr(), low);
                _mm512_storeu_pd(estimate[8..].as_mut_ptr(), high);
            }
            sel.take(first, &estimate);
            floor = _mm512_set1_pd(sel.floor());
        }
    }
}

/// Whether this CPU has AVX-512F and VNNI (`vpdpbusd`).
#[cfg(target_arch = "x86_64")]
fn vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// The running k largest row estimates of one query, and the rows that may still be
/// candidates: those whose estimate reached the floor the k largest so far give. The floor
/// only rises, so a row below it when seen is below the final floor, and the rows kept are a
/// superset of the final candidates, which [`Selection::finish`] picks.
struct Selection<'a> {
    /// The k largest estimates so far, largest first (`-inf` until k rows were seen); unused
    /// when k is above [`SMALL_K`], where every row is kept and partitioned at the end.
    top: [f64; SMALL_K],
    k: usize,
    /// Twice the bound of an estimate's error: an upper bound reaching the k-th lower bound.
    margin: f64,
    /// Rows kept, with their estimates, in row order.
    kept: &'a mut Vec<(usize, f64)>,
}

impl<'a> Selection<'a> {
    fn new(k: usize, margin: f64, kept: &'a mut Vec<(usize, f64)>) -> Self {
        kept.clear();
        Selection {
            top: [f64::NEG_INFINITY; SMALL_K],
            k,
            margin,
            kept,
        }
    }

    /// The floor for a k-th largest estimate `kth`, widened below by a relative 1e-12.
    #[inline(always)]
    fn floor_of(&self, kth: f64) -> f64 {
        let floor = kth - self.margin;
        floor - floor.abs() * 1e-12
    }

    /// The current floor: `-inf` while fewer than k rows were seen, and always for a large k.
    #[inline(always)]
    fn floor(&self) -> f64 {
        if self.k > SMALL_K {
            return f64::NEG_INFINITY;
        }
        self.floor_of(self.top[self.k - 1])
    }

    /// The rows from `first` on: their offset integer products `dots` (lanes past the rows are
    /// padding), row sums and scales.
    #[inline(always)]
    fn block(&mut self, first: usize, dots: &[i32; ROWS], sums: &[i32], scale: &[f64], t: f64) {
        let mut estimate = [f64::NEG_INFINITY; ROWS];
        for (((e, &d), &s), &sc) in estimate.iter_mut().zip(dots).zip(sums).zip(scale) {
            *e = sc * f64::from(d - 128 * s) * t;
        }
        // Once k rows were seen almost no block reaches the floor: one branch rules it out.
        let floor = self.floor();
        if estimate.iter().fold(false, |any, &v| any | (v >= floor)) {
            self.take(first, &estimate[..sums.len()]);
        }
    }

    /// The estimates of the rows from `first` on: those reaching the floor are kept, and the
    /// k largest so far updated.
    #[inline(always)]
    fn take(&mut self, first: usize, estimate: &[f64]) {
        let (k, floor) = (self.k, self.floor());
        for (i, &v) in estimate.iter().enumerate() {
            if v < floor {
                continue;
            }
            self.kept.push((first + i, v));
            if k > SMALL_K || v <= self.top[k - 1] {
                continue;
            }
            // Insert v, keeping the first k sorted from the largest down.
            let mut at = k - 1;
            while at > 0 && self.top[at - 1] < v {
                self.top[at] = self.top[at - 1];
                at -= 1;
            }
            self.top[at] = v;
        }
    }

    /// The candidates, in row order, into `picked`: the kept rows whose estimate reaches the
    /// floor of the k-th largest estimate of all rows.
    fn finish(self, picked: &mut Vec<usize>) {
        let kth = if self.k > SMALL_K {
            let mut all: Vec<f64> = self.kept.iter().map(|&(_, v)| v).collect();
            kth_largest(&mut all, self.k, f64::total_cmp)
        } else {
            self.top[self.k - 1]
        };
        let floor = self.floor_of(kth);
        picked.clear();
        picked.extend(
            self.kept
                .iter()
                .filter(|&&(_, v)| v >= floor)
                .map(|&(i, _)| i),
        );
    }
}

/// The query offset to unsigned bytes, 4 columns to a lane; padding columns multiply the
/// rows' zero padding, so their bytes do not matter.
fn pack(p: &[i8], groups: usize) -> Vec<u32> {
    let mut packed = vec![0u32; groups];
    for (j, &v) in p.iter().enumerate() {
        packed[j / 4] |= u32::from((i16::from(v) + 128) as u8) << (8 * (j % 4));
    }
    packed
}

/// `sum (p + 128) q` per row: the portable loop.
fn offset_products(blocks: &[i8], packed: &[u32], out: &mut [i32]) {
    let groups = packed.len();
    for (block, o) in blocks
        .chunks_exact(groups * GROUP)
        .zip(out.chunks_exact_mut(ROWS))
    {
        for (group, &word) in block.chunks_exact(GROUP).zip(packed) {
            let bytes = word.to_le_bytes();
            for (row, acc) in group.chunks_exact(4).zip(o.iter_mut()) {
                for (&q, &u) in row.iter().zip(&bytes) {
                    *acc += i32::from(q) * i32::from(u);
                }
            }
        }
    }
}

/// [`offset_products`] with `vpdpbusd`.
#[cfg(all(test, target_arch = "x86_64"))]
#[target_feature(enable = "avx512f,avx512vnni")]
fn offset_products_vnni(blocks: &[i8], packed: &[u32], out: &mut [i32]) {
    let groups = packed.len();
    for (block, o) in blocks
        .chunks_exact(groups * GROUP)
        .zip(out.chunks_exact_mut(ROWS))
    {
        let sum = block_sums_vnni(block, packed);
        // SAFETY: `o` is exactly 16 i32 (64 bytes); unaligned stores are allowed.
        unsafe { std::arch::x86_64::_mm512_storeu_si512(o.as_mut_ptr().cast(), sum) };
    }
}

/// `sum (p + 128) q` for the 16 rows of one block, with `vpdpbusd` and four accumulators
/// (named, so that they stay in registers) so that the additions do not wait on each other.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
fn block_sums_vnni(block: &[i8], packed: &[u32]) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let step = |acc: __m512i, group: &[i8], word: u32| {
        // SAFETY: `group` is exactly 64 bytes; unaligned loads are allowed.
        let q = unsafe { _mm512_loadu_si512(group.as_ptr().cast()) };
        _mm512_dpbusd_epi32(acc, _mm512_set1_epi32(word as i32), q)
    };
    let zero = _mm512_setzero_si512();
    let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
    let mut four = block.chunks_exact(4 * GROUP).zip(packed.chunks_exact(4));
    for (g, w) in &mut four {
        a0 = step(a0, &g[..GROUP], w[0]);
        a1 = step(a1, &g[GROUP..2 * GROUP], w[1]);
        a2 = step(a2, &g[2 * GROUP..3 * GROUP], w[2]);
        a3 = step(a3, &g[3 * GROUP..], w[3]);
    }
    let tail = block.chunks_exact(4 * GROUP).remainder();
    let words = packed.chunks_exact(4).remainder();
    for (g, &w) in tail.chunks_exact(GROUP).zip(words) {
        a0 = step(a0, g, w);
    }
    _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3))
}

/// Most k for which [`kth_largest`] keeps a sorted top-k list instead of partitioning.
const SMALL_K: usize = 16;

/// The k-th largest of `values` under `cmp` (1 <= k <= len), a total order under which equal
/// values are the same bits (`total_cmp`), so the answer does not depend on the method.
pub(super) fn kth_largest<T: Copy>(
    values: &mut [T],
    k: usize,
    cmp: fn(&T, &T) -> std::cmp::Ordering,
) -> T {
    if k > SMALL_K {
        return *values.select_nth_unstable_by(k - 1, |a, b| cmp(b, a)).1;
    }
    // One pass, most values rejected by one comparison with the current k-th (k is 1 to 10 for
    // the shipped banks): cheaper than the partitioning passes of `select_nth_unstable_by`.
    let mut top: Vec<T> = Vec::with_capacity(k + 1);
    for &v in values.iter() {
        if top.len() == k && cmp(&v, &top[k - 1]).is_le() {
            continue;
        }
        let at = top.partition_point(|t| cmp(t, &v).is_ge());
        top.insert(at, v);
        top.truncate(k);
    }
    top[k - 1]
}

/// The `i8` copy of a bank, the figures of its bounds, and the bank itself row by row (the
/// candidates' exact products read a few whole rows, not one value per cache line of the
/// interleaved copy).
#[derive(Debug, Clone, PartialEq)]
pub struct CoarseRows {
    rows: QuantisedRows,
    /// `s` per row.
    scale: Vec<f64>,
    /// The largest `|y - s q|` and `|y|` of any row: one bound for all rows, so that the pass
    /// over them is a multiply and a compare (rows are unit vectors, and their errors differ
    /// little).
    max_error: f64,
    max_norm: f64,
    /// The bank, row-major.
    exact: Vec<f32>,
    dim: usize,
}

/// The scale of `values` and their quantised copy.
fn quantise(values: &[f32]) -> (f64, Vec<i8>) {
    let max = values
        .iter()
        .fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
    if max == 0.0 {
        return (0.0, vec![0; values.len()]);
    }
    let s = max / LEVELS;
    let q = values
        .iter()
        .map(|&v| (f64::from(v) / s).round().clamp(-LEVELS, LEVELS) as i8)
        .collect();
    (s, q)
}

/// `|y - s q|` and `|y|`, in f64.
fn error_and_norm(values: &[f32], s: f64, q: &[i8]) -> (f64, f64) {
    let (mut e, mut n) = (0.0f64, 0.0f64);
    for (&v, &qi) in values.iter().zip(q) {
        let v = f64::from(v);
        e += (v - s * f64::from(qi)).powi(2);
        n += v * v;
    }
    (e.sqrt(), n.sqrt())
}

impl CoarseRows {
    /// The coarse copy of row-major `rows x dim` values; `None` when rows are too wide for
    /// exact `i32` sums.
    pub fn new(values: &[f32], dim: usize) -> Option<Self> {
        if dim == 0 || dim > MAX_DIM {
            return None;
        }
        let n = values.len() / dim;
        let mut scale = Vec::with_capacity(n);
        let (mut max_error, mut max_norm) = (0.0f64, 0.0f64);
        let mut quantised = Vec::with_capacity(n * dim);
        for row in values.chunks_exact(dim) {
            let (s, q) = quantise(row);
            let (e, nm) = error_and_norm(row, s, &q);
            scale.push(s);
            max_error = max_error.max(e);
            max_norm = max_norm.max(nm);
            quantised.extend(q);
        }
        Some(CoarseRows {
            rows: QuantisedRows::new(&quantised, dim),
            scale,
            max_error,
            max_norm,
            exact: values[..n * dim].to_vec(),
            dim,
        })
    }

    /// The k-th largest `row . z` over the rows, bit for bit as the f32 row-by-row sums give it
    /// (each from -0.0 in column order), or `None` when the bounds keep more than a
    /// [`MAX_CANDIDATE_SHARE`]th of the rows (computing every product is then cheaper). `z` has
    /// `dim` values, all finite; 1 <= k <= rows.
    pub fn kth_largest_product(&self, z: &[f32], k: usize) -> Option<f32> {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.kth_largest_product_dispatch(z, k, &mut scratch),
            // Not reentrant in practice; a fresh one keeps it correct if it ever is.
            Err(_) => self.kth_largest_product_dispatch(z, k, &mut Scratch::default()),
        })
    }

    /// [`Self::kth_largest_product_in`] compiled for AVX-512 where the CPU has it, so that its
    /// loops over every row and over the candidates' columns may use the wide registers. Rust
    /// never fuses a multiply and an add, so both copies give the same bits (a test compares).
    fn kth_largest_product_dispatch(
        &self,
        z: &[f32],
        k: usize,
        scratch: &mut Scratch,
    ) -> Option<f32> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, the only feature the function enables.
            return unsafe { self.kth_largest_product_avx512(z, k, scratch) };
        }
        self.kth_largest_product_in(z, k, scratch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn kth_largest_product_avx512(
        &self,
        z: &[f32],
        k: usize,
        scratch: &mut Scratch,
    ) -> Option<f32> {
        self.kth_largest_product_in(z, k, scratch)
    }

    #[inline(always)]
    fn kth_largest_product_in(&self, z: &[f32], k: usize, scratch: &mut Scratch) -> Option<f32> {
        let Scratch {
            kept,
            picked,
            columns,
            sims,
        } = scratch;
        if !self.candidates_into(z, k, kept, picked) {
            return None;
        }
        sims.clear();
        columns.resize(self.dim, [0.0; ROW_LANES]);
        for chunk in picked.chunks(ROW_LANES) {
            // The chunk's rows side by side, one column per entry: the sums below then advance
            // all lanes at once, in registers (indexing the rows in place kept them in memory).
            for (lane, &i) in chunk.iter().enumerate() {
                let row = &self.exact[i * self.dim..][..self.dim];
                for (column, &v) in columns.iter_mut().zip(row) {
                    column[lane] = v;
                }
            }
            // Each lane sums its row in column order from -0.0, as the f32 bank does (lanes past
            // the chunk hold an earlier chunk's rows and are never read).
            let mut acc = [-0.0f32; ROW_LANES];
            for (column, &zj) in columns.iter().zip(z) {
                for (a, &v) in acc.iter_mut().zip(column) {
                    *a += v * zj;
                }
            }
            sims.extend_from_slice(&acc[..chunk.len()]);
        }
        Some(kth_largest(sims, k, f32::total_cmp))
    }

    /// The rows whose product with `z` may be among the `k` largest, in row order, into
    /// `picked` (`kept` is scratch); false when they are too many to be worth it.
    #[inline(always)]
    fn candidates_into(
        &self,
        z: &[f32],
        k: usize,
        kept: &mut Vec<(usize, f64)>,
        picked: &mut Vec<usize>,
    ) -> bool {
        let n = self.scale.len();
        debug_assert!(k >= 1 && k <= n && z.len() == self.dim);
        let (t, p) = quantise(z);
        if t == 0.0 {
            return false;
        }
        let (z_error, z_norm) = error_and_norm(z, t, &p);
        let p_norm = t * p.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        let d = z.len() as f64;
        let u = f64::from(f32::EPSILON) / 2.0;
        let gamma = d * u / (1.0 - d * u);
        // One bound for every row, widened far past its own rounding.
        let bound = ((z_error + gamma * z_norm) * self.max_norm + p_norm * self.max_error)
            * (1.0 + 1e-6)
            + SLACK;
        let mut sel = Selection::new(k, 2.0 * bound, kept);
        self.rows.select(&p, t, &self.scale, &mut sel);
        sel.finish(picked);
        picked.len() * MAX_CANDIDATE_SHARE <= n
    }
}

/// Per-thread buffers of [`CoarseRows::kth_largest_product`], kept between requests: as
/// vectors of their own they were 8-30 KB per request, above glibc's per-thread cache, so each
/// took malloc's slow path and consolidated its fast bins (the allocator was 16 us of LeNet's
/// request in the profile of issue 19).
#[derive(Debug, Default)]
struct Scratch {
    /// The rows the pass over the bank kept, with their estimates.
    kept: Vec<(usize, f64)>,
    /// The candidate rows.
    picked: Vec<usize>,
    /// Up to [`ROW_LANES`] candidate rows, column by column.
    columns: Vec<[f32; ROW_LANES]>,
    /// Their exact products.
    sims: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Candidate rows whose exact sums advance together, so that they do not wait on each other.
const ROW_LANES: usize = 16;

#[cfg(test)]
mod tests {
    use super::super::blocked::BlockedRows;
    use super::*;

    impl CoarseRows {
        fn candidates(&self, z: &[f32], k: usize) -> Option<Vec<usize>> {
            let (mut kept, mut picked) = (Vec::new(), Vec::new());
            self.candidates_into(z, k, &mut kept, &mut picked)
                .then_some(picked)
        }
    }

    impl QuantisedRows {
        fn products(&self, p: &[i8]) -> Vec<i32> {
            let mut out = Vec::new();
            self.products_into(p, &mut out);
            out
        }
    }

    /// The k-th largest of every exact product, the plain way.
    fn kth_of_all(values: &[f32], dim: usize, z: &[f32], k: usize) -> f32 {
        let mut all: Vec<f32> = BlockedRows::from_rows(values, dim).products(z);
        all.sort_by(|a, b| b.total_cmp(a));
        all[k - 1]
    }

    fn kth_of_candidates(values: &[f32], dim: usize, z: &[f32], k: usize) -> Option<f32> {
        let coarse = CoarseRows::new(values, dim)?;
        if let Some(picked) = coarse.candidates(z, k) {
            assert!(picked.len() >= k);
        }
        // Whichever copy this CPU dispatches to, and the portable one, agree bit for bit.
        let got = coarse.kth_largest_product(z, k);
        let portable = coarse.kth_largest_product_in(z, k, &mut Scratch::default());
        assert_eq!(got.map(f32::to_bits), portable.map(f32::to_bits));
        got
    }

    /// A deterministic pseudo-random stream in [-1, 1).
    fn stream(seed: u64) -> impl FnMut() -> f32 {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// `rows` unit rows of `dim` around `clusters` centres, as features are, so that neighbours
    /// are close; the centres and the rows, row-major.
    fn clustered(
        r: &mut impl FnMut() -> f32,
        rows: usize,
        dim: usize,
        clusters: usize,
    ) -> (Vec<Vec<f32>>, Vec<f32>) {
        let centres: Vec<Vec<f32>> = (0..clusters)
            .map(|_| (0..dim).map(|_| r()).collect())
            .collect();
        let mut bank = Vec::with_capacity(rows * dim);
        for i in 0..rows {
            let mut row: Vec<f32> = centres[i % clusters]
                .iter()
                .map(|c| c + 0.3 * r())
                .collect();
            unit(&mut row);
            bank.extend(row);
        }
        (centres, bank)
    }

    fn unit(v: &mut [f32]) {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
    }

    #[test]
    fn the_candidates_hold_the_exact_kth_largest_bit_for_bit() {
        let mut pruned = 0;
        for (rows, dim, seed) in [
            (2048, 128, 1u64),
            (4096, 64, 2),
            (1000, 1280, 3),
            (300, 7, 4),
        ] {
            let mut r = stream(seed);
            let (centres, bank) = clustered(&mut r, rows, dim, 8);
            for q in 0..20 {
                let mut z: Vec<f32> = match q % 3 {
                    // Near a centre, far from all, or one of the bank's own rows.
                    0 => centres[q % 8].iter().map(|c| c + 0.1 * r()).collect(),
                    1 => (0..dim).map(|_| r()).collect(),
                    _ => bank[(q * 37 % rows) * dim..][..dim].to_vec(),
                };
                unit(&mut z);
                for k in [1, 2, 5, 50.min(rows)] {
                    let want = kth_of_all(&bank, dim, &z, k);
                    if let Some(got) = kth_of_candidates(&bank, dim, &z, k) {
                        assert_eq!(got.to_bits(), want.to_bits(), "{rows}x{dim} q{q} k{k}");
                        pruned += 1;
                    }
                }
            }
        }
        // The bounds must rule out most rows on clustered banks, or the pass is no use.
        assert!(pruned > 200, "only {pruned} of 320 cases pruned");
    }

    #[test]
    fn the_one_pass_keeps_the_rows_its_definition_keeps() {
        // Every row's estimate `s (q . p) t`, their k-th largest and the rows reaching its floor,
        // computed the plain way, against the one pass, dispatched and portable; k on both
        // sides of SMALL_K, and banks whose last block is partial.
        for (rows, dim, seed) in [(2048, 128, 5u64), (4096, 64, 6), (300, 7, 7), (17, 3, 8)] {
            let mut r = stream(seed);
            let (centres, bank) = clustered(&mut r, rows, dim, 4);
            let coarse = CoarseRows::new(&bank, dim).unwrap();
            for q in 0..6 {
                let mut z: Vec<f32> = centres[q % 4].iter().map(|c| c + 0.2 * r()).collect();
                unit(&mut z);
                let (t, p) = quantise(&z);
                let dots = coarse.rows.products(&p);
                let estimates: Vec<f64> = coarse
                    .scale
                    .iter()
                    .zip(&dots)
                    .map(|(&s, &d)| s * f64::from(d) * t)
                    .collect();
                for k in [1, 3, SMALL_K, SMALL_K + 1, 40.min(rows)] {
                    let margin = 0.02;
                    let kth = kth_largest(&mut estimates.clone(), k, f64::total_cmp);
                    let floor = kth - margin;
                    let floor = floor - floor.abs() * 1e-12;
                    let want: Vec<usize> = (0..rows).filter(|&i| estimates[i] >= floor).collect();
                    let (mut kept, mut got) = (Vec::new(), Vec::new());
                    let mut sel = Selection::new(k, margin, &mut kept);
                    coarse.rows.select(&p, t, &coarse.scale, &mut sel);
                    sel.finish(&mut got);
                    assert_eq!(got, want, "{rows}x{dim} q{q} k{k}");
                    let mut sel = Selection::new(k, margin, &mut kept);
                    let packed = pack(&p, coarse.rows.groups);
                    coarse
                        .rows
                        .select_portable(&packed, t, &coarse.scale, &mut sel);
                    sel.finish(&mut got);
                    assert_eq!(got, want, "portable {rows}x{dim} q{q} k{k}");
                }
            }
        }
    }

    #[test]
    fn ties_duplicates_and_zeros_fall_back_or_stay_exact() {
        // Every row the same: all are candidates, so the caller computes all products.
        let bank: Vec<f32> = [0.6f32, 0.8].repeat(64);
        assert!(
            CoarseRows::new(&bank, 2)
                .unwrap()
                .candidates(&[0.8, 0.6], 3)
                .is_none()
        );
        // A zero query has no scale: no pruning.
        assert!(
            CoarseRows::new(&bank, 2)
                .unwrap()
                .candidates(&[0.0, 0.0], 1)
                .is_none()
        );
        // Zero rows and rows that differ only in sign of zero keep exact answers.
        let mut bank = vec![0.0f32; 2 * 200];
        bank[0] = 1.0;
        bank[3] = -0.0;
        bank[5] = 1.0;
        for k in [1, 2, 3] {
            let z = [1.0f32, 0.0];
            let want = kth_of_all(&bank, 2, &z, k);
            if let Some(got) = kth_of_candidates(&bank, 2, &z, k) {
                assert_eq!(got.to_bits(), want.to_bits(), "k{k}");
            }
        }
        // Too wide for exact i32 sums.
        assert!(CoarseRows::new(&vec![0.5; MAX_DIM + 1], MAX_DIM + 1).is_none());
    }

    #[test]
    fn the_i8_products_are_the_exact_integer_sums() {
        // A padded last block and a padded last group of columns; extreme values.
        for (rows, dim) in [(70, 33), (16, 4), (5, 1)] {
            let q: Vec<i8> = (0..rows * dim)
                .map(|i| [-127, 127, 0, 1, -1, 63][i % 6] as i8 ^ (i % 3) as i8)
                .collect();
            let p: Vec<i8> = (0..dim).map(|j| [127, -127, 5, 0][j % 4]).collect();
            let m = QuantisedRows::new(&q, dim);
            let want: Vec<i32> = q
                .chunks_exact(dim)
                .map(|row| {
                    row.iter()
                        .zip(&p)
                        .map(|(&a, &b)| i32::from(a) * i32::from(b))
                        .sum()
                })
                .collect();
            // Whichever copy this CPU dispatches to, and the portable loop itself.
            assert_eq!(m.products(&p), want, "{rows}x{dim}");
            let mut portable = vec![0; rows.div_ceil(ROWS) * ROWS];
            offset_products(&m.blocks, &pack(&p, m.groups), &mut portable);
            let portable: Vec<i32> = portable[..rows]
                .iter()
                .zip(&m.sums)
                .map(|(&o, &s)| o - 128 * s)
                .collect();
            assert_eq!(portable, want);
        }
    }
}
