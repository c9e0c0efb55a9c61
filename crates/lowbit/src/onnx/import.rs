//! The ONNX graph walk: one table row per op (see [`Importer::node`]), turning nodes into lowbit layers or into
//! folded constants.
use super::fold::{self, Const, BATCH};
use super::proto::{AttributeProto, ModelProto, NodeProto};
use super::{OnnxError, Preprocessing};
use crate::nn::{
    AvgPool2d, BatchNorm2d, Clip, Concat, Dense, Layer, LeakyRelu, Model, Node, Relu, Unary,
    UnaryOp, ValueId,
};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The oldest default-domain opset imported.
pub const MIN_OPSET: i64 = 11;

type R<T> = std::result::Result<T, OnnxError>;

/// A run-time value: its id and per-sample shape.
type Dyn = (ValueId, Vec<usize>);

mod external;
mod layout;
mod ops;

/// A value of the ONNX graph while importing.
#[derive(Debug, Clone)]
enum Val {
    /// Known at import time.
    Const(Const),
    /// Computed at run time by the lowbit graph: its value id and per-sample shape (batch dimension dropped).
    Dyn(ValueId, Vec<usize>),
    /// A run-time value seen through layout transposes: the lowbit value `Dyn(id, shape)` (NCHW) with its axes
    /// (batch included) permuted by `perm`, as Keras/tf2onnx graphs hold NHWC tensors. Only a transpose that
    /// undoes the permutation may read it, which is what makes those transposes layout-only and foldable.
    Permuted(ValueId, Vec<usize>, Vec<usize>),
    /// The flattening of a [`Val::Permuted`] view: the lowbit value `id` of per-sample shape `[k]` (the NCHW
    /// flattening) whose element `order[j]` is the graph's element `j`. Only a `Gemm` or `MatMul` may read it,
    /// taking its weight rows in that order (Keras's `Flatten` of NHWC, then `Dense`).
    Reordered(ValueId, usize, Vec<usize>),
}

/// The NHWC view of an NCHW tensor: `NHWC[i] = NCHW[TO_NHWC[i]]`.
const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
/// The transpose that turns an NHWC graph input into NCHW (`perm` of tf2onnx's leading `Transpose`).
const TO_NCHW: [i64; 4] = [0, 3, 1, 2];

/// Imports an ONNX model from its bytes; `spec` becomes the model's description. Tensors stored as external data
/// are refused ([`OnnxError::ExternalData`]): see [`import_bytes_with_external_data`].
pub fn import_bytes(bytes: &[u8], spec: &str) -> R<Model> {
    import_bytes_with_options(bytes, spec, None, &Preprocessing::default())
}

/// [`import_bytes`] for a model whose external-data files (`location` relative to `dir`, never outside it) are
/// read into its initializers first.
pub fn import_bytes_with_external_data(bytes: &[u8], spec: &str, dir: &Path) -> R<Model> {
    import_bytes_with_options(bytes, spec, Some(dir), &Preprocessing::default())
}

/// The general import: external data read from `dir` (refused when `None`), and the input preprocessing of
/// `preprocessing` (command-line flags) over the model's `lowbit.*` metadata, stored in the model as its
/// normalisation.
pub fn import_bytes_with_options(
    bytes: &[u8],
    spec: &str,
    dir: Option<&Path>,
    preprocessing: &Preprocessing,
) -> R<Model> {
    let mut model = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    if let (Some(g), Some(dir)) = (model.graph.as_mut(), dir) {
        for t in &mut g.initializer {
            if !t.external_data.is_empty() {
                external::load(t, dir)?;
            }
        }
    }
    let mut imported = import_model(&model, spec)?;
    let pre = preprocessing
        .clone()
        .or(Preprocessing::from_metadata(&model.metadata_props)?);
    imported.normalization = pre.normalization().map_err(OnnxError::Preprocessing)?;
    if let Some(n) = &imported.normalization {
        n.check_channels(imported.input_shape[0])
            .map_err(|e| OnnxError::Preprocessing(e.to_string()))?;
    }
    Ok(imported)
}

fn import_model(model: &ModelProto, spec: &str) -> R<Model> {
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
        // Set by the caller from flags and metadata.
        normalization: None,
    };
    model
        .check_structure()
        .map_err(|e| OnnxError::Graph(e.to_string()))?;
    // What the float file would refuse to store (or evaluation would turn into NaN) is refused here.
    let mut model = model;
    crate::modelfile::check_float_values(&mut model)
        .map_err(|(name, reason)| OnnxError::BadTensor { name, reason })?;
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
        if live[j + 1] && j < out {
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
        // An input read only by transposes to NCHW is NHWC (Keras, tf2onnx): lowbit's model takes it as NCHW
        // and those transposes fold away.
        let readers: Vec<&NodeProto> = graph
            .node
            .iter()
            .filter(|n| n.input.iter().any(|i| i == input.name()))
            .collect();
        let nhwc = !readers.is_empty()
            && readers.iter().all(|n| {
                let to_nchw = n.op_type() == "Transpose"
                    && n.attribute
                        .iter()
                        .any(|a| a.name() == "perm" && a.ints == TO_NCHW);
                to_nchw || self.reshapes_to_one_channel(n, shape.as_deref())
            });
        let chw = match (shape.as_deref(), nhwc) {
            (Some([_, Some(c), Some(h), Some(w)]), false) => [*c, *h, *w],
            (Some([_, Some(h), Some(w), Some(c)]), true) => [*c, *h, *w],
            _ => {
                return Err(OnnxError::Graph(format!(
                    "graph input {:?}: shape {shape:?} is not {} with known C, H and W (the batch may be symbolic)",
                    input.name(),
                    if nhwc { "NHWC" } else { "NCHW" }
                )))
            }
        };
        let [c, h, w] = chw;
        let val = if nhwc {
            Val::Permuted(0, vec![c, h, w], TO_NHWC.to_vec())
        } else {
            Val::Dyn(0, vec![c, h, w])
        };
        self.values.insert(input.name().to_string(), val);
        Ok([c, h, w])
    }

    /// True for tf2onnx's form of the NHWC-to-NCHW transpose of a one-channel input `[N, H, W, 1]`: a
    /// `Reshape` to `[-1, 1, H, W]` (the same data).
    fn reshapes_to_one_channel(&self, n: &NodeProto, shape: Option<&[Option<usize>]>) -> bool {
        let Some([_, Some(h), Some(w), Some(1)]) = shape else {
            return false;
        };
        let target = match n.input.get(1).and_then(|t| self.values.get(t)) {
            Some(Val::Const(c)) => c.to_i64().unwrap_or_default(),
            _ => return false,
        };
        n.op_type() == "Reshape"
            && matches!(target[..], [b, 1, th, tw] if (b == -1 || b == 0) && (th, tw) == (*h as i64, *w as i64))
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
            Some(Val::Dyn(..) | Val::Permuted(..) | Val::Reordered(..)) => {
                Err(OnnxError::NotConstant {
                    node: cx.name(),
                    op: cx.n.op_type().to_string(),
                    name: cx.n.input[k].clone(),
                })
            }
        }
    }

    fn required_constant(&self, cx: &Ctx<'_>, k: usize) -> R<&Const> {
        self.constant(cx, k)?
            .ok_or_else(|| cx.unsupported(format!("input {k} is missing")))
    }

    fn dynamic(&self, cx: &Ctx<'_>, k: usize) -> R<Dyn> {
        match self.get(cx, k)? {
            Some(Val::Dyn(id, shape)) => Ok((*id, shape.clone())),
            Some(Val::Permuted(_, _, perm)) => Err(cx.unsupported(format!(
                "input {k} is a transposed (axes {perm:?}) view of an NCHW value; only transposes that a later \
                 transpose undoes are imported (layout-only)"
            ))),
            Some(Val::Reordered(..)) => Err(cx.unsupported(format!(
                "input {k} is a flattened transposed (NHWC) value; only a Gemm or MatMul may read it"
            ))),
            _ => Err(cx.unsupported(format!("input {k} must be computed from the graph input"))),
        }
    }

    /// Appends a lowbit node reading `inputs`, checks its shape, and returns its value.
    fn emit(&mut self, cx: &Ctx<'_>, suffix: &str, layer: Layer, inputs: Vec<Dyn>) -> R<Val> {
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
                let ((x, shape), order) = self.flat_input(&cx)?;
                let w = self.required_constant(&cx, 1)?;
                let [k, m] = w.dims[..] else {
                    return Err(
                        cx.unsupported(format!("weight of shape {:?} (need [K, N])", w.dims))
                    );
                };
                if shape != [k] {
                    return Err(cx.unsupported(format!(
                        "weight of shape {:?} for {shape:?} input features",
                        w.dims
                    )));
                }
                let wt = fold::transpose(w, &[])
                    .map_err(fold_err)?
                    .to_f32()
                    .map_err(fold_err)?;
                let wt = ops::reorder_columns(wt, k, order.as_deref());
                self.emit(
                    &cx,
                    "",
                    Layer::Dense(Dense::from_weights(k, m, wt, vec![0.0; m])),
                    vec![(x, shape)],
                )?
            }
            "Add" => self.add(&cx)?,
            "Mul" => self.mul(&cx)?,
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
            "Flatten" => self.flatten_op(&cx)?,
            "Reshape" | "Squeeze" | "Unsqueeze" => self.reshape(&cx)?,
            "Transpose" => self.layout_transpose(&cx)?,
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

    /// The one input as a per-sample `[C, H, W]`.
    fn spatial(&self, cx: &Ctx<'_>) -> R<Dyn> {
        let x = self.dynamic(cx, 0)?;
        if x.1.len() != 3 {
            return Err(cx.unsupported(format!("input of per-sample shape {:?} (need NCHW)", x.1)));
        }
        Ok(x)
    }
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
                .and_then(Const::from_proto)
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
