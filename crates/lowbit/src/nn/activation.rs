//! Parameter-free layers: ReLU and Flatten.
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Rectified linear unit, `max(x, 0)`; the gradient at exactly 0 is taken as 0. NaN passes through (as in
/// PyTorch), so a poisoned input shows up as a non-finite loss instead of silently becoming 0.
#[derive(Debug, Clone, Default)]
pub struct Relu {
    /// Output of the last training forward pass (positive exactly where the gradient passes).
    output: Tensor,
}

impl Relu {
    /// A ReLU layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forward pass; caches the output in training mode.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        let data: Vec<f32> = x
            .data
            .iter()
            .map(|&v| if v < 0.0 { 0.0 } else { v })
            .collect();
        let y = Tensor::new(data, x.shape.clone());
        if train {
            self.output.data.clear();
            self.output.data.extend_from_slice(&y.data);
            self.output.shape.clone_from(&y.shape);
        }
        y
    }

    /// Backward pass: passes the gradient where the output was positive.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        if grad.shape != self.output.shape {
            return Err(Error::Shape(format!(
                "relu: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.output.shape
            )));
        }
        let data = grad
            .data
            .iter()
            .zip(&self.output.data)
            .map(|(&g, &y)| if y > 0.0 { g } else { 0.0 })
            .collect();
        Ok(Tensor::new(data, grad.shape.clone()))
    }
}

/// Reshapes `[B, d1, d2, ...]` to `[B, d1 * d2 * ...]`.
#[derive(Debug, Clone, Default)]
pub struct Flatten {
    /// Input shape of the last forward pass, restored on backward.
    input_shape: Vec<usize>,
}

impl Flatten {
    /// A flatten layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forward pass.
    pub fn forward(&mut self, x: &Tensor) -> Tensor {
        self.input_shape.clone_from(&x.shape);
        Tensor::new(x.data.clone(), vec![x.rows(), x.row_len()])
    }

    /// Backward pass: the gradient reshaped back to the input shape.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        if grad.len() != self.input_shape.iter().product::<usize>() {
            return Err(Error::Shape(format!(
                "flatten: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.input_shape
            )));
        }
        Ok(Tensor::new(grad.data.clone(), self.input_shape.clone()))
    }
}
