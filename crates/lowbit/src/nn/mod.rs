//! Float layers, loss and model specs.
//!
//! A [`Model`] is a flat list of [`Layer`]s run in order; each layer caches what its backward pass needs during a
//! training-mode forward pass. Parameters are visited in a fixed order (layer order, then weight before bias),
//! which is how [`crate::optim`] keys its per-parameter state.
pub mod activation;
pub mod batchnorm;
pub mod conv;
pub mod dense;
pub mod dropout;
pub mod gemm;
pub mod kernels;
pub mod loss;
pub mod pool;
pub mod spec;

pub use activation::{Flatten, Relu};
pub use batchnorm::BatchNorm2d;
pub use conv::Conv2d;
pub use dense::Dense;
pub use dropout::Dropout;
pub use loss::{softmax_cross_entropy, LossOutput};
pub use pool::{AvgPool2d, MaxPool2d};

use crate::error::{Error, Result};
use crate::quant::ActQuantizer;
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

/// One layer of a [`Model`]; every kind has the same forward / backward / params contract. Spatial layers work
/// on NCHW tensors `[B, C, H, W]`.
#[derive(Debug, Clone)]
pub enum Layer {
    /// Fully connected.
    Dense(Dense),
    /// ReLU activation.
    Relu(Relu),
    /// Activation fake-quantizer (QAT).
    ActQuant(ActQuantizer),
    /// Flatten to `[B, features]`.
    Flatten(Flatten),
    /// 2-D convolution.
    Conv2d(Conv2d),
    /// Max pooling.
    MaxPool2d(MaxPool2d),
    /// Average pooling (or global average pooling).
    AvgPool2d(AvgPool2d),
    /// Batch normalization over channels.
    BatchNorm2d(BatchNorm2d),
    /// Inverted dropout (identity in inference).
    Dropout(Dropout),
}

impl Layer {
    /// Forward pass; `train` makes the layer cache what backward needs (and update statistics).
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Layer::Dense(l) => l.forward(x, train),
            Layer::Relu(l) => Ok(l.forward(x, train)),
            Layer::ActQuant(q) => Ok(q.forward(x, train)),
            Layer::Flatten(l) => Ok(l.forward(x)),
            Layer::Conv2d(l) => l.forward(x, train),
            Layer::MaxPool2d(l) => l.forward(x, train),
            Layer::AvgPool2d(l) => l.forward(x, train),
            Layer::BatchNorm2d(l) => l.forward(x, train),
            Layer::Dropout(l) => Ok(l.forward(x, train)),
        }
    }

    /// Backward pass: stores parameter gradients, returns dL/dinput.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        self.backward_impl(grad, true)
    }

    /// Like [`Layer::backward`], but may skip computing dL/dinput (returning an empty tensor) when the caller
    /// does not need it.
    fn backward_impl(&mut self, grad: &Tensor, need_input_grad: bool) -> Result<Tensor> {
        match self {
            Layer::Dense(l) => l.backward_impl(grad, need_input_grad),
            Layer::Relu(l) => l.backward(grad),
            Layer::ActQuant(q) => Ok(q.backward(grad)),
            Layer::Flatten(l) => l.backward(grad),
            Layer::Conv2d(l) => l.backward_impl(grad, need_input_grad),
            Layer::MaxPool2d(l) => l.backward(grad),
            Layer::AvgPool2d(l) => l.backward(grad),
            Layer::BatchNorm2d(l) => l.backward(grad),
            Layer::Dropout(l) => l.backward(grad),
        }
    }

    /// The layer's trainable parameters with their gradients (empty for parameter-free layers).
    pub fn params_mut(&mut self) -> Vec<Param<'_>> {
        match self {
            Layer::Dense(l) => l.params_mut(),
            Layer::Conv2d(l) => l.params_mut(),
            Layer::BatchNorm2d(l) => l.params_mut(),
            Layer::MaxPool2d(_) | Layer::AvgPool2d(_) | Layer::Dropout(_) => Vec::new(),
            // Learned quantizer parameters (LSQ step, PACT alpha); empty for the EMA and input quantizers.
            Layer::ActQuant(q) => q.params_mut(),
            Layer::Relu(_) | Layer::Flatten(_) => Vec::new(),
        }
    }

    /// Number of trainable scalars.
    pub fn param_count(&self) -> usize {
        match self {
            Layer::Dense(l) => l.weight.len() + l.bias.len(),
            Layer::Conv2d(l) => l.weight.len() + l.bias.len(),
            Layer::BatchNorm2d(l) => l.gamma.len() + l.beta.len(),
            Layer::MaxPool2d(_) | Layer::AvgPool2d(_) | Layer::Dropout(_) => 0,
            Layer::Relu(_) | Layer::ActQuant(_) | Layer::Flatten(_) => 0,
        }
    }

    /// Short kind name, for summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Dense(_) => "dense",
            Layer::Relu(_) => "relu",
            Layer::ActQuant(_) => "act_quant",
            Layer::Flatten(_) => "flatten",
            Layer::Conv2d(_) => "conv2d",
            Layer::MaxPool2d(_) => "maxpool2d",
            Layer::AvgPool2d(_) => "avgpool2d",
            Layer::BatchNorm2d(_) => "batchnorm2d",
            Layer::Dropout(_) => "dropout",
        }
    }
}

/// A feed-forward classifier: layers in order, images in, logits out.
#[derive(Debug, Clone)]
pub struct Model {
    /// The layers, run first to last.
    pub layers: Vec<Layer>,
    /// Input shape of one sample, (C, H, W).
    pub input_shape: [usize; 3],
    /// Number of output classes (logits per sample).
    pub classes: usize,
    /// The spec string the model was built from (e.g. `mlp:784-64-10`).
    pub spec: String,
}

impl Model {
    /// Builds a model from a spec string (see [`spec::from_spec`]), initialised from `seed`.
    pub fn from_spec(spec: &str, seed: u64) -> Result<Model> {
        spec::from_spec(spec, seed)
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let sample: usize = self.input_shape.iter().product();
        if x.shape.len() < 2 || x.row_len() != sample || x.len() != x.rows() * sample {
            return Err(Error::Shape(format!(
                "model {} expects [B, {}, {}, {}] (or [B, {sample}]), got {:?}",
                self.spec, self.input_shape[0], self.input_shape[1], self.input_shape[2], x.shape
            )));
        }
        Ok(())
    }

    /// Logits `[B, classes]` for a batch `[B, C, H, W]` (or `[B, C*H*W]`).
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let mut layers = self.layers.iter_mut();
        let Some(first) = layers.next() else {
            return Ok(x.clone());
        };
        // Spatial layers need NCHW; a flat `[B, C*H*W]` batch is the same data in that order.
        let reshaped;
        let x = if x.shape.len() == 2 && !matches!(first, Layer::Dense(_)) {
            let [c, h, w] = self.input_shape;
            reshaped = Tensor::new(x.data.clone(), vec![x.rows(), c, h, w]);
            &reshaped
        } else {
            x
        };
        let mut h = first.forward(x, train)?;
        for layer in layers {
            h = layer.forward(&h, train)?;
        }
        Ok(h)
    }

    /// Backward pass from dL/dlogits, storing every parameter's gradient. The input gradient is not computed
    /// (nothing before the first layer needs it), which saves the largest product of an MLP.
    pub fn backward(&mut self, grad_logits: &Tensor) -> Result<()> {
        // Layers before (and including) the first one with parameters need no input gradient.
        let first_param = self
            .layers
            .iter_mut()
            .position(|l| !l.params_mut().is_empty())
            .unwrap_or(self.layers.len());
        let mut g = grad_logits.clone();
        for (i, layer) in self.layers.iter_mut().enumerate().rev() {
            if i < first_param {
                break;
            }
            g = layer.backward_impl(&g, i > first_param)?;
        }
        Ok(())
    }

    /// Backward pass that also returns dL/dinput (for gradient checks and input attributions).
    pub fn backward_with_input_grad(&mut self, grad_logits: &Tensor) -> Result<Tensor> {
        let mut g = grad_logits.clone();
        for layer in self.layers.iter_mut().rev() {
            g = layer.backward(&g)?;
        }
        Ok(g)
    }

    /// Arg-max class per sample (inference mode; ties go to the lowest index).
    pub fn predict(&mut self, x: &Tensor) -> Result<Vec<usize>> {
        let logits = self.forward(x, false)?;
        Ok(argmax_rows(&logits))
    }

    /// All trainable parameters with their gradients, in the optimizer's visit order.
    pub fn params_mut(&mut self) -> Vec<Param<'_>> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.params_mut())
            .collect()
    }

    /// Total number of trainable scalars.
    pub fn param_count(&self) -> usize {
        self.layers.iter().map(Layer::param_count).sum()
    }

    /// A copy of every parameter tensor, in visit order (see [`Model::restore`]).
    pub fn snapshot(&mut self) -> Vec<Vec<f32>> {
        self.params_mut().iter().map(|p| p.value.to_vec()).collect()
    }

    /// Writes back a [`Model::snapshot`] of this model.
    pub fn restore(&mut self, snapshot: &[Vec<f32>]) -> Result<()> {
        let mut params = self.params_mut();
        if params.len() != snapshot.len()
            || params
                .iter()
                .zip(snapshot)
                .any(|(p, s)| p.value.len() != s.len())
        {
            return Err(Error::Shape(
                "snapshot does not match the model's parameters".into(),
            ));
        }
        for (p, s) in params.iter_mut().zip(snapshot) {
            p.value.copy_from_slice(s);
        }
        Ok(())
    }
}

/// Index of the largest value in each row of a `[B, C]` tensor (lowest index on ties; NaN never wins).
pub fn argmax_rows(logits: &Tensor) -> Vec<usize> {
    crate::eval::argmax_rows(&logits.data, logits.row_len().max(1))
}
