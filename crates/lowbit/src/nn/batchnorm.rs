//! Batch normalization over the channels of NCHW activations (Ioffe & Szegedy 2015), PyTorch's conventions:
//! momentum 0.1, eps 1e-5, biased batch variance for normalizing, unbiased for the running estimate.
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
        if !ok || x.rows() == 0 {
            return Err(Error::Shape(format!(
                "batchnorm of {} channels: input shape {:?}",
                self.channels, x.shape
            )));
        }
        Ok((x.rows(), x.shape[2..].iter().product()))
    }

    /// Forward pass.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, p) = self.dims(x)?;
        let c = self.channels;
        let batch_stats = train && !self.frozen;
        let (mean, inv_std): (Vec<f32>, Vec<f32>) = if batch_stats {
            let n = (b * p) as f64;
            let stats: Vec<(f64, f64)> = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let mut s = 0.0f64;
                    for s_i in 0..b {
                        s += x.data[(s_i * c + ch) * p..(s_i * c + ch + 1) * p]
                            .iter()
                            .map(|&v| f64::from(v))
                            .sum::<f64>();
                    }
                    let m = s / n;
                    let mut v = 0.0f64;
                    for s_i in 0..b {
                        v += x.data[(s_i * c + ch) * p..(s_i * c + ch + 1) * p]
                            .iter()
                            .map(|&t| (f64::from(t) - m).powi(2))
                            .sum::<f64>();
                    }
                    (m, v / n)
                })
                .collect();
            let mom = f64::from(self.momentum);
            for (ch, &(m, v)) in stats.iter().enumerate() {
                let unbiased = if n > 1.0 { v * n / (n - 1.0) } else { v };
                self.running_mean[ch] =
                    ((1.0 - mom) * f64::from(self.running_mean[ch]) + mom * m) as f32;
                self.running_var[ch] =
                    ((1.0 - mom) * f64::from(self.running_var[ch]) + mom * unbiased) as f32;
            }
            stats
                .iter()
                .map(|&(m, v)| (m as f32, (1.0 / (v + f64::from(self.eps)).sqrt()) as f32))
                .unzip()
        } else {
            (
                self.running_mean.clone(),
                self.running_var
                    .iter()
                    .map(|&v| (1.0 / (f64::from(v) + f64::from(self.eps)).sqrt()) as f32)
                    .collect(),
            )
        };
        let mut xhat = vec![0.0f32; x.len()];
        let mut y = vec![0.0f32; x.len()];
        xhat.par_chunks_mut(p)
            .zip(y.par_chunks_mut(p))
            .zip(x.data.par_chunks(p))
            .enumerate()
            .for_each(|(i, ((xh, yo), xi))| {
                let ch = i % c;
                let (m, s, g, bt) = (mean[ch], inv_std[ch], self.gamma[ch], self.beta[ch]);
                for ((h, o), &v) in xh.iter_mut().zip(yo.iter_mut()).zip(xi) {
                    *h = (v - m) * s;
                    *o = g * *h + bt;
                }
            });
        if train {
            self.xhat = xhat;
            self.inv_std = inv_std;
            self.input_shape.clone_from(&x.shape);
            self.used_batch_stats = batch_stats;
        }
        Ok(Tensor::new(y, x.shape.clone()))
    }

    /// Backward pass: sets the gamma and beta gradients, returns dL/dx. With batch statistics,
    /// `dx = gamma * inv_std / N * (N dy - sum dy - xhat sum(dy xhat))`; with fixed statistics the norm is affine.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        if grad.shape != self.input_shape || self.xhat.len() != grad.len() {
            return Err(Error::Shape(format!(
                "batchnorm: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.input_shape
            )));
        }
        let (b, p) = self.dims(grad)?;
        let c = self.channels;
        let n = (b * p) as f32;
        let sums: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                for s in 0..b {
                    let r = (s * c + ch) * p..(s * c + ch + 1) * p;
                    for (&g, &h) in grad.data[r.clone()].iter().zip(&self.xhat[r]) {
                        sg += f64::from(g);
                        sgx += f64::from(g) * f64::from(h);
                    }
                }
                (sg as f32, sgx as f32)
            })
            .collect();
        for (ch, &(sg, sgx)) in sums.iter().enumerate() {
            self.grad_beta[ch] = sg;
            self.grad_gamma[ch] = sgx;
        }
        let mut dx = vec![0.0f32; grad.len()];
        let batch_stats = self.used_batch_stats;
        dx.par_chunks_mut(p)
            .zip(grad.data.par_chunks(p))
            .zip(self.xhat.par_chunks(p))
            .enumerate()
            .for_each(|(i, ((d, g), h))| {
                let ch = i % c;
                let k = self.gamma[ch] * self.inv_std[ch];
                let (sg, sgx) = sums[ch];
                for ((dv, &gv), &hv) in d.iter_mut().zip(g).zip(h) {
                    *dv = if batch_stats {
                        k * (gv - sg / n - hv * sgx / n)
                    } else {
                        k * gv
                    };
                }
            });
        Ok(Tensor::new(dx, grad.shape.clone()))
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
