//! Batch normalization over the channels of NCHW activations (Ioffe & Szegedy 2015), PyTorch's conventions:
//! momentum 0.1, eps 1e-5, biased batch variance for normalizing, unbiased for the running estimate.
use super::activation::reshape_buffer;
use super::shape::per_task;
use super::Param;
use crate::error::{Error, Result};
use crate::state::{StateValue, StateVisitor, Stateful};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Batch norm of `[B, C, H, W]` (or `[B, C]`) per channel: `y = gamma * (x - mean) / sqrt(var + eps) + beta`,
/// with batch statistics in training and running statistics in inference.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    /// Channels.
    pub channels: usize,
    /// Scale (learned), initialised to 1.
    pub gamma: Vec<f32>,
    /// Shift (learned), initialised to 0.
    pub beta: Vec<f32>,
    /// Running mean, initialised to 0.
    pub running_mean: Vec<f32>,
    /// Running (unbiased) variance, initialised to 1.
    pub running_var: Vec<f32>,
    /// Weight of the newest batch in the running statistics (0.1, as PyTorch).
    pub momentum: f32,
    /// Added to the variance (1e-5).
    pub eps: f32,
    /// dL/dgamma of the last backward pass.
    pub grad_gamma: Vec<f32>,
    /// dL/dbeta of the last backward pass.
    pub grad_beta: Vec<f32>,
    /// When true, training-mode passes also normalize with the running statistics and leave them unchanged
    /// (frozen statistics, used late in QAT).
    pub frozen: bool,
    xhat: Vec<f32>,
    inv_std: Vec<f32>,
    input_shape: Vec<usize>,
    used_batch_stats: bool,
    /// Output of the last forward pass (reused from step to step).
    output: Tensor,
    /// dL/dinput of the last backward pass.
    input_grad: Tensor,
}

impl BatchNorm2d {
    /// A batch norm of `channels` with gamma 1, beta 0, running mean 0 and variance 1.
    pub fn new(channels: usize) -> Self {
        Self {
            channels,
            gamma: vec![1.0; channels],
            beta: vec![0.0; channels],
            running_mean: vec![0.0; channels],
            running_var: vec![1.0; channels],
            momentum: 0.1,
            eps: 1e-5,
            grad_gamma: vec![0.0; channels],
            grad_beta: vec![0.0; channels],
            frozen: false,
            xhat: Vec::new(),
            inv_std: Vec::new(),
            input_shape: Vec::new(),
            used_batch_stats: false,
            output: Tensor::default(),
            input_grad: Tensor::default(),
        }
    }

    /// Per-sample output shape: the input's, whose first dimension must be the channel count (`[C, H, W]` or
    /// `[C]`).
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        if input.first() != Some(&self.channels) {
            return Err(Error::Shape(format!(
                "batchnorm of {} channels: per-sample shape {input:?}",
                self.channels
            )));
        }
        Ok(input.to_vec())
    }

    fn dims(&self, x: &Tensor) -> Result<(usize, usize)> {
        let ok = x.shape.len() >= 2 && x.shape[1] == self.channels;
        if !ok || x.rows() == 0 || x.row_len() == 0 {
            return Err(Error::Shape(format!(
                "batchnorm of {} channels: input shape {:?}",
                self.channels, x.shape
            )));
        }
        Ok((x.rows(), x.shape[2..].iter().product()))
    }

    /// Forward pass.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_buffered(x, train)?;
        Ok(self.output.clone())
    }

    /// The output of the last forward pass.
    pub(crate) fn output(&self) -> &Tensor {
        &self.output
    }

    /// dL/dinput of the last backward pass.
    pub(crate) fn input_grad(&self) -> &Tensor {
        &self.input_grad
    }

    /// [`BatchNorm2d::forward`] into the layer's output buffer.
    ///
    /// Batch statistics, deterministic whatever the thread count: each `(sample, channel)` plane's sum and
    /// squared deviations from its own mean in 8 f32 lanes (a fixed order), then, per channel, the planes
    /// combined in f64 in sample order by Chan et al.'s pairwise update (`M2 = sum M2_p + n_p (mean_p -
    /// mean)^2`), which needs one pass over memory and does not cancel catastrophically as `E[x^2] - E[x]^2`
    /// can.
    pub(crate) fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<()> {
        let (b, p) = self.dims(x)?;
        let c = self.channels;
        let batch_stats = train && !self.frozen;
        let chunk = per_task(p);
        let (mean, inv_std): (Vec<f32>, Vec<f32>) = if batch_stats {
            // Per plane: (sum, squared deviations from the plane's mean).
            let mut planes = vec![(0.0f32, 0.0f32); b * c];
            planes
                .par_chunks_mut(chunk)
                .zip(x.data.par_chunks(chunk * p))
                .for_each(|(st, xs)| {
                    for (s, plane) in st.iter_mut().zip(xs.chunks_exact(p)) {
                        *s = plane_sum_m2(plane);
                    }
                });
            let (n_p, n) = (p as f64, (b * p) as f64);
            let mom = f64::from(self.momentum);
            let mut mean = Vec::with_capacity(c);
            let mut inv_std = Vec::with_capacity(c);
            for ch in 0..c {
                let total: f64 = (0..b).map(|s| f64::from(planes[s * c + ch].0)).sum();
                let m = total / n;
                let m2: f64 = (0..b)
                    .map(|s| {
                        let (sum, dev) = planes[s * c + ch];
                        f64::from(dev) + n_p * (f64::from(sum) / n_p - m).powi(2)
                    })
                    .sum();
                let v = m2 / n;
                let unbiased = if n > 1.0 { v * n / (n - 1.0) } else { v };
                self.running_mean[ch] =
                    ((1.0 - mom) * f64::from(self.running_mean[ch]) + mom * m) as f32;
                self.running_var[ch] =
                    ((1.0 - mom) * f64::from(self.running_var[ch]) + mom * unbiased) as f32;
                mean.push(m as f32);
                inv_std.push((1.0 / (v + f64::from(self.eps)).sqrt()) as f32);
            }
            (mean, inv_std)
        } else {
            (
                self.running_mean.clone(),
                self.running_var
                    .iter()
                    .map(|&v| (1.0 / (f64::from(v) + f64::from(self.eps)).sqrt()) as f32)
                    .collect(),
            )
        };
        reshape_buffer(&mut self.output, &x.shape);
        let (gamma, beta) = (&self.gamma, &self.beta);
        let affine = |i: usize| {
            let ch = i % c;
            (mean[ch], inv_std[ch], gamma[ch], beta[ch])
        };
        if train {
            self.xhat.resize(x.len(), 0.0);
            self.output
                .data
                .par_chunks_mut(chunk * p)
                .zip(self.xhat.par_chunks_mut(chunk * p))
                .zip(x.data.par_chunks(chunk * p))
                .enumerate()
                .for_each(|(t, ((ys, hs), xs))| {
                    let planes = ys.chunks_exact_mut(p).zip(hs.chunks_exact_mut(p));
                    for (i, ((yo, xh), xi)) in planes.zip(xs.chunks_exact(p)).enumerate() {
                        let (m, s, g, bt) = affine(t * chunk + i);
                        for ((h, o), &v) in xh.iter_mut().zip(yo.iter_mut()).zip(xi) {
                            *h = (v - m) * s;
                            *o = g * *h + bt;
                        }
                    }
                });
            self.inv_std = inv_std;
            self.input_shape.clone_from(&x.shape);
            self.used_batch_stats = batch_stats;
        } else {
            self.output
                .data
                .par_chunks_mut(chunk * p)
                .zip(x.data.par_chunks(chunk * p))
                .enumerate()
                .for_each(|(t, (ys, xs))| {
                    for (i, (yo, xi)) in ys.chunks_exact_mut(p).zip(xs.chunks_exact(p)).enumerate()
                    {
                        let (m, s, g, bt) = affine(t * chunk + i);
                        for (o, &v) in yo.iter_mut().zip(xi) {
                            *o = g * ((v - m) * s) + bt;
                        }
                    }
                });
        }
        Ok(())
    }

    /// Backward pass: sets the gamma and beta gradients, returns dL/dx. With batch statistics,
    /// `dx = gamma * inv_std / N * (N dy - sum dy - xhat sum(dy xhat))`; with fixed statistics the norm is affine.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        self.backward_buffered(grad)?;
        Ok(self.input_grad.clone())
    }

    /// [`BatchNorm2d::backward`] into the layer's input-gradient buffer. The sums `sum dy` and `sum dy xhat` are
    /// taken per plane in 8 f32 lanes, then over samples in f64 in sample order (deterministic).
    pub(crate) fn backward_buffered(&mut self, grad: &Tensor) -> Result<()> {
        if grad.shape != self.input_shape || self.xhat.len() != grad.len() {
            return Err(Error::Shape(format!(
                "batchnorm: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.input_shape
            )));
        }
        let (b, p) = self.dims(grad)?;
        let c = self.channels;
        let chunk = per_task(p);
        let mut planes = vec![(0.0f32, 0.0f32); b * c];
        planes
            .par_chunks_mut(chunk)
            .zip(grad.data.par_chunks(chunk * p))
            .zip(self.xhat.par_chunks(chunk * p))
            .for_each(|((st, gs), hs)| {
                for ((s, g), h) in st
                    .iter_mut()
                    .zip(gs.chunks_exact(p))
                    .zip(hs.chunks_exact(p))
                {
                    *s = plane_sum_dot(g, h);
                }
            });
        let mut sums = Vec::with_capacity(c);
        for ch in 0..c {
            let (mut sg, mut sgx) = (0.0f64, 0.0f64);
            for s in 0..b {
                let (a, d) = planes[s * c + ch];
                sg += f64::from(a);
                sgx += f64::from(d);
            }
            self.grad_beta[ch] = sg as f32;
            self.grad_gamma[ch] = sgx as f32;
            sums.push((sg as f32, sgx as f32));
        }
        let n = (b * p) as f32;
        let batch_stats = self.used_batch_stats;
        reshape_buffer(&mut self.input_grad, &grad.shape);
        let (gamma, inv_std) = (&self.gamma, &self.inv_std);
        self.input_grad
            .data
            .par_chunks_mut(chunk * p)
            .zip(grad.data.par_chunks(chunk * p))
            .zip(self.xhat.par_chunks(chunk * p))
            .enumerate()
            .for_each(|(t, ((ds, gs), hs))| {
                let planes = ds.chunks_exact_mut(p).zip(gs.chunks_exact(p));
                for (i, ((d, g), h)) in planes.zip(hs.chunks_exact(p)).enumerate() {
                    let ch = (t * chunk + i) % c;
                    let k = gamma[ch] * inv_std[ch];
                    let (sg, sgx) = sums[ch];
                    // The branch and the divisions hoisted out of the loop (the same values), so that it
                    // vectorizes: with them inside it compiled to scalar code.
                    if batch_stats {
                        let (mean_g, mean_gx) = (sg / n, sgx / n);
                        for ((dv, &gv), &hv) in d.iter_mut().zip(g).zip(h) {
                            *dv = k * (gv - mean_g - hv * mean_gx);
                        }
                    } else {
                        for (dv, &gv) in d.iter_mut().zip(g) {
                            *dv = k * gv;
                        }
                    }
                }
            });
        Ok(())
    }

    /// Parameters: gamma (`weight`), then beta (`bias`).
    pub fn params_mut(&mut self) -> Vec<Param<'_>> {
        vec![
            Param {
                name: "weight",
                value: &mut self.gamma,
                grad: &mut self.grad_gamma,
            },
            Param {
                name: "bias",
                value: &mut self.beta,
                grad: &mut self.grad_beta,
            },
        ]
    }
}

impl Stateful for BatchNorm2d {
    /// `gamma`, `beta`, the running statistics and the frozen flag.
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        v.value("gamma", StateValue::F32(&mut self.gamma))?;
        v.value("beta", StateValue::F32(&mut self.beta))?;
        v.value("running_mean", StateValue::F32(&mut self.running_mean))?;
        v.value("running_var", StateValue::F32(&mut self.running_var))?;
        v.value("frozen", StateValue::Flag(&mut self.frozen))
    }
}

/// `(sum, sum of (x - mean)^2)` of one plane, `mean = sum / len`, each in 8 f32 lanes added in a fixed order.
fn plane_sum_m2(x: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if super::kernels::isa() == super::kernels::Isa::Avx2 {
        // SAFETY: isa() reports AVX2 only when the CPU has it; the body is safe code.
        return unsafe { plane_sum_m2__avx2(x) };
    }
    plane_sum_m2_portable(x)
}

/// [`plane_sum_m2`] compiled for AVX2 (the same lane operations, so the same results).
///
/// # Safety
/// The CPU must support AVX2 (the body is safe code).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(non_snake_case)]
unsafe fn plane_sum_m2__avx2(x: &[f32]) -> (f32, f32) {
    plane_sum_m2_portable(x)
}

#[inline(always)]
fn plane_sum_m2_portable(x: &[f32]) -> (f32, f32) {
    let sum = lanes2(x, x, |a, _| a);
    let mean = sum / x.len().max(1) as f32;
    (sum, lanes2(x, x, |a, _| (a - mean) * (a - mean)))
}

/// `(sum g, sum g h)` of one plane, each in 8 f32 lanes added in a fixed order.
fn plane_sum_dot(g: &[f32], h: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if super::kernels::isa() == super::kernels::Isa::Avx2 {
        // SAFETY: isa() reports AVX2 only when the CPU has it; the body is safe code.
        return unsafe { plane_sum_dot__avx2(g, h) };
    }
    plane_sum_dot_portable(g, h)
}

/// [`plane_sum_dot`] compiled for AVX2 (the same lane operations, so the same results).
///
/// # Safety
/// The CPU must support AVX2 (the body is safe code).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(non_snake_case)]
unsafe fn plane_sum_dot__avx2(g: &[f32], h: &[f32]) -> (f32, f32) {
    plane_sum_dot_portable(g, h)
}

#[inline(always)]
fn plane_sum_dot_portable(g: &[f32], h: &[f32]) -> (f32, f32) {
    (lanes2(g, h, |a, _| a), lanes2(g, h, |a, b| a * b))
}

/// Sum of `f(x[i], y[i])` in 8 interleaved lanes (term `i` into lane `i % 8`), then the lanes in a fixed tree
/// order: vectorizes (a plain f32 sum is one serial chain of adds) and does not depend on threads.
#[inline(always)]
fn lanes2(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xt, yt) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += f(a[l], b[l]);
        }
    }
    for ((l, &a), &b) in acc.iter_mut().zip(xt).zip(yt) {
        *l += f(a, b);
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}
