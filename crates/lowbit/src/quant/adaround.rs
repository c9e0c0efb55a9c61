//! AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"): instead of
//! rounding every weight to the nearest grid point, PTQ learns per weight whether to round up or down so that the
//! layer's output on unlabelled calibration samples stays close to the float model's.
//!
//! Per weight layer, in node order, with the scale `s` the PTQ rule chose (min-max, MSE-clipped, per channel or
//! per tensor; at 2 bits ternary's `alpha` on the grid `{-1, 0, 1} * alpha`):
//! - soft weights `W~ = s * clamp(floor(W/s) + h(V), -q, q)` with the rectified sigmoid
//!   `h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)`, `zeta = 1.1`, `gamma = -0.1` (eq. 22-23), `V`
//!   initialised so that `h(V)` is the fractional part of `W/s` (`W~` starts at `W`, unclamped);
//! - loss `(1/P) sum ||W x_f + b - (W~ x_q + b)||^2 + lambda sum_i (1 - |2 h(V_i) - 1|^beta)` (eq. 21, 24-25):
//!   `x_q` is the layer's input in the quantized model (earlier layers already rounded, activations quantized as
//!   deployed: the asymmetric reconstruction of sec. 4.2), the target the float model's output of the layer
//!   (pre-activation), `P` the output positions (samples times spatial positions) of the batch;
//! - Adam on `V`, `beta` annealed linearly from 20 to 2 after a warm-up of 20% of the iterations without the
//!   regulariser; then `up = h(V) >= 0.5` ([`WeightQuantizer::set_rounding`]).
//!
//! The gradient is written here by hand on top of the layer's own backward pass (which gives `dL/dW~`):
//! `dW~/dV = s h'(V)` where `floor(W/s) + h` is inside `[-q, q]` (0 where clamped), with
//! `h'(V) = (zeta - gamma) sigmoid(V) (1 - sigmoid(V))` where the rectifier does not clamp (0 where it does); the
//! regulariser's `d/dh = -2 lambda beta |2h - 1|^(beta - 1) sign(2h - 1)`.
use super::prepare::bypass_quantizers;
use super::weight::{floor_code, WeightQuantizer};
use crate::error::{Error, Result};
use crate::nn::{Layer, Model, Param};
use crate::optim::{Optimizer, OptimizerKind};
use crate::rng::Rng;
use crate::tensor::Tensor;
use std::time::{Duration, Instant};

/// Stretch of the rectified sigmoid's upper end (eq. 23).
pub const ZETA: f32 = 1.1;
/// Stretch of the rectified sigmoid's lower end (eq. 23).
pub const GAMMA: f32 = -0.1;
/// Weight of the rounding regulariser (the paper's lambda, 0.01 as in its experiments).
pub const LAMBDA: f32 = 0.01;
/// Adam's learning rate on `V` (AIMET's AdaRound default; `V` starts within about +-2.3).
pub const LEARNING_RATE: f32 = 0.01;
/// Calibration samples per iteration (drawn with replacement).
pub const BATCH_SAMPLES: usize = 32;
/// Iterations per layer by default (`--adaround-iters`): LeNet-5 takes a few seconds on two cores.
pub const DEFAULT_ITERS: usize = 1000;
const BETA_START: f32 = 20.0;
const BETA_END: f32 = 2.0;
const WARMUP_FRACTION: f64 = 0.2;
/// Iterations timed before a time budget fixes a layer's iteration count.
const PROBE_ITERS: usize = 5;

/// How AdaRound runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaRoundOptions {
    /// Iterations per layer.
    pub iters: usize,
    /// Time budget for all layers in seconds, shared out evenly over the layers still to do; a layer then runs
    /// as many iterations (at most `iters`) as its first few take time for. `None`: always `iters`. A budget
    /// makes the result depend on the machine's speed.
    pub seconds: Option<f64>,
    /// Seed of the calibration-batch sampling.
    pub seed: u64,
}

/// Where AdaRound is, for progress bars.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaRoundProgress {
    /// Index of the layer among the layers AdaRound rounds.
    pub layer: usize,
    /// Number of layers AdaRound rounds.
    pub layers: usize,
    /// The layer's node name.
    pub name: String,
    /// Iterations done in this layer.
    pub iter: usize,
    /// Iterations this layer runs.
    pub iters: usize,
    /// Loss of the last iteration (reconstruction plus regulariser).
    pub loss: f64,
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// `h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)` (eq. 23).
pub fn rectified_sigmoid(v: f32) -> f32 {
    (sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
}

/// The `V` with `h(V) = frac` for `frac` in `[0, 1]`.
pub fn initial_v(frac: f32) -> f32 {
    let p = (frac.clamp(0.0, 1.0) - GAMMA) / (ZETA - GAMMA);
    (p / (1.0 - p)).ln()
}

/// `beta` at iteration `t` of `total` with `warmup` iterations without the regulariser (`None` then).
fn beta_at(t: usize, total: usize, warmup: usize) -> Option<f32> {
    if t < warmup {
        return None;
    }
    let rel = (t - warmup) as f32 / (total - warmup).saturating_sub(1).max(1) as f32;
    Some(BETA_START + (BETA_END - BETA_START) * rel.min(1.0))
}

fn warmup_of(total: usize) -> usize {
    (total as f64 * WARMUP_FRACTION).ceil() as usize
}

/// The weights, their `[rows, cols]` shape and quantizer of a weight layer (`None` for other layers or a layer
/// without a weight quantizer).
fn weight_view(layer: &Layer) -> Option<(&[f32], usize, usize, &WeightQuantizer)> {
    match layer {
        Layer::Dense(d) => Some((
            &d.weight,
            d.out_features,
            d.in_features,
            d.weight_quant.as_ref()?,
        )),
        Layer::Conv2d(c) => Some((&c.weight, c.out_channels, c.k(), c.weight_quant.as_ref()?)),
        _ => None,
    }
}

/// One layer's rounding problem: a float copy of the layer, and per weight its scale, `floor(W/s)` and
/// fractional part.
#[derive(Debug, Clone)]
pub struct LayerRounding {
    /// The layer without its weight quantizer; its weights are overwritten with `W~` at every evaluation.
    layer: Layer,
    cols: usize,
    out_channels: usize,
    /// Scale per weight row.
    scales: Vec<f32>,
    floor: Vec<f32>,
    frac: Vec<f32>,
    qmax: f32,
    /// Per weight: `dW~/dV` of the last evaluation.
    dw_dv: Vec<f32>,
}

impl LayerRounding {
    /// The problem of a Dense or Conv2d (grouped and depthwise included) layer whose weight quantizer rounds onto
    /// a uniform grid ([`WeightQuantizer::grid_max`]); `None` for any other layer. The scales are the
    /// quantizer's as it is set now (MSE clipping included), with rounding to nearest.
    pub fn new(layer: &Layer) -> Option<Self> {
        let (w, rows, cols, q) = weight_view(layer)?;
        let qmax = q.grid_max()?;
        let mut nearest = q.clone();
        nearest.set_rounding(Vec::new()).ok()?;
        let codes = nearest.quantize(w, rows, cols);
        let scales: Vec<f32> = (0..rows).map(|r| codes.scale_of_row(r)).collect();
        let mut floor = Vec::with_capacity(w.len());
        let mut frac = Vec::with_capacity(w.len());
        for (i, &x) in w.iter().enumerate() {
            let s = scales[i / cols.max(1)];
            let f = floor_code(x, s) as f32;
            floor.push(f);
            frac.push((x / s - f).clamp(0.0, 1.0));
        }
        let mut layer = layer.clone();
        match &mut layer {
            Layer::Dense(d) => d.weight_quant = None,
            Layer::Conv2d(c) => c.weight_quant = None,
            _ => return None,
        }
        Some(Self {
            layer,
            cols,
            out_channels: rows,
            scales,
            floor,
            dw_dv: vec![0.0; frac.len()],
            frac,
            qmax: qmax as f32,
        })
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.frac.len()
    }

    /// Whether the layer has no weights.
    pub fn is_empty(&self) -> bool {
        self.frac.is_empty()
    }

    /// `V` at the start: `h(V)` equals each weight's fractional part `W/s - floor(W/s)`.
    pub fn initial_v(&self) -> Vec<f32> {
        self.frac.iter().map(|&f| initial_v(f)).collect()
    }

    /// Hard-rounded weights `s * clamp(floor(W/s) + up, -q, q)` (what the quantizer dequantizes to after
    /// [`WeightQuantizer::set_rounding`] with the same `up`).
    pub fn rounded_weights(&self, up: &[bool]) -> Vec<f32> {
        self.floor
            .iter()
            .zip(up)
            .enumerate()
            .map(|(i, (&f, &u))| {
                let c = (f + f32::from(u8::from(u))).clamp(-self.qmax, self.qmax);
                c * self.scales[i / self.cols.max(1)]
            })
            .collect()
    }

    fn set_weights(&mut self, w: &[f32]) {
        match &mut self.layer {
            Layer::Dense(d) => d.weight.copy_from_slice(w),
            Layer::Conv2d(c) => c.weight.copy_from_slice(w),
            _ => {}
        }
    }

    /// Runs the layer on `x` and returns `(1/P) sum (y - target)^2` with `dL/dy` in `grad_y` when asked.
    fn reconstruct(&mut self, x: &Tensor, target: &Tensor, grad: bool) -> Result<f64> {
        let y = self.layer.forward(x, grad)?;
        if y.shape != target.shape {
            return Err(Error::Shape(format!(
                "adaround: layer output {:?} but target {:?}",
                y.shape, target.shape
            )));
        }
        let positions = (y.len() / self.out_channels.max(1)).max(1) as f64;
        let loss = y
            .data
            .iter()
            .zip(&target.data)
            .map(|(&a, &b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            / positions;
        if grad {
            let scale = (2.0 / positions) as f32;
            let gy = Tensor::new(
                y.data
                    .iter()
                    .zip(&target.data)
                    .map(|(&a, &b)| scale * (a - b))
                    .collect(),
                y.shape.clone(),
            );
            match &mut self.layer {
                Layer::Dense(d) => {
                    d.backward_impl(&gy, false)?;
                }
                Layer::Conv2d(c) => {
                    c.backward_impl(&gy, false)?;
                }
                _ => {}
            }
        }
        Ok(loss)
    }

    /// `(1/P) sum ||y - target||^2` of the layer with weights `w` on `x` (P: output positions).
    pub fn reconstruction_error(&mut self, w: &[f32], x: &Tensor, target: &Tensor) -> Result<f64> {
        if w.len() != self.len() {
            return Err(Error::Shape(format!(
                "adaround: {} weights for a layer of {}",
                w.len(),
                self.len()
            )));
        }
        self.set_weights(w);
        self.reconstruct(x, target, false)
    }

    /// The loss at `v` on the batch `(x, target)`, the regulariser included when `beta` is given, with its
    /// gradient with respect to `v` written into `grad` (see the module doc for the formulas).
    pub fn loss_and_grad(
        &mut self,
        v: &[f32],
        x: &Tensor,
        target: &Tensor,
        beta: Option<f32>,
        grad: &mut [f32],
    ) -> Result<f64> {
        let n = self.len();
        if v.len() != n || grad.len() != n {
            return Err(Error::Shape(format!(
                "adaround: {} values and {} gradients for a layer of {n} weights",
                v.len(),
                grad.len()
            )));
        }
        let mut soft = vec![0.0f32; n];
        let mut reg = 0f64;
        for (i, ((&vi, g), (w, d))) in v
            .iter()
            .zip(grad.iter_mut())
            .zip(soft.iter_mut().zip(self.dw_dv.iter_mut()))
            .enumerate()
        {
            let s = self.scales[i / self.cols.max(1)];
            let sg = sigmoid(vi);
            let raw = sg * (ZETA - GAMMA) + GAMMA;
            let h = raw.clamp(0.0, 1.0);
            let dh = if raw > 0.0 && raw < 1.0 {
                (ZETA - GAMMA) * sg * (1.0 - sg)
            } else {
                0.0
            };
            let c = self.floor[i] + h;
            *w = s * c.clamp(-self.qmax, self.qmax);
            *d = if (-self.qmax..=self.qmax).contains(&c) {
                s * dh
            } else {
                0.0
            };
            *g = 0.0;
            if let Some(beta) = beta {
                let a = 2.0 * h - 1.0;
                reg += f64::from(1.0 - a.abs().powf(beta));
                *g = -2.0 * LAMBDA * beta * a.abs().powf(beta - 1.0) * a.signum() * dh;
            }
        }
        self.set_weights(&soft);
        let loss = self.reconstruct(x, target, true)?;
        let gw = match &self.layer {
            Layer::Dense(d) => &d.grad_weight,
            Layer::Conv2d(c) => &c.grad_weight,
            _ => return Ok(loss),
        };
        for ((g, &gw), &d) in grad.iter_mut().zip(gw).zip(&self.dw_dv) {
            *g += gw * d;
        }
        Ok(loss + f64::from(LAMBDA) * reg)
    }

    /// Learns the rounding on the samples `(x, target)` (`[N, ...]` each, row `i` of `target` the float output
    /// for row `i` of `x`): `iters` Adam steps on batches of [`BATCH_SAMPLES`] drawn from `rng`, or fewer if
    /// `budget` runs out (see [`AdaRoundOptions::seconds`]). Calls `progress(iter, iters, loss)` after each step
    /// and returns `up` per weight (`h(V) >= 0.5`).
    pub fn optimize(
        &mut self,
        x: &Tensor,
        target: &Tensor,
        iters: usize,
        budget: Option<Duration>,
        rng: &mut Rng,
        progress: &mut dyn FnMut(usize, usize, f64),
    ) -> Result<Vec<bool>> {
        let samples = x.rows();
        if samples == 0 || target.rows() != samples {
            return Err(Error::MissingData(format!(
                "adaround needs calibration samples ({} inputs, {} targets)",
                samples,
                target.rows()
            )));
        }
        let mut v = self.initial_v();
        let mut grad = vec![0.0f32; v.len()];
        let mut opt = Optimizer::new(OptimizerKind::adam(), LEARNING_RATE)?;
        let batch = BATCH_SAMPLES.min(samples);
        let mut xb = batch_like(x, batch);
        let mut tb = batch_like(target, batch);
        let (mut total, mut warmup) = (iters, warmup_of(iters));
        let start = Instant::now();
        let mut t = 0;
        while t < total {
            for r in 0..batch {
                let i = rng.below(samples);
                copy_row(x, i, &mut xb, r);
                copy_row(target, i, &mut tb, r);
            }
            let loss = self.loss_and_grad(&v, &xb, &tb, beta_at(t, total, warmup), &mut grad)?;
            opt.step(&mut [Param {
                name: "adaround_v",
                value: &mut v,
                grad: &mut grad,
            }])?;
            t += 1;
            if let Some(b) = budget.filter(|_| t == PROBE_ITERS.min(total) && t < total) {
                let per_iter = start.elapsed().as_secs_f64() / t as f64;
                let fit = (b.as_secs_f64() / per_iter.max(1e-9)) as usize;
                total = fit.clamp(t, iters);
                warmup = warmup_of(total).max(t);
            }
            progress(t, total, loss);
        }
        Ok(v.iter().map(|&v| rectified_sigmoid(v) >= 0.5).collect())
    }
}

/// A zero tensor shaped like `t` with `rows` rows.
fn batch_like(t: &Tensor, rows: usize) -> Tensor {
    let mut shape = t.shape.clone();
    shape[0] = rows;
    Tensor::zeros(&shape)
}

fn copy_row(from: &Tensor, i: usize, to: &mut Tensor, r: usize) {
    let n = from.row_len();
    to.data[r * n..(r + 1) * n].copy_from_slice(&from.data[i * n..(i + 1) * n]);
}

/// The batches stacked along the first dimension.
fn concat_rows(parts: Vec<Tensor>) -> Result<Tensor> {
    let Some(first) = parts.first() else {
        return Err(Error::MissingData(
            "adaround needs calibration samples".into(),
        ));
    };
    let mut shape = first.shape.clone();
    if parts.iter().any(|p| p.shape.get(1..) != shape.get(1..)) {
        return Err(Error::Shape(
            "adaround: calibration batches of different shapes".into(),
        ));
    }
    shape[0] = parts.iter().map(Tensor::rows).sum();
    let data = parts.into_iter().flat_map(|p| p.data).collect();
    Ok(Tensor::new(data, shape))
}

/// Whether [`adaround`] rounds this layer.
pub fn applies(layer: &Layer) -> bool {
    weight_view(layer).is_some_and(|(_, _, _, q)| q.grid_max().is_some())
}

/// AdaRound on every weight layer of a PTQ-prepared model `m` (quantizers attached, activation ranges frozen)
/// whose weights lie on a uniform grid, layer after layer in node order, on the calibration `batches`; sets each
/// layer's rounding ([`WeightQuantizer::set_rounding`]) and returns how many layers it rounded.
pub fn adaround(
    m: &mut Model,
    batches: &[Tensor],
    opts: &AdaRoundOptions,
    progress: &mut dyn FnMut(&AdaRoundProgress),
) -> Result<usize> {
    let mut float = m.clone();
    bypass_quantizers(&mut float);
    let layers: Vec<usize> = m
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.inputs.len() == 1 && applies(&n.layer))
        .map(|(j, _)| j)
        .collect();
    let mut rng = Rng::new(opts.seed);
    let start = Instant::now();
    for (k, &j) in layers.iter().enumerate() {
        let input = m.nodes[j].inputs[0];
        let (mut xs, mut ts) = (Vec::new(), Vec::new());
        for x in batches {
            xs.push(m.forward_all(x, false)?.swap_remove(input));
            ts.push(float.forward_all(x, false)?.swap_remove(j + 1));
        }
        let (x, t) = (concat_rows(xs)?, concat_rows(ts)?);
        let Some(mut problem) = LayerRounding::new(&m.nodes[j].layer) else {
            continue;
        };
        let budget = opts.seconds.map(|s| {
            let left = s - start.elapsed().as_secs_f64();
            Duration::from_secs_f64((left / (layers.len() - k) as f64).max(0.0))
        });
        let name = m.nodes[j].name.clone();
        let mut layer_rng = rng.fork(j as u64);
        let up = problem.optimize(
            &x,
            &t,
            opts.iters,
            budget,
            &mut layer_rng,
            &mut |iter, iters, loss| {
                progress(&AdaRoundProgress {
                    layer: k,
                    layers: layers.len(),
                    name: name.clone(),
                    iter,
                    iters,
                    loss,
                })
            },
        )?;
        let q = match &mut m.nodes[j].layer {
            Layer::Dense(d) => d.weight_quant.as_mut(),
            Layer::Conv2d(c) => c.weight_quant.as_mut(),
            _ => None,
        };
        if let Some(q) = q {
            q.set_rounding(up)?;
        }
    }
    Ok(layers.len())
}
