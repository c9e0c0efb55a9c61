//! Quantizer choice per layer: learned activation quantizers, mixed-precision overrides and PTQ calibrators,
//! applied to a model that [`super::prepare_qat`] has just equipped.
use super::act::ActQuantizer;
use super::calibrate::WeightCalibration;
use super::config::{ActMethod, Method, QuantConfig, WeightQuantKind};
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
/// - in PTQ, every hidden activation quantizer gets `cfg.calibration` and every min-max weight quantizer
///   `cfg.weight_calibration`, unless an override names another for its layer (`calibration`,
///   `weight_calibration`); [`super::ptq()`] then calibrates each as it says. Weights of other rules
///   (ternary, binary, fixed step) have no range to calibrate and get none.
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
    let ptq = cfg.method == Method::Ptq;
    if ptq {
        for l in model.layers_mut() {
            match l {
                Layer::ActQuant(q) if !q.is_input() => q.set_calibrator(Some(cfg.calibration)),
                _ => {}
            }
        }
    }
    for (k, &pos) in positions.iter().enumerate() {
        let Some(o) = cfg.layer_override(k, n) else {
            if ptq {
                set_weight_calibration(&mut model.nodes[pos].layer, cfg.weight_calibration);
            }
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
        if o.act_bits.is_some() || o.calibration.is_some() {
            let consumers = model.consumers();
            let v = clamp_chain_end(model, &consumers, pos);
            if let Some(&[q]) = consumers.get(v).map(Vec::as_slice) {
                if let Layer::ActQuant(a) = &mut model.nodes[q].layer {
                    if !a.is_input() {
                        if let Some(b) = o.act_bits {
                            *a = ActQuantizer::from_config(cfg, b)?;
                        }
                        if ptq {
                            a.set_calibrator(Some(o.calibration.unwrap_or(cfg.calibration)));
                        }
                    }
                }
            }
        }
        if ptq {
            let wc = o.weight_calibration.unwrap_or(cfg.weight_calibration);
            set_weight_calibration(&mut model.nodes[pos].layer, wc);
        }
    }
    Ok(())
}

/// Records PTQ weight calibration `wc` on a min-max weight quantizer of `layer` (others have no range).
fn set_weight_calibration(layer: &mut Layer, wc: WeightCalibration) {
    let wq = match layer {
        Layer::Dense(d) => d.weight_quant.as_mut(),
        Layer::Conv2d(c) => c.weight_quant.as_mut(),
        Layer::ConvBn2d(c) => c.conv.weight_quant.as_mut(),
        _ => None,
    };
    if let Some(q) = wq.filter(|q| q.kind() == WeightQuantKind::MinMax) {
        q.set_calibration(Some(wc));
    }
}
