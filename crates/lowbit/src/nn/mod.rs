//! Float layers, loss and model specs.
//!
//! A [`Model`] is a graph of [`Node`]s, each running one [`Layer`] on the values it names; each layer caches what
//! its backward pass needs during a training-mode forward pass. Parameters are visited in a fixed order (node
//! order, then weight before bias), which is how [`crate::optim`] keys its per-parameter state.
pub mod activation;
pub mod add;
pub mod batchnorm;
pub mod clip;
pub mod concat;
pub mod conv;
pub mod dense;
pub mod dropout;
pub mod gemm;
pub mod kernels;
pub mod layer;
pub mod loss;
pub mod model;
pub mod pad;
pub mod pool;
pub mod profile;
pub(crate) mod shape;
pub mod slice;
pub mod spec;
pub mod unary;

pub use activation::{Flatten, Relu};
pub use add::Add;
pub use batchnorm::BatchNorm2d;
pub use clip::Clip;
pub use concat::Concat;
pub use conv::Conv2d;
pub use dense::Dense;
pub use dropout::Dropout;
pub use layer::Layer;
pub use loss::{distillation_loss, softmax_cross_entropy, LossOutput};
pub use model::{Model, Node, ValueId};
pub use pad::Pad;
pub use pool::{AvgPool2d, MaxPool2d};
pub use slice::{AxisSlice, Slice};
pub use unary::{LeakyRelu, Unary, UnaryOp};

use crate::tensor::Tensor;

/// A trainable tensor and its gradient, as handed to the optimizer.
#[derive(Debug)]
pub struct Param<'a> {
    /// Short name within its layer (`weight`, `bias`).
    pub name: &'static str,
    /// The values the optimizer updates.
    pub value: &'a mut [f32],
    /// dL/dvalue from the last backward pass.
    pub grad: &'a mut [f32],
}

/// Index of the largest value in each row of a `[B, C]` tensor (lowest index on ties; NaN never wins).
pub fn argmax_rows(logits: &Tensor) -> Vec<usize> {
    crate::eval::argmax_rows(&logits.data, logits.row_len().max(1))
}
