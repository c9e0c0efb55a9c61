//! Parameter-free layers: ReLU and Flatten.
//!
//! Like every layer in [`super`], they write their output and their input gradient into buffers they own and
//! reuse from step to step (see [`super::Model::forward`]); the `forward` / `backward` methods that return a
//! [`Tensor`] copy out of those buffers.
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Sets `t` to `shape` with `len` elements, reusing its storage; the old contents are left in place.
pub(crate) fn reshape_buffer(t: &mut Tensor, shape: &[usize]) {
    let len = shape.iter().product();
    t.data.resize(len, 0.0);
    t.shape.clear();
    t.shape.extend_from_slice(shape);
}

/// Rectified linear unit, `max(x, 0)`; the gradient at exactly 0 is taken as 0. NaN passes through (as in
/// PyTorch), so a poisoned input shows up as a non-finite loss instead of silently becoming 0.
#[derive(Debug, Clone, Default)]
pub struct Relu {
    /// Output of the last forward pass (positive exactly where the gradient passes).
    output: Tensor,
    /// dL/dinput of the last backward pass.
    input_grad: Tensor,
}

impl Relu {
    /// A ReLU layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Per-sample output shape: the input's.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }

    /// Forward pass into the layer's output buffer (which backward reads).
    pub(crate) fn forward_buffered(&mut self, x: &Tensor) {
        reshape_buffer(&mut self.output, &x.shape);
        for (y, &v) in self.output.data.iter_mut().zip(&x.data) {
            *y = if v < 0.0 { 0.0 } else { v };
        }
    }

    /// The output of the last forward pass.
    pub(crate) fn output(&self) -> &Tensor {
        &self.output
    }

    /// Forward pass; the output is also kept for backward.
    pub fn forward(&mut self, x: &Tensor, _train: bool) -> Tensor {
        self.forward_buffered(x);
        self.output.clone()
    }

    /// Backward pass into the layer's input-gradient buffer.
    pub(crate) fn backward_buffered(&mut self, grad: &Tensor) -> Result<()> {
        if grad.shape != self.output.shape {
            return Err(Error::Shape(format!(
                "relu: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.output.shape
            )));
        }
        reshape_buffer(&mut self.input_grad, &grad.shape);
        for ((d, &g), &y) in self
            .input_grad
            .data
            .iter_mut()
            .zip(&grad.data)
            .zip(&self.output.data)
        {
            *d = if y > 0.0 { g } else { 0.0 };
        }
        Ok(())
    }

    /// dL/dinput of the last backward pass.
    pub(crate) fn input_grad(&self) -> &Tensor {
        &self.input_grad
    }

    /// Backward pass: passes the gradient where the output was positive.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        self.backward_buffered(grad)?;
        Ok(self.input_grad.clone())
    }
}

/// Reshapes `[B, d1, d2, ...]` to `[B, d1 * d2 * ...]`.
#[derive(Debug, Clone, Default)]
pub struct Flatten {
    /// Input shape of the last forward pass, restored on backward.
    input_shape: Vec<usize>,
    /// Output of the last forward pass.
    output: Tensor,
    /// dL/dinput of the last backward pass.
    input_grad: Tensor,
}

impl Flatten {
    /// A flatten layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Per-sample output shape: `[d1 * d2 * ...]` for `[d1, d2, ...]`.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(vec![super::shape::elems("flatten", input)?])
    }

    /// Forward pass into the layer's output buffer.
    pub(crate) fn forward_buffered(&mut self, x: &Tensor) {
        self.input_shape.clone_from(&x.shape);
        reshape_buffer(&mut self.output, &[x.rows(), x.row_len()]);
        self.output.data.copy_from_slice(&x.data);
    }

    /// The output of the last forward pass.
    pub(crate) fn output(&self) -> &Tensor {
        &self.output
    }

    /// Forward pass.
    pub fn forward(&mut self, x: &Tensor) -> Tensor {
        self.forward_buffered(x);
        self.output.clone()
    }

    /// Backward pass into the layer's input-gradient buffer.
    pub(crate) fn backward_buffered(&mut self, grad: &Tensor) -> Result<()> {
        if grad.len() != self.input_shape.iter().product::<usize>() {
            return Err(Error::Shape(format!(
                "flatten: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.input_shape
            )));
        }
        reshape_buffer(&mut self.input_grad, &self.input_shape);
        self.input_grad.data.copy_from_slice(&grad.data);
        Ok(())
    }

    /// dL/dinput of the last backward pass.
    pub(crate) fn input_grad(&self) -> &Tensor {
        &self.input_grad
    }

    /// Backward pass: the gradient reshaped back to the input shape.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        self.backward_buffered(grad)?;
        Ok(self.input_grad.clone())
    }
}
