//! Reliability diagrams as SVG and PNG: per panel, accuracy per equal-width confidence bin
//! against the diagonal, gap bars to the bin's mean confidence, a histogram of confidences and
//! the ECE in the legend; panels (before / after calibration) side by side.
//!
//! One layout (`scene`) feeds two backends. PNG is rasterised with the `image` crate and a
//! built-in 5x7 bitmap font, so it needs no system fonts and no extra dependency (rendering the
//! SVG with `resvg` would have pulled in a font stack and its build time for a few labels).

mod font;
mod raster;
mod scene;
mod svg;

use std::path::Path;

use crate::trust::metrics::{Bin, BinnedAccumulator};

/// Errors writing a diagram.
#[derive(Debug, thiserror::Error)]
pub enum DiagramError {
    /// The file extension is neither `.svg` nor `.png`.
    #[error("{0}: a diagram must end in .svg or .png")]
    UnknownFormat(String),
    /// PNG encoding failed.
    #[error("cannot encode PNG: {0}")]
    Encode(#[from] image::ImageError),
    /// Writing the file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What one panel shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ReliabilityPanel {
    /// Title above the panel, e.g. "Uncalibrated".
    pub title: String,
    /// Equal-width bins (count, mean confidence, accuracy).
    pub bins: Vec<Bin>,
    /// ECE of those bins, shown in the legend.
    pub ece: f64,
    /// Number of samples.
    pub samples: u64,
}

impl ReliabilityPanel {
    /// A panel from an accumulator.
    pub fn from_accumulator(title: &str, acc: &BinnedAccumulator) -> Self {
        Self {
            title: title.to_string(),
            bins: acc.bin_stats(),
            ece: acc.ece().unwrap_or(0.0),
            samples: acc.count(),
        }
    }

    /// A panel from stored bins (ECE recomputed from them).
    pub fn from_bins(title: &str, bins: &[Bin]) -> Self {
        let samples: u64 = bins.iter().map(|b| b.count).sum();
        let ece = if samples == 0 {
            0.0
        } else {
            bins.iter()
                .map(|b| b.count as f64 * (b.accuracy - b.confidence).abs())
                .sum::<f64>()
                / samples as f64
        };
        Self {
            title: title.to_string(),
            bins: bins.to_vec(),
            ece,
            samples,
        }
    }
}

/// The diagram as an SVG document.
pub fn reliability_svg(panels: &[ReliabilityPanel]) -> String {
    svg::render(&scene::layout(panels))
}

/// The diagram as PNG bytes.
pub fn reliability_png(panels: &[ReliabilityPanel]) -> Result<Vec<u8>, DiagramError> {
    Ok(raster::render_png(&scene::layout(panels))?)
}

/// The diagram as an RGB image (what [`reliability_png`] encodes).
pub fn reliability_image(panels: &[ReliabilityPanel]) -> image::RgbImage {
    raster::rasterise(&scene::layout(panels))
}

/// Writes the diagram to `path` as SVG or PNG according to its extension.
pub fn write_diagram(path: &Path, panels: &[ReliabilityPanel]) -> Result<(), DiagramError> {
    let shown = path.display().to_string();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let bytes = match ext.as_deref() {
        Some("svg") => reliability_svg(panels).into_bytes(),
        Some("png") => reliability_png(panels)?,
        _ => return Err(DiagramError::UnknownFormat(shown)),
    };
    crate::fsutil::write_atomic(path, &bytes).map_err(|source| DiagramError::Io {
        path: shown,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel() -> ReliabilityPanel {
        let mut acc = BinnedAccumulator::new(10).unwrap();
        for i in 0..200 {
            let c = 0.3 + 0.7 * (i as f64 / 200.0);
            acc.add(c, i % 5 != 0).unwrap();
        }
        ReliabilityPanel::from_accumulator("Before & <after>", &acc)
    }

    #[test]
    fn svg_has_bars_legend_and_escaped_title() {
        let svg = reliability_svg(&[panel(), panel()]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Before &amp; &lt;after&gt;"));
        assert!(svg.contains("ECE = "));
        assert!(svg.contains(r#"width="880""#), "two panels side by side");
        // Confidences .3 to 1 fill bins 3..=10 of 10 (.3 is right-closed into bin 3): 8 accuracy
        // bars per panel plus one legend swatch.
        assert_eq!(svg.matches("#1f77b4").count(), 2 * (8 + 1));
    }

    #[test]
    fn png_decodes_and_shows_the_bars() {
        let p = panel();
        let bytes = reliability_png(std::slice::from_ref(&p)).unwrap();
        let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (440, 530));
        // Inside the top bin's accuracy bar (x at confidence .95, y at accuracy .4) the pixel is
        // blue-ish: blue dominates red.
        let px = img.get_pixel(70 + (0.95 * 320.0) as u32, 84 + (0.6 * 320.0) as u32);
        assert!(px[2] > px[0] + 50, "expected a blue bar, got {px:?}");
        // The legend text is drawn: some black pixels in the legend row.
        let dark = (70..230)
            .flat_map(|x| (36..52).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y)[0] < 60)
            .count();
        assert!(dark > 50, "legend text missing ({dark} dark pixels)");
    }

    #[test]
    fn write_picks_the_format_by_extension() {
        let d = tempfile::tempdir().unwrap();
        write_diagram(&d.path().join("a.svg"), &[panel()]).unwrap();
        write_diagram(&d.path().join("a.PNG"), &[panel()]).unwrap();
        assert!(
            std::fs::read(d.path().join("a.PNG"))
                .unwrap()
                .starts_with(b"\x89PNG")
        );
        assert!(matches!(
            write_diagram(&d.path().join("a.jpg"), &[panel()]),
            Err(DiagramError::UnknownFormat(_))
        ));
    }
}
