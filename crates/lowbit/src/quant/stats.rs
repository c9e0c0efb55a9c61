//! Per-layer quantization diagnostics for reports.
use crate::error::Result;
use crate::nn::{Layer, Model};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// How much each Dense layer loses to quantization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerQuantStats {
    /// Layer name, e.g. `dense1 (784->64)`.
    pub layer: String,
    /// Stored weight bit width.
    pub weight_bits: u32,
    /// Bit width of this layer's output activations (`None` for the logits layer).
    pub act_bits: Option<u32>,
    /// `10 log10(sum w^2 / sum (w - w_q)^2)` over the layer's weights (infinite, serialized as null, if exact).
    pub weight_sqnr_db: f64,
    /// SQNR of this layer's output in the quantized model against the float model (same shadow weights, no
    /// quantizers) on the given batches: accumulated error of everything up to and including this layer.
    pub act_sqnr_db: f64,
    /// Fraction of weights clipped to the code range.
    pub weight_clipped_fraction: f64,
    /// Fraction of output activations clipped by this layer's activation quantizer on the given batches.
    pub act_clipped_fraction: f64,
}

/// `10 log10(signal energy / noise energy)`; infinite when the noise is zero, NaN when both are.
pub fn sqnr_db(signal_energy: f64, noise_energy: f64) -> f64 {
    10.0 * (signal_energy / noise_energy).log10()
}

/// Per-layer output of one forward: the output of each Dense after its ReLU and activation quantizer, and the
/// number of elements that quantizer clipped.
fn dense_outputs(model: &mut Model, x: &Tensor) -> Result<(Vec<Tensor>, Vec<f64>)> {
    let mut outputs: Vec<Tensor> = Vec::new();
    let mut clipped: Vec<f64> = Vec::new();
    let mut h = x.clone();
    for layer in &mut model.layers {
        h = layer.forward(&h, false)?;
        match layer {
            Layer::Dense(_) => {
                outputs.push(h.clone());
                clipped.push(0.0);
            }
            Layer::Relu(_) => {
                if let Some(o) = outputs.last_mut() {
                    *o = h.clone();
                }
            }
            Layer::ActQuant(q) if !q.is_input() => {
                if let (Some(o), Some(c)) = (outputs.last_mut(), clipped.last_mut()) {
                    *o = h.clone();
                    *c = q.clipped_fraction() as f64 * h.len() as f64;
                }
            }
            _ => {}
        }
    }
    Ok((outputs, clipped))
}

/// A copy of a prepared model with every quantizer removed: the float reference.
fn float_reference(model: &Model) -> Model {
    let mut m = model.clone();
    m.layers.retain(|l| !matches!(l, Layer::ActQuant(_)));
    for l in &mut m.layers {
        match l {
            Layer::Dense(d) => d.weight_quant = None,
            Layer::Conv2d(c) => c.weight_quant = None,
            Layer::ConvBn2d(c) => c.conv.weight_quant = None,
            _ => {}
        }
    }
    m
}

/// Diagnostics of every Dense layer of a prepared model on `batches` (e.g. test data).
pub fn layer_quant_stats(model: &Model, batches: &[Tensor]) -> Result<Vec<LayerQuantStats>> {
    let mut quant = model.clone();
    let mut float = float_reference(model);
    let mut stats = Vec::new();
    let mut layers = model.layers.iter().peekable();
    let mut dense_index = 0;
    while let Some(l) = layers.next() {
        if let Layer::Dense(d) = l {
            dense_index += 1;
            let (bits, w_sqnr, w_clip) = match &d.weight_quant {
                Some(q) => {
                    let wc = q.quantize(&d.weight, d.out_features, d.in_features);
                    let deq = wc.dequantize(d.in_features);
                    let sig: f64 = d.weight.iter().map(|&w| (w as f64).powi(2)).sum();
                    let noise: f64 = d
                        .weight
                        .iter()
                        .zip(&deq)
                        .map(|(&w, &q)| (w as f64 - q as f64).powi(2))
                        .sum();
                    let clip = wc.clipped as f64 / d.weight.len().max(1) as f64;
                    (wc.bits, sqnr_db(sig, noise), clip)
                }
                None => (32, f64::INFINITY, 0.0),
            };
            // This Dense's output quantizer, if any: after an optional ReLU.
            let mut ab = None;
            let mut look = layers.clone();
            if matches!(look.peek(), Some(Layer::Relu(_))) {
                look.next();
            }
            if let Some(Layer::ActQuant(q)) = look.peek() {
                ab = Some(q.bits());
            }
            stats.push(LayerQuantStats {
                layer: format!("dense{dense_index} ({}->{})", d.in_features, d.out_features),
                weight_bits: bits,
                act_bits: ab,
                weight_sqnr_db: w_sqnr,
                act_sqnr_db: f64::NAN,
                weight_clipped_fraction: w_clip,
                act_clipped_fraction: 0.0,
            });
        }
    }
    let n = stats.len();
    let (mut sig, mut noise, mut clipped, mut elems) =
        (vec![0f64; n], vec![0f64; n], vec![0f64; n], vec![0f64; n]);
    for x in batches {
        let (fo, _) = dense_outputs(&mut float, x)?;
        let (qo, qc) = dense_outputs(&mut quant, x)?;
        for d in 0..n.min(fo.len()).min(qo.len()) {
            for (&a, &b) in fo[d].data.iter().zip(&qo[d].data) {
                sig[d] += (a as f64).powi(2);
                noise[d] += (a as f64 - b as f64).powi(2);
            }
            clipped[d] += qc.get(d).copied().unwrap_or(0.0);
            elems[d] += qo[d].len() as f64;
        }
    }
    for (d, s) in stats.iter_mut().enumerate() {
        s.act_sqnr_db = sqnr_db(sig[d], noise[d]);
        s.act_clipped_fraction = if elems[d] > 0.0 {
            clipped[d] / elems[d]
        } else {
            0.0
        };
    }
    Ok(stats)
}
