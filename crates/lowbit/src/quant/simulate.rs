//! Integer simulation of a [`QuantModel`]: plain scalar loops written independently of the engine and kernels,
//! so tests can compare the two layer by layer.
use crate::error::{Error, Result};
use lowbit_runtime::model::{OutputStage, QDense, QLayer, QuantModel};
use lowbit_runtime::pack::{PackedWeights, Packing};
use lowbit_runtime::qparams;

/// What [`simulate`] computes.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    /// `codes[i]` is the output of layer `i` (`batch * features` codes, sample-major) for every layer whose
    /// output is codes; the logits layer (the last) has no entry, so `codes.len() == layers.len() - 1`.
    /// Flatten's output equals its input.
    pub codes: Vec<Vec<u8>>,
    /// Accumulators of the last layer, `[batch, classes]`: `bias[c] + sum_k (x[k] - zp_in) * w[c][k]`.
    pub final_acc: Vec<i32>,
    /// Logits `[batch, classes]`: `acc as f32 * (s_in * s_w[c])`, the product of the two scales taken in f32
    /// (the engine's formula).
    pub logits: Vec<f32>,
}

/// Runs `qm` on `batch` samples of raw `u8` input (`batch * input.features()` values). Dense and Flatten only;
/// other layers are an error. Accumulators are computed in i64 and must fit i32 (else an error).
pub fn simulate(qm: &QuantModel, input: &[u8], batch: usize) -> Result<Simulation> {
    let features = qm.input.features();
    if Some(input.len()) != batch.checked_mul(features) {
        return Err(Error::Shape(format!(
            "simulate: {} input codes for batch {batch} x {features} features",
            input.len()
        )));
    }
    let mut cur = input.to_vec();
    let mut width = features;
    let mut codes = Vec::new();
    let n_layers = qm.layers.len();
    for (li, layer) in qm.layers.iter().enumerate() {
        match layer {
            QLayer::Flatten => codes.push(cur.clone()),
            QLayer::Dense(d) => {
                if d.in_features != width {
                    return Err(Error::Shape(format!(
                        "simulate: layer {li} expects {} features, got {width}",
                        d.in_features
                    )));
                }
                let acc = dense_acc(d, &cur, batch, li)?;
                match &d.output {
                    OutputStage::Logits => {
                        if li + 1 != n_layers {
                            return Err(Error::Shape(format!(
                                "simulate: layer {li} emits logits but is not last"
                            )));
                        }
                        let n = d.out_features;
                        let logits = acc
                            .iter()
                            .enumerate()
                            .map(|(i, &a)| {
                                a as f32 * (d.input.scale * scale_of(&d.weight_scales, i % n))
                            })
                            .collect();
                        return Ok(Simulation {
                            codes,
                            final_acc: acc,
                            logits,
                        });
                    }
                    OutputStage::Requantize {
                        qparams: qp,
                        bits,
                        relu,
                        requant,
                    } => {
                        let (lo, hi) = qparams::act_code_range(*bits)?;
                        let qmin = if *relu { lo.max(qp.zero_point) } else { lo };
                        let n = d.out_features;
                        let out = acc
                            .iter()
                            .enumerate()
                            .map(|(i, &a)| {
                                let rq = if requant.len() == 1 {
                                    requant[0]
                                } else {
                                    requant[i % n]
                                };
                                qparams::requantize(a, rq, qp.zero_point, qmin, hi) as u8
                            })
                            .collect::<Vec<u8>>();
                        cur = out;
                        width = n;
                        codes.push(cur.clone());
                    }
                }
            }
            other => {
                return Err(Error::Shape(format!(
                    "simulate: layer {li} ({}) is not supported (Dense and Flatten only)",
                    match other {
                        QLayer::Conv2d(_) => "conv2d",
                        QLayer::MaxPool2d { .. } => "maxpool2d",
                        _ => "avgpool2d",
                    }
                )))
            }
        }
    }
    Err(Error::Shape(
        "simulate: the model does not end in a logits layer".into(),
    ))
}

fn scale_of(scales: &[f32], c: usize) -> f32 {
    if scales.len() == 1 {
        scales[0]
    } else {
        scales.get(c).copied().unwrap_or(f32::NAN)
    }
}

/// `acc[b, c] = bias[c] + sum_k (x[b, k] - zp_in) * w[c][k]`, checked against i32.
fn dense_acc(d: &QDense, x: &[u8], batch: usize, li: usize) -> Result<Vec<i32>> {
    let (k, n) = (d.in_features, d.out_features);
    if d.bias.len() != n || d.weights.rows != n || d.weights.cols != k {
        return Err(Error::Shape(format!(
            "simulate: layer {li} has {} biases and {}x{} weights for {n}x{k}",
            d.bias.len(),
            d.weights.rows,
            d.weights.cols
        )));
    }
    let w = unpack(&d.weights)?;
    let zp = d.input.zero_point as i64;
    let mut acc = Vec::with_capacity(batch * n);
    for xs in x.chunks_exact(k.max(1)).take(batch) {
        for c in 0..n {
            let row = &w[c * k..(c + 1) * k];
            let s: i64 = xs
                .iter()
                .zip(row)
                .map(|(&a, &q)| (a as i64 - zp) * q as i64)
                .sum::<i64>()
                + d.bias[c] as i64;
            acc.push(i32::try_from(s).map_err(|_| {
                Error::Shape(format!(
                    "simulate: layer {li} accumulator {s} overflows i32"
                ))
            })?);
        }
    }
    Ok(acc)
}

/// Decodes all codes, restating pack.rs's documented bit order (not calling its decoder, on purpose).
fn unpack(w: &PackedWeights) -> Result<Vec<i8>> {
    let per = match w.packing {
        Packing::I8 => 1,
        Packing::I4x2 => 2,
        Packing::I2x4 => 4,
        Packing::B1x8 => 8,
    };
    let row_bytes = w.cols.div_ceil(per);
    if w.data.len() != w.rows * row_bytes {
        return Err(Error::Shape(format!(
            "simulate: packed weights hold {} bytes, expected {}",
            w.data.len(),
            w.rows * row_bytes
        )));
    }
    let mut out = Vec::with_capacity(w.rows * w.cols);
    for r in 0..w.rows {
        let row = &w.data[r * row_bytes..(r + 1) * row_bytes];
        for c in 0..w.cols {
            let byte = row[c / per];
            let j = c % per;
            let code = match w.packing {
                Packing::I8 => byte as i8 as i32,
                Packing::I4x2 => {
                    let v = ((byte >> (4 * j)) & 0xF) as i32;
                    if v >= 8 {
                        v - 16
                    } else {
                        v
                    }
                }
                Packing::I2x4 => {
                    let v = ((byte >> (2 * j)) & 0x3) as i32;
                    if v >= 2 {
                        v - 4
                    } else {
                        v
                    }
                }
                Packing::B1x8 => {
                    if (byte >> j) & 1 == 1 {
                        1
                    } else {
                        -1
                    }
                }
            };
            out.push(code as i8);
        }
    }
    Ok(out)
}
