//! Calibration and classification metrics (ECE family, NLL, Brier, AUROC) in f64, and the
//! mergeable streaming accumulator shared by the trainer and the live monitor.
