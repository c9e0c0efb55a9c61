//! Post-training quantization: attach quantizers to a trained float model, clip the weights, calibrate the
//! activation ranges on unlabelled samples, freeze.
use super::adaround::{self, AdaRoundOptions, AdaRoundProgress};
use super::calibrate::{mse_weight_clip, Histogram, WeightCalibration};
use super::config::{BnFold, QuantConfig};
use super::prepare::{act_quantizers_mut, bypass_quantizers, freeze_ranges, prepare_qat};
use crate::error::{Error, Result};
use crate::nn::{Layer, Model};
use crate::tensor::Tensor;

/// Post-training quantization: a copy of `model` with quantizers attached (as [`prepare_qat`], which also
/// assigns each layer's calibrators from `cfg`), then calibrated on `calibration` batches (at most
/// `cfg.calibration_samples` samples) and frozen:
///
/// 1. min-max weight quantizers calibrated `mse` get the clipping ratios of
///    [`super::calibrate::mse_weight_clip`] (per channel or per tensor, as the quantizer is);
/// 2. one pass with weights fake-quantized and activations observed unquantized records every activation's
///    running min and max (the `minmax` range);
/// 3. if any activation quantizer has another calibrator, a second pass over the same samples fills one
///    [`Histogram`] per such quantizer over its min-max range, from which the calibrator picks the range;
/// 4. with `cfg.adaround`, AdaRound ([`super::adaround`]) learns the rounding of every min-max or ternary
///    weight layer in node order, with the scales of step 1 and the activation ranges of steps 2-3 (sampling
///    seeded 0; [`ptq_with_progress`] takes the seed);
/// 5. with `cfg.bias_correction`, empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through
///    Weight Equalization and Bias Correction", sec. 4.2, with the expectations measured on the calibration
///    samples): weight layer after weight layer in node order, the bias absorbs the mean difference, per output
///    channel, between the float model's output of that layer and the quantized model's (ranges frozen,
///    earlier layers already corrected), so the correction also covers the shift that rounding and clipping
///    upstream cause.
///
/// Weights are rounded to nearest (or as AdaRound chose) by the quantizers at every forward and at conversion. Batch norms are always
/// folded with their running statistics (`cfg.bn_fold` is a QAT setting).
pub fn ptq(model: &Model, cfg: &QuantConfig, calibration: &[Tensor]) -> Result<Model> {
    ptq_with_progress(model, cfg, calibration, 0, &mut |_| {})
}

/// [`ptq`] with AdaRound's sampling seeded by `seed` and its progress reported to `progress`.
pub fn ptq_with_progress(
    model: &Model,
    cfg: &QuantConfig,
    calibration: &[Tensor],
    seed: u64,
    progress: &mut dyn FnMut(&AdaRoundProgress),
) -> Result<Model> {
    let mut m = model.clone();
    let cfg = &QuantConfig {
        bn_fold: BnFold::Running,
        ..cfg.clone()
    };
    prepare_qat(&mut m, cfg)?;
    clip_weights(&mut m)?;
    let batches = take_samples(calibration, cfg.calibration_samples);
    for q in act_quantizers_mut(&mut m) {
        q.start_calibration();
    }
    for x in &batches {
        m.forward(x, false)?;
    }
    // Histogram points: (node, its input value, histogram over its min-max range).
    let mut points: Vec<(usize, usize, Histogram)> = Vec::new();
    for (k, node) in m.nodes.iter().enumerate() {
        if let Layer::ActQuant(q) = &node.layer {
            if let (Some(c), Some((lo, hi)), [v]) =
                (q.calibrator(), q.range(), node.inputs.as_slice())
            {
                if c.needs_histogram() {
                    points.push((k, *v, Histogram::new(lo, hi)));
                }
            }
        }
    }
    if !points.is_empty() {
        // Quantizers still calibrating pass values through, so every value is the float activation.
        for x in &batches {
            let values = m.forward_all(x, false)?;
            for (_, v, h) in &mut points {
                if let Some(t) = values.get(*v) {
                    h.add(&t.data);
                }
            }
        }
    }
    freeze_ranges(&mut m);
    for (k, _, h) in &points {
        if let Layer::ActQuant(q) = &mut m.nodes[*k].layer {
            let (lo, hi) = q.calibrator().unwrap_or_default().range(h, q.bits());
            q.set_range(lo, hi)?;
        }
    }
    if m.layers()
        .any(|l| matches!(l, Layer::ActQuant(q) if q.range().is_none()))
    {
        return Err(Error::MissingData(
            "PTQ calibration saw no samples (empty or non-finite calibration data)".into(),
        ));
    }
    if cfg.adaround {
        let opts = AdaRoundOptions {
            iters: cfg.adaround_iters,
            seconds: cfg.adaround_seconds,
            seed,
        };
        adaround::adaround(&mut m, &batches, &opts, progress)?;
    }
    if cfg.bias_correction {
        correct_biases(&mut m, &batches)?;
    }
    Ok(m)
}

/// Step 5 of [`ptq`]: see there.
fn correct_biases(m: &mut Model, batches: &[Tensor]) -> Result<()> {
    let layers: Vec<(usize, usize)> = m
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(j, n)| match &n.layer {
            Layer::Dense(d) => Some((j, d.out_features)),
            Layer::Conv2d(c) => Some((j, c.out_channels)),
            _ => None,
        })
        .collect();
    let mut float = m.clone();
    bypass_quantizers(&mut float);
    // The float model's channel means of every weight layer's output, from one pass.
    let mut float_means: Vec<Vec<f64>> = layers.iter().map(|&(_, c)| vec![0.0; c]).collect();
    let mut counts = vec![0usize; layers.len()];
    for x in batches {
        let values = float.forward_all(x, false)?;
        for (((j, _), sums), n) in layers.iter().zip(&mut float_means).zip(&mut counts) {
            *n += add_channel_sums(&values[j + 1], sums);
        }
    }
    for ((&(j, channels), f), &n) in layers.iter().zip(&float_means).zip(&counts) {
        let mut sums = vec![0.0; channels];
        for x in batches {
            let values = m.forward_all(x, false)?;
            add_channel_sums(&values[j + 1], &mut sums);
        }
        let bias = match &mut m.nodes[j].layer {
            Layer::Dense(d) => &mut d.bias,
            Layer::Conv2d(c) => &mut c.bias,
            _ => continue,
        };
        let per = n.max(1) as f64;
        for ((b, &fs), &qs) in bias.iter_mut().zip(f).zip(&sums) {
            *b += ((fs - qs) / per) as f32;
        }
    }
    Ok(())
}

/// Adds each channel's sum of `t` (`[N, C, ...]`, channel = dimension 1) into `sums`; returns the values per
/// channel added (samples times positions).
fn add_channel_sums(t: &Tensor, sums: &mut [f64]) -> usize {
    let c = sums.len();
    let rows = t.rows();
    if c == 0 || rows == 0 || !t.len().is_multiple_of(rows * c) {
        return 0;
    }
    let positions = t.len() / (rows * c);
    for (i, chunk) in t.data.chunks(positions).enumerate() {
        sums[i % c] += chunk.iter().map(|&v| f64::from(v)).sum::<f64>();
    }
    rows * positions
}

/// The first `limit` samples of `batches` (the last batch cut short if needed).
fn take_samples(batches: &[Tensor], limit: usize) -> Vec<Tensor> {
    let mut out = Vec::new();
    let mut seen = 0usize;
    for batch in batches {
        if seen >= limit {
            break;
        }
        let take = batch.rows().min(limit - seen);
        out.push(if take == batch.rows() {
            batch.clone()
        } else {
            let mut shape = batch.shape.clone();
            shape[0] = take;
            Tensor::new(batch.data[..take * batch.row_len()].to_vec(), shape)
        });
        seen += take;
    }
    out
}

/// Sets MSE clipping ratios on every weight quantizer calibrated `mse`.
fn clip_weights(model: &mut Model) -> Result<()> {
    for l in model.layers_mut() {
        let (w, rows, cols, wq) = match l {
            Layer::Dense(d) => (
                &d.weight,
                d.out_features,
                d.in_features,
                &mut d.weight_quant,
            ),
            Layer::Conv2d(c) => {
                let k = c.k();
                (&c.weight, c.out_channels, k, &mut c.weight_quant)
            }
            _ => continue,
        };
        if let Some(q) = wq
            .as_mut()
            .filter(|q| q.calibration() == Some(WeightCalibration::Mse))
        {
            let ratios = mse_weight_clip(w, rows, cols, q.bits(), q.per_channel());
            q.set_clip(ratios)?;
        }
    }
    Ok(())
}
