//! Conversion of a prepared (QAT-trained or PTQ-calibrated) model to the runtime's [`QuantModel`].
use super::act::ActQuantizer;
use super::weight::WeightQuantizer;
use crate::error::{Error, Result};
use crate::nn::conv::window_len;
use crate::nn::{Conv2d, Dense, Layer, Model};
use lowbit_runtime::model::{
    InputSpec, OutputStage, Provenance, QAvgPool2d, QConv2d, QDense, QMaxPool2d, QNode, QOp,
    QuantModel,
};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::{QParams, Requant};

/// What a value of the training graph is on the integer side, during [`convert`].
#[derive(Clone)]
enum Lowered {
    /// The float model input, before its quantizer.
    Float,
    /// Codes: runtime value `id` with these parameters and per-sample shape (C, H, W).
    Codes {
        id: usize,
        qp: QParams,
        bits: u32,
        shape: (usize, usize, usize),
    },
    /// Accumulators of a requantizing node not yet emitted: they become codes at the next activation quantizer
    /// (its parameters the node's output stage), or logits at the graph's output.
    Pending(Pending),
}

#[derive(Clone)]
struct Pending {
    /// The training node that produced it (Dense, Conv2d, ConvBn2d or AvgPool2d).
    node: usize,
    /// Its input codes.
    input: (usize, QParams, (usize, usize, usize)),
    /// A ReLU absorbed as a clamp at the output zero point.
    relu: bool,
}

/// Converts a prepared model (see [`super::prepare_qat`] / [`super::ptq`]) to a [`QuantModel`] graph, node by
/// node in order, tracking what each value is on the integer side:
///
/// - the input quantizer turns the model input into codes (scale 1/255, zero point 0 for pixels);
/// - Dense, Conv2d and AvgPool2d read codes and leave pending accumulators; a ReLU on them is absorbed (a clamp
///   at the zero point); the activation quantizer that reads them emits the runtime node, requantizing to its
///   codes: for a matrix node with `Requant::from_real(s_in * s_w[c] / s_out)`, for an average pool with its
///   documented formula; at the graph's output a matrix node emits logits;
/// - MaxPool2d and Flatten run on codes with unchanged parameters; Dropout (identity in inference) disappears.
///
/// Per Dense or Conv2d: codes and scales from its [`super::WeightQuantizer::quantize`] (the same call the
/// fake-quant forward makes; rows = output channels, columns `ic*kh*kw` in the runtime's order), packed at the
/// quantizer's bit width; bias `round(b / (s_in * s_w[c]))` in f64 (in fixed-step mode `b` is first put on the
/// `1/k` grid). Batch norms must have been folded ([`super::prepare_qat`] does it): a [`super::ConvBn2d`]
/// (batch-statistics QAT) converts as its folded convolution ([`super::ConvBn2d::folded_conv`]: weights `W * f`
/// quantized by its quantizer, bias `beta + (b - mean) * f`, running statistics), exactly the function its
/// inference forward computes. Runtime nodes take the name of the training node that computes them.
pub fn convert(model: &Model, provenance: Provenance) -> Result<QuantModel> {
    let not_prepared = |what: String| {
        Error::Shape(format!(
            "model {} is not prepared for conversion: {what}",
            model.spec
        ))
    };
    model.check_structure()?;
    let n = model.nodes.len();
    let [channels, height, width] = model.input_shape;
    let mut input_qp: Option<QParams> = None;
    let mut low: Vec<Lowered> = Vec::with_capacity(n + 1);
    low.push(Lowered::Float);
    let mut nodes: Vec<QNode> = Vec::new();
    let emit = |nodes: &mut Vec<QNode>, name: &str, input: usize, op: QOp| -> usize {
        nodes.push(QNode {
            name: name.to_string(),
            inputs: vec![input],
            op,
        });
        nodes.len()
    };
    for (j, node) in model.nodes.iter().enumerate() {
        let name = node.name.as_str();
        let cannot =
            |what: &str| not_prepared(format!("node {name} ({}) {what}", node.layer.kind()));
        let x = match node.inputs.as_slice() {
            [v] => low[*v].clone(),
            _ => {
                return Err(cannot(
                    "takes several inputs, which conversion does not support yet",
                ))
            }
        };
        let out = match (&node.layer, x) {
            (Layer::ActQuant(q), Lowered::Float) if q.is_input() => {
                let qp = q.try_qparams()?;
                input_qp = Some(qp);
                Lowered::Codes {
                    id: 0,
                    qp,
                    bits: 8,
                    shape: (channels, height, width),
                }
            }
            (_, Lowered::Float) => {
                return Err(cannot(
                    "reads the float input: the input quantizer must come first",
                ))
            }
            (
                Layer::Dense(_) | Layer::Conv2d(_) | Layer::ConvBn2d(_) | Layer::AvgPool2d(_),
                Lowered::Codes { id, qp, shape, .. },
            ) => Lowered::Pending(Pending {
                node: j,
                input: (id, qp, shape),
                relu: false,
            }),
            (Layer::Relu(_), Lowered::Pending(mut p)) => {
                p.relu = true;
                Lowered::Pending(p)
            }
            (Layer::ActQuant(q), Lowered::Pending(p)) if !q.is_input() => {
                let (op, shape) = lower_pending(model, &p, Some(q))?;
                let producer = &model.nodes[p.node].name;
                let id = emit(&mut nodes, producer, p.input.0, op);
                Lowered::Codes {
                    id,
                    qp: q.try_qparams()?,
                    bits: q.bits(),
                    shape,
                }
            }
            (
                Layer::MaxPool2d(pool),
                Lowered::Codes {
                    id,
                    qp,
                    bits,
                    shape: (c, h, w),
                },
            ) => {
                let (oh, ow) = match (
                    window_len(h, pool.kernel.0, pool.stride.0, 0),
                    window_len(w, pool.kernel.1, pool.stride.1, 0),
                ) {
                    (Some(a), Some(b)) => (a, b),
                    _ => return Err(cannot("does not fit its input")),
                };
                let op = QOp::MaxPool2d(QMaxPool2d {
                    kernel: pool.kernel,
                    stride: pool.stride,
                });
                Lowered::Codes {
                    id: emit(&mut nodes, name, id, op),
                    qp,
                    bits,
                    shape: (c, oh, ow),
                }
            }
            (
                Layer::Flatten(_),
                Lowered::Codes {
                    id,
                    qp,
                    bits,
                    shape: (c, h, w),
                },
            ) => Lowered::Codes {
                id: emit(&mut nodes, name, id, QOp::Flatten),
                qp,
                bits,
                shape: (c * h * w, 1, 1),
            },
            // Identity in inference; a flatten of logits changes nothing either.
            (Layer::Dropout(_), x) => x,
            (Layer::Flatten(_), x @ Lowered::Pending(_)) => x,
            (_, Lowered::Pending(p)) => {
                return Err(cannot(&format!(
                    "reads the output of node {} before an activation quantizer",
                    model.nodes[p.node].name
                )))
            }
            (_, Lowered::Codes { .. }) => return Err(cannot("cannot run on activation codes")),
        };
        low.push(out);
    }
    let Some(qparams) = input_qp else {
        return Err(not_prepared("it has no input quantizer".into()));
    };
    match low.pop() {
        Some(Lowered::Pending(p)) if !p.relu && is_matrix(&model.nodes[p.node].layer) => {
            let (op, _) = lower_pending(model, &p, None)?;
            emit(&mut nodes, &model.nodes[p.node].name, p.input.0, op);
        }
        _ => {
            return Err(not_prepared(
                "the last node must be a Dense or Conv2d producing logits".into(),
            ))
        }
    }
    let input = InputSpec {
        channels,
        height,
        width,
        qparams,
    };
    Ok(QuantModel {
        input,
        nodes,
        classes: model.classes,
        class_names: Vec::new(),
        provenance,
    })
}

fn is_matrix(l: &Layer) -> bool {
    matches!(l, Layer::Dense(_) | Layer::Conv2d(_) | Layer::ConvBn2d(_))
}

/// The runtime op of a pending node with its output stage (`out`: the activation quantizer, or `None` for
/// logits), and its output shape.
fn lower_pending(
    model: &Model,
    p: &Pending,
    out: Option<&ActQuantizer>,
) -> Result<(QOp, (usize, usize, usize))> {
    let node = &model.nodes[p.node];
    let (_, s_in, (c, h, w)) = p.input;
    let bad_shape = || {
        Error::Shape(format!(
            "model {}: node {} ({}) does not fit its input {c}x{h}x{w}",
            model.spec,
            node.name,
            node.layer.kind()
        ))
    };
    let named = |e: Error| match e {
        Error::Conversion(m) => Error::Conversion(format!("node {}: {m}", node.name)),
        other => other,
    };
    let folded;
    let layer = match &node.layer {
        Layer::ConvBn2d(cb) => {
            folded = Layer::Conv2d(cb.folded_conv()?);
            &folded
        }
        other => other,
    };
    match layer {
        Layer::Dense(d) => {
            if d.in_features != c * h * w {
                return Err(bad_shape());
            }
            let q = convert_dense(d, s_in, out, p.relu).map_err(named)?;
            Ok((QOp::Dense(q), (d.out_features, 1, 1)))
        }
        Layer::Conv2d(cv) => {
            if cv.in_channels != c {
                return Err(bad_shape());
            }
            let (oh, ow) = cv.output_hw(h, w).ok_or_else(bad_shape)?;
            let q = convert_conv(cv, s_in, out, p.relu).map_err(named)?;
            Ok((QOp::Conv2d(q), (cv.out_channels, oh, ow)))
        }
        Layer::AvgPool2d(pool) => {
            let Some(q) = out else {
                return Err(Error::Shape(format!(
                    "model {}: node {} (avgpool2d) cannot produce the logits",
                    model.spec, node.name
                )));
            };
            if p.relu {
                return Err(Error::Shape(format!(
                    "model {}: node {}: a ReLU after an average pool of codes is not supported",
                    model.spec, node.name
                )));
            }
            let (kernel, stride) = pool.window_for(h, w);
            let (oh, ow) = match (
                window_len(h, kernel.0, stride.0, 0),
                window_len(w, kernel.1, stride.1, 0),
            ) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err(bad_shape()),
            };
            let op = QOp::AvgPool2d(QAvgPool2d {
                kernel,
                stride,
                input: s_in,
                output: q.try_qparams()?,
                bits: q.bits(),
            });
            Ok((op, (c, oh, ow)))
        }
        _ => Err(Error::Shape(format!(
            "model {}: node {} ({}) is not a requantizing op",
            model.spec,
            node.name,
            node.layer.kind()
        ))),
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
                max_code: None,
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
        groups: 1,
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
        QOp::Add(_) => 24,
        QOp::Concat(c) => 8 * (c.inputs.len() + 1),
        QOp::Lut(l) => l.table.len() + 16,
        QOp::MaxPool2d(_) | QOp::Flatten | QOp::Pad(_) | QOp::Slice(_) => 0,
    }
}

/// Bytes of the float model's parameters: 4 per trainable scalar (weights and biases of every layer).
pub fn float_bytes(model: &Model) -> usize {
    // param_count needs `&mut` (it visits gradients too); a clone keeps this a read-only query.
    4 * model.clone().param_count()
}
