//! The dataset readers on the real files under `data/` (fetched by `scripts/fetch-data.sh`, which
//! `make test` runs first): label counts, split sizes and channel statistics that are published
//! for these sets, plus corruption errors on damaged copies of real files.

use std::path::Path;
use std::sync::Arc;

use caliper::data::split::{class_counts, stratified_split};
use caliper::data::{BatchIter, BatchOptions, DataError, Dataset, DatasetSpec};

fn load(spec: &str) -> Dataset {
    spec.parse::<DatasetSpec>()
        .unwrap()
        .load(Path::new("data"))
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
}

#[test]
fn mnist_has_the_canonical_label_counts_and_statistics() {
    let train = load("mnist:train");
    assert_eq!(
        (train.shape.channels, train.shape.height, train.shape.width),
        (1, 28, 28)
    );
    assert_eq!(
        train.class_counts(),
        vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    // The normalisation constants everyone uses for MNIST: 0.1307 / 0.3081.
    let s = train.channel_stats();
    assert!(
        (s.mean[0] - 0.1307).abs() < 1e-4 && (s.std[0] - 0.3081).abs() < 1e-4,
        "{s:?}"
    );
    let test = load("mnist:test");
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.class_counts()[1], 1135);
}

#[test]
fn fashion_mnist_gz_and_pneumonia_npz_load_with_their_class_names() {
    let f = load("fashion-mnist:test");
    assert_eq!(f.class_counts(), vec![1000; 10]);
    assert_eq!(f.class_names[9], "Ankle boot");
    let p = load("pneumonia:train");
    assert_eq!(p.class_counts(), vec![1214, 3494]);
    assert_eq!(p.class_names, vec!["normal", "pneumonia"]);
    assert_eq!(load("pneumonia:val").len(), 524);
    assert_eq!(load("pneumonia:test").len(), 624);
}

#[test]
fn real_split_is_stratified_and_batches_cover_it() {
    let train = load("mnist:train");
    let (tr, va) = stratified_split(&train.labels, 10, 0.1, 0).unwrap();
    assert_eq!(tr.len() + va.len(), 60_000);
    let val = train.subset(&va);
    let expected: Vec<usize> = train
        .class_counts()
        .iter()
        .map(|&n| (n as f64 * 0.1).round() as usize)
        .collect();
    assert_eq!(class_counts(&val.labels, 10), expected);
    let norm = train.subset(&tr).channel_stats();
    let batches = BatchIter::new(Arc::new(val), BatchOptions::eval(512, norm)).unwrap();
    assert_eq!(batches.len(), 12);
    let n: usize = batches.map(|b| b.labels.len()).sum();
    assert_eq!(n, va.len());
}

#[test]
fn damaged_copies_of_real_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read("data/mnist/t10k-labels-idx1-ubyte").unwrap();
    let lab = dir.path().join("labels");
    let img = dir.path().join("images");
    let images = std::fs::read("data/mnist/t10k-images-idx3-ubyte").unwrap();
    std::fs::write(&img, &images).unwrap();
    let spec = format!("idx:{},{}", img.display(), lab.display());
    let load_tmp = || spec.parse::<DatasetSpec>().unwrap().load(dir.path());

    std::fs::write(&lab, &bytes[..bytes.len() - 10]).unwrap();
    let e = load_tmp().unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Truncated {
                expected: 10_008,
                actual: 9_998,
                ..
            }
        ),
        "{e}"
    );

    let mut magic = bytes.clone();
    magic[2] = 0x0b; // i16 instead of u8
    std::fs::write(&lab, &magic).unwrap();
    assert!(matches!(
        load_tmp().unwrap_err(),
        DataError::BadMagic { .. }
    ));

    // 9,999 labels for 10,000 images.
    let mut short = bytes[..bytes.len() - 1].to_vec();
    short[4..8].copy_from_slice(&9_999u32.to_be_bytes());
    std::fs::write(&lab, &short).unwrap();
    assert!(matches!(
        load_tmp().unwrap_err(),
        DataError::ShapeMismatch { .. }
    ));

    // MNIST has ten classes: a label of 12 must be refused, not grow the class list.
    let mut bad = bytes.clone();
    bad[8 + 5] = 12;
    let labels_dir = dir.path().join("mnist");
    std::fs::create_dir_all(&labels_dir).unwrap();
    std::fs::write(labels_dir.join("t10k-labels-idx1-ubyte"), &bad).unwrap();
    std::fs::write(labels_dir.join("t10k-images-idx3-ubyte"), &images).unwrap();
    let e = "mnist:test"
        .parse::<DatasetSpec>()
        .unwrap()
        .load(dir.path())
        .unwrap_err();
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                index: 5,
                label: 12,
                classes: 10,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn cifar10_jpeg_test_folder_decodes_to_the_known_balance_and_means() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let d = caliper::data::folder::load_folder(Path::new("data/cifar10/test"), Some(dir.path()))
        .unwrap();
    eprintln!("decoded {} JPEGs in {:?}", d.len(), started.elapsed());
    assert_eq!(
        (d.shape.channels, d.shape.height, d.shape.width),
        (3, 32, 32)
    );
    assert_eq!(d.class_counts(), vec![1000; 10]);
    assert_eq!(d.class_names[0], "airplane");
    // CIFAR-10 test means are about (0.494, 0.485, 0.450); JPEG re-encoding moves them slightly.
    let s = d.channel_stats();
    for (m, want) in s.mean.iter().zip([0.494, 0.485, 0.450]) {
        assert!((m - want).abs() < 0.01, "{s:?}");
    }
    let started = std::time::Instant::now();
    let again =
        caliper::data::folder::load_folder(Path::new("data/cifar10/test"), Some(dir.path()))
            .unwrap();
    eprintln!("from cache in {:?}", started.elapsed());
    assert_eq!(again, d);
}
