//! Pooling over NCHW planes without padding: max (with an argmax cache), average, and global average.
use super::conv::window_len;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

fn spatial(name: &str, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    match x.shape[..] {
        [b, c, h, w] if x.len() == b * c * h * w => Ok((b, c, h, w)),
        _ => Err(Error::Shape(format!(
            "{name}: input shape {:?} is not [B, C, H, W]",
            x.shape
        ))),
    }
}

fn out_hw(
    name: &str,
    h: usize,
    w: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
) -> Result<(usize, usize)> {
    match (
        window_len(h, kernel.0, stride.0, 0),
        window_len(w, kernel.1, stride.1, 0),
    ) {
        (Some(oh), Some(ow)) => Ok((oh, ow)),
        _ => Err(Error::Shape(format!(
            "{name}: window {kernel:?} stride {stride:?} does not fit a {h}x{w} input"
        ))),
    }
}

/// Planes per rayon job: about 16K input elements, so a job (~10 us) outweighs rayon's per-job cost (~1 us)
/// instead of one 28x28 plane per job.
fn planes_per_task(plane_elems: usize) -> usize {
    (16 * 1024 / plane_elems.max(1)).max(1)
}

/// Whether `v` replaces the current maximum `best`: larger, or NaN over a number so a poisoned input stays
/// visible. Ties keep the earlier element (row-major), which receives the gradient.
#[inline]
fn beats(v: f32, best: f32) -> bool {
    (v > best) | (v.is_nan() & !best.is_nan())
}

/// 2x2 windows with stride 2 (LeNet and VGG pooling): same results as the general loop, without its index
/// arithmetic per element. `args` is empty in inference.
fn max_plane_2x2(plane: &[f32], w: usize, oh: usize, ow: usize, out: &mut [f32], args: &mut [u32]) {
    for oy in 0..oh {
        let r0 = &plane[2 * oy * w..2 * oy * w + 2 * ow];
        let r1 = &plane[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * ow];
        let o = &mut out[oy * ow..(oy + 1) * ow];
        for ox in 0..ow {
            // Selects, not branches: on real activations the winner is unpredictable, and mispredicted
            // branches made this loop ~15 cycles per output.
            let cand = [r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]];
            let (mut best, mut at) = (cand[0], 0usize);
            for (i, &v) in cand.iter().enumerate().skip(1) {
                let take = beats(v, best);
                best = if take { v } else { best };
                at = if take { i } else { at };
            }
            o[ox] = best;
            if let Some(a) = args.get_mut(oy * ow + ox) {
                *a = ((2 * oy + at / 2) * w + 2 * ox + at % 2) as u32;
            }
        }
    }
}

/// Max pooling. The gradient goes to the first maximum of each window (row-major order).
#[derive(Debug, Clone)]
pub struct MaxPool2d {
    /// Window (rows, cols).
    pub kernel: (usize, usize),
    /// Stride (rows, cols).
    pub stride: (usize, usize),
    /// Index within its input plane of each output's maximum (last training forward).
    argmax: Vec<u32>,
    input_shape: Vec<usize>,
}

impl MaxPool2d {
    /// Max pooling with the given window and stride.
    pub fn new(kernel: (usize, usize), stride: (usize, usize)) -> Self {
        Self {
            kernel,
            stride,
            argmax: Vec::new(),
            input_shape: Vec::new(),
        }
    }

    /// Forward pass; caches the argmax positions in training mode.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c, h, w) = spatial("maxpool2d", x)?;
        let (oh, ow) = out_hw("maxpool2d", h, w, self.kernel, self.stride)?;
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let op = oh * ow;
        let mut y = vec![0.0f32; b * c * op];
        let mut arg = vec![0u32; if train { b * c * op } else { 0 }];
        let work = |plane: &[f32], out: &mut [f32], args: &mut [u32]| {
            if (kh, kw, sh, sw) == (2, 2, 2, 2) {
                max_plane_2x2(plane, w, oh, ow, out, args);
                return;
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best = oy * sh * w + ox * sw;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let i = (oy * sh + ky) * w + ox * sw + kx;
                            if beats(plane[i], plane[best]) {
                                best = i;
                            }
                        }
                    }
                    out[oy * ow + ox] = plane[best];
                    if let Some(a) = args.get_mut(oy * ow + ox) {
                        *a = best as u32;
                    }
                }
            }
        };
        let per_task = planes_per_task(h * w);
        if train {
            x.data
                .par_chunks(h * w)
                .zip(y.par_chunks_mut(op).zip(arg.par_chunks_mut(op)))
                .with_min_len(per_task)
                .for_each(|(plane, (out, args))| work(plane, out, args));
            self.argmax = arg;
            self.input_shape.clone_from(&x.shape);
        } else {
            x.data
                .par_chunks(h * w)
                .zip(y.par_chunks_mut(op))
                .with_min_len(per_task)
                .for_each(|(plane, out)| work(plane, out, &mut []));
        }
        Ok(Tensor::new(y, vec![b, c, oh, ow]))
    }

    /// Backward pass: each output gradient goes to its window's maximum.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        let [b, c, h, w] = self.input_shape[..] else {
            return Err(Error::Shape(
                "maxpool2d: backward without a training forward pass".into(),
            ));
        };
        if grad.len() != self.argmax.len() || grad.rows() != b {
            return Err(Error::Shape(format!(
                "maxpool2d: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.input_shape
            )));
        }
        let op = grad.len() / (b * c).max(1);
        let mut dx = vec![0.0f32; b * c * h * w];
        dx.par_chunks_mut(h * w)
            .zip(grad.data.par_chunks(op).zip(self.argmax.par_chunks(op)))
            .with_min_len(planes_per_task(h * w))
            .for_each(|(plane, (g, a))| {
                for (&gv, &i) in g.iter().zip(a) {
                    plane[i as usize] += gv;
                }
            });
        Ok(Tensor::new(dx, self.input_shape.clone()))
    }
}

/// Average pooling (no padding); `global` pools each whole plane to 1x1 whatever its size.
#[derive(Debug, Clone)]
pub struct AvgPool2d {
    /// Window (rows, cols); ignored when `global`.
    pub kernel: (usize, usize),
    /// Stride (rows, cols); ignored when `global`.
    pub stride: (usize, usize),
    /// Global average pooling: the window is the whole input plane.
    pub global: bool,
    input_shape: Vec<usize>,
}

impl AvgPool2d {
    /// Average pooling with the given window and stride.
    pub fn new(kernel: (usize, usize), stride: (usize, usize)) -> Self {
        Self {
            kernel,
            stride,
            global: false,
            input_shape: Vec::new(),
        }
    }

    /// Global average pooling: `[B, C, H, W] -> [B, C, 1, 1]`.
    pub fn global() -> Self {
        Self {
            kernel: (1, 1),
            stride: (1, 1),
            global: true,
            input_shape: Vec::new(),
        }
    }

    /// Window and stride for an input of (h, w).
    pub fn window_for(&self, h: usize, w: usize) -> ((usize, usize), (usize, usize)) {
        if self.global {
            ((h, w), (h.max(1), w.max(1)))
        } else {
            (self.kernel, self.stride)
        }
    }

    /// Forward pass.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c, h, w) = spatial("avgpool2d", x)?;
        let (kernel, stride) = self.window_for(h, w);
        let (oh, ow) = out_hw("avgpool2d", h, w, kernel, stride)?;
        let inv = 1.0 / (kernel.0 * kernel.1) as f32;
        let op = oh * ow;
        let mut y = vec![0.0f32; b * c * op];
        x.data
            .par_chunks(h * w)
            .zip(y.par_chunks_mut(op))
            .with_min_len(planes_per_task(h * w))
            .for_each(|(plane, out)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0.0f32;
                        for ky in 0..kernel.0 {
                            let r = (oy * stride.0 + ky) * w + ox * stride.1;
                            s += plane[r..r + kernel.1].iter().sum::<f32>();
                        }
                        out[oy * ow + ox] = s * inv;
                    }
                }
            });
        if train {
            self.input_shape.clone_from(&x.shape);
        }
        Ok(Tensor::new(y, vec![b, c, oh, ow]))
    }

    /// Backward pass: each output gradient is spread evenly over its window.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        let [b, c, h, w] = self.input_shape[..] else {
            return Err(Error::Shape(
                "avgpool2d: backward without a training forward pass".into(),
            ));
        };
        let (kernel, stride) = self.window_for(h, w);
        let (oh, ow) = out_hw("avgpool2d", h, w, kernel, stride)?;
        if grad.shape != [b, c, oh, ow] {
            return Err(Error::Shape(format!(
                "avgpool2d: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.input_shape
            )));
        }
        let inv = 1.0 / (kernel.0 * kernel.1) as f32;
        let mut dx = vec![0.0f32; b * c * h * w];
        dx.par_chunks_mut(h * w)
            .zip(grad.data.par_chunks(oh * ow))
            .with_min_len(planes_per_task(h * w))
            .for_each(|(plane, g)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let v = g[oy * ow + ox] * inv;
                        for ky in 0..kernel.0 {
                            let r = (oy * stride.0 + ky) * w + ox * stride.1;
                            for d in &mut plane[r..r + kernel.1] {
                                *d += v;
                            }
                        }
                    }
                }
            });
        Ok(Tensor::new(dx, self.input_shape.clone()))
    }
}
