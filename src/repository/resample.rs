//! The resize (and centre crop) of [`super::preprocess`] in working memory proportional to the
//! model's input, not to the image (issue 23, row 1: `imageops::resize` of a 16,777,216 x 1
//! image to 28 rows allocated 16,777,216 x 28 RGBA f32 pixels, 7.5 GB; a 4096 x 4096 grey image
//! converted whole to RGB f32 cost 200 MB before the resize started).
//!
//! The arithmetic is `image::imageops::resize` with `FilterType::Triangle` followed by
//! `crop_imm`, bit for bit (a unit test compares them): the same kernel weights, computed the
//! same way in f32, the same vertical-then-horizontal order, each sum accumulated in the same
//! order of source pixels, the same clamp to [0, 1] at the end. What changes is the schedule:
//! - only the output pixels of the crop window are computed, from the source rows and columns
//!   their filter windows reach;
//! - the source is converted to f32 one tile (a strip of columns by a band of rows) at a time,
//!   with the `image` crate's own conversion, so the pixel values are those of `to_luma32f` /
//!   `to_rgb32f` on the whole image;
//! - the vertical pass keeps one strip of columns for the output rows (not the full width), and
//!   the horizontal sums accumulate strip after strip (ascending source order, as `image` adds).
//!
//! Working memory: a tile, `out_h x STRIP` vertical sums and `out_h x out_w` output sums, each
//! times the channel count: a few hundred KiB for a 224 x 224 input, whatever the image size.

use image::DynamicImage;

/// Source columns per strip.
const STRIP: u32 = 256;
/// Source rows per band.
const BAND: u32 = 64;

/// The work was cancelled between two tiles (the request timed out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

/// Working bytes of [`resize_window`] for an output of `w` x `h` x `channels` (tile, vertical
/// strip, output sums, tap tables), for memory budgets.
pub fn working_bytes(w: u32, h: u32, channels: usize) -> u64 {
    let c = channels as u64;
    let (w, h) = (u64::from(w), u64::from(h));
    let tile = u64::from(STRIP) * u64::from(BAND) * c * 4 * 2;
    tile + h * u64::from(STRIP) * c * 4 + w * h * c * 4 + (w + h) * 16
}

/// The triangle (bilinear) kernel of `image::imageops`.
fn triangle(x: f32) -> f32 {
    if x.abs() < 1.0 { 1.0 - x.abs() } else { 0.0 }
}

/// One output coordinate's filter window over the source: `left..right`, the kernel centre and
/// the sum that normalises its weights (kept instead of the weights, which can number millions).
#[derive(Debug, Clone, Copy)]
struct Tap {
    left: u32,
    right: u32,
    center: f32,
    sum: f32,
}

/// One axis of a resize from `src` to `dst` pixels, for the output coordinates
/// `first..first + n` only.
struct Axis {
    sratio: f32,
    taps: Vec<Tap>,
}

impl Axis {
    /// As `imageops::{vertical,horizontal}_sample` compute them (support 1 for the triangle).
    fn new(src: u32, dst: u32, first: u32, n: u32) -> Self {
        let ratio = src as f32 / dst as f32;
        let sratio = if ratio < 1.0 { 1.0 } else { ratio };
        let support = sratio;
        let taps = (first..first + n)
            .map(|o| {
                let input = (o as f32 + 0.5) * ratio;
                let left = ((input - support).floor() as i64).clamp(0, i64::from(src) - 1);
                let right = ((input + support).ceil() as i64).clamp(left + 1, i64::from(src));
                let center = input - 0.5;
                let mut sum = 0.0f32;
                for i in left..right {
                    sum += triangle((i as f32 - center) / sratio);
                }
                Tap {
                    left: left as u32,
                    right: right as u32,
                    center,
                    sum,
                }
            })
            .collect();
        Axis { sratio, taps }
    }

    fn weight(&self, t: &Tap, i: u32) -> f32 {
        triangle((i as f32 - t.center) / self.sratio) / t.sum
    }

    /// The source coordinates any of the taps reach.
    fn span(&self) -> (u32, u32) {
        let lo = self.taps.iter().map(|t| t.left).min().unwrap_or(0);
        let hi = self.taps.iter().map(|t| t.right).max().unwrap_or(0);
        (lo, hi)
    }
}

/// The pixels of a region of `img` as f32 in [0, 1], 1 (luma) or 3 (RGB) channels, row-major.
fn region_f32(img: &DynamicImage, channels: usize, x: u32, y: u32, w: u32, h: u32) -> Vec<f32> {
    let tile = img.crop_imm(x, y, w, h);
    if channels == 1 {
        tile.to_luma32f().into_raw()
    } else {
        tile.to_rgb32f().into_raw()
    }
}

/// `img` resized to `resized` = (width, height) and cropped to the `w` x `h` window at
/// `(x0, y0)`: `channels` (1 or 3) f32 values per pixel, row-major (HWC). `cancel` is polled
/// between tiles.
pub fn resize_window(
    img: &DynamicImage,
    channels: usize,
    resized: (u32, u32),
    (x0, y0, w, h): (u32, u32, u32, u32),
    cancel: &dyn Fn() -> bool,
) -> Result<Vec<f32>, Cancelled> {
    let (bw, bh) = (img.width(), img.height());
    let c = if channels == 1 { 1 } else { 3 };
    if resized == (bw, bh) || bw == 0 || bh == 0 {
        // No resampling: `imageops::resize` copies an image already at the size.
        return Ok(region_f32(img, c, x0, y0, w, h));
    }
    let ax = Axis::new(bw, resized.0, x0, w);
    let ay = Axis::new(bh, resized.1, y0, h);
    let (cols, cols_end) = ax.span();
    let (rows, rows_end) = ay.span();
    let (w_us, h_us) = (w as usize, h as usize);
    let mut out = vec![0f32; h_us * w_us * c];
    let mut vsum: Vec<f32> = Vec::new();
    for sx in (cols..cols_end).step_by(STRIP as usize) {
        let sw = STRIP.min(cols_end - sx);
        let row_len = sw as usize * c;
        vsum.clear();
        vsum.resize(h_us * row_len, 0.0);
        // Vertical pass over this strip, band by band, each output row summing its source rows
        // in ascending order.
        for sy in (rows..rows_end).step_by(BAND as usize) {
            if cancel() {
                return Err(Cancelled);
            }
            let band = BAND.min(rows_end - sy);
            let tile = region_f32(img, c, sx, sy, sw, band);
            for (oy, t) in ay.taps.iter().enumerate() {
                let dst = &mut vsum[oy * row_len..(oy + 1) * row_len];
                for i in t.left.max(sy)..t.right.min(sy + band) {
                    let wgt = ay.weight(t, i);
                    let src = &tile[(i - sy) as usize * row_len..][..row_len];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += s * wgt;
                    }
                }
            }
        }
        // Horizontal pass: each output pixel adds this strip's share of its window, its source
        // columns in ascending order. Row by row, so that each row's vertical sums and output
        // are read and written in order (column by column over all rows, every add touched a
        // new cache line; issue 19, docs/BENCHMARKS.md session 14); the weights are computed
        // once per strip.
        let taps: Vec<(usize, usize, f32)> = ax
            .taps
            .iter()
            .enumerate()
            .flat_map(|(ox, t)| {
                let ax = &ax;
                (t.left.max(sx)..t.right.min(sx + sw))
                    .map(move |i| (ox * c, (i - sx) as usize * c, ax.weight(t, i)))
            })
            .collect();
        for (src, dst) in vsum
            .chunks_exact(row_len)
            .zip(out.chunks_exact_mut(w_us * c))
        {
            for &(o, col, wgt) in &taps {
                for (d, s) in dst[o..o + c].iter_mut().zip(&src[col..col + c]) {
                    *d += s * wgt;
                }
            }
        }
    }
    // `imageops` clamps f32 results to the [0, 1] range of a float pixel (NaN passes through
    // both its comparison and `f32::clamp`).
    for v in &mut out {
        *v = v.clamp(0.0, 1.0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::imageops::{self, FilterType};
    use image::{ImageBuffer, Luma, Rgb};

    fn reference(
        img: &DynamicImage,
        c: usize,
        resized: (u32, u32),
        win: (u32, u32, u32, u32),
    ) -> Vec<f32> {
        let (x, y, w, h) = win;
        if c == 1 {
            let r = imageops::resize(
                &img.to_luma32f(),
                resized.0,
                resized.1,
                FilterType::Triangle,
            );
            imageops::crop_imm(&r, x, y, w, h).to_image().into_raw()
        } else {
            let r = imageops::resize(&img.to_rgb32f(), resized.0, resized.1, FilterType::Triangle);
            imageops::crop_imm(&r, x, y, w, h).to_image().into_raw()
        }
    }

    fn noise(w: u32, h: u32, seed: u32) -> DynamicImage {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |_, _| {
            let v = next();
            Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        }))
    }

    /// Bit-identical to `imageops::resize` + `crop_imm`, shrinking, enlarging, mixed, across
    /// strip and band boundaries, for luma and RGB, 8 and 16 bits.
    #[test]
    fn matches_imageops_bit_for_bit() {
        let cases = [
            ((600, 300), (28, 28), (0, 0, 28, 28)),
            ((600, 300), (32, 32), (0, 0, 32, 32)),
            ((7, 5), (28, 28), (0, 0, 28, 28)),
            ((1000, 3), (28, 28), (0, 0, 28, 28)),
            ((3, 700), (28, 28), (0, 0, 28, 28)),
            ((513, 385), (299, 224), (37, 0, 224, 224)),
            ((300, 520), (256, 443), (16, 109, 224, 224)),
            ((28, 40), (28, 28), (0, 0, 28, 28)),
        ];
        for (n, ((bw, bh), resized, win)) in cases.into_iter().enumerate() {
            let img = noise(bw, bh, n as u32);
            let img16 = DynamicImage::ImageLuma16(img.to_luma16());
            for (img, c) in [(&img, 3), (&img, 1), (&img16, 1), (&img16, 3)] {
                let got = resize_window(img, c, resized, win, &|| false).unwrap();
                let want = reference(img, c, resized, win);
                assert_eq!(got.len(), want.len());
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "case {n} ({bw}x{bh} -> {resized:?} {win:?}, {c} channels) differs"
                );
            }
        }
    }

    #[test]
    fn an_extreme_width_needs_no_memory_in_proportion_to_it() {
        // 2^20 x 1 to 28 x 28: imageops would hold 2^20 x 28 RGBA f32 (470 MB) at once.
        let img = DynamicImage::ImageLuma8(ImageBuffer::from_fn(1 << 20, 1, |x, _| {
            Luma([if x < (1 << 19) { 0u8 } else { 255 }])
        }));
        let v = resize_window(&img, 1, (28, 28), (0, 0, 28, 28), &|| false).unwrap();
        assert_eq!(v.len(), 28 * 28);
        // Left half black, right half white, in every row.
        assert!(v[0] < 0.01 && v[27] > 0.99 && v[28 * 27] < 0.01);
        assert!(working_bytes(28, 28, 1) < 1 << 20);
    }

    #[test]
    fn cancellation_is_seen_between_tiles() {
        let img = noise(1000, 1000, 1);
        let calls = std::cell::Cell::new(0);
        let r = resize_window(&img, 3, (32, 32), (0, 0, 32, 32), &|| {
            calls.set(calls.get() + 1);
            calls.get() > 3
        });
        assert_eq!(r, Err(Cancelled));
        assert_eq!(calls.get(), 4);
    }
}
