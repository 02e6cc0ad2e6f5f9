//! Datasets: IDX, NPZ, image folders, image-file lists (folders, manifests) and CIFAR-10 binaries; seeded splits, long-tailed
//! subsampling, augmentation and the dataset specs shared by the trainer and the CLI.
//!
//! Every reader produces the same in-memory [`Dataset`] (u8 images in NCHW order, one label per
//! image, class names). A [`DatasetSpec`] such as `mnist:train` or `folder:PATH` names a dataset
//! on the command line; its grammar is documented in `docs/DATA.md`. [`split`] holds the seeded
//! index selections (validation split, long tail, subsets) and [`batch`] the augmenting batch
//! iterator that prepares f32 batches on worker threads.

pub mod batch;
pub mod cifar;
pub mod files;
pub mod folder;
pub mod idx;
pub mod npz;
pub mod spec;
pub mod split;

use std::path::{Path, PathBuf};

pub use batch::{Augment, Batch, BatchIter, BatchOptions, Normalization};
pub use files::ImageFiles;
pub use spec::DatasetSpec;

/// Everything that can go wrong while reading or preparing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A dataset file or folder does not exist (the usual cause: the data was never fetched).
    #[error(
        "{path} not found: run scripts/fetch-data.sh (or pass --data-dir) to fetch the datasets"
    )]
    Missing {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// Reading a file failed for another reason than its absence.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not start with the bytes its format requires.
    #[error("{path}: bad magic number: {detail}")]
    BadMagic {
        /// The file being read.
        path: PathBuf,
        /// What was found instead of what was expected.
        detail: String,
    },
    /// The file ends before its header says it should (or has a partial record).
    #[error("{path}: truncated: expected {expected} bytes, found {actual}")]
    Truncated {
        /// The file being read.
        path: PathBuf,
        /// Bytes the header (or record size) requires.
        expected: u64,
        /// Bytes actually present.
        actual: u64,
    },
    /// A label is not a valid class index.
    #[error(
        "{path}: label {label} of image {index} is out of range (dataset has {classes} classes)"
    )]
    LabelOutOfRange {
        /// The file holding the labels.
        path: PathBuf,
        /// Position of the offending label.
        index: usize,
        /// The offending label.
        label: u64,
        /// Number of classes of the dataset.
        classes: usize,
    },
    /// Shapes do not fit together (image count vs label count, differing image sizes, ...).
    #[error("{path}: shape mismatch: {detail}")]
    ShapeMismatch {
        /// The file or folder concerned.
        path: PathBuf,
        /// What does not match.
        detail: String,
    },
    /// A file could not be decoded (bad NPZ archive, broken image, unsupported element type).
    #[error("{path}: cannot decode: {detail}")]
    Decode {
        /// The file concerned.
        path: PathBuf,
        /// The decoder's message.
        detail: String,
    },
    /// A dataset spec string could not be parsed.
    #[error("invalid dataset spec {spec:?}: {reason} (see docs/DATA.md)")]
    Spec {
        /// The spec as given.
        spec: String,
        /// Why it was rejected.
        reason: String,
    },
    /// An option is outside its valid range (fractions, ratios, batch sizes).
    #[error("invalid data option: {0}")]
    InvalidOption(String),
}

impl DataError {
    /// Maps an I/O error on `path`, turning "not found" into [`DataError::Missing`].
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Size of one image: channels, height, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    /// Number of channels (1 for grey, 3 for RGB).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl ImageShape {
    /// Number of values in one image (C * H * W).
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// True when the shape has no pixels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An in-memory labelled image set: u8 images `[N, C, H, W]` (row-major, contiguous), one label
/// per image and the class names (label `k` is `class_names[k]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Shape of each image.
    pub shape: ImageShape,
    /// All pixels, image after image, each image channel-major (NCHW).
    pub images: Vec<u8>,
    /// Class index of each image, every one `< class_names.len()`.
    pub labels: Vec<usize>,
    /// Names of the classes in label order.
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Builds a dataset after checking that the pieces fit together (`origin` names the source in
    /// errors).
    pub fn new(
        origin: &Path,
        shape: ImageShape,
        images: Vec<u8>,
        labels: Vec<usize>,
        class_names: Vec<String>,
    ) -> Result<Self, DataError> {
        let mismatch = |detail: String| DataError::ShapeMismatch {
            path: origin.to_path_buf(),
            detail,
        };
        if shape.is_empty() {
            return Err(mismatch(format!("empty image shape {shape:?}")));
        }
        if images.len() != labels.len() * shape.len() {
            return Err(mismatch(format!(
                "{} pixel values for {} labels of {} values each",
                images.len(),
                labels.len(),
                shape.len()
            )));
        }
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l >= class_names.len())
        {
            return Err(DataError::LabelOutOfRange {
                path: origin.to_path_buf(),
                index,
                label: label as u64,
                classes: class_names.len(),
            });
        }
        Ok(Dataset {
            shape,
            images,
            labels,
            class_names,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The pixels of image `i` (`C * H * W` values). Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Image `i` as a decoded image (grey for one channel, RGB for three; any other count: the
    /// first channel as grey), for the model's preprocessing. Panics if `i >= len()`.
    pub fn to_image(&self, i: usize) -> image::DynamicImage {
        let (h, w) = (self.shape.height as u32, self.shape.width as u32);
        let px = self.image(i);
        let plane = self.shape.height * self.shape.width;
        if self.shape.channels == 3 {
            let hwc: Vec<u8> = (0..plane)
                .flat_map(|p| [px[p], px[plane + p], px[2 * plane + p]])
                .collect();
            image::RgbImage::from_raw(w, h, hwc).map_or_else(
                || image::DynamicImage::new_rgb8(w, h),
                image::DynamicImage::ImageRgb8,
            )
        } else {
            image::GrayImage::from_raw(w, h, px[..plane].to_vec()).map_or_else(
                || image::DynamicImage::new_luma8(w, h),
                image::DynamicImage::ImageLuma8,
            )
        }
    }

    /// Number of images of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        split::class_counts(&self.labels, self.num_classes())
    }

    /// A new dataset with the images at `indices`, in that order (same classes). Panics on an
    /// index out of range: indices come from this crate's split functions, not from users.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.shape.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            shape: self.shape,
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
        }
    }

    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1] (the normalisation
    /// statistics; compute them on the training split only).
    pub fn channel_stats(&self) -> Normalization {
        let c = self.shape.channels;
        let plane = self.shape.height * self.shape.width;
        // Integer histograms per channel: exact and fast, then mean/var from 256 bins.
        let mut hist = vec![[0u64; 256]; c];
        for img in self.images.chunks_exact(self.shape.len()) {
            for (ch, h) in hist.iter_mut().enumerate() {
                for &v in &img[ch * plane..(ch + 1) * plane] {
                    h[v as usize] += 1;
                }
            }
        }
        let mut mean = Vec::with_capacity(c);
        let mut std = Vec::with_capacity(c);
        for h in &hist {
            let n: u64 = h.iter().sum();
            let n = n.max(1) as f64;
            let m = h
                .iter()
                .enumerate()
                .map(|(v, &k)| v as f64 / 255.0 * k as f64)
                .sum::<f64>()
                / n;
            let var = h
                .iter()
                .enumerate()
                .map(|(v, &k)| (v as f64 / 255.0 - m).powi(2) * k as f64)
                .sum::<f64>()
                / n;
            mean.push(m as f32);
            std.push(var.sqrt().max(1e-6) as f32);
        }
        Normalization { mean, std }
    }
}

/// Default class names `"0"`, `"1"`, ... for sets whose files carry no names.
pub fn numbered_classes(k: usize) -> Vec<String> {
    (0..k).map(|i| i.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dataset {
        let shape = ImageShape {
            channels: 2,
            height: 1,
            width: 2,
        };
        // image 0: ch0 = [0, 255], ch1 = [51, 51]; image 1: ch0 = [255, 255], ch1 = [0, 102]
        Dataset::new(
            Path::new("tiny"),
            shape,
            vec![0, 255, 51, 51, 255, 255, 0, 102],
            vec![1, 0],
            numbered_classes(2),
        )
        .unwrap()
    }

    #[test]
    fn channel_stats_match_hand_computation() {
        let s = tiny().channel_stats();
        // ch0 values 0,1,1,1: mean 0.75, var 0.1875; ch1 values 0.2,0.2,0,0.4: mean 0.2, var 0.02
        assert!((s.mean[0] - 0.75).abs() < 1e-6 && (s.std[0] - 0.1875f32.sqrt()).abs() < 1e-6);
        assert!((s.mean[1] - 0.2).abs() < 1e-6 && (s.std[1] - 0.02f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn to_image_interleaves_the_planes() {
        let shape = ImageShape {
            channels: 3,
            height: 1,
            width: 2,
        };
        let d = Dataset::new(
            Path::new("x"),
            shape,
            vec![1, 2, 3, 4, 5, 6],
            vec![0],
            numbered_classes(1),
        )
        .unwrap();
        assert_eq!(d.to_image(0).to_rgb8().into_raw(), vec![1, 3, 5, 2, 4, 6]);
        assert_eq!(tiny().to_image(1).to_luma8().into_raw(), vec![255, 255]);
    }

    #[test]
    fn subset_copies_images_and_labels_in_order() {
        let d = tiny();
        let s = d.subset(&[1, 0, 1]);
        assert_eq!(s.labels, vec![0, 1, 0]);
        assert_eq!(s.image(0), d.image(1));
        assert_eq!(s.image(1), d.image(0));
        assert_eq!(s.class_counts(), vec![2, 1]);
    }

    #[test]
    fn new_rejects_bad_labels_and_sizes() {
        let shape = ImageShape {
            channels: 1,
            height: 1,
            width: 1,
        };
        let e = Dataset::new(
            Path::new("x"),
            shape,
            vec![0, 0],
            vec![0, 3],
            numbered_classes(2),
        );
        assert!(matches!(
            e,
            Err(DataError::LabelOutOfRange {
                index: 1,
                label: 3,
                ..
            })
        ));
        let e = Dataset::new(
            Path::new("x"),
            shape,
            vec![0],
            vec![0, 1],
            numbered_classes(2),
        );
        assert!(matches!(e, Err(DataError::ShapeMismatch { .. })));
    }
}
