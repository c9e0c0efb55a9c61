//! Quantizer choice per layer: learned activation quantizers and mixed-precision overrides, applied to a model
//! that [`super::prepare_qat`] has just equipped.
use super::act::ActQuantizer;
use super::config::{ActMethod, QuantConfig};
use super::prepare::{clamp_chain_end, is_weight_layer};
use super::weight::WeightQuantizer;
use crate::error::{Error, Result};
use crate::nn::{Layer, Model};

/// Applies `cfg.act_quantizer` and the per-layer overrides `cfg.layers` to a prepared model:
///
/// - with a learned activation method (LSQ, PACT), every hidden activation quantizer becomes that method at
///   the bit width preparation chose (the input quantizer stays fixed);
/// - an override's `weight_bits` replaces the weight quantizer of that weight layer (Dense / Conv2d, counted
///   in node order) by the one `cfg` gives at that width; its `act_bits` replaces the activation quantizer on
///   that layer's output (after its clamp chain). Overrides win over `keep_first_last_8bit`.
///
/// Fails, naming `layers[i].layer`, when a selector does not resolve to a weight layer of the model.
pub fn configure_quantizers(model: &mut Model, cfg: &QuantConfig) -> Result<()> {
    let positions: Vec<usize> = model
        .layers()
        .enumerate()
        .filter(|(_, l)| is_weight_layer(l))
        .map(|(i, _)| i)
        .collect();
    let n = positions.len();
    for (i, o) in cfg.layers.iter().enumerate() {
        if o.layer.resolve(n).is_none() {
            return Err(Error::option(
                format!("layers[{i}].layer"),
                format!(
                    "{} is not a weight layer of {} (it has {n}: 0..={}, first, last or -1..=-{n})",
                    o.layer,
                    model.spec,
                    n.saturating_sub(1)
                ),
            ));
        }
    }
    if cfg.act_quantizer != ActMethod::Ste {
        for l in model.layers_mut() {
            if let Layer::ActQuant(q) = l {
                if !q.is_input() {
                    *q = ActQuantizer::from_config(cfg, q.bits())?;
                }
            }
        }
    }
    for (k, &pos) in positions.iter().enumerate() {
        let Some(o) = cfg.layer_override(k, n) else {
            continue;
        };
        if let Some(b) = o.weight_bits {
            let wq = WeightQuantizer::from_config(&cfg.with_weight_bits(b))?;
            match &mut model.nodes[pos].layer {
                Layer::Dense(d) => d.weight_quant = Some(wq),
                Layer::Conv2d(c) => c.weight_quant = Some(wq),
                Layer::ConvBn2d(c) => c.conv.weight_quant = Some(wq),
                _ => {}
            }
        }
        if let Some(b) = o.act_bits {
            let consumers = model.consumers();
            let v = clamp_chain_end(model, &consumers, pos);
            if let Some(&[q]) = consumers.get(v).map(Vec::as_slice) {
                if let Layer::ActQuant(a) = &mut model.nodes[q].layer {
                    if !a.is_input() {
                        *a = ActQuantizer::from_config(cfg, b)?;
                    }
                }
            }
        }
    }
    Ok(())
}
