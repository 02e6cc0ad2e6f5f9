//! Seeded index selections over labels: the stratified train/validation split, long-tailed
//! subsampling and stratified subsets. Every function returns sorted indices into the labels it
//! was given and depends only on its arguments (ChaCha8 seeded from `seed`), never on timing.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::DataError;

/// Number of labels equal to each class `0..classes` (labels `>= classes` are not counted).
pub fn class_counts(labels: &[usize], classes: usize) -> Vec<usize> {
    let mut c = vec![0; classes];
    for &l in labels {
        if let Some(n) = c.get_mut(l) {
            *n += 1;
        }
    }
    c
}

/// Indices of each class, shuffled with one generator in class order (so the result depends on
/// the seed only).
fn shuffled_by_class(labels: &[usize], classes: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut by_class = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        if let Some(v) = by_class.get_mut(l) {
            v.push(i);
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for v in &mut by_class {
        v.shuffle(&mut rng);
    }
    by_class
}

fn check_fraction(name: &str, f: f64, allow_zero: bool, allow_one: bool) -> Result<(), DataError> {
    let lo_ok = if allow_zero { f >= 0.0 } else { f > 0.0 };
    let hi_ok = if allow_one { f <= 1.0 } else { f < 1.0 };
    if f.is_finite() && lo_ok && hi_ok {
        Ok(())
    } else {
        Err(DataError::InvalidOption(format!(
            "{name} must be in {}0, 1{}, got {f}",
            if allow_zero { "[" } else { "(" },
            if allow_one { "]" } else { ")" },
        )))
    }
}

/// Splits into (train, validation) indices, stratified: each class gives
/// `round(n_k * val_fraction)` of its images to validation. `val_fraction` in [0, 1).
pub fn stratified_split(
    labels: &[usize],
    classes: usize,
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    check_fraction("val_fraction", val_fraction, true, false)?;
    let by_class = shuffled_by_class(labels, classes, seed);
    Ok(carve(by_class, |n| {
        (n as f64 * val_fraction).round() as usize
    }))
}

/// The first `n_val(n_k)` shuffled indices of each class to validation, the rest to training,
/// both sorted.
fn carve(by_class: Vec<Vec<usize>>, n_val: impl Fn(usize) -> usize) -> (Vec<usize>, Vec<usize>) {
    let mut train = Vec::new();
    let mut val = Vec::new();
    for idx in by_class {
        let n = n_val(idx.len()).min(idx.len());
        val.extend_from_slice(&idx[..n]);
        train.extend_from_slice(&idx[n..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// Splits into (train, validation) indices with the same number `m` of every class in
/// validation: `m = round(n_min * val_fraction)`, `n_min` the smallest non-empty class, so that a
/// long-tailed set gets a class-balanced validation split (issue 18: its test split is
/// balanced). The rarest class bounds the split: at Fashion-MNIST-LT ratio 100 (60 images in
/// the rarest class) and `val_fraction` 0.2 it holds 12 images of each class, 120 in all. An
/// error when `m` would be 0 (nothing to validate on) or leave the rarest class no training
/// image. Empty classes give nothing.
pub fn balanced_split(
    labels: &[usize],
    classes: usize,
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    check_fraction("val_fraction", val_fraction, true, false)?;
    let by_class = shuffled_by_class(labels, classes, seed);
    let n_min = by_class
        .iter()
        .map(Vec::len)
        .filter(|&n| n > 0)
        .min()
        .unwrap_or(0);
    let m = (n_min as f64 * val_fraction).round() as usize;
    if m == 0 || m >= n_min {
        return Err(DataError::InvalidOption(format!(
            "a balanced validation split of {val_fraction} of the rarest class ({n_min} images) \
             holds out {m} per class, {}: raise or lower the validation fraction, or use the \
             stratified split",
            if m == 0 {
                "none"
            } else {
                "leaving that class no training image"
            }
        )));
    }
    Ok(carve(by_class, |_| m))
}

/// Per-class counts of a long-tailed subsample: `n_k = floor(n_max * rho^(-k/(K-1)))` for classes
/// in label order, capped by what the class has (the CIFAR-10-LT construction of Cao et al. 2019).
pub fn long_tail_counts(available: &[usize], rho: f64) -> Result<Vec<usize>, DataError> {
    if !(rho.is_finite() && rho >= 1.0) {
        return Err(DataError::InvalidOption(format!(
            "imbalance ratio must be >= 1, got {rho}"
        )));
    }
    let k = available.len();
    let n_max = available.iter().copied().max().unwrap_or(0) as f64;
    Ok(available
        .iter()
        .enumerate()
        .map(|(i, &have)| {
            let exponent = if k > 1 {
                -(i as f64) / (k - 1) as f64
            } else {
                0.0
            };
            // The small epsilon keeps exact products (e.g. 5000 * 0.01 = 50) from flooring to 49.
            let want = (n_max * rho.powf(exponent) + 1e-9).floor() as usize;
            want.min(have)
        })
        .collect())
}

/// Indices of a seeded long-tailed subsample with imbalance ratio `rho` (see
/// [`long_tail_counts`]).
pub fn long_tail_indices(
    labels: &[usize],
    classes: usize,
    rho: f64,
    seed: u64,
) -> Result<Vec<usize>, DataError> {
    let counts = long_tail_counts(&class_counts(labels, classes), rho)?;
    let mut out: Vec<usize> = shuffled_by_class(labels, classes, seed)
        .into_iter()
        .zip(counts)
        .flat_map(|(idx, n)| idx.into_iter().take(n))
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// Indices of a stratified subset keeping `round(n_k * fraction)` images of each class (at least
/// one of every non-empty class). `fraction` in (0, 1].
pub fn stratified_fraction(
    labels: &[usize],
    classes: usize,
    fraction: f64,
    seed: u64,
) -> Result<Vec<usize>, DataError> {
    check_fraction("train_fraction", fraction, false, true)?;
    let mut out: Vec<usize> = shuffled_by_class(labels, classes, seed)
        .into_iter()
        .flat_map(|idx| {
            let n = ((idx.len() as f64 * fraction).round() as usize)
                .max(1)
                .min(idx.len());
            idx.into_iter().take(n)
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// The trainer's split of a training set (`caliper-train --val-fraction --train-fraction
/// --imbalance-ratio --seed`), shared with the dataset spec selector `[val=..]` / `[fit=..]` so
/// that `caliper calibrate` sees exactly the images the trainer held out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainValSplit {
    /// Fraction of each class held out for validation, in [0, 1).
    pub val_fraction: f64,
    /// Fraction of each class of the rest kept for training, in (0, 1].
    pub train_fraction: f64,
    /// Long-tail imbalance ratio applied first (1 = unchanged).
    pub imbalance_ratio: f64,
    /// Seed of every selection.
    pub seed: u64,
    /// Validation takes the same number of every class ([`balanced_split`]) instead of
    /// `val_fraction` of each (`--val-balanced`, selector key `val_balanced=1`).
    pub balanced: bool,
    /// `train_fraction` subsamples before validation is carved, so validation scales with the
    /// fraction (`--val-after-fraction`, selector key `val_after_fraction=1`).
    pub val_after_fraction: bool,
}

impl TrainValSplit {
    /// (training, validation) indices into `labels`, both sorted: first the long-tailed
    /// subsample (seed + 2) when the ratio is above 1, then the validation split (seed;
    /// stratified, so as imbalanced as training, or balanced), then the stratified training
    /// fraction (seed + 1) of the rest. With `val_after_fraction` the fraction is taken before
    /// the validation split instead, out of the whole (long-tailed) set, so that validation is
    /// `val_fraction` of the images a data-limited run has, not of the full split.
    pub fn indices(
        &self,
        labels: &[usize],
        classes: usize,
    ) -> Result<(Vec<usize>, Vec<usize>), DataError> {
        let mut base: Vec<usize> = if self.imbalance_ratio > 1.0 {
            long_tail_indices(
                labels,
                classes,
                self.imbalance_ratio,
                self.seed.wrapping_add(2),
            )?
        } else {
            (0..labels.len()).collect()
        };
        let fraction_first = self.val_after_fraction && self.train_fraction < 1.0;
        if fraction_first {
            let bl: Vec<usize> = base.iter().map(|&i| labels[i]).collect();
            let keep =
                stratified_fraction(&bl, classes, self.train_fraction, self.seed.wrapping_add(1))?;
            base = keep.iter().map(|&i| base[i]).collect();
        }
        let sub: Vec<usize> = base.iter().map(|&i| labels[i]).collect();
        let (mut tr, va) = if self.balanced {
            balanced_split(&sub, classes, self.val_fraction, self.seed)?
        } else {
            stratified_split(&sub, classes, self.val_fraction, self.seed)?
        };
        if self.train_fraction < 1.0 && !fraction_first {
            let tl: Vec<usize> = tr.iter().map(|&i| sub[i]).collect();
            let keep =
                stratified_fraction(&tl, classes, self.train_fraction, self.seed.wrapping_add(1))?;
            tr = keep.iter().map(|&i| tr[i]).collect();
        }
        // `base` is sorted, so mapping back keeps both lists sorted.
        Ok((
            tr.iter().map(|&i| base[i]).collect(),
            va.iter().map(|&i| base[i]).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(per_class: &[usize]) -> Vec<usize> {
        // interleaved so that class membership is not contiguous
        let mut v = Vec::new();
        let max = per_class.iter().copied().max().unwrap_or(0);
        for i in 0..max {
            for (k, &n) in per_class.iter().enumerate() {
                if i < n {
                    v.push(k);
                }
            }
        }
        v
    }

    #[test]
    fn split_is_disjoint_complete_stratified_and_seeded() {
        let l = labels(&[100, 50, 7]);
        let (tr, va) = stratified_split(&l, 3, 0.1, 42).unwrap();
        let mut all: Vec<usize> = tr.iter().chain(&va).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..l.len()).collect::<Vec<_>>());
        let vl: Vec<usize> = va.iter().map(|&i| l[i]).collect();
        assert_eq!(class_counts(&vl, 3), vec![10, 5, 1]);
        assert_eq!(stratified_split(&l, 3, 0.1, 42).unwrap().1, va);
        assert_ne!(stratified_split(&l, 3, 0.1, 43).unwrap().1, va);
        assert!(stratified_split(&l, 3, 1.0, 1).is_err());
        assert!(stratified_split(&l, 3, f64::NAN, 1).is_err());
        assert_eq!(
            stratified_split(&l, 3, 0.0, 1).unwrap().1,
            Vec::<usize>::new()
        );
    }

    /// The trainer's split with seed 3 and the original options (stratified, fraction last).
    fn trainer_split(
        val_fraction: f64,
        train_fraction: f64,
        imbalance_ratio: f64,
    ) -> TrainValSplit {
        TrainValSplit {
            val_fraction,
            train_fraction,
            imbalance_ratio,
            seed: 3,
            balanced: false,
            val_after_fraction: false,
        }
    }

    /// Class counts of the labels at `idx`.
    fn counts_at(l: &[usize], idx: &[usize], classes: usize) -> Vec<usize> {
        class_counts(&idx.iter().map(|&i| l[i]).collect::<Vec<_>>(), classes)
    }

    #[test]
    fn trainer_split_composes_long_tail_validation_and_fraction() {
        let l = labels(&[1000, 1000, 1000]);
        let plain = trainer_split(0.1, 1.0, 1.0);
        assert_eq!(
            plain.indices(&l, 3).unwrap(),
            stratified_split(&l, 3, 0.1, 3).unwrap()
        );
        let s = TrainValSplit {
            train_fraction: 0.5,
            imbalance_ratio: 10.0,
            ..plain
        };
        let (tr, va) = s.indices(&l, 3).unwrap();
        let count = |idx: &[usize]| class_counts(&idx.iter().map(|&i| l[i]).collect::<Vec<_>>(), 3);
        // Long tail 1000 / 316 / 100, a tenth of each to validation, half of the rest kept.
        assert_eq!(count(&va), vec![100, 32, 10]);
        assert_eq!(count(&tr), vec![450, 142, 45]);
        assert!(tr.windows(2).all(|w| w[0] < w[1]) && va.windows(2).all(|w| w[0] < w[1]));
        assert!(tr.iter().all(|i| !va.contains(i)));
        // Every index points into the long-tailed subsample the trainer takes.
        let lt = long_tail_indices(&l, 3, 10.0, 5).unwrap();
        assert!(tr.iter().chain(&va).all(|i| lt.binary_search(i).is_ok()));
        assert_eq!(s.indices(&l, 3).unwrap(), (tr, va));
    }

    #[test]
    fn long_tail_counts_match_cifar10_lt() {
        // CIFAR-10-LT at rho = 100 (Cao et al. 2019, int(5000 * 0.01^(k/9))).
        let c = long_tail_counts(&[5000; 10], 100.0).unwrap();
        assert_eq!(c, vec![5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]);
        assert_eq!(long_tail_counts(&[10, 4], 1.0).unwrap(), vec![10, 4]);
        assert!(long_tail_counts(&[10], 0.5).is_err());
    }

    #[test]
    fn long_tail_and_fraction_subsets_have_the_right_class_counts() {
        let l = labels(&[1000, 1000, 1000]);
        let lt = long_tail_indices(&l, 3, 10.0, 7).unwrap();
        let lt_labels: Vec<usize> = lt.iter().map(|&i| l[i]).collect();
        // 1000 * 10^(-1/2) = 316.2
        assert_eq!(class_counts(&lt_labels, 3), vec![1000, 316, 100]);
        assert!(lt.windows(2).all(|w| w[0] < w[1]));

        let l = labels(&[100, 31, 1]);
        let sub = stratified_fraction(&l, 3, 0.1, 7).unwrap();
        let sl: Vec<usize> = sub.iter().map(|&i| l[i]).collect();
        assert_eq!(class_counts(&sl, 3), vec![10, 3, 1]);
        assert_eq!(stratified_fraction(&l, 3, 0.1, 7).unwrap(), sub);
        assert_eq!(stratified_fraction(&l, 3, 1.0, 7).unwrap().len(), l.len());
        assert!(stratified_fraction(&l, 3, 0.0, 7).is_err());
    }

    #[test]
    fn balanced_validation_takes_the_same_number_of_every_class() {
        let l = labels(&[1000, 316, 100]);
        let (tr, va) = balanced_split(&l, 3, 0.2, 5).unwrap();
        // 20% of the rarest class (100) from each: 20 / 20 / 20.
        assert_eq!(counts_at(&l, &va, 3), vec![20, 20, 20]);
        assert_eq!(counts_at(&l, &tr, 3), vec![980, 296, 80]);
        let mut all: Vec<usize> = tr.iter().chain(&va).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..l.len()).collect::<Vec<_>>());
        assert_eq!(balanced_split(&l, 3, 0.2, 5).unwrap().1, va);
        // An empty class is skipped; the rarest non-empty one sets the count.
        let (_, va) = balanced_split(&labels(&[50, 0, 10]), 3, 0.3, 1).unwrap();
        assert_eq!(va.len(), 6);
        // A tiny rarest class: nothing to hold out, or nothing left to train on.
        for (counts, f) in [(&[100, 4][..], 0.1), (&[100, 2], 0.8)] {
            let e = balanced_split(&labels(counts), 2, f, 0)
                .unwrap_err()
                .to_string();
            assert!(e.contains("rarest class"), "{e}");
        }
        // Through the trainer's split: long tail 1000 / 316 / 100, then 10 of each.
        let s = TrainValSplit {
            balanced: true,
            ..trainer_split(0.1, 1.0, 10.0)
        };
        let l = labels(&[1000, 1000, 1000]);
        let (tr, va) = s.indices(&l, 3).unwrap();
        assert_eq!(
            (counts_at(&l, &va, 3), counts_at(&l, &tr, 3)),
            (vec![10, 10, 10], vec![990, 306, 90])
        );
    }

    #[test]
    fn validation_after_the_fraction_scales_with_it() {
        let l = labels(&[1000, 1000, 1000]);
        let s = trainer_split(0.1, 0.1, 1.0);
        let count = |idx: &[usize]| counts_at(&l, idx, 3);
        // Before: validation is 10% of the full split, training 10% of the rest.
        let (tr, va) = s.indices(&l, 3).unwrap();
        assert_eq!((count(&tr), count(&va)), (vec![90; 3], vec![100; 3]));
        // After: 10% of the split is the run's data, a tenth of it validation.
        let after = TrainValSplit {
            val_after_fraction: true,
            ..s
        };
        let (tr2, va2) = after.indices(&l, 3).unwrap();
        assert_eq!((count(&tr2), count(&va2)), (vec![90; 3], vec![10; 3]));
        assert!(tr2.iter().all(|i| !va2.contains(i)));
        // Both come out of the same seeded fraction of the split.
        let pool = stratified_fraction(&l, 3, 0.1, 4).unwrap();
        assert!(
            tr2.iter()
                .chain(&va2)
                .all(|i| pool.binary_search(i).is_ok())
        );
        // Without a fraction the flag changes nothing.
        let whole = TrainValSplit {
            train_fraction: 1.0,
            ..after
        };
        assert_eq!(
            whole.indices(&l, 3).unwrap(),
            stratified_split(&l, 3, 0.1, 3).unwrap()
        );
    }
}
