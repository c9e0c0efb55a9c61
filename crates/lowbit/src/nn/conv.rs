//! 2-D convolution (NCHW, stride, zero padding) by im2col and one large f32 GEMM per pass.
//!
//! Layout: the whole batch is unfolded into `col[K, B*P]` (row `k = ic*kh*kw + ky*kw + kx`, the runtime's column
//! index; column `b*P + p` for output position `p` of sample `b`). Then
//! - forward: `Y'[oc, B*P] = W[oc, K] col`, scattered to NCHW with the bias;
//! - dW `[oc, K] = dY' col^T`, reduced over fixed chunks of the batch in a fixed order (deterministic whatever
//!   the thread count);
//! - dcol `[K, B*P] = W^T dY'`, folded back by col2im, one (sample, channel) plane per task.
//!
//! One product over the whole batch keeps the GEMM shapes large (LeNet conv1: 6 x 25 x 50176 at batch 64), which
//! is what lets matrixmultiply's packed kernel and its threads pay off; im2col and col2im run on rayon.
use super::gemm::{sgemm, MatRef};
use super::Param;
use crate::error::{Error, Result};
use crate::quant::WeightQuantizer;
use crate::rng::Rng;
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Number of partial dW products; fixed (not the thread count) so results do not depend on the machine.
const DW_CHUNKS: usize = 4;

/// 2-D convolution layer. Input `[B, in_channels, H, W]`, output `[B, out_channels, OH, OW]` with
/// `OH = (H + 2*ph - kh) / sh + 1` (likewise OW).
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel (rows, cols).
    pub kernel: (usize, usize),
    /// Stride (rows, cols).
    pub stride: (usize, usize),
    /// Zero padding (rows, cols).
    pub padding: (usize, usize),
    /// Float (shadow) weights `[out_channels][in_channels * kh * kw]`, column `ic*kh*kw + ky*kw + kx`.
    pub weight: Vec<f32>,
    /// Bias, `[out_channels]`.
    pub bias: Vec<f32>,
    /// Fake-quantizer of the weights (rows = output channels, cols = `in_channels*kh*kw`); `None` for f32.
    pub weight_quant: Option<WeightQuantizer>,
    /// dL/dweight of the last backward pass.
    pub grad_weight: Vec<f32>,
    /// dL/dbias of the last backward pass.
    pub grad_bias: Vec<f32>,
    weight_q: Vec<f32>,
    grad_weight_q: Vec<f32>,
    /// im2col of the last training forward, `[K, B*P]`.
    col: Vec<f32>,
    /// Input shape `[B, C, H, W]` of the last training forward.
    input_shape: Vec<usize>,
}

/// Output size of a window of `k` with stride `s` over `n + 2*p`, or `None` if it does not fit (or k, s = 0).
pub fn window_len(n: usize, k: usize, s: usize, p: usize) -> Option<usize> {
    let padded = n + 2 * p;
    (k >= 1 && s >= 1 && padded >= k).then(|| (padded - k) / s + 1)
}

/// The range of output columns `ox` whose input column `ox*s + kx - p` lies in `[0, n)`.
fn valid_range(out: usize, n: usize, s: usize, kx: usize, p: usize) -> (usize, usize) {
    let lo = if p > kx { (p - kx).div_ceil(s) } else { 0 };
    // ox*s + kx - p <= n - 1  <=>  ox <= (n - 1 + p - kx) / s
    let hi = if n + p > kx {
        ((n - 1 + p - kx) / s + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

impl Conv2d {
    /// Glorot-uniform weights with `fan_in = ic*kh*kw`, `fan_out = oc*kh*kw` (Keras' default) and zero bias.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        rng: &mut Rng,
    ) -> Self {
        let area = kernel.0 * kernel.1;
        let limit = (6.0 / ((in_channels + out_channels) * area) as f32).sqrt();
        let weight = (0..out_channels * in_channels * area)
            .map(|_| rng.uniform_range(-limit, limit))
            .collect();
        Self::from_weights(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            weight,
            vec![0.0; out_channels],
        )
    }

    /// A layer with the given weights (`[oc][ic*kh*kw]`) and bias; lengths are the caller's contract.
    pub fn from_weights(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Self {
        debug_assert_eq!(
            weight.len(),
            out_channels * in_channels * kernel.0 * kernel.1
        );
        debug_assert_eq!(bias.len(), out_channels);
        Self {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            grad_weight: vec![0.0; weight.len()],
            grad_bias: vec![0.0; bias.len()],
            weight,
            bias,
            weight_quant: None,
            weight_q: Vec::new(),
            grad_weight_q: Vec::new(),
            col: Vec::new(),
            input_shape: Vec::new(),
        }
    }

    /// Columns of the weight matrix, `in_channels * kh * kw`.
    pub fn k(&self) -> usize {
        self.in_channels * self.kernel.0 * self.kernel.1
    }

    /// Output (height, width) for an input of (h, w), or `None` if the kernel does not fit.
    pub fn output_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        Some((
            window_len(h, self.kernel.0, self.stride.0, self.padding.0)?,
            window_len(w, self.kernel.1, self.stride.1, self.padding.1)?,
        ))
    }

    /// The weights the product uses: fake-quantized when quantizing (valid after a forward pass).
    pub fn effective_weight(&self) -> &[f32] {
        if self.weight_quant.is_some() && self.weight_q.len() == self.weight.len() {
            &self.weight_q
        } else {
            &self.weight
        }
    }

    /// Folds a following batch norm into this convolution (Jacob et al. 2018, sec. 3.2):
    /// `w' = w * gamma / sqrt(var + eps)`, `b' = (b - mean) * gamma / sqrt(var + eps) + beta`, with the running
    /// statistics. After folding, this layer alone computes what conv followed by the (eval-mode) norm did.
    pub fn fold_batchnorm(&mut self, bn: &super::BatchNorm2d) -> Result<()> {
        if bn.channels != self.out_channels {
            return Err(Error::Shape(format!(
                "cannot fold a batch norm of {} channels into a conv with {} outputs",
                bn.channels, self.out_channels
            )));
        }
        let k = self.k();
        for c in 0..self.out_channels {
            let f =
                f64::from(bn.gamma[c]) / (f64::from(bn.running_var[c]) + f64::from(bn.eps)).sqrt();
            for w in &mut self.weight[c * k..(c + 1) * k] {
                *w = (f64::from(*w) * f) as f32;
            }
            self.bias[c] = ((f64::from(self.bias[c]) - f64::from(bn.running_mean[c])) * f
                + f64::from(bn.beta[c])) as f32;
        }
        Ok(())
    }

    fn check_input(&self, x: &Tensor) -> Result<(usize, usize, usize, usize, usize)> {
        let bad = || {
            Error::Shape(format!(
                "conv2d {}->{} {}x{}: input shape {:?} (expected [B, {}, H, W])",
                self.in_channels,
                self.out_channels,
                self.kernel.0,
                self.kernel.1,
                x.shape,
                self.in_channels
            ))
        };
        let [b, c, h, w] = x.shape[..] else {
            return Err(bad());
        };
        if c != self.in_channels || x.len() != b * c * h * w {
            return Err(bad());
        }
        let (oh, ow) = self.output_hw(h, w).ok_or_else(bad)?;
        Ok((b, h, w, oh, ow))
    }

    /// Forward pass; in training mode the im2col matrix is kept for [`Conv2d::backward`].
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, h, w, oh, ow) = self.check_input(x)?;
        let k = self.k();
        if let Some(q) = &mut self.weight_quant {
            self.weight_q.resize(self.weight.len(), 0.0);
            q.forward(&self.weight, self.out_channels, k, &mut self.weight_q);
        }
        let mut col = std::mem::take(&mut self.col);
        self.im2col(&x.data, b, h, w, oh, ow, &mut col);
        let (oc, p) = (self.out_channels, oh * ow);
        let bp = b * p;
        let wt = if self.weight_quant.is_some() {
            &self.weight_q
        } else {
            &self.weight
        };
        let mut yt = vec![0.0f32; oc * bp];
        sgemm(
            1.0,
            MatRef::row_major(wt, oc, k),
            MatRef::row_major(&col, k, bp),
            0.0,
            &mut yt,
            bp,
        );
        let mut y = vec![0.0f32; b * oc * p];
        let bias = &self.bias;
        y.par_chunks_mut(p.max(1))
            .enumerate()
            .for_each(|(i, plane)| {
                let (s, c) = (i / oc, i % oc);
                let src = &yt[c * bp + s * p..c * bp + (s + 1) * p];
                for (o, &v) in plane.iter_mut().zip(src) {
                    *o = v + bias[c];
                }
            });
        if train {
            self.col = col;
            self.input_shape.clone_from(&x.shape);
        } else {
            // Keep the allocation for the next call but drop the stale cache's meaning.
            self.col = col;
            self.input_shape.clear();
        }
        Ok(Tensor::new(y, vec![b, oc, oh, ow]))
    }

    /// Backward pass: sets `grad_weight` and `grad_bias`, returns dL/dx.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        self.backward_impl(grad, true)
    }

    /// Backward pass; skips the input gradient (col2im) when not needed, returning an empty tensor then.
    pub(crate) fn backward_impl(&mut self, grad: &Tensor, need_input_grad: bool) -> Result<Tensor> {
        let [b, _, h, w] = self.input_shape[..] else {
            return Err(Error::Shape(
                "conv2d: backward without a training forward pass".into(),
            ));
        };
        let (oh, ow) = self
            .output_hw(h, w)
            .ok_or_else(|| Error::Shape("conv2d: cached shape does not fit".into()))?;
        let (oc, k, p) = (self.out_channels, self.k(), oh * ow);
        let bp = b * p;
        if grad.shape != [b, oc, oh, ow] || self.col.len() != k * bp {
            return Err(Error::Shape(format!(
                "conv2d: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.input_shape
            )));
        }
        // dY' [oc, B*P] from NCHW, and db.
        let mut gt = vec![0.0f32; oc * bp];
        gt.par_chunks_mut(bp.max(1))
            .enumerate()
            .for_each(|(c, row)| {
                for s in 0..b {
                    row[s * p..(s + 1) * p]
                        .copy_from_slice(&grad.data[(s * oc + c) * p..(s * oc + c + 1) * p]);
                }
            });
        for (c, g) in self.grad_bias.iter_mut().enumerate() {
            *g = gt[c * bp..(c + 1) * bp].iter().sum();
        }
        // dW = dY' col^T, as DW_CHUNKS partial products over sample ranges, summed in chunk order.
        let chunk_samples = b.div_ceil(DW_CHUNKS).max(1);
        let col = &self.col;
        let gt_ref = &gt;
        let partials: Vec<Vec<f32>> = (0..b.div_ceil(chunk_samples))
            .into_par_iter()
            .map(|ci| {
                let s0 = ci * chunk_samples;
                let s1 = (s0 + chunk_samples).min(b);
                let cols = (s1 - s0) * p;
                let mut part = vec![0.0f32; oc * k];
                sgemm(
                    1.0,
                    MatRef {
                        data: &gt_ref[s0 * p..],
                        rows: oc,
                        cols,
                        row_stride: bp,
                        col_stride: 1,
                    },
                    MatRef {
                        data: &col[s0 * p..],
                        rows: cols,
                        cols: k,
                        row_stride: 1,
                        col_stride: bp,
                    },
                    0.0,
                    &mut part,
                    k,
                );
                part
            })
            .collect();
        let dw = if self.weight_quant.is_some() {
            self.grad_weight_q.resize(oc * k, 0.0);
            &mut self.grad_weight_q
        } else {
            &mut self.grad_weight
        };
        dw.fill(0.0);
        for part in &partials {
            for (d, v) in dw.iter_mut().zip(part) {
                *d += v;
            }
        }
        if let Some(q) = &mut self.weight_quant {
            self.grad_weight.fill(0.0);
            q.backward(&self.weight, &self.grad_weight_q, &mut self.grad_weight);
        }
        if !need_input_grad {
            return Ok(Tensor::default());
        }
        let wt = if self.weight_quant.is_some() {
            &self.weight_q
        } else {
            &self.weight
        };
        // dcol [K, B*P] = W^T dY'
        let mut dcol = vec![0.0f32; k * bp];
        sgemm(
            1.0,
            MatRef::row_major_t(wt, oc, k),
            MatRef::row_major(&gt, oc, bp),
            0.0,
            &mut dcol,
            bp,
        );
        let mut dx = vec![0.0f32; b * self.in_channels * h * w];
        self.col2im(&dcol, b, h, w, oh, ow, &mut dx);
        Ok(Tensor::new(dx, self.input_shape.clone()))
    }

    /// Unfolds `x` `[B, C, H, W]` into `col[K, B*P]`; padded positions are 0.
    #[allow(clippy::too_many_arguments)]
    fn im2col(
        &self,
        x: &[f32],
        b: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        col: &mut Vec<f32>,
    ) {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (ph, pw) = self.padding;
        let (c_in, p) = (self.in_channels, oh * ow);
        let bp = b * p;
        col.clear();
        col.resize(c_in * kh * kw * bp, 0.0);
        col.par_chunks_mut(bp.max(1))
            .enumerate()
            .for_each(|(kidx, row)| {
                let (ic, ky, kx) = (kidx / (kh * kw), (kidx / kw) % kh, kidx % kw);
                let (lo, hi) = valid_range(ow, w, sw, kx, pw);
                for s in 0..b {
                    let plane = &x[(s * c_in + ic) * h * w..(s * c_in + ic + 1) * h * w];
                    for oy in 0..oh {
                        let iy = oy * sh + ky;
                        if iy < ph || iy - ph >= h {
                            continue;
                        }
                        let src = &plane[(iy - ph) * w..(iy - ph + 1) * w];
                        let dst = &mut row[s * p + oy * ow..s * p + (oy + 1) * ow];
                        if hi <= lo {
                            continue;
                        }
                        if sw == 1 {
                            let start = lo + kx - pw;
                            dst[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                        } else {
                            for ox in lo..hi {
                                dst[ox] = src[ox * sw + kx - pw];
                            }
                        }
                    }
                }
            });
    }

    /// Adds `dcol[K, B*P]` back into `dx` `[B, C, H, W]`, one (sample, channel) plane per task.
    #[allow(clippy::too_many_arguments)]
    fn col2im(
        &self,
        dcol: &[f32],
        b: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        dx: &mut [f32],
    ) {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (ph, pw) = self.padding;
        let (c_in, p) = (self.in_channels, oh * ow);
        let bp = b * p;
        dx.par_chunks_mut((h * w).max(1))
            .enumerate()
            .for_each(|(i, plane)| {
                let (s, ic) = (i / c_in, i % c_in);
                for ky in 0..kh {
                    for kx in 0..kw {
                        let kidx = (ic * kh + ky) * kw + kx;
                        let row = &dcol[kidx * bp + s * p..kidx * bp + (s + 1) * p];
                        let (lo, hi) = valid_range(ow, w, sw, kx, pw);
                        for oy in 0..oh {
                            let iy = oy * sh + ky;
                            if iy < ph || iy - ph >= h {
                                continue;
                            }
                            let dst = &mut plane[(iy - ph) * w..(iy - ph + 1) * w];
                            let src = &row[oy * ow..(oy + 1) * ow];
                            for ox in lo..hi {
                                dst[ox * sw + kx - pw] += src[ox];
                            }
                        }
                    }
                }
            });
    }

    /// The layer's parameters with their gradients: weight, then bias.
    pub fn params_mut(&mut self) -> Vec<Param<'_>> {
        vec![
            Param {
                name: "weight",
                value: &mut self.weight,
                grad: &mut self.grad_weight,
            },
            Param {
                name: "bias",
                value: &mut self.bias,
                grad: &mut self.grad_bias,
            },
        ]
    }
}
