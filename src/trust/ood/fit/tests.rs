//! Hand-computed cases and brute-force references for the detectors and the OOD metrics.

use super::*;
use ndarray::Array2;
use rand::{Rng, SeedableRng};

#[test]
fn mahalanobis_matches_a_hand_computed_case() {
    // Class 0 around (1, 1), class 1 around (11, 1), residuals +-1: covariance = I.
    let x = Array2::from_shape_vec(
        (8, 2),
        vec![
            0., 0., 2., 0., 0., 2., 2., 2., 10., 0., 12., 0., 10., 2., 12., 2.,
        ],
    )
    .unwrap();
    let y = [0, 0, 0, 0, 1, 1, 1, 1];
    let m = Mahalanobis::fit(x.view(), &y, 2, 0.0).unwrap();
    assert_eq!(m.parts().means, vec![vec![1.0, 1.0], vec![11.0, 1.0]]);
    let p = &m.parts().precision;
    assert!(
        (p[0][0] - 1.0).abs() < 1e-12 && p[0][1].abs() < 1e-12 && (p[1][1] - 1.0).abs() < 1e-12
    );
    assert!((m.score(&[1.0, 3.0]).unwrap() - 4.0).abs() < 1e-12);
    assert!((m.score(&[8.0, 1.0]).unwrap() - 9.0).abs() < 1e-12);
    assert!(m.score(&[1.0]).is_err());
    // Ridge 0.5 * mean variance 1 on the diagonal: precision 1 / 1.5.
    let r = Mahalanobis::fit(x.view(), &y, 2, 0.5).unwrap();
    assert!((r.score(&[1.0, 3.0]).unwrap() - 4.0 / 1.5).abs() < 1e-12);
}

#[test]
#[allow(clippy::needless_range_loop)]
fn precision_inverts_a_correlated_covariance_and_survives_serde() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let n = 400;
    let mut v = Vec::new();
    let mut y = Vec::new();
    for i in 0..n {
        let (a, b, c): (f64, f64, f64) = (rng.random(), rng.random(), rng.random());
        v.extend([a + (i % 3) as f64, a + 0.3 * b, c - a]);
        y.push(i % 3);
    }
    let x = Array2::from_shape_vec((n, 3), v).unwrap();
    let m = Mahalanobis::fit(x.view(), &y, 3, 0.0).unwrap();
    // Recompute the covariance naively and check P * Sigma = I.
    let mut cov = [[0.0; 3]; 3];
    for (r, &k) in x.outer_iter().zip(&y) {
        for i in 0..3 {
            for j in 0..3 {
                cov[i][j] +=
                    (r[i] - m.parts().means[k][i]) * (r[j] - m.parts().means[k][j]) / n as f64;
            }
        }
    }
    for i in 0..3 {
        for j in 0..3 {
            let e: f64 = (0..3).map(|k| m.parts().precision[i][k] * cov[k][j]).sum();
            assert!(
                (e - f64::from(u8::from(i == j))).abs() < 1e-9,
                "{i}{j}: {e}"
            );
        }
    }
    let json = serde_json::to_string(&m).unwrap();
    let back: Mahalanobis = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m);
    let broken = json.replacen("[[", "[[1.0,", 1);
    assert!(serde_json::from_str::<Mahalanobis>(&broken).is_err());
}

#[test]
fn fit_rejects_bad_inputs() {
    let x = Array2::from_shape_vec((2, 2), vec![1.0, 1.0, 2.0, 2.0]).unwrap();
    assert!(matches!(
        Mahalanobis::fit(x.view(), &[0, 2], 2, 1e-6),
        Err(OodError::Label { row: 1, .. })
    ));
    assert!(matches!(
        Mahalanobis::fit(x.view(), &[0, 0], 2, 1e-6),
        Err(OodError::EmptyClass(1))
    ));
    // Identical points: zero covariance; without a ridge it cannot be inverted.
    let same = Array2::from_elem((4, 2), 3.0);
    assert!(matches!(
        Mahalanobis::fit(same.view(), &[0, 0, 1, 1], 2, 0.0),
        Err(OodError::NotPositiveDefinite(_))
    ));
    assert!(Mahalanobis::fit(same.view(), &[0, 0, 1, 1], 2, 1e-6).is_ok());
    let nan = Array2::from_shape_vec((1, 1), vec![f64::NAN]).unwrap();
    assert!(matches!(
        Mahalanobis::fit(nan.view(), &[0], 1, 0.0),
        Err(OodError::NonFinite { row: 0, .. })
    ));
}

#[test]
fn threshold_keeps_the_requested_fraction() {
    let id: Vec<f64> = (1..=20).map(f64::from).collect();
    assert_eq!(threshold_at_tpr(&id, 0.95).unwrap(), 19.0);
    assert_eq!(threshold_at_tpr(&id, 0.951).unwrap(), 20.0);
    assert_eq!(threshold_at_tpr(&id, 1.0).unwrap(), 20.0);
    assert_eq!(threshold_at_tpr(&[5.0], 0.5).unwrap(), 5.0);
    let fitted = Threshold::fit(&id, 0.95).unwrap();
    assert_eq!(fitted.threshold, 19.0);
    assert!(!fitted.is_ood(19.0) && fitted.is_ood(19.5) && fitted.is_ood(f64::NAN));
    assert!(threshold_at_tpr(&id, 0.0).is_err());
    assert!(threshold_at_tpr(&[], 0.9).is_err());
    // OOD scores 18.5, 19, 19.5, 30: two of four at or below 19.
    assert_eq!(
        fpr_at_tpr(&id, &[18.5, 19.0, 19.5, 30.0], 0.95).unwrap(),
        0.5
    );
}

fn brute_auroc(id: &[f64], ood: &[f64]) -> f64 {
    let mut s = 0.0;
    for o in ood {
        for i in id {
            s += if o > i {
                1.0
            } else if o == i {
                0.5
            } else {
                0.0
            };
        }
    }
    s / (id.len() * ood.len()) as f64
}

/// AP by definition: for each distinct threshold t (descending), precision at `score >= t`
/// times the recall gained there.
fn brute_ap(pos: &[f64], neg: &[f64]) -> f64 {
    let mut ts: Vec<f64> = pos.iter().chain(neg).copied().collect();
    ts.sort_by(|a, b| b.total_cmp(a));
    ts.dedup();
    let mut ap = 0.0;
    let mut prev_recall = 0.0;
    for t in ts {
        let tp = pos.iter().filter(|&&s| s >= t).count() as f64;
        let fp = neg.iter().filter(|&&s| s >= t).count() as f64;
        let recall = tp / pos.len() as f64;
        ap += (recall - prev_recall) * tp / (tp + fp);
        prev_recall = recall;
    }
    ap
}

#[test]
fn auroc_and_ap_match_brute_force_with_many_ties() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for _ in 0..50 {
        // Scores on a coarse grid so that ties are frequent.
        let id: Vec<f64> = (0..rng.random_range(1..40))
            .map(|_| f64::from(rng.random_range(0..8u8)))
            .collect();
        let ood: Vec<f64> = (0..rng.random_range(1..40))
            .map(|_| f64::from(rng.random_range(2..10u8)))
            .collect();
        assert!((auroc(&id, &ood).unwrap() - brute_auroc(&id, &ood)).abs() < 1e-12);
        assert!((average_precision(&ood, &id).unwrap() - brute_ap(&ood, &id)).abs() < 1e-12);
    }
}

#[test]
fn metrics_match_hand_computed_values() {
    // scikit-learn: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.8333...
    let ap = average_precision(&[0.35, 0.8], &[0.1, 0.4]).unwrap();
    assert!((ap - 5.0 / 6.0).abs() < 1e-12);
    // roc_auc_score of the same = 0.75
    assert!((auroc(&[0.1, 0.4], &[0.35, 0.8]).unwrap() - 0.75).abs() < 1e-12);
    // All tied: AUROC one half, AP = the positive rate.
    assert_eq!(auroc(&[1.0, 1.0], &[1.0]).unwrap(), 0.5);
    assert!((average_precision(&[1.0], &[1.0, 1.0]).unwrap() - 1.0 / 3.0).abs() < 1e-12);
    let m = ood_metrics(&[0.0, 1.0, 2.0, 3.0], &[10.0, 11.0]).unwrap();
    assert_eq!(
        (m.auroc, m.fpr_at_95_tpr, m.aupr_out, m.aupr_in),
        (1.0, 0.0, 1.0, 1.0)
    );
    assert!(ood_metrics(&[0.0], &[f64::NAN]).is_err());
}

#[test]
fn blocked_products_are_bit_for_bit_the_row_by_row_dot() {
    // Sizes around the blocks of rows, values of mixed sign and scale (where summation order
    // would show), and rows of zeros (the sign of a zero sum).
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for (rows, cols) in [(1, 3), (4, 128), (7, 5), (128, 128), (130, 64), (9, 0)] {
        let m: Vec<Vec<f64>> = (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|_| {
                        if r == 2 {
                            0.0
                        } else {
                            rng.random_range(-1.0..1.0) * 10f64.powi(rng.random_range(-6..6))
                        }
                    })
                    .collect()
            })
            .collect();
        let v: Vec<f64> = (0..cols).map(|_| -rng.random_range(-1.0..1.0)).collect();
        let fast = BlockedRows::from_row_vecs(&m, cols).products(&v);
        let naive: Vec<f64> = m.iter().map(|row| dot(row, &v)).collect();
        assert_eq!(
            fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            naive.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{rows}x{cols}"
        );
    }
}

#[test]
fn constant_feature_columns_are_dropped_from_the_distance() {
    // Column 1 is a dead unit (always 0); columns 0 and 2 are the hand-computed case above.
    let x = Array2::from_shape_vec(
        (8, 3),
        vec![
            0., 0., 0., 2., 0., 0., 0., 0., 2., 2., 0., 2., 10., 0., 0., 12., 0., 0., 10., 0., 2.,
            12., 0., 2.,
        ],
    )
    .unwrap();
    let y = [0, 0, 0, 0, 1, 1, 1, 1];
    assert_eq!(constant_features(x.view()), vec![1]);
    let (m, dropped) = Mahalanobis::fit_varying(x.view(), &y, 2, 0.0).unwrap();
    assert_eq!(dropped, vec![1]);
    assert_eq!(m.dim(), 3);
    // The live columns give the hand-computed distances; the dead one counts for nothing,
    // however far a served vector moves along it.
    assert!((m.score(&[1.0, 0.0, 3.0]).unwrap() - 4.0).abs() < 1e-12);
    assert!((m.score(&[1.0, 1e6, 3.0]).unwrap() - 4.0).abs() < 1e-12);
    // With the plain fit, the dead unit's variance is the ridge alone and it swamps the rest.
    let plain = Mahalanobis::fit(x.view(), &y, 2, 1e-6).unwrap();
    assert!(plain.score(&[1.0, 1.0, 3.0]).unwrap() > 1e5);
    // Nothing to drop: the same detector as the plain fit.
    let x2 = x.select(ndarray::Axis(1), &[0, 2]);
    let (same, none) = Mahalanobis::fit_varying(x2.view(), &y, 2, 0.5).unwrap();
    assert!(none.is_empty());
    assert_eq!(same, Mahalanobis::fit(x2.view(), &y, 2, 0.5).unwrap());
}
