//! Conversion of a prepared (QAT-trained or PTQ-calibrated) model to the runtime's [`QuantModel`].
use super::act::ActQuantizer;
use crate::error::{Error, Result};
use crate::nn::{Dense, Layer, Model};
use lowbit_runtime::model::{InputSpec, OutputStage, Provenance, QDense, QLayer, QuantModel};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::{QParams, Requant};

/// Converts a prepared model (see [`super::prepare_qat`] / [`super::ptq`]) to a [`QuantModel`].
///
/// Per Dense: codes and scales from its [`super::WeightQuantizer::quantize`] (the same call the fake-quant
/// forward makes), packed at the quantizer's bit width; bias `round(b / (s_in * s_w[c]))` in f64, saturated to
/// i32 (in fixed-step mode `b` is first put on the `1/k` grid); input parameters from the preceding activation
/// quantizer (the network input: scale 1/255, zero point 0). A Dense followed by `[ReLU] ActQuant` requantizes
/// to that quantizer's codes with `Requant::from_real(s_in * s_w[c] / s_out)` (ReLU fused as a clamp at the
/// zero point); the last Dense emits logits.
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
    let mut i = 1;
    while i < model.layers.len() {
        match &model.layers[i] {
            Layer::Flatten(_) => {
                layers.push(QLayer::Flatten);
                i += 1;
            }
            Layer::Dense(d) => {
                let mut j = i + 1;
                let relu = matches!(model.layers.get(j), Some(Layer::Relu(_)));
                if relu {
                    j += 1;
                }
                let out_q: Option<&ActQuantizer> = match model.layers.get(j) {
                    Some(Layer::ActQuant(q)) if !q.is_input() => Some(q),
                    _ => None,
                };
                if out_q.is_none() && (relu || j < model.layers.len()) {
                    return Err(not_prepared(&format!(
                        "layer {i} (dense) is not followed by an activation quantizer and is not last"
                    )));
                }
                let q = convert_dense(d, s_in, out_q, relu)?;
                if let Some(a) = out_q {
                    s_in = a.try_qparams()?;
                }
                layers.push(QLayer::Dense(q));
                i = j + 1;
            }
            other => {
                return Err(not_prepared(&format!(
                    "layer {i} ({}) is not after a Dense",
                    other.kind()
                )))
            }
        }
    }
    if !matches!(
        layers.last(),
        Some(QLayer::Dense(QDense {
            output: OutputStage::Logits,
            ..
        }))
    ) {
        return Err(not_prepared(
            "the last layer must be a Dense producing logits",
        ));
    }
    Ok(QuantModel {
        input,
        layers,
        classes: model.classes,
        class_names: Vec::new(),
        provenance,
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
    let (rows, cols) = (d.out_features, d.in_features);
    let wc = wq.quantize(&d.weight, rows, cols);
    let weights = PackedWeights::pack(wc.bits, rows, cols, &wc.codes)?;
    let bias_real = wq.quantize_bias(&d.bias);
    let bias = bias_real
        .iter()
        .enumerate()
        .map(|(c, &b)| {
            let acc_scale = input.scale as f64 * wc.scale_of_row(c) as f64;
            let v = (b as f64 / acc_scale).round();
            if v.is_nan() {
                0
            } else {
                v.clamp(i32::MIN as f64, i32::MAX as f64) as i32
            }
        })
        .collect();
    let output = match output {
        None => OutputStage::Logits,
        Some(a) => {
            let out_qp = a.try_qparams()?;
            let requant = wc
                .scales
                .iter()
                .map(|&s_w| {
                    Requant::from_real(input.scale as f64 * s_w as f64 / out_qp.scale as f64)
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            OutputStage::Requantize {
                qparams: out_qp,
                bits: a.bits(),
                relu,
                requant,
            }
        }
    };
    Ok(QDense {
        in_features: cols,
        out_features: rows,
        weights,
        weight_scales: wc.scales,
        bias,
        input,
        output,
    })
}

/// Bytes of parameters the deployed model stores: packed weight codes, 4 per int32 bias, 4 per weight scale,
/// 8 per requantization multiplier (multiplier + shift) and 8 per input / output [`QParams`]
/// (scale + zero point). Headers and names are not counted.
pub fn model_bytes(qm: &QuantModel) -> usize {
    let stage_bytes = |o: &OutputStage| match o {
        OutputStage::Requantize { requant, .. } => 8 + 8 * requant.len(),
        OutputStage::Logits => 0,
    };
    let mut total = 8; // input QParams
    for l in &qm.layers {
        total += match l {
            QLayer::Dense(d) => {
                d.weights.data.len()
                    + 4 * d.bias.len()
                    + 4 * d.weight_scales.len()
                    + 8
                    + stage_bytes(&d.output)
            }
            QLayer::Conv2d(c) => {
                c.weights.data.len()
                    + 4 * c.bias.len()
                    + 4 * c.weight_scales.len()
                    + 8
                    + stage_bytes(&c.output)
            }
            QLayer::AvgPool2d { .. } => 16,
            QLayer::MaxPool2d { .. } | QLayer::Flatten => 0,
        };
    }
    total
}

/// Bytes of the float model's parameters: 4 per trainable scalar (weights and biases of every layer).
pub fn float_bytes(model: &Model) -> usize {
    // param_count needs `&mut` (it visits gradients too); a clone keeps this a read-only query.
    4 * model.clone().param_count()
}
