use super::*;
use crate::runtime::onnx_proto::{Dimension, TensorShapeProto};

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/mnist-mlp/model.onnx"),
    )
    .unwrap()
}

/// The fixture MLP (784-32-10) with its logits as the only output, edited by `edit`.
fn model_with(edit: impl FnOnce(&mut GraphProto)) -> Vec<u8> {
    let mut m = ModelProto::decode(fixture_bytes().as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    g.output.retain(|o| o.name == "logits");
    edit(g);
    m.encode_to_vec()
}

fn set_input(g: &mut GraphProto, elem_type: i32, dims: &[i64]) {
    let t = g.input[0]
        .r#type
        .as_mut()
        .unwrap()
        .tensor_type
        .as_mut()
        .unwrap();
    t.elem_type = elem_type;
    t.shape = Some(TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| Dimension {
                value: Some(if d < 0 {
                    DimValue::DimParam("d".into())
                } else {
                    DimValue::DimValue(d)
                }),
            })
            .collect(),
    });
}

fn opts(dir: &Path, source: &Path, labels: usize) -> ImportOptions {
    ImportOptions {
        source: source.to_path_buf(),
        name: "mlp".into(),
        labels: (0..labels).map(|i| format!("digit {i}")).collect(),
        models_dir: dir.join("models"),
        preprocessing: Preprocessing {
            mean: vec![0.1307],
            std: vec![0.3081],
            resize: ResizePolicy::Stretch,
            resize_shorter: None,
        },
        input_size: None,
        logits: None,
        features: FeatureChoice::None,
        version: "1".into(),
        command: "test".into(),
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn features_auto_adds_the_final_gemm_input_as_an_output() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = model_with(|_| {});
    let src = write(dir.path(), "m.onnx", &bytes);
    let mut o = opts(dir.path(), &src, 10);
    o.features = FeatureChoice::Auto;
    let done = import(&o).unwrap();
    assert_eq!(done.metadata.output.features.as_deref(), Some("features"));
    assert_eq!(done.added_outputs, vec!["features".to_string()]);
    assert_eq!(done.features_dim, Some(32));
    // The written file is the source plus the appended output; the provenance says both.
    let written = std::fs::read(done.dir.join("model.onnx")).unwrap();
    assert_eq!(&written[..bytes.len()], bytes.as_slice());
    let meta = ModelMetadata::load(&done.dir.join("model.toml")).unwrap();
    assert_eq!(meta, done.metadata);
    assert_eq!(
        meta.provenance.source_sha256,
        hex::encode(Sha256::digest(&bytes))
    );
    assert_eq!(
        meta.provenance.sha256,
        hex::encode(Sha256::digest(&written))
    );
    assert_eq!(
        (meta.input.height, meta.input.width, meta.input.channels),
        (28, 28, 1)
    );
    // The same features the original fixture exports, on a real input.
    let mut orig = ClassifierSession::new(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/mnist-mlp/model.onnx"),
        "input",
        "logits",
        [1, 28, 28],
        1,
    )
    .unwrap()
    .with_features("features")
    .unwrap();
    let mut ours = ClassifierSession::new(
        &done.dir.join("model.onnx"),
        "input",
        "logits",
        [1, 28, 28],
        1,
    )
    .unwrap()
    .with_features("features")
    .unwrap();
    let x: Vec<f32> = (0..784).map(|i| (i % 17) as f32 / 17.0).collect();
    assert_eq!(orig.run_outputs(&x).unwrap(), ours.run_outputs(&x).unwrap());
    // A second import to the same name is refused.
    assert!(matches!(import(&o), Err(ImportError::Exists(_))));
}

#[test]
fn a_label_count_that_differs_from_the_outputs_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "m.onnx", &model_with(|_| {}));
    let e = import(&opts(dir.path(), &src, 9)).unwrap_err();
    assert!(e.to_string().contains("9 labels for 10 outputs"), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("models"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Appends a Softmax after the logits and makes its output the graph's only output.
fn with_softmax(g: &mut GraphProto) {
    g.node.push(NodeProto {
        input: vec!["logits".into()],
        output: vec!["probs".into()],
        op_type: "Softmax".into(),
        ..Default::default()
    });
    g.output = vec![ValueInfoProto {
        name: "probs".into(),
        ..Default::default()
    }];
}

#[test]
fn a_channels_last_graph_with_a_softmax_head_is_served_from_its_logits() {
    let dir = tempfile::tempdir().unwrap();
    // One channel: [N, 28, 28, 1] flattens to the same 784 values as [N, 1, 28, 28].
    let src = write(
        dir.path(),
        "keras.onnx",
        &model_with(|g| {
            set_input(g, DT_FLOAT, &[-1, 28, 28, 1]);
            with_softmax(g);
        }),
    );
    let done = import(&opts(dir.path(), &src, 10)).unwrap();
    let m = &done.metadata;
    assert_eq!((m.input.layout.as_str(), m.input.channels), ("NHWC", 1));
    assert_eq!(m.output.logits, "logits");
    assert!(done.notes[0].contains("is a Softmax"), "{:?}", done.notes);
    let image: Vec<f32> = (0..784).map(|i| (i % 7) as f32 / 7.0).collect();
    let run = |path: &Path, channels_last: bool| {
        ClassifierSession::new(path, "input", "logits", [1, 28, 28], 1)
            .and_then(|s| s.channels_last(channels_last))
            .unwrap()
            .run(&image)
            .unwrap()
    };
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/mnist-mlp/model.onnx");
    assert_eq!(
        run(&done.dir.join("model.onnx"), true),
        run(&fixture, false)
    );
}

#[test]
fn logits_shaped_n_k_1_1_are_served_as_n_k() {
    use crate::runtime::onnx_proto::TensorProto;
    // Unsqueeze [N, 10] to [N, 10, 1, 1], as graphs ending in a 1x1 convolution answer.
    let axes: Vec<u8> = [2i64, 3].iter().flat_map(|a| a.to_le_bytes()).collect();
    let bytes = model_with(|g| {
        g.initializer.push(TensorProto {
            dims: vec![2],
            data_type: 7, // int64
            name: "axes".into(),
            raw_data: axes,
        });
        g.node.push(NodeProto {
            input: vec!["logits".into(), "axes".into()],
            output: vec!["logits4d".into()],
            op_type: "Unsqueeze".into(),
            ..Default::default()
        });
        g.output = vec![ValueInfoProto {
            name: "logits4d".into(),
            ..Default::default()
        }];
    });
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "conv-head.onnx", &bytes);
    let done = import(&opts(dir.path(), &src, 10)).unwrap();
    assert_eq!(done.metadata.output.logits, "logits4d");
    let mut s = ClassifierSession::new(
        &done.dir.join("model.onnx"),
        "input",
        "logits4d",
        [1, 28, 28],
        1,
    )
    .unwrap();
    let (logits, k) = s.run(&vec![0.3; 2 * 784]).unwrap();
    assert_eq!((logits.len(), k), (20, 10));
}

#[test]
fn refuses_what_the_server_cannot_feed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            model_with(|g| set_input(g, DT_FLOAT, &[-1, 784])),
            "4-D [N, C, H, W]",
        ),
        (
            model_with(|g| set_input(g, 2, &[-1, 1, 28, 28])),
            "is uint8; caliper feeds float32",
        ),
        (
            model_with(|g| set_input(g, DT_FLOAT, &[-1, 28, 28, 5])),
            "channels in dimension 1 (NCHW) or 3 (NHWC)",
        ),
        (
            model_with(|g| set_input(g, DT_FLOAT, &[-1, 1, -1, -1])),
            "--input-size H,W",
        ),
        (b"not a model".to_vec(), "not an ONNX model"),
    ];
    for (i, (bytes, want)) in cases.into_iter().enumerate() {
        let src = write(dir.path(), &format!("m{i}.onnx"), &bytes);
        let e = import(&opts(dir.path(), &src, 10)).unwrap_err().to_string();
        assert!(e.contains(want), "case {i}: {e}");
    }
    // Probabilities named as the logits: refused, naming the tensor to use instead.
    let src = write(dir.path(), "softmax.onnx", &model_with(with_softmax));
    let mut o = opts(dir.path(), &src, 10);
    o.logits = Some("probs".into());
    let e = import(&o).unwrap_err().to_string();
    assert!(e.contains("add --logits \"logits\""), "{e}");
    // With the size given, the dynamic graph imports.
    let src = write(
        dir.path(),
        "dyn.onnx",
        &model_with(|g| set_input(g, DT_FLOAT, &[-1, 1, -1, -1])),
    );
    let mut o = opts(dir.path(), &src, 10);
    o.input_size = Some((28, 28));
    assert_eq!(import(&o).unwrap().metadata.input.height, 28);
}

#[test]
fn labels_from_lines_or_json_unique_and_non_empty() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "l.txt", b"cat\r\ndog\n\n");
    assert_eq!(read_labels(&p).unwrap(), ["cat", "dog"]);
    let p = write(dir.path(), "l.json", br#"["cat", "dog"]"#);
    assert_eq!(read_labels(&p).unwrap(), ["cat", "dog"]);
    let p = write(dir.path(), "d.txt", b"cat\ndog\ncat\n");
    let e = read_labels(&p).unwrap_err().to_string();
    assert!(e.contains("\"cat\" at 0 and 2"), "{e}");
    let p = write(dir.path(), "e.txt", b"cat\n\ndog\n");
    assert!(
        read_labels(&p)
            .unwrap_err()
            .to_string()
            .contains("label 1 is empty")
    );
    let p = write(dir.path(), "b.json", br#"[1, 2]"#);
    assert!(
        read_labels(&p)
            .unwrap_err()
            .to_string()
            .contains("JSON array")
    );
}
