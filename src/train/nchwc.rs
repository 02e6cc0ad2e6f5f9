//! CPU lowering of the step graph's convolutions onto ONNX Runtime's NCHWc kernels.
//!
//! ONNX Runtime runs a plain `Conv` whose weight is a runtime value (a training graph's weights
//! are graph inputs) through MLAS im2col + SGEMM. Its blocked-layout direct convolution
//! (`com.microsoft.nchwc` `Conv`, the kernel its optimizer picks for inference models with
//! constant weights) is faster on ResNet-20's shapes, and it reads the weight at run
//! time, so a graph may feed it a weight it reorders itself. This pass, applied to a serialised
//! model just before a CPU session is built, rewrites
//! - every `Conv` (2-D, group 1) whose output channels are a multiple of the block size and whose
//!   input channels are a multiple of it or smaller than it (the first layer's RGB input), and
//! - every stride-1 `ConvTranspose` (the input gradient of a stride-1 convolution) that is the
//!   same as a `Conv` with the kernel transposed and flipped, with the same channel conditions
//!
//! into `ReorderInput` (NCHW to blocked, once per activation; skipped for inputs narrower than a
//! block), the NCHWc `Conv` fed the weight reordered in the graph (OIHW to `OIHWBiBo`, or
//! `OIHWBo` for narrow inputs, the layouts MLAS documents for
//! `MlasReorderFilterOIHWBiBo`/`OIHWBo`), and
//! `ReorderOutput` back to NCHW. Every other node, and the graph's meaning, is unchanged; the
//! graph `caliper-train graph` writes stays plain ONNX. ONNX Runtime's `ConvTranspose` is the
//! largest single cost of the ResNet-20 step without this pass (docs/BENCHMARKS.md).
//!
//! The block size (16 with AVX-512, 8 with AVX2) belongs to the machine, so it is asked of the
//! loaded ONNX Runtime once: `ReorderInput` pads 4 channels up to one block. Where that fails
//! (no NCHWc kernels on this CPU or build) the graph is left as it is, and so it is, with a
//! warning, when ONNX Runtime refuses the lowered graph (`runner::open`). `CALIPER_NCHWC=0` turns
//! the lowering off (for A/B measurements).

use std::collections::HashMap;
use std::sync::OnceLock;

use prost::Message;

use super::graph::{attr_i, attr_ints};
use crate::runtime::onnx_proto::{
    AttributeProto, DT_INT64, DimValue, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
};

/// The operator domain of ONNX Runtime's blocked-layout CPU kernels.
pub const DOMAIN: &str = "com.microsoft.nchwc";

/// The NCHWc block size of the loaded ONNX Runtime on this CPU, or `None` when it has no NCHWc
/// kernels or `CALIPER_NCHWC=0`. Probed once per process.
pub fn block_size() -> Option<i64> {
    static BLOCK: OnceLock<Option<i64>> = OnceLock::new();
    if std::env::var("CALIPER_NCHWC").is_ok_and(|v| v == "0") {
        return None;
    }
    *BLOCK.get_or_init(|| probe().ok().flatten())
}

/// Runs `ReorderInput` on a `[1, 4, 1, 1]` tensor: the output's channel count is the block.
fn probe() -> Result<Option<i64>, Box<dyn std::error::Error>> {
    use super::graph::{Dim, Graph, fixed};
    let mut g = Graph::new("NCHWc block size probe");
    g.input_f32("x", &fixed(&[1, 4, 1, 1]), "");
    let y = g.op_domain("ReorderInput", DOMAIN, &["x"], vec![]);
    g.alias(&y, "y");
    let block = [Dim::Fixed(1), Dim::Named("B"), Dim::Fixed(1), Dim::Fixed(1)];
    g.output_f32("y", &block, "");
    let mut model = g.into_model("probe", &[]);
    model.opset_import.push(OperatorSetIdProto {
        domain: DOMAIN.into(),
        version: 1,
    });
    let env = crate::runtime::environment()?;
    let mut session = ort::session::Session::builder(env)?
        .with_intra_threads(1)?
        .commit_from_memory(&model.encode_to_vec())?;
    let x = ort::value::Tensor::from_array((vec![1i64, 4, 1, 1], vec![0f32; 4]))?;
    let out = session.run(ort::inputs!["x" => x])?;
    let (shape, _) = out["y"].try_extract_tensor::<f32>()?;
    let block = shape[1];
    Ok((block >= 4 && block % 4 == 0).then_some(block))
}

/// Rewrites the eligible convolutions of a serialised model for block size `block`; returns the
/// new bytes and how many nodes were lowered (the bytes are unchanged when none were).
pub fn lower(bytes: &[u8], block: i64) -> Result<(Vec<u8>, usize), prost::DecodeError> {
    let mut model = ModelProto::decode(bytes)?;
    let n = lower_model(&mut model, block);
    if n == 0 {
        return Ok((bytes.to_vec(), 0));
    }
    Ok((model.encode_to_vec(), n))
}

/// What a lowered node needs to know about a convolution, read from its attributes and the
/// declared shape of its weight input.
struct ConvSpec {
    /// Channels of the convolution's input.
    cin: i64,
    /// Channels of its output.
    cout: i64,
    /// Square kernel size.
    k: i64,
    stride: i64,
    pad: i64,
    /// The input gradient of a stride-1 convolution, expressed as a convolution with the
    /// transposed, flipped kernel (`ConvTranspose` weight `[cin_fwd, cout_fwd, k, k]`).
    transposed: bool,
}

fn lower_model(model: &mut ModelProto, block: i64) -> usize {
    let Some(graph) = model.graph.as_mut() else {
        return 0;
    };
    let shapes: HashMap<String, Vec<i64>> = graph
        .input
        .iter()
        .filter_map(|v| {
            let dims = v.r#type.as_ref()?.tensor_type.as_ref()?.shape.as_ref()?;
            let fixed: Option<Vec<i64>> = dims
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(DimValue::DimValue(n)) => Some(n),
                    _ => None,
                })
                .collect();
            Some((v.name.clone(), fixed?))
        })
        .collect();
    let mut out = Lowering {
        nodes: Vec::with_capacity(graph.node.len()),
        consts: Vec::new(),
        block,
        count: 0,
        blocked: HashMap::new(),
    };
    for node in std::mem::take(&mut graph.node) {
        match conv_spec(&node, &shapes, block) {
            Some(spec) => out.emit(node, &spec),
            None => out.nodes.push(node),
        }
    }
    graph.node = out.nodes;
    graph.initializer.extend(out.consts);
    if out.count > 0 && !model.opset_import.iter().any(|o| o.domain == DOMAIN) {
        model.opset_import.push(OperatorSetIdProto {
            domain: DOMAIN.into(),
            version: 1,
        });
    }
    out.count
}

fn ints<'a>(node: &'a NodeProto, name: &str) -> Option<&'a [i64]> {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.ints.as_slice())
}

/// Whether `node` is a convolution this pass lowers, and its shape.
fn conv_spec(node: &NodeProto, shapes: &HashMap<String, Vec<i64>>, block: i64) -> Option<ConvSpec> {
    if !node.domain.is_empty() || node.input.len() < 2 {
        return None;
    }
    let transposed = match node.op_type.as_str() {
        "Conv" => false,
        // The trainer's input gradients have no bias; one with a bias is left alone.
        "ConvTranspose" if node.input.len() == 2 => true,
        _ => return None,
    };
    if node.attribute.iter().any(|a| {
        (a.name == "group" && a.i != 1)
            || (a.name == "dilations" && a.ints.iter().any(|&d| d != 1))
            || (a.name == "output_padding" && a.ints.iter().any(|&p| p != 0))
            || a.name == "auto_pad"
            || a.name == "output_shape"
    }) {
        return None;
    }
    let w = shapes.get(&node.input[1])?;
    let [a, b, k, k2] = w.as_slice() else {
        return None;
    };
    let square = |v: Option<&[i64]>, default: i64| -> Option<i64> {
        match v {
            None => Some(default),
            Some(v) if !v.is_empty() && v.iter().all(|&x| x == v[0]) => Some(v[0]),
            _ => None,
        }
    };
    let stride = square(ints(node, "strides"), 1)?;
    let pad = square(ints(node, "pads"), 0)?;
    if k != k2 || ints(node, "kernel_shape").is_some_and(|s| s != [*k, *k]) {
        return None;
    }
    let (cin, cout) = if transposed {
        // Only stride 1 is a plain convolution of dy; its padding is k - 1 - pad.
        if stride != 1 || pad > k - 1 {
            return None;
        }
        (*a, *b)
    } else {
        (*b, *a)
    };
    let channels_ok = cout % block == 0 && (cin % block == 0 || cin < block);
    channels_ok.then_some(ConvSpec {
        cin,
        cout,
        k: *k,
        stride,
        pad: if transposed { k - 1 - pad } else { pad },
        transposed,
    })
}

/// The rewritten node list and the constants it needs.
struct Lowering {
    nodes: Vec<NodeProto>,
    consts: Vec<TensorProto>,
    block: i64,
    count: usize,
    /// Each activation's blocked copy, made once: a stride-2 block's input feeds both its
    /// first convolution and its projection shortcut.
    blocked: HashMap<String, String>,
}

impl Lowering {
    fn value(&self, base: &str, what: &str) -> String {
        format!("{base}__nchwc{}_{what}", self.count)
    }

    fn push(
        &mut self,
        op: &str,
        domain: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_string()).collect(),
            output: vec![output.to_string()],
            name: output.to_string(),
            op_type: op.into(),
            attribute: attrs,
            domain: domain.into(),
        });
    }

    fn const_i64(&mut self, name: String, data: &[i64]) -> String {
        self.consts.push(TensorProto {
            dims: vec![data.len() as i64],
            data_type: DT_INT64,
            name: name.clone(),
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    fn reshape(&mut self, x: &str, shape: &[i64], base: &str, what: &str) -> String {
        let s = self.const_i64(self.value(base, &format!("{what}_shape")), shape);
        let y = self.value(base, what);
        self.push("Reshape", "", &[x, &s], &y, vec![]);
        y
    }

    /// The weight as the NCHWc kernel reads it: OIHW (after transposing and flipping a
    /// `ConvTranspose` weight) reordered to OIHWBiBo, or OIHWBo when the input is narrower
    /// than a block. The tensor keeps its OIHW shape; only the element order changes.
    fn weight(&mut self, w: &str, s: &ConvSpec, base: &str) -> String {
        let (o, c, k, b) = (s.cout, s.cin, s.k, self.block);
        let mut w = w.to_string();
        if s.transposed {
            let t = self.value(base, "wt");
            self.push(
                "Transpose",
                "",
                &[&w],
                &t,
                vec![attr_ints("perm", &[1, 0, 2, 3])],
            );
            let starts = self.const_i64(self.value(base, "flip_starts"), &[-1, -1]);
            let ends = self.const_i64(self.value(base, "flip_ends"), &[i64::MIN, i64::MIN]);
            let axes = self.const_i64(self.value(base, "flip_axes"), &[2, 3]);
            let steps = self.const_i64(self.value(base, "flip_steps"), &[-1, -1]);
            let f = self.value(base, "wflip");
            self.push(
                "Slice",
                "",
                &[&t, &starts, &ends, &axes, &steps],
                &f,
                vec![],
            );
            w = f;
        }
        let (split, perm): (Vec<i64>, Vec<i64>) = if c % b == 0 {
            (vec![o / b, b, c / b, b, k, k], vec![0, 2, 4, 5, 3, 1])
        } else {
            (vec![o / b, b, c, k, k], vec![0, 2, 3, 4, 1])
        };
        let blocks = self.reshape(&w, &split, base, "wsplit");
        let t = self.value(base, "wperm");
        self.push(
            "Transpose",
            "",
            &[&blocks],
            &t,
            vec![attr_ints("perm", &perm)],
        );
        self.reshape(&t, &[o, c, k, k], base, "wblocked")
    }

    fn emit(&mut self, node: NodeProto, s: &ConvSpec) {
        let base = node.output[0].clone();
        let w = self.weight(&node.input[1], s, &base);
        let x = if s.cin % self.block == 0 {
            match self.blocked.get(&node.input[0]) {
                Some(xb) => xb.clone(),
                None => {
                    let xb = self.value(&base, "x");
                    self.push("ReorderInput", DOMAIN, &[&node.input[0]], &xb, vec![]);
                    self.blocked.insert(node.input[0].clone(), xb.clone());
                    xb
                }
            }
        } else {
            node.input[0].clone()
        };
        let mut inputs = vec![x.as_str(), w.as_str()];
        if !s.transposed && node.input.len() > 2 && !node.input[2].is_empty() {
            inputs.push(&node.input[2]);
        }
        let yb = self.value(&base, "y");
        let attrs = vec![
            attr_ints("kernel_shape", &[s.k, s.k]),
            attr_ints("strides", &[s.stride, s.stride]),
            attr_ints("pads", &[s.pad; 4]),
        ];
        self.push("Conv", DOMAIN, &inputs, &yb, attrs);
        self.push(
            "ReorderOutput",
            DOMAIN,
            &[&yb],
            &base,
            vec![attr_i("channels", s.cout)],
        );
        self.count += 1;
    }
}
