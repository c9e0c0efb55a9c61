//! Conversion of a prepared (QAT-trained or PTQ-calibrated) model to the runtime's [`QuantModel`].
use super::act::ActQuantizer;
use super::weight::WeightQuantizer;
use crate::error::{Error, Result};
use crate::nn::conv::window_len;
use crate::nn::{Conv2d, Dense, Layer, Model};
use lowbit_runtime::model::{
    InputSpec, OutputStage, Provenance, QAvgPool2d, QConv2d, QDense, QMaxPool2d, QOp, QuantModel,
};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::{QParams, Requant};

/// Converts a prepared model (see [`super::prepare_qat`] / [`super::ptq`]) to a [`QuantModel`].
///
/// Per Dense or Conv2d: codes and scales from its [`super::WeightQuantizer::quantize`] (the same call the
/// fake-quant forward makes; rows = output channels, columns `ic*kh*kw` in the runtime's order), packed at the
/// quantizer's bit width; bias `round(b / (s_in * s_w[c]))` in f64, saturated to i32 (in fixed-step mode `b` is
/// first put on the `1/k` grid); input parameters from the preceding activation quantizer (the network input:
/// scale 1/255, zero point 0). A weight layer followed by `[ReLU] ActQuant` requantizes to that quantizer's codes
/// with `Requant::from_real(s_in * s_w[c] / s_out)` (ReLU fused as a clamp at the zero point); the last one
/// emits logits. MaxPool2d becomes a pool on codes with unchanged parameters; AvgPool2d (global pools resolved
/// to the map size) must be followed by an ActQuant, whose parameters become its output. Flatten is kept,
/// Dropout (identity in inference) dropped. Batch norms must have been folded ([`super::prepare_qat`] does it):
/// a [`super::ConvBn2d`] (batch-statistics QAT) converts as its folded convolution
/// ([`super::ConvBn2d::folded_conv`]: weights `W * f` quantized by its quantizer, bias
/// `beta + (b - mean) * f`, running statistics), exactly the function its inference forward computes.
pub fn convert(model: &Model, provenance: Provenance) -> Result<QuantModel> {
    let not_prepared = |what: &str| {
        Error::Shape(format!(
            "model {} is not prepared for conversion: {what}",
            model.spec
        ))
    };
    let input_qp = match model.layers.first() {
        Some(Layer::ActQuant(q)) if q.is_input() => q.try_qparams()?,
        _ => return Err(not_prepared("the first layer must be the input quantizer")),
    };
    let [channels, height, width] = model.input_shape;
    let input = InputSpec {
        channels,
        height,
        width,
        qparams: input_qp,
    };
    let mut layers = Vec::new();
    let mut s_in = input_qp;
    // Activation shape (C, H, W) reaching layer i; Dense output is (N, 1, 1).
    let (mut c, mut h, mut w) = (channels, height, width);
    let bad_shape =
        |i: usize, what: &str| not_prepared(&format!("layer {i} ({what}) does not fit its input"));
    let mut i = 1;
    while i < model.layers.len() {
        match &model.layers[i] {
            Layer::Flatten(_) => {
                layers.push(QOp::Flatten);
                (c, h, w) = (c * h * w, 1, 1);
                i += 1;
            }
            Layer::Dropout(_) => i += 1,
            Layer::MaxPool2d(p) => {
                let (oh, ow) = match (
                    window_len(h, p.kernel.0, p.stride.0, 0),
                    window_len(w, p.kernel.1, p.stride.1, 0),
                ) {
                    (Some(a), Some(b)) => (a, b),
                    _ => return Err(bad_shape(i, "maxpool2d")),
                };
                layers.push(QOp::MaxPool2d(QMaxPool2d {
                    kernel: p.kernel,
                    stride: p.stride,
                }));
                (h, w) = (oh, ow);
                i += 1;
            }
            Layer::AvgPool2d(p) => {
                let (kernel, stride) = p.window_for(h, w);
                let (oh, ow) = match (
                    window_len(h, kernel.0, stride.0, 0),
                    window_len(w, kernel.1, stride.1, 0),
                ) {
                    (Some(a), Some(b)) => (a, b),
                    _ => return Err(bad_shape(i, "avgpool2d")),
                };
                let Some(Layer::ActQuant(q)) = model.layers.get(i + 1) else {
                    return Err(not_prepared(&format!(
                        "layer {i} (avgpool2d) is not followed by an activation quantizer"
                    )));
                };
                let out = q.try_qparams()?;
                layers.push(QOp::AvgPool2d(QAvgPool2d {
                    kernel,
                    stride,
                    input: s_in,
                    output: out,
                    bits: q.bits(),
                }));
                s_in = out;
                (h, w) = (oh, ow);
                i += 2;
            }
            layer @ (Layer::Dense(_) | Layer::Conv2d(_) | Layer::ConvBn2d(_)) => {
                let mut j = i + 1;
                let relu = matches!(model.layers.get(j), Some(Layer::Relu(_)));
                if relu {
                    j += 1;
                }
                let out_q: Option<&ActQuantizer> = match model.layers.get(j) {
                    Some(Layer::ActQuant(q)) if !q.is_input() => Some(q),
                    _ => None,
                };
                let is_last = model.layers[j..]
                    .iter()
                    .all(|l| matches!(l, Layer::Dropout(_) | Layer::Flatten(_)));
                if out_q.is_none() && (relu || !is_last) {
                    return Err(not_prepared(&format!(
                        "layer {i} ({}) is not followed by an activation quantizer and is not last",
                        layer.kind()
                    )));
                }
                let folded;
                let layer = match layer {
                    Layer::ConvBn2d(cb) => {
                        folded = Layer::Conv2d(cb.folded_conv()?);
                        &folded
                    }
                    other => other,
                };
                match layer {
                    Layer::Dense(d) => {
                        if d.in_features != c * h * w {
                            return Err(bad_shape(i, "dense"));
                        }
                        layers.push(QOp::Dense(
                            convert_dense(d, s_in, out_q, relu).map_err(|e| in_layer(i, e))?,
                        ));
                        (c, h, w) = (d.out_features, 1, 1);
                    }
                    Layer::Conv2d(cv) => {
                        if cv.in_channels != c {
                            return Err(bad_shape(i, "conv2d"));
                        }
                        let (oh, ow) = cv.output_hw(h, w).ok_or_else(|| bad_shape(i, "conv2d"))?;
                        layers.push(QOp::Conv2d(
                            convert_conv(cv, s_in, out_q, relu).map_err(|e| in_layer(i, e))?,
                        ));
                        (c, h, w) = (cv.out_channels, oh, ow);
                    }
                    _ => return Err(not_prepared("internal: expected a Dense or Conv2d")),
                }
                if let Some(a) = out_q {
                    s_in = a.try_qparams()?;
                    i = j + 1;
                } else {
                    i = j;
                }
            }
            other => {
                return Err(not_prepared(&format!(
                    "layer {i} ({}) is not after a Dense or Conv2d",
                    other.kind()
                )))
            }
        }
    }
    let ends_in_logits = match layers.last() {
        Some(QOp::Dense(d)) => d.output == OutputStage::Logits,
        Some(QOp::Conv2d(cv)) => cv.output == OutputStage::Logits,
        _ => false,
    };
    if !ends_in_logits {
        return Err(not_prepared(
            "the last layer must be a Dense or Conv2d producing logits",
        ));
    }
    Ok(QuantModel {
        provenance,
        ..QuantModel::chain(input, layers, model.classes)
    })
}

/// Names the layer in a conversion error.
fn in_layer(i: usize, e: Error) -> Error {
    match e {
        Error::Conversion(m) => Error::Conversion(format!("layer {i}: {m}")),
        other => other,
    }
}

/// What a Dense and a Conv2d share once quantized.
struct Quantized {
    weights: PackedWeights,
    weight_scales: Vec<f32>,
    bias: Vec<i32>,
    output: OutputStage,
}

fn quantize_matrix(
    wq: &WeightQuantizer,
    weight: &[f32],
    bias: &[f32],
    (rows, cols): (usize, usize),
    input: QParams,
    output: Option<&ActQuantizer>,
    relu: bool,
) -> Result<Quantized> {
    let wc = wq.quantize(weight, rows, cols);
    let weights = PackedWeights::pack(wc.bits, rows, cols, &wc.codes)?;
    let bias_real = wq.quantize_bias(bias);
    // The engine needs |bias| + K * 255 * 127 to fit an i32 accumulator (kernels::MAX_K).
    let room = i32::MAX as f64 - cols as f64 * 255.0 * 127.0;
    let bias = bias_real
        .iter()
        .enumerate()
        .map(|(c, &b)| {
            let acc_scale = input.scale as f64 * wc.scale_of_row(c) as f64;
            let v = (b as f64 / acc_scale).round();
            if v.is_nan() {
                Ok(0)
            } else if v.abs() > room {
                Err(Error::Conversion(format!(
                    "bias[{c}] = {b:e} is {v:e} accumulator steps (input step x weight step = {acc_scale:e}), \
                     beyond what an i32 accumulator holds with K = {cols}: the weights or ranges are degenerate, \
                     as after a diverged training"
                )))
            } else {
                Ok(v as i32)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let output = match output {
        None => OutputStage::Logits,
        Some(a) => {
            let out_qp = a.try_qparams()?;
            let requant = wc
                .scales
                .iter()
                .map(|&s_w| {
                    let real = input.scale as f64 * s_w as f64 / out_qp.scale as f64;
                    Requant::from_real(real).map_err(|_| {
                        Error::Conversion(format!(
                            "requantization multiplier s_in * s_w / s_out = {real:e} (input step {:e}, weight \
                             step {s_w:e}, output step {:e}) is outside [2^-31, 2^30): the quantization ranges \
                             are degenerate, as after a diverged training",
                            input.scale, out_qp.scale
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            OutputStage::Requantize {
                qparams: out_qp,
                bits: a.bits(),
                relu,
                requant,
            }
        }
    };
    Ok(Quantized {
        weights,
        weight_scales: wc.scales,
        bias,
        output,
    })
}

/// One Dense layer: codes, scales, bias in accumulator units, output stage.
pub fn convert_dense(
    d: &Dense,
    input: QParams,
    output: Option<&ActQuantizer>,
    relu: bool,
) -> Result<QDense> {
    let wq = d
        .weight_quant
        .as_ref()
        .ok_or_else(|| Error::Shape("dense layer has no weight quantizer".into()))?;
    let q = quantize_matrix(
        wq,
        &d.weight,
        &d.bias,
        (d.out_features, d.in_features),
        input,
        output,
        relu,
    )?;
    Ok(QDense {
        in_features: d.in_features,
        out_features: d.out_features,
        weights: q.weights,
        weight_scales: q.weight_scales,
        bias: q.bias,
        input,
        output: q.output,
    })
}

/// One Conv2d layer, as [`convert_dense`] with rows = output channels and columns `ic*kh*kw`.
pub fn convert_conv(
    cv: &Conv2d,
    input: QParams,
    output: Option<&ActQuantizer>,
    relu: bool,
) -> Result<QConv2d> {
    let wq = cv
        .weight_quant
        .as_ref()
        .ok_or_else(|| Error::Shape("conv2d layer has no weight quantizer".into()))?;
    let q = quantize_matrix(
        wq,
        &cv.weight,
        &cv.bias,
        (cv.out_channels, cv.k()),
        input,
        output,
        relu,
    )?;
    Ok(QConv2d {
        in_channels: cv.in_channels,
        out_channels: cv.out_channels,
        kernel: cv.kernel,
        stride: cv.stride,
        padding: cv.padding,
        weights: q.weights,
        weight_scales: q.weight_scales,
        bias: q.bias,
        input,
        output: q.output,
    })
}

/// Bytes of parameters the deployed model stores: packed weight codes, 4 per int32 bias, 4 per weight scale,
/// 8 per requantization multiplier (multiplier + shift) and 8 per input / output [`QParams`]
/// (scale + zero point). Headers and names are not counted.
pub fn model_bytes(qm: &QuantModel) -> usize {
    8 + qm.ops().map(node_bytes).sum::<usize>() // 8: the input QParams
}

/// The parameter bytes of one op, as [`model_bytes`] counts them.
pub fn node_bytes(op: &QOp) -> usize {
    let stage_bytes = |o: &OutputStage| match o {
        OutputStage::Requantize { requant, .. } => 8 + 8 * requant.len(),
        OutputStage::Logits => 0,
    };
    match op {
        QOp::Dense(d) => {
            d.weights.data.len()
                + 4 * d.bias.len()
                + 4 * d.weight_scales.len()
                + 8
                + stage_bytes(&d.output)
        }
        QOp::Conv2d(c) => {
            c.weights.data.len()
                + 4 * c.bias.len()
                + 4 * c.weight_scales.len()
                + 8
                + stage_bytes(&c.output)
        }
        QOp::AvgPool2d(_) => 16,
        QOp::MaxPool2d(_) | QOp::Flatten => 0,
    }
}

/// Bytes of the float model's parameters: 4 per trainable scalar (weights and biases of every layer).
pub fn float_bytes(model: &Model) -> usize {
    // param_count needs `&mut` (it visits gradients too); a clone keeps this a read-only query.
    4 * model.clone().param_count()
}
