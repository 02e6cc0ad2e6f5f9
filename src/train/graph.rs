//! A small ONNX graph builder: named values, nodes with attributes, constants stored as
//! initializers, typed inputs and outputs, and serialisation to `ModelProto` bytes.
//!
//! Every value is a `String` name. `op` returns the name of a fresh output, so graph code reads
//! like the maths it implements (`let d = g.op("Sub", &[&p, &onehot], vec![])`).

use prost::Message;

use crate::runtime::onnx_proto::{
    AttributeProto, DT_FLOAT, DT_INT64, DimValue, Dimension, GraphProto, IR_VERSION, ModelProto,
    NodeProto, OPSET, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, TypeProtoTensor, ValueInfoProto, attr_type,
};

/// One dimension of a declared input or output: fixed, or symbolic (the batch, `"N"`).
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named, dynamic size.
    Named(&'static str),
}

/// Shorthand: `[N, rest...]` with a dynamic batch.
pub fn batched(rest: &[i64]) -> Vec<Dim> {
    std::iter::once(Dim::Named("N"))
        .chain(rest.iter().map(|&d| Dim::Fixed(d)))
        .collect()
}

/// Shorthand: a fully fixed shape.
pub fn fixed(dims: &[i64]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Fixed(d)).collect()
}

/// An attribute for [`Graph::op`].
pub fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i: v,
        r#type: attr_type::INT,
        ..Default::default()
    }
}

/// An `INTS` attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: v.to_vec(),
        r#type: attr_type::INTS,
        ..Default::default()
    }
}

/// A `FLOAT` attribute.
pub fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f: v,
        r#type: attr_type::FLOAT,
        ..Default::default()
    }
}

/// A `STRING` attribute.
pub fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        s: v.as_bytes().to_vec(),
        r#type: attr_type::STRING,
        ..Default::default()
    }
}

/// A `TENSOR` attribute (for `ConstantOfShape`'s `value`).
pub fn attr_t(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        t: Some(t),
        r#type: attr_type::TENSOR,
        ..Default::default()
    }
}

/// A float tensor proto (raw little-endian data).
pub fn tensor_f32(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: DT_FLOAT,
        name: name.into(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// An int64 tensor proto.
pub fn tensor_i64(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: DT_INT64,
        name: name.into(),
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim], doc: &str) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => DimValue::DimValue(*v),
                Dim::Named(s) => DimValue::DimParam((*s).into()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
        doc_string: doc.into(),
    }
}

/// A graph under construction.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    counter: usize,
    doc: String,
    /// The batch size as a float scalar, once computed (see [`Graph::batch_size_f32`]).
    batch_size: Option<String>,
    /// A `[1, N]` row of ones, once computed (see [`Graph::batch_ones`]).
    batch_ones: Option<String>,
}

impl Graph {
    /// An empty graph.
    pub fn new(doc: &str) -> Self {
        Graph {
            doc: doc.into(),
            ..Default::default()
        }
    }

    /// A fresh value name, `hint` plus a counter (names stay readable in Netron).
    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}__{}", self.counter)
    }

    /// Adds a node with one output and returns the output's name.
    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op_n(op_type, inputs, 1, attrs).remove(0)
    }

    /// Adds a node with `n_out` outputs.
    pub fn op_n(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        n_out: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let outs: Vec<String> = (0..n_out)
            .map(|_| self.fresh(&op_type.to_lowercase()))
            .collect();
        self.op_into(op_type, inputs, &outs, attrs);
        outs
    }

    /// Adds a node writing to the given output names (used for the graph's declared outputs).
    pub fn op_into(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        outputs: &[String],
        attrs: Vec<AttributeProto>,
    ) {
        self.push_node(op_type, "", inputs, outputs.to_vec(), attrs);
    }

    /// Adds a node of another operator domain (ONNX Runtime's contrib kernels) with one output.
    /// The caller adds the domain's opset import to the model.
    pub fn op_domain(
        &mut self,
        op_type: &str,
        domain: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(&op_type.to_lowercase());
        self.push_node(op_type, domain, inputs, vec![out.clone()], attrs);
        out
    }

    fn push_node(
        &mut self,
        op_type: &str,
        domain: &str,
        inputs: &[&str],
        outputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) {
        let name = format!("{op_type}_{}", self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_string()).collect(),
            output: outputs,
            name,
            op_type: op_type.into(),
            attribute: attrs,
            domain: domain.into(),
        });
    }

    /// Makes an existing value available under a declared output name.
    pub fn alias(&mut self, value: &str, output: &str) {
        self.op_into("Identity", &[value], &[output.to_string()], vec![]);
    }

    /// A float constant (stored as an initializer).
    pub fn const_f32(&mut self, dims: &[i64], data: &[f32]) -> String {
        let name = self.fresh("const");
        self.initializers.push(tensor_f32(&name, dims, data));
        name
    }

    /// A float scalar constant.
    pub fn scalar(&mut self, v: f32) -> String {
        self.const_f32(&[], &[v])
    }

    /// An int64 constant (shapes, axes, indices).
    pub fn const_i64(&mut self, data: &[i64]) -> String {
        let name = self.fresh("const");
        self.initializers
            .push(tensor_i64(&name, &[data.len() as i64], data));
        name
    }

    /// A named initializer (exported weights).
    pub fn initializer(&mut self, t: TensorProto) {
        self.initializers.push(t);
    }

    /// Declares a float graph input.
    pub fn input_f32(&mut self, name: &str, dims: &[Dim], doc: &str) {
        self.inputs.push(value_info(name, DT_FLOAT, dims, doc));
    }

    /// Declares an int64 graph input.
    pub fn input_i64(&mut self, name: &str, dims: &[Dim], doc: &str) {
        self.inputs.push(value_info(name, DT_INT64, dims, doc));
    }

    /// Declares a float graph output.
    pub fn output_f32(&mut self, name: &str, dims: &[Dim], doc: &str) {
        self.outputs.push(value_info(name, DT_FLOAT, dims, doc));
    }

    /// Names of the declared inputs, in order.
    pub fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|v| v.name.clone()).collect()
    }

    /// Names of the declared outputs, in order.
    pub fn output_names(&self) -> Vec<String> {
        self.outputs.iter().map(|v| v.name.clone()).collect()
    }

    // ---- small composite helpers used by layers and losses ----

    /// `ReduceSum(x, axes)` (axes as an input since opset 13).
    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let a = self.const_i64(axes);
        self.op(
            "ReduceSum",
            &[x, &a],
            vec![attr_i("keepdims", keepdims as i64)],
        )
    }

    /// The per-channel sum of an `[N, C, H, W]` tensor, as `[C]`: over H and W first, then over
    /// N. ONNX Runtime's CPU reduction over axes 0, 2 and 3 at once is slower than these two
    /// (docs/BENCHMARKS.md, training step on the CPU).
    pub fn channel_sum(&mut self, x: &str) -> String {
        let per_sample = self.reduce_sum(x, &[2, 3], false);
        self.reduce_sum(&per_sample, &[0], false)
    }

    /// `ReduceMean(x, axes)` (axes still an attribute at opset 17).
    pub fn reduce_mean(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        self.op(
            "ReduceMean",
            &[x],
            vec![attr_ints("axes", axes), attr_i("keepdims", keepdims as i64)],
        )
    }

    /// `Reshape(x, shape)` with a constant target shape (0 copies, -1 infers).
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.const_i64(shape);
        self.op("Reshape", &[x, &s], vec![])
    }

    /// `Transpose(x, perm)`.
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], vec![attr_ints("perm", perm)])
    }

    /// The batch size of `x` (of rank `rank`, batch first) as a float scalar, for means over a
    /// dynamic batch. Computed on the device from one element per sample (Slice, times 0, plus
    /// 1, ReduceSum), not with `Shape`: a `Shape` output lives in host memory, so on CUDA the
    /// count would come back through a host-to-device copy, which rules out CUDA graph capture
    /// (`caliper-train bench --cuda-graph`). Every batched value of one graph has the same
    /// batch, so the first call's result is reused.
    pub fn batch_size_f32(&mut self, x: &str, rank: usize) -> String {
        if let Some(n) = &self.batch_size {
            return n.clone();
        }
        let o = self.batch_ones(x, rank);
        let n = self.reduce_sum(&o, &[0, 1], false);
        self.batch_size = Some(n.clone());
        n
    }

    /// A `[1, N]` row of ones, N the batch of `x` (of rank `rank`, batch first), made on the
    /// device like [`Graph::batch_size_f32`]: `ones × t` sums `t` (`[N, M]`) over the batch
    /// as one small MatMul, faster on the CPU than ReduceSum over axis 0 (docs/BENCHMARKS.md).
    pub fn batch_ones(&mut self, x: &str, rank: usize) -> String {
        if let Some(o) = &self.batch_ones {
            return o.clone();
        }
        let rest: Vec<i64> = (1..rank as i64).collect();
        let one_each = if rest.is_empty() {
            x.to_string()
        } else {
            let zeros = self.const_i64(&vec![0; rest.len()]);
            let ones = self.const_i64(&vec![1; rest.len()]);
            let axes = self.const_i64(&rest);
            self.op("Slice", &[x, &zeros, &ones, &axes], vec![])
        };
        let zero = self.scalar(0.0);
        let one = self.scalar(1.0);
        let z = self.mul(&one_each, &zero);
        let o = self.add(&z, &one);
        let row = self.reshape(&o, &[1, -1]);
        self.batch_ones = Some(row.clone());
        row
    }

    /// `a * b`.
    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], vec![])
    }

    /// `a + b`.
    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b], vec![])
    }

    /// `a - b`.
    pub fn sub(&mut self, a: &str, b: &str) -> String {
        self.op("Sub", &[a, b], vec![])
    }

    /// `a / b`.
    pub fn div(&mut self, a: &str, b: &str) -> String {
        self.op("Div", &[a, b], vec![])
    }

    /// The serialised model.
    pub fn into_model(self, name: &str, metadata: &[(&str, String)]) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "caliper-train".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: self.doc.clone(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: name.into(),
                initializer: self.initializers,
                doc_string: self.doc,
                input: self.inputs,
                output: self.outputs,
            }),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: (*k).into(),
                    value: v.clone(),
                })
                .collect(),
        }
    }

    /// The model as protobuf bytes.
    pub fn to_bytes(self, name: &str, metadata: &[(&str, String)]) -> Vec<u8> {
        self.into_model(name, metadata).encode_to_vec()
    }
}
