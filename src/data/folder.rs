//! Image folders of one image size decoded into memory: one subfolder per class
//! (`ROOT/<class>/*.jpg|png|...`), classes in sorted name order (the CIFAR-10 archive's
//! alphabetical order is the standard label order). This is how the bundled `cifar10:` splits
//! load; user folders of any image sizes are listed by [`super::files`] and preprocessed per file
//! for the model.
//!
//! Decoding 60,000 JPEGs takes a while on two cores, so images are decoded on all cores and the
//! decoded array is cached under `<data-dir>/cache/`. The cache is keyed by the folder's
//! canonical path and checked against a fingerprint of every file's name, size and modification
//! time; a stale or unreadable cache is rebuilt, never trusted.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{DataError, Dataset, ImageShape};

/// First bytes of a cache file; bump the version when the layout changes.
const CACHE_MAGIC: &[u8] = b"CALIPER-FOLDER-CACHE-1\n";

/// The files of an image folder, before decoding.
#[derive(Debug)]
struct Listing {
    class_names: Vec<String>,
    files: Vec<(PathBuf, usize)>,
    fingerprint: String,
}

fn list(root: &Path) -> Result<Listing, DataError> {
    let read_dir = |p: &Path| -> Result<Vec<std::fs::DirEntry>, DataError> {
        let mut v = std::fs::read_dir(p)
            .map_err(|e| DataError::io(p, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DataError::io(p, e))?;
        v.sort_by_key(|e| e.file_name());
        Ok(v)
    };
    let mut class_names = Vec::new();
    let mut files = Vec::new();
    let mut hasher = Sha256::new();
    for class_dir in read_dir(root)? {
        let path = class_dir.path();
        let name = class_dir.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        let label = class_names.len();
        class_names.push(name.clone());
        for f in read_dir(&path)? {
            let fname = f.file_name().to_string_lossy().into_owned();
            if !super::files::is_image_name(&fname) {
                continue;
            }
            let meta = f.metadata().map_err(|e| DataError::io(&f.path(), e))?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            hasher.update(format!("{name}/{fname}\0{}\0{mtime}\n", meta.len()).as_bytes());
            files.push((f.path(), label));
        }
    }
    if files.is_empty() {
        return Err(DataError::ShapeMismatch {
            path: root.to_path_buf(),
            detail: "no images found (expected ROOT/<class>/<image> files)".into(),
        });
    }
    Ok(Listing {
        class_names,
        files,
        fingerprint: hex::encode(hasher.finalize()),
    })
}

/// Decodes one image to u8 CHW with `channels` channels (1 = grey, 3 = RGB).
fn decode(path: &Path, channels: usize) -> Result<(usize, usize, Vec<u8>), DataError> {
    let img = image::open(path).map_err(|e| DataError::Decode {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if channels == 1 {
        return Ok((h, w, img.into_luma8().into_raw()));
    }
    let hwc = img.into_rgb8().into_raw();
    let mut chw = vec![0u8; hwc.len()];
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        for c in 0..3 {
            chw[c * h * w + i] = px[c];
        }
    }
    Ok((h, w, chw))
}

/// Decodes every file into one NCHW buffer on all available cores.
fn decode_all(listing: &Listing) -> Result<(ImageShape, Vec<u8>), DataError> {
    let (first, _) = &listing.files[0];
    let probe = image::open(first).map_err(|e| DataError::Decode {
        path: first.clone(),
        detail: e.to_string(),
    })?;
    // The first image decides grey vs colour; others are converted to match.
    let channels = if probe.color().has_color() { 3 } else { 1 };
    let shape = ImageShape {
        channels,
        height: probe.height() as usize,
        width: probe.width() as usize,
    };
    let per = shape.len();
    let mut images = vec![0u8; listing.files.len() * per];
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = listing.files.len().div_ceil(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = listing
            .files
            .chunks(chunk)
            .zip(images.chunks_mut(chunk * per))
            .map(|(files, out)| {
                s.spawn(move || -> Result<(), DataError> {
                    for ((path, _), dst) in files.iter().zip(out.chunks_exact_mut(per)) {
                        let (h, w, px) = decode(path, channels)?;
                        if (h, w) != (shape.height, shape.width) {
                            return Err(DataError::ShapeMismatch {
                                path: path.clone(),
                                detail: format!(
                                    "image is {h}x{w}, the folder's first image is {}x{}",
                                    shape.height, shape.width
                                ),
                            });
                        }
                        dst.copy_from_slice(&px);
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("image decoding thread panicked"))
    })?;
    Ok((shape, images))
}

/// The header line of a cache file (JSON), followed by u32 LE labels and the pixels.
#[derive(serde::Serialize, serde::Deserialize)]
struct CacheHeader {
    fingerprint: String,
    shape: ImageShape,
    class_names: Vec<String>,
    count: usize,
}

fn cache_path(cache_dir: &Path, root: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let key = hex::encode(Sha256::digest(canonical.to_string_lossy().as_bytes()));
    let stem = root
        .file_name()
        .map_or("folder".into(), |n| n.to_string_lossy().into_owned());
    cache_dir.join(format!("folder-{stem}-{}.bin", &key[..16]))
}

fn read_cache(path: &Path, listing: &Listing) -> Option<Dataset> {
    let bytes = std::fs::read(path).ok()?;
    let rest = bytes.strip_prefix(CACHE_MAGIC)?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let header: CacheHeader = serde_json::from_slice(&rest[..nl]).ok()?;
    if header.fingerprint != listing.fingerprint || header.count != listing.files.len() {
        return None;
    }
    let body = &rest[nl + 1..];
    let (labels, pixels) = body.split_at_checked(4 * header.count)?;
    let labels: Vec<usize> = labels
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    Dataset::new(
        path,
        header.shape,
        pixels.to_vec(),
        labels,
        header.class_names,
    )
    .ok()
}

fn write_cache(path: &Path, listing: &Listing, data: &Dataset) -> std::io::Result<()> {
    let header = CacheHeader {
        fingerprint: listing.fingerprint.clone(),
        shape: data.shape,
        class_names: data.class_names.clone(),
        count: data.len(),
    };
    let mut bytes = Vec::with_capacity(data.images.len() + 4 * data.len() + 256);
    bytes.write_all(CACHE_MAGIC)?;
    serde_json::to_writer(&mut bytes, &header)?;
    bytes.push(b'\n');
    for &l in &data.labels {
        bytes.extend_from_slice(&(l as u32).to_le_bytes());
    }
    bytes.extend_from_slice(&data.images);
    crate::fsutil::write_atomic(path, &bytes)
}

/// Loads an image folder (`root/<class>/<image>`), using and refreshing a decoded-array cache in
/// `cache_dir` when given. Cache failures only log a warning: the folder is the source of truth.
pub fn load_folder(root: &Path, cache_dir: Option<&Path>) -> Result<Dataset, DataError> {
    let listing = list(root)?;
    let cache = cache_dir.map(|d| cache_path(d, root));
    if let Some(hit) = cache.as_deref().and_then(|p| read_cache(p, &listing)) {
        tracing::debug!(folder = %root.display(), "decoded images read from cache");
        return Ok(hit);
    }
    let (shape, images) = decode_all(&listing)?;
    let labels = listing.files.iter().map(|(_, l)| *l).collect();
    let data = Dataset::new(root, shape, images, labels, listing.class_names.clone())?;
    if let Some(p) = cache
        && let Err(e) = write_cache(&p, &listing, &data)
    {
        tracing::warn!(cache = %p.display(), "cannot write the decoded-image cache: {e}");
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, value: u8, colour: bool) {
        if colour {
            image::RgbImage::from_fn(3, 2, |x, y| image::Rgb([value, x as u8, y as u8]))
                .save(path)
                .unwrap();
        } else {
            image::GrayImage::from_pixel(3, 2, image::Luma([value]))
                .save(path)
                .unwrap();
        }
    }

    #[test]
    fn reads_classes_in_order_and_caches_until_the_folder_changes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("set");
        for (class, n) in [("b", 2), ("a", 1)] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for i in 0..n {
                write_png(&root.join(class).join(format!("{i}.png")), 10 * i + 1, true);
            }
        }
        std::fs::write(root.join("a").join("notes.txt"), "ignored").unwrap();
        let cache = dir.path().join("cache");
        let d = load_folder(&root, Some(&cache)).unwrap();
        assert_eq!(d.class_names, vec!["a", "b"]);
        assert_eq!(d.labels, vec![0, 1, 1]);
        assert_eq!((d.shape.channels, d.shape.height, d.shape.width), (3, 2, 3));
        // CHW: red plane all = value, green plane = x, blue plane = y
        assert_eq!(
            d.image(2),
            &[11, 11, 11, 11, 11, 11, 0, 1, 2, 0, 1, 2, 0, 0, 0, 1, 1, 1]
        );
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
        assert_eq!(load_folder(&root, Some(&cache)).unwrap(), d);

        // A new file changes the fingerprint: the stale cache must not be used.
        write_png(&root.join("a").join("9.png"), 99, false);
        let d2 = load_folder(&root, Some(&cache)).unwrap();
        assert_eq!(d2.labels, vec![0, 0, 1, 1]);
        assert_eq!(&d2.image(1)[..6], &[99; 6], "grey image converted to RGB");
    }

    #[test]
    fn corrupt_cache_is_rebuilt_and_size_mismatch_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("g");
        std::fs::create_dir_all(root.join("x")).unwrap();
        write_png(&root.join("x").join("0.png"), 7, false);
        let cache = dir.path().join("cache");
        let d = load_folder(&root, Some(&cache)).unwrap();
        assert_eq!(d.shape.channels, 1);
        let entry = std::fs::read_dir(&cache).unwrap().next().unwrap().unwrap();
        let mut bytes = std::fs::read(entry.path()).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(entry.path(), &bytes).unwrap();
        assert_eq!(load_folder(&root, Some(&cache)).unwrap(), d);

        image::GrayImage::new(5, 5)
            .save(root.join("x").join("1.png"))
            .unwrap();
        assert!(matches!(
            load_folder(&root, None),
            Err(DataError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            load_folder(&dir.path().join("none"), None),
            Err(DataError::Missing { .. })
        ));
    }
}
