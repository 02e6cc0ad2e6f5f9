//! The label-free window of served calibrated probability vectors of one model, for the
//! label-shift estimates (issue 22, section 1).
//!
//! Memory is bounded twice: at most `--shift-window` vectors, and at most
//! [`SERVED_WINDOW_BYTES`] per model, stored as f32 (4 bytes a class): 5,000 MNIST vectors take
//! 200 KB, and a 1,000-class model keeps its last 4,194 vectors in 16 MiB. The vectors are the
//! calibrated probabilities *before* any label-shift correction: the estimators assume
//! posteriors calibrated for the validation prior.

/// Bytes of probability vectors kept per model, at most.
pub const SERVED_WINDOW_BYTES: usize = 16 << 20;

/// A ring buffer of the last served probability vectors of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedWindow {
    k: usize,
    capacity: usize,
    data: Vec<f32>,
    /// Next row to overwrite once full.
    head: usize,
    len: usize,
    total: u64,
}

impl ServedWindow {
    /// An empty window for `k` classes holding at most `max_rows` rows (fewer when the byte
    /// budget says so; at least one).
    pub fn new(k: usize, max_rows: usize) -> Self {
        let by_bytes = SERVED_WINDOW_BYTES / (4 * k.max(1));
        Self {
            k,
            capacity: max_rows.min(by_bytes).max(1),
            data: Vec::new(),
            head: 0,
            len: 0,
            total: 0,
        }
    }

    /// Classes per row.
    pub fn classes(&self) -> usize {
        self.k
    }

    /// Rows the window holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows ever pushed (a version number for caches).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Adds a row of `k` probabilities (rows of another width are ignored: the caller resets
    /// the window when a model changes its classes).
    pub fn push(&mut self, p: &[f64]) {
        if p.len() != self.k {
            return;
        }
        if self.len < self.capacity {
            self.data.extend(p.iter().map(|&v| v as f32));
            self.len += 1;
        } else {
            let at = self.head * self.k;
            for (d, &v) in self.data[at..at + self.k].iter_mut().zip(p) {
                *d = v as f32;
            }
            self.head = (self.head + 1) % self.capacity;
        }
        self.total += 1;
    }

    /// The rows, flat (`len * k` values; order does not matter to the estimators).
    pub fn rows(&self) -> &[f32] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_rows_within_both_bounds() {
        let mut w = ServedWindow::new(2, 3);
        for i in 0..5 {
            let x = f64::from(i) / 10.0;
            w.push(&[x, 1.0 - x]);
        }
        w.push(&[1.0]); // wrong width: ignored
        assert_eq!((w.len(), w.total(), w.capacity()), (3, 5, 3));
        let mut firsts: Vec<f32> = w.rows().chunks_exact(2).map(|r| r[0]).collect();
        firsts.sort_by(f32::total_cmp);
        assert_eq!(firsts, [0.2, 0.3, 0.4]);
        // 1,000 classes: the byte budget wins over a large row limit.
        let big = ServedWindow::new(1_000, 1_000_000);
        assert_eq!(big.capacity(), SERVED_WINDOW_BYTES / 4_000);
        assert!(ServedWindow::new(0, 0).is_empty());
    }
}
