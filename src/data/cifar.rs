//! CIFAR-10 binary batches (`data_batch_1.bin` ... `test_batch.bin`): records of one label byte
//! followed by 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major 32x32), i.e. already
//! CHW. Class names come from `batches.meta.txt` beside the batches when it is present.

use std::path::Path;

use super::{DataError, Dataset, ImageShape};

/// CIFAR-10's classes in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
const SHAPE: ImageShape = ImageShape {
    channels: 3,
    height: 32,
    width: 32,
};

/// Loads and concatenates CIFAR-10 binary batch files, in the order given.
pub fn load_cifar10_bin(files: &[&Path]) -> Result<Dataset, DataError> {
    let Some(first) = files.first() else {
        return Err(DataError::InvalidOption(
            "no CIFAR-10 batch files given".into(),
        ));
    };
    let record = 1 + SHAPE.len();
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for &path in files {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            let whole = bytes.len().div_ceil(record).max(1) * record;
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                expected: whole as u64,
                actual: bytes.len() as u64,
            });
        }
        for (i, r) in bytes.chunks_exact(record).enumerate() {
            if r[0] as usize >= CIFAR10_CLASSES.len() {
                return Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    index: i,
                    label: r[0] as u64,
                    classes: CIFAR10_CLASSES.len(),
                });
            }
            labels.push(r[0] as usize);
            images.extend_from_slice(&r[1..]);
        }
    }
    let meta = first.with_file_name("batches.meta.txt");
    let names: Vec<String> = std::fs::read_to_string(&meta)
        .map(|s| {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let class_names = if names.len() == CIFAR10_CLASSES.len() {
        names
    } else {
        CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect()
    };
    Dataset::new(first, SHAPE, images, labels, class_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_and_rejects_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = vec![3u8];
        rec.extend((0..3072).map(|i| (i % 251) as u8));
        let a = dir.path().join("a.bin");
        std::fs::write(&a, [rec.clone(), rec.clone()].concat()).unwrap();
        let d = load_cifar10_bin(&[&a, &a]).unwrap();
        assert_eq!(d.labels, vec![3; 4]);
        assert_eq!(d.image(3), &rec[1..]);
        assert_eq!(d.class_names[3], "cat");

        let t = dir.path().join("t.bin");
        std::fs::write(&t, &rec[..100]).unwrap();
        assert!(matches!(
            load_cifar10_bin(&[&t]),
            Err(DataError::Truncated {
                expected: 3073,
                actual: 100,
                ..
            })
        ));
        rec[0] = 10;
        std::fs::write(&t, &rec).unwrap();
        assert!(matches!(
            load_cifar10_bin(&[&t]),
            Err(DataError::LabelOutOfRange { label: 10, .. })
        ));
    }
}
