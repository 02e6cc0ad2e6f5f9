//! Live coverage of the served conformal sets (issue 22, section 4): of the labelled predictions
//! in the window whose token carried a set, how many sets held the label, how large they were,
//! and the same per true class (the class-conditional coverage that split conformal does not
//! promise, but that shifts reveal first).

use serde::Serialize;

use super::window::ModelWindow;

/// Coverage of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassCoverage {
    /// Class index.
    pub class: usize,
    /// Labelled sets whose true label is this class.
    pub labelled: usize,
    /// Share of them that held it.
    pub coverage: Option<f64>,
}

/// Coverage of one model's labelled window (`conformal` in the monitor JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoverageReport {
    /// Labelled predictions in the window that were served with a set.
    pub labelled: usize,
    /// Share of those sets that held the true label.
    pub coverage: Option<f64>,
    /// Mean number of classes in those sets.
    pub mean_set_size: Option<f64>,
    /// The coverage they were built for: mean of 1 - alpha over the sets.
    pub target: Option<f64>,
    /// How many of the sets were built at the adaptive level.
    pub adaptive: usize,
    /// Per true class, for models with at most `max_classes` classes (else empty).
    pub per_class: Vec<ClassCoverage>,
}

/// Computes the coverage of `window`'s labelled sets; per class when `classes <= max_classes`.
pub fn coverage(window: &ModelWindow, classes: usize, max_classes: usize) -> CoverageReport {
    let per_class_on = classes <= max_classes;
    let mut per = vec![(0usize, 0usize); if per_class_on { classes } else { 0 }];
    let (mut n, mut covered, mut size, mut target, mut adaptive) = (0usize, 0usize, 0u64, 0.0, 0);
    for r in window.labelled() {
        let Some(s) = r.set else { continue };
        n += 1;
        covered += usize::from(s.covered);
        size += u64::from(s.size);
        target += 1.0 - s.alpha;
        adaptive += usize::from(s.adaptive);
        if let Some(c) = per.get_mut(usize::from(r.label)) {
            c.0 += 1;
            c.1 += usize::from(s.covered);
        }
    }
    let share = |a: f64, n: usize| (n > 0).then(|| a / n as f64);
    CoverageReport {
        labelled: n,
        coverage: share(covered as f64, n),
        mean_set_size: share(size as f64, n),
        target: share(target, n),
        adaptive,
        per_class: per
            .into_iter()
            .enumerate()
            .map(|(class, (labelled, hit))| ClassCoverage {
                class,
                labelled,
                coverage: share(hit as f64, labelled),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::log::{FeedbackRecord, SetOutcome};
    use super::*;

    fn rec(label: u16, covered: bool, size: u16) -> FeedbackRecord {
        FeedbackRecord {
            model: "m".into(),
            model_version: "1".into(),
            nonce: u64::from(label) * 100 + u64::from(size),
            issued_at_s: 0,
            received_at_s: 0,
            predicted: 0,
            label,
            confidence: 0.9,
            probabilities: None,
            set: Some(SetOutcome {
                covered,
                size,
                alpha: 0.1,
                adaptive: label == 1,
            }),
        }
    }

    #[test]
    fn counts_coverage_size_and_per_class() {
        let mut w = ModelWindow::new(10);
        w.push(rec(0, true, 1));
        w.push(rec(0, false, 2));
        w.push(rec(1, true, 3));
        let mut no_set = rec(2, true, 1);
        no_set.set = None;
        w.push(no_set);
        let c = coverage(&w, 3, 100);
        assert_eq!(c.labelled, 3);
        assert!((c.coverage.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(c.mean_set_size, Some(2.0));
        assert!((c.target.unwrap() - 0.9).abs() < 1e-12);
        assert_eq!(c.adaptive, 1);
        assert_eq!(c.per_class[0].coverage, Some(0.5));
        assert_eq!(c.per_class[1].coverage, Some(1.0));
        assert_eq!(
            (c.per_class[2].labelled, c.per_class[2].coverage),
            (0, None)
        );
        assert!(coverage(&w, 3, 2).per_class.is_empty());
    }
}
