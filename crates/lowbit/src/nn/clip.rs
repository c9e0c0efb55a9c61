//! Clipping activation `min(max(x, min), max)`; ReLU6 (MobileNet v2) is `Clip(0, 6)`.
use super::shape::{backward_mismatch, batched, per_task};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// `y = clamp(x, min, max)`. The gradient passes where `min < x < max` and is 0 elsewhere, the bounds included
/// (as ReLU's gradient at 0 is 0 here, and as PyTorch's `hardtanh` backward does): a value sitting exactly on a
/// bound is clipped, so moving it further out changes nothing. NaN passes through the forward (a poisoned
/// input stays visible) and gets gradient 0.
#[derive(Debug, Clone)]
pub struct Clip {
    /// Lower bound.
    pub min: f32,
    /// Upper bound.
    pub max: f32,
    /// Output of the last training forward: strictly inside the bounds exactly where the gradient passes.
    output: Tensor,
}

impl Clip {
    /// Clipping to `[min, max]`; rejects NaN bounds and `min >= max` (infinite bounds are allowed).
    pub fn new(min: f32, max: f32) -> Result<Self> {
        if min.is_nan() || max.is_nan() || min >= max {
            return Err(Error::option(
                "clip",
                format!("bounds [{min}, {max}] are not an interval (need min < max)"),
            ));
        }
        Ok(Self {
            min,
            max,
            output: Tensor::default(),
        })
    }

    /// ReLU6, `Clip(0, 6)`.
    pub fn relu6() -> Self {
        Self {
            min: 0.0,
            max: 6.0,
            output: Tensor::default(),
        }
    }

    /// Per-sample output shape: the input's.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }

    /// Forward pass; in training the output is kept for backward.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        batched("clip", x)?;
        let (lo, hi) = (self.min, self.max);
        let mut y = vec![0.0f32; x.len()];
        let chunk = per_task(1);
        y.par_chunks_mut(chunk)
            .zip(x.data.par_chunks(chunk))
            .for_each(|(ys, xs)| {
                for (o, &v) in ys.iter_mut().zip(xs) {
                    // Comparisons, not f32::clamp: NaN must pass through unchanged.
                    *o = if v < lo {
                        lo
                    } else if v > hi {
                        hi
                    } else {
                        v
                    };
                }
            });
        let y = Tensor::new(y, x.shape.clone());
        self.output = if train { y.clone() } else { Tensor::default() };
        Ok(y)
    }

    /// Backward pass: the gradient where the last training input was strictly inside `(min, max)`, else 0.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        if self.output.shape.is_empty() || grad.shape != self.output.shape {
            return Err(backward_mismatch("clip", &grad.shape, &self.output.shape));
        }
        let (lo, hi) = (self.min, self.max);
        let mut dx = vec![0.0f32; grad.len()];
        let chunk = per_task(1);
        dx.par_chunks_mut(chunk)
            .zip(
                grad.data
                    .par_chunks(chunk)
                    .zip(self.output.data.par_chunks(chunk)),
            )
            .for_each(|(ds, (gs, ys))| {
                for ((d, &g), &y) in ds.iter_mut().zip(gs).zip(ys) {
                    *d = if y > lo && y < hi { g } else { 0.0 };
                }
            });
        Ok(Tensor::new(dx, grad.shape.clone()))
    }
}
