//! Percentile bootstrap confidence intervals for every metric of a [`MetricReport`]: resample
//! the rows with replacement `resamples` times from a seeded ChaCha8 stream (so a run is
//! reproducible), recompute the report, and take the `(1 - level) / 2` and `(1 + level) / 2`
//! percentiles with numpy's default linear interpolation.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{MetricReport, MetricsError, Samples};

/// A two-sided interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower percentile.
    pub low: f64,
    /// Upper percentile.
    pub high: f64,
}

/// Bootstrap settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapOptions {
    /// Number of resamples (at least 2).
    pub resamples: usize,
    /// Seed of the resampling stream.
    pub seed: u64,
    /// Coverage of the interval, in (0, 1), e.g. 0.95.
    pub level: f64,
}

/// Percentile intervals of each metric by name (metrics undefined in some resample, such as
/// AUROC without errors, use only the resamples where they are defined).
pub fn bootstrap(
    samples: &Samples<'_>,
    bins: usize,
    opts: &BootstrapOptions,
) -> Result<BTreeMap<&'static str, Interval>, MetricsError> {
    if opts.resamples < 2 || !(opts.level > 0.0 && opts.level < 1.0) {
        return Err(MetricsError::InvalidBootstrap {
            resamples: opts.resamples,
            level: opts.level,
        });
    }
    let n = samples.len();
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut idx = vec![0usize; n];
    let mut draws: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for _ in 0..opts.resamples {
        for slot in idx.iter_mut() {
            *slot = rng.random_range(0..n);
        }
        let report: MetricReport = samples.report(&idx, bins)?;
        for (name, value) in report.named() {
            if let Some(v) = value {
                draws.entry(name).or_default().push(v);
            }
        }
    }
    let lo_q = (1.0 - opts.level) / 2.0;
    let hi_q = 1.0 - lo_q;
    Ok(draws
        .into_iter()
        .map(|(name, mut v)| {
            v.sort_by(f64::total_cmp);
            let interval = Interval {
                low: percentile(&v, lo_q),
                high: percentile(&v, hi_q),
            };
            (name, interval)
        })
        .collect())
}

/// Quantile `q` in [0, 1] of sorted, non-empty `v` with linear interpolation between order
/// statistics (numpy's default `method="linear"`).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn percentile_matches_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4], [2.5, 50, 97.5]) = [1.075, 2.5, 3.925]
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!((percentile(&v, 0.025) - 1.075).abs() < 1e-12);
        assert!((percentile(&v, 0.5) - 2.5).abs() < 1e-12);
        assert!((percentile(&v, 0.975) - 3.925).abs() < 1e-12);
    }

    #[test]
    fn intervals_bracket_the_estimate_and_are_reproducible() {
        let n = 400;
        let mut p = Array2::zeros((n, 2));
        let mut y = vec![0; n];
        for i in 0..n {
            let c = 0.5 + 0.5 * (i as f64 / n as f64);
            p[[i, 0]] = c;
            p[[i, 1]] = 1.0 - c;
            y[i] = usize::from(i % 4 == 0);
        }
        let s = Samples::new(p.view(), &y).unwrap();
        let all: Vec<usize> = (0..n).collect();
        let point = s.report(&all, 10).unwrap();
        let opts = BootstrapOptions {
            resamples: 200,
            seed: 7,
            level: 0.95,
        };
        let ci = bootstrap(&s, 10, &opts).unwrap();
        let acc = ci["accuracy"];
        assert!(acc.low < point.accuracy && point.accuracy < acc.high);
        assert!(acc.high - acc.low < 0.2);
        assert_eq!(ci, bootstrap(&s, 10, &opts).unwrap());
        let bad = BootstrapOptions {
            resamples: 1,
            ..opts
        };
        assert!(bootstrap(&s, 10, &bad).is_err());
    }
}
