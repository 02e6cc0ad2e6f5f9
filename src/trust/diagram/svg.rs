//! SVG backend: one element per scene primitive. Text uses the viewer's sans-serif font.

use std::fmt::Write;

use super::scene::{Anchor, Color, Scene, Shape};

fn hex(c: Color) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// Escapes the five XML special characters in text content.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// Renders `scene` as a standalone SVG document.
pub fn render(scene: &Scene) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#,
        w = scene.width,
        h = scene.height
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for shape in &scene.shapes {
        let _ = match shape {
            Shape::Rect(r) => writeln!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="{}"/>"#,
                r.x,
                r.y,
                r.w.max(0.0),
                r.h.max(0.0),
                hex(r.fill),
                r.opacity
            ),
            Shape::Line(l) => writeln!(
                out,
                r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="{}"{}/>"#,
                l.x1,
                l.y1,
                l.x2,
                l.y2,
                hex(l.color),
                l.width,
                if l.dashed {
                    r#" stroke-dasharray="6 4""#
                } else {
                    ""
                }
            ),
            Shape::Text(t) => {
                let anchor = match t.anchor {
                    Anchor::Start => "start",
                    Anchor::Middle => "middle",
                    Anchor::End => "end",
                };
                // Cap height is about 0.72 of the font size for common sans-serif faces.
                writeln!(
                    out,
                    r#"<text x="{:.1}" y="{:.1}" font-size="{:.1}" text-anchor="{anchor}" fill="{}">{}</text>"#,
                    t.x,
                    t.y,
                    t.size / 0.72,
                    hex(t.color),
                    escape(&t.text)
                )
            }
        };
    }
    out.push_str("</svg>\n");
    out
}
