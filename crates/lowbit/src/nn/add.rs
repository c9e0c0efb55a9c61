//! Element-wise sum of two tensors of one shape: the residual connection `y = a + b`.
use super::activation::reshape_buffer;
use super::shape::{arity, backward_mismatch, batched, per_task};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// `y = a + b` for two inputs of the same shape (any rank, batch first). The gradient of each input is the
/// output gradient.
#[derive(Debug, Clone, Default)]
pub struct Add {
    /// Shape of the last training forward (empty after an inference forward).
    shape: Vec<usize>,
    /// Output of the last [`Add::forward_buffered`], reused from step to step.
    output: Tensor,
}

impl Add {
    /// A residual sum.
    pub fn new() -> Self {
        Self::default()
    }

    /// Per-sample output shape: the shape both inputs share.
    pub fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        arity("add", inputs.len(), 2, true)?;
        if inputs[0] != inputs[1] {
            return Err(Error::Shape(format!(
                "add: input shapes {:?} and {:?} differ",
                inputs[0], inputs[1]
            )));
        }
        Ok(inputs[0].to_vec())
    }

    /// Forward pass: `inputs[0] + inputs[1]`.
    pub fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        self.forward_buffered(inputs, train)?;
        Ok(self.output.clone())
    }

    /// The output of the last [`Add::forward_buffered`].
    pub(crate) fn output(&self) -> &Tensor {
        &self.output
    }

    /// [`Add::forward`] into the layer's output buffer: no allocation (and no page faults on fresh memory) at
    /// each step.
    pub(crate) fn forward_buffered(&mut self, inputs: &[&Tensor], train: bool) -> Result<()> {
        arity("add", inputs.len(), 2, true)?;
        let (a, b) = (inputs[0], inputs[1]);
        batched("add", a)?;
        batched("add", b)?;
        if a.shape != b.shape {
            return Err(Error::Shape(format!(
                "add: input shapes {:?} and {:?} differ",
                a.shape, b.shape
            )));
        }
        // Every element is written below.
        reshape_buffer(&mut self.output, &a.shape);
        // ~16K elements per rayon job (units of one element).
        let chunk = per_task(1);
        self.output
            .data
            .par_chunks_mut(chunk)
            .zip(a.data.par_chunks(chunk).zip(b.data.par_chunks(chunk)))
            .for_each(|(y, (a, b))| {
                for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
                    *o = u + v;
                }
            });
        self.shape.clear();
        if train {
            self.shape.extend_from_slice(&a.shape);
        }
        Ok(())
    }

    /// Backward pass: the output gradient for each of the two inputs, in input order.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Vec<Tensor>> {
        self.check_grad(grad)?;
        Ok(vec![grad.clone(), grad.clone()])
    }

    /// Whether `grad` fits the last training forward (what [`Add::backward`] checks; a graph that hands the
    /// output gradient straight to both inputs checks this instead).
    pub(crate) fn check_grad(&self, grad: &Tensor) -> Result<()> {
        if self.shape.is_empty() || grad.shape != self.shape {
            return Err(backward_mismatch("add", &grad.shape, &self.shape));
        }
        Ok(())
    }
}
