//! The trainer's view of a dataset: images as f32 in [0, 1], labels, the class names, plus the
//! seeded split, normalisation and batch gathering the loop needs.
//!
//! TEMPORARY SHIM: reads MNIST-style IDX files (raw or .gz) directly. To be replaced by
//! `caliper::data` (owned by the data engineer) once it is on main; only `load_idx_dir` touches
//! the file formats.

use std::io::Read;
use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;

/// Errors loading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not what its name promises.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The dataset spec is unknown.
    #[error("unknown dataset {0:?} (expected mnist or fashion-mnist)")]
    Unknown(String),
}

/// Images and labels of one split.
#[derive(Debug, Clone)]
pub struct Split {
    /// Row-major `[n, C, H, W]` pixels in [0, 1].
    pub images: Vec<f32>,
    /// Labels in `0..classes`.
    pub labels: Vec<i64>,
    /// Per-sample shape `[C, H, W]`.
    pub shape: [usize; 3],
}

impl Split {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Values per sample.
    pub fn sample_len(&self) -> usize {
        self.shape.iter().product()
    }
    /// The samples at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Split {
        let d = self.sample_len();
        let mut images = Vec::with_capacity(idx.len() * d);
        for &i in idx {
            images.extend_from_slice(&self.images[i * d..(i + 1) * d]);
        }
        Split {
            images,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            shape: self.shape,
        }
    }
}

/// A dataset with its train and test splits.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Spec name, e.g. "mnist".
    pub name: String,
    /// Class names in label order.
    pub labels: Vec<String>,
    /// The training split.
    pub train: Split,
    /// The test split.
    pub test: Split,
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DatasetError> {
    let io = |source| DatasetError::Io {
        path: path.display().to_string(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of u8 elements: returns the dimensions and the data.
fn parse_idx(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<u8>), DatasetError> {
    let bad = |reason: String| DatasetError::Format {
        path: path.display().to_string(),
        reason,
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad("not an IDX file of unsigned bytes".into()));
    }
    let nd = bytes[3] as usize;
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() != header + n {
        return Err(bad(format!(
            "expected {} data bytes for dims {dims:?}, found {}",
            n,
            bytes.len() - header
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn find(dir: &Path, stem: &str) -> std::path::PathBuf {
    let plain = dir.join(stem);
    if plain.exists() {
        plain
    } else {
        dir.join(format!("{stem}.gz"))
    }
}

fn load_split(dir: &Path, prefix: &str) -> Result<Split, DatasetError> {
    let ip = find(dir, &format!("{prefix}-images-idx3-ubyte"));
    let lp = find(dir, &format!("{prefix}-labels-idx1-ubyte"));
    let (idims, ibytes) = parse_idx(&read_maybe_gz(&ip)?, &ip)?;
    let (ldims, lbytes) = parse_idx(&read_maybe_gz(&lp)?, &lp)?;
    if idims.len() != 3 || ldims.len() != 1 || idims[0] != ldims[0] {
        return Err(DatasetError::Format {
            path: ip.display().to_string(),
            reason: format!("image dims {idims:?} do not match label dims {ldims:?}"),
        });
    }
    Ok(Split {
        images: ibytes.iter().map(|&b| b as f32 / 255.0).collect(),
        labels: lbytes.iter().map(|&b| b as i64).collect(),
        shape: [1, idims[1], idims[2]],
    })
}

/// Loads `mnist` or `fashion-mnist` from `data_dir/<name>/`.
pub fn load(name: &str, data_dir: &Path) -> Result<Dataset, DatasetError> {
    let labels: Vec<String> = match name {
        "mnist" => (0..10).map(|d| d.to_string()).collect(),
        "fashion-mnist" => [
            "t-shirt",
            "trouser",
            "pullover",
            "dress",
            "coat",
            "sandal",
            "shirt",
            "sneaker",
            "bag",
            "ankle-boot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        other => return Err(DatasetError::Unknown(other.into())),
    };
    let dir = data_dir.join(name);
    let train = load_split(&dir, "train")?;
    let test = load_split(&dir, "t10k")?;
    for s in [&train, &test] {
        if let Some(&bad) = s
            .labels
            .iter()
            .find(|&&l| l < 0 || l as usize >= labels.len())
        {
            return Err(DatasetError::Format {
                path: dir.display().to_string(),
                reason: format!("label {bad} out of range"),
            });
        }
    }
    Ok(Dataset {
        name: name.into(),
        labels,
        train,
        test,
    })
}

/// A seeded split of `0..n` into (train, validation) index lists; `val_fraction` of the samples
/// go to validation.
pub fn split_indices(n: usize, val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ SPLIT_SALT);
    idx.shuffle(&mut rng);
    let nv = ((n as f64) * val_fraction).round() as usize;
    let val = idx[..nv].to_vec();
    let mut train = idx[nv..].to_vec();
    train.sort_unstable();
    (train, val)
}

/// Mixed into the split seed so that the split and the initialisation draw different streams.
const SPLIT_SALT: u64 = 0x5eed_0000_0051_1700;

/// Per-channel mean and standard deviation of a split (computed on the training split only).
pub fn channel_stats(s: &Split) -> (Vec<f32>, Vec<f32>) {
    let [c, h, w] = s.shape;
    let hw = h * w;
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    for (i, v) in s.images.iter().enumerate() {
        let ch = (i / hw) % c;
        sum[ch] += *v as f64;
        sq[ch] += (*v as f64) * (*v as f64);
    }
    let count = (s.len() * hw) as f64;
    let mean: Vec<f64> = sum.iter().map(|x| x / count).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| ((q / count - m * m).max(1e-12)).sqrt() as f32)
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), std)
}

/// Normalised pixels of the samples `idx` (row-major `[idx.len(), C, H, W]`).
pub fn gather(s: &Split, idx: &[usize], mean: &[f32], std: &[f32]) -> (Vec<f32>, Vec<i64>) {
    let d = s.sample_len();
    let hw = s.shape[1] * s.shape[2];
    let mut x = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        for (j, v) in s.images[i * d..(i + 1) * d].iter().enumerate() {
            let c = j / hw;
            x.push((v - mean[c]) / std[c]);
        }
    }
    (x, idx.iter().map(|&i| s.labels[i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_seeded_disjoint_and_complete() {
        let (t, v) = split_indices(100, 0.1, 7);
        assert_eq!((t.len(), v.len()), (90, 10));
        let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(split_indices(100, 0.1, 7), (t, v.clone()));
        assert_ne!(split_indices(100, 0.1, 8).1, v);
    }

    #[test]
    fn idx_parser_rejects_bad_headers_and_sizes() {
        let p = Path::new("x");
        let good = [0u8, 0, 8, 1, 0, 0, 0, 2, 5, 6];
        assert_eq!(parse_idx(&good, p).unwrap(), (vec![2], vec![5, 6]));
        assert!(parse_idx(&good[..9], p).is_err());
        assert!(parse_idx(&[0, 0, 9, 1, 0, 0, 0, 0], p).is_err());
        assert!(parse_idx(&[1, 2], p).is_err());
    }
}
