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
//! `BILINEAR` does, on the f32 pixels; [`super::resample`] computes it in memory proportional to
//! the model's input.
//!
//! Memory (issue 23): [`plan`] reads the header and says, before any pixel is allocated, how many
//! bytes the decode will take (the decoded pixels at their own depth, times a per-format factor
//! for the decoder's own buffers, plus the resize's working memory); the server charges that to
//! its decode budget. Images with an aspect ratio over [`MAX_ASPECT_RATIO`] are refused from the
//! header: the resize of such a strip to a square input costs work in proportion to its long side
//! times the input's side, for an image that cannot be classified anyway.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use super::metadata::{InputSpec, ResizePolicy};
use super::resample::{Cancelled, resize_window, working_bytes};

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
    /// A longer side more than [`MAX_ASPECT_RATIO`] times the shorter (checked from the header).
    #[error(
        "image of {width}x{height} pixels exceeds the aspect-ratio limit of {max}:1 \
         (longer side / shorter side)"
    )]
    AspectRatio { width: u32, height: u32, max: u32 },
    /// The work was abandoned (the request timed out).
    #[error("preprocessing cancelled")]
    Cancelled,
}

impl From<Cancelled> for PreprocessError {
    fn from(_: Cancelled) -> Self {
        PreprocessError::Cancelled
    }
}

/// Decoding limits.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Largest accepted width * height.
    pub max_pixels: u64,
}

/// The default pixel limit of the server (`--max-image-pixels`) and of the offline tools.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 4096 * 4096;

/// Largest accepted ratio of an image's longer side to its shorter side. Panoramas and long
/// screenshots stay far below; a 16,777,216 x 1 strip (issue 23, row 1) does not.
pub const MAX_ASPECT_RATIO: u32 = 1000;

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: DEFAULT_MAX_IMAGE_PIXELS,
        }
    }
}

/// What decoding one image will take, read from its header before any pixel is allocated.
#[derive(Debug, Clone, Copy)]
pub struct DecodePlan {
    /// The image's format (sniffed from the bytes).
    pub format: ImageFormat,
    /// Width and height from the header.
    pub width: u32,
    /// Height from the header.
    pub height: u32,
    /// Bytes of the decoded pixels at their own depth (e.g. 1 per pixel for 8-bit grey).
    pub decoded_bytes: u64,
    /// Peak bytes of the decode and the resize together: what a memory budget should reserve.
    pub estimated_bytes: u64,
}

/// Peak memory of a format's decoder as a multiple of its decoded pixels. JPEG keeps the DCT
/// coefficients of a progressive image (2 bytes per sample) besides the output; lossy WebP its
/// YUV planes, GIF its frame of palette indices; PNG and BMP decode row by row into the output
/// (their extra rows are in [`DECODER_SLACK_BYTES`]).
fn decoder_factor(format: ImageFormat) -> u64 {
    match format {
        ImageFormat::Png | ImageFormat::Bmp => 1,
        ImageFormat::WebP | ImageFormat::Gif => 2,
        _ => 3,
    }
}

/// Fixed decoder overhead on top of the pixels (zlib window, row buffers, tables).
const DECODER_SLACK_BYTES: u64 = 256 * 1024;

/// Decodes `bytes` and returns the normalised image, channel-major (`C * H * W` values).
pub fn preprocess(
    bytes: &[u8],
    spec: &InputSpec,
    limits: ImageLimits,
) -> Result<Vec<f32>, PreprocessError> {
    preprocess_cancellable(bytes, spec, limits, &|| false)
}

/// [`preprocess`] that polls `cancel` between decoding and each tile of the resize, and gives
/// up with [`PreprocessError::Cancelled`] once it returns true.
pub fn preprocess_cancellable(
    bytes: &[u8],
    spec: &InputSpec,
    limits: ImageLimits,
    cancel: &dyn Fn() -> bool,
) -> Result<Vec<f32>, PreprocessError> {
    let img = decode(bytes, limits)?;
    if cancel() {
        return Err(PreprocessError::Cancelled);
    }
    Ok(to_input(&img, spec, cancel)?)
}

/// An already decoded image (or pixels of an in-memory dataset) -> the normalised model input,
/// channel-major: converted to the spec's channels, resized with its policy, normalised.
pub fn preprocess_image(img: &DynamicImage, spec: &InputSpec) -> Vec<f32> {
    match to_input(img, spec, &|| false) {
        Ok(v) => v,
        Err(Cancelled) => unreachable!("never cancelled"),
    }
}

fn to_input(
    img: &DynamicImage,
    spec: &InputSpec,
    cancel: &dyn Fn() -> bool,
) -> Result<Vec<f32>, Cancelled> {
    let c = if spec.channels == 1 { 1 } else { 3 };
    let (resized, window) = geometry(
        (img.width(), img.height()),
        (spec.width as u32, spec.height as u32),
        spec.resize,
        spec.resize_shorter,
    );
    let mut hwc = resize_window(img, c, resized, window, cancel)?;
    normalise(&mut hwc, &spec.mean[..c], &spec.std[..c]);
    Ok(match c {
        1 => hwc,
        _ => to_planes(&hwc, c),
    })
}

/// Pixels normalised in place, `(x - mean[ch]) / std[ch]` per value of channel `ch` (values
/// interleaved, `mean.len()` channels). Each block of [`NORM_BLOCK`] pixels meets the means and
/// deviations repeated in the same pattern, so its subtractions and divisions run as whole
/// vectors (a strided loop per channel divided one value at a time). Same operations per
/// value, so the same bits.
fn normalise(values: &mut [f32], mean: &[f32], std: &[f32]) {
    let c = mean.len();
    let width = NORM_BLOCK * c;
    let pattern = |per: &[f32]| -> Vec<f32> { (0..width).map(|k| per[k % c]).collect() };
    let (m, s) = (pattern(mean), pattern(std));
    // Blocks start at multiples of whole pixels, so the pattern lines up with each one.
    for block in values.chunks_mut(width) {
        for ((v, m), s) in block.iter_mut().zip(&m).zip(&s) {
            *v = (*v - m) / s;
        }
    }
}

/// Pixels per block of [`normalise`]: 16 f32 lanes of an AVX-512 register per channel.
const NORM_BLOCK: usize = 16;

/// Interleaved (HWC) values split into one plane per channel (CHW).
fn to_planes(hwc: &[f32], c: usize) -> Vec<f32> {
    let hw = hwc.len() / c;
    let mut out = vec![0.0; hwc.len()];
    for (i, pixel) in hwc.chunks_exact(c).enumerate() {
        for (ch, &v) in pixel.iter().enumerate() {
            out[ch * hw + i] = v;
        }
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
    let c = if channels == 1 { 1 } else { 3 };
    let (resized, window) = geometry((img.width(), img.height()), (w, h), policy, None);
    let raw = match resize_window(img, c, resized, window, &|| false) {
        Ok(v) => v,
        Err(Cancelled) => unreachable!("never cancelled"),
    };
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

/// The format and a decoder positioned after the header, without decoding pixels. The decoder
/// runs under [`decoder_limits`] from the start, so that [`decode`] goes on with it rather than
/// setting up a second one (a PNG decoder's setup is most of reading a small image's header).
fn header(
    bytes: &[u8],
    limits: ImageLimits,
) -> Result<(ImageFormat, impl ImageDecoder + '_), PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    let mut probe = reader(bytes)?;
    let Some(format) = probe.format() else {
        return Err(PreprocessError::Unsupported(
            "unrecognised data (expected PNG, JPEG, BMP, WebP or GIF)".into(),
        ));
    };
    probe.limits(decoder_limits(format, limits));
    let decoder = probe.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(PreprocessError::Corrupt("zero-sized image".into()));
    }
    Ok((format, decoder))
}

/// The guard inside the decoders, a second one after the header's pixel count: at most the
/// plan's bytes for the largest legitimate image (4 channels of 16 bits).
fn decoder_limits(format: ImageFormat, limits: ImageLimits) -> image::Limits {
    let mut lim = image::Limits::default();
    lim.max_alloc = Some(
        limits
            .max_pixels
            .saturating_mul(8)
            .saturating_mul(decoder_factor(format))
            .saturating_add(16 << 20),
    );
    lim
}

/// The pixel-count and aspect-ratio limits, from the header's dimensions.
fn check_dimensions(width: u32, height: u32, limits: ImageLimits) -> Result<(), PreprocessError> {
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(PreprocessError::TooLarge {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    let (long, short) = (width.max(height), width.min(height));
    if u64::from(long) > u64::from(short) * u64::from(MAX_ASPECT_RATIO) {
        return Err(PreprocessError::AspectRatio {
            width,
            height,
            max: MAX_ASPECT_RATIO,
        });
    }
    Ok(())
}

/// Reads the header, checks the limits and says what decoding `bytes` for `spec` will cost.
pub fn plan(
    bytes: &[u8],
    spec: &InputSpec,
    limits: ImageLimits,
) -> Result<DecodePlan, PreprocessError> {
    let (format, decoder) = header(bytes, limits)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    let decoded_bytes = decoder.total_bytes();
    let working = working_bytes(spec.width as u32, spec.height as u32, spec.channels);
    Ok(DecodePlan {
        format,
        width,
        height,
        decoded_bytes,
        estimated_bytes: decoded_bytes
            .saturating_mul(decoder_factor(format))
            .saturating_add(DECODER_SLACK_BYTES)
            .saturating_add(working),
    })
}

/// Sniffs the format, checks the header's dimensions against the limits, then decodes with the
/// same decoder (as `image`'s `ImageReader::decode` does, the output buffer is charged to the
/// decoder's allocation limit first).
pub fn decode(bytes: &[u8], limits: ImageLimits) -> Result<DynamicImage, PreprocessError> {
    let (format, mut decoder) = header(bytes, limits)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    let mut lim = decoder_limits(format, limits);
    lim.reserve(decoder.total_bytes()).map_err(classify)?;
    decoder.set_limits(lim).map_err(classify)?;
    DynamicImage::from_decoder(decoder).map_err(classify)
}

fn classify(e: ImageError) -> PreprocessError {
    match e {
        ImageError::Unsupported(u) => PreprocessError::Unsupported(u.to_string()),
        ImageError::Limits(l) => PreprocessError::Corrupt(format!("decoder limit: {l}")),
        other => PreprocessError::Corrupt(other.to_string()),
    }
}

/// The size an image of `(bw, bh)` is resized to and the window `(x, y, w, h)` of it that is the
/// model input of `(w, h)` under `policy` (and, for a centre crop, the optional shorter-side size
/// it is resized to first).
fn geometry(
    (bw, bh): (u32, u32),
    (w, h): (u32, u32),
    policy: ResizePolicy,
    resize_shorter: Option<u32>,
) -> ((u32, u32), (u32, u32, u32, u32)) {
    match policy {
        ResizePolicy::Stretch => ((w, h), (0, 0, w, h)),
        ResizePolicy::CenterCrop => {
            let (rw, rh) = crop_resize_size((bw, bh), (w, h), resize_shorter);
            ((rw, rh), ((rw - w) / 2, (rh - h) / 2, w, h))
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

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, ImageFormat, Luma, Rgba};

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

    #[test]
    fn normalised_planes_are_the_per_channel_formula_bit_for_bit() {
        // Lengths that are and are not whole blocks; awkward means and deviations.
        for (c, pixels) in [(3, 16 * 5), (3, 16 * 5 + 7), (1, 33), (3, 1)] {
            let hwc: Vec<f32> = (0..c * pixels)
                .map(|i| ((i * 7919) % 1000) as f32 / 999.0)
                .collect();
            let mean: Vec<f32> = [0.485, 0.456, 0.406][..c].to_vec();
            let std: Vec<f32> = [0.229, 0.224, 0.225][..c].to_vec();
            let mut want = Vec::new();
            for ch in 0..c {
                want.extend(
                    hwc.iter()
                        .skip(ch)
                        .step_by(c)
                        .map(|v| (v - mean[ch]) / std[ch]),
                );
            }
            let mut got = hwc.clone();
            normalise(&mut got, &mean, &std);
            let got = if c == 1 { got } else { to_planes(&got, c) };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{c} channels, {pixels} pixels");
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
    fn plan_reads_the_cost_from_the_header_and_refuses_strips() {
        let s = spec(3, ResizePolicy::Stretch);
        let grey = encode(
            DynamicImage::ImageLuma8(ImageBuffer::new(400, 300)),
            ImageFormat::Png,
        );
        let p = plan(&grey, &s, BIG).unwrap();
        assert_eq!((p.width, p.height, p.format), (400, 300, ImageFormat::Png));
        // One byte per grey pixel, whatever the model's channels.
        assert_eq!(p.decoded_bytes, 400 * 300);
        assert!(
            p.estimated_bytes > p.decoded_bytes && p.estimated_bytes < p.decoded_bytes + (1 << 20)
        );
        let jpeg = encode(
            DynamicImage::ImageRgb8(ImageBuffer::new(400, 300)),
            ImageFormat::Jpeg,
        );
        assert!(plan(&jpeg, &s, BIG).unwrap().estimated_bytes >= 3 * 400 * 300 * 3);
        // 1001 x 1 is over the aspect-ratio limit; 1000 x 1 is not.
        for (w, ok) in [(1000, true), (1001, false)] {
            let strip = encode(
                DynamicImage::ImageLuma8(ImageBuffer::new(w, 1)),
                ImageFormat::Png,
            );
            let r = preprocess(&strip, &s, BIG);
            assert_eq!(r.is_ok(), ok, "{w}x1: {r:?}");
            if !ok {
                assert!(matches!(
                    r,
                    Err(PreprocessError::AspectRatio { max: 1000, .. })
                ));
                assert!(matches!(
                    plan(&strip, &s, BIG),
                    Err(PreprocessError::AspectRatio { .. })
                ));
            }
        }
        // Cancelled before the resize starts.
        let e = preprocess_cancellable(&grey, &s, BIG, &|| true);
        assert!(matches!(e, Err(PreprocessError::Cancelled)));
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
