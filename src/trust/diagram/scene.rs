//! The reliability diagram as a list of drawing primitives in pixel coordinates. Both backends
//! (SVG and PNG) draw the same scene, so the two files cannot drift apart.

use super::ReliabilityPanel;

/// An sRGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Color(pub u8, pub u8, pub u8);

pub const BLACK: Color = Color(0, 0, 0);
pub const GREY: Color = Color(120, 120, 120);
pub const LIGHT: Color = Color(225, 225, 225);
pub const BLUE: Color = Color(31, 119, 180);
pub const RED: Color = Color(214, 39, 40);

/// Horizontal alignment of a text relative to its x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

/// Axis-aligned rectangle, `opacity` in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub fill: Color,
    pub opacity: f64,
}

/// Straight line of `width` pixels, optionally dashed.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub x1: f64,
    pub y1: f64,
    pub x2: f64,
    pub y2: f64,
    pub color: Color,
    pub width: f64,
    pub dashed: bool,
}

/// Text whose baseline starts (or is centred, or ends) at (x, y); `size` is the cap height.
#[derive(Debug, Clone, PartialEq)]
pub struct Text {
    pub x: f64,
    pub y: f64,
    pub size: f64,
    pub anchor: Anchor,
    pub color: Color,
    pub text: String,
}

/// One drawing primitive.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Rect(Rect),
    Line(Line),
    Text(Text),
}

/// A whole picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub shapes: Vec<Shape>,
}

const PANEL_W: f64 = 440.0;
const PANEL_H: f64 = 530.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 84.0;
const PLOT: f64 = 320.0;
const HIST_GAP: f64 = 40.0;
const HIST_H: f64 = 60.0;

fn text(x: f64, y: f64, size: f64, anchor: Anchor, s: impl Into<String>) -> Shape {
    Shape::Text(Text {
        x,
        y,
        size,
        anchor,
        color: BLACK,
        text: s.into(),
    })
}

fn line(x1: f64, y1: f64, x2: f64, y2: f64, color: Color, dashed: bool) -> Shape {
    Shape::Line(Line {
        x1,
        y1,
        x2,
        y2,
        color,
        width: 1.0,
        dashed,
    })
}

fn rect(x: f64, y: f64, w: f64, h: f64, fill: Color, opacity: f64) -> Shape {
    Shape::Rect(Rect {
        x,
        y,
        w,
        h,
        fill,
        opacity,
    })
}

/// Lays out the panels side by side: per panel a reliability plot (accuracy bars, gap bars to
/// the mean confidence, the diagonal), the ECE in a legend, and a histogram of confidences.
pub fn layout(panels: &[ReliabilityPanel]) -> Scene {
    let mut shapes = Vec::new();
    for (i, p) in panels.iter().enumerate() {
        let ox = i as f64 * PANEL_W + LEFT;
        let x = |c: f64| ox + c * PLOT;
        let y = |a: f64| TOP + (1.0 - a) * PLOT;
        shapes.push(text(ox + PLOT / 2.0, 24.0, 14.0, Anchor::Middle, &p.title));
        // Grid, then bars, then frame and diagonal on top.
        for t in [0.25, 0.5, 0.75] {
            shapes.push(line(x(0.0), y(t), x(1.0), y(t), LIGHT, false));
            shapes.push(line(x(t), y(0.0), x(t), y(1.0), LIGHT, false));
        }
        let max_count = p.bins.iter().map(|b| b.count).max().unwrap_or(0).max(1) as f64;
        let hist_top = TOP + PLOT + HIST_GAP;
        for b in p.bins.iter() {
            let (x0, w) = (x(b.lower) + 1.0, (b.upper - b.lower) * PLOT - 2.0);
            let h = b.count as f64 / max_count * HIST_H;
            shapes.push(rect(x0, hist_top + HIST_H - h, w, h, GREY, 1.0));
            if b.count == 0 {
                continue;
            }
            shapes.push(rect(
                x0,
                y(b.accuracy),
                w,
                y(0.0) - y(b.accuracy),
                BLUE,
                0.85,
            ));
            let (lo, hi) = if b.accuracy < b.confidence {
                (b.accuracy, b.confidence)
            } else {
                (b.confidence, b.accuracy)
            };
            shapes.push(rect(x0, y(hi), w, y(lo) - y(hi), RED, 0.35));
        }
        shapes.push(line(x(0.0), y(0.0), x(1.0), y(1.0), GREY, true));
        for (x1, y1, x2, y2) in [(0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0)] {
            shapes.push(line(x(x1), y(y1), x(x2), y(y2), BLACK, false));
        }
        shapes.push(line(
            x(0.0),
            hist_top + HIST_H,
            x(1.0),
            hist_top + HIST_H,
            BLACK,
            false,
        ));
        for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let label = format!("{t}");
            shapes.push(line(x(t), y(0.0), x(t), y(0.0) + 5.0, BLACK, false));
            shapes.push(text(x(t), y(0.0) + 20.0, 10.0, Anchor::Middle, &label));
            shapes.push(line(x(0.0) - 5.0, y(t), x(0.0), y(t), BLACK, false));
            shapes.push(text(x(0.0) - 8.0, y(t) + 5.0, 10.0, Anchor::End, label));
        }
        shapes.push(text(
            x(0.5),
            y(0.0) + 36.0,
            11.0,
            Anchor::Middle,
            "Confidence",
        ));
        shapes.push(text(
            ox - LEFT + 4.0,
            TOP - 12.0,
            11.0,
            Anchor::Start,
            "Accuracy",
        ));
        shapes.push(text(
            x(0.0) - 8.0,
            hist_top + HIST_H + 18.0,
            10.0,
            Anchor::Start,
            format!("Count (N = {})", p.samples),
        ));
        // Legend on its own row between title and plot, so it never hides a bar.
        let ly = 50.0;
        shapes.push(text(
            x(0.0),
            ly,
            12.0,
            Anchor::Start,
            format!("ECE = {:.2}%", p.ece * 100.0),
        ));
        shapes.push(rect(x(0.5), ly - 10.0, 12.0, 10.0, BLUE, 0.85));
        shapes.push(text(x(0.5) + 18.0, ly, 10.0, Anchor::Start, "Accuracy"));
        shapes.push(rect(x(0.88), ly - 10.0, 12.0, 10.0, RED, 0.35));
        shapes.push(text(x(0.88) + 18.0, ly, 10.0, Anchor::Start, "Gap"));
    }
    Scene {
        width: (PANEL_W * panels.len().max(1) as f64) as u32,
        height: PANEL_H as u32,
        shapes,
    }
}
