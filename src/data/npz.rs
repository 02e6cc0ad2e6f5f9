//! NumPy `.npz` archives with MedMNIST keys: `{split}_images` (`[N, H, W]` grey or
//! `[N, H, W, C]` colour, u8) and `{split}_labels` (`[N]` or `[N, 1]`, any integer type).

use std::path::Path;

use ndarray::{ArrayD, Axis, IxDyn};
use ndarray_npy::{NpzReader, ReadNpzError};

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
    let labels = read_labels(&mut npz, &kl).map_err(|e| decode(format!("{kl}: {e}")))?;

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
    let mut out = Vec::with_capacity(labels.len());
    for (index, &l) in labels.iter().enumerate() {
        if l < 0 {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                index,
                label: l as u64,
                classes: class_names.as_ref().map_or(0, Vec::len),
            });
        }
        out.push(l as usize);
    }
    let class_names = class_names
        .unwrap_or_else(|| numbered_classes(out.iter().copied().max().map_or(0, |m| m + 1)));
    Dataset::new(path, shape, pixels, out, class_names)
}

/// Reads a label array of any common integer type, flattening `[N, 1]` to `[N]`.
fn read_labels(npz: &mut NpzReader<std::fs::File>, name: &str) -> Result<Vec<i64>, String> {
    fn flat<T: Copy + Into<i64>>(a: ArrayD<T>) -> Result<Vec<i64>, String> {
        if a.ndim() == 1 || (a.ndim() == 2 && a.len_of(Axis(1)) == 1) {
            Ok(a.iter().map(|&v| v.into()).collect())
        } else {
            Err(format!(
                "labels have shape {:?}, expected [N] or [N, 1]",
                a.shape()
            ))
        }
    }
    // Try each integer type in turn; only a wrong element type moves on to the next one.
    macro_rules! try_type {
        ($t:ty) => {
            match npz.by_name::<ndarray::OwnedRepr<$t>, IxDyn>(name) {
                Ok(a) => return flat(a),
                Err(ReadNpzError::Npy(ndarray_npy::ReadNpyError::WrongDescriptor(_))) => {}
                Err(e) => return Err(e.to_string()),
            }
        };
    }
    try_type!(u8);
    try_type!(i64);
    try_type!(i32);
    try_type!(u32);
    try_type!(u16);
    try_type!(i16);
    try_type!(i8);
    Err("labels must be an integer array".into())
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
}
