//! The dense linear algebra the feature-based detectors need beyond a Cholesky inverse (in
//! [`super::fit`]): the eigendecomposition of a symmetric matrix (ViM's principal subspace) and
//! a ridge least-squares solve (ViM recovers the classifier's last layer from features and
//! logits). Matrices are row-major `Vec<Vec<f64>>`, as the Mahalanobis detector stores them;
//! sizes are at most a few thousand, so O(D^3) with small constants is what matters.

/// Eigenvalues (ascending) and eigenvectors (`vectors[i][j]` = component i of eigenvector j) of
/// a symmetric matrix: Householder reduction to tridiagonal form, then the implicit QL
/// iteration (the EISPACK `tred2`/`tql2` pair, as JAMA transcribes it). About `4 D^3` flops,
/// where a Jacobi sweep costs as much and several are needed.
// Index loops mirror the published algorithm step by step.
#[allow(clippy::needless_range_loop)]
pub fn symmetric_eigen(a: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = a.len();
    let mut v: Vec<Vec<f64>> = a.to_vec();
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    if n == 0 {
        return (d, v);
    }
    // tred2: Householder tridiagonalisation.
    d.copy_from_slice(&v[n - 1]);
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for k in 0..i {
            scale += d[k].abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[i - 1][j];
                v[i][j] = 0.0;
                v[j][i] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for j in 0..i {
                e[j] = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[j][i] = f;
                g = e[j] + v[j][j] * f;
                for k in j + 1..i {
                    g += v[k][j] * d[k];
                    e[k] += v[k][j] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[k][j] -= f * e[k] + g * d[k];
                }
                d[j] = v[i - 1][j];
                v[i][j] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[n - 1][i] = v[i][i];
        v[i][i] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[k][i + 1] / h;
            }
            for j in 0..=i {
                let mut g = 0.0;
                for k in 0..=i {
                    g += v[k][i + 1] * v[k][j];
                }
                for k in 0..=i {
                    v[k][j] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[k][i + 1] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[n - 1][j];
        v[n - 1][j] = 0.0;
    }
    v[n - 1][n - 1] = 1.0;
    e[0] = 0.0;

    // tql2: implicit QL on the tridiagonal matrix, accumulating the transformations.
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n {
            if e[m].abs() <= eps * tst1 {
                break;
            }
            m += 1;
        }
        let m = m.min(n - 1);
        if m > l {
            loop {
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for i in l + 2..n {
                    d[i] -= h;
                }
                f += h;
                p = d[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    for row in v.iter_mut() {
                        h = row[i + 1];
                        row[i + 1] = s * row[i] + c * h;
                        row[i] = c * row[i] - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    // Sort ascending, moving the eigenvector columns along.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[i].total_cmp(&d[j]));
    let values = order.iter().map(|&i| d[i]).collect();
    let vectors = v
        .iter()
        .map(|row| order.iter().map(|&j| row[j]).collect())
        .collect();
    (values, vectors)
}

/// Least squares with a ridge: the `[P][Q]` matrix B minimising `|X B - Y|^2 + ridge |B|^2`
/// for rows `x` (`[N][P]`) and `y` (`[N][Q]`), through the normal equations. Errors when
/// `X^T X + ridge I` is not positive definite.
#[allow(clippy::needless_range_loop)]
pub fn ridge_least_squares(
    x: &[Vec<f64>],
    y: &[Vec<f64>],
    ridge: f64,
) -> Result<Vec<Vec<f64>>, super::fit::OodError> {
    let p = x.first().map_or(0, Vec::len);
    let q = y.first().map_or(0, Vec::len);
    let mut xtx = vec![vec![0.0; p]; p];
    let mut xty = vec![vec![0.0; q]; p];
    for (xr, yr) in x.iter().zip(y) {
        for i in 0..p {
            let xi = xr[i];
            for (c, xj) in xtx[i][..=i].iter_mut().zip(xr) {
                *c += xi * xj;
            }
            for (c, yj) in xty[i].iter_mut().zip(yr) {
                *c += xi * yj;
            }
        }
    }
    for i in 0..p {
        xtx[i][i] += ridge;
        for j in 0..i {
            xtx[j][i] = xtx[i][j];
        }
    }
    let inv = super::fit::spd_inverse(&xtx, ridge)?;
    Ok((0..p)
        .map(|i| {
            (0..q)
                .map(|j| (0..p).map(|k| inv[i][k] * xty[k][j]).sum())
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat_mul(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let (n, m, p) = (a.len(), b.len(), b[0].len());
        (0..n)
            .map(|i| {
                (0..p)
                    .map(|j| (0..m).map(|k| a[i][k] * b[k][j]).sum())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn eigenpairs_reconstruct_the_matrix() {
        // A random-looking symmetric 7x7 matrix with a repeated eigenvalue's worth of structure.
        let n = 7;
        let a: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        let (x, y) = (i.min(j) as f64, i.max(j) as f64);
                        ((x * 3.1 + y * 1.7).sin() + if i == j { 2.0 } else { 0.0 }).round() / 2.0
                    })
                    .collect()
            })
            .collect();
        let (values, vectors) = symmetric_eigen(&a);
        assert!(values.windows(2).all(|w| w[0] <= w[1]));
        for j in 0..n {
            let col: Vec<f64> = vectors.iter().map(|r| r[j]).collect();
            let av: Vec<f64> = a
                .iter()
                .map(|r| r.iter().zip(&col).map(|(x, y)| x * y).sum())
                .collect();
            for i in 0..n {
                assert!((av[i] - values[j] * col[i]).abs() < 1e-10, "pair {j}");
            }
        }
        // Orthonormal eigenvectors: V^T V = I.
        let vt: Vec<Vec<f64>> = (0..n)
            .map(|j| vectors.iter().map(|r| r[j]).collect())
            .collect();
        let i = mat_mul(&vt, &vectors);
        for (r, row) in i.iter().enumerate() {
            for (c, x) in row.iter().enumerate() {
                assert!((x - f64::from(u8::from(r == c))).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn least_squares_recovers_an_exact_linear_map() {
        // y = [2 x0 - x1 + 3, x0 + 0.5 x1] with an intercept column.
        let x: Vec<Vec<f64>> = (0..20)
            .map(|i| vec![(i as f64 * 0.7).sin(), (i as f64 * 1.3).cos(), 1.0])
            .collect();
        let y: Vec<Vec<f64>> = x
            .iter()
            .map(|r| vec![2.0 * r[0] - r[1] + 3.0, r[0] + 0.5 * r[1]])
            .collect();
        let b = ridge_least_squares(&x, &y, 1e-12).unwrap();
        let want = [[2.0, 1.0], [-1.0, 0.5], [3.0, 0.0]];
        for (row, w) in b.iter().zip(want) {
            for (v, w) in row.iter().zip(w) {
                assert!((v - w).abs() < 1e-8, "{b:?}");
            }
        }
    }

    #[test]
    fn a_diagonal_matrix_is_its_own_decomposition() {
        let a = vec![
            vec![3.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.0, 0.0, 2.0],
        ];
        let (values, _) = symmetric_eigen(&a);
        assert_eq!(values, vec![1.0, 2.0, 3.0]);
        let (v, _) = symmetric_eigen(&[vec![5.0]]);
        assert_eq!(v, vec![5.0]);
    }
}
