//! Learning-rate schedules, evaluated per step on the host (the rate is a graph input).

/// A learning-rate schedule over epochs, with an optional linear warm-up.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` at each milestone epoch.
    Step {
        /// Epochs (0-based boundaries) at which the rate drops.
        milestones: Vec<usize>,
        /// Factor per milestone.
        gamma: f64,
    },
    /// Cosine decay from the base rate to 0 over the run.
    Cosine,
}

/// Learning rate at `epoch` (0-based) plus the fraction `frac` in [0, 1) of that epoch done.
pub fn lr_at(
    base: f64,
    sched: &Schedule,
    warmup_epochs: f64,
    epochs: usize,
    epoch: usize,
    frac: f64,
) -> f64 {
    let t = epoch as f64 + frac;
    let lr = match sched {
        Schedule::Constant => base,
        Schedule::Step { milestones, gamma } => {
            base * gamma.powi(milestones.iter().filter(|&&m| epoch >= m).count() as i32)
        }
        Schedule::Cosine => {
            let total = (epochs as f64).max(1e-9);
            base * 0.5 * (1.0 + (std::f64::consts::PI * (t / total).min(1.0)).cos())
        }
    };
    if warmup_epochs > 0.0 && t < warmup_epochs {
        lr * (t / warmup_epochs)
    } else {
        lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_hand_values() {
        let step = Schedule::Step {
            milestones: vec![2, 4],
            gamma: 0.1,
        };
        assert_eq!(lr_at(0.1, &step, 0.0, 6, 1, 0.5), 0.1);
        assert!((lr_at(0.1, &step, 0.0, 6, 2, 0.0) - 0.01).abs() < 1e-15);
        assert!((lr_at(0.1, &step, 0.0, 6, 5, 0.0) - 0.001).abs() < 1e-15);
        assert!((lr_at(1.0, &Schedule::Cosine, 0.0, 10, 5, 0.0) - 0.5).abs() < 1e-12);
        assert!(lr_at(1.0, &Schedule::Cosine, 0.0, 10, 9, 0.99) < 0.01);
        assert!((lr_at(0.2, &Schedule::Constant, 2.0, 10, 0, 0.5) - 0.05).abs() < 1e-12);
        assert_eq!(lr_at(0.2, &Schedule::Constant, 2.0, 10, 2, 0.0), 0.2);
    }
}
