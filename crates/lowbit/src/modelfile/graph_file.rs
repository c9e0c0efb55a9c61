//! The graph of a float model file (version 2): node metadata, limits and shape inference checked before any
//! weight is allocated, then the model built from its tensors.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
use crate::error::{Error, Result};
use crate::nn::{
    Add, AvgPool2d, AxisSlice, BatchNorm2d, Clip, Concat, Conv2d, Dense, Dropout, Flatten, Layer,
    MaxPool2d, Model, Node, Pad, Relu, Slice, UnaryOp,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The name by which nodes refer to the model input.
pub(super) const INPUT: &str = "input";
/// Most nodes in a model.
const MAX_NODES: usize = 4096;
/// Largest dimension or count (channels, features, kernel, classes).
const MAX_DIM: usize = 1 << 20;
/// Largest activation of one sample, in elements (the shape inference below bounds every value, and a
/// convolution's padded input and im2col matrix).
const MAX_SAMPLE_ELEMS: usize = 1 << 26;
/// Largest sum of every value's elements per sample: a forward pass keeps every value, so 4096 values of
/// `MAX_SAMPLE_ELEMS` would otherwise ask for a terabyte.
const MAX_TOTAL_SAMPLE_ELEMS: usize = 1 << 28;
/// Longest node name, in bytes.
const MAX_NAME_BYTES: usize = 256;

/// One float layer's kind and attributes (its tensors are stored beside).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub(super) enum LayerMeta {
    #[serde(rename = "dense")]
    Dense {
        in_features: usize,
        out_features: usize,
    },
    #[serde(rename = "conv2d")]
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
    },
    #[serde(rename = "batchnorm2d")]
    BatchNorm2d {
        channels: usize,
        momentum: f32,
        eps: f32,
    },
    #[serde(rename = "relu")]
    Relu {},
    #[serde(rename = "max_pool2d")]
    MaxPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
    },
    #[serde(rename = "avg_pool2d")]
    AvgPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        global: bool,
    },
    #[serde(rename = "flatten")]
    Flatten {},
    #[serde(rename = "dropout")]
    Dropout { p: f32 },
    #[serde(rename = "add")]
    Add {},
    #[serde(rename = "concat")]
    Concat {},
    #[serde(rename = "pad")]
    Pad {
        channels: [usize; 2],
        rows: [usize; 2],
        cols: [usize; 2],
    },
    #[serde(rename = "slice")]
    Slice {
        channels: [usize; 3],
        rows: [usize; 3],
        cols: [usize; 3],
    },
    #[serde(rename = "clip")]
    Clip { min: f32, max: f32 },
    /// Any element-wise function of [`crate::nn::unary`], by its kind.
    #[serde(rename = "unary")]
    Unary { op: String, params: Vec<f32> },
}

fn one() -> usize {
    1
}

fn is_one(g: &usize) -> bool {
    *g == 1
}

fn axis(a: &AxisSlice) -> [usize; 3] {
    [a.start, a.end, a.step]
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NodeMeta {
    pub name: String,
    pub inputs: Vec<String>,
    pub op: LayerMeta,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GraphMeta {
    pub spec: String,
    pub input_shape: [usize; 3],
    pub classes: usize,
    pub nodes: Vec<NodeMeta>,
    /// Optional within version 2: only models trained on normalised inputs carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<lowbit_runtime::preprocess::Normalization>,
}

fn pair(p: (usize, usize)) -> [usize; 2] {
    [p.0, p.1]
}

fn unpair([a, b]: [usize; 2]) -> (usize, usize) {
    (a, b)
}

impl LayerMeta {
    /// The metadata of a float layer; `None` for layers a float file does not hold (quantizers, merged
    /// conv + batch norm).
    pub(super) fn of(layer: &Layer) -> Option<LayerMeta> {
        Some(match layer {
            Layer::Dense(d) if d.weight_quant.is_none() => LayerMeta::Dense {
                in_features: d.in_features,
                out_features: d.out_features,
            },
            Layer::Conv2d(c) if c.weight_quant.is_none() => LayerMeta::Conv2d {
                in_channels: c.in_channels,
                out_channels: c.out_channels,
                kernel: pair(c.kernel),
                stride: pair(c.stride),
                padding: pair(c.padding),
                groups: c.groups(),
            },
            Layer::BatchNorm2d(b) => LayerMeta::BatchNorm2d {
                channels: b.channels,
                momentum: b.momentum,
                eps: b.eps,
            },
            Layer::Relu(_) => LayerMeta::Relu {},
            Layer::MaxPool2d(p) => LayerMeta::MaxPool2d {
                kernel: pair(p.kernel),
                stride: pair(p.stride),
            },
            Layer::AvgPool2d(p) => LayerMeta::AvgPool2d {
                kernel: pair(p.kernel),
                stride: pair(p.stride),
                global: p.global,
            },
            Layer::Flatten(_) => LayerMeta::Flatten {},
            Layer::Dropout(d) => LayerMeta::Dropout { p: d.p },
            Layer::Add(_) => LayerMeta::Add {},
            Layer::Concat(_) => LayerMeta::Concat {},
            Layer::Pad(p) => LayerMeta::Pad {
                channels: [p.front, p.back],
                rows: [p.top, p.bottom],
                cols: [p.left, p.right],
            },
            Layer::Slice(s) => LayerMeta::Slice {
                channels: axis(&s.channels),
                rows: axis(&s.rows),
                cols: axis(&s.cols),
            },
            Layer::Clip(c) => LayerMeta::Clip {
                min: c.min,
                max: c.max,
            },
            Layer::Unary(u) => LayerMeta::Unary {
                op: u.op().kind().to_string(),
                params: u.params(),
            },
            _ => return None,
        })
    }

    /// The kind and its attributes in one line, for `inspect` (`conv2d 16->32 3x3 stride 2x2 pad 1x1`).
    pub(super) fn describe(&self) -> String {
        let hw = |[a, b]: [usize; 2]| format!("{a}x{b}");
        let window = |k, s: [usize; 2], p: [usize; 2]| {
            let mut d = hw(k);
            if s != [1, 1] {
                d += &format!(" stride {}", hw(s));
            }
            if p != [0, 0] {
                d += &format!(" pad {}", hw(p));
            }
            d
        };
        let range = |[a, b, st]: [usize; 3]| {
            let end = if b == usize::MAX {
                String::new()
            } else {
                b.to_string()
            };
            if st == 1 {
                format!("{a}:{end}")
            } else {
                format!("{a}:{end}:{st}")
            }
        };
        match self {
            LayerMeta::Dense {
                in_features,
                out_features,
            } => format!("dense {in_features}->{out_features}"),
            LayerMeta::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                groups,
            } => {
                let g = match *groups {
                    1 => String::new(),
                    g if g == *in_channels => " depthwise".into(),
                    g => format!(" groups {g}"),
                };
                format!(
                    "conv2d {in_channels}->{out_channels} {}{g}",
                    window(*kernel, *stride, *padding)
                )
            }
            LayerMeta::BatchNorm2d { channels, eps, .. } => {
                format!("batchnorm2d {channels} eps {eps}")
            }
            LayerMeta::Relu {} => "relu".into(),
            LayerMeta::MaxPool2d { kernel, stride } => {
                format!("max_pool2d {}", window(*kernel, *stride, [0, 0]))
            }
            LayerMeta::AvgPool2d { global: true, .. } => "global_avg_pool2d".into(),
            LayerMeta::AvgPool2d { kernel, stride, .. } => {
                format!("avg_pool2d {}", window(*kernel, *stride, [0, 0]))
            }
            LayerMeta::Flatten {} => "flatten".into(),
            LayerMeta::Dropout { p } => format!("dropout {p}"),
            LayerMeta::Add {} => "add".into(),
            LayerMeta::Concat {} => "concat (channels)".into(),
            LayerMeta::Pad {
                channels,
                rows,
                cols,
            } => format!(
                "pad zeros channels {}+{}, rows {}+{}, cols {}+{}",
                channels[0], channels[1], rows[0], rows[1], cols[0], cols[1]
            ),
            LayerMeta::Slice {
                channels,
                rows,
                cols,
            } => format!(
                "slice [{}, {}, {}]",
                range(*channels),
                range(*rows),
                range(*cols)
            ),
            LayerMeta::Clip { min, max } => format!("clip [{min}, {max}]"),
            LayerMeta::Unary { op, params } if params.is_empty() => op.clone(),
            LayerMeta::Unary { op, params } => format!("{op} {params:?}"),
        }
    }

    /// Checks the attributes (limits, ranges) and infers the output shape from the input's, with checked
    /// arithmetic; returns it and the number of parameter values the layer stores.
    fn infer(&self, inputs: &[&[usize]]) -> std::result::Result<(Vec<usize>, usize), String> {
        match self {
            LayerMeta::Add {} => {
                return match inputs {
                    [a, b] if a == b => Ok((a.to_vec(), 0)),
                    _ => Err(format!("add needs two inputs of one shape, got {inputs:?}")),
                }
            }
            LayerMeta::Concat {} => {
                let Some(first) = inputs.first() else {
                    return Err("concat needs an input".into());
                };
                let mut c = 0usize;
                for s in inputs {
                    match (s, first) {
                        ([ci, h, w], [_, h0, w0]) if h == h0 && w == w0 => {
                            c = c.saturating_add(*ci)
                        }
                        _ => {
                            return Err(format!("concat inputs {inputs:?} differ beyond channels"))
                        }
                    }
                }
                return match first {
                    [_, h, w] => Ok((vec![c, *h, *w], 0)),
                    _ => Err(format!("concat inputs {inputs:?} are not [C, H, W]")),
                };
            }
            _ => {}
        }
        let [input] = inputs else {
            return Err(format!("takes 1 input, has {}", inputs.len()));
        };
        let dims = |v: &[usize]| {
            v.iter()
                .all(|&d| (1..=MAX_DIM).contains(&d))
                .then_some(())
                .ok_or_else(|| format!("dimensions {v:?} outside 1..={MAX_DIM}"))
        };
        let elems: usize = input.iter().product();
        let spatial = || match input {
            [c, h, w] => Ok((*c, *h, *w)),
            _ => Err(format!("needs a [C, H, W] input, got {input:?}")),
        };
        let window = |k: [usize; 2], s: [usize; 2], p: [usize; 2], h: usize, w: usize| {
            dims(&[k[0], k[1], s[0], s[1]])?;
            if p[0] > MAX_DIM || p[1] > MAX_DIM {
                return Err(format!("padding {p:?} above {MAX_DIM}"));
            }
            // No overflow: sizes are at most MAX_SAMPLE_ELEMS, paddings at most MAX_DIM.
            let oh = (h + 2 * p[0]).checked_sub(k[0]).map(|d| d / s[0] + 1);
            let ow = (w + 2 * p[1]).checked_sub(k[1]).map(|d| d / s[1] + 1);
            match (oh, ow) {
                (Some(a), Some(b)) => Ok((a, b)),
                _ => Err(format!(
                    "window {k:?} does not fit {h}x{w} with padding {p:?}"
                )),
            }
        };
        match *self {
            LayerMeta::Add {} | LayerMeta::Concat {} => Err("handled above".into()),
            LayerMeta::Clip { min, max } => {
                if min.is_nan() || max.is_nan() || min >= max {
                    return Err(format!("clip [{min}, {max}]"));
                }
                Ok((input.to_vec(), 0))
            }
            LayerMeta::Unary { ref op, ref params } => match UnaryOp::from_kind(op, params) {
                Some(Ok(_)) => Ok((input.to_vec(), 0)),
                Some(Err(e)) => Err(e.to_string()),
                None => Err(format!(
                    "unknown element-wise op {:?}",
                    op.chars().take(32).collect::<String>()
                )),
            },
            LayerMeta::Pad {
                channels,
                rows,
                cols,
            } => {
                let (c, h, w) = spatial()?;
                let add = |v: usize, [a, b]: [usize; 2]| {
                    (a <= MAX_DIM && b <= MAX_DIM)
                        .then(|| v + a + b)
                        .ok_or("padding too large")
                };
                Ok((vec![add(c, channels)?, add(h, rows)?, add(w, cols)?], 0))
            }
            LayerMeta::Slice {
                channels,
                rows,
                cols,
            } => {
                let (c, h, w) = spatial()?;
                let len = |[a, b, st]: [usize; 3], n: usize| {
                    let b = b.min(n);
                    (st >= 1 && a < b)
                        .then(|| (b - a).div_ceil(st))
                        .ok_or(format!("slice {a}..{b}:{st} of {n}"))
                };
                Ok((vec![len(channels, c)?, len(rows, h)?, len(cols, w)?], 0))
            }
            LayerMeta::Dense {
                in_features,
                out_features,
            } => {
                dims(&[in_features, out_features])?;
                if elems != in_features {
                    return Err(format!("in_features {in_features}, input has {elems}"));
                }
                let params = out_features * in_features + out_features;
                Ok((vec![out_features], params))
            }
            LayerMeta::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                groups,
            } => {
                dims(&[in_channels, out_channels, groups])?;
                let (c, h, w) = spatial()?;
                if c != in_channels {
                    return Err(format!("in_channels {in_channels}, input has {c}"));
                }
                if !in_channels.is_multiple_of(groups) || !out_channels.is_multiple_of(groups) {
                    return Err(format!(
                        "{groups} groups for {in_channels} -> {out_channels}"
                    ));
                }
                let (oh, ow) = window(kernel, stride, padding, h, w)?;
                // The forward pass copies the input into zero-bordered planes and unfolds it (im2col): with a
                // large padding and stride, or a large kernel, both can dwarf the output.
                let padded = (h + 2 * padding[0]) * (w + 2 * padding[1]);
                let col = (in_channels / groups)
                    .checked_mul(kernel[0] * kernel[1])
                    .and_then(|k| k.checked_mul(oh * ow));
                if c.checked_mul(padded).is_none_or(|e| e > MAX_SAMPLE_ELEMS)
                    || col.is_none_or(|e| e > MAX_SAMPLE_ELEMS)
                {
                    return Err(format!(
                        "padded input ({c}x{}x{}) or im2col matrix above {MAX_SAMPLE_ELEMS} elements",
                        h + 2 * padding[0],
                        w + 2 * padding[1]
                    ));
                }
                let params = out_channels
                    .checked_mul(in_channels / groups)
                    .and_then(|v| v.checked_mul(kernel[0] * kernel[1]))
                    .and_then(|v| v.checked_add(out_channels))
                    .ok_or("too many parameters")?;
                Ok((vec![out_channels, oh, ow], params))
            }
            LayerMeta::BatchNorm2d {
                channels,
                momentum,
                eps,
            } => {
                dims(&[channels])?;
                if input.first() != Some(&channels) {
                    return Err(format!("{channels} channels, input {input:?}"));
                }
                if !(momentum.is_finite() && eps.is_finite() && eps > 0.0) {
                    return Err("momentum and eps must be finite, eps > 0".into());
                }
                Ok((input.to_vec(), 4 * channels))
            }
            LayerMeta::Relu {} => Ok((input.to_vec(), 0)),
            LayerMeta::Dropout { p } => {
                if !(0.0..1.0).contains(&p) {
                    return Err(format!("dropout {p} is not in [0, 1)"));
                }
                Ok((input.to_vec(), 0))
            }
            LayerMeta::Flatten {} => Ok((vec![elems], 0)),
            LayerMeta::MaxPool2d { kernel, stride } => {
                let (c, h, w) = spatial()?;
                let (oh, ow) = window(kernel, stride, [0, 0], h, w)?;
                Ok((vec![c, oh, ow], 0))
            }
            LayerMeta::AvgPool2d {
                kernel,
                stride,
                global,
            } => {
                let (c, h, w) = spatial()?;
                if global {
                    return Ok((vec![c, 1, 1], 0));
                }
                let (oh, ow) = window(kernel, stride, [0, 0], h, w)?;
                Ok((vec![c, oh, ow], 0))
            }
        }
    }

    /// The layer, its state read by `tensor(suffix, len)`.
    fn build(
        &self,
        seed: u64,
        mut tensor: impl FnMut(&str, usize) -> Result<Vec<f32>>,
    ) -> Result<Layer> {
        Ok(match *self {
            LayerMeta::Dense {
                in_features,
                out_features,
            } => Layer::Dense(Dense::from_weights(
                in_features,
                out_features,
                tensor("weight", in_features * out_features)?,
                tensor("bias", out_features)?,
            )),
            LayerMeta::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                groups,
            } => Layer::Conv2d(Conv2d::from_weights_grouped(
                in_channels,
                out_channels,
                unpair(kernel),
                unpair(stride),
                unpair(padding),
                groups,
                tensor(
                    "weight",
                    out_channels * (in_channels / groups) * kernel[0] * kernel[1],
                )?,
                tensor("bias", out_channels)?,
            )?),
            LayerMeta::BatchNorm2d {
                channels,
                momentum,
                eps,
            } => {
                let mut b = BatchNorm2d::new(channels);
                b.momentum = momentum;
                b.eps = eps;
                b.gamma = tensor("gamma", channels)?;
                b.beta = tensor("beta", channels)?;
                b.running_mean = tensor("running_mean", channels)?;
                b.running_var = tensor("running_var", channels)?;
                if b.running_var.iter().any(|&v| v < 0.0) {
                    return Err(Error::Shape("running_var holds a negative variance".into()));
                }
                Layer::BatchNorm2d(b)
            }
            LayerMeta::Relu {} => Layer::Relu(Relu::new()),
            LayerMeta::MaxPool2d { kernel, stride } => {
                Layer::MaxPool2d(MaxPool2d::new(unpair(kernel), unpair(stride)))
            }
            LayerMeta::AvgPool2d {
                kernel,
                stride,
                global,
            } => Layer::AvgPool2d(if global {
                AvgPool2d::global()
            } else {
                AvgPool2d::new(unpair(kernel), unpair(stride))
            }),
            LayerMeta::Flatten {} => Layer::Flatten(Flatten::new()),
            LayerMeta::Dropout { p } => Layer::Dropout(Dropout::new(p, seed)?),
            LayerMeta::Add {} => Layer::Add(Add::new()),
            LayerMeta::Concat {} => Layer::Concat(Concat::new()),
            LayerMeta::Pad {
                channels,
                rows,
                cols,
            } => Layer::Pad(Pad::new(unpair(channels), unpair(rows), unpair(cols))),
            LayerMeta::Slice {
                channels,
                rows,
                cols,
            } => {
                let a = |[x, y, z]: [usize; 3]| AxisSlice::new(x, y, z);
                Layer::Slice(Slice::new(a(channels), a(rows), a(cols)))
            }
            LayerMeta::Clip { min, max } => Layer::Clip(Clip::new(min, max)?),
            LayerMeta::Unary { ref op, ref params } => Layer::Unary(
                UnaryOp::from_kind(op, params)
                    .ok_or_else(|| Error::Shape(format!("unknown element-wise op {op:?}")))??,
            ),
        })
    }
}

/// Builds the model of a version-2 file: `text` is its `model` JSON, `stored_elems` the values its tensors hold,
/// `tensor(name, len)` reads one tensor of exactly `len` finite values. Every limit and shape is checked before
/// any weight is allocated.
pub(super) fn read(
    text: &str,
    stored_elems: usize,
    mut tensor: impl FnMut(&str, usize) -> Result<Vec<f32>>,
) -> Result<Model> {
    let bad = |what: String| Error::Shape(what);
    let g: GraphMeta = serde_json::from_str(text).map_err(|e| bad(format!("model JSON: {e}")))?;
    if g.nodes.is_empty() || g.nodes.len() > MAX_NODES {
        return Err(bad(format!("{} nodes (1..={MAX_NODES})", g.nodes.len())));
    }
    let [c, h, w] = g.input_shape;
    let input_elems = c
        .checked_mul(h)
        .and_then(|v| v.checked_mul(w))
        .filter(|&e| (1..=MAX_SAMPLE_ELEMS).contains(&e))
        .ok_or_else(|| bad(format!("input shape {:?}", g.input_shape)))?;
    let mut total_elems = input_elems;
    if !(1..=MAX_DIM).contains(&g.classes) {
        return Err(bad(format!("{} classes", g.classes)));
    }
    // Names to value ids, shapes per value, and the parameter count, all before allocating.
    let mut ids: HashMap<&str, usize> = HashMap::new();
    ids.insert(INPUT, 0);
    let mut shapes: Vec<Vec<usize>> = vec![g.input_shape.to_vec()];
    let mut inputs_of = Vec::with_capacity(g.nodes.len());
    let mut params = 0usize;
    for (i, n) in g.nodes.iter().enumerate() {
        let at = |what: String| {
            bad(format!(
                "node {}: {what}",
                n.name.chars().take(64).collect::<String>()
            ))
        };
        if n.name.is_empty() || n.name.len() > MAX_NAME_BYTES || n.name == INPUT {
            return Err(at(format!(
                "names are 1 to {MAX_NAME_BYTES} bytes and not {INPUT:?}"
            )));
        }
        let inputs = n
            .inputs
            .iter()
            .map(|v| {
                ids.get(v.as_str()).copied().ok_or_else(|| {
                    at(format!(
                        "input {:?} is not the input or an earlier node (a cycle or a dangling reference)",
                        v.chars().take(64).collect::<String>()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Every id in `ids` has its shape pushed already.
        let in_shapes: Vec<&[usize]> = inputs
            .iter()
            .filter_map(|&v| shapes.get(v).map(Vec::as_slice))
            .collect();
        let (shape, p) = n.op.infer(&in_shapes).map_err(at)?;
        let e = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if !e.is_some_and(|e| (1..=MAX_SAMPLE_ELEMS).contains(&e)) {
            return Err(at(format!("output {shape:?} is empty or too large")));
        }
        params = params.saturating_add(p);
        total_elems = total_elems.saturating_add(e.unwrap_or(0));
        if total_elems > MAX_TOTAL_SAMPLE_ELEMS {
            return Err(at(format!(
                "the values up to here hold {total_elems} elements per sample, above {MAX_TOTAL_SAMPLE_ELEMS}"
            )));
        }
        if ids.insert(&n.name, i + 1).is_some() {
            return Err(at("duplicate name".into()));
        }
        shapes.push(shape);
        inputs_of.push(inputs);
    }
    let out: usize = shapes.last().map_or(0, |s| s.iter().product());
    if out != g.classes {
        return Err(bad(format!(
            "the last node emits {out} values for {} classes",
            g.classes
        )));
    }
    if params > stored_elems {
        return Err(bad(format!(
            "the graph has {params} parameters, the file stores {stored_elems} values"
        )));
    }
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for (i, (n, inputs)) in g.nodes.iter().zip(inputs_of).enumerate() {
        let layer = n.op.build(i as u64, |suffix, len| {
            tensor(&format!("{}.{suffix}", n.name), len)
        })?;
        nodes.push(Node {
            name: n.name.clone(),
            inputs,
            layer,
        });
    }
    let model = Model {
        nodes,
        input_shape: g.input_shape,
        classes: g.classes,
        spec: g.spec,
        normalization: g.normalization,
    };
    if let Some(n) = &model.normalization {
        n.check_channels(c)
            .map_err(|e| bad(format!("input normalisation: {e}")))?;
    }
    model.check_structure()?;
    Ok(model)
}
