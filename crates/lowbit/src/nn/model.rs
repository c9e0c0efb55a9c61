//! The training graph: nodes in topological order, each running one [`Layer`] on the values it names.
//!
//! Value `0` is the model input and value `i + 1` the output of `nodes[i]`; the last node's output is the logits.
//! A forward pass leaves each activation in the buffer of the layer that produced it (reused at every step, so a
//! training step allocates no activation memory for buffered layers); a backward pass walks the nodes in reverse,
//! summing the gradients of values read by several nodes, and skips nodes upstream of every parameter.
use super::Layer;
use super::Param;
use crate::error::{Error, Result};
use crate::state::{StateVisitor, Stateful};
use crate::tensor::Tensor;
use lowbit_runtime::preprocess::Normalization;
use rayon::prelude::*;

/// Index of a value of a [`Model`]: `0` is the input, `i + 1` the output of `nodes[i]`.
pub type ValueId = usize;

/// One node: a named layer and the values it reads.
#[derive(Debug, Clone)]
pub struct Node {
    /// Unique name (also the name of the value it produces and of its parameters in files).
    pub name: String,
    /// The values it reads, in the layer's argument order; each is the input or an earlier node's output.
    pub inputs: Vec<ValueId>,
    /// What it computes.
    pub layer: Layer,
}

/// A classifier graph: images in, logits out.
#[derive(Debug, Clone)]
pub struct Model {
    /// The nodes in topological order; the last one produces the logits.
    pub nodes: Vec<Node>,
    /// Input shape of one sample, (C, H, W).
    pub input_shape: [usize; 3],
    /// Number of output classes (logits per sample).
    pub classes: usize,
    /// The spec string the model was built from (e.g. `mlp:784-64-10`), or a description of its origin.
    pub spec: String,
    /// Per-channel normalisation its inputs were trained with (`None`: pixels / 255); see
    /// [`crate::data::pixels_to_input`], which applies it.
    pub normalization: Option<Normalization>,
}

/// Where a value of a forward (or a gradient of a backward) pass lives.
enum Val {
    /// Not computed (or not needed).
    Empty,
    /// The tensor the caller passed in.
    Given,
    /// The output (or input-gradient) buffer of this node's layer.
    Node(usize),
    /// Returned by a layer without buffers, or a sum of gradients.
    Owned(Tensor),
}

/// The tensor a [`Val`] refers to; `nodes` must hold every node it can name.
fn resolve<'a>(v: &'a Val, given: &'a Tensor, nodes: &'a [Node], grad: bool) -> Result<&'a Tensor> {
    match v {
        Val::Given => Ok(given),
        Val::Node(j) => nodes
            .get(*j)
            .map(|n| {
                if grad {
                    n.layer.input_grad_buffer()
                } else {
                    n.layer.output_buffer()
                }
            })
            .ok_or_else(|| internal("a value refers to a node not yet run")),
        Val::Owned(t) => Ok(t),
        Val::Empty => Err(internal("a value is read before it is computed")),
    }
}

fn internal(what: &str) -> Error {
    Error::Shape(format!("model graph: {what}"))
}

impl Model {
    /// Builds a model from a spec string (see [`super::spec::from_spec`]), initialised from `seed`.
    pub fn from_spec(spec: &str, seed: u64) -> Result<Model> {
        super::spec::from_spec(spec, seed)
    }

    /// Builds a model from a spec string for inputs of `input_shape` and `classes` classes (see
    /// [`super::spec::from_spec_for`]).
    pub fn from_spec_for(
        spec: &str,
        seed: u64,
        input_shape: [usize; 3],
        classes: usize,
    ) -> Result<Model> {
        super::spec::from_spec_for(spec, seed, input_shape, classes)
    }

    /// A chain: node `i` (named `layers.{i}`, as the chains of float file version 1 named their tensors) reads the
    /// output of node `i - 1`, the first one the input.
    pub fn sequential(
        spec: impl Into<String>,
        input_shape: [usize; 3],
        classes: usize,
        layers: Vec<Layer>,
    ) -> Model {
        let nodes = layers
            .into_iter()
            .enumerate()
            .map(|(i, layer)| Node {
                name: format!("layers.{i}"),
                inputs: vec![i],
                layer,
            })
            .collect();
        Model {
            nodes,
            input_shape,
            classes,
            spec: spec.into(),
            normalization: None,
        }
    }

    /// The layers in node order.
    pub fn layers(&self) -> impl DoubleEndedIterator<Item = &Layer> + ExactSizeIterator {
        self.nodes.iter().map(|n| &n.layer)
    }

    /// The layers in node order, mutably.
    pub fn layers_mut(
        &mut self,
    ) -> impl DoubleEndedIterator<Item = &mut Layer> + ExactSizeIterator {
        self.nodes.iter_mut().map(|n| &mut n.layer)
    }

    /// The nodes that read each value (`0..=nodes.len()`), in node order.
    pub fn consumers(&self) -> Vec<Vec<usize>> {
        let mut c = vec![Vec::new(); self.nodes.len() + 1];
        for (j, n) in self.nodes.iter().enumerate() {
            for &v in &n.inputs {
                if let Some(list) = c.get_mut(v) {
                    if list.last() != Some(&j) {
                        list.push(j);
                    }
                }
            }
        }
        c
    }

    /// Checks the structure: unique non-empty names, every input an earlier value (no cycle, no dangling
    /// reference), each layer's number of inputs, every node but the last read by some node.
    pub fn check_structure(&self) -> Result<()> {
        let bad = |name: &str, what: String| {
            Error::Shape(format!("model {}: node {name}: {what}", self.spec))
        };
        let mut names = std::collections::HashSet::new();
        for (j, n) in self.nodes.iter().enumerate() {
            if n.name.is_empty() || !names.insert(n.name.as_str()) {
                return Err(bad(&n.name, "empty or duplicate name".into()));
            }
            if let Some(&v) = n.inputs.iter().find(|&&v| v > j) {
                return Err(bad(
                    &n.name,
                    format!("input {v} is not the input or an earlier node (a cycle or a dangling reference)"),
                ));
            }
            if !n.layer.accepts_inputs(n.inputs.len()) {
                return Err(bad(
                    &n.name,
                    format!(
                        "a {} layer does not take {} inputs",
                        n.layer.kind(),
                        n.inputs.len()
                    ),
                ));
            }
        }
        let consumers = self.consumers();
        if let Some(j) =
            (0..self.nodes.len().saturating_sub(1)).find(|&j| consumers[j + 1].is_empty())
        {
            return Err(bad(&self.nodes[j].name, "its output is never read".into()));
        }
        Ok(())
    }

    /// Inserts a node running `layer` on value `v`, right after `v`'s producer; every node that read `v` reads the
    /// new node's output instead. Returns the new node's index.
    pub fn insert_after(&mut self, v: ValueId, name: impl Into<String>, layer: Layer) -> usize {
        let at = v.min(self.nodes.len());
        for n in &mut self.nodes {
            for i in &mut n.inputs {
                if *i >= v {
                    *i += 1;
                }
            }
        }
        self.nodes.insert(
            at,
            Node {
                name: name.into(),
                inputs: vec![v],
                layer,
            },
        );
        at
    }

    /// Removes node `j`, a one-input node; the nodes that read its output read its input instead.
    pub fn bypass(&mut self, j: usize) -> Result<Node> {
        let src = match self.nodes.get(j).map(|n| n.inputs.as_slice()) {
            Some([v]) => *v,
            _ => return Err(internal("only a one-input node can be bypassed")),
        };
        let node = self.nodes.remove(j);
        for n in &mut self.nodes {
            for i in &mut n.inputs {
                if *i == j + 1 {
                    *i = src;
                } else if *i > j + 1 {
                    *i -= 1;
                }
            }
        }
        Ok(node)
    }

    /// Index of the node named `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The per-sample shape of every value (`[0]` the input), inferred node by node.
    pub fn value_shapes(&self) -> Result<Vec<Vec<usize>>> {
        let mut shapes = vec![self.input_shape.to_vec()];
        for n in &self.nodes {
            let ins = n
                .inputs
                .iter()
                .map(|&v| shapes.get(v).map(Vec::as_slice))
                .collect::<Option<Vec<&[usize]>>>()
                .ok_or_else(|| {
                    Error::Shape(format!(
                        "model {}: node {}: input not computed yet",
                        self.spec, n.name
                    ))
                })?;
            let out = n
                .layer
                .output_shape(&ins)
                .map_err(|e| Error::Shape(format!("model {}: node {}: {e}", self.spec, n.name)))?;
            shapes.push(out);
        }
        Ok(shapes)
    }

    /// Whether the graph is a chain (each node reads the one before it).
    pub fn is_chain(&self) -> bool {
        self.nodes
            .iter()
            .enumerate()
            .all(|(i, n)| n.inputs.as_slice() == [i])
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let sample: usize = self.input_shape.iter().product();
        if x.shape.len() < 2 || x.row_len() != sample || x.len() != x.rows() * sample {
            return Err(Error::Shape(format!(
                "model {} expects [B, {}, {}, {}] (or [B, {sample}]), got {:?}",
                self.spec, self.input_shape[0], self.input_shape[1], self.input_shape[2], x.shape
            )));
        }
        Ok(())
    }

    /// ReLU nodes that run fused into the max pool reading them (the pool takes the ReLU's input and applies both
    /// in one pass): `fused[r]` for a ReLU `r` whose only reader is that pool. With `as_run`, only those the last
    /// forward pass did fuse (which is what backward must follow).
    fn relu_pool_fusions(&self, consumers: &[Vec<usize>], as_run: bool) -> Vec<bool> {
        let mut fused = vec![false; self.nodes.len()];
        for (r, n) in self.nodes.iter().enumerate() {
            if let (Layer::Relu(_), [p]) = (&n.layer, consumers[r + 1].as_slice()) {
                if let Layer::MaxPool2d(pool) = &self.nodes[*p].layer {
                    fused[r] = !as_run || pool.relu_fused();
                }
            }
        }
        fused
    }

    /// Logits `[B, classes]` for a batch `[B, C, H, W]` (or `[B, C*H*W]`).
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let vals = self.forward_values(x, train, false)?;
        let n = self.nodes.len();
        match vals.into_iter().nth(n) {
            Some(Val::Owned(t)) => Ok(t),
            Some(v) => Ok(resolve(&v, x, &self.nodes, false)?.clone()),
            None => Ok(x.clone()),
        }
    }

    /// Every value of a forward pass (`values[0]` the input, `values[i + 1]` node `i`'s output, NCHW or flat as
    /// the layers produce them), with no fusion, e.g. for per-node diagnostics.
    pub fn forward_all(&mut self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let vals = self.forward_values(x, train, true)?;
        vals.iter()
            .map(|v| resolve(v, x, &self.nodes, false).cloned())
            .collect()
    }

    fn forward_values(&mut self, x: &Tensor, train: bool, keep_all: bool) -> Result<Vec<Val>> {
        self.check_input(x)?;
        let n = self.nodes.len();
        let consumers = self.consumers();
        // Spatial layers need NCHW; a flat `[B, C*H*W]` batch is the same data in that order. Dense layers take it
        // as it is (an MLP's input stays 2-D).
        let reshaped;
        let x = if x.shape.len() == 2
            && consumers[0]
                .iter()
                .any(|&j| !matches!(self.nodes[j].layer, Layer::Dense(_)))
        {
            let [c, h, w] = self.input_shape;
            reshaped = Tensor::new(x.data.clone(), vec![x.rows(), c, h, w]);
            &reshaped
        } else {
            x
        };
        let fused = if keep_all {
            vec![false; n]
        } else {
            self.relu_pool_fusions(&consumers, false)
        };
        let mut vals: Vec<Val> = Vec::with_capacity(n + 1);
        vals.push(Val::Given);
        for j in 0..n {
            if fused[j] {
                vals.push(Val::Empty);
                continue;
            }
            let t0 = super::profile::now();
            let (before, rest) = self.nodes.split_at_mut(j);
            let node = &mut rest[0];
            // A max pool reading a fused ReLU reads the ReLU's input instead.
            let fused_relu = match node.inputs.as_slice() {
                [v] if *v >= 1 && fused[*v - 1] => Some(*v - 1),
                _ => None,
            };
            let out = match (fused_relu, &mut node.layer) {
                (Some(r), Layer::MaxPool2d(pool)) => {
                    let src = before[r].inputs[0];
                    pool.forward_buffered(resolve(&vals[src], x, before, false)?, train, true)?;
                    None
                }
                (_, layer) if node.inputs.len() == 1 => {
                    let input = resolve(&vals[node.inputs[0]], x, before, false)?;
                    layer.forward_buffered(input, train)?
                }
                (_, layer) => {
                    let inputs = node
                        .inputs
                        .iter()
                        .map(|&v| resolve(&vals[v], x, before, false))
                        .collect::<Result<Vec<_>>>()?;
                    layer.forward_multi_buffered(&inputs, train)?
                }
            };
            vals.push(out.map_or(Val::Node(j), Val::Owned));
            super::profile::record(t0, j, false);
            // Owned values nobody reads any more are dropped as the pass goes.
            if !keep_all {
                for &v in &node.inputs {
                    if v > 0 && consumers[v].last() == Some(&j) && matches!(vals[v], Val::Owned(_))
                    {
                        vals[v] = Val::Empty;
                    }
                }
            }
        }
        Ok(vals)
    }

    /// Backward pass from dL/dlogits, storing every parameter's gradient. The input gradient is not computed
    /// (nothing before the first layer needs it), which saves the largest product of an MLP.
    pub fn backward(&mut self, grad_logits: &Tensor) -> Result<()> {
        self.backward_from(grad_logits, false).map(|_| ())
    }

    /// Backward pass that also returns dL/dinput (for gradient checks and input attributions).
    pub fn backward_with_input_grad(&mut self, grad_logits: &Tensor) -> Result<Tensor> {
        self.backward_from(grad_logits, true)
    }

    /// Runs backward through every node that leads to a parameter (or to the input when `input_grad`), last
    /// first, and returns dL/dinput when `input_grad` (an empty tensor otherwise). Gradients stay in the layers'
    /// reused buffers where a value has one reader, and are summed into owned tensors where it has several.
    fn backward_from(&mut self, grad_logits: &Tensor, input_grad: bool) -> Result<Tensor> {
        let n = self.nodes.len();
        if n == 0 {
            return Ok(if input_grad {
                grad_logits.clone()
            } else {
                Tensor::default()
            });
        }
        let consumers = self.consumers();
        let fused = self.relu_pool_fusions(&consumers, true);
        // Whether dL/dvalue is needed: the value is the input (when asked for) or downstream of a parameter.
        let mut needs = vec![false; n + 1];
        needs[0] = input_grad;
        for j in 0..n {
            let has_params = !self.nodes[j].layer.params_mut().is_empty();
            needs[j + 1] = has_params || self.nodes[j].inputs.iter().any(|&v| needs[v]);
        }
        let mut grads: Vec<Val> = (0..=n).map(|_| Val::Empty).collect();
        grads[n] = Val::Given;
        for j in (0..n).rev() {
            if fused[j] {
                continue;
            }
            let g_val = std::mem::replace(&mut grads[j + 1], Val::Empty);
            if matches!(g_val, Val::Empty) {
                continue; // the node's output does not reach the loss
            }
            // A pool that applied a fused ReLU also applies its gradient: its input is the ReLU's input.
            let reads: Vec<ValueId> = match self.nodes[j].inputs.as_slice() {
                [v] if *v >= 1 && fused[*v - 1] => self.nodes[*v - 1].inputs.clone(),
                other => other.to_vec(),
            };
            let need_in = reads.iter().any(|&v| needs[v]);
            let has_params = !self.nodes[j].layer.params_mut().is_empty();
            if !need_in && !has_params {
                continue;
            }
            let (upto, after) = self.nodes.split_at_mut(j + 1);
            // `after` holds the nodes whose buffers can hold this node's output gradient.
            let g = match &g_val {
                Val::Given => grad_logits,
                Val::Node(k) => after
                    .get(k.wrapping_sub(j + 1))
                    .map(|nd| nd.layer.input_grad_buffer())
                    .ok_or_else(|| internal("gradient buffer"))?,
                Val::Owned(t) => t,
                Val::Empty => continue,
            };
            let layer = &mut upto[j].layer;
            let t0 = super::profile::now();
            if reads.len() == 1 {
                let out = layer.backward_buffered(g, need_in)?;
                super::profile::record(t0, j, true);
                if need_in {
                    let contribution = out.map_or(Val::Node(j), Val::Owned);
                    accumulate(&mut grads, reads[0], contribution, &self.nodes)?;
                }
            } else if layer.gradient_passes_through(g)? {
                super::profile::record(t0, j, true);
                // Every input's gradient is this one: a reference to the same buffer (copied only if owned).
                let targets: Vec<ValueId> = reads.iter().copied().filter(|&v| needs[v]).collect();
                let mut g_val = Some(g_val);
                for (i, &v) in targets.iter().enumerate() {
                    let contribution = if i + 1 == targets.len() {
                        g_val.take().unwrap_or(Val::Empty)
                    } else {
                        match &g_val {
                            Some(Val::Owned(t)) => Val::Owned(t.clone()),
                            Some(Val::Node(k)) => Val::Node(*k),
                            Some(Val::Given) => Val::Given,
                            _ => Val::Empty,
                        }
                    };
                    accumulate(&mut grads, v, contribution, &self.nodes)?;
                }
            } else {
                let parts = layer.backward_multi(g)?;
                super::profile::record(t0, j, true);
                if parts.len() != reads.len() {
                    return Err(internal(
                        "a layer returned the wrong number of input gradients",
                    ));
                }
                for (&v, t) in reads.iter().zip(parts) {
                    if needs[v] {
                        accumulate(&mut grads, v, Val::Owned(t), &self.nodes)?;
                    }
                }
            }
        }
        if !input_grad {
            return Ok(Tensor::default());
        }
        match std::mem::replace(&mut grads[0], Val::Empty) {
            Val::Owned(t) => Ok(t),
            Val::Empty => Ok(Tensor::default()),
            v => Ok(resolve(&v, grad_logits, &self.nodes, true)?.clone()),
        }
    }

    /// Arg-max class per sample (inference mode; ties go to the lowest index).
    pub fn predict(&mut self, x: &Tensor) -> Result<Vec<usize>> {
        let logits = self.forward(x, false)?;
        Ok(super::argmax_rows(&logits))
    }

    /// All trainable parameters with their gradients, in the optimizer's visit order.
    pub fn params_mut(&mut self) -> Vec<Param<'_>> {
        self.nodes
            .iter_mut()
            .flat_map(|n| n.layer.params_mut())
            .collect()
    }

    /// Total number of trainable scalars.
    pub fn param_count(&self) -> usize {
        self.nodes.iter().map(|n| n.layer.param_count()).sum()
    }

    /// A copy of every parameter tensor, in visit order (see [`Model::restore`]).
    pub fn snapshot(&mut self) -> Vec<Vec<f32>> {
        self.params_mut().iter().map(|p| p.value.to_vec()).collect()
    }

    /// Writes back a [`Model::snapshot`] of this model.
    pub fn restore(&mut self, snapshot: &[Vec<f32>]) -> Result<()> {
        let mut params = self.params_mut();
        if params.len() != snapshot.len()
            || params
                .iter()
                .zip(snapshot)
                .any(|(p, s)| p.value.len() != s.len())
        {
            return Err(Error::Shape(
                "snapshot does not match the model's parameters".into(),
            ));
        }
        for (p, s) in params.iter_mut().zip(snapshot) {
            p.value.copy_from_slice(s);
        }
        Ok(())
    }
}

impl Stateful for Model {
    /// Every node's state, node `n` of kind `k` under `nodes.{n}.{k}` (e.g. `nodes.layers.0.dense.weight`). The
    /// kind in the name makes a checkpoint of another architecture fail by name rather than by length.
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        v.scope("nodes", |v| {
            for node in &mut self.nodes {
                let kind = node.layer.kind();
                let layer = &mut node.layer;
                v.scope(&node.name, |v| v.part(kind, layer))?;
            }
            Ok(())
        })
    }
}

/// Elements per rayon job of a gradient sum.
const SUM_CHUNK: usize = 16 * 1024;

/// Adds one reader's contribution to dL/dvalue `v`: the first contribution is kept where it is (a layer buffer
/// or an owned tensor), a second one turns it into an owned sum.
fn accumulate(grads: &mut [Val], v: ValueId, contribution: Val, nodes: &[Node]) -> Result<()> {
    let slot = grads
        .get_mut(v)
        .ok_or_else(|| internal("gradient of a missing value"))?;
    match std::mem::replace(slot, Val::Empty) {
        Val::Empty => *slot = contribution,
        prev => {
            let empty = Tensor::default();
            let add = resolve(&contribution, &empty, nodes, true)?;
            let differ = || internal("gradients of one value differ in size");
            // `prev + add` either way (so the same bits); a buffer's value is summed into a new tensor in one
            // pass rather than copied first.
            let sum = match prev {
                Val::Owned(mut t) => {
                    if add.data.len() != t.data.len() {
                        return Err(differ());
                    }
                    t.data
                        .par_chunks_mut(SUM_CHUNK)
                        .zip(add.data.par_chunks(SUM_CHUNK))
                        .for_each(|(s, a)| s.iter_mut().zip(a).for_each(|(s, a)| *s += a));
                    t
                }
                other => {
                    let p = resolve(&other, &empty, nodes, true)?;
                    if add.data.len() != p.data.len() {
                        return Err(differ());
                    }
                    let data = p
                        .data
                        .par_iter()
                        .zip(&add.data)
                        .with_min_len(SUM_CHUNK)
                        .map(|(p, a)| p + a)
                        .collect();
                    Tensor::new(data, p.shape.clone())
                }
            };
            *slot = Val::Owned(sum);
        }
    }
    Ok(())
}
