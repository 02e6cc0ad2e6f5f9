//! Small numeric kernels shared by the server, the calibrators and the trainer: stable softmax,
//! log-sum-exp and argmax. All in f64; callers convert model outputs once.

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

#[cfg(test)]
mod tests {
    use super::*;

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
