//! Wiring quantizers into a float graph: QAT preparation (which PTQ starts from, see [`super::ptq()`]) and
//! batch-norm folding.
//!
//! Where quantizers go follows from what the integer engine computes, not from positions in a list: every op that
//! produces a new real value from codes (Dense, Conv2d, average pooling) yields accumulators that must be
//! requantized to codes before anything else reads them, after the ReLU / clip that the output stage can absorb
//! as a clamp. So an activation quantizer is inserted on the value at the end of each such op's clamp chain,
//! unless that value is the graph's output (the logits). Ops that move codes without changing what they mean
//! (max pooling, flatten, dropout) need none.
use super::act::ActQuantizer;
use super::config::{BnFold, QuantConfig, WeightQuantKind};
use super::convbn::ConvBn2d;
use super::weight::WeightQuantizer;
use crate::error::{Error, Result};
use crate::nn::layer::QuantRole;
use crate::nn::{Layer, Model, ValueId};

/// Whether a layer holds weights that the engine multiplies (Dense, Conv2d, and a conv with a merged batch norm).
pub(crate) fn is_weight_layer(l: &Layer) -> bool {
    l.quant_role() == QuantRole::Weighted
}

/// Whether a layer produces a new real value from codes, which the engine requantizes (see the module doc).
pub(crate) fn requantizes(l: &Layer) -> bool {
    matches!(
        l.quant_role(),
        QuantRole::Weighted | QuantRole::Requantizing | QuantRole::Elementwise
    )
}

/// Whether a requantizing op's output stage absorbs this layer as a clamp: a ReLU, or a clip from 0 (ReLU6).
fn absorbed(l: &Layer) -> bool {
    match l {
        Layer::Clip(c) => c.min == 0.0,
        other => other.quant_role() == QuantRole::Clamp,
    }
}

/// Whether a layer moves codes without changing their quantization.
fn code_transparent(l: &Layer) -> bool {
    l.quant_role() == QuantRole::Transparent
}

/// The value at the end of node `j`'s clamp chain: its output, followed through single-reader ReLUs.
pub(crate) fn clamp_chain_end(model: &Model, consumers: &[Vec<usize>], j: usize) -> ValueId {
    let mut v = j + 1;
    while let [k] = consumers[v].as_slice() {
        if !absorbed(&model.nodes[*k].layer) {
            break;
        }
        v = k + 1;
    }
    v
}

/// Attaches quantizers to a float model for QAT (from scratch or fine-tuning: the float weights are kept as the
/// shadow weights the optimizer updates).
///
/// - Every `BatchNorm2d` reading a `Conv2d` of as many channels that nothing else reads is folded, as
///   `cfg.bn_fold` says:
///   - [`BnFold::BatchStats`] (the default): the pair becomes one [`ConvBn2d`] ([`merge_conv_batchnorms`]),
///     which quantizes the weights folded with the running variance but normalises with batch statistics while
///     training (Jacob et al. 2018, sec. 3.2), optionally freezing them after some steps; in inference and at
///     conversion it is exactly the folded convolution.
///   - [`BnFold::Running`]: folded into the conv with its running statistics ([`fold_batchnorms`]) and
///     removed; QAT then trains the plain folded convolution (Krishnamoorthi 2018, sec. 3.2, with the freeze
///     happening at preparation).
///
///   A batch norm anywhere else is an error.
/// - Every `Dense`, `Conv2d` and `ConvBn2d` gets a [`WeightQuantizer`] from `cfg` (rows = output channels; with
///   `keep_first_last_8bit`, the first and last of them in node order get 8-bit min-max weights instead).
/// - A fixed input quantizer ([`ActQuantizer::input`], scale exactly 1/255; or
///   [`ActQuantizer::normalized_input`] for a model with input normalisation) reads the model input.
/// - An EMA-tracked [`ActQuantizer`] of `cfg.act_bits` goes on the value at the end of every requantizing op's
///   clamp chain (see the module doc) except the output; on a value that can be negative it is marked signed
///   ([`ActQuantizer::set_signed`]). With `keep_first_last_8bit`, the quantizers on the
///   first weight layer's output and on the last one's input (through code-transparent ops and average pools)
///   are 8-bit. With `cfg.add_bits`, the quantizers on values read only by `Add`s get that width.
///
/// Fails if the model already holds activation quantizers, or if `cfg.add_bits` is set on a model with no value
/// read only by `Add`s (nothing for it to set).
pub fn prepare_qat(model: &mut Model, cfg: &QuantConfig) -> Result<()> {
    cfg.validate()?;
    if model.layers().any(|l| matches!(l, Layer::ActQuant(_))) {
        return Err(Error::option(
            "--method",
            "the model already has activation quantizers (prepared twice?)",
        ));
    }
    model.check_structure()?;
    match cfg.bn_fold {
        BnFold::Running => fold_batchnorms(model)?,
        BnFold::BatchStats { freeze_after_steps } => {
            merge_conv_batchnorms(model, freeze_after_steps)?
        }
    }
    let weights: Vec<usize> = (0..model.nodes.len())
        .filter(|&j| is_weight_layer(&model.nodes[j].layer))
        .collect();
    let (Some(&first_w), Some(&last_w)) = (weights.first(), weights.last()) else {
        return Err(Error::Shape(format!(
            "model {} has no Dense or Conv2d layer to quantize",
            model.spec
        )));
    };
    for &j in &weights {
        let wq = if cfg.keep_first_last_8bit && (j == first_w || j == last_w) {
            WeightQuantizer::new(WeightQuantKind::MinMax, 8, cfg.per_channel)?
        } else {
            WeightQuantizer::from_config(cfg)?
        };
        match &mut model.nodes[j].layer {
            Layer::Dense(d) => d.weight_quant = Some(wq),
            Layer::Conv2d(c) => c.weight_quant = Some(wq),
            Layer::ConvBn2d(c) => c.conv.weight_quant = Some(wq),
            _ => {}
        }
    }
    let n = model.nodes.len();
    let consumers = model.consumers();
    let eight = if cfg.keep_first_last_8bit {
        eight_bit_points(model, &consumers, first_w, last_w)
    } else {
        Vec::new()
    };
    // Activation points by value, named after the node whose clamp chain ends there.
    let mut points: Vec<(ValueId, String, u32)> = Vec::new();
    let mut add_operands = 0usize;
    for j in 0..n {
        if !requantizes(&model.nodes[j].layer) {
            continue;
        }
        let v = clamp_chain_end(model, &consumers, j);
        if v == n {
            continue; // the logits
        }
        let feeds_adds_only = !consumers[v].is_empty()
            && consumers[v]
                .iter()
                .all(|&k| matches!(model.nodes[k].layer, Layer::Add(_)));
        add_operands += usize::from(feeds_adds_only);
        let bits = match cfg.add_bits {
            _ if eight.contains(&v) => 8,
            Some(b) if feeds_adds_only => b,
            _ => cfg.act_bits,
        };
        points.push((v, format!("{}.quant", model.nodes[v - 1].name), bits));
    }
    if cfg.add_bits.is_some() && add_operands == 0 {
        // A width that would set nothing is a mistaken recipe, not a no-op to pass over in silence.
        return Err(Error::option(
            "--add-bits",
            format!(
                "model {} has no activation that only feeds a residual Add, so there is nothing to set",
                model.spec
            ),
        ));
    }
    // Insert from the last value back, so the earlier values keep their ids.
    points.sort_by_key(|p| std::cmp::Reverse(p.0));
    for (v, name, bits) in points {
        model.insert_after(
            v,
            name,
            Layer::ActQuant(ActQuantizer::new(bits, cfg.ema_momentum)?),
        );
    }
    let input_quant = match &model.normalization {
        None => ActQuantizer::input(),
        Some(n) => ActQuantizer::normalized_input(n, model.input_shape[0])?,
    };
    model.insert_after(0, "input.quant", Layer::ActQuant(input_quant));
    super::mixed::configure_quantizers(model, cfg)?;
    mark_signed_points(model);
    Ok(())
}

/// Which values are never negative, by value id: ReLU and ReLU6 outputs, and what pooling, padding, slicing,
/// concatenating or adding only such values gives ([`crate::nn::Op::nonnegative_output`]). The input counts
/// when it is pixels in `[0, 1]` (no normalisation).
pub(crate) fn nonnegative_values(model: &Model) -> Vec<bool> {
    let mut nonneg = vec![false; model.nodes.len() + 1];
    nonneg[0] = model.normalization.is_none();
    for (j, node) in model.nodes.iter().enumerate() {
        let inputs: Vec<bool> = node.inputs.iter().map(|&v| nonneg[v]).collect();
        nonneg[j + 1] = node.layer.op().nonnegative_output(&inputs);
    }
    nonneg
}

/// Tells every hidden activation quantizer whether the value it reads can be negative: a residual branch
/// before its `Add`, a linear bottleneck, a 1x1 shortcut conv. Unsigned learned codes would clip all of its
/// negative half to 0 ([`ActQuantizer::set_signed`]).
fn mark_signed_points(model: &mut Model) {
    let nonneg = nonnegative_values(model);
    for node in &mut model.nodes {
        if let (Layer::ActQuant(q), [v]) = (&mut node.layer, node.inputs.as_slice()) {
            if !q.is_input() {
                q.set_signed(!nonneg[*v]);
            }
        }
    }
}

/// The values whose quantizers `keep_first_last_8bit` makes 8-bit: the first weight layer's output (after its
/// clamp chain, then through code-transparent ops and average pools with their own quantization points) and
/// the last weight layer's input (back through the same ops).
fn eight_bit_points(
    model: &Model,
    consumers: &[Vec<usize>],
    first_w: usize,
    last_w: usize,
) -> Vec<ValueId> {
    let mut out = Vec::new();
    let passes = |l: &Layer| code_transparent(l) || matches!(l, Layer::AvgPool2d(_));
    // Forward from the first weight layer.
    let mut v = clamp_chain_end(model, consumers, first_w);
    loop {
        out.push(v);
        match consumers[v].as_slice() {
            [k] if passes(&model.nodes[*k].layer) => {
                v = if matches!(model.nodes[*k].layer, Layer::AvgPool2d(_)) {
                    clamp_chain_end(model, consumers, *k)
                } else {
                    k + 1
                };
            }
            _ => break,
        }
    }
    // Backward from the last weight layer's input.
    let mut v = model.nodes[last_w].inputs.first().copied().unwrap_or(0);
    while v > 0 {
        out.push(v);
        let p = &model.nodes[v - 1];
        if passes(&p.layer) || absorbed(&p.layer) {
            v = p.inputs.first().copied().unwrap_or(0);
        } else {
            break;
        }
    }
    out
}

/// The `BatchNorm2d` nodes that fold into the `Conv2d` they read: `(conv, bn)` node pairs. Any other batch norm
/// (after something else, after a conv of another width, or after a conv whose output something else reads too)
/// is an error.
fn conv_batchnorm_pairs(model: &Model) -> Result<Vec<(usize, usize)>> {
    let consumers = model.consumers();
    let mut pairs = Vec::new();
    for (k, node) in model.nodes.iter().enumerate() {
        let Layer::BatchNorm2d(bn) = &node.layer else {
            if node.layer.quant_role() == QuantRole::Folded {
                return Err(Error::Shape(format!(
                    "model {}: node {} ({}) cannot be folded",
                    model.spec,
                    node.name,
                    node.layer.kind()
                )));
            }
            continue;
        };
        let conv = match node.inputs.as_slice() {
            [v] if *v >= 1 => Some(*v - 1),
            _ => None,
        };
        let ok = conv.filter(|&c| {
            matches!(&model.nodes[c].layer, Layer::Conv2d(cv) if cv.out_channels == bn.channels)
                && consumers[c + 1] == [k]
        });
        match ok {
            Some(c) => pairs.push((c, k)),
            None => {
                return Err(Error::Shape(format!(
                    "model {}: node {} (batch norm) must directly follow a Conv2d of as many channels, read by \
                     nothing else, to be folded",
                    model.spec, node.name
                )))
            }
        }
    }
    Ok(pairs)
}

/// Replaces every `Conv2d` + `BatchNorm2d` pair by one [`ConvBn2d`] (batch-statistics folding for QAT, the
/// statistics frozen after `freeze_after_steps` training steps if given). A batch norm that cannot fold is an
/// error, and the model is then left unchanged.
pub fn merge_conv_batchnorms(model: &mut Model, freeze_after_steps: Option<usize>) -> Result<()> {
    let pairs = conv_batchnorm_pairs(model)?;
    for &(c, k) in pairs.iter().rev() {
        let bn_node = model.bypass(k)?;
        let Layer::BatchNorm2d(bn) = bn_node.layer else {
            return Err(Error::Shape("internal: expected a batch norm".into()));
        };
        let conv = std::mem::replace(
            &mut model.nodes[c].layer,
            Layer::Flatten(crate::nn::Flatten::new()),
        );
        let Layer::Conv2d(conv) = conv else {
            return Err(Error::Shape("internal: expected a conv".into()));
        };
        model.nodes[c].layer =
            Layer::ConvBn2d(Box::new(ConvBn2d::new(conv, bn, freeze_after_steps)?));
    }
    Ok(())
}

/// Replaces every [`ConvBn2d`] by the folded `Conv2d` it computes in inference (running statistics, same weight
/// quantizer; see [`ConvBn2d::folded_conv`]): e.g. to hand a batch-statistics QAT model to code that only knows
/// plain convolutions. Conversion does not need it.
pub fn fold_conv_batchnorms(model: &mut Model) -> Result<()> {
    for l in model.layers_mut() {
        if let Layer::ConvBn2d(c) = l {
            *l = Layer::Conv2d(c.folded_conv()?);
        }
    }
    Ok(())
}

/// Folds every `BatchNorm2d` into the `Conv2d` it reads (running statistics, see
/// [`crate::nn::Conv2d::fold_batchnorm`]) and removes it; in inference the model computes the same function.
/// A batch norm that cannot fold is an error (it has nothing to fold into), and the model is then unchanged.
pub fn fold_batchnorms(model: &mut Model) -> Result<()> {
    let pairs = conv_batchnorm_pairs(model)?;
    for &(c, k) in pairs.iter().rev() {
        if let (Layer::Conv2d(conv), Layer::BatchNorm2d(bn)) =
            (&model.nodes[c].layer, &model.nodes[k].layer)
        {
            let mut folded = conv.clone();
            folded.fold_batchnorm(bn)?;
            model.nodes[c].layer = Layer::Conv2d(folded);
        }
        model.bypass(k)?;
    }
    Ok(())
}

/// The activation quantizers of `model`, input quantizer included.
pub(crate) fn act_quantizers_mut(model: &mut Model) -> impl Iterator<Item = &mut ActQuantizer> {
    model.layers_mut().filter_map(|l| match l {
        Layer::ActQuant(q) => Some(q),
        _ => None,
    })
}

/// Freezes every activation range (end of QAT or calibration); eval-mode forwards never update ranges anyway.
pub fn freeze_ranges(model: &mut Model) {
    for q in act_quantizers_mut(model) {
        q.freeze();
    }
}

/// Lets activation ranges track an EMA again (QAT fine-tuning of a PTQ-calibrated model).
pub fn unfreeze_ranges(model: &mut Model) {
    for q in act_quantizers_mut(model) {
        q.unfreeze();
    }
}

/// The weight quantizers of `model`'s Dense, Conv2d and ConvBn2d layers.
fn weight_quantizers_mut(model: &mut Model) -> impl Iterator<Item = &mut WeightQuantizer> {
    model.layers_mut().filter_map(|l| match l {
        Layer::Dense(d) => d.weight_quant.as_mut(),
        Layer::Conv2d(c) => c.weight_quant.as_mut(),
        Layer::ConvBn2d(c) => c.conv.weight_quant.as_mut(),
        _ => None,
    })
}

/// True when `model` holds any weight or activation quantizer (a QAT- or PTQ-prepared model).
pub fn has_quantizers(model: &Model) -> bool {
    model.layers().any(|l| match l {
        Layer::Dense(d) => d.weight_quant.is_some(),
        Layer::Conv2d(c) => c.weight_quant.is_some(),
        Layer::ConvBn2d(c) => c.weight_quant().is_some(),
        Layer::ActQuant(_) => true,
        _ => false,
    })
}

/// Starts a QAT quantization delay (TensorFlow's `quant_delay`): every weight and activation quantizer is
/// bypassed, so training forwards and backwards are those of the float model (the fixed input quantizer too)
/// and learned quantizer parameters receive zero gradients. End it with [`start_quantizing`].
pub fn bypass_quantizers(model: &mut Model) {
    for q in weight_quantizers_mut(model) {
        q.set_bypassed(true);
    }
    for q in act_quantizers_mut(model) {
        q.set_bypassed(true);
    }
}

/// Ends a quantization delay: quantization switches back on with every quantizer reset
/// ([`WeightQuantizer::reset`], [`ActQuantizer::reset`]), so LSQ weight steps are initialized from the weights
/// as they are now, and LSQ activation steps, PACT alphas and EMA ranges from the next training batch: the
/// quantizers start from the trained float model, not from the weights of step 0.
pub fn start_quantizing(model: &mut Model) {
    for q in weight_quantizers_mut(model) {
        q.set_bypassed(false);
        q.reset();
    }
    for q in act_quantizers_mut(model) {
        q.set_bypassed(false);
        q.reset();
    }
}
