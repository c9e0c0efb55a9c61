//! The ONNX graph walk: one table row per op (see [`Importer::node`]), turning nodes into lowbit layers or into
//! folded constants.
use super::fold::{self, Const, BATCH};
use super::proto::{AttributeProto, ModelProto, NodeProto};
use super::OnnxError;
use crate::nn::{
    Add, AvgPool2d, AxisSlice, BatchNorm2d, Clip, Concat, Conv2d, Dense, Flatten, Layer, LeakyRelu,
    MaxPool2d, Model, Node, Pad, Relu, Slice, Unary, UnaryOp, ValueId,
};
use prost::Message;
use std::collections::{HashMap, HashSet};

/// The oldest default-domain opset imported.
pub const MIN_OPSET: i64 = 11;

type R<T> = std::result::Result<T, OnnxError>;

/// A value of the ONNX graph while importing.
#[derive(Debug, Clone)]
enum Val {
    /// Known at import time.
    Const(Const),
    /// Computed at run time by the lowbit graph: its value id and per-sample shape (batch dimension dropped).
    Dyn(ValueId, Vec<usize>),
}

/// Imports an ONNX model from its bytes; `spec` becomes the model's description.
pub fn import_bytes(bytes: &[u8], spec: &str) -> R<Model> {
    let model = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version())
        .ok_or_else(|| OnnxError::Graph("the model imports no default-domain opset".into()))?;
    if opset < MIN_OPSET {
        return Err(OnnxError::UnsupportedOpset {
            found: opset,
            min: MIN_OPSET,
        });
    }
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| OnnxError::Graph("the model has no graph".into()))?;
    let mut imp = Importer {
        opset,
        values: HashMap::new(),
        nodes: Vec::new(),
        names: HashSet::new(),
        uses: HashMap::new(),
        outputs: graph.output.iter().map(|o| o.name().to_string()).collect(),
    };
    for t in &graph.initializer {
        imp.values
            .insert(t.name().to_string(), Val::Const(Const::from_proto(t)?));
    }
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *imp.uses.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *imp.uses.entry(o.name().to_string()).or_default() += 1;
    }
    let input_shape = imp.input(graph)?;
    for n in &graph.node {
        imp.node(n)?;
    }
    let [out] = &graph.output[..] else {
        return Err(OnnxError::Graph(format!(
            "the graph has {} outputs (lowbit imports classifiers with one output, the logits)",
            graph.output.len()
        )));
    };
    let (out_id, out_shape) = match imp.values.get(out.name()) {
        Some(Val::Dyn(id, shape)) if *id > 0 => (*id, shape.clone()),
        _ => {
            return Err(OnnxError::Graph(format!(
                "the graph output {:?} is not computed from the input by any node",
                out.name()
            )))
        }
    };
    let [classes] = out_shape[..] else {
        return Err(OnnxError::Graph(format!(
            "the graph output {:?} has per-sample shape {out_shape:?} (expected [classes])",
            out.name()
        )));
    };
    let nodes = prune(imp.nodes, out_id);
    let model = Model {
        nodes,
        input_shape,
        classes,
        spec: spec.to_string(),
    };
    model
        .check_structure()
        .map_err(|e| OnnxError::Graph(e.to_string()))?;
    Ok(model)
}

/// Keeps the nodes the output depends on (exporters leave e.g. the first output of a folded `Shape` chain's
/// source alone; a model whose dead branches ran would fail lowbit's "every value is read" check), renumbering
/// their inputs.
fn prune(nodes: Vec<Node>, out: ValueId) -> Vec<Node> {
    let mut live = vec![false; nodes.len() + 1];
    live[out] = true;
    for j in (0..nodes.len()).rev() {
        if live[j + 1] {
            for &v in &nodes[j].inputs {
                live[v] = true;
            }
        }
    }
    let mut new_id = vec![0; nodes.len() + 1];
    let mut kept = Vec::new();
    for (j, mut n) in nodes.into_iter().enumerate() {
        if live[j + 1] && j + 1 <= out {
            n.inputs.iter_mut().for_each(|v| *v = new_id[*v]);
            kept.push(n);
            new_id[j + 1] = kept.len();
        }
    }
    kept
}

struct Importer {
    opset: i64,
    values: HashMap<String, Val>,
    nodes: Vec<Node>,
    names: HashSet<String>,
    /// How many nodes (and graph outputs) read each value, to fold a bias `Add` into the `MatMul` before it only
    /// when nothing else reads the product.
    uses: HashMap<String, usize>,
    /// The graph's output names.
    outputs: HashSet<String>,
}

/// One node being imported: its proto and the opset, for error messages.
struct Ctx<'a> {
    n: &'a NodeProto,
    opset: i64,
}

impl Ctx<'_> {
    fn name(&self) -> String {
        if self.n.name().is_empty() {
            self.n.output.first().cloned().unwrap_or_default()
        } else {
            self.n.name().to_string()
        }
    }

    /// The "not supported" error for this node, with why.
    fn unsupported(&self, detail: impl Into<String>) -> OnnxError {
        OnnxError::UnsupportedOp {
            op: self.n.op_type().to_string(),
            node: self.name(),
            opset: self.opset,
            detail: detail.into(),
        }
    }

    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.n.attribute.iter().find(|a| a.name() == name)
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i())
    }

    fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f())
    }

    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.attr(name).map_or(default.to_string(), |a| {
            String::from_utf8_lossy(a.s()).into_owned()
        })
    }

    /// Two spatial values of an attribute (kernel, strides...), `default` when absent.
    fn pair(&self, name: &str, default: usize) -> R<(usize, usize)> {
        match self.ints(name).as_deref() {
            None => Ok((default, default)),
            Some(&[a, b]) if a > 0 && b > 0 => Ok((a as usize, b as usize)),
            Some(v) => Err(self.unsupported(format!("{name} {v:?} (need two positive values)"))),
        }
    }

    fn output(&self) -> R<&str> {
        self.n
            .output
            .first()
            .map(String::as_str)
            .ok_or_else(|| OnnxError::Graph(format!("node {:?} has no output", self.name())))
    }
}

impl Importer {
    /// The graph's run-time input: one NCHW float tensor (batch dimension symbolic or fixed).
    fn input(&mut self, graph: &super::proto::GraphProto) -> R<[usize; 3]> {
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !self.values.contains_key(i.name()))
            .collect();
        let [input] = inputs[..] else {
            return Err(OnnxError::Graph(format!(
                "the graph has {} run-time inputs (lowbit imports models with one image input)",
                inputs.len()
            )));
        };
        use super::proto::{tensor_shape_proto::dimension::Value as Dim, type_proto::Value};
        let shape = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(Value::TensorType(t)) => t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Dim::DimValue(v)) if v > 0 => Some(v as usize),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            }),
            _ => None,
        };
        let chw = match shape.as_deref() {
            Some([_, Some(c), Some(h), Some(w)]) => [*c, *h, *w],
            _ => {
                return Err(OnnxError::Graph(format!(
                    "graph input {:?}: shape {shape:?} is not NCHW with known C, H and W (the batch may be symbolic)",
                    input.name()
                )))
            }
        };
        self.values
            .insert(input.name().to_string(), Val::Dyn(0, chw.to_vec()));
        Ok(chw)
    }

    fn get(&self, cx: &Ctx<'_>, k: usize) -> R<Option<&Val>> {
        match cx.n.input.get(k).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(name) => self
                .values
                .get(name)
                .map(Some)
                .ok_or_else(|| OnnxError::MissingValue {
                    node: cx.name(),
                    op: cx.n.op_type().to_string(),
                    name: name.clone(),
                }),
        }
    }

    fn constant(&self, cx: &Ctx<'_>, k: usize) -> R<Option<&Const>> {
        match self.get(cx, k)? {
            None => Ok(None),
            Some(Val::Const(c)) => Ok(Some(c)),
            Some(Val::Dyn(..)) => Err(OnnxError::NotConstant {
                node: cx.name(),
                op: cx.n.op_type().to_string(),
                name: cx.n.input[k].clone(),
            }),
        }
    }

    fn required_constant(&self, cx: &Ctx<'_>, k: usize) -> R<&Const> {
        self.constant(cx, k)?
            .ok_or_else(|| cx.unsupported(format!("input {k} is missing")))
    }

    fn dynamic(&self, cx: &Ctx<'_>, k: usize) -> R<(ValueId, Vec<usize>)> {
        match self.get(cx, k)? {
            Some(Val::Dyn(id, shape)) => Ok((*id, shape.clone())),
            _ => Err(cx.unsupported(format!("input {k} must be computed from the graph input"))),
        }
    }

    /// Appends a lowbit node reading `inputs`, checks its shape, and returns its value.
    fn emit(
        &mut self,
        cx: &Ctx<'_>,
        suffix: &str,
        layer: Layer,
        inputs: Vec<(ValueId, Vec<usize>)>,
    ) -> R<Val> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|(_, s)| s.as_slice()).collect();
        let shape = layer
            .output_shape(&shapes)
            .map_err(|e| cx.unsupported(e.to_string()))?;
        let base: String = cx
            .name()
            .trim_start_matches('/')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '.'
                }
            })
            .collect();
        let base = if base.is_empty() {
            cx.n.op_type().to_lowercase()
        } else {
            base
        } + suffix;
        let mut name = base.clone();
        let mut k = 1;
        while !self.names.insert(name.clone()) {
            k += 1;
            name = format!("{base}_{k}");
        }
        self.nodes.push(Node {
            name,
            inputs: inputs.into_iter().map(|(v, _)| v).collect(),
            layer,
        });
        Ok(Val::Dyn(self.nodes.len(), shape))
    }

    fn set(&mut self, cx: &Ctx<'_>, v: Val) -> R<()> {
        self.values.insert(cx.output()?.to_string(), v);
        Ok(())
    }

    /// Imports one node: the op table.
    fn node(&mut self, n: &NodeProto) -> R<()> {
        let cx = Ctx {
            n,
            opset: self.opset,
        };
        if !matches!(n.domain(), "" | "ai.onnx") {
            return Err(cx.unsupported(format!("domain {:?}", n.domain())));
        }
        let all_const = n
            .input
            .iter()
            .filter(|i| !i.is_empty())
            .all(|i| matches!(self.values.get(i), Some(Val::Const(_))));
        let op = n.op_type();
        let fold_err = |e: String| cx.unsupported(e);
        if op == "Constant" {
            let c = constant_node(&cx)?;
            return self.set(&cx, Val::Const(c));
        }
        if op == "Shape" {
            let (_, shape) = self
                .dynamic(&cx, 0)
                .or_else(|_| match self.constant(&cx, 0)? {
                    Some(c) => Ok((0, c.dims.clone())),
                    None => Err(cx.unsupported("no input")),
                })?;
            let mut full: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            if matches!(self.get(&cx, 0)?, Some(Val::Dyn(..))) {
                full.insert(0, BATCH);
            }
            let r = full.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (s, e) = (clampi(cx.int("start", 0)), clampi(cx.int("end", r)));
            let part = full.get(s..e.max(s)).unwrap_or(&[]).to_vec();
            return self.set(&cx, Val::Const(Const::ints(part)));
        }
        if all_const && !n.input.is_empty() {
            let c = self.fold(&cx).map_err(fold_err)?;
            return self.set(&cx, Val::Const(c));
        }
        let v = match op {
            "Identity" | "Dropout" => {
                if n.output.get(1).is_some_and(|m| self.uses.contains_key(m)) {
                    return Err(cx.unsupported("its mask output is read"));
                }
                self.get(&cx, 0)?
                    .cloned()
                    .ok_or_else(|| cx.unsupported("no input"))?
            }
            "Conv" => self.conv(&cx)?,
            "Gemm" => self.gemm(&cx)?,
            "MatMul" => {
                let (x, shape) = self.flat_input(&cx)?;
                let w = self.required_constant(&cx, 1)?;
                let [k, m] = w.dims[..] else {
                    return Err(
                        cx.unsupported(format!("weight of shape {:?} (need [K, N])", w.dims))
                    );
                };
                let wt = fold::transpose(w, &[])
                    .map_err(fold_err)?
                    .to_f32()
                    .map_err(fold_err)?;
                self.emit(
                    &cx,
                    "",
                    Layer::Dense(Dense::from_weights(k, m, wt, vec![0.0; m])),
                    vec![(x, shape)],
                )?
            }
            "Add" => self.add(&cx)?,
            "BatchNormalization" => {
                if cx.int("training_mode", 0) != 0 || n.output.iter().skip(1).any(|o| !o.is_empty())
                {
                    return Err(cx.unsupported("training mode (export the model in eval mode)"));
                }
                let x = self.dynamic(&cx, 0)?;
                let c = x.1.first().copied().unwrap_or(0);
                let mut bn = BatchNorm2d::new(c);
                let mut p = Vec::new();
                for k in 1..5 {
                    let v = self.required_constant(&cx, k)?.to_f32().map_err(fold_err)?;
                    if v.len() != c {
                        return Err(cx.unsupported(format!(
                            "parameter {k} has {} values for {c} channels",
                            v.len()
                        )));
                    }
                    p.push(v);
                }
                let mut p = p.into_iter();
                bn.gamma = p.next().unwrap_or_default();
                bn.beta = p.next().unwrap_or_default();
                bn.running_mean = p.next().unwrap_or_default();
                bn.running_var = p.next().unwrap_or_default();
                bn.eps = cx.float("epsilon", 1e-5);
                self.emit(&cx, "", Layer::BatchNorm2d(bn), vec![x])?
            }
            "Relu" => {
                let x = self.dynamic(&cx, 0)?;
                self.emit(&cx, "", Layer::Relu(Relu::new()), vec![x])?
            }
            "Clip" => {
                let x = self.dynamic(&cx, 0)?;
                let bound = |k: usize, attr: &str, default: f32| -> R<f32> {
                    if self.opset < 11 {
                        return Ok(cx.float(attr, default));
                    }
                    match self.constant(&cx, k)? {
                        None => Ok(default),
                        Some(c) => match c.to_f32().map_err(fold_err)?[..] {
                            [v] => Ok(v),
                            _ => Err(cx.unsupported("a bound that is not a scalar")),
                        },
                    }
                };
                let (lo, hi) = (
                    bound(1, "min", f32::NEG_INFINITY)?,
                    bound(2, "max", f32::INFINITY)?,
                );
                let layer = if lo == 0.0 && hi == f32::INFINITY {
                    Layer::Relu(Relu::new())
                } else {
                    Layer::Clip(Clip::new(lo, hi).map_err(|e| cx.unsupported(e.to_string()))?)
                };
                self.emit(&cx, "", layer, vec![x])?
            }
            "LeakyRelu" => {
                let x = self.dynamic(&cx, 0)?;
                let alpha = cx.float("alpha", 0.01);
                if !alpha.is_finite() {
                    return Err(cx.unsupported(format!("alpha {alpha}")));
                }
                let f = UnaryOp::LeakyRelu(Unary::new(LeakyRelu { alpha }));
                self.emit(&cx, "", Layer::Unary(f), vec![x])?
            }
            "Sigmoid" => {
                let x = self.dynamic(&cx, 0)?;
                let f = UnaryOp::Sigmoid(Unary::new(crate::nn::unary::Sigmoid));
                self.emit(&cx, "", Layer::Unary(f), vec![x])?
            }
            "MaxPool" | "AveragePool" => self.pool(&cx)?,
            "GlobalAveragePool" => {
                let x = self.spatial(&cx)?;
                self.emit(&cx, "", Layer::AvgPool2d(AvgPool2d::global()), vec![x])?
            }
            "Concat" => {
                let parts = (0..n.input.len())
                    .map(|k| self.dynamic(&cx, k))
                    .collect::<R<Vec<_>>>()?;
                let rank = parts.first().map_or(0, |p| p.1.len()) + 1;
                if rank != 4 || fold::axis(cx.int("axis", 1), rank) != Ok(1) {
                    return Err(cx.unsupported(
                        "concatenation other than along the channels of NCHW values",
                    ));
                }
                self.emit(&cx, "", Layer::Concat(Concat::new()), parts)?
            }
            "Pad" => self.pad(&cx)?,
            "Slice" => self.slice(&cx)?,
            "Flatten" => {
                let x = self.dynamic(&cx, 0)?;
                if fold::axis(cx.int("axis", 1), x.1.len() + 1) != Ok(1) {
                    return Err(cx.unsupported("flatten at an axis other than 1"));
                }
                self.flatten(&cx, x)?
            }
            "Reshape" | "Squeeze" | "Unsqueeze" => self.reshape(&cx)?,
            "Softmax" | "LogSoftmax" => {
                let x = self.dynamic(&cx, 0)?;
                let trailing = self.uses.get(cx.output()?) == Some(&1)
                    && x.1.len() == 1
                    && n.output.first().is_some_and(|o| self.is_graph_output(o));
                if !trailing {
                    return Err(cx.unsupported(
                        "only a trailing softmax of the logits (dropped) is imported",
                    ));
                }
                Val::Dyn(x.0, x.1)
            }
            _ => return Err(cx.unsupported("")),
        };
        self.set(&cx, v)
    }

    fn is_graph_output(&self, name: &str) -> bool {
        self.outputs.contains(name)
    }

    /// Folds a node whose inputs are all constants.
    fn fold(&self, cx: &Ctx<'_>) -> std::result::Result<Const, String> {
        let c = |k: usize| -> std::result::Result<&Const, String> {
            self.constant(cx, k)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("input {k} is missing"))
        };
        let opt_ints = |k: usize| -> std::result::Result<Option<Vec<i64>>, String> {
            match self.constant(cx, k).map_err(|e| e.to_string())? {
                Some(v) => v.to_i64().map(Some),
                None => Ok(None),
            }
        };
        let axes_of = |k: usize| -> std::result::Result<Option<Vec<i64>>, String> {
            if self.opset >= 13 {
                opt_ints(k)
            } else {
                Ok(cx.ints("axes"))
            }
        };
        match cx.n.op_type() {
            "Identity" | "Dropout" => c(0).cloned(),
            "Cast" => fold::cast(c(0)?, cx.int("to", 1)),
            "Gather" => fold::gather(c(0)?, c(1)?, cx.int("axis", 0)),
            "Concat" => {
                let parts = (0..cx.n.input.len())
                    .map(c)
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                fold::concat(&parts, cx.int("axis", 0))
            }
            "Unsqueeze" => {
                let x = c(0)?;
                let axes = axes_of(1)?.ok_or("no axes")?;
                Ok(Const {
                    dims: fold::unsqueeze_dims(&x.dims, &axes)?,
                    data: x.data.clone(),
                })
            }
            "Squeeze" => {
                let x = c(0)?;
                Ok(Const {
                    dims: fold::squeeze_dims(&x.dims, axes_of(1)?.as_deref())?,
                    data: x.data.clone(),
                })
            }
            "Reshape" => {
                let x = c(0)?;
                Ok(Const {
                    dims: fold::reshape_dims(&x.dims, &c(1)?.to_i64()?)?,
                    data: x.data.clone(),
                })
            }
            "Transpose" => fold::transpose(c(0)?, &cx.ints("perm").unwrap_or_default()),
            "ConstantOfShape" => {
                let value = cx
                    .attr("value")
                    .and_then(|a| a.t.as_ref())
                    .map(Const::from_proto)
                    .transpose()
                    .map_err(|e| e.to_string())?;
                fold::constant_of_shape(&c(0)?.to_i64()?, value.as_ref())
            }
            "Slice" => {
                let x = c(0)?;
                let p = fold::slice_params(
                    x.dims.len(),
                    &c(1)?.to_i64()?,
                    &c(2)?.to_i64()?,
                    opt_ints(3)?.as_deref(),
                    opt_ints(4)?.as_deref(),
                )?;
                fold::slice(x, &p)
            }
            _ => Err("folding this op on constants is not supported".into()),
        }
    }

    /// The one input as a flat per-sample vector (`[B, K]`).
    fn flat_input(&self, cx: &Ctx<'_>) -> R<(ValueId, Vec<usize>)> {
        let x = self.dynamic(cx, 0)?;
        if x.1.len() != 1 {
            return Err(cx.unsupported(format!(
                "input of per-sample shape {:?} (need [B, K]: flatten first)",
                x.1
            )));
        }
        Ok(x)
    }

    /// The one input as a per-sample `[C, H, W]`.
    fn spatial(&self, cx: &Ctx<'_>) -> R<(ValueId, Vec<usize>)> {
        let x = self.dynamic(cx, 0)?;
        if x.1.len() != 3 {
            return Err(cx.unsupported(format!("input of per-sample shape {:?} (need NCHW)", x.1)));
        }
        Ok(x)
    }

    fn flatten(&mut self, cx: &Ctx<'_>, x: (ValueId, Vec<usize>)) -> R<Val> {
        if x.1.len() == 1 {
            return Ok(Val::Dyn(x.0, x.1));
        }
        self.emit(cx, "", Layer::Flatten(Flatten::new()), vec![x])
    }

    fn gemm(&mut self, cx: &Ctx<'_>) -> R<Val> {
        if cx.int("transA", 0) != 0 {
            return Err(cx.unsupported("transA = 1 on the batch input"));
        }
        let x = self.flat_input(cx)?;
        let k = x.1[0];
        let w = self.required_constant(cx, 1)?;
        let (alpha, beta) = (cx.float("alpha", 1.0), cx.float("beta", 1.0));
        let w = if cx.int("transB", 0) != 0 {
            w.clone()
        } else {
            fold::transpose(w, &[]).map_err(|e| cx.unsupported(e))?
        };
        let [m, k2] = w.dims[..] else {
            return Err(cx.unsupported(format!("weight of shape {:?}", w.dims)));
        };
        if k2 != k {
            return Err(cx.unsupported(format!(
                "weight of shape {:?} for {k} input features",
                w.dims
            )));
        }
        let weight: Vec<f32> = w
            .to_f32()
            .map_err(|e| cx.unsupported(e))?
            .iter()
            .map(|v| v * alpha)
            .collect();
        let bias = match self.constant(cx, 2)? {
            None => vec![0.0; m],
            Some(c) => broadcast_bias(c, m)
                .ok_or_else(|| {
                    cx.unsupported(format!("bias of shape {:?} for {m} outputs", c.dims))
                })?
                .into_iter()
                .map(|v| v * beta)
                .collect(),
        };
        self.emit(
            cx,
            "",
            Layer::Dense(Dense::from_weights(k, m, weight, bias)),
            vec![x],
        )
    }

    fn conv(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let x = self.spatial(cx)?;
        let [c, h, w] = x.1[..] else {
            unreachable!("spatial checks the rank")
        };
        let wt = self.required_constant(cx, 1)?;
        let [oc, icg, kh, kw] = wt.dims[..] else {
            return Err(cx.unsupported(format!(
                "weight of shape {:?} (need 2-D convolution)",
                wt.dims
            )));
        };
        let groups = usize::try_from(cx.int("group", 1)).unwrap_or(0);
        if groups == 0 || icg * groups != c {
            return Err(cx.unsupported(format!(
                "{groups} groups of {icg} channels for an input of {c}"
            )));
        }
        if cx.pair("dilations", 1)? != (1, 1) {
            return Err(cx.unsupported("dilations other than 1"));
        }
        if let Some(k) = cx.ints("kernel_shape") {
            if k != [kh as i64, kw as i64] {
                return Err(cx.unsupported(format!("kernel_shape {k:?} differs from the weight's")));
            }
        }
        let stride = cx.pair("strides", 1)?;
        let pads = self.pads(cx, (h, w), (kh, kw), stride)?;
        let bias = match self.constant(cx, 2)? {
            None => vec![0.0; oc],
            Some(b) if b.len() == oc => b.to_f32().map_err(|e| cx.unsupported(e))?,
            Some(b) => {
                return Err(cx.unsupported(format!("bias of shape {:?} for {oc} outputs", b.dims)))
            }
        };
        let weight = wt.to_f32().map_err(|e| cx.unsupported(e))?;
        let (x, padding) = self.pad_if_asymmetric(cx, x, pads)?;
        let layer = if groups == 1 {
            Conv2d::from_weights(c, oc, (kh, kw), stride, padding, weight, bias)
        } else {
            Conv2d::from_weights_grouped(c, oc, (kh, kw), stride, padding, groups, weight, bias)
                .map_err(|e| cx.unsupported(e.to_string()))?
        };
        self.emit(cx, "", Layer::Conv2d(layer), vec![x])
    }

    /// `[top, left, bottom, right]` padding from `pads` or `auto_pad`.
    fn pads(
        &self,
        cx: &Ctx<'_>,
        hw: (usize, usize),
        k: (usize, usize),
        s: (usize, usize),
    ) -> R<[usize; 4]> {
        let same = |n: usize, k: usize, s: usize, upper: bool| {
            let total = ((n.div_ceil(s) - 1) * s + k).saturating_sub(n);
            let small = total / 2;
            if upper {
                (small, total - small)
            } else {
                (total - small, small)
            }
        };
        match cx.string("auto_pad", "NOTSET").as_str() {
            "NOTSET" => match cx.ints("pads").as_deref() {
                None => Ok([0; 4]),
                Some(&[t, l, b, r]) if [t, l, b, r].iter().all(|&p| p >= 0) => {
                    Ok([t as usize, l as usize, b as usize, r as usize])
                }
                Some(p) => Err(cx.unsupported(format!("pads {p:?}"))),
            },
            "VALID" => Ok([0; 4]),
            mode @ ("SAME_UPPER" | "SAME_LOWER") => {
                let upper = mode == "SAME_UPPER";
                let (t, b) = same(hw.0, k.0, s.0, upper);
                let (l, r) = same(hw.1, k.1, s.1, upper);
                Ok([t, l, b, r])
            }
            other => Err(cx.unsupported(format!("auto_pad {other}"))),
        }
    }

    /// Symmetric padding stays in the layer; otherwise a [`Pad`] node goes before it.
    fn pad_if_asymmetric(
        &mut self,
        cx: &Ctx<'_>,
        x: (ValueId, Vec<usize>),
        [t, l, b, r]: [usize; 4],
    ) -> R<((ValueId, Vec<usize>), (usize, usize))> {
        if t == b && l == r {
            return Ok((x, (t, l)));
        }
        match self.emit(cx, ".pad", Layer::Pad(Pad::spatial(t, b, l, r)), vec![x])? {
            Val::Dyn(id, shape) => Ok(((id, shape), (0, 0))),
            Val::Const(_) => unreachable!("emit returns run-time values"),
        }
    }

    fn pool(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let x = self.spatial(cx)?;
        let max = cx.n.op_type() == "MaxPool";
        if cx.n.output.get(1).is_some_and(|o| !o.is_empty()) {
            return Err(cx.unsupported("the indices output"));
        }
        if cx.int("ceil_mode", 0) != 0 {
            return Err(cx.unsupported("ceil_mode = 1"));
        }
        if cx.pair("dilations", 1)? != (1, 1) {
            return Err(cx.unsupported("dilations other than 1"));
        }
        let kernel = match cx.ints("kernel_shape").as_deref() {
            Some(&[a, b]) if a > 0 && b > 0 => (a as usize, b as usize),
            k => return Err(cx.unsupported(format!("kernel_shape {k:?}"))),
        };
        let stride = cx.pair("strides", 1)?;
        let pads = self.pads(cx, (x.1[1], x.1[2]), kernel, stride)?;
        let x = if pads == [0; 4] {
            x
        } else if max {
            return Err(cx.unsupported(
                "padded max pooling (lowbit pads with zeros, max pooling with -inf)",
            ));
        } else if cx.int("count_include_pad", 0) == 0 {
            return Err(cx.unsupported("padded average pooling with count_include_pad = 0"));
        } else {
            let [t, l, b, r] = pads;
            match self.emit(cx, ".pad", Layer::Pad(Pad::spatial(t, b, l, r)), vec![x])? {
                Val::Dyn(id, shape) => (id, shape),
                Val::Const(_) => unreachable!("emit returns run-time values"),
            }
        };
        let layer = if max {
            Layer::MaxPool2d(MaxPool2d::new(kernel, stride))
        } else {
            Layer::AvgPool2d(AvgPool2d::new(kernel, stride))
        };
        self.emit(cx, "", layer, vec![x])
    }

    fn add(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let (a, b) = (self.get(cx, 0)?.cloned(), self.get(cx, 1)?.cloned());
        match (a, b) {
            (Some(Val::Dyn(ia, sa)), Some(Val::Dyn(ib, sb))) => {
                if sa != sb {
                    return Err(cx.unsupported(format!("broadcasting {sa:?} + {sb:?}")));
                }
                self.emit(cx, "", Layer::Add(Add::new()), vec![(ia, sa), (ib, sb)])
            }
            (Some(Val::Dyn(id, shape)), Some(Val::Const(c)))
            | (Some(Val::Const(c)), Some(Val::Dyn(id, shape))) => {
                // A bias after MatMul (or Conv): folded into that layer when nothing else reads its output.
                let src =
                    cx.n.input
                        .iter()
                        .find(|i| matches!(self.values.get(*i), Some(Val::Dyn(..))))
                        .cloned()
                        .unwrap_or_default();
                let only_reader = self.uses.get(&src) == Some(&1);
                let channels = shape.first().copied().unwrap_or(0);
                let bias = if shape.len() == 1 {
                    broadcast_bias(&c, channels)
                } else {
                    channel_bias(&c, channels)
                };
                let layer = id
                    .checked_sub(1)
                    .and_then(|j| self.nodes.get_mut(j))
                    .map(|n| &mut n.layer);
                match (layer, bias, only_reader) {
                    (Some(Layer::Dense(d)), Some(bias), true) if shape.len() == 1 => {
                        d.bias.iter_mut().zip(&bias).for_each(|(b, v)| *b += v);
                    }
                    (Some(Layer::Conv2d(conv)), Some(bias), true) => {
                        conv.bias.iter_mut().zip(&bias).for_each(|(b, v)| *b += v);
                    }
                    _ => {
                        return Err(cx.unsupported(
                            "adding a constant other than the bias of the MatMul or Conv before it",
                        ))
                    }
                }
                Ok(Val::Dyn(id, shape))
            }
            _ => Err(cx.unsupported("inputs")),
        }
    }

    fn pad(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let x = self.spatial(cx)?;
        if cx.string("mode", "constant") != "constant" {
            return Err(cx.unsupported(format!("mode {}", cx.string("mode", "constant"))));
        }
        let pads = self
            .required_constant(cx, 1)?
            .to_i64()
            .map_err(|e| cx.unsupported(e))?;
        if let Some(v) = self.constant(cx, 2)? {
            if v.to_f32()
                .map_err(|e| cx.unsupported(e))?
                .iter()
                .any(|&v| v != 0.0)
            {
                return Err(cx.unsupported("a constant value other than zero"));
            }
        }
        if self.get(cx, 3)?.is_some() {
            return Err(cx.unsupported("the axes input"));
        }
        let p: Vec<usize> = match pads[..] {
            [0, c0, t, l, 0, c1, b, r] if [c0, t, l, c1, b, r].iter().all(|&v| v >= 0) => {
                [c0, t, l, c1, b, r].iter().map(|&v| v as usize).collect()
            }
            _ => {
                return Err(cx.unsupported(format!(
                    "pads {pads:?} (need non-negative NCHW pads, none on the batch)"
                )))
            }
        };
        let layer = Pad::new((p[0], p[3]), (p[1], p[4]), (p[2], p[5]));
        self.emit(cx, "", Layer::Pad(layer), vec![x])
    }

    fn slice(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let x = self.spatial(cx)?;
        let ints = |k: usize| -> R<Option<Vec<i64>>> {
            self.constant(cx, k)?
                .map(|c| c.to_i64().map_err(|e| cx.unsupported(e)))
                .transpose()
        };
        let (starts, ends) = (ints(1)?.unwrap_or_default(), ints(2)?.unwrap_or_default());
        let p = fold::slice_params(4, &starts, &ends, ints(3)?.as_deref(), ints(4)?.as_deref())
            .map_err(|e| cx.unsupported(e))?;
        if p[0] != (0, i64::MAX, 1)
            && !(p[0].0 == 0 && p[0].1 >= i64::from(i32::MAX) && p[0].2 == 1)
        {
            return Err(cx.unsupported("slicing the batch"));
        }
        let mut axes = Vec::new();
        for (d, &(s, e, st)) in p.iter().enumerate().skip(1) {
            let len = x.1[d - 1];
            let keep = fold::slice_indices(len, s, e, st).map_err(|e| cx.unsupported(e))?;
            if st < 0 || keep.is_empty() {
                return Err(cx.unsupported("a negative step or an empty slice"));
            }
            let start = keep[0];
            let end = keep[keep.len() - 1] + 1;
            axes.push(AxisSlice::new(start, end, st as usize));
        }
        let layer = Slice::new(axes[0], axes[1], axes[2]);
        self.emit(cx, "", Layer::Slice(layer), vec![x])
    }

    /// `Reshape`, `Squeeze`, `Unsqueeze` of a run-time value: only a flatten (or nothing) is expressible.
    fn reshape(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let x = self.dynamic(cx, 0)?;
        let mut full = vec![BATCH];
        full.extend(x.1.iter().map(|&d| d as i64));
        let target: Vec<i64> = match cx.n.op_type() {
            "Reshape" => {
                let t = self
                    .required_constant(cx, 1)?
                    .to_i64()
                    .map_err(|e| cx.unsupported(e))?;
                match t.first() {
                    Some(&BATCH) | Some(&0) | Some(&-1) => {}
                    _ => {
                        return Err(
                            cx.unsupported(format!("target {t:?} that does not keep the batch"))
                        )
                    }
                }
                let rest = fold::reshape_dims(&x.1, &t[1..]).map_err(|e| cx.unsupported(e))?;
                rest.iter().map(|&d| d as i64).collect()
            }
            op => {
                let axes = if self.opset >= 13 {
                    self.constant(cx, 1)?
                        .map(|c| c.to_i64())
                        .transpose()
                        .map_err(|e| cx.unsupported(e))?
                } else {
                    cx.ints("axes")
                };
                let dims: Vec<usize> = std::iter::once(1).chain(x.1.iter().copied()).collect();
                let out = if op == "Squeeze" {
                    fold::squeeze_dims(&dims, axes.as_deref())
                } else {
                    fold::unsqueeze_dims(&dims, axes.as_deref().unwrap_or(&[]))
                }
                .map_err(|e| cx.unsupported(e))?;
                let keeps_batch = axes.as_deref().unwrap_or(&[]).iter().all(|&a| {
                    fold::axis(
                        a,
                        if op == "Squeeze" {
                            dims.len()
                        } else {
                            out.len()
                        },
                    ) != Ok(0)
                });
                if !keeps_batch || out.is_empty() {
                    return Err(cx.unsupported("squeezing or unsqueezing the batch axis"));
                }
                out[1..].iter().map(|&d| d as i64).collect()
            }
        };
        let target: Vec<usize> = target.iter().map(|&d| d as usize).collect();
        if target == x.1 {
            Ok(Val::Dyn(x.0, x.1))
        } else if target.len() == 1 {
            self.flatten(cx, x)
        } else {
            Err(cx.unsupported(format!(
                "reshaping per-sample {:?} to {target:?} (only flattening is supported)",
                x.1
            )))
        }
    }
}

/// A Dense bias from a constant of `[m]`, `[1, m]` or one element.
fn broadcast_bias(c: &Const, m: usize) -> Option<Vec<f32>> {
    let v = c.to_f32().ok()?;
    let fits = match c.dims[..] {
        [] | [1] | [1, 1] => true,
        [n] | [1, n] => n == m,
        _ => false,
    };
    if !fits {
        return None;
    }
    Some(if v.len() == 1 { vec![v[0]; m] } else { v })
}

/// A Conv bias from a constant of `[C, 1, 1]` or `[1, C, 1, 1]`.
fn channel_bias(c: &Const, channels: usize) -> Option<Vec<f32>> {
    let fits = matches!(c.dims[..], [n, 1, 1] | [1, n, 1, 1] if n == channels);
    fits.then(|| c.to_f32().ok()).flatten()
}

/// The tensor of a `Constant` node (from `value` or one of the `value_*` attributes).
fn constant_node(cx: &Ctx<'_>) -> R<Const> {
    let a =
        cx.n.attribute
            .first()
            .ok_or_else(|| cx.unsupported("no value attribute"))?;
    match a.name() {
        "value" => {
            a.t.as_ref()
                .ok_or_else(|| cx.unsupported("value without a tensor"))
                .and_then(|t| Const::from_proto(t))
        }
        "value_float" => Ok(Const {
            dims: vec![],
            data: fold::Data::F32(vec![a.f()]),
        }),
        "value_floats" => Ok(Const {
            dims: vec![a.floats.len()],
            data: fold::Data::F32(a.floats.clone()),
        }),
        "value_int" => Ok(Const {
            dims: vec![],
            data: fold::Data::I64(vec![a.i()]),
        }),
        "value_ints" => Ok(Const::ints(a.ints.clone())),
        other => Err(cx.unsupported(format!("attribute {other}"))),
    }
}
