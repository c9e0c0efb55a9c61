//! The op of a training-graph node: one enum over every layer kind, with the forward / backward / parameter
//! contract each kind implements.
use super::{AvgPool2d, BatchNorm2d, Conv2d, Dense, Dropout, Flatten, MaxPool2d, Param, Relu};
use crate::error::Result;
use crate::quant::ActQuantizer;
use crate::state::{StateVisitor, Stateful};
use crate::tensor::Tensor;

/// The op of one node of a [`super::Model`]; every kind has the same forward / backward / params contract. Spatial layers work
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
    /// Whether the layer takes `n` inputs.
    pub fn accepts_inputs(&self, n: usize) -> bool {
        n == 1
    }

    /// Forward pass of a layer with several inputs (in the node's input order).
    pub fn forward_multi(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        match inputs {
            [x] => self.forward(x, train),
            _ => Err(crate::error::Error::Shape(format!(
                "a {} layer takes one input, got {}",
                self.kind(),
                inputs.len()
            ))),
        }
    }

    /// Backward pass of a layer with several inputs: dL/dinput for each input, in order.
    pub fn backward_multi(&mut self, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.backward(grad)?])
    }

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
    pub(crate) fn backward_impl(&mut self, grad: &Tensor, need_input_grad: bool) -> Result<Tensor> {
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
    pub(crate) fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
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
    pub(crate) fn output_buffer(&self) -> &Tensor {
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
    pub(crate) fn backward_buffered(
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
    pub(crate) fn input_grad_buffer(&self) -> &Tensor {
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

/// What [`Layer::output_buffer`] and [`Layer::input_grad_buffer`] return for layers without buffers.
static EMPTY: Tensor = Tensor {
    data: Vec::new(),
    shape: Vec::new(),
};
