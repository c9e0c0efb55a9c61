//! Validation of a quantized graph: the one function ([`check`]) that both the `.lbq` reader and the engine
//! run, so a file that loads is a model that runs.
//!
//! It checks the structure (unique names, inputs that refer to earlier values only, so no cycle and no dangling
//! reference, the arity of every op, no unused node, one output that emits logits) and then every op against
//! the values that reach it, in order (`OpDef::infer` in [`crate::ops`]: shapes, quantization parameters, weights,
//! the i32 accumulator bound), and bounds the memory a run needs.
use crate::error::QuantError;
use crate::model::QuantModel;
use crate::ops::{check_qparams, shape_err, InferCx, Shape, ValueInfo, ValueQuant, MAX_ACT_CODE};
use std::collections::HashSet;

/// What [`check`] found out about a valid graph.
#[derive(Debug, Clone)]
pub struct GraphInfo {
    /// Shape and quantization of every value (`values[0]` is the input, `values[i + 1]` node `i`'s output).
    pub values: Vec<ValueInfo>,
    /// The nodes that read each value, in node order.
    pub consumers: Vec<Vec<usize>>,
    /// Input features per sample.
    pub input_features: usize,
    /// Largest per-sample buffer (a value, or an op's scratch) in elements: bounds the memory an untrusted
    /// model can make a run allocate.
    pub max_sample_elems: usize,
    /// Sum of every value's per-sample elements (the input included, saturating): bounds the activation memory
    /// of a run, which keeps many values alive at once (a traced run keeps them all).
    pub total_sample_elems: usize,
    /// Multiply-accumulates per sample over all nodes.
    pub macs_per_sample: usize,
    /// Multiply-accumulates per sample of each node, in node order.
    pub node_macs: Vec<usize>,
}

/// Validates `model` completely (see the module doc). Errors name the node (or tensor) at fault.
pub fn check(model: &QuantModel) -> Result<GraphInfo, QuantError> {
    let spec = &model.input;
    check_qparams(spec.qparams, "input", MAX_ACT_CODE as i32)?;
    let shape = Shape {
        channels: spec.channels,
        height: spec.height,
        width: spec.width,
    };
    let input_features = shape.elems().filter(|&n| n > 0).ok_or_else(|| {
        shape_err(
            "input",
            format!(
                "{}x{}x{} is empty or overflows",
                spec.channels, spec.height, spec.width
            ),
        )
    })?;
    if model.nodes.is_empty() {
        return Err(shape_err("model", "no nodes".into()));
    }
    if let Some(n) = &model.normalization {
        n.check_channels(spec.channels)?;
    }
    if !model.class_names.is_empty() && model.class_names.len() != model.classes {
        return Err(shape_err(
            "class_names",
            format!(
                "{} names for {} classes",
                model.class_names.len(),
                model.classes
            ),
        ));
    }
    let mut names = HashSet::with_capacity(model.nodes.len());
    let mut values = Vec::with_capacity(model.nodes.len() + 1);
    values.push(ValueInfo {
        shape,
        quant: ValueQuant::Codes {
            qparams: spec.qparams,
            bits: 8,
        },
    });
    let mut consumers = vec![Vec::new(); model.nodes.len() + 1];
    let mut max_sample_elems = input_features;
    let mut total_sample_elems = input_features;
    let mut macs_per_sample = 0usize;
    let mut node_macs = Vec::with_capacity(model.nodes.len());
    let last = model.nodes.len() - 1;
    for (i, node) in model.nodes.iter().enumerate() {
        let name = node.name.as_str();
        if name.is_empty() {
            return Err(shape_err(&format!("nodes[{i}]"), "empty node name".into()));
        }
        if !names.insert(name) {
            return Err(shape_err(name, "duplicate node name".into()));
        }
        let def = node.op.def();
        if !def.arity().accepts(node.inputs.len()) {
            return Err(shape_err(
                name,
                format!(
                    "{} does not take {} inputs",
                    node.op.describe(),
                    node.inputs.len()
                ),
            ));
        }
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for &v in &node.inputs {
            // Only the input and earlier nodes exist when node i runs: anything else is a cycle, an unsorted
            // graph or a dangling reference.
            let info = values.get(v).filter(|_| v <= i).ok_or_else(|| {
                shape_err(
                    name,
                    format!("input value {v} is not the input or an earlier node (a cycle, an unsorted graph or a dangling reference)"),
                )
            })?;
            inputs.push(*info);
            if let Some(c) = consumers.get_mut(v) {
                c.push(i);
            }
        }
        let inferred = def.infer(&InferCx {
            name,
            inputs: &inputs,
            is_output: i == last,
        })?;
        let elems = inferred
            .output
            .shape
            .elems()
            .filter(|&e| e > 0)
            .ok_or_else(|| shape_err(name, "output is empty or overflows".into()))?;
        max_sample_elems = max_sample_elems.max(elems).max(inferred.scratch_elems);
        total_sample_elems = total_sample_elems.saturating_add(elems);
        macs_per_sample = macs_per_sample.saturating_add(inferred.macs);
        node_macs.push(inferred.macs);
        values.push(inferred.output);
    }
    if let Some(unused) = (1..=last).find(|&v| consumers[v].is_empty()) {
        return Err(shape_err(
            &model.nodes[unused - 1].name,
            "its output is never used (only the last node may be unread)".into(),
        ));
    }
    let out = values[last + 1];
    let classes = out.shape.elems().unwrap_or(0);
    if out.quant != ValueQuant::Logits {
        return Err(shape_err(
            &model.nodes[last].name,
            "the last node must emit logits".into(),
        ));
    }
    if classes != model.classes {
        return Err(shape_err(
            "classes",
            format!(
                "model declares {} classes, the last node emits {classes}",
                model.classes
            ),
        ));
    }
    Ok(GraphInfo {
        values,
        consumers,
        input_features,
        max_sample_elems,
        total_sample_elems,
        macs_per_sample,
        node_macs,
    })
}
