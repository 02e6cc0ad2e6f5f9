//! Image bytes -> the model's normalised `[C, H, W]` f32 input, as `model.toml`'s
//! [`InputSpec`] says: the one preprocessing path of caliper. The server's request path,
//! `caliper predict`, `calibrate`, `eval`, `eval-ood` and the trainer's image-file loader all
//! call it, so offline figures describe what is served. CPU-bound: async callers run it off the
//! executor.
//!
//! Order matters for safety: the format is sniffed from the bytes (never trusted from the
//! `Content-Type`), the pixel count is read from the header and checked *before* decoding
//! (decompression bombs), and the decoder runs with an allocation limit as a second guard.
//! Alpha is dropped (the colour channels are kept, as Pillow's `convert` does); 16-bit images
//! are scaled by 65535, 8-bit ones by 255; then `(x - mean[c]) / std[c]`.
//!
//! Resizing (`docs/IMPORT.md#preprocessing` states it exactly, for independent re-implementations):
//! `stretch` resizes to H x W; `center-crop` scales both sides by
//! `s = max(resize_shorter / min(w, h), W / w, H / h)` (without `resize_shorter`, the last two),
//! resizes to `round(w * s) x round(h * s)` and crops H x W at offset `floor((size - crop) / 2)`.
//! Both resize with a triangle (bilinear) filter widened by the scale when shrinking, as Pillow's
//! `BILINEAR` does, on the f32 pixels.

use std::io::Cursor;

use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageBuffer, ImageError, ImageReader, Pixel};

use super::metadata::{InputSpec, ResizePolicy};

/// Errors turning bytes into a model input.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The body is empty.
    #[error("empty image")]
    Empty,
    /// Not an image format this server decodes (PNG, JPEG, BMP, WebP, GIF).
    #[error("unsupported image format: {0}")]
    Unsupported(String),
    /// A recognised format whose data is broken.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// More pixels than `--max-image-pixels` (checked from the header, before decoding).
    #[error("image of {width}x{height} pixels exceeds the limit of {max} pixels")]
    TooLarge { width: u32, height: u32, max: u64 },
}

/// Decoding limits.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Largest accepted width * height.
    pub max_pixels: u64,
}

/// The default pixel limit of the server (`--max-image-pixels`) and of the offline tools.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 4096 * 4096;

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: DEFAULT_MAX_IMAGE_PIXELS,
        }
    }
}

/// Decodes `bytes` and returns the normalised image, channel-major (`C * H * W` values).
pub fn preprocess(
    bytes: &[u8],
    spec: &InputSpec,
    limits: ImageLimits,
) -> Result<Vec<f32>, PreprocessError> {
    Ok(preprocess_image(&decode(bytes, limits)?, spec))
}

/// An already decoded image (or pixels of an in-memory dataset) -> the normalised model input,
/// channel-major: converted to the spec's channels, resized with its policy, normalised.
pub fn preprocess_image(img: &DynamicImage, spec: &InputSpec) -> Vec<f32> {
    let (w, h) = (spec.width as u32, spec.height as u32);
    let mut out = Vec::with_capacity(spec.channels * spec.height * spec.width);
    if spec.channels == 1 {
        let buf = fit(img.to_luma32f(), w, h, spec.resize, spec.resize_shorter);
        push_normalised(&buf, spec, &mut out);
    } else {
        let buf = fit(img.to_rgb32f(), w, h, spec.resize, spec.resize_shorter);
        push_normalised(&buf, spec, &mut out);
    }
    out
}

/// A decoded image brought to `channels` x `height` x `width` u8 pixels, channel-major, by the
/// same conversion and resize as [`preprocess_image`] (then rounded to u8): what the trainer
/// stores for an image-file dataset, normalising later with the training statistics.
pub fn resize_to_u8(
    img: &DynamicImage,
    channels: usize,
    height: usize,
    width: usize,
    policy: ResizePolicy,
) -> Vec<u8> {
    let (w, h) = (width as u32, height as u32);
    let to_u8 = |v: f32| (v * 255.0).round().clamp(0.0, 255.0) as u8;
    let raw: Vec<f32> = if channels == 1 {
        fit(img.to_luma32f(), w, h, policy, None).into_raw()
    } else {
        fit(img.to_rgb32f(), w, h, policy, None).into_raw()
    };
    let c = channels.max(1);
    let mut out = Vec::with_capacity(raw.len());
    for ch in 0..c {
        out.extend(raw.iter().skip(ch).step_by(c).map(|&v| to_u8(v)));
    }
    out
}

/// `(width, height)` of an image file, read from its header only.
pub fn file_dimensions(path: &std::path::Path) -> Result<(u32, u32), PreprocessError> {
    ImageReader::open(path)
        .map_err(|e| PreprocessError::Corrupt(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| PreprocessError::Corrupt(e.to_string()))?
        .into_dimensions()
        .map_err(classify)
}

fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, PreprocessError> {
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PreprocessError::Corrupt(e.to_string()))
}

/// Sniffs the format and reads `(width, height)` from the header, without decoding pixels.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    let probe = reader(bytes)?;
    if probe.format().is_none() {
        return Err(PreprocessError::Unsupported(
            "unrecognised data (expected PNG, JPEG, BMP, WebP or GIF)".into(),
        ));
    }
    let (width, height) = probe.into_dimensions().map_err(classify)?;
    if width == 0 || height == 0 {
        return Err(PreprocessError::Corrupt("zero-sized image".into()));
    }
    Ok((width, height))
}

/// Sniffs the format, checks the header's dimensions against the limit, then decodes.
pub fn decode(bytes: &[u8], limits: ImageLimits) -> Result<DynamicImage, PreprocessError> {
    let (width, height) = dimensions(bytes)?;
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(PreprocessError::TooLarge {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    let mut reader = reader(bytes)?;
    let mut lim = image::Limits::default();
    // The largest legitimate buffer: the pixels at 4 channels of 16 bits, plus decoder slack.
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(16 << 20));
    reader.limits(lim);
    reader.decode().map_err(classify)
}

fn classify(e: ImageError) -> PreprocessError {
    match e {
        ImageError::Unsupported(u) => PreprocessError::Unsupported(u.to_string()),
        ImageError::Limits(l) => PreprocessError::Corrupt(format!("decoder limit: {l}")),
        other => PreprocessError::Corrupt(other.to_string()),
    }
}

/// Brings an image to exactly `w` x `h` with the model's resize policy (and, for a centre crop,
/// the optional shorter-side size it is resized to first).
fn fit<P>(
    buf: ImageBuffer<P, Vec<f32>>,
    w: u32,
    h: u32,
    policy: ResizePolicy,
    resize_shorter: Option<u32>,
) -> ImageBuffer<P, Vec<f32>>
where
    P: Pixel<Subpixel = f32> + 'static,
{
    let (bw, bh) = buf.dimensions();
    match policy {
        _ if (bw, bh) == (w, h) && resize_shorter.is_none() => buf,
        ResizePolicy::Stretch => imageops::resize(&buf, w, h, FilterType::Triangle),
        ResizePolicy::CenterCrop => {
            let (rw, rh) = crop_resize_size((bw, bh), (w, h), resize_shorter);
            let resized = if (rw, rh) == (bw, bh) {
                buf
            } else {
                imageops::resize(&buf, rw, rh, FilterType::Triangle)
            };
            imageops::crop_imm(&resized, (rw - w) / 2, (rh - h) / 2, w, h).to_image()
        }
    }
}

/// The size an image of `(bw, bh)` is resized to before the centre crop of `(w, h)`: both sides
/// scaled by one factor, the shorter one to `shorter` (when given), never below the crop.
fn crop_resize_size((bw, bh): (u32, u32), (w, h): (u32, u32), shorter: Option<u32>) -> (u32, u32) {
    let (bw, bh) = (f64::from(bw), f64::from(bh));
    let cover = f64::max(f64::from(w) / bw, f64::from(h) / bh);
    let scale = shorter.map_or(cover, |s| f64::max(f64::from(s) / bw.min(bh), cover));
    (
        ((bw * scale).round() as u32).max(w),
        ((bh * scale).round() as u32).max(h),
    )
}

/// Appends the image channel-major, normalised per channel.
fn push_normalised<P>(buf: &ImageBuffer<P, Vec<f32>>, spec: &InputSpec, out: &mut Vec<f32>)
where
    P: Pixel<Subpixel = f32>,
{
    let c = usize::from(P::CHANNEL_COUNT);
    let raw = buf.as_raw();
    for ch in 0..c {
        let (m, s) = (spec.mean[ch], spec.std[ch]);
        out.extend(raw.iter().skip(ch).step_by(c).map(|v| (v - m) / s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Luma, Rgba};

    fn spec(channels: usize, resize: ResizePolicy) -> InputSpec {
        InputSpec {
            name: "input".into(),
            layout: "NCHW".into(),
            channels,
            height: 4,
            width: 4,
            mean: vec![0.5; channels],
            std: vec![0.5; channels],
            resize,
            resize_shorter: None,
        }
    }

    fn encode(img: DynamicImage, fmt: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, fmt).unwrap();
        out.into_inner()
    }

    const BIG: ImageLimits = ImageLimits {
        max_pixels: 1 << 20,
    };

    #[test]
    fn normalises_gray_png_exactly() {
        let img = ImageBuffer::from_fn(4, 4, |x, _| Luma([if x == 0 { 255u8 } else { 0 }]));
        let png = encode(DynamicImage::ImageLuma8(img), ImageFormat::Png);
        let v = preprocess(&png, &spec(1, ResizePolicy::Stretch), BIG).unwrap();
        assert_eq!(v.len(), 16);
        // (1 - 0.5) / 0.5 = 1 and (0 - 0.5) / 0.5 = -1
        assert_eq!(v[0], 1.0);
        assert_eq!(v[1], -1.0);
    }

    #[test]
    fn sixteen_bit_alpha_and_rgb_to_three_channels() {
        let img = ImageBuffer::from_fn(4, 4, |_, _| Rgba([65535u16, 0, 65535, 0]));
        let png = encode(DynamicImage::ImageRgba16(img), ImageFormat::Png);
        let v = preprocess(&png, &spec(3, ResizePolicy::Stretch), BIG).unwrap();
        // Channel-major: 16 reds (1.0 -> 1), 16 greens (-1), 16 blues (1); alpha dropped.
        assert!(v[..16].iter().all(|&x| x == 1.0));
        assert!(v[16..32].iter().all(|&x| x == -1.0));
        assert!(v[32..].iter().all(|&x| x == 1.0));
    }

    #[test]
    fn every_supported_format_decodes_and_resizes() {
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_fn(9, 6, |x, y| {
            image::Rgb([(x * 20) as u8, (y * 30) as u8, 128])
        }));
        for fmt in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Bmp,
            ImageFormat::Gif,
            ImageFormat::WebP,
        ] {
            let bytes = encode(img.clone(), fmt);
            for policy in [ResizePolicy::Stretch, ResizePolicy::CenterCrop] {
                let v = preprocess(&bytes, &spec(1, policy), BIG)
                    .unwrap_or_else(|e| panic!("{fmt:?}: {e}"));
                assert_eq!(v.len(), 16, "{fmt:?}");
                assert!(v.iter().all(|x| x.is_finite() && (-1.0..=1.0).contains(x)));
            }
        }
    }

    #[test]
    fn rejects_bombs_before_decoding_and_garbage() {
        let png = encode(
            DynamicImage::ImageLuma8(ImageBuffer::new(100, 100)),
            ImageFormat::Png,
        );
        let e = preprocess(
            &png,
            &spec(1, ResizePolicy::Stretch),
            ImageLimits { max_pixels: 9999 },
        );
        assert!(matches!(
            e,
            Err(PreprocessError::TooLarge {
                width: 100,
                height: 100,
                ..
            })
        ));
        let s = spec(1, ResizePolicy::Stretch);
        assert!(matches!(
            preprocess(b"", &s, BIG),
            Err(PreprocessError::Empty)
        ));
        assert!(matches!(
            preprocess(b"hello, not an image", &s, BIG),
            Err(PreprocessError::Unsupported(_))
        ));
        // A valid PNG signature followed by garbage.
        let mut broken = png[..40].to_vec();
        broken.extend_from_slice(&[0xAB; 40]);
        assert!(matches!(
            preprocess(&broken, &s, BIG),
            Err(PreprocessError::Corrupt(_))
        ));
    }

    #[test]
    fn center_crop_resizes_the_shorter_side_then_crops() {
        // ImageNet's 256 -> 224: a 512x384 photo becomes 341x256 (384 -> 256), then 224x224.
        assert_eq!(
            crop_resize_size((512, 384), (224, 224), Some(256)),
            (341, 256)
        );
        assert_eq!(
            crop_resize_size((384, 512), (224, 224), Some(256)),
            (256, 341)
        );
        // Without resize_shorter the shorter side just covers the crop.
        assert_eq!(crop_resize_size((512, 384), (224, 224), None), (299, 224));
        // An input already at the resize size is not resized, only cropped.
        assert_eq!(
            crop_resize_size((256, 256), (224, 224), Some(256)),
            (256, 256)
        );

        // A 6x4 image, shorter side to 6 (so 9x6), centre crop 4x4 at offset (2, 1): a vertical
        // white bar at x = 5 (x = 4 once resized) lands at column 2 of the crop.
        let img = ImageBuffer::from_fn(12, 8, |x, _| Luma([if x == 5 { 255u8 } else { 0 }]));
        let bytes = encode(DynamicImage::ImageLuma8(img), ImageFormat::Png);
        let mut s = spec(1, ResizePolicy::CenterCrop);
        s.resize_shorter = Some(6);
        let v = preprocess(&bytes, &s, BIG).unwrap();
        assert_eq!(v.len(), 16);
        let row: Vec<f32> = v[4..8].to_vec();
        let brightest = (0..4).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert_eq!(brightest, 2, "{row:?}");
        // The same image at exactly the input size: with resize_shorter it is still resized and
        // cropped (the crop is a fixed fraction of the image, as the documented pipeline does).
        let img = ImageBuffer::from_fn(4, 4, |x, y| Luma([(x * 60 + y) as u8]));
        let bytes = encode(DynamicImage::ImageLuma8(img), ImageFormat::Png);
        let cropped = preprocess(&bytes, &s, BIG).unwrap();
        let plain = preprocess(&bytes, &spec(1, ResizePolicy::CenterCrop), BIG).unwrap();
        assert_ne!(cropped, plain);
    }
}
