//! Per-layer quantization diagnostics for reports: for every node that makes a new requantized value (Dense,
//! Conv2d, a conv with a merged batch norm; residual Add, channel Concat, average pooling, element-wise
//! functions), what its weights lose to quantization and what its output has lost by then.
use super::prepare::{clamp_chain_end, is_weight_layer, requantizes};
use crate::error::Result;
use crate::nn::{Layer, Model};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// How much one requantizing node loses to quantization. JSON writes NaN and infinite figures as null, which
/// reads back as NaN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerQuantStats {
    /// Node name and shape, e.g. `layers.1 dense (784->64)`, `s1.b0.add add`.
    pub layer: String,
    /// Stored weight bit width (`None` for a node without weights; its weight fields are then NaN, null in JSON).
    pub weight_bits: Option<u32>,
    /// Bit width of this node's output activations (`None` for the logits node).
    pub act_bits: Option<u32>,
    /// `10 log10(sum w^2 / sum (w - w_q)^2)` over the node's weights (infinite, serialized as null, if exact).
    #[serde(deserialize_with = "nan_if_null")]
    pub weight_sqnr_db: f64,
    /// SQNR of this node's (quantized) output in the quantized model against the float model (same shadow
    /// weights, every quantizer bypassed) on the given batches: accumulated error of everything up to here.
    #[serde(deserialize_with = "nan_if_null")]
    pub act_sqnr_db: f64,
    /// Fraction of weights clipped to the code range.
    #[serde(deserialize_with = "nan_if_null")]
    pub weight_clipped_fraction: f64,
    /// Fraction of output activations clipped by this node's activation quantizer on the given batches.
    #[serde(deserialize_with = "nan_if_null")]
    pub act_clipped_fraction: f64,
    /// PTQ: how the weight scales were chosen (`minmax`, `mse`), with `+adaround` (or just `adaround` for
    /// ternary weights) when AdaRound chose the rounding; `None` outside PTQ and for weights of rules without a
    /// range (ternary, binary, fixed step) rounded to nearest.
    #[serde(default)]
    pub weight_calibration: Option<String>,
    /// PTQ: how the output activation range was chosen (`minmax`, `percentile:P`, `mse`, `entropy`); `None`
    /// outside PTQ and for the logits node.
    #[serde(default)]
    pub act_calibration: Option<String>,
}

/// A figure JSON wrote as null (NaN or infinite) reads back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// `10 log10(signal energy / noise energy)`; infinite when the noise is zero, NaN when both are.
pub fn sqnr_db(signal_energy: f64, noise_energy: f64) -> f64 {
    10.0 * (signal_energy / noise_energy).log10()
}

/// Weight bits, weight SQNR and clipped fraction of a weight layer's quantizer (`(32, inf, 0)` without one).
fn weight_stats(layer: &Layer) -> Result<(u32, f64, f64, String)> {
    let (w, rows, cols, wq, shape) = match layer {
        Layer::Dense(d) => (
            d.weight.clone(),
            d.out_features,
            d.in_features,
            d.weight_quant.as_ref(),
            format!("dense ({}->{})", d.in_features, d.out_features),
        ),
        Layer::Conv2d(c) => (
            c.weight.clone(),
            c.out_channels,
            c.k(),
            c.weight_quant.as_ref(),
            format!(
                "conv2d ({}->{} {}x{})",
                c.in_channels, c.out_channels, c.kernel.0, c.kernel.1
            ),
        ),
        Layer::ConvBn2d(cb) => {
            let c = cb.folded_conv()?;
            let shape = format!(
                "conv2d+bn ({}->{} {}x{})",
                c.in_channels, c.out_channels, c.kernel.0, c.kernel.1
            );
            let (rows, cols) = (c.out_channels, c.k());
            let wq = cb.weight_quant().cloned();
            return Ok(match wq {
                Some(q) => {
                    let (b, s, cl) = quantizer_stats(&q, &c.weight, rows, cols);
                    (b, s, cl, shape)
                }
                None => (32, f64::INFINITY, 0.0, shape),
            });
        }
        _ => return Ok((32, f64::INFINITY, 0.0, layer.kind().to_string())),
    };
    Ok(match wq {
        Some(q) => {
            let (b, s, cl) = quantizer_stats(q, &w, rows, cols);
            (b, s, cl, shape)
        }
        None => (32, f64::INFINITY, 0.0, shape),
    })
}

fn quantizer_stats(
    q: &super::WeightQuantizer,
    w: &[f32],
    rows: usize,
    cols: usize,
) -> (u32, f64, f64) {
    let wc = q.quantize(w, rows, cols);
    let deq = wc.dequantize(cols);
    let sig: f64 = w.iter().map(|&x| (x as f64).powi(2)).sum();
    let noise: f64 = w
        .iter()
        .zip(&deq)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    (
        wc.bits,
        sqnr_db(sig, noise),
        wc.clipped as f64 / w.len().max(1) as f64,
    )
}

/// Diagnostics of every requantizing node of a prepared model (weight layers and the nodes without weights that
/// make a new value: Add, Concat, average pooling, element-wise functions) on `batches` (e.g. test data), in
/// node order.
pub fn layer_quant_stats(model: &Model, batches: &[Tensor]) -> Result<Vec<LayerQuantStats>> {
    let mut quant = model.clone();
    // The float reference: the same graph with every quantizer bypassed, so values line up node for node.
    let mut float = model.clone();
    super::bypass_quantizers(&mut float);
    let consumers = model.consumers();
    let n = model.nodes.len();
    // Per requantizing node: the value its stats read (its activation quantizer's output, else its clamp
    // chain's end) and that quantizer's node.
    let mut rows = Vec::new();
    for (j, node) in model.nodes.iter().enumerate() {
        if !requantizes(&node.layer) {
            continue;
        }
        let end = clamp_chain_end(model, &consumers, j);
        let aq = match consumers[end].as_slice() {
            [k] if matches!(model.nodes[*k].layer, Layer::ActQuant(_)) => Some(*k),
            _ => None,
        };
        let value = aq.map_or(end, |k| k + 1);
        let (bits, w_sqnr, w_clip, shape) = if is_weight_layer(&node.layer) {
            let (b, s, c, shape) = weight_stats(&node.layer)?;
            (Some(b), s, c, shape)
        } else {
            let what = crate::modelfile::describe_layer(&node.layer);
            (None, f64::NAN, f64::NAN, what)
        };
        let act_bits = aq.and_then(|k| match &model.nodes[k].layer {
            Layer::ActQuant(q) => Some(q.bits()),
            _ => None,
        });
        let act_calibration = aq.and_then(|k| match &model.nodes[k].layer {
            Layer::ActQuant(q) => q.calibrator().map(|c| c.to_string()),
            _ => None,
        });
        let weight_calibration = match &node.layer {
            Layer::Dense(d) => d.weight_quant.as_ref(),
            Layer::Conv2d(c) => c.weight_quant.as_ref(),
            Layer::ConvBn2d(c) => c.weight_quant(),
            _ => None,
        }
        .and_then(|q| {
            let c = q.calibration().map(|c| c.to_string());
            if q.rounding().is_empty() {
                c
            } else {
                Some(c.map_or("adaround".into(), |c| format!("{c}+adaround")))
            }
        });
        rows.push((
            value.min(n),
            aq,
            LayerQuantStats {
                layer: format!("{} {shape}", node.name),
                weight_bits: bits,
                act_bits,
                weight_sqnr_db: w_sqnr,
                act_sqnr_db: f64::NAN,
                weight_clipped_fraction: w_clip,
                act_clipped_fraction: 0.0,
                weight_calibration,
                act_calibration,
            },
        ));
    }
    let k = rows.len();
    let (mut sig, mut noise, mut clipped, mut elems) =
        (vec![0f64; k], vec![0f64; k], vec![0f64; k], vec![0f64; k]);
    for x in batches {
        let fo = float.forward_all(x, false)?;
        let qo = quant.forward_all(x, false)?;
        for (r, (value, aq, _)) in rows.iter().enumerate() {
            let (Some(f), Some(q)) = (fo.get(*value), qo.get(*value)) else {
                continue;
            };
            for (&a, &b) in f.data.iter().zip(&q.data) {
                sig[r] += (a as f64).powi(2);
                noise[r] += (a as f64 - b as f64).powi(2);
            }
            if let Some(Layer::ActQuant(q)) = aq.map(|a| &quant.nodes[a].layer) {
                clipped[r] += q.clipped_fraction() as f64 * f.len() as f64;
            }
            elems[r] += f.len() as f64;
        }
    }
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(r, (_, _, mut s))| {
            s.act_sqnr_db = sqnr_db(sig[r], noise[r]);
            s.act_clipped_fraction = if elems[r] > 0.0 {
                clipped[r] / elems[r]
            } else {
                0.0
            };
            s
        })
        .collect())
}
