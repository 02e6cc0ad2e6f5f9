//! Small numeric kernels shared by the server, the calibrators and the trainer: stable softmax,
//! log-sum-exp, argmax and the top k. All in f64; callers convert model outputs once.

/// Error for rows that contain NaN or infinite values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("non-finite value {value} at index {index}")]
pub struct NonFinite {
    /// Position of the first offending value in the row.
    pub index: usize,
    /// The offending value.
    pub value: f64,
}

/// Checks that every value is finite (NaN and +-inf logits must never become probabilities).
pub fn check_finite(row: &[f64]) -> Result<(), NonFinite> {
    match row.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(NonFinite {
            index,
            value: row[index],
        }),
        None => Ok(()),
    }
}

/// log(sum(exp(v))) computed around the maximum so that large logits do not overflow.
/// Returns -inf for an empty row.
pub fn log_sum_exp(v: &[f64]) -> f64 {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// Replaces logits by softmax probabilities in place (stable: subtracts the maximum first).
pub fn softmax_in_place(v: &mut [f64]) {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - m).exp();
        sum += *x;
    }
    for x in v.iter_mut() {
        *x /= sum;
    }
}

/// Softmax of `logits / temperature` as a new vector.
pub fn softmax_with_temperature(logits: &[f64], temperature: f64) -> Vec<f64> {
    let mut v: Vec<f64> = logits.iter().map(|z| z / temperature).collect();
    softmax_in_place(&mut v);
    v
}

/// Index of the largest value (first one on ties), comparing with `total_cmp`.
/// Returns 0 for an empty slice.
pub fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map_or(0, |(i, _)| i)
}

/// Indices of the `k` largest values, largest first, ties to the lower index (`total_cmp`): the
/// first `k` of the whole order, without sorting the whole row. A 1,000-class answer lists 5
/// classes (or none: V2 answers carry no top-k), and sorting all 1,000 took 18 of its 42 us
/// (docs/BENCHMARKS.md, session 17); the order is strict, so the selection is the same as a full
/// sort's, bit for bit.
pub fn top_indices(v: &[f64], k: usize) -> Vec<usize> {
    let by_value = |&a: &usize, &b: &usize| v[b].total_cmp(&v[a]).then(a.cmp(&b));
    let mut order: Vec<usize> = (0..v.len()).collect();
    if k < order.len() {
        if k == 0 {
            return Vec::new();
        }
        order.select_nth_unstable_by(k - 1, by_value);
        order.truncate(k);
    }
    order.sort_unstable_by(by_value);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_indices_are_the_head_of_the_full_order() {
        // Ties, a NaN and signed zeros: the head must still be the full sort's, for every k.
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        for n in [0usize, 1, 2, 7, 10, 100, 1000] {
            let v: Vec<f64> = (0..n)
                .map(|i| {
                    rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    match i % 17 {
                        0 => f64::NAN,
                        1 => -0.0,
                        2 => 0.0,
                        _ => ((rng >> 40) % 13) as f64 / 13.0,
                    }
                })
                .collect();
            let mut full: Vec<usize> = (0..n).collect();
            full.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
            for k in [0, 1, 2, 5, n / 2, n, n + 3] {
                assert_eq!(top_indices(&v, k), full[..k.min(n)], "n = {n}, k = {k}");
            }
        }
    }

    #[test]
    fn softmax_is_stable_for_huge_logits() {
        let p = softmax_with_temperature(&[1000.0, 1000.0, -1000.0], 1.0);
        assert!((p[0] - 0.5).abs() < 1e-12 && (p[1] - 0.5).abs() < 1e-12 && p[2] == 0.0);
    }

    #[test]
    fn softmax_matches_hand_computation() {
        // softmax([0, ln 3]) = [1/4, 3/4]
        let p = softmax_with_temperature(&[0.0, 3f64.ln()], 1.0);
        assert!((p[0] - 0.25).abs() < 1e-15 && (p[1] - 0.75).abs() < 1e-15);
        let p2 = softmax_with_temperature(&[0.0, 2.0 * 3f64.ln()], 2.0);
        assert!((p2[1] - 0.75).abs() < 1e-15);
    }

    #[test]
    fn log_sum_exp_matches_naive_and_survives_overflow() {
        let v = [0.5, -1.0, 2.0];
        let naive = v.iter().map(|x: &f64| x.exp()).sum::<f64>().ln();
        assert!((log_sum_exp(&v) - naive).abs() < 1e-12);
        assert!((log_sum_exp(&[800.0, 800.0]) - (800.0 + 2f64.ln())).abs() < 1e-9);
    }

    #[test]
    fn argmax_takes_first_on_ties_and_rejects_nothing() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(argmax(&[-1.0]), 0);
    }

    #[test]
    fn check_finite_names_the_bad_value() {
        assert!(check_finite(&[1.0, 2.0]).is_ok());
        let e = check_finite(&[1.0, f64::NAN]).unwrap_err();
        assert_eq!(e.index, 1);
        assert!(check_finite(&[f64::INFINITY]).is_err());
    }
}
