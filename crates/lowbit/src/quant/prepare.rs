//! Wiring quantizers into a float model: QAT preparation and PTQ calibration.
use super::act::ActQuantizer;
use super::config::{QuantConfig, WeightQuantKind};
use super::weight::WeightQuantizer;
use crate::error::{Error, Result};
use crate::nn::{Layer, Model};
use crate::tensor::Tensor;

/// Attaches quantizers to a float model for QAT (from scratch or fine-tuning: the float weights are kept as the
/// shadow weights the optimizer updates).
///
/// - Every `Dense` gets a [`WeightQuantizer`] from `cfg` (with `keep_first_last_8bit`, the first and last Dense
///   get 8-bit min-max weights instead).
/// - A fixed input quantizer ([`ActQuantizer::input`], scale exactly 1/255) becomes the first layer.
/// - An EMA-tracked [`ActQuantizer`] of `cfg.act_bits` follows every hidden activation: after each ReLU, or
///   after a Dense not followed by a ReLU, whenever another Dense comes later. The last Dense produces float
///   logits and is not followed by a quantizer. With `keep_first_last_8bit`, the quantizers on the first
///   Dense's output and on the last Dense's input are 8-bit.
///
/// Fails if the model already holds activation quantizers.
pub fn prepare_qat(model: &mut Model, cfg: &QuantConfig) -> Result<()> {
    cfg.validate()?;
    if model.layers.iter().any(|l| matches!(l, Layer::ActQuant(_))) {
        return Err(Error::option(
            "--method",
            "the model already has activation quantizers (prepared twice?)",
        ));
    }
    let dense_positions: Vec<usize> = model
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(l, Layer::Dense(_)))
        .map(|(i, _)| i)
        .collect();
    let (Some(&first_dense), Some(&last_dense)) = (dense_positions.first(), dense_positions.last())
    else {
        return Err(Error::Shape(format!(
            "model {} has no Dense layer to quantize",
            model.spec
        )));
    };
    let keep8 = |pos: usize| cfg.keep_first_last_8bit && (pos == first_dense || pos == last_dense);
    let old = std::mem::take(&mut model.layers);
    let n = old.len();
    let mut layers = Vec::with_capacity(n * 2 + 1);
    layers.push(Layer::ActQuant(ActQuantizer::input()));
    let next_is_relu: Vec<bool> = (0..n)
        .map(|i| matches!(old.get(i + 1), Some(Layer::Relu(_))))
        .collect();
    for (i, mut layer) in old.into_iter().enumerate() {
        let is_activation_point = match &mut layer {
            Layer::Dense(d) => {
                d.weight_quant = Some(if keep8(i) {
                    WeightQuantizer::new(WeightQuantKind::MinMax, 8, cfg.per_channel)?
                } else {
                    WeightQuantizer::from_config(cfg)?
                });
                !next_is_relu[i]
            }
            Layer::Relu(_) => true,
            Layer::ActQuant(_) | Layer::Flatten(_) => false,
        };
        layers.push(layer);
        if is_activation_point && i < last_dense {
            // The producing Dense of this activation: the nearest Dense at or before i.
            let producer = dense_positions.iter().rev().find(|&&p| p <= i).copied();
            let next_consumer = dense_positions.iter().find(|&&p| p > i).copied();
            let eight = cfg.keep_first_last_8bit
                && (producer == Some(first_dense) || next_consumer == Some(last_dense));
            let bits = if eight { 8 } else { cfg.act_bits };
            layers.push(Layer::ActQuant(ActQuantizer::new(bits, cfg.ema_momentum)?));
        }
    }
    model.layers = layers;
    Ok(())
}

/// Post-training quantization: a copy of `model` with quantizers attached (as [`prepare_qat`]), activation
/// ranges calibrated as the running min/max over `calibration` batches (at most `cfg.calibration_samples`
/// samples; weights fake-quantized, activations observed unquantized), then frozen. Weights are rounded to
/// nearest by the quantizers at every forward and at conversion.
pub fn ptq(model: &Model, cfg: &QuantConfig, calibration: &[Tensor]) -> Result<Model> {
    let mut m = model.clone();
    prepare_qat(&mut m, cfg)?;
    for l in &mut m.layers {
        if let Layer::ActQuant(q) = l {
            q.start_calibration();
        }
    }
    let mut seen = 0usize;
    for batch in calibration {
        if seen >= cfg.calibration_samples {
            break;
        }
        let take = batch.rows().min(cfg.calibration_samples - seen);
        let x = if take == batch.rows() {
            batch.clone()
        } else {
            let mut shape = batch.shape.clone();
            shape[0] = take;
            Tensor::new(batch.data[..take * batch.row_len()].to_vec(), shape)
        };
        m.forward(&x, false)?;
        seen += take;
    }
    freeze_ranges(&mut m);
    for l in &m.layers {
        if let Layer::ActQuant(q) = l {
            if q.range().is_none() {
                return Err(Error::MissingData(
                    "PTQ calibration saw no samples (empty or non-finite calibration data)".into(),
                ));
            }
        }
    }
    Ok(m)
}

/// Freezes every activation range (end of QAT or calibration); eval-mode forwards never update ranges anyway.
pub fn freeze_ranges(model: &mut Model) {
    for l in &mut model.layers {
        if let Layer::ActQuant(q) = l {
            q.freeze();
        }
    }
}

/// Lets activation ranges track an EMA again (QAT fine-tuning of a PTQ-calibrated model).
pub fn unfreeze_ranges(model: &mut Model) {
    for l in &mut model.layers {
        if let Layer::ActQuant(q) = l {
            q.unfreeze();
        }
    }
}
