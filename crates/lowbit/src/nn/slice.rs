//! Strided slicing of NCHW tensors along channels, rows and columns (`x[:, c0:c1:cs, y0:y1:ys, x0:x1:xs]`).
use super::shape::{backward_mismatch, chw, nchw, per_task};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// The indices `start, start + step, ...` below `end` of one axis. `end` is clamped to the axis length (so
/// [`AxisSlice::all`] and [`AxisSlice::every`] fit any size); the selection must not be empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisSlice {
    /// First index taken.
    pub start: usize,
    /// End (exclusive), clamped to the axis length.
    pub end: usize,
    /// Distance between taken indices, at least 1.
    pub step: usize,
}

impl AxisSlice {
    /// Indices `start..end` with `step`.
    pub fn new(start: usize, end: usize, step: usize) -> Self {
        Self { start, end, step }
    }

    /// The whole axis.
    pub fn all() -> Self {
        Self::every(1)
    }

    /// Every `step`-th index from 0 (`::step`).
    pub fn every(step: usize) -> Self {
        Self::new(0, usize::MAX, step)
    }

    /// Number of indices taken from an axis of length `n`; an error naming the axis if there are none.
    fn len(&self, axis: &str, n: usize) -> Result<usize> {
        let end = self.end.min(n);
        if self.step == 0 || self.start >= end {
            return Err(Error::Shape(format!(
                "slice: {axis} {}..{} step {} selects nothing from {n}",
                self.start, self.end, self.step
            )));
        }
        Ok((end - self.start).div_ceil(self.step))
    }
}

/// Strided slice of `[B, C, H, W]`: output `[B, C', H', W']` with
/// `y[b, i, j, k] = x[b, c0 + i*cs, y0 + j*ys, x0 + k*xs]`. The gradient is scattered back (zero elsewhere).
#[derive(Debug, Clone)]
pub struct Slice {
    /// Channel selection.
    pub channels: AxisSlice,
    /// Row selection.
    pub rows: AxisSlice,
    /// Column selection.
    pub cols: AxisSlice,
    /// Input shape of the last training forward (empty after an inference forward).
    input_shape: Vec<usize>,
}

impl Slice {
    /// A slice taking `channels`, `rows` and `cols`.
    pub fn new(channels: AxisSlice, rows: AxisSlice, cols: AxisSlice) -> Self {
        Self {
            channels,
            rows,
            cols,
            input_shape: Vec::new(),
        }
    }

    /// Spatial subsampling `x[:, :, ::sh, ::sw]` (the ResNet option-A shortcut's stride).
    pub fn subsample(sh: usize, sw: usize) -> Self {
        Self::new(AxisSlice::all(), AxisSlice::every(sh), AxisSlice::every(sw))
    }

    /// Per-sample output shape `[C', H', W']` for an input of `[C, H, W]`.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let [c, h, w] = chw("slice", input)?;
        Ok(vec![
            self.channels.len("channels", c)?,
            self.rows.len("rows", h)?,
            self.cols.len("columns", w)?,
        ])
    }

    /// Forward pass.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let [b, c, h, w] = nchw("slice", x)?;
        let out = self.output_shape(&[c, h, w])?;
        let (oc, oh, ow) = (out[0], out[1], out[2]);
        let (cs, rs, ks) = (self.channels, self.rows, self.cols);
        // Output elements never exceed input elements, so these products fit.
        let out_sample = oc * oh * ow;
        let mut y = vec![0.0f32; b * out_sample];
        y.par_chunks_mut(out_sample)
            .zip(x.data.par_chunks(c * h * w))
            .with_min_len(per_task(out_sample))
            .for_each(|(ys, xs)| {
                for (i, plane) in ys.chunks_exact_mut(oh * ow).enumerate() {
                    let src = &xs[(cs.start + i * cs.step) * h * w..][..h * w];
                    for (j, row) in plane.chunks_exact_mut(ow).enumerate() {
                        let from = &src[(rs.start + j * rs.step) * w..][..w];
                        for (k, v) in row.iter_mut().enumerate() {
                            *v = from[ks.start + k * ks.step];
                        }
                    }
                }
            });
        self.input_shape.clear();
        if train {
            self.input_shape.clone_from(&x.shape);
        }
        Ok(Tensor::new(y, vec![b, oc, oh, ow]))
    }

    /// Backward pass: the output gradient at the selected positions, zero elsewhere.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        let [b, c, h, w] = self.input_shape[..] else {
            return Err(backward_mismatch("slice", &grad.shape, &[]));
        };
        let out = self.output_shape(&[c, h, w])?;
        if grad.shape[..] != [b, out[0], out[1], out[2]] {
            return Err(backward_mismatch("slice", &grad.shape, &self.input_shape));
        }
        let (oh, ow) = (out[1], out[2]);
        let (cs, rs, ks) = (self.channels, self.rows, self.cols);
        let out_sample = grad.row_len();
        let mut dx = vec![0.0f32; b * c * h * w];
        dx.par_chunks_mut(c * h * w)
            .zip(grad.data.par_chunks(out_sample))
            .with_min_len(per_task(out_sample))
            .for_each(|(ds, gs)| {
                for (i, plane) in gs.chunks_exact(oh * ow).enumerate() {
                    let dst = &mut ds[(cs.start + i * cs.step) * h * w..][..h * w];
                    for (j, row) in plane.chunks_exact(ow).enumerate() {
                        let to = &mut dst[(rs.start + j * rs.step) * w..][..w];
                        for (k, &g) in row.iter().enumerate() {
                            to[ks.start + k * ks.step] = g;
                        }
                    }
                }
            });
        Ok(Tensor::new(dx, self.input_shape.clone()))
    }
}
