//! The validation reliability diagram (before / after calibration) as an image, for
//! `train::export`. It draws nothing itself: `trust::diagram` is the one renderer; this adapter
//! only keeps export's call site working and goes once export calls `trust::diagram` directly.

use image::RgbImage;

use crate::trust::diagram::{ReliabilityPanel, reliability_image};
use crate::trust::metrics::Bin;

/// One panel per bin set, side by side: the first titled as uncalibrated, the others as
/// calibrated.
pub fn reliability_png(panels: &[&[Bin]]) -> RgbImage {
    let panels: Vec<ReliabilityPanel> = panels
        .iter()
        .enumerate()
        .map(|(i, bins)| {
            let title = if i == 0 { "Uncalibrated" } else { "Calibrated" };
            ReliabilityPanel::from_bins(&format!("{title} (validation)"), bins)
        })
        .collect();
    reliability_image(&panels)
}
