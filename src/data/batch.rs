//! The batch iterator: shuffles, augments (random crop with zero padding + horizontal flip) and
//! normalises images into f32 NCHW batches with i64 labels, on worker threads that run ahead of
//! the training step through bounded channels.
//!
//! Determinism: the epoch's permutation and every batch's augmentation draw from generators
//! seeded by `(seed, epoch, batch index)` only, and batches are delivered in index order, so the
//! stream is identical for any number of workers and any thread timing.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use ndarray::{Array1, Array4};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{DataError, Dataset};

/// Per-channel normalisation: `x = (pixel / 255 - mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Channel means of pixels scaled to [0, 1].
    pub mean: Vec<f32>,
    /// Channel standard deviations of pixels scaled to [0, 1].
    pub std: Vec<f32>,
}

impl Normalization {
    /// Scales to [0, 1] only (mean 0, std 1 for each of `channels`).
    pub fn identity(channels: usize) -> Self {
        Normalization {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// One 256-entry lookup table per channel (u8 -> normalised f32).
    fn tables(&self) -> Vec<[f32; 256]> {
        self.mean
            .iter()
            .zip(&self.std)
            .map(|(&m, &s)| std::array::from_fn(|v| (v as f32 / 255.0 - m) / s))
            .collect()
    }
}

/// Training-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augment {
    /// Zero padding on each side before a random crop back to the original size (0 = no crop).
    pub pad: usize,
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
}

impl Augment {
    /// The standard CIFAR recipe: pad 4, random 32x32 crop, random horizontal flip.
    pub const CIFAR: Augment = Augment { pad: 4, flip: true };
    /// No augmentation (evaluation, MNIST).
    pub const NONE: Augment = Augment {
        pad: 0,
        flip: false,
    };
}

/// How to cut a dataset into batches.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOptions {
    /// Images per batch (the last one may be smaller unless `drop_last`).
    pub batch_size: usize,
    /// Visit the images in a seeded random order (training) or in dataset order (evaluation).
    pub shuffle: bool,
    /// Drop a final partial batch (keeps batch statistics comparable during training).
    pub drop_last: bool,
    /// Augmentation applied to every image.
    pub augment: Augment,
    /// Normalisation applied after augmentation.
    pub normalization: Normalization,
    /// Base seed of the run.
    pub seed: u64,
    /// Epoch number: a new permutation and new augmentations per epoch.
    pub epoch: u64,
    /// Worker threads preparing batches (at least 1).
    pub workers: usize,
    /// Batches each worker may prepare ahead of the consumer (at least 1).
    pub prefetch: usize,
}

impl BatchOptions {
    /// Evaluation batches: dataset order, no augmentation, keep the last partial batch.
    pub fn eval(batch_size: usize, normalization: Normalization) -> Self {
        BatchOptions {
            batch_size,
            shuffle: false,
            drop_last: false,
            augment: Augment::NONE,
            normalization,
            seed: 0,
            epoch: 0,
            workers: 1,
            prefetch: 2,
        }
    }
}

/// One prepared batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Position of the batch in the epoch.
    pub index: usize,
    /// Normalised images `[n, C, H, W]`.
    pub images: Array4<f32>,
    /// Labels `[n]`.
    pub labels: Array1<i64>,
    /// The dataset indices of the images, in batch order.
    pub indices: Vec<usize>,
}

/// A generator for one purpose of one batch of one epoch; the tag keeps purposes apart.
fn rng_for(seed: u64, epoch: u64, batch: u64, tag: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (i, v) in [seed, epoch, batch, tag].into_iter().enumerate() {
        key[i * 8..(i + 1) * 8].copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}
const TAG_PERMUTATION: u64 = 1;
const TAG_AUGMENT: u64 = 2;

/// The order in which an epoch visits the images.
pub fn epoch_order(len: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        order.shuffle(&mut rng_for(seed, epoch, 0, TAG_PERMUTATION));
    }
    order
}

/// Builds batch `index` from the dataset images at `indices` (pure: same inputs, same batch).
pub fn make_batch(data: &Dataset, indices: &[usize], opts: &BatchOptions, index: usize) -> Batch {
    let shape = data.shape;
    let (c, h, w) = (shape.channels, shape.height, shape.width);
    let tables = opts.normalization.tables();
    let mut rng = rng_for(opts.seed, opts.epoch, index as u64, TAG_AUGMENT);
    let mut images = Array4::<f32>::zeros((indices.len(), c, h, w));
    // i64, not isize: rand's uniform sampling is portable for fixed-width integers only.
    let pad = opts.augment.pad as i64;
    for (slot, &i) in indices.iter().enumerate() {
        let src = data.image(i);
        let (dy, dx) = if pad > 0 {
            (
                (rng.random_range(0..=2 * pad) - pad) as isize,
                (rng.random_range(0..=2 * pad) - pad) as isize,
            )
        } else {
            (0, 0)
        };
        let flip = opts.augment.flip && rng.random_bool(0.5);
        let mut out = images.index_axis_mut(ndarray::Axis(0), slot);
        for ch in 0..c {
            let table = &tables[ch];
            let zero = table[0];
            let plane = &src[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                let sy = y as isize + dy;
                for x in 0..w {
                    // Crop then flip (torchvision order): output x reads cropped column W-1-x.
                    let cx = if flip { w - 1 - x } else { x };
                    let sx = cx as isize + dx;
                    let inside = sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize;
                    out[[ch, y, x]] = if inside {
                        table[plane[sy as usize * w + sx as usize] as usize]
                    } else {
                        zero
                    };
                }
            }
        }
    }
    let labels = indices.iter().map(|&i| data.labels[i] as i64).collect();
    Batch {
        index,
        images,
        labels,
        indices: indices.to_vec(),
    }
}

/// An iterator over one epoch's batches, prepared by worker threads. Dropping it stops them.
pub struct BatchIter {
    receivers: Vec<Receiver<Batch>>,
    workers: Vec<JoinHandle<()>>,
    next: usize,
    total: usize,
}

impl BatchIter {
    /// Starts the workers for one epoch over `data`.
    pub fn new(data: Arc<Dataset>, opts: BatchOptions) -> Result<Self, DataError> {
        if opts.batch_size == 0 {
            return Err(DataError::InvalidOption(
                "batch size must be at least 1".into(),
            ));
        }
        let c = data.shape.channels;
        let norm = &opts.normalization;
        if norm.mean.len() != c || norm.std.len() != c {
            return Err(DataError::InvalidOption(format!(
                "normalisation has {} means and {} stds for {c}-channel images",
                norm.mean.len(),
                norm.std.len()
            )));
        }
        if norm.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(DataError::InvalidOption(
                "normalisation stds must be positive".into(),
            ));
        }
        let order = Arc::new(epoch_order(data.len(), opts.shuffle, opts.seed, opts.epoch));
        let total = if opts.drop_last {
            data.len() / opts.batch_size
        } else {
            data.len().div_ceil(opts.batch_size)
        };
        let n_workers = opts.workers.max(1).min(total.max(1));
        let opts = Arc::new(opts);
        let mut receivers = Vec::with_capacity(n_workers);
        let mut workers = Vec::with_capacity(n_workers);
        for k in 0..n_workers {
            let (tx, rx): (SyncSender<Batch>, _) = sync_channel(opts.prefetch.max(1));
            let (data, order, opts) = (Arc::clone(&data), Arc::clone(&order), Arc::clone(&opts));
            receivers.push(rx);
            workers.push(std::thread::spawn(move || {
                // Worker k prepares batches k, k + W, k + 2W, ...; the consumer reads them back in
                // index order, so the stream does not depend on which worker is faster.
                for b in (k..total).step_by(n_workers) {
                    let lo = b * opts.batch_size;
                    let hi = (lo + opts.batch_size).min(order.len());
                    if tx
                        .send(make_batch(&data, &order[lo..hi], &opts, b))
                        .is_err()
                    {
                        return; // the iterator was dropped
                    }
                }
            }));
        }
        Ok(BatchIter {
            receivers,
            workers,
            next: 0,
            total,
        })
    }
}

impl Iterator for BatchIter {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.total {
            return None;
        }
        let rx = &self.receivers[self.next % self.receivers.len()];
        // A worker only stops early if it panicked; surface that instead of truncating the epoch.
        let batch = rx.recv().expect("batch worker thread died");
        self.next += 1;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for BatchIter {}

impl Drop for BatchIter {
    fn drop(&mut self) {
        // Closing the channels makes every blocked `send` fail, so the joins cannot hang.
        self.receivers.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ImageShape, numbered_classes};
    use super::*;
    use std::path::Path;

    fn ramp(n: usize) -> Arc<Dataset> {
        let shape = ImageShape {
            channels: 1,
            height: 3,
            width: 3,
        };
        let images = (0..n * 9).map(|v| (v % 9 + 1) as u8 * 10).collect();
        let labels = (0..n).map(|i| i % 3).collect();
        Arc::new(
            Dataset::new(
                Path::new("ramp"),
                shape,
                images,
                labels,
                numbered_classes(3),
            )
            .unwrap(),
        )
    }

    fn opts(workers: usize) -> BatchOptions {
        BatchOptions {
            batch_size: 4,
            shuffle: true,
            drop_last: false,
            augment: Augment { pad: 1, flip: true },
            normalization: Normalization::identity(1),
            seed: 9,
            epoch: 3,
            workers,
            prefetch: 1,
        }
    }

    #[test]
    fn eval_batches_are_exact_normalised_pixels_in_order() {
        let d = ramp(5);
        let norm = Normalization {
            mean: vec![0.5],
            std: vec![0.25],
        };
        let batches: Vec<Batch> = BatchIter::new(d, BatchOptions::eval(2, norm))
            .unwrap()
            .collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[2].images.shape(), &[1, 1, 3, 3]);
        assert_eq!(batches[1].labels.to_vec(), vec![2, 0]);
        // pixel 10 -> (10/255 - 0.5) / 0.25
        let want = (10.0 / 255.0 - 0.5) / 0.25;
        assert!((batches[0].images[[0, 0, 0, 0]] - want).abs() < 1e-6);
    }

    #[test]
    fn crop_and_flip_move_pixels_as_specified() {
        let d = ramp(1);
        let o = BatchOptions {
            augment: Augment { pad: 1, flip: true },
            ..BatchOptions::eval(1, Normalization::identity(1))
        };
        // Find the draws this batch made, then check the output against them.
        let mut rng = rng_for(0, 0, 0, TAG_AUGMENT);
        let dy = (rng.random_range(0..=2i64) - 1) as isize;
        let dx = (rng.random_range(0..=2i64) - 1) as isize;
        let flip = rng.random_bool(0.5);
        let b = make_batch(&d, &[0], &o, 0);
        for y in 0..3isize {
            for x in 0..3isize {
                let cx = if flip { 2 - x } else { x };
                let (sy, sx) = (y + dy, cx + dx);
                let want = if (0..3).contains(&sy) && (0..3).contains(&sx) {
                    ((sy * 3 + sx + 1) * 10) as f32 / 255.0
                } else {
                    0.0
                };
                assert_eq!(b.images[[0, 0, y as usize, x as usize]], want);
            }
        }
    }

    #[test]
    fn stream_is_identical_for_any_worker_count_and_changes_with_epoch() {
        let d = ramp(23);
        let one: Vec<Batch> = BatchIter::new(Arc::clone(&d), opts(1)).unwrap().collect();
        let three: Vec<Batch> = BatchIter::new(Arc::clone(&d), opts(3)).unwrap().collect();
        assert_eq!(one, three);
        assert_eq!(one.len(), 6);
        let mut seen: Vec<usize> = one.iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..23).collect::<Vec<_>>(),
            "each image once per epoch"
        );
        let other = BatchIter::new(
            Arc::clone(&d),
            BatchOptions {
                epoch: 4,
                ..opts(2)
            },
        )
        .unwrap()
        .next()
        .unwrap();
        assert_ne!(other.indices, one[0].indices);
        let dropped = BatchIter::new(
            d,
            BatchOptions {
                drop_last: true,
                ..opts(2)
            },
        )
        .unwrap();
        assert_eq!(dropped.len(), 5);
    }

    #[test]
    fn early_drop_stops_workers_and_bad_options_are_errors() {
        let d = ramp(100);
        let mut it = BatchIter::new(Arc::clone(&d), opts(2)).unwrap();
        assert!(it.next().is_some());
        drop(it); // must not hang with workers blocked on full channels
        assert!(
            BatchIter::new(
                Arc::clone(&d),
                BatchOptions {
                    batch_size: 0,
                    ..opts(1)
                }
            )
            .is_err()
        );
        let bad = BatchOptions {
            normalization: Normalization::identity(3),
            ..opts(1)
        };
        assert!(BatchIter::new(d, bad).is_err());
    }
}
