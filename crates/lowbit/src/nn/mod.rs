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
use crate::state::{StateVisitor, Stateful};
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
    /// Conv2d + BatchNorm2d trained with the norm folded into the quantized weights (QAT, batch statistics).
    ConvBn2d(Box<crate::quant::ConvBn2d>),
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
            Layer::ConvBn2d(l) => l.forward(x, train),
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
            Layer::ConvBn2d(l) => l.backward_impl(grad, need_input_grad),
        }
    }

    /// Forward pass that leaves the output in a buffer the layer owns and reuses at every step (see
    /// [`Layer::output_buffer`]) and returns `None`; layers without such a buffer return their output.
    fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        match self {
            Layer::Dense(l) => l.forward_buffered(x, train)?,
            Layer::Relu(l) => l.forward_buffered(x),
            Layer::Flatten(l) => l.forward_buffered(x),
            Layer::Conv2d(l) => l.forward_buffered(x, train)?,
            Layer::MaxPool2d(l) => l.forward_buffered(x, train, false)?,
            Layer::AvgPool2d(l) => l.forward_buffered(x, train)?,
            _ => return self.forward(x, train).map(Some),
        }
        Ok(None)
    }

    /// The output of the last [`Layer::forward_buffered`] that returned `None` (empty for other layers).
    fn output_buffer(&self) -> &Tensor {
        match self {
            Layer::Dense(l) => l.output(),
            Layer::Relu(l) => l.output(),
            Layer::Flatten(l) => l.output(),
            Layer::Conv2d(l) => l.output(),
            Layer::MaxPool2d(l) => l.output(),
            Layer::AvgPool2d(l) => l.output(),
            _ => &EMPTY,
        }
    }

    /// Backward pass that leaves dL/dinput in a buffer the layer owns (see [`Layer::input_grad_buffer`]) and
    /// returns `None`; layers without such a buffer return it.
    fn backward_buffered(
        &mut self,
        grad: &Tensor,
        need_input_grad: bool,
    ) -> Result<Option<Tensor>> {
        match self {
            Layer::Dense(l) => l.backward_buffered(grad, need_input_grad)?,
            Layer::Relu(l) => l.backward_buffered(grad)?,
            Layer::Flatten(l) => l.backward_buffered(grad)?,
            Layer::Conv2d(l) => l.backward_buffered(grad, need_input_grad)?,
            Layer::MaxPool2d(l) => l.backward_buffered(grad)?,
            Layer::AvgPool2d(l) => l.backward_buffered(grad)?,
            _ => return self.backward_impl(grad, need_input_grad).map(Some),
        }
        Ok(None)
    }

    /// dL/dinput of the last [`Layer::backward_buffered`] that returned `None` (empty for other layers).
    fn input_grad_buffer(&self) -> &Tensor {
        match self {
            Layer::Dense(l) => l.input_grad(),
            Layer::Relu(l) => l.input_grad(),
            Layer::Flatten(l) => l.input_grad(),
            Layer::Conv2d(l) => l.input_grad(),
            Layer::MaxPool2d(l) => l.input_grad(),
            Layer::AvgPool2d(l) => l.input_grad(),
            _ => &EMPTY,
        }
    }

    /// The layer's trainable parameters with their gradients (empty for parameter-free layers).
    pub fn params_mut(&mut self) -> Vec<Param<'_>> {
        match self {
            Layer::Dense(l) => l.params_mut(),
            Layer::Conv2d(l) => l.params_mut(),
            Layer::BatchNorm2d(l) => l.params_mut(),
            Layer::MaxPool2d(_) | Layer::AvgPool2d(_) | Layer::Dropout(_) => Vec::new(),
            Layer::ConvBn2d(l) => l.params_mut(),
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
            Layer::ConvBn2d(l) => l.param_count(),
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
            Layer::ConvBn2d(_) => "conv_bn2d",
        }
    }
}

impl Stateful for Layer {
    /// The state of the layer's component; layers without state (ReLU, flatten, pooling) visit nothing.
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        match self {
            Layer::Dense(l) => l.visit_state(v),
            Layer::Conv2d(l) => l.visit_state(v),
            Layer::BatchNorm2d(l) => l.visit_state(v),
            Layer::ConvBn2d(l) => l.visit_state(v),
            Layer::ActQuant(q) => q.visit_state(v),
            Layer::Dropout(l) => l.visit_state(v),
            Layer::Relu(_) | Layer::Flatten(_) | Layer::MaxPool2d(_) | Layer::AvgPool2d(_) => {
                Ok(())
            }
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
        let Some(first) = self.layers.first() else {
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
        // Each activation stays in the buffer of the layer that produced it (reused at every step, so a
        // training step allocates no activation memory).
        let mut src = Src::Given;
        let mut i = 0;
        while i < self.layers.len() {
            // ReLU then max pooling run as one pass over the ReLU's input (the ReLU layer is skipped).
            let fused = self.relu_pool_at(i);
            let at = if fused { i + 1 } else { i };
            let (before, rest) = self.layers.split_at_mut(at);
            let input = src.get(x, before);
            let out = match &mut rest[0] {
                Layer::MaxPool2d(pool) if fused => {
                    pool.forward_buffered(input, train, true)?;
                    None
                }
                layer => layer.forward_buffered(input, train)?,
            };
            src = out.map_or(Src::Layer(at), Src::Owned);
            i = at + 1;
        }
        Ok(match src {
            Src::Given => x.clone(),
            Src::Layer(j) => self.layers[j].output_buffer().clone(),
            Src::Owned(t) => t,
        })
    }

    /// Whether `layers[i]` is a ReLU that [`Model::forward`] fuses into the max pooling after it.
    fn relu_pool_at(&self, i: usize) -> bool {
        matches!(
            (self.layers.get(i), self.layers.get(i + 1)),
            (Some(Layer::Relu(_)), Some(Layer::MaxPool2d(_)))
        )
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
        self.backward_from(grad_logits, first_param, false)?;
        Ok(())
    }

    /// Runs backward through `layers[stop..]`, last first, and returns dL/dinput of `layers[stop]` when
    /// `stop_input_grad` (an empty tensor otherwise). Gradients stay in the layers' reused buffers, as
    /// activations do in [`Model::forward`].
    fn backward_from(
        &mut self,
        grad_logits: &Tensor,
        stop: usize,
        stop_input_grad: bool,
    ) -> Result<Tensor> {
        // `src` is dL/doutput of layer i: the given gradient, or the input-gradient buffer of layer `j > i`.
        let mut src = Src::Given;
        let mut i = self.layers.len();
        while i > stop {
            i -= 1;
            let (upto, after) = self.layers.split_at_mut(i + 1);
            let g = match &src {
                Src::Given => grad_logits,
                Src::Layer(j) => after[j - i - 1].input_grad_buffer(),
                Src::Owned(t) => t,
            };
            let out = upto[i].backward_buffered(g, i > stop || stop_input_grad)?;
            src = out.map_or(Src::Layer(i), Src::Owned);
            // A pooling layer that applied its ReLU in forward has applied the ReLU's gradient too.
            if let Layer::MaxPool2d(pool) = &upto[i] {
                if pool.relu_fused() && i > stop && matches!(upto[i - 1], Layer::Relu(_)) {
                    i -= 1;
                }
            }
        }
        Ok(match src {
            _ if !stop_input_grad => Tensor::default(),
            Src::Given => grad_logits.clone(),
            Src::Layer(j) => self.layers[j].input_grad_buffer().clone(),
            Src::Owned(t) => t,
        })
    }

    /// Backward pass that also returns dL/dinput (for gradient checks and input attributions).
    pub fn backward_with_input_grad(&mut self, grad_logits: &Tensor) -> Result<Tensor> {
        self.backward_from(grad_logits, 0, true)
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

impl Stateful for Model {
    /// Every layer's state, layer `i` of kind `k` under `layers.{i}.{k}` (e.g. `layers.0.dense.weight`). The
    /// kind in the name makes a checkpoint of another architecture fail by name rather than by length.
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        v.scope("layers", |v| {
            for (i, layer) in self.layers.iter_mut().enumerate() {
                let kind = layer.kind();
                v.scope(&i.to_string(), |v| v.part(kind, layer))?;
            }
            Ok(())
        })
    }
}

/// Where the current activation (or gradient) of [`Model::forward`] / [`Model::backward`] lives.
enum Src {
    /// The tensor the caller passed in.
    Given,
    /// The output (or input-gradient) buffer of this layer.
    Layer(usize),
    /// Returned by a layer without buffers.
    Owned(Tensor),
}

impl Src {
    /// The current activation, for a layer after all of `before`.
    fn get<'a>(&'a self, given: &'a Tensor, before: &'a [Layer]) -> &'a Tensor {
        match self {
            Src::Given => given,
            Src::Layer(j) => before[*j].output_buffer(),
            Src::Owned(t) => t,
        }
    }
}

/// What [`Layer::output_buffer`] and [`Layer::input_grad_buffer`] return for layers without buffers.
static EMPTY: Tensor = Tensor {
    data: Vec::new(),
    shape: Vec::new(),
};

/// Index of the largest value in each row of a `[B, C]` tensor (lowest index on ties; NaN never wins).
pub fn argmax_rows(logits: &Tensor) -> Vec<usize> {
    crate::eval::argmax_rows(&logits.data, logits.row_len().max(1))
}
