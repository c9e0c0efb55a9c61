//! Planning a checked graph into steps: the passes run once when an [`super::Engine`] is built.
//!
//! 1. Aliases: an op whose output is its input's bytes (Flatten) gets no step; its consumers read the input.
//! 2. Fusion: a requantizing Conv2d whose only consumer is a 2 x 2, stride-2 max pool runs as one fused step
//!    (see [`crate::ops`]'s conv module for why the codes are the same); so does one whose only consumer is a
//!    residual Add (the Add reads the convolution's codes as they are produced, and its other input as usual).
//! 3. Buffers by liveness: each materialised value takes a free buffer slot when its step runs and returns it
//!    after the last step that reads it, so a chain needs two slots and a residual block three.
//!
//! A traced plan (for layer-by-layer comparisons) skips 1 and 2, so every node's codes exist.
use crate::error::QuantError;
use crate::graph::GraphInfo;
use crate::kernels::Isa;
use crate::model::{QOp, QuantModel};
use crate::ops::{internal, PlanCx, Step, ValueQuant};

/// Where a step reads a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Src {
    /// The caller's input batch.
    Input,
    /// A buffer slot.
    Slot(usize),
}

/// Where a step writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dst {
    /// Codes into a buffer slot.
    Slot(usize),
    /// The output node's accumulators.
    Logits,
}

/// One step of a plan.
#[derive(Debug)]
pub(crate) struct Planned {
    pub step: Box<dyn Step>,
    /// The node names the step computes (`conv1 + pool1` when fused), for profiles.
    pub name: String,
    /// Multiply-accumulates per sample of those nodes.
    pub macs: usize,
    pub inputs: Vec<Src>,
    pub output: Dst,
    /// Elements per sample of the produced value.
    pub out_elems: usize,
}

/// The steps of a graph and the number of buffer slots they use.
#[derive(Debug)]
pub(crate) struct Plan {
    pub steps: Vec<Planned>,
    pub slots: usize,
}

/// Plans `model` (already checked into `info`) for kernel tier `isa`; `traced` keeps every node's output;
/// `winograd` lets eligible 3x3 convolutions run as Winograd F(2x2, 3x3) (the same codes).
pub(crate) fn plan(
    model: &QuantModel,
    info: &GraphInfo,
    isa: Isa,
    traced: bool,
    winograd: bool,
) -> Result<Plan, QuantError> {
    let n = model.nodes.len();
    // Pass 1: the value each value's bytes really live in.
    let mut home: Vec<usize> = (0..=n).collect();
    // Pass 2: nodes that run inside their consumer's step (conv -> pool), and the node they are fused into.
    let mut fused_from: Vec<Option<usize>> = vec![None; n];
    let mut skipped = vec![false; n];
    if !traced {
        for (i, node) in model.nodes.iter().enumerate() {
            if node.op.def().is_alias() {
                home[i + 1] = home[node.inputs[0]];
                skipped[i] = true;
            }
        }
        for (i, node) in model.nodes.iter().enumerate() {
            let QOp::Conv2d(conv) = &node.op else {
                continue;
            };
            if conv.groups != 1 {
                continue;
            }
            if !matches!(info.values[i + 1].quant, ValueQuant::Codes { .. }) {
                continue;
            }
            let [j] = info.consumers[i + 1].as_slice() else {
                continue;
            };
            let fuses = match &model.nodes[*j].op {
                QOp::MaxPool2d(p) => p.kernel == (2, 2) && p.stride == (2, 2),
                // The other input must be another value (an Add of the convolution with itself reads it twice).
                QOp::Add(_) => {
                    model.nodes[*j]
                        .inputs
                        .iter()
                        .filter(|&&v| v == i + 1)
                        .count()
                        == 1
                }
                _ => false,
            };
            // One convolution per consumer: an Add of two convolutions (ResNet's option-B shortcut) fuses the first
            // and reads the other's codes.
            if fuses && *j != n - 1 && fused_from[*j].is_none() {
                skipped[i] = true;
                fused_from[*j] = Some(i);
            }
        }
    }
    // What a step reads: its node's inputs, or for a fused pair the convolution's inputs and then (for an Add)
    // the Add's other input.
    let reads_of = |j: usize| -> Vec<usize> {
        match fused_from[j] {
            Some(i) => {
                let mut r = model.nodes[i].inputs.clone();
                r.extend(model.nodes[j].inputs.iter().filter(|&&v| v != i + 1));
                r
            }
            None => model.nodes[j].inputs.clone(),
        }
    };
    // The node reading each home value last (values read through an alias count for their home).
    let mut last_read = vec![None; n + 1];
    for j in (0..n).filter(|&j| !skipped[j]) {
        for v in reads_of(j) {
            last_read[home[v]] = Some(j);
        }
    }
    // Pass 3: steps and slots.
    let mut slot_of: Vec<Option<usize>> = vec![None; n + 1];
    let mut free: Vec<usize> = Vec::new();
    let mut slots = 0usize;
    let mut steps = Vec::new();
    for (j, node) in model.nodes.iter().enumerate() {
        if skipped[j] {
            continue;
        }
        let reader = fused_from[j].unwrap_or(j);
        let reads = reads_of(j);
        let src = |v: usize| -> Result<Src, QuantError> {
            let h = home[v];
            if h == 0 {
                return Ok(Src::Input);
            }
            slot_of[h]
                .map(Src::Slot)
                .ok_or_else(|| internal("a value is read before it is written"))
        };
        let inputs = reads
            .iter()
            .map(|&v| src(v))
            .collect::<Result<Vec<_>, _>>()?;
        let in_infos: Vec<_> = reads.iter().map(|&v| info.values[v]).collect();
        let output = if j == n - 1 {
            Dst::Logits
        } else {
            let s = free.pop().unwrap_or_else(|| {
                slots += 1;
                slots - 1
            });
            slot_of[j + 1] = Some(s);
            Dst::Slot(s)
        };
        let reader_node = &model.nodes[reader];
        let cx = PlanCx {
            name: &reader_node.name,
            inputs: &in_infos,
            output: info.values[reader + 1],
            isa,
            winograd,
        };
        let step = match (fused_from[j], &reader_node.op, &node.op) {
            (Some(_), QOp::Conv2d(c), QOp::MaxPool2d(_)) => {
                c.plan_fused_max_pool(&cx, info.values[j + 1].shape)?
            }
            (Some(i), QOp::Conv2d(c), QOp::Add(a)) => {
                c.plan_fused_add(&cx, a, &node.name, node.inputs[0] == i + 1)?
            }
            (Some(_), _, _) => return Err(internal("only conv + pool and conv + add fuse")),
            (None, op, _) => op.def().plan(&cx)?,
        };
        let out_elems = info.values[j + 1]
            .shape
            .elems()
            .ok_or_else(|| internal("output size"))?;
        let (name, macs) = match fused_from[j] {
            Some(i) => (
                format!("{} + {}", model.nodes[i].name, node.name),
                info.node_macs[i] + info.node_macs[j],
            ),
            None => (node.name.clone(), info.node_macs[j]),
        };
        steps.push(Planned {
            step,
            name,
            macs,
            inputs,
            output,
            out_elems,
        });
        // Release what this step read last (after the output took its slot, so it never overwrites an input).
        for &v in &reads {
            let h = home[v];
            if h != 0 && last_read[h] == Some(j) {
                if let Some(s) = slot_of[h].take() {
                    if !free.contains(&s) {
                        free.push(s);
                    }
                }
            }
        }
    }
    Ok(Plan { steps, slots })
}
