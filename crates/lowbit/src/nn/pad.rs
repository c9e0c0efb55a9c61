//! Zero padding of NCHW tensors, spatially and along the channels.
//!
//! The channel form is the "option A" shortcut of the CIFAR ResNet (He et al. 2016, sec. 4.2): where a stage
//! doubles the channels and halves the resolution, the identity shortcut is subsampled (a strided
//! [`super::Slice`]) and zero-padded to the new channel count, adding no parameters.
use super::shape::{backward_mismatch, chw, elems, nchw, per_task};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Zero padding: `front`/`back` zero planes before/after the channels, `top`/`bottom` zero rows and
/// `left`/`right` zero columns around each plane. The gradient is the output gradient cropped back.
#[derive(Debug, Clone, Default)]
pub struct Pad {
    /// Zero channels before the first.
    pub front: usize,
    /// Zero channels after the last.
    pub back: usize,
    /// Zero rows above each plane.
    pub top: usize,
    /// Zero rows below each plane.
    pub bottom: usize,
    /// Zero columns left of each plane.
    pub left: usize,
    /// Zero columns right of each plane.
    pub right: usize,
    /// Input shape of the last training forward (empty after an inference forward).
    input_shape: Vec<usize>,
}

impl Pad {
    /// Padding of the channels `(front, back)`, rows `(top, bottom)` and columns `(left, right)`.
    pub fn new(channels: (usize, usize), rows: (usize, usize), cols: (usize, usize)) -> Self {
        Self {
            front: channels.0,
            back: channels.1,
            top: rows.0,
            bottom: rows.1,
            left: cols.0,
            right: cols.1,
            input_shape: Vec::new(),
        }
    }

    /// Spatial padding only.
    pub fn spatial(top: usize, bottom: usize, left: usize, right: usize) -> Self {
        Self::new((0, 0), (top, bottom), (left, right))
    }

    /// Channel padding only (the ResNet option-A shortcut).
    pub fn channels(front: usize, back: usize) -> Self {
        Self::new((front, back), (0, 0), (0, 0))
    }

    /// Per-sample output shape `[C + front + back, H + top + bottom, W + left + right]` for `[C, H, W]`.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let [c, h, w] = chw("pad", input)?;
        let grow = |n: usize, a: usize, b: usize| {
            n.checked_add(a)
                .and_then(|n| n.checked_add(b))
                .ok_or_else(|| Error::Shape(format!("pad: padding {a} + {b} of {n} overflows")))
        };
        let out = vec![
            grow(c, self.front, self.back)?,
            grow(h, self.top, self.bottom)?,
            grow(w, self.left, self.right)?,
        ];
        elems("pad", &out)?;
        Ok(out)
    }

    /// Forward pass: the input inside a zero border.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let [b, c, h, w] = nchw("pad", x)?;
        let out = self.output_shape(&[c, h, w])?;
        let out_sample = elems("pad", &out)?;
        let (oh, ow) = (out[1], out[2]);
        let total = b
            .checked_mul(out_sample)
            .ok_or_else(|| Error::Shape(format!("pad: output of {b} x {out:?} is too large")))?;
        let mut y = vec![0.0f32; total];
        let in_sample = c * h * w;
        y.par_chunks_mut(out_sample.max(1))
            .zip(x.data.par_chunks(in_sample.max(1)))
            .with_min_len(per_task(out_sample))
            .for_each(|(ys, xs)| {
                for (ci, plane) in xs.chunks_exact(h * w).enumerate() {
                    let dst = &mut ys[(self.front + ci) * oh * ow..][..oh * ow];
                    for (iy, row) in plane.chunks_exact(w).enumerate() {
                        dst[(self.top + iy) * ow + self.left..][..w].copy_from_slice(row);
                    }
                }
            });
        self.input_shape.clear();
        if train {
            self.input_shape.clone_from(&x.shape);
        }
        let mut shape = vec![b];
        shape.extend(out);
        Ok(Tensor::new(y, shape))
    }

    /// Backward pass: the output gradient without the padded border.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        let [b, c, h, w] = self.input_shape[..] else {
            return Err(backward_mismatch("pad", &grad.shape, &[]));
        };
        let out = self.output_shape(&[c, h, w])?;
        if grad.shape[..] != [b, out[0], out[1], out[2]] {
            return Err(backward_mismatch("pad", &grad.shape, &self.input_shape));
        }
        let (oh, ow) = (out[1], out[2]);
        let out_sample = grad.row_len();
        let mut dx = vec![0.0f32; b * c * h * w];
        dx.par_chunks_mut((c * h * w).max(1))
            .zip(grad.data.par_chunks(out_sample.max(1)))
            .with_min_len(per_task(out_sample))
            .for_each(|(ds, gs)| {
                for (ci, plane) in ds.chunks_exact_mut(h * w).enumerate() {
                    let src = &gs[(self.front + ci) * oh * ow..][..oh * ow];
                    for (iy, row) in plane.chunks_exact_mut(w).enumerate() {
                        row.copy_from_slice(&src[(self.top + iy) * ow + self.left..][..w]);
                    }
                }
            });
        Ok(Tensor::new(dx, self.input_shape.clone()))
    }
}
