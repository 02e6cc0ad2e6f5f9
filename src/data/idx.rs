//! IDX files (the MNIST format), raw or gzipped: two zero bytes, the element type (0x08 = u8),
//! the number of dimensions, each dimension as a big-endian u32, then the data.

use std::io::Read;
use std::path::Path;

use super::{DataError, Dataset, ImageShape, numbered_classes};

/// The only element type the image sets use: unsigned bytes.
const TYPE_U8: u8 = 0x08;

/// A decoded IDX array of bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions from the header, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic bytes.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::Decode {
                path: path.to_path_buf(),
                detail: format!("gzip: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Reads an IDX file of u8 values (raw or .gz), checking the header and the length.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    parse_idx(path, &read_maybe_gz(path)?)
}

/// Parses IDX bytes; `path` only names the source in errors.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<IdxArray, DataError> {
    let truncated = |expected: u64| DataError::Truncated {
        path: path.to_path_buf(),
        expected,
        actual: bytes.len() as u64,
    };
    if bytes.len() < 4 {
        return Err(truncated(4));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            detail: format!(
                "expected 00 00 at the start, found {:02x} {:02x}",
                bytes[0], bytes[1]
            ),
        });
    }
    if bytes[2] != TYPE_U8 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            detail: format!(
                "element type 0x{:02x} is not supported (only 0x08 = u8)",
                bytes[2]
            ),
        });
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            detail: "zero dimensions".into(),
        });
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(truncated(header as u64));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::ShapeMismatch {
            path: path.to_path_buf(),
            detail: format!("dimensions {dims:?} overflow"),
        })?;
    let expected = header as u64 + count as u64;
    if (bytes.len() as u64) < expected {
        return Err(truncated(expected));
    }
    if (bytes.len() as u64) > expected {
        return Err(DataError::ShapeMismatch {
            path: path.to_path_buf(),
            detail: format!(
                "{} trailing bytes after the {dims:?} array",
                bytes.len() as u64 - expected
            ),
        });
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Loads an image IDX file `[N, H, W]` and a label IDX file `[N]` into a grey-scale dataset.
/// Without `class_names`, the classes are `"0"..="max label"`; with them, every label must be
/// below their count.
pub fn load_idx_pair(
    images_path: &Path,
    labels_path: &Path,
    class_names: Option<Vec<String>>,
) -> Result<Dataset, DataError> {
    let images = read_idx(images_path)?;
    let labels = read_idx(labels_path)?;
    if images.dims.len() != 3 {
        return Err(DataError::ShapeMismatch {
            path: images_path.to_path_buf(),
            detail: format!("expected images [N, H, W], found {:?}", images.dims),
        });
    }
    if labels.dims.len() != 1 {
        return Err(DataError::ShapeMismatch {
            path: labels_path.to_path_buf(),
            detail: format!("expected labels [N], found {:?}", labels.dims),
        });
    }
    if labels.dims[0] != images.dims[0] {
        return Err(DataError::ShapeMismatch {
            path: labels_path.to_path_buf(),
            detail: format!(
                "{} labels for {} images in {}",
                labels.dims[0],
                images.dims[0],
                images_path.display()
            ),
        });
    }
    let labels: Vec<usize> = labels.data.iter().map(|&l| l as usize).collect();
    let class_names = class_names
        .unwrap_or_else(|| numbered_classes(labels.iter().copied().max().map_or(0, |m| m + 1)));
    let shape = ImageShape {
        channels: 1,
        height: images.dims[1],
        width: images.dims[2],
    };
    Dataset::new(labels_path, shape, images.data, labels, class_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, TYPE_U8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn parses_a_hand_made_array() {
        let a = parse_idx(Path::new("t"), &idx_bytes(&[2, 3], &[1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn rejects_corrupt_headers() {
        let p = Path::new("t");
        let mut bad = idx_bytes(&[2], &[1, 2]);
        bad[1] = 8;
        assert!(matches!(
            parse_idx(p, &bad),
            Err(DataError::BadMagic { .. })
        ));
        let mut f32_type = idx_bytes(&[2], &[1, 2]);
        f32_type[2] = 0x0d;
        assert!(matches!(
            parse_idx(p, &f32_type),
            Err(DataError::BadMagic { .. })
        ));
        assert!(matches!(
            parse_idx(p, &idx_bytes(&[3], &[1, 2])),
            Err(DataError::Truncated {
                expected: 11,
                actual: 10,
                ..
            })
        ));
        assert!(matches!(
            parse_idx(p, &[0, 0, 8, 2, 0, 0]),
            Err(DataError::Truncated { expected: 12, .. })
        ));
        assert!(matches!(
            parse_idx(p, &idx_bytes(&[1], &[1, 2])),
            Err(DataError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn gzip_and_raw_read_the_same() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let bytes = idx_bytes(&[2, 2], &[9, 8, 7, 6]);
        let raw = dir.path().join("a");
        std::fs::write(&raw, &bytes).unwrap();
        let gz = dir.path().join("a.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(read_idx(&raw).unwrap(), read_idx(&gz).unwrap());
        assert!(matches!(
            read_idx(&dir.path().join("nope")),
            Err(DataError::Missing { .. })
        ));
    }
}
