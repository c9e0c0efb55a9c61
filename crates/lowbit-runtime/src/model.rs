//! The quantized model: what the engine runs and the `.lbq` file stores.
//!
//! A model is a graph: nodes in topological order, each reading earlier values by index ([`ValueId`]) and
//! producing one value. Values are unsigned activation codes (`u8` storage, `bits` significant bits) with
//! per-tensor [`QParams`], NCHW per sample; the network input is the raw `u8` pixel (scale 1/255, zero point 0
//! for images scaled to [0, 1]). Only the last node's accumulators are dequantized, to f32 logits. Ops that
//! consume codes restate the quantization they expect (`input` fields), which validation checks against the
//! value's producer ([`crate::graph::check`]).
use crate::pack::PackedWeights;
pub use crate::preprocess::Normalization;
use crate::qparams::{QParams, Requant};
use serde::{Deserialize, Serialize};

/// Provenance and measured facts stored with a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Dataset the model was trained on.
    pub dataset: String,
    /// Training seed.
    pub seed: u64,
    /// Test accuracy measured by the integer engine, if known.
    pub test_accuracy: Option<f64>,
    /// Free-form description of the recipe (method, bits, epochs).
    pub recipe: String,
}

/// Shape and quantization of the network input.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Channels.
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Quantization of the raw input codes (for pixels: scale 1/255, zero point 0).
    pub qparams: QParams,
}

impl InputSpec {
    /// Number of input features (`channels * height * width`).
    pub fn features(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// How a layer's i32 accumulators leave the layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OutputStage {
    /// Requantize to unsigned activation codes: `clamp(zp + requant[c](acc), qmin, qmax)`; with `relu`,
    /// `qmin` is raised to the zero point.
    Requantize {
        /// Output activation quantization.
        qparams: QParams,
        /// Output activation bit width (1..=8).
        bits: u32,
        /// Whether a ReLU is fused (clamp below at the zero point).
        relu: bool,
        /// One multiplier per output channel (`s_in * s_w[c] / s_out`), or one for per-tensor weights.
        requant: Vec<Requant>,
        /// Highest output code below `2^bits - 1`, from a fused clip (ReLU6): `quantize(max)` on the output.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_code: Option<i32>,
    },
    /// Final layer: logits = `acc * s_in * s_w[c]` in f32.
    Logits,
}

/// Fully connected layer on integer codes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QDense {
    /// Input features (K).
    pub in_features: usize,
    /// Output features (N).
    pub out_features: usize,
    /// Weight codes, one packed row of `in_features` codes per output feature.
    pub weights: PackedWeights,
    /// Weight scales: one (per-tensor) or `out_features` (per-channel). Weight zero point is always 0.
    pub weight_scales: Vec<f32>,
    /// Bias in accumulator units (`round(b / (s_in * s_w[c]))`), one per output feature.
    pub bias: Vec<i32>,
    /// Quantization of this layer's input codes.
    pub input: QParams,
    /// What happens to the accumulators.
    pub output: OutputStage,
}

/// 2-D convolution on integer codes, NCHW activations, weights `[out_c][in_c / groups][kh][kw]` packed per output
/// channel; output channel `oc` reads the input channels of its group (`groups` equal groups of channels;
/// depthwise when `groups == in_channels`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QConv2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Stride (rows, cols).
    pub stride: (usize, usize),
    /// Zero padding (rows, cols); padded positions hold the input zero point.
    pub padding: (usize, usize),
    /// Channel groups (1: a full convolution).
    #[serde(default = "one")]
    pub groups: usize,
    /// Weight codes, one packed row of `in_channels / groups * kh * kw` codes per output channel.
    pub weights: PackedWeights,
    /// Weight scales: one or `out_channels`.
    pub weight_scales: Vec<f32>,
    /// Bias in accumulator units.
    pub bias: Vec<i32>,
    /// Quantization of this layer's input codes.
    pub input: QParams,
    /// What happens to the accumulators.
    pub output: OutputStage,
}

/// Max pooling without padding; codes keep their quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QMaxPool2d {
    /// Window (rows, cols).
    pub kernel: (usize, usize),
    /// Stride (rows, cols).
    pub stride: (usize, usize),
}

/// Average pooling without padding, requantized from `input` to `output` parameters:
/// `out = clamp(zp_out + Requant::from_real(s_in / (s_out * window)).apply(sum(q - zp_in)), 0, 2^bits - 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QAvgPool2d {
    /// Window (rows, cols).
    pub kernel: (usize, usize),
    /// Stride (rows, cols).
    pub stride: (usize, usize),
    /// Input quantization.
    pub input: QParams,
    /// Output quantization.
    pub output: QParams,
    /// Output bit width.
    pub bits: u32,
}

fn one() -> usize {
    1
}

/// Residual sum of two code values requantized onto the output's parameters in fixed point (normative:
/// [`crate::kernels::eltwise`] with [`crate::qparams::AddParams::from_scales`] of the three scales):
/// `out = clamp(zp_out + rshift_round((a - zp_a) * m_a + (b - zp_b) * m_b, shift), qmin, 2^bits - 1)`, `qmin` the
/// zero point with a fused ReLU, else 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QAdd {
    /// Quantization of the two inputs, in order.
    pub inputs: [QParams; 2],
    /// Output quantization.
    pub output: QParams,
    /// Output bit width.
    pub bits: u32,
    /// Whether a ReLU is fused (clamp below at the output zero point).
    pub relu: bool,
}

/// Channel concatenation; each input is rescaled onto the output's parameters in fixed point (normative:
/// [`crate::kernels::eltwise`]'s rescale with [`crate::qparams::Rescale::from_scales`]), or copied when its
/// parameters are the output's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QConcat {
    /// Quantization of each input, in order.
    pub inputs: Vec<QParams>,
    /// Output quantization.
    pub output: QParams,
    /// Output bit width.
    pub bits: u32,
}

/// Zero padding of channels, rows and columns (before, after); padded codes are the value's zero point (real 0),
/// so the quantization is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QPad {
    /// Channels added (front, back).
    pub channels: (usize, usize),
    /// Rows added (top, bottom).
    pub rows: (usize, usize),
    /// Columns added (left, right).
    pub cols: (usize, usize),
}

/// Strided slice: per axis (channels, rows, cols) `[start, end, step]`, end exclusive, step >= 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QSlice {
    /// Channels kept.
    pub channels: [usize; 3],
    /// Rows kept.
    pub rows: [usize; 3],
    /// Columns kept.
    pub cols: [usize; 3],
}

/// An element-wise function on codes as a 256-entry table: `out = table[x]` (every unary op lowers to one:
/// `table[q] = quantize(f(dequantize(q, input)), output)`, see [`crate::kernels::eltwise::unary_table`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QLut {
    /// Quantization of the input.
    pub input: QParams,
    /// Quantization of the output.
    pub output: QParams,
    /// Output bit width.
    pub bits: u32,
    /// The table, 256 codes.
    pub table: Vec<u8>,
}

/// The operation of one node of a quantized graph. Every op consumes `u8` activation codes; only the graph's
/// output node produces something else (f32 logits, from a Dense or Conv2d with [`OutputStage::Logits`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QOp {
    /// Fully connected.
    Dense(QDense),
    /// Convolution.
    Conv2d(QConv2d),
    /// Max pooling on codes (exact: max commutes with a monotonic quantizer).
    MaxPool2d(QMaxPool2d),
    /// Average pooling with requantization (also the global average pool: a window of the whole map).
    AvgPool2d(QAvgPool2d),
    /// NCHW to flat features (a no-op on the data).
    Flatten,
    /// Residual sum.
    Add(QAdd),
    /// Channel concatenation.
    Concat(QConcat),
    /// Zero padding.
    Pad(QPad),
    /// Strided slice.
    Slice(QSlice),
    /// Element-wise table.
    Lut(QLut),
}

/// Index of a value of a [`QuantModel`]: `0` is the network input, `i + 1` the output of `nodes[i]`.
pub type ValueId = usize;

/// One node of a quantized graph: an op, the values it reads and the name of the value it produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QNode {
    /// Unique name of the node (and of its output value), used in files, errors and reports.
    pub name: String,
    /// The values the op reads, in the op's argument order; each refers to the input or an earlier node, so the
    /// node list is topologically sorted and acyclic by construction.
    pub inputs: Vec<ValueId>,
    /// What the node computes.
    pub op: QOp,
}

/// A quantized network: a graph of nodes from the input to one output (the last node, which emits logits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantModel {
    /// Input shape and quantization (value 0).
    pub input: InputSpec,
    /// Nodes in topological order; node `i` produces value `i + 1`, the last one the logits.
    pub nodes: Vec<QNode>,
    /// Number of classes (logits).
    pub classes: usize,
    /// Class names, if known (empty otherwise).
    pub class_names: Vec<String>,
    /// Where the model came from.
    pub provenance: Provenance,
    /// How pixels become input codes, when the model was trained on normalised inputs (`None`: the code is the
    /// pixel). Apply it with [`QuantModel::input_codes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
}

impl QuantModel {
    /// The input codes of raw pixels (`n` samples, NCHW): the pixels themselves, or their normalised values
    /// quantized with the input's parameters ([`Normalization::codes`]).
    pub fn input_codes<'a>(&self, pixels: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        match &self.normalization {
            None => std::borrow::Cow::Borrowed(pixels),
            Some(n) => {
                let mut out = Vec::new();
                let plane = self.input.height * self.input.width;
                n.codes(
                    self.input.qparams,
                    self.input.channels,
                    plane,
                    pixels,
                    &mut out,
                );
                std::borrow::Cow::Owned(out)
            }
        }
    }

    /// A chain: op `i` (named `layers.{i}`, the names format versions 1 and 2 give their layers) reads the
    /// output of op `i - 1`, the first one the input.
    pub fn chain(input: InputSpec, ops: Vec<QOp>, classes: usize) -> QuantModel {
        let nodes = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| QNode {
                name: format!("layers.{i}"),
                inputs: vec![i],
                op,
            })
            .collect();
        QuantModel {
            input,
            nodes,
            classes,
            class_names: Vec::new(),
            provenance: Provenance::default(),
            normalization: None,
        }
    }

    /// The ops in node order.
    pub fn ops(&self) -> impl Iterator<Item = &QOp> {
        self.nodes.iter().map(|n| &n.op)
    }

    /// The ops in node order, mutably.
    pub fn ops_mut(&mut self) -> impl Iterator<Item = &mut QOp> {
        self.nodes.iter_mut().map(|n| &mut n.op)
    }

    /// Whether every node reads exactly the value before it (the models format versions 1 and 2 hold).
    pub fn is_chain(&self) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .all(|(i, n)| n.inputs.as_slice() == [i])
    }
}
