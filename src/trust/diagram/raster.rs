//! PNG backend: rasterises the scene into an RGB buffer with the `image` crate (already a
//! dependency for decoding) and the built-in bitmap font. No anti-aliasing; text is drawn in
//! upper case at an integer multiple of the 5x7 font.

use image::{ImageBuffer, ImageFormat, Rgb, RgbImage};

use super::font::{ADVANCE, GLYPH_H, GLYPH_W, glyph};
use super::scene::{Anchor, Color, Line, Scene, Shape, Text};

fn blend(img: &mut RgbImage, x: i64, y: i64, c: Color, opacity: f64) {
    if x < 0 || y < 0 || x >= i64::from(img.width()) || y >= i64::from(img.height()) {
        return;
    }
    let p = img.get_pixel_mut(x as u32, y as u32);
    let mix = |old: u8, new: u8| {
        (f64::from(old) * (1.0 - opacity) + f64::from(new) * opacity).round() as u8
    };
    *p = Rgb([mix(p[0], c.0), mix(p[1], c.1), mix(p[2], c.2)]);
}

fn fill_rect(img: &mut RgbImage, x: f64, y: f64, w: f64, h: f64, c: Color, opacity: f64) {
    let (x0, y0) = (x.round() as i64, y.round() as i64);
    let (x1, y1) = ((x + w).round() as i64, (y + h).round() as i64);
    for py in y0..y1 {
        for px in x0..x1 {
            blend(img, px, py, c, opacity);
        }
    }
}

/// A line stepped one pixel along its longer axis; dashes are 6 pixels on, 4 off.
fn draw_line(img: &mut RgbImage, l: &Line) {
    let (x1, y1, x2, y2, c) = (l.x1, l.y1, l.x2, l.y2, l.color);
    let steps = (x2 - x1).abs().max((y2 - y1).abs()).ceil().max(1.0) as i64;
    let half = ((l.width - 1.0) / 2.0).round() as i64;
    for s in 0..=steps {
        if l.dashed && s % 10 >= 6 {
            continue;
        }
        let t = s as f64 / steps as f64;
        let (x, y) = (
            (x1 + (x2 - x1) * t).round() as i64,
            (y1 + (y2 - y1) * t).round() as i64,
        );
        for dy in -half..=half {
            for dx in -half..=half {
                blend(img, x + dx, y + dy, c, 1.0);
            }
        }
    }
}

fn draw_text(img: &mut RgbImage, t: &Text) {
    let (x, y, c, s) = (t.x, t.y, t.color, t.text.as_str());
    let size = t.size;
    let scale = (size / f64::from(GLYPH_H)).ceil().max(1.0) as i64;
    let n = s.chars().count() as i64;
    let width = (n * i64::from(ADVANCE) - 1).max(0) * scale;
    let left = match t.anchor {
        Anchor::Start => x.round() as i64,
        Anchor::Middle => x.round() as i64 - width / 2,
        Anchor::End => x.round() as i64 - width,
    };
    let top = y.round() as i64 - i64::from(GLYPH_H) * scale;
    for (i, ch) in s.chars().enumerate() {
        let gx = left + i as i64 * i64::from(ADVANCE) * scale;
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits & (1 << (GLYPH_W - 1 - col)) == 0 {
                    continue;
                }
                let (px, py) = (gx + i64::from(col) * scale, top + row as i64 * scale);
                fill_rect(
                    img,
                    px as f64,
                    py as f64,
                    scale as f64,
                    scale as f64,
                    c,
                    1.0,
                );
            }
        }
    }
}

/// Rasterises `scene` on a white background.
pub fn rasterise(scene: &Scene) -> RgbImage {
    let mut img = ImageBuffer::from_pixel(scene.width, scene.height, Rgb([255, 255, 255]));
    for shape in &scene.shapes {
        match shape {
            Shape::Rect(r) => fill_rect(&mut img, r.x, r.y, r.w, r.h, r.fill, r.opacity),
            Shape::Line(l) => draw_line(&mut img, l),
            Shape::Text(t) => draw_text(&mut img, t),
        }
    }
    img
}

/// Encodes `scene` as PNG bytes.
pub fn render_png(scene: &Scene) -> Result<Vec<u8>, image::ImageError> {
    let mut out = std::io::Cursor::new(Vec::new());
    rasterise(scene).write_to(&mut out, ImageFormat::Png)?;
    Ok(out.into_inner())
}
