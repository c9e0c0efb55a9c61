//! ONNX export: a quantized model (`.lbq`) as a standard QDQ graph, a float model as a plain f32 graph; both
//! opset [`OPSET`], one float input `input` `[N, C, H, W]` and one output `logits` `[N, classes]`.
//!
//! **Input.** Both exports take what lowbit's float model reads: pixels scaled to [0, 1] (`p / 255`), then, when
//! the model carries a normalisation, `(x - mean[c]) / std[c]`. The normalisation is not a graph op (so the f32
//! export re-imports as the same model); it is stated in the model's `doc_string` and in `metadata_props`
//! (`lowbit.input.mean`, `lowbit.input.std`, `lowbit.input.pixel_scale`).
//!
//! **QDQ form** (what ONNX Runtime's `quantize_static` writes and its graph optimiser fuses into `QLinearConv`,
//! `QLinearMatMul`...): every activation value of the lowbit graph becomes `QuantizeLinear` -> uint8 codes ->
//! `DequantizeLinear` with the value's scale and zero point; each op runs on the dequantized floats:
//! - Dense / Conv2d (grouped and depthwise too): weight codes with `DequantizeLinear` per channel (axis 0) or
//!   per tensor, stored as uint8 `code + 128` with zero point 128 (default) or int8 with zero point 0
//!   ([`WeightType`]); the bias as int32 accumulator units with scale `s_in * s_w[c]` (f32),
//!   which is exactly lowbit's bias; then `Gemm` (`transB = 1`) or `Conv`. The last layer's float output is the
//!   logits (lowbit: `acc * s_in * s_w[c]`).
//! - The requantizing output stage: a fused ReLU as `Relu`; a sub-8-bit activation or a ReLU6 bound as a `Clip`
//!   to the real values of the code range `[qmin, qmax]` (so `QuantizeLinear` lands in the true range), then
//!   `QuantizeLinear` (uint8 container).
//! - Average pooling, Add, Concat: the float op on dequantized inputs, then the output's `QuantizeLinear`.
//! - Max pooling, Pad (zeros: real 0 is the zero point), Slice, Flatten: the float op, then `QuantizeLinear` with
//!   the same parameters (exact: the op only moves dequantized codes).
//! - Element-wise tables (unfused ReLU, Clip, LeakyReLU, Sigmoid): `Cast` of the codes to int32 and `Gather` from
//!   lowbit's 256-entry table, then `DequantizeLinear`: bit-exact by construction.
//! - Weights of 1 to 7 bits: 8-bit containers holding their true range (`[-(2^(b-1)-1), 2^(b-1)-1]`, binary
//!   `{-1, +1}`, plus 128 in uint8); activations of 1 to 7 bits: uint8 containers behind the `Clip` above. No INT4 types (opset 21)
//!   so that opset-13 runtimes load every export.
//!
//! **Where other runtimes differ from lowbit's integer engine** (so predictions may differ on a few images):
//! - Requantization: lowbit multiplies the i32 accumulator by a Q31 fixed-point multiplier and rounds half toward
//!   +infinity ([`lowbit_runtime::qparams`]); `QuantizeLinear` (and ORT's fused `QLinear*` kernels) divide or
//!   multiply in float and round half to even. The two differ by one code when the real value lies within a
//!   rounding error of a half step.
//! - Accumulation: lowbit sums integers exactly; a runtime that does not fuse the QDQ pattern sums f32 products
//!   in its own order (relative error around 1e-7 of the sum).
//! - Average pooling, Add and Concat: lowbit rescales in fixed point (Q31 for pooling, Q15-style for Add/Concat,
//!   [`lowbit_runtime::qparams::AddParams`]); runtimes compute the float mean or sum and quantize it.
//! - ONNX Runtime on x86 with AVX2 but no VNNI: its fused u8 x s8 kernels saturate 16-bit pair sums, so int8
//!   weights ([`WeightType::Int8`]) can change predictions there; the default uint8 weights avoid it.
//! - Input: lowbit quantizes normalised inputs rounding half away from zero, `QuantizeLinear` half to even (for
//!   un-normalised pixels, `p / 255` quantized with scale 1/255 gives the pixel back in both).
//!
//! The f32 export maps each layer to its ONNX op (Gemm, Conv, BatchNormalization, Relu, Clip, LeakyRelu,
//! Sigmoid, MaxPool, AveragePool / GlobalAveragePool, Add, Concat, Pad, Slice, Flatten); weights are copied bit
//! for bit, so import -> export -> import gives identical weights. QAT-only layers (activation fake-quantizers,
//! conv + batch norm trained folded) are refused: export the converted `.lbq` (QDQ) instead.
//!
//! Files are written atomically ([`crate::modelfile::write_atomic`]). [`CHECKED_WITH`] names the runtimes the
//! exports are tested with; every export states it in its `doc_string` and metadata.
use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::error::{Error, Result};
use crate::modelfile::AnyModel;
use crate::nn::Model;
use lowbit_runtime::model::{Provenance, QuantModel};
use lowbit_runtime::preprocess::Normalization;
use prost::Message;
use std::collections::HashSet;
use std::path::Path;

mod float;
mod qdq;

/// The default-domain opset of every export (per-axis `DequantizeLinear` needs 13).
pub const OPSET: i64 = 13;

/// The ONNX IR version that goes with [`OPSET`].
pub const IR_VERSION: i64 = 7;

/// The runtimes lowbit's exports are checked with (tests and `bench/run_onnx_export.sh`).
pub const CHECKED_WITH: &str =
    "ONNX Runtime 1.32 (bench/peers/check_onnx_export.py) and tract-onnx 0.23 (crates/lowbit/tests/onnx_export_tract.rs)";

/// Why a model cannot be exported.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExportError {
    /// A layer or op with no ONNX form here.
    #[error("node {node:?}: {what} cannot be exported to ONNX{}", hint_suffix(.hint))]
    Unsupported {
        /// The node's name.
        node: String,
        /// What it is.
        what: String,
        /// What to do instead (may be empty).
        hint: String,
    },
    /// A quantized model that does not pass lowbit's own validation.
    #[error("the quantized model is not valid: {0}")]
    InvalidModel(String),
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    /// `"qdq"` for a quantized model, `"f32"` for a float one.
    pub form: &'static str,
    /// ONNX nodes in the graph.
    pub nodes: usize,
    /// Initializers (weights, scales, zero points, shapes).
    pub initializers: usize,
    /// Bytes written.
    pub bytes: usize,
}

/// A float model as an f32 ONNX model (see the module doc).
pub fn float_model(model: &Model, provenance: &Provenance) -> Result<ModelProto, ExportError> {
    let graph = float::graph(model)?;
    Ok(wrap(
        graph,
        "f32",
        &model.spec,
        provenance,
        model.normalization.as_ref(),
        &[],
    ))
}

/// How a QDQ export stores weight codes. Both hold the same real values (`DequantizeLinear` gives `code * scale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightType {
    /// `code + 128` in uint8 with zero point 128 (the default): ONNX Runtime's x86 kernels then take their exact
    /// u8 x u8 path. With int8 weights its AVX2 (non-VNNI) u8 x s8 kernels sum pairs of products in saturating
    /// 16-bit lanes (`vpmaddubsw`), and on Fashion-MNIST LeNet-5 W8A8 predicted another class than lowbit's
    /// engine on 125 of 10,000 images, against 0 with uint8 weights or with ORT's graph optimisations off
    /// (BENCHMARKS.md, "ONNX export").
    #[default]
    Uint8,
    /// The codes themselves in int8 with zero point 0 (symmetric), for runtimes that require it.
    Int8,
}

/// A quantized model as a QDQ ONNX model (see the module doc).
pub fn quant_model(model: &QuantModel, weight_type: WeightType) -> Result<ModelProto, ExportError> {
    let graph = qdq::graph(model, weight_type)?;
    Ok(wrap(
        graph,
        "qdq",
        &model.provenance.recipe,
        &model.provenance,
        model.normalization.as_ref(),
        &model.class_names,
    ))
}

/// The serialized ONNX file of `proto` (what [`export`] writes).
pub fn to_bytes(proto: &ModelProto) -> Vec<u8> {
    proto.encode_to_vec()
}

/// Exports `model` to `path` (QDQ with weights as `weight_type` for a quantized model, f32 for a float one),
/// atomically; nothing is written when the model cannot be exported.
pub fn export(model: &AnyModel, weight_type: WeightType, path: &Path) -> Result<ExportSummary> {
    let err = |source| Error::OnnxExport {
        path: path.to_path_buf(),
        source,
    };
    let (proto, form) = match model {
        AnyModel::Float(m, p) => (float_model(m, p).map_err(err)?, "f32"),
        AnyModel::Quant(q) => (quant_model(q, weight_type).map_err(err)?, "qdq"),
    };
    let graph = proto.graph.as_ref();
    let bytes = proto.encode_to_vec();
    crate::modelfile::write_atomic(path, &bytes)?;
    Ok(ExportSummary {
        form,
        nodes: graph.map_or(0, |g| g.node.len()),
        initializers: graph.map_or(0, |g| g.initializer.len()),
        bytes: bytes.len(),
    })
}

fn entry(key: &str, value: String) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(key.into()),
        value: Some(value),
    }
}

fn floats_csv(v: &[f32]) -> String {
    v.iter().map(f32::to_string).collect::<Vec<_>>().join(",")
}

/// The model around a graph: opset, producer, what the input means and what the export was checked with.
fn wrap(
    graph: GraphProto,
    form: &str,
    description: &str,
    provenance: &Provenance,
    normalization: Option<&Normalization>,
    class_names: &[String],
) -> ModelProto {
    let input = match normalization {
        None => "float32 NCHW, pixels / 255".to_string(),
        Some(n) => format!(
            "float32 NCHW, (pixels / 255 - mean[c]) / std[c] with mean [{}] and std [{}]",
            floats_csv(&n.mean),
            floats_csv(&n.std)
        ),
    };
    let what = if form == "qdq" {
        "quantized model in QDQ form (QuantizeLinear / DequantizeLinear around float ops)"
    } else {
        "float model"
    };
    let doc = format!(
        "lowbit {what}. Input `input`: {input}. Output `logits`: [N, classes]. Checked with {CHECKED_WITH}."
    );
    let mut meta = vec![
        entry("lowbit.form", form.into()),
        entry("lowbit.input", input),
        entry("lowbit.input.pixel_scale", (1.0f32 / 255.0).to_string()),
        entry("lowbit.checked_with", CHECKED_WITH.into()),
    ];
    if !description.is_empty() {
        meta.push(entry("lowbit.description", description.into()));
    }
    if !provenance.dataset.is_empty() {
        meta.push(entry("lowbit.dataset", provenance.dataset.clone()));
    }
    if let Some(n) = normalization {
        meta.push(entry("lowbit.input.mean", floats_csv(&n.mean)));
        meta.push(entry("lowbit.input.std", floats_csv(&n.std)));
    }
    if !class_names.is_empty() {
        meta.push(entry(
            "lowbit.class_names",
            serde_json::to_string(class_names).unwrap_or_default(),
        ));
    }
    ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("lowbit".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(doc),
        graph: Some(graph),
        metadata_props: meta,
        ..Default::default()
    }
}

/// Graph under construction: nodes, initializers and unique names (`input` and `logits` reserved).
struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: HashSet<String>,
}

/// An element type of an initializer.
trait Elem: Copy {
    const TYPE: DataType;
    fn put(self, out: &mut Vec<u8>);
}

/// Little-endian raw data, as ONNX stores it.
macro_rules! elem {
    ($($t:ty => $dt:ident),* $(,)?) => {$(
        impl Elem for $t {
            const TYPE: DataType = DataType::$dt;
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
elem!(f32 => Float, i64 => Int64, i32 => Int32, i8 => Int8, u8 => Uint8);

impl Builder {
    fn new() -> Self {
        Self {
            nodes: Vec::new(),
            initializers: Vec::new(),
            names: [INPUT, LOGITS].iter().map(|s| s.to_string()).collect(),
        }
    }

    /// `base`, or `base_2`, `base_3`... the first one not yet taken.
    fn unique(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while !self.names.insert(name.clone()) {
            k += 1;
            name = format!("{base}_{k}");
        }
        name
    }

    /// Adds an initializer (little-endian raw data) and returns its name.
    fn init<T: Elem>(&mut self, name: &str, dims: &[usize], data: &[T]) -> String {
        let name = self.unique(name);
        let mut raw = Vec::with_capacity(std::mem::size_of_val(data));
        data.iter().for_each(|v| v.put(&mut raw));
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(T::TYPE as i32),
            name: Some(name.clone()),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    /// Adds a node named after its output and returns the output's name (made unique from `out`).
    fn node(&mut self, op: &str, inputs: &[&str], out: &str, attrs: Vec<AttributeProto>) -> String {
        let out = self.unique(out);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: Some(out.clone()),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// The graph with its one input `input` (`[N, C, H, W]` float, N symbolic) and one output `logits`, the
    /// value `out` (`[N, classes]`) renamed.
    fn finish(
        mut self,
        name: &str,
        input_chw: [usize; 3],
        out: &str,
        classes: usize,
    ) -> GraphProto {
        let read = self.nodes.iter().any(|n| n.input.iter().any(|i| i == out));
        match self
            .nodes
            .iter_mut()
            .find(|n| n.output.first().map(String::as_str) == Some(out))
        {
            Some(n) if !read => {
                n.output[0] = LOGITS.into();
                n.name = Some(LOGITS.into());
            }
            // The input itself, or a value other nodes read (a trailing dropout aliases its input).
            _ => {
                self.nodes.push(NodeProto {
                    input: vec![out.into()],
                    output: vec![LOGITS.into()],
                    name: Some(LOGITS.into()),
                    op_type: Some("Identity".into()),
                    ..Default::default()
                });
            }
        }
        let dims: Vec<Option<usize>> = std::iter::once(None)
            .chain(input_chw.iter().map(|&d| Some(d)))
            .collect();
        GraphProto {
            node: self.nodes,
            name: Some(name.into()),
            initializer: self.initializers,
            input: vec![value_info(INPUT, &dims)],
            output: vec![value_info(LOGITS, &[None, Some(classes)])],
            ..Default::default()
        }
    }
}

/// The graph input's name.
const INPUT: &str = "input";

/// The graph output's name.
const LOGITS: &str = "logits";

/// A float tensor's declaration; `None` dimensions are the symbolic batch `N`.
fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value as Dim, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Dim::DimValue(*v as i64),
                None => Dim::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

/// Attributes of a 2-D window op: kernel, strides and symmetric padding.
fn window_attrs(
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Vec<AttributeProto> {
    let mut a = vec![
        attr_ints("kernel_shape", &[kernel.0, kernel.1]),
        attr_ints("strides", &[stride.0, stride.1]),
    ];
    if padding != (0, 0) {
        a.push(attr_ints(
            "pads",
            &[padding.0, padding.1, padding.0, padding.1],
        ));
    }
    a
}

/// Layout ops shared by both exports, on a float tensor of per-sample shape `shape` (`[K]` flat or `[C, H, W]`).
impl Builder {
    /// `x` as `[N, K]` (a `Flatten` when it is NCHW).
    fn flat(&mut self, x: &str, spatial: bool, out: &str) -> String {
        if spatial {
            self.node("Flatten", &[x], out, vec![attr_int("axis", 1)])
        } else {
            x.to_string()
        }
    }

    /// `x` as `[N, C, H, W]` (a flat `[N, K]` reshaped to `[N, K, 1, 1]`, which is how lowbit lays flat values out).
    fn spatial(&mut self, x: &str, spatial: bool, k: usize, out: &str) -> String {
        if spatial {
            return x.to_string();
        }
        let shape = self.init(&format!("{out}.shape"), &[4], &[-1i64, k as i64, 1, 1]);
        self.node("Reshape", &[x, &shape], out, vec![])
    }

    /// Zero padding `[channels, rows, cols]` x (before, after) of an NCHW tensor.
    fn pad(&mut self, x: &str, p: [(usize, usize); 3], out: &str) -> String {
        let pads: Vec<i64> = [0, p[0].0, p[1].0, p[2].0, 0, p[0].1, p[1].1, p[2].1]
            .iter()
            .map(|&v| v as i64)
            .collect();
        let pads = self.init(&format!("{out}.pads"), &[8], &pads);
        self.node(
            "Pad",
            &[x, &pads],
            out,
            vec![AttributeProto {
                name: Some("mode".into()),
                r#type: Some(AttributeType::String as i32),
                s: Some(b"constant".to_vec()),
                ..Default::default()
            }],
        )
    }

    /// A strided slice of the channel, row and column axes (of sizes `dims`), each `[start, end, step]`; ends
    /// past the axis (lowbit's "to the end" is `usize::MAX`) are clamped to its size.
    fn slice(&mut self, x: &str, axes: [[usize; 3]; 3], dims: [usize; 3], out: &str) -> String {
        let col = |i: usize| -> Vec<i64> {
            axes.iter()
                .zip(dims)
                .map(|(a, n)| if i == 1 { a[1].min(n) } else { a[i] } as i64)
                .collect()
        };
        let starts = self.init(&format!("{out}.starts"), &[3], &col(0));
        let ends = self.init(&format!("{out}.ends"), &[3], &col(1));
        let ax = self.init(&format!("{out}.axes"), &[3], &[1i64, 2, 3]);
        let steps = self.init(&format!("{out}.steps"), &[3], &col(2));
        self.node("Slice", &[x, &starts, &ends, &ax, &steps], out, vec![])
    }

    /// `Clip(x, lo, hi)` with scalar bounds (opset 13 takes them as inputs).
    fn clip(&mut self, x: &str, lo: f32, hi: f32, out: &str) -> String {
        let lo = self.init(&format!("{out}.min"), &[], &[lo]);
        let hi = self.init(&format!("{out}.max"), &[], &[hi]);
        self.node("Clip", &[x, &lo, &hi], out, vec![])
    }
}
