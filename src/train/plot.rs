//! A reliability diagram as a PNG: one panel per set of bins (before / after calibration), bars
//! of accuracy per confidence bin, the gap to the diagonal in red, the diagonal itself in grey.
//! Plain pixels through the `image` crate; no plotting dependency for one figure.

use image::{Rgb, RgbImage};

use crate::trust::metrics::Bin;

const PANEL: u32 = 240;
const MARGIN: u32 = 20;

fn fill(img: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, c: Rgb<u8>) {
    for x in x0.min(x1)..x0.max(x1) {
        for y in y0.min(y1)..y0.max(y1) {
            if x < img.width() && y < img.height() {
                img.put_pixel(x, y, c);
            }
        }
    }
}

/// Renders one panel per bin set, side by side.
pub fn reliability_png(panels: &[&[Bin]]) -> RgbImage {
    let w = panels.len() as u32 * (PANEL + MARGIN) + MARGIN;
    let h = PANEL + 2 * MARGIN;
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    for (i, bins) in panels.iter().enumerate() {
        let ox = MARGIN + i as u32 * (PANEL + MARGIN);
        let base = MARGIN + PANEL;
        let y_of = |v: f64| base - (v.clamp(0.0, 1.0) * PANEL as f64).round() as u32;
        let x_of = |v: f64| ox + (v.clamp(0.0, 1.0) * PANEL as f64).round() as u32;
        fill(&mut img, ox, MARGIN, ox + PANEL, base, Rgb([245, 245, 245]));
        for b in bins.iter().filter(|b| b.count > 0) {
            let (x0, x1) = (x_of(b.lower) + 1, x_of(b.upper).saturating_sub(1));
            fill(
                &mut img,
                x0,
                y_of(b.accuracy),
                x1,
                base,
                Rgb([60, 110, 200]),
            );
            // The gap between accuracy and mean confidence.
            let (lo, hi) = (y_of(b.accuracy), y_of(b.confidence));
            fill(
                &mut img,
                x0,
                lo.min(hi),
                x1,
                lo.max(hi) + 1,
                Rgb([220, 60, 60]),
            );
        }
        for t in 0..PANEL {
            img.put_pixel(ox + t, base - t - 1, Rgb([120, 120, 120]));
        }
        // Axes.
        fill(&mut img, ox, base, ox + PANEL, base + 1, Rgb([0, 0, 0]));
        fill(&mut img, ox, MARGIN, ox + 1, base, Rgb([0, 0, 0]));
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_reach_the_bin_accuracy() {
        let bins = [Bin {
            lower: 0.5,
            upper: 1.0,
            count: 10,
            confidence: 0.75,
            accuracy: 0.5,
        }];
        let img = reliability_png(&[&bins, &[]]);
        assert_eq!(
            img.dimensions(),
            (2 * (PANEL + MARGIN) + MARGIN, PANEL + 2 * MARGIN)
        );
        let x = MARGIN + (0.8 * PANEL as f64) as u32;
        // Inside the bar (accuracy 0.5) and above it, in the gap up to confidence 0.75 (red).
        assert_eq!(*img.get_pixel(x, MARGIN + PANEL - 10), Rgb([60, 110, 200]));
        assert_eq!(
            *img.get_pixel(x, MARGIN + PANEL / 2 - 20),
            Rgb([220, 60, 60])
        );
        assert_eq!(*img.get_pixel(x, MARGIN + 10), Rgb([245, 245, 245]));
    }
}
