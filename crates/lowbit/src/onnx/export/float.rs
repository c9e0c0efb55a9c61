//! The f32 export: one ONNX op per layer, weights copied bit for bit (see [`super`]).
use super::{attr_float, attr_int, window_attrs, Builder, ExportError, INPUT};
use crate::nn::{Layer, Model, UnaryOp};
use crate::onnx::proto::GraphProto;

const QAT_HINT: &str = "a QAT model: convert it to .lbq and export that as QDQ";

/// The graph of a float model.
pub(super) fn graph(model: &Model) -> Result<GraphProto, ExportError> {
    model
        .check_structure()
        .map_err(|e| ExportError::InvalidModel(e.to_string()))?;
    let mut b = Builder::new();
    // Per value: its ONNX name and per-sample shape (`[K]` flat or `[C, H, W]`).
    let mut values: Vec<(String, Vec<usize>)> = vec![(INPUT.into(), model.input_shape.to_vec())];
    for node in &model.nodes {
        let name = node.name.as_str();
        let unsupported = |what: &str, hint: &str| ExportError::Unsupported {
            node: name.into(),
            what: what.into(),
            hint: hint.into(),
        };
        let ins: Vec<&(String, Vec<usize>)> = node
            .inputs
            .iter()
            .map(|&v| values.get(v))
            .collect::<Option<_>>()
            .ok_or_else(|| ExportError::InvalidModel(format!("node {name:?}: bad input")))?;
        let shapes: Vec<&[usize]> = ins.iter().map(|(_, s)| s.as_slice()).collect();
        let shape = node
            .layer
            .output_shape(&shapes)
            .map_err(|e| ExportError::InvalidModel(e.to_string()))?;
        let (x, xs) = (ins[0].0.clone(), ins[0].1.clone());
        let spatial = xs.len() == 3;
        let k: usize = xs.iter().product();
        let out = name;
        let y = match &node.layer {
            Layer::Dense(d) => {
                if d.weight_quant.is_some() {
                    return Err(unsupported(
                        "a dense layer with fake-quantized weights",
                        QAT_HINT,
                    ));
                }
                let x = b.flat(&x, spatial, &format!("{name}.flatten"));
                let w = b.init(
                    &format!("{name}.weight"),
                    &[d.out_features, d.in_features],
                    &d.weight,
                );
                let bias = b.init(&format!("{name}.bias"), &[d.out_features], &d.bias);
                b.node("Gemm", &[&x, &w, &bias], out, vec![attr_int("transB", 1)])
            }
            Layer::Conv2d(c) => {
                if c.weight_quant.is_some() {
                    return Err(unsupported(
                        "a convolution with fake-quantized weights",
                        QAT_HINT,
                    ));
                }
                let x = b.spatial(&x, spatial, k, &format!("{name}.reshape"));
                let (kh, kw) = c.kernel;
                let icg = c.in_channels / c.groups().max(1);
                let w = b.init(
                    &format!("{name}.weight"),
                    &[c.out_channels, icg, kh, kw],
                    &c.weight,
                );
                let bias = b.init(&format!("{name}.bias"), &[c.out_channels], &c.bias);
                let mut attrs = window_attrs(c.kernel, c.stride, c.padding);
                attrs.push(attr_int("group", c.groups() as i64));
                b.node("Conv", &[&x, &w, &bias], out, attrs)
            }
            Layer::Relu(_) => b.node("Relu", &[&x], out, vec![]),
            Layer::Clip(c) => b.clip(&x, c.min, c.max, out),
            Layer::Unary(UnaryOp::LeakyRelu(u)) => b.node(
                "LeakyRelu",
                &[&x],
                out,
                vec![attr_float("alpha", u.func.alpha)],
            ),
            Layer::Unary(UnaryOp::Sigmoid(_)) => b.node("Sigmoid", &[&x], out, vec![]),
            Layer::Flatten(_) => b.flat(&x, spatial, out),
            Layer::Dropout(_) => x,
            Layer::MaxPool2d(p) => {
                let x = b.spatial(&x, spatial, k, &format!("{name}.reshape"));
                b.node(
                    "MaxPool",
                    &[&x],
                    out,
                    window_attrs(p.kernel, p.stride, (0, 0)),
                )
            }
            Layer::AvgPool2d(p) => {
                let x = b.spatial(&x, spatial, k, &format!("{name}.reshape"));
                if p.global {
                    b.node("GlobalAveragePool", &[&x], out, vec![])
                } else {
                    b.node(
                        "AveragePool",
                        &[&x],
                        out,
                        window_attrs(p.kernel, p.stride, (0, 0)),
                    )
                }
            }
            Layer::BatchNorm2d(bn) => {
                let x = b.spatial(&x, spatial, k, &format!("{name}.reshape"));
                let c = [bn.channels];
                let g = b.init(&format!("{name}.weight"), &c, &bn.gamma);
                let be = b.init(&format!("{name}.bias"), &c, &bn.beta);
                let m = b.init(&format!("{name}.running_mean"), &c, &bn.running_mean);
                let v = b.init(&format!("{name}.running_var"), &c, &bn.running_var);
                b.node(
                    "BatchNormalization",
                    &[&x, &g, &be, &m, &v],
                    out,
                    vec![attr_float("epsilon", bn.eps)],
                )
            }
            Layer::Add(_) => {
                let y = &ins[1].0;
                b.node("Add", &[&x, y], out, vec![])
            }
            Layer::Concat(_) => {
                let parts: Vec<&str> = ins.iter().map(|(n, _)| n.as_str()).collect();
                b.node("Concat", &parts, out, vec![attr_int("axis", 1)])
            }
            Layer::Pad(p) => {
                let x = b.spatial(&x, spatial, k, &format!("{name}.reshape"));
                b.pad(
                    &x,
                    [(p.front, p.back), (p.top, p.bottom), (p.left, p.right)],
                    out,
                )
            }
            Layer::Slice(s) => {
                let x = b.spatial(&x, spatial, k, &format!("{name}.reshape"));
                let a = |a: &crate::nn::AxisSlice| [a.start, a.end, a.step];
                let dims = match xs[..] {
                    [c, h, w] => [c, h, w],
                    _ => [k, 1, 1],
                };
                b.slice(&x, [a(&s.channels), a(&s.rows), a(&s.cols)], dims, out)
            }
            Layer::ActQuant(_) => {
                return Err(unsupported("an activation fake-quantizer", QAT_HINT))
            }
            Layer::ConvBn2d(_) => {
                return Err(unsupported(
                    "a convolution trained with its batch norm folded",
                    QAT_HINT,
                ))
            }
        };
        values.push((y, shape));
    }
    let (out, shape) = values
        .last()
        .cloned()
        .ok_or_else(|| ExportError::InvalidModel("the model has no nodes".into()))?;
    let out = if shape.len() == 3 {
        b.node(
            "Flatten",
            &[&out],
            "logits.flatten",
            vec![attr_int("axis", 1)],
        )
    } else {
        out
    };
    Ok(b.finish(&model.spec, model.input_shape, &out, model.classes))
}
