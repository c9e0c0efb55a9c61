//! Concatenation along the channel axis (axis 1 of `[B, C, ...]`).
use super::shape::{arity, backward_mismatch, batched, elems, per_task};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Joins `N >= 1` inputs `[B, C_i, ...]` with equal batch and trailing dimensions into `[B, sum C_i, ...]`, in
/// input order. The gradient of each input is its channel range of the output gradient.
#[derive(Debug, Clone, Default)]
pub struct Concat {
    /// Input shapes of the last training forward (empty after an inference forward).
    input_shapes: Vec<Vec<usize>>,
    /// Output shape of the last training forward.
    output_shape: Vec<usize>,
}

/// The output shape for `shapes` (full or per-sample: `axis` is the channel axis), or an error naming the
/// first input that does not fit the first.
fn joined(shapes: &[&[usize]], axis: usize) -> Result<Vec<usize>> {
    arity("concat", shapes.len(), 1, false)?;
    let first = shapes[0];
    if first.len() <= axis {
        return Err(Error::Shape(format!(
            "concat: input 0 of shape {first:?} has no channel axis"
        )));
    }
    let mut out = first.to_vec();
    for (i, s) in shapes.iter().enumerate().skip(1) {
        let fits = s.len() == first.len()
            && s[..axis] == first[..axis]
            && s[axis + 1..] == first[axis + 1..];
        if !fits {
            return Err(Error::Shape(format!(
                "concat: input {i} of shape {s:?} does not match input 0 of shape {first:?} outside the channel axis"
            )));
        }
        out[axis] = out[axis]
            .checked_add(s[axis])
            .ok_or_else(|| Error::Shape("concat: too many channels".into()))?;
    }
    elems("concat", &out)?;
    Ok(out)
}

impl Concat {
    /// A channel concatenation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Per-sample output shape: inputs `[C_i, ...]` with equal trailing dimensions give `[sum C_i, ...]`.
    pub fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        joined(inputs, 0)
    }

    /// Forward pass: the inputs side by side along the channel axis.
    pub fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        for x in inputs {
            batched("concat", x)?;
        }
        let shapes: Vec<&[usize]> = inputs.iter().map(|x| &x.shape[..]).collect();
        let out_shape = joined(&shapes, 1)?;
        let b = out_shape[0];
        let out_sample = out_shape[1..].iter().product::<usize>();
        let mut y = vec![0.0f32; b * out_sample];
        y.par_chunks_mut(out_sample.max(1))
            .enumerate()
            .with_min_len(per_task(out_sample))
            .for_each(|(s, ys)| {
                let mut at = 0;
                for x in inputs {
                    let n = x.row_len();
                    ys[at..at + n].copy_from_slice(&x.data[s * n..(s + 1) * n]);
                    at += n;
                }
            });
        self.input_shapes.clear();
        self.output_shape.clear();
        if train {
            self.input_shapes = inputs.iter().map(|x| x.shape.clone()).collect();
            self.output_shape.clone_from(&out_shape);
        }
        Ok(Tensor::new(y, out_shape))
    }

    /// Backward pass: each input's channel range of `grad`, in input order.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Vec<Tensor>> {
        if self.output_shape.is_empty() || grad.shape != self.output_shape {
            return Err(backward_mismatch("concat", &grad.shape, &self.output_shape));
        }
        let out_sample = grad.row_len();
        let mut at = 0;
        let mut grads = Vec::with_capacity(self.input_shapes.len());
        for shape in &self.input_shapes {
            let n: usize = shape[1..].iter().product();
            let mut d = vec![0.0f32; shape[0] * n];
            d.par_chunks_mut(n.max(1))
                .zip(grad.data.par_chunks(out_sample.max(1)))
                .with_min_len(per_task(n))
                .for_each(|(ds, gs)| ds.copy_from_slice(&gs[at..at + n]));
            at += n;
            grads.push(Tensor::new(d, shape.clone()));
        }
        Ok(grads)
    }
}
