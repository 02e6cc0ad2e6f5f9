//! Ranking metrics of two score samples, `positive` against `negative` (a higher score should
//! mean positive): AUROC (the Mann-Whitney statistic) and average precision. Shared by the
//! confidence-as-error-detector AUROC of [`super::MetricReport`] and the OOD evaluation.
//!
//! Both count whole samples and halves until one final division, so a ranking computed twice in
//! another order gives the same bits.

/// Scores tagged with their class, sorted by score, grouped into runs of equal scores; each
/// group gives (positives, negatives) in ascending score order.
fn tie_groups(positive: &[f64], negative: &[f64]) -> Vec<(usize, usize)> {
    let mut all: Vec<(f64, bool)> = positive
        .iter()
        .map(|&s| (s, true))
        .chain(negative.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut groups = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        let (mut p, mut q) = (0, 0);
        while j < all.len() && all[j].0 == all[i].0 {
            if all[j].1 {
                p += 1
            } else {
                q += 1
            }
            j += 1;
        }
        groups.push((p, q));
        i = j;
    }
    groups
}

/// AUROC of telling `positive` from `negative` by the score: P(s_pos > s_neg) + P(s_pos =
/// s_neg) / 2 (the Mann-Whitney statistic; ties count one half). `None` when either side is
/// empty, where it is undefined.
pub fn auroc(positive: &[f64], negative: &[f64]) -> Option<f64> {
    if positive.is_empty() || negative.is_empty() {
        return None;
    }
    let mut negative_below = 0usize;
    let mut wins = 0.0;
    for (p, n) in tie_groups(positive, negative) {
        wins += p as f64 * (negative_below as f64 + 0.5 * n as f64);
        negative_below += n;
    }
    Some(wins / (positive.len() as f64 * negative.len() as f64))
}

/// Average precision of `positive` against `negative` scores, with tied scores forming one
/// threshold: AP = sum over distinct thresholds of precision x recall gain (scikit-learn's
/// `average_precision_score`, no interpolation). `None` without positives.
pub fn average_precision(positive: &[f64], negative: &[f64]) -> Option<f64> {
    if positive.is_empty() {
        return None;
    }
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut sum = 0.0;
    for (p, n) in tie_groups(positive, negative).into_iter().rev() {
        tp += p;
        fp += n;
        sum += (tp as f64 / (tp + fp) as f64) * p as f64;
    }
    // One division at the end: a perfect ranking gives exactly 1, never 1 + rounding.
    Some(sum / positive.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_ties_half_and_is_undefined_on_one_side() {
        assert_eq!(auroc(&[0.35, 0.8], &[0.1, 0.4]), Some(0.75));
        assert_eq!(auroc(&[1.0], &[1.0, 1.0]), Some(0.5));
        assert_eq!(auroc(&[], &[1.0]), None);
        assert_eq!(auroc(&[1.0], &[]), None);
    }

    #[test]
    fn average_precision_matches_scikit_learn() {
        // average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.8333...
        let ap = average_precision(&[0.35, 0.8], &[0.1, 0.4]).unwrap();
        assert!((ap - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(average_precision(&[], &[1.0]), None);
    }
}
