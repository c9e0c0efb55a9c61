//! Conversion of a prepared (QAT-trained or PTQ-calibrated) model to the runtime's [`QuantModel`].
use super::act::ActQuantizer;
use super::weight::WeightQuantizer;
use crate::error::{Error, Result};
use crate::nn::conv::window_len;
use crate::nn::layer::QuantRole;
use crate::nn::{Conv2d, Dense, Layer, Model};
use lowbit_runtime::kernels::eltwise::unary_table;
use lowbit_runtime::model::{
    InputSpec, OutputStage, Provenance, QAdd, QAvgPool2d, QConcat, QConv2d, QDense, QLut,
    QMaxPool2d, QNode, QOp, QPad, QSlice, QuantModel,
};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::{QParams, Requant};

/// What a value of the training graph is on the integer side, during [`convert`].
#[derive(Clone)]
enum Lowered {
    /// The float model input, before its quantizer.
    Float,
    /// Codes: runtime value `id` with these parameters and per-sample shape (C, H, W).
    Codes(Codes),
    /// Accumulators (or a sum) of a requantizing node not yet emitted: they become codes at the next activation
    /// quantizer (its parameters the node's output stage), or logits at the graph's output.
    Pending(Pending),
}

/// Codes of a runtime value.
#[derive(Clone, Copy)]
struct Codes {
    id: usize,
    qp: QParams,
    bits: u32,
    shape: (usize, usize, usize),
}

#[derive(Clone)]
struct Pending {
    /// The training node that produced it (Dense, Conv2d, ConvBn2d, AvgPool2d, Add or Concat).
    node: usize,
    /// Its input codes.
    inputs: Vec<Codes>,
    /// A ReLU absorbed as a clamp at the output zero point.
    relu: bool,
    /// The upper bound of an absorbed clip (ReLU6), if any.
    clip_max: Option<f32>,
}

/// Converts a prepared model (see [`super::prepare_qat`] / [`super::ptq()`]) to a [`QuantModel`] graph, node by
/// node in order, tracking what each value is on the integer side:
///
/// - the input quantizer turns the model input into codes (scale 1/255, zero point 0 for pixels);
/// - requantizing ops (Dense, Conv2d, AvgPool2d, Add, Concat) read codes and leave a pending result; a ReLU or a
///   clip from 0 on it is absorbed (a clamp in the output stage); the activation quantizer that reads it emits the
///   runtime node, requantizing to its codes: a matrix node with `Requant::from_real(s_in * s_w[c] / s_out)`, an
///   average pool, add or concat with their documented fixed-point formulas; at the graph's output a matrix node
///   emits logits;
/// - MaxPool2d, Flatten, Pad and Slice run on codes with unchanged parameters; Dropout (identity in inference)
///   disappears; a ReLU or clip on codes becomes a 256-entry table.
///
/// Per Dense or Conv2d: codes and scales from its [`super::WeightQuantizer::quantize`] (the same call the
/// fake-quant forward makes; rows = output channels, columns `ic/groups*kh*kw` in the runtime's order), packed at
/// the quantizer's bit width; bias `round(b / (s_in * s_w[c]))` in f64 (in fixed-step mode `b` is first put on
/// the `1/k` grid). Batch norms must have been folded ([`super::prepare_qat`] does it): a [`super::ConvBn2d`]
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
    let emit = |nodes: &mut Vec<QNode>, name: &str, inputs: Vec<usize>, op: QOp| -> usize {
        nodes.push(QNode {
            name: name.to_string(),
            inputs,
            op,
        });
        nodes.len()
    };
    for (j, node) in model.nodes.iter().enumerate() {
        let name = node.name.as_str();
        let cannot =
            |what: &str| not_prepared(format!("node {name} ({}) {what}", node.layer.kind()));
        let args: Vec<Lowered> = node.inputs.iter().map(|&v| low[v].clone()).collect();
        let codes_args = || -> Result<Vec<Codes>> {
            args.iter()
                .map(|a| match a {
                    Lowered::Codes(c) => Ok(*c),
                    Lowered::Pending(p) => Err(cannot(&format!(
                        "reads the output of node {} before an activation quantizer",
                        model.nodes[p.node].name
                    ))),
                    Lowered::Float => Err(cannot(
                        "reads the float input: the input quantizer must come first",
                    )),
                })
                .collect()
        };
        let out = match (&node.layer, args.as_slice()) {
            (Layer::ActQuant(q), [Lowered::Float]) if q.is_input() => {
                let qp = q.try_qparams()?;
                input_qp = Some(qp);
                Lowered::Codes(Codes {
                    id: 0,
                    qp,
                    bits: 8,
                    shape: (channels, height, width),
                })
            }
            (l, _) if l.quant_role() == QuantRole::Weighted || is_requantizing(l) => {
                Lowered::Pending(Pending {
                    node: j,
                    inputs: codes_args()?,
                    relu: false,
                    clip_max: None,
                })
            }
            (Layer::Relu(_), [Lowered::Pending(p)]) => Lowered::Pending(Pending {
                relu: true,
                ..p.clone()
            }),
            (Layer::Clip(c), [Lowered::Pending(p)]) if c.min == 0.0 => Lowered::Pending(Pending {
                relu: true,
                clip_max: Some(p.clip_max.map_or(c.max, |m| m.min(c.max))),
                ..p.clone()
            }),
            (Layer::ActQuant(q), [Lowered::Pending(p)]) if !q.is_input() => {
                let (op, shape) = lower_pending(model, p, Some(q))?;
                let producer = &model.nodes[p.node].name;
                let ids = p.inputs.iter().map(|c| c.id).collect();
                Lowered::Codes(Codes {
                    id: emit(&mut nodes, producer, ids, op),
                    qp: q.try_qparams()?,
                    bits: q.bits(),
                    shape,
                })
            }
            // Identity in inference; a flatten of logits changes nothing either.
            (Layer::Dropout(_), [x]) => x.clone(),
            (Layer::Flatten(_), [x @ Lowered::Pending(_)]) => x.clone(),
            (layer, _) => {
                let [x] = codes_args()?[..] else {
                    return Err(cannot("takes several inputs"));
                };
                let (op, shape) = lower_on_codes(model, j, x)?;
                let _ = layer;
                Lowered::Codes(Codes {
                    id: emit(&mut nodes, name, vec![x.id], op),
                    shape,
                    qp: x.qp,
                    bits: x.bits,
                })
            }
        };
        low.push(out);
    }
    let Some(qparams) = input_qp else {
        return Err(not_prepared("it has no input quantizer".into()));
    };
    match low.pop() {
        Some(Lowered::Pending(p))
            if !p.relu && p.clip_max.is_none() && is_matrix(&model.nodes[p.node].layer) =>
        {
            let (op, _) = lower_pending(model, &p, None)?;
            let ids = p.inputs.iter().map(|c| c.id).collect();
            emit(&mut nodes, &model.nodes[p.node].name, ids, op);
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
        normalization: model.normalization.clone(),
    })
}

/// Whether a layer is a requantizing op without weights (average pool, add, concat, element-wise functions).
fn is_requantizing(l: &Layer) -> bool {
    matches!(
        l.quant_role(),
        QuantRole::Requantizing | QuantRole::Elementwise
    )
}

/// A code-transparent or element-wise op on codes `x` (node `j`): its runtime op (parameters unchanged) and
/// output shape.
fn lower_on_codes(model: &Model, j: usize, x: Codes) -> Result<(QOp, (usize, usize, usize))> {
    let node = &model.nodes[j];
    let (c, h, w) = x.shape;
    let bad = |what: String| {
        Error::Shape(format!(
            "model {}: node {} ({}): {what}",
            model.spec,
            node.name,
            node.layer.kind()
        ))
    };
    Ok(match &node.layer {
        Layer::MaxPool2d(pool) => {
            let (oh, ow) = match (
                window_len(h, pool.kernel.0, pool.stride.0, 0),
                window_len(w, pool.kernel.1, pool.stride.1, 0),
            ) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err(bad("does not fit its input".into())),
            };
            let op = QOp::MaxPool2d(QMaxPool2d {
                kernel: pool.kernel,
                stride: pool.stride,
            });
            (op, (c, oh, ow))
        }
        Layer::Flatten(_) => (QOp::Flatten, (c * h * w, 1, 1)),
        Layer::Pad(p) => (
            QOp::Pad(QPad {
                channels: (p.front, p.back),
                rows: (p.top, p.bottom),
                cols: (p.left, p.right),
            }),
            (
                c + p.front + p.back,
                h + p.top + p.bottom,
                w + p.left + p.right,
            ),
        ),
        Layer::Slice(sl) => {
            let axis = |a: &crate::nn::AxisSlice, len: usize| {
                let end = a.end.min(len);
                [a.start, end, a.step]
            };
            let op = QSlice {
                channels: axis(&sl.channels, c),
                rows: axis(&sl.rows, h),
                cols: axis(&sl.cols, w),
            };
            let len = |[a, b, st]: [usize; 3]| b.saturating_sub(a).div_ceil(st.max(1));
            let shape = (len(op.channels), len(op.rows), len(op.cols));
            (QOp::Slice(op), shape)
        }
        Layer::Relu(_) | Layer::Clip(_) => {
            let (lo, hi) = match &node.layer {
                Layer::Clip(cl) => (cl.min, cl.max),
                _ => (0.0, f32::INFINITY),
            };
            let (_, qmax) = lowbit_runtime::qparams::act_code_range(x.bits)?;
            let table = unary_table(x.qp, x.qp, 0, qmax, |v| v.clamp(lo, hi))?;
            let op = QOp::Lut(QLut {
                input: x.qp,
                output: x.qp,
                bits: x.bits,
                table: table.to_vec(),
            });
            (op, x.shape)
        }
        _ => return Err(bad("cannot run on activation codes".into())),
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
    let first = p.inputs.first().copied().ok_or_else(|| {
        Error::Shape(format!(
            "model {}: node {} has no input",
            model.spec, node.name
        ))
    })?;
    let (s_in, (c, h, w)) = (first.qp, first.shape);
    let bad_shape = || {
        Error::Shape(format!(
            "model {}: node {} ({}) does not fit its input {c}x{h}x{w}",
            model.spec,
            node.name,
            node.layer.kind()
        ))
    };
    let unsupported = |what: &str| {
        Error::Shape(format!(
            "model {}: node {} ({}): {what}",
            model.spec,
            node.name,
            node.layer.kind()
        ))
    };
    let named = |e: Error| match e {
        Error::Conversion(m) => Error::Conversion(format!("node {}: {m}", node.name)),
        other => other,
    };
    // The activation quantizer that turns the result into codes; only a matrix node may emit logits.
    let requantized =
        || -> Result<&ActQuantizer> { out.ok_or_else(|| unsupported("cannot produce the logits")) };
    let folded;
    let layer = match &node.layer {
        Layer::ConvBn2d(cb) => {
            folded = Layer::Conv2d(cb.folded_conv()?);
            &folded
        }
        other => other,
    };
    let max_code = |q: Option<&ActQuantizer>| -> Result<Option<i32>> {
        match (p.clip_max, q) {
            (Some(hi), Some(q)) => {
                let qp = q.try_qparams()?;
                let (_, qmax) = lowbit_runtime::qparams::act_code_range(q.bits())?;
                let code = lowbit_runtime::qparams::quantize(hi, qp, qp.zero_point, qmax);
                Ok((code < qmax).then_some(code))
            }
            _ => Ok(None),
        }
    };
    match layer {
        Layer::Dense(d) => {
            if d.in_features != c * h * w {
                return Err(bad_shape());
            }
            let mut q = convert_dense(d, s_in, out, p.relu).map_err(named)?;
            set_max_code(&mut q.output, max_code(out)?);
            Ok((QOp::Dense(q), (d.out_features, 1, 1)))
        }
        Layer::Conv2d(cv) => {
            if cv.in_channels != c {
                return Err(bad_shape());
            }
            let (oh, ow) = cv.output_hw(h, w).ok_or_else(bad_shape)?;
            let mut q = convert_conv(cv, s_in, out, p.relu).map_err(named)?;
            set_max_code(&mut q.output, max_code(out)?);
            Ok((QOp::Conv2d(q), (cv.out_channels, oh, ow)))
        }
        Layer::AvgPool2d(pool) => {
            let q = requantized()?;
            if p.relu {
                return Err(unsupported(
                    "a ReLU after an average pool of codes is not supported",
                ));
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
        Layer::Add(_) => {
            let q = requantized()?;
            let [a, b] = p.inputs[..] else {
                return Err(unsupported("takes two inputs"));
            };
            if a.shape != b.shape {
                return Err(bad_shape());
            }
            if p.clip_max.is_some() {
                return Err(unsupported("a clip after a residual add is not supported"));
            }
            let op = QOp::Add(QAdd {
                inputs: [a.qp, b.qp],
                output: q.try_qparams()?,
                bits: q.bits(),
                relu: p.relu,
            });
            Ok((op, a.shape))
        }
        Layer::Unary(u) => {
            // The function and any clamp absorbed after it, tabulated once per input code.
            let q = requantized()?;
            let out = q.try_qparams()?;
            let (_, qmax) = lowbit_runtime::qparams::act_code_range(q.bits())?;
            let (lo, hi) = (
                if p.relu { 0.0 } else { f32::NEG_INFINITY },
                p.clip_max.unwrap_or(f32::INFINITY),
            );
            let table = unary_table(s_in, out, 0, qmax, |x| u.apply(x).clamp(lo, hi))?;
            let op = QOp::Lut(QLut {
                input: s_in,
                output: out,
                bits: q.bits(),
                table: table.to_vec(),
            });
            Ok((op, (c, h, w)))
        }
        Layer::Concat(_) => {
            let q = requantized()?;
            if p.relu || p.clip_max.is_some() {
                return Err(unsupported("a clamp after a concat is not supported"));
            }
            if p.inputs.iter().any(|x| (x.shape.1, x.shape.2) != (h, w)) {
                return Err(bad_shape());
            }
            let channels = p.inputs.iter().map(|x| x.shape.0).sum();
            let op = QOp::Concat(QConcat {
                inputs: p.inputs.iter().map(|x| x.qp).collect(),
                output: q.try_qparams()?,
                bits: q.bits(),
            });
            Ok((op, (channels, h, w)))
        }
        _ => Err(unsupported("is not a requantizing op")),
    }
}

/// Puts a fused clip's highest code on a requantizing output stage.
fn set_max_code(stage: &mut OutputStage, code: Option<i32>) {
    if let OutputStage::Requantize { max_code, .. } = stage {
        *max_code = code;
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
        groups: cv.groups(),
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
