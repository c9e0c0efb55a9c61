//! The QDQ export of a quantized model (the form and its differences from lowbit's engine: see [`super`]).
use super::{attr_int, window_attrs, Builder, ExportError, WeightType, INPUT};
use crate::onnx::proto::{tensor_proto::DataType, GraphProto};
use lowbit_runtime::model::{OutputStage, QOp, QuantModel};
use lowbit_runtime::ops::{ValueInfo, ValueQuant};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::{dequantize, AddParams, QParams, Rescale};

/// A code value of the lowbit graph in ONNX: its uint8 codes, their dequantized floats, and whether the tensor is
/// `[N, K]` (flat) rather than `[N, C, H, W]`.
#[derive(Debug, Clone)]
struct Val {
    q: String,
    dq: String,
    flat: bool,
}

/// What a node produced.
enum Out {
    Codes(Val),
    /// The logits (the last node's float output) and whether they are `[N, classes]` already.
    Logits(String, bool),
}

/// The QDQ graph of a quantized model.
pub(super) fn graph(
    model: &QuantModel,
    weight_type: WeightType,
) -> Result<GraphProto, ExportError> {
    let info = lowbit_runtime::graph::check(model)
        .map_err(|e| ExportError::InvalidModel(e.to_string()))?;
    let mut b = Builder::new();
    let input = quantize(&mut b, INPUT, model.input.qparams, INPUT, false);
    let mut vals: Vec<Option<Val>> = vec![Some(input)];
    let mut logits = None;
    for (j, node) in model.nodes.iter().enumerate() {
        let name = node.name.as_str();
        let ins: Vec<(&Val, &ValueInfo)> = node
            .inputs
            .iter()
            .map(|&v| Some((vals.get(v)?.as_ref()?, info.values.get(v)?)))
            .collect::<Option<_>>()
            .ok_or_else(|| ExportError::InvalidModel(format!("node {name:?} reads the logits")))?;
        let (x, xi) = ins[0];
        let k = xi.shape.elems().unwrap_or(0);
        let in_qp = |i: usize| match ins[i].1.quant {
            ValueQuant::Codes { qparams, .. } => qparams,
            // `check` lets no node read the logits.
            ValueQuant::Logits => model.input.qparams,
        };
        let out = match &node.op {
            QOp::Dense(d) => {
                let x = b.flat(&x.dq, !x.flat, &format!("{name}.flatten"));
                let (w, bias) = weights(
                    &mut b,
                    weight_type,
                    name,
                    &d.weights,
                    &d.weight_scales,
                    &d.bias,
                    d.input,
                    &[d.out_features, d.in_features],
                );
                let acc = b.node(
                    "Gemm",
                    &[&x, &w, &bias],
                    &format!("{name}.acc"),
                    vec![attr_int("transB", 1)],
                );
                stage(&mut b, name, acc, &d.output, true)
            }
            QOp::Conv2d(c) => {
                let x = b.spatial(&x.dq, !x.flat, k, &format!("{name}.reshape"));
                let icg = c.in_channels / c.groups.max(1);
                let (w, bias) = weights(
                    &mut b,
                    weight_type,
                    name,
                    &c.weights,
                    &c.weight_scales,
                    &c.bias,
                    c.input,
                    &[c.out_channels, icg, c.kernel.0, c.kernel.1],
                );
                let mut attrs = window_attrs(c.kernel, c.stride, c.padding);
                attrs.push(attr_int("group", c.groups as i64));
                let acc = b.node("Conv", &[&x, &w, &bias], &format!("{name}.acc"), attrs);
                stage(&mut b, name, acc, &c.output, false)
            }
            QOp::MaxPool2d(p) => {
                let x = b.spatial(&x.dq, !x.flat, k, &format!("{name}.reshape"));
                let y = b.node(
                    "MaxPool",
                    &[&x],
                    &format!("{name}.f"),
                    window_attrs(p.kernel, p.stride, (0, 0)),
                );
                Out::Codes(quantize(&mut b, &y, in_qp(0), name, false))
            }
            QOp::AvgPool2d(p) => {
                let x = b.spatial(&x.dq, !x.flat, k, &format!("{name}.reshape"));
                let whole = p.kernel == (xi.shape.height, xi.shape.width);
                let y = if whole {
                    b.node("GlobalAveragePool", &[&x], &format!("{name}.f"), vec![])
                } else {
                    b.node(
                        "AveragePool",
                        &[&x],
                        &format!("{name}.f"),
                        window_attrs(p.kernel, p.stride, (0, 0)),
                    )
                };
                Out::Codes(requantize(
                    &mut b, name, y, p.output, p.bits, false, None, false,
                ))
            }
            QOp::Flatten => {
                let y = b.flat(&x.dq, !x.flat, &format!("{name}.f"));
                Out::Codes(quantize(&mut b, &y, in_qp(0), name, true))
            }
            QOp::Add(a) => {
                let (p, q) = (ins[0].0, ins[1].0);
                // Mixed ranks (a flat value added to an NCHW one of the same size): both NCHW.
                let flat = p.flat && q.flat;
                // Each input dequantized with the scale lowbit's fixed-point rescaling really applies.
                let eff =
                    AddParams::from_scales(a.inputs[0].scale, a.inputs[1].scale, a.output.scale)
                        .map(|m| {
                            [m.multiplier_a, m.multiplier_b]
                                .map(|mul| effective_scale(a.output.scale, mul, m.shift))
                        })
                        .unwrap_or([None, None]);
                let mut side = |v: &Val, i: usize| {
                    let x = match eff[i] {
                        Some(s) => {
                            dequantize_as(&mut b, v, a.inputs[i], s, &format!("{name}.in{i}"))
                        }
                        None => v.dq.clone(),
                    };
                    if v.flat && !flat {
                        b.spatial(&x, false, k, &format!("{name}.reshape{i}"))
                    } else {
                        x
                    }
                };
                let (p, q) = (side(p, 0), side(q, 1));
                let y = b.node("Add", &[&p, &q], &format!("{name}.f"), vec![]);
                Out::Codes(requantize(
                    &mut b, name, y, a.output, a.bits, a.relu, None, flat,
                ))
            }
            QOp::Concat(c) => {
                let flat = ins.iter().all(|(v, _)| v.flat);
                let parts: Vec<String> = ins
                    .iter()
                    .enumerate()
                    .map(|(i, (v, vi))| {
                        let n = vi.shape.elems().unwrap_or(0);
                        let qp = c.inputs.get(i).copied().unwrap_or(c.output);
                        // Inputs with the output's parameters are copied; the others rescaled as lowbit does.
                        let eff = (qp != c.output)
                            .then(|| Rescale::from_scales(qp.scale, c.output.scale).ok())
                            .flatten()
                            .and_then(|r| effective_scale(c.output.scale, r.multiplier, r.shift));
                        let x = match eff {
                            Some(s) => dequantize_as(&mut b, v, qp, s, &format!("{name}.in{i}")),
                            None => v.dq.clone(),
                        };
                        b.spatial(&x, !v.flat || flat, n, &format!("{name}.reshape{i}"))
                    })
                    .collect();
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                let y = b.node(
                    "Concat",
                    &parts,
                    &format!("{name}.f"),
                    vec![attr_int("axis", 1)],
                );
                Out::Codes(requantize(
                    &mut b, name, y, c.output, c.bits, false, None, flat,
                ))
            }
            QOp::Pad(p) => {
                let x = b.spatial(&x.dq, !x.flat, k, &format!("{name}.reshape"));
                let y = b.pad(&x, [p.channels, p.rows, p.cols], &format!("{name}.f"));
                Out::Codes(quantize(&mut b, &y, in_qp(0), name, false))
            }
            QOp::Slice(s) => {
                let x = b.spatial(&x.dq, !x.flat, k, &format!("{name}.reshape"));
                let d = xi.shape;
                let dims = [d.channels, d.height, d.width];
                let y = b.slice(&x, [s.channels, s.rows, s.cols], dims, &format!("{name}.f"));
                Out::Codes(quantize(&mut b, &y, in_qp(0), name, false))
            }
            QOp::Lut(l) => {
                let idx = b.node(
                    "Cast",
                    &[&x.q],
                    &format!("{name}.index"),
                    vec![attr_int("to", DataType::Int32 as i64)],
                );
                let table = b.init(&format!("{name}.table"), &[l.table.len()], &l.table);
                let q = b.node(
                    "Gather",
                    &[&table, &idx],
                    &format!("{name}.q"),
                    vec![attr_int("axis", 0)],
                );
                let (scale, zp) = qparam_inits(&mut b, name, l.output);
                let dq = b.node(
                    "DequantizeLinear",
                    &[&q, &scale, &zp],
                    &format!("{name}.dq"),
                    vec![],
                );
                Out::Codes(Val {
                    q,
                    dq,
                    flat: x.flat,
                })
            }
        };
        match out {
            Out::Codes(v) => vals.push(Some(v)),
            Out::Logits(y, flat) if j + 1 == model.nodes.len() => {
                logits = Some(if flat {
                    y
                } else {
                    b.node(
                        "Flatten",
                        &[&y],
                        "logits.flatten",
                        vec![attr_int("axis", 1)],
                    )
                });
                vals.push(None);
            }
            Out::Logits(..) => {
                return Err(ExportError::InvalidModel(format!(
                    "node {name:?} emits logits but is not the last node"
                )))
            }
        }
    }
    let logits = logits
        .ok_or_else(|| ExportError::InvalidModel("the last node does not emit logits".into()))?;
    let spec = &model.input;
    Ok(b.finish(
        "lowbit-qdq",
        [spec.channels, spec.height, spec.width],
        &logits,
        model.classes,
    ))
}

/// The scale (f32) and zero point (uint8) initializers of an activation value.
fn qparam_inits(b: &mut Builder, name: &str, qp: QParams) -> (String, String) {
    let scale = b.init(&format!("{name}.scale"), &[], &[qp.scale]);
    let zp = b.init(&format!("{name}.zero_point"), &[], &[zero_point(qp)]);
    (scale, zp)
}

/// An activation zero point as uint8 (validation keeps them in 0..=255).
fn zero_point(qp: QParams) -> u8 {
    qp.zero_point.clamp(0, 255) as u8
}

/// The scale that lowbit's element-wise rescaling (`rshift_round(d * multiplier, shift)` onto `scale_out`)
/// effectively gives a code difference `d`: `scale_out * multiplier / 2^shift` (`None` for a zero multiplier,
/// which has no valid `DequantizeLinear`).
fn effective_scale(scale_out: f32, multiplier: i32, shift: u32) -> Option<f32> {
    let s = (f64::from(scale_out) * f64::from(multiplier) / (1u64 << shift.min(62)) as f64) as f32;
    (multiplier > 0 && s.is_normal()).then_some(s)
}

/// The codes of `v` dequantized with `scale` (and `qp`'s zero point) instead of their own scale: the input of an
/// Add or Concat as lowbit's fixed-point rescaling sees it, so a float runtime adds what the engine adds.
fn dequantize_as(b: &mut Builder, v: &Val, qp: QParams, scale: f32, name: &str) -> String {
    let zp = b.init(&format!("{name}.zero_point"), &[], &[zero_point(qp)]);
    let scale = b.init(&format!("{name}.scale"), &[], &[scale]);
    b.node(
        "DequantizeLinear",
        &[&v.q, &scale, &zp],
        &format!("{name}.dq"),
        vec![],
    )
}

/// `QuantizeLinear` then `DequantizeLinear` of the float `x` with `qp`: the value `name`.
fn quantize(b: &mut Builder, x: &str, qp: QParams, name: &str, flat: bool) -> Val {
    let (scale, zp) = qparam_inits(b, name, qp);
    let q = b.node(
        "QuantizeLinear",
        &[x, &scale, &zp],
        &format!("{name}.q"),
        vec![],
    );
    let dq = b.node(
        "DequantizeLinear",
        &[&q, &scale, &zp],
        &format!("{name}.dq"),
        vec![],
    );
    Val { q, dq, flat }
}

/// The output stage of a requantizing op on its float result `x`: a fused ReLU, the clamp to a sub-8-bit (or
/// ReLU6-bounded) code range as a `Clip` of the range's real bounds, then [`quantize`].
#[allow(clippy::too_many_arguments)]
fn requantize(
    b: &mut Builder,
    name: &str,
    x: String,
    qp: QParams,
    bits: u32,
    relu: bool,
    max_code: Option<i32>,
    flat: bool,
) -> Val {
    let full = (1i32 << bits.clamp(1, 8)) - 1;
    let qmax = max_code.map_or(full, |m| m.min(full));
    let x = if qmax < 255 {
        let lo = if relu { 0.0 } else { dequantize(0, qp) };
        b.clip(&x, lo, dequantize(qmax, qp), &format!("{name}.clip"))
    } else if relu {
        b.node("Relu", &[&x], &format!("{name}.relu"), vec![])
    } else {
        x
    };
    quantize(b, &x, qp, name, flat)
}

/// A Dense or Conv2d output stage.
fn stage(b: &mut Builder, name: &str, acc: String, output: &OutputStage, flat: bool) -> Out {
    match output {
        OutputStage::Logits => Out::Logits(acc, flat),
        OutputStage::Requantize {
            qparams,
            bits,
            relu,
            max_code,
            ..
        } => Out::Codes(requantize(
            b, name, acc, *qparams, *bits, *relu, *max_code, flat,
        )),
    }
}

/// The dequantized weight (codes as `weight_type`, scale per output channel on axis 0 or per tensor) and bias (int32
/// accumulator units, scale `s_in * s_w[c]`) of a Dense or Conv2d whose weight tensor has dimensions `dims`.
#[allow(clippy::too_many_arguments)]
fn weights(
    b: &mut Builder,
    weight_type: WeightType,
    name: &str,
    packed: &PackedWeights,
    scales: &[f32],
    bias: &[i32],
    input: QParams,
    dims: &[usize],
) -> (String, String) {
    let (rows, cols) = (packed.rows, packed.cols);
    let mut codes = vec![0i8; rows * cols];
    for (r, row) in codes.chunks_mut(cols.max(1)).enumerate().take(rows) {
        packed.unpack_row(r, row);
    }
    let per_channel = scales.len() > 1;
    let sdims: &[usize] = if per_channel { &[rows] } else { &[] };
    let axis = || {
        if per_channel {
            vec![attr_int("axis", 0)]
        } else {
            vec![]
        }
    };
    let (wq, wz) = match weight_type {
        WeightType::Int8 => (
            b.init(&format!("{name}.weight_q"), dims, &codes),
            b.init(
                &format!("{name}.weight_zero_point"),
                sdims,
                &vec![0i8; scales.len()],
            ),
        ),
        WeightType::Uint8 => {
            // code + 128 with zero point 128: the same real values (codes lie in [-127, 127]).
            let shifted: Vec<u8> = codes.iter().map(|&c| (i16::from(c) + 128) as u8).collect();
            (
                b.init(&format!("{name}.weight_q"), dims, &shifted),
                b.init(
                    &format!("{name}.weight_zero_point"),
                    sdims,
                    &vec![128u8; scales.len()],
                ),
            )
        }
    };
    let ws = b.init(&format!("{name}.weight_scale"), sdims, scales);
    let w = b.node(
        "DequantizeLinear",
        &[&wq, &ws, &wz],
        &format!("{name}.weight"),
        axis(),
    );
    let bias_scales: Vec<f32> = scales.iter().map(|s| input.scale * s).collect();
    let bq = b.init(&format!("{name}.bias_q"), &[bias.len()], bias);
    let bs = b.init(&format!("{name}.bias_scale"), sdims, &bias_scales);
    let bz = b.init(
        &format!("{name}.bias_zero_point"),
        sdims,
        &vec![0i32; scales.len()],
    );
    let bias = b.node(
        "DequantizeLinear",
        &[&bq, &bs, &bz],
        &format!("{name}.bias"),
        axis(),
    );
    (w, bias)
}
