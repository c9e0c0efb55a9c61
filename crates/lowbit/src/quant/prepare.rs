//! Wiring quantizers into a float model: QAT preparation and PTQ calibration.
use super::act::ActQuantizer;
use super::config::{BnFold, QuantConfig, WeightQuantKind};
use super::convbn::ConvBn2d;
use super::weight::WeightQuantizer;
use crate::error::{Error, Result};
use crate::nn::{Layer, Model};
use crate::tensor::Tensor;

/// Attaches quantizers to a float model for QAT (from scratch or fine-tuning: the float weights are kept as the
/// shadow weights the optimizer updates).
///
/// - Every `BatchNorm2d` that directly follows a `Conv2d` is folded, as `cfg.bn_fold` says:
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
///   `keep_first_last_8bit`, the first and last of them get 8-bit min-max weights instead).
/// - A fixed input quantizer ([`ActQuantizer::input`], scale exactly 1/255) becomes the first layer.
/// - An EMA-tracked [`ActQuantizer`] of `cfg.act_bits` follows every hidden activation whenever another weight
///   layer comes later: after each ReLU, after a Dense / Conv2d not followed by a ReLU, and after each average
///   pool (the engine requantizes its output). Max pooling and flatten need none: max commutes with the
///   monotonic quantizer, so the engine pools codes with unchanged parameters. The last weight layer produces
///   float logits. With `keep_first_last_8bit`, the quantizers on the first weight layer's output and on the
///   last one's input are 8-bit.
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
    match cfg.bn_fold {
        BnFold::Running => fold_batchnorms(model)?,
        BnFold::BatchStats { freeze_after_steps } => {
            merge_conv_batchnorms(model, freeze_after_steps)?
        }
    }
    let is_weight =
        |l: &Layer| matches!(l, Layer::Dense(_) | Layer::Conv2d(_) | Layer::ConvBn2d(_));
    let weight_positions: Vec<usize> = model
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| is_weight(l))
        .map(|(i, _)| i)
        .collect();
    let (Some(&first_w), Some(&last_w)) = (weight_positions.first(), weight_positions.last())
    else {
        return Err(Error::Shape(format!(
            "model {} has no Dense or Conv2d layer to quantize",
            model.spec
        )));
    };
    let keep8 = |pos: usize| cfg.keep_first_last_8bit && (pos == first_w || pos == last_w);
    let make_wq = |pos: usize| {
        if keep8(pos) {
            WeightQuantizer::new(WeightQuantKind::MinMax, 8, cfg.per_channel)
        } else {
            WeightQuantizer::from_config(cfg)
        }
    };
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
                d.weight_quant = Some(make_wq(i)?);
                !next_is_relu[i]
            }
            Layer::Conv2d(c) => {
                c.weight_quant = Some(make_wq(i)?);
                !next_is_relu[i]
            }
            Layer::ConvBn2d(c) => {
                c.conv.weight_quant = Some(make_wq(i)?);
                !next_is_relu[i]
            }
            Layer::Relu(_) | Layer::AvgPool2d(_) => true,
            Layer::ActQuant(_)
            | Layer::Flatten(_)
            | Layer::MaxPool2d(_)
            | Layer::Dropout(_)
            | Layer::BatchNorm2d(_) => false,
        };
        layers.push(layer);
        if is_activation_point && i < last_w {
            // The producing weight layer of this activation: the nearest one at or before i.
            let producer = weight_positions.iter().rev().find(|&&p| p <= i).copied();
            let next_consumer = weight_positions.iter().find(|&&p| p > i).copied();
            let eight = cfg.keep_first_last_8bit
                && (producer == Some(first_w) || next_consumer == Some(last_w));
            let bits = if eight { 8 } else { cfg.act_bits };
            layers.push(Layer::ActQuant(ActQuantizer::new(bits, cfg.ema_momentum)?));
        }
    }
    model.layers = layers;
    super::mixed::configure_quantizers(model, cfg)
}

/// Checks that every `BatchNorm2d` directly follows a `Conv2d` of as many channels.
fn check_batchnorms_follow_convs(model: &Model) -> Result<()> {
    for (i, l) in model.layers.iter().enumerate() {
        if let Layer::BatchNorm2d(bn) = l {
            let ok = match i.checked_sub(1).and_then(|j| model.layers.get(j)) {
                Some(Layer::Conv2d(c)) => c.out_channels == bn.channels,
                _ => false,
            };
            if !ok {
                return Err(Error::Shape(format!(
                    "model {}: layer {i} (batch norm) must directly follow a Conv2d of as many channels to be folded",
                    model.spec
                )));
            }
        }
    }
    Ok(())
}

/// Replaces every `Conv2d` + `BatchNorm2d` pair by one [`ConvBn2d`] (batch-statistics folding for QAT, the
/// statistics frozen after `freeze_after_steps` training steps if given). A batch norm not directly after a
/// convolution is an error, and the model is then left unchanged.
pub fn merge_conv_batchnorms(model: &mut Model, freeze_after_steps: Option<usize>) -> Result<()> {
    check_batchnorms_follow_convs(model)?;
    let old = std::mem::take(&mut model.layers);
    let mut layers: Vec<Layer> = Vec::with_capacity(old.len());
    for layer in old {
        match (layer, layers.pop()) {
            (Layer::BatchNorm2d(bn), Some(Layer::Conv2d(c))) => {
                layers.push(Layer::ConvBn2d(Box::new(ConvBn2d::new(
                    c,
                    bn,
                    freeze_after_steps,
                )?)));
            }
            (layer, prev) => {
                layers.extend(prev);
                layers.push(layer);
            }
        }
    }
    model.layers = layers;
    Ok(())
}

/// Replaces every [`ConvBn2d`] by the folded `Conv2d` it computes in inference (running statistics, same weight
/// quantizer; see [`ConvBn2d::folded_conv`]): e.g. to hand a batch-statistics QAT model to code that only knows
/// plain convolutions. Conversion does not need it.
pub fn fold_conv_batchnorms(model: &mut Model) -> Result<()> {
    for l in &mut model.layers {
        if let Layer::ConvBn2d(c) = l {
            *l = Layer::Conv2d(c.folded_conv()?);
        }
    }
    Ok(())
}

/// Folds every `BatchNorm2d` into the `Conv2d` right before it (running statistics, see
/// [`crate::nn::Conv2d::fold_batchnorm`]) and removes it; in inference the model computes the same function.
/// A batch norm not directly after a convolution is an error (it has nothing to fold into).
pub fn fold_batchnorms(model: &mut Model) -> Result<()> {
    check_batchnorms_follow_convs(model)?;
    let old = std::mem::take(&mut model.layers);
    let mut layers: Vec<Layer> = Vec::with_capacity(old.len());
    for layer in old {
        match layer {
            Layer::BatchNorm2d(bn) => match layers.last_mut() {
                Some(Layer::Conv2d(c)) => c.fold_batchnorm(&bn)?,
                _ => {
                    return Err(Error::Shape(format!(
                        "model {}: a batch norm must directly follow a Conv2d to be folded",
                        model.spec
                    )))
                }
            },
            other => layers.push(other),
        }
    }
    model.layers = layers;
    Ok(())
}

/// Post-training quantization: a copy of `model` with quantizers attached (as [`prepare_qat`]), activation
/// ranges calibrated as the running min/max over `calibration` batches (at most `cfg.calibration_samples`
/// samples; weights fake-quantized, activations observed unquantized), then frozen. Weights are rounded to
/// nearest by the quantizers at every forward and at conversion. Batch norms are always folded with their
/// running statistics (`cfg.bn_fold` is a QAT setting).
pub fn ptq(model: &Model, cfg: &QuantConfig, calibration: &[Tensor]) -> Result<Model> {
    let mut m = model.clone();
    let cfg = &QuantConfig {
        bn_fold: BnFold::Running,
        ..cfg.clone()
    };
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

/// The weight quantizers of `model`'s Dense, Conv2d and ConvBn2d layers.
fn weight_quantizers_mut(model: &mut Model) -> impl Iterator<Item = &mut WeightQuantizer> {
    model.layers.iter_mut().filter_map(|l| match l {
        Layer::Dense(d) => d.weight_quant.as_mut(),
        Layer::Conv2d(c) => c.weight_quant.as_mut(),
        Layer::ConvBn2d(c) => c.conv.weight_quant.as_mut(),
        _ => None,
    })
}

/// True when `model` holds any weight or activation quantizer (a QAT- or PTQ-prepared model).
pub fn has_quantizers(model: &Model) -> bool {
    model.layers.iter().any(|l| match l {
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
    for l in &mut model.layers {
        if let Layer::ActQuant(q) = l {
            q.set_bypassed(true);
        }
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
    for l in &mut model.layers {
        if let Layer::ActQuant(q) = l {
            q.set_bypassed(false);
            q.reset();
        }
    }
}
