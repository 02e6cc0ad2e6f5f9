//! A bounded store of the raw logits of recent predictions, keyed by the nonce of their
//! `prediction_id` (issue 22, section 2).
//!
//! Refitting a calibrator needs each labelled prediction's logits, which the signed token cannot
//! carry for large models (it embeds probabilities only up to 16 classes, and calibrated ones at
//! that). The server therefore keeps the logits of the last `capacity` predictions of each model
//! in memory, filled at predict time and looked up when the label arrives. A label whose logits
//! were evicted (more than `capacity` predictions of its model came after it, or the process
//! restarted) is still scored by the live monitor; it is only "not usable for refit" (counted).
//!
//! Memory bound per model: `capacity x classes x 4` bytes of logits (f32), plus about 40 bytes of
//! bookkeeping per entry. The store is per process, like the live window: replicas each keep
//! their own.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, PoisonError};

/// One model's ring: nonces in arrival order (including those already taken) and the logits
/// not yet taken.
#[derive(Debug, Default)]
struct Ring {
    order: VecDeque<u64>,
    rows: HashMap<u64, Vec<f32>, NonceHash>,
}

/// Hashes a nonce to itself. Nonces are uniformly random (drawn by the server for each token,
/// and a label's nonce is looked up only after its token's signature was checked), so the
/// protection of the default SipHash against chosen keys buys nothing here, and its rounds ran
/// twice on every served prediction (an eviction and an insertion in a table of 10,000).
#[derive(Debug, Default, Clone, Copy)]
struct NonceHash;

impl BuildHasher for NonceHash {
    type Hasher = NonceHasher;

    fn build_hasher(&self) -> NonceHasher {
        NonceHasher(0)
    }
}

/// The hasher of [`NonceHash`].
struct NonceHasher(u64);

impl Hasher for NonceHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; any other input still hashes, byte by byte.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

/// The logits of the last `capacity` predictions of each model.
#[derive(Debug)]
pub struct LogitStore {
    capacity: usize,
    /// Model key (name and model sha256) -> ring. Its own lock, never held with the monitor's.
    rings: Mutex<HashMap<String, Ring>>,
}

impl LogitStore {
    /// A store that keeps `capacity` predictions per model (0 keeps nothing).
    pub fn new(capacity: usize) -> Self {
        LogitStore {
            capacity,
            rings: Mutex::new(HashMap::new()),
        }
    }

    /// Predictions kept per model.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Most bytes of logits kept for a model of `classes` classes.
    pub fn memory_bound_bytes(&self, classes: usize) -> usize {
        self.capacity.saturating_mul(classes).saturating_mul(4)
    }

    /// Remembers the logits of a prediction, evicting the oldest of the model's ring when full.
    pub fn insert(&self, key: &str, nonce: u64, logits: &[f32]) {
        if self.capacity == 0 {
            return;
        }
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        let ring = super::model_entry(&mut rings, key, Ring::default);
        // The evicted row's buffer holds the new row (same model, same width): no allocation
        // and no free per prediction once the ring is full.
        let mut row = Vec::new();
        while ring.order.len() >= self.capacity {
            if let Some(old) = ring.order.pop_front()
                && let Some(evicted) = ring.rows.remove(&old)
            {
                row = evicted;
            }
        }
        row.clear();
        row.extend_from_slice(logits);
        ring.order.push_back(nonce);
        ring.rows.insert(nonce, row);
    }

    /// Takes the logits of a labelled prediction out of the store (a label is used once), or
    /// None when they were evicted or never stored.
    pub fn take(&self, key: &str, nonce: u64) -> Option<Vec<f32>> {
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        rings.get_mut(key)?.rows.remove(&nonce)
    }

    /// Logit rows currently held for `key` (not yet labelled, not evicted).
    pub fn held(&self, key: &str) -> usize {
        let rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        rings.get(key).map_or(0, |r| r.rows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_n_predictions_per_model_and_each_row_once() {
        let s = LogitStore::new(3);
        for n in 0..5u64 {
            s.insert("a", n, &[n as f32, 0.0]);
        }
        s.insert("b", 0, &[9.0]);
        // 0 and 1 were evicted by 3 and 4; model b has its own ring.
        assert_eq!(s.take("a", 0), None);
        assert_eq!(s.take("a", 1), None);
        assert_eq!(s.take("a", 2), Some(vec![2.0, 0.0]));
        assert_eq!(s.take("a", 2), None, "a label takes its row once");
        assert_eq!(s.held("a"), 2);
        assert_eq!(s.take("b", 0), Some(vec![9.0]));
        // Taken rows still hold their place in the ring: inserting 5 drops the slot of 2 (taken
        // already), so 3 survives; 6 and 7 then evict 3 and 4.
        s.insert("a", 5, &[5.0, 0.0]);
        assert_eq!(s.take("a", 3), Some(vec![3.0, 0.0]));
        s.insert("a", 6, &[6.0, 0.0]);
        s.insert("a", 7, &[7.0, 0.0]);
        assert_eq!(s.take("a", 4), None);
        assert_eq!(s.held("a"), 3);
        assert_eq!(s.memory_bound_bytes(1000), 12_000);
        let off = LogitStore::new(0);
        off.insert("a", 1, &[1.0]);
        assert_eq!(off.take("a", 1), None);
    }
}
