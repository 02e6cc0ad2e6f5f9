//! NumPy `.npz` archives with MedMNIST keys: `{split}_images` (`[N, H, W]` grey or
//! `[N, H, W, C]` colour, u8) and `{split}_labels` (`[N]` or `[N, 1]`, any integer type), and
//! the one reader of NumPy class labels, shared with the CLI's `.npy` label files.

use std::io::{Read, Seek};
use std::path::Path;

use ndarray::{ArrayD, Axis, IxDyn};
use ndarray_npy::{NpzReader, ReadNpyError, ReadNpyExt, ReadNpzError, ReadableElement};

use super::{DataError, Dataset, ImageShape, numbered_classes};

/// Loads split `split` (e.g. `train`, `val`, `test`) of a MedMNIST-style archive. Without
/// `class_names`, the classes are `"0"..="max label"`.
pub fn load_npz(
    path: &Path,
    split: &str,
    class_names: Option<Vec<String>>,
) -> Result<Dataset, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let decode = |detail: String| DataError::Decode {
        path: path.to_path_buf(),
        detail,
    };
    let mut npz = NpzReader::new(file).map_err(|e| decode(e.to_string()))?;
    let names = npz.names().map_err(|e| decode(e.to_string()))?;
    let (ki, kl) = (format!("{split}_images"), format!("{split}_labels"));
    if !names.contains(&ki) || !names.contains(&kl) {
        return Err(DataError::ShapeMismatch {
            path: path.to_path_buf(),
            detail: format!("no arrays {ki} and {kl} (the archive holds {names:?})"),
        });
    }
    let images: ArrayD<u8> = npz
        .by_name(&ki)
        .map_err(|e| decode(format!("{ki}: {e} (images must be u8)")))?;
    let labels = read_labels(&mut NpzArray {
        npz: &mut npz,
        name: &kl,
    })
    .map_err(|e| decode(format!("{kl}: {e}")))?;

    let dims = images.shape().to_vec();
    let (shape, pixels) = match dims.as_slice() {
        [_, h, w] => (
            ImageShape {
                channels: 1,
                height: *h,
                width: *w,
            },
            images.iter().copied().collect::<Vec<u8>>(),
        ),
        [_, h, w, c] => {
            // HWC -> CHW: permute the axes, then iterate in the new logical order.
            let chw = images.permuted_axes(IxDyn(&[0, 3, 1, 2]));
            (
                ImageShape {
                    channels: *c,
                    height: *h,
                    width: *w,
                },
                chw.iter().copied().collect(),
            )
        }
        _ => {
            return Err(DataError::ShapeMismatch {
                path: path.to_path_buf(),
                detail: format!("{ki} has shape {dims:?}, expected [N, H, W] or [N, H, W, C]"),
            });
        }
    };
    if labels.len() != dims[0] {
        return Err(DataError::ShapeMismatch {
            path: path.to_path_buf(),
            detail: format!("{} labels for {} images in {split}", labels.len(), dims[0]),
        });
    }
    let class_names = class_names
        .unwrap_or_else(|| numbered_classes(labels.iter().copied().max().map_or(0, |m| m + 1)));
    Dataset::new(path, shape, pixels, labels, class_names)
}

/// Why a NumPy array does not hold class labels.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LabelError {
    /// Neither `[N]` nor `[N, 1]`.
    #[error("labels have shape {0:?}, expected [N] or [N, 1]")]
    Shape(Vec<usize>),
    /// An element type that is neither an integer nor a float (the NumPy descriptor).
    #[error("labels must be an integer array (or floats holding whole numbers), got {0}")]
    ElementType(String),
    /// The array could not be read at all (the reader's message).
    #[error("{0}")]
    Read(String),
    /// A value that is not a class index.
    #[error("label {index} is {value}; labels must be non-negative integers")]
    NotAClass { index: usize, value: f64 },
}

impl From<ReadNpyError> for LabelError {
    fn from(e: ReadNpyError) -> Self {
        match e {
            ReadNpyError::WrongDescriptor(d) => LabelError::ElementType(d.to_string()),
            e => LabelError::Read(e.to_string()),
        }
    }
}

/// One NumPy array that can be read as any element type.
trait NpyArray {
    fn read_as<T: ReadableElement>(&mut self) -> Result<ArrayD<T>, LabelError>;
}

/// A `.npy` file's bytes.
impl NpyArray for &[u8] {
    fn read_as<T: ReadableElement>(&mut self) -> Result<ArrayD<T>, LabelError> {
        Ok(ArrayD::<T>::read_npy(*self)?)
    }
}

/// One array of a `.npz` archive, by name.
struct NpzArray<'a, R: Read + Seek> {
    npz: &'a mut NpzReader<R>,
    name: &'a str,
}

impl<R: Read + Seek> NpyArray for NpzArray<'_, R> {
    fn read_as<T: ReadableElement>(&mut self) -> Result<ArrayD<T>, LabelError> {
        match self.npz.by_name(self.name) {
            Ok(a) => Ok(a),
            Err(ReadNpzError::Npy(e)) => Err(e.into()),
            Err(e) => Err(LabelError::Read(e.to_string())),
        }
    }
}

/// Class labels `[N]` or `[N, 1]` from the bytes of a `.npy` file: any integer type, or floats
/// holding whole numbers.
pub fn read_npy_labels(bytes: &[u8]) -> Result<Vec<usize>, LabelError> {
    read_labels(&mut &bytes[..])
}

/// Tries every integer (and float) element type NumPy writes; only a wrong element type moves
/// on to the next one, and the last one's error names the array's own type.
fn read_labels(array: &mut impl NpyArray) -> Result<Vec<usize>, LabelError> {
    macro_rules! try_types {
        ($($t:ty),*) => {$(
            match array.read_as::<$t>() {
                Ok(a) => return flat_labels(a.mapv(|v| v as f64)),
                Err(LabelError::ElementType(_)) => {}
                Err(e) => return Err(e),
            }
        )*};
    }
    try_types!(i64, i32, i16, i8, u64, u32, u16, u8, f64);
    flat_labels(array.read_as::<f32>()?.mapv(f64::from))
}

/// `[N]` or `[N, 1]` values as class indices.
fn flat_labels(a: ArrayD<f64>) -> Result<Vec<usize>, LabelError> {
    if a.ndim() == 1 || (a.ndim() == 2 && a.len_of(Axis(1)) == 1) {
        class_labels(&a.iter().copied().collect::<Vec<_>>())
    } else {
        Err(LabelError::Shape(a.shape().to_vec()))
    }
}

/// Class indices from numbers that must be non-negative whole numbers (labels read from `.npy`
/// or text).
pub fn class_labels(values: &[f64]) -> Result<Vec<usize>, LabelError> {
    values
        .iter()
        .enumerate()
        .map(|(index, &value)| {
            if value.fract() == 0.0 && value >= 0.0 && value < usize::MAX as f64 {
                Ok(value as usize)
            } else {
                Err(LabelError::NotAClass { index, value })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2, Array3, Array4};
    use ndarray_npy::NpzWriter;

    #[test]
    fn reads_grey_and_colour_splits_with_any_label_type() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.npz");
        let mut w = NpzWriter::new(std::fs::File::create(&p).unwrap());
        let grey = Array3::from_shape_fn((2, 2, 3), |(n, y, x)| (n * 100 + y * 10 + x) as u8);
        w.add_array("train_images", &grey).unwrap();
        w.add_array("train_labels", &Array1::from(vec![1u8, 0]))
            .unwrap();
        // colour HWC with labels [N, 1] as i64
        let rgb = Array4::from_shape_fn((1, 1, 2, 3), |(_, _, x, c)| (x * 10 + c) as u8);
        w.add_array("val_images", &rgb).unwrap();
        w.add_array("val_labels", &Array2::from_elem((1, 1), 2i64))
            .unwrap();
        w.finish().unwrap();

        let t = load_npz(&p, "train", None).unwrap();
        assert_eq!(t.shape.channels, 1);
        assert_eq!(t.image(1), &[100, 101, 102, 110, 111, 112]);
        assert_eq!(t.labels, vec![1, 0]);
        assert_eq!(t.class_names, vec!["0", "1"]);

        let v = load_npz(&p, "val", Some(numbered_classes(3))).unwrap();
        assert_eq!((v.shape.channels, v.shape.height, v.shape.width), (3, 1, 2));
        // CHW: channel 0 = [0, 10], channel 1 = [1, 11], channel 2 = [2, 12]
        assert_eq!(v.image(0), &[0, 10, 1, 11, 2, 12]);
        assert_eq!(v.labels, vec![2]);

        assert!(matches!(
            load_npz(&p, "val", Some(numbered_classes(2))),
            Err(DataError::LabelOutOfRange { label: 2, .. })
        ));
        assert!(matches!(
            load_npz(&p, "test", None),
            Err(DataError::ShapeMismatch { .. })
        ));
    }

    fn npy<T: ndarray_npy::WritableElement, D: ndarray::Dimension>(
        a: &ndarray::Array<T, D>,
    ) -> Vec<u8> {
        use ndarray_npy::WriteNpyExt;
        let mut bytes = Vec::new();
        a.write_npy(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn npy_labels_of_any_integer_type_or_whole_floats() {
        assert_eq!(
            read_npy_labels(&npy(&Array1::from(vec![3u16, 0]))),
            Ok(vec![3, 0])
        );
        assert_eq!(
            read_npy_labels(&npy(&Array2::from_elem((2, 1), 7u64))),
            Ok(vec![7, 7])
        );
        assert_eq!(
            read_npy_labels(&npy(&Array1::from(vec![2.0f32]))),
            Ok(vec![2])
        );
        assert_eq!(
            read_npy_labels(&npy(&Array1::from(vec![1i8, -1]))),
            Err(LabelError::NotAClass {
                index: 1,
                value: -1.0
            })
        );
        assert_eq!(
            read_npy_labels(&npy(&Array1::from(vec![0.5f64]))),
            Err(LabelError::NotAClass {
                index: 0,
                value: 0.5
            })
        );
        assert_eq!(
            read_npy_labels(&npy(&Array2::from_elem((2, 3), 1i32))),
            Err(LabelError::Shape(vec![2, 3]))
        );
        assert!(matches!(
            read_npy_labels(&npy(&Array1::from(vec![true]))),
            Err(LabelError::ElementType(_))
        ));
        assert!(matches!(
            read_npy_labels(b"not npy"),
            Err(LabelError::Read(_))
        ));
    }

    #[test]
    fn npz_labels_must_be_class_indices() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.npz");
        let mut w = NpzWriter::new(std::fs::File::create(&p).unwrap());
        w.add_array("train_images", &Array3::<u8>::zeros((2, 1, 1)))
            .unwrap();
        w.add_array("train_labels", &Array1::from(vec![0i16, -3]))
            .unwrap();
        w.finish().unwrap();
        let err = load_npz(&p, "train", None).unwrap_err().to_string();
        assert!(
            err.contains("train_labels: label 1 is -3; labels must be non-negative"),
            "{err}"
        );
    }
}
