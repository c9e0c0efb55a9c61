//! The float model a quantized graph stands for: the same graph with every weight dequantized (`code * scale`,
//! bias `acc_bias * s_in * s_w`) and fused output stages spelled out as layers (a ReLU, a clip). It runs on the
//! f32 path, so `lowbit bench` can time the engine against the same work in float, and it is a readable answer
//! to "what does this file compute?".
use crate::error::{Error, Result};
use crate::nn::{
    Add, AvgPool2d, Clip, Concat, Conv2d, Dense, Flatten, Layer, MaxPool2d, Model, Node, Pad, Relu,
    Slice,
};
use crate::nn::{AxisSlice, ValueId};
use lowbit_runtime::model::{OutputStage, QOp, QuantModel};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::dequantize as dequantize_code;

/// Rows of codes times their scale (per row, or the one per-tensor scale), and the bias back in float.
fn dequant_matrix(
    w: &PackedWeights,
    scales: &[f32],
    bias: &[i32],
    in_scale: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (rows, cols) = (w.rows, w.cols);
    let mut row = vec![0i8; cols];
    let mut wf = Vec::with_capacity(rows * cols);
    let mut bf = Vec::with_capacity(rows);
    for r in 0..rows {
        let s = scales
            .get(r)
            .or(scales.first())
            .copied()
            .ok_or_else(|| Error::Shape("a weight layer without scales".into()))?;
        let b = bias
            .get(r)
            .copied()
            .ok_or_else(|| Error::Shape(format!("{} biases for {rows} rows", bias.len())))?;
        w.unpack_row(r, &mut row);
        wf.extend(row.iter().map(|&c| f32::from(c) * s));
        bf.push(b as f32 * in_scale * s);
    }
    Ok((wf, bf))
}

/// The clamp layer a requantizing output stage fuses, if any: a ReLU, or a clip at `max_code`'s real value.
fn stage_clamp(out: &OutputStage) -> Result<Option<Layer>> {
    Ok(match out {
        OutputStage::Requantize {
            max_code: Some(m),
            qparams,
            relu,
            ..
        } => {
            let hi = dequantize_code(*m, *qparams);
            let lo = if *relu { 0.0 } else { f32::NEG_INFINITY };
            Some(Layer::Clip(Clip::new(lo, hi)?))
        }
        OutputStage::Requantize { relu: true, .. } => Some(Layer::Relu(Relu::new())),
        _ => None,
    })
}

/// The float model of `qm` (see the module doc). Tables (element-wise functions on codes) have no float
/// counterpart and are an error.
pub fn dequantize(qm: &QuantModel) -> Result<Model> {
    let mut nodes: Vec<Node> = Vec::new();
    // The float value standing for each runtime value.
    let mut value_of: Vec<ValueId> = vec![0];
    let push = |nodes: &mut Vec<Node>, name: String, inputs: Vec<ValueId>, layer: Layer| {
        nodes.push(Node {
            name,
            inputs,
            layer,
        });
        nodes.len()
    };
    for node in &qm.nodes {
        let inputs: Vec<ValueId> =
            node.inputs
                .iter()
                .map(|&v| {
                    value_of.get(v).copied().ok_or_else(|| {
                        Error::Shape(format!("node {} reads a later value", node.name))
                    })
                })
                .collect::<Result<_>>()?;
        let name = node.name.clone();
        let (layer, clamp) = match &node.op {
            QOp::Dense(d) => {
                let (w, b) = dequant_matrix(&d.weights, &d.weight_scales, &d.bias, d.input.scale)?;
                let layer = Layer::Dense(Dense::from_weights(d.in_features, d.out_features, w, b));
                (layer, stage_clamp(&d.output)?)
            }
            QOp::Conv2d(c) => {
                let (w, b) = dequant_matrix(&c.weights, &c.weight_scales, &c.bias, c.input.scale)?;
                let conv = Conv2d::from_weights_grouped(
                    c.in_channels,
                    c.out_channels,
                    c.kernel,
                    c.stride,
                    c.padding,
                    c.groups,
                    w,
                    b,
                )?;
                (Layer::Conv2d(conv), stage_clamp(&c.output)?)
            }
            QOp::MaxPool2d(p) => (Layer::MaxPool2d(MaxPool2d::new(p.kernel, p.stride)), None),
            QOp::AvgPool2d(p) => (Layer::AvgPool2d(AvgPool2d::new(p.kernel, p.stride)), None),
            QOp::Flatten => (Layer::Flatten(Flatten::new()), None),
            QOp::Add(a) => (
                Layer::Add(Add::new()),
                a.relu.then(|| Layer::Relu(Relu::new())),
            ),
            QOp::Concat(_) => (Layer::Concat(Concat::new()), None),
            QOp::Pad(p) => (Layer::Pad(Pad::new(p.channels, p.rows, p.cols)), None),
            QOp::Slice(s) => {
                let axis = |[a, b, st]: [usize; 3]| AxisSlice::new(a, b, st);
                (
                    Layer::Slice(Slice::new(axis(s.channels), axis(s.rows), axis(s.cols))),
                    None,
                )
            }
            QOp::Lut(_) => {
                return Err(Error::Shape(format!(
                    "node {}: an element-wise table has no float counterpart",
                    node.name
                )))
            }
        };
        let mut v = push(&mut nodes, name.clone(), inputs, layer);
        if let Some(c) = clamp {
            v = push(&mut nodes, format!("{name}.clamp"), vec![v], c);
        }
        value_of.push(v);
    }
    Ok(Model {
        nodes,
        input_shape: [qm.input.channels, qm.input.height, qm.input.width],
        classes: qm.classes,
        spec: "dequantized".into(),
        normalization: qm.normalization.clone(),
    })
}
