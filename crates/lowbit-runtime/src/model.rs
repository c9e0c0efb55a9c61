//! The quantized model: what the engine runs and the `.lbq` file stores.
//!
//! Activations between layers are unsigned codes (`u8` storage, `act_bits` significant bits) with per-tensor
//! [`QParams`]. The network input is the raw `u8` pixel (scale 1/255, zero point 0 for images scaled to [0, 1]).
//! Only the final layer's accumulators are dequantized, to f32 logits.
use crate::pack::PackedWeights;
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

/// 2-D convolution on integer codes, NCHW activations, weights `[out_c][in_c][kh][kw]` packed per output channel.
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
    /// Weight codes, one packed row of `in_channels * kh * kw` codes per output channel.
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

/// One layer of a quantized model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QLayer {
    /// Fully connected.
    Dense(QDense),
    /// Convolution.
    Conv2d(QConv2d),
    /// Max pooling on codes (exact: max commutes with a monotonic quantizer).
    MaxPool2d {
        /// Window (rows, cols).
        kernel: (usize, usize),
        /// Stride (rows, cols).
        stride: (usize, usize),
    },
    /// Average pooling with requantization from `input` to `output` parameters.
    AvgPool2d {
        /// Window (rows, cols).
        kernel: (usize, usize),
        /// Stride (rows, cols).
        stride: (usize, usize),
        /// Input quantization.
        input: QParams,
        /// Output quantization.
        output: QParams,
        /// Output bit width.
        bits: u32,
    },
    /// NCHW to flat features (a no-op on the data).
    Flatten,
}

/// A quantized network: input spec, layers, and provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantModel {
    /// Input shape and quantization.
    pub input: InputSpec,
    /// Layers in order; the last produces logits.
    pub layers: Vec<QLayer>,
    /// Number of classes (logits).
    pub classes: usize,
    /// Class names, if known (empty otherwise).
    pub class_names: Vec<String>,
    /// Where the model came from.
    pub provenance: Provenance,
}
