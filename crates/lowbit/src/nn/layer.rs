//! The op of a training-graph node: the [`Op`] trait every layer kind implements once (shape inference,
//! forward, backward, parameters, state, and how quantization treats it), and the [`Layer`] enum over the kinds,
//! which dispatches to it from one list.
//!
//! Adding a layer kind means its module with an `impl Op`, one line in the `layers!` list, and its tests.
//! (Just over 800 lines on purpose: the trait, the enum and its dispatch stay in one file, so that list is the
//! one place a kind is added.)
use super::unary::UnaryOp;
use super::{
    Add, AvgPool2d, BatchNorm2d, Clip, Concat, Conv2d, Dense, Dropout, Flatten, MaxPool2d, Pad,
    Param, Relu, Slice,
};
use crate::error::{Error, Result};
use crate::quant::{ActQuantizer, ConvBn2d};
use crate::state::{StateVisitor, Stateful};
use crate::tensor::Tensor;

/// How quantization treats an op: where quantizers go (see [`crate::quant::prepare_qat`]) and how it lowers to
/// the integer engine (see [`crate::quant::convert()`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantRole {
    /// Multiplies codes by quantized weights (Dense, Conv2d): accumulators the engine requantizes.
    Weighted,
    /// Computes a new real value from codes without weights (average pooling, residual add, concat): the engine
    /// requantizes it to the quantizer that follows.
    Requantizing,
    /// A clamp of real values (ReLU, Clip) that a requantizing op's output stage absorbs; on codes, a table.
    Clamp,
    /// Moves codes without changing what they mean (max pooling, flatten, dropout, pad, slice).
    Transparent,
    /// An activation quantizer: turns real values into codes.
    Quantizer,
    /// Must be folded into the op before it before quantization (batch norm).
    Folded,
    /// An element-wise function of one input (LeakyReLU...): requantized through a 256-entry table to the
    /// quantizer that follows.
    Elementwise,
}

/// What every layer kind defines, once.
pub trait Op: Stateful {
    /// Short kind name, for summaries and file metadata (`dense`, `conv2d`...).
    fn kind(&self) -> &'static str;
    /// Whether it takes `n` inputs.
    fn accepts_inputs(&self, n: usize) -> bool {
        n == 1
    }
    /// Per-sample output shape from the inputs' (e.g. `[C, H, W]` or `[features]`).
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>>;
    /// Forward pass on its inputs (in the node's order); `train` makes the layer cache what backward needs.
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor>;
    /// Backward pass from dL/doutput: stores parameter gradients and returns dL/dinput per input (in order; may
    /// be empty tensors when `need_input_grad` is false).
    fn backward(&mut self, grad: &Tensor, need_input_grad: bool) -> Result<Vec<Tensor>>;
    /// One-input forward that leaves the output in a buffer the layer owns and reuses at every step (see
    /// [`Op::output_buffer`]) and returns `None`; layers without such a buffer return their output.
    fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        self.forward(&[x], train).map(Some)
    }
    /// The output of the last [`Op::forward_buffered`] that returned `None`.
    fn output_buffer(&self) -> &Tensor {
        &EMPTY
    }
    /// One-input backward that leaves dL/dinput in a buffer the layer owns (see [`Op::input_grad_buffer`]) and
    /// returns `None`; layers without such a buffer return it.
    fn backward_buffered(
        &mut self,
        grad: &Tensor,
        need_input_grad: bool,
    ) -> Result<Option<Tensor>> {
        Ok(self.backward(grad, need_input_grad)?.into_iter().next())
    }
    /// dL/dinput of the last [`Op::backward_buffered`] that returned `None`.
    fn input_grad_buffer(&self) -> &Tensor {
        &EMPTY
    }
    /// [`Op::forward_buffered`] for any number of inputs.
    fn forward_multi_buffered(
        &mut self,
        inputs: &[&Tensor],
        train: bool,
    ) -> Result<Option<Tensor>> {
        self.forward(inputs, train).map(Some)
    }
    /// `Ok(true)` when dL/dinput of every input is `grad` itself (a sum), after checking that `grad` fits the
    /// last training forward: the graph then hands `grad` on instead of calling backward, which would copy it
    /// once per input.
    fn gradient_passes_through(&self, _grad: &Tensor) -> Result<bool> {
        Ok(false)
    }
    /// Trainable parameters with their gradients (empty for parameter-free layers).
    fn params_mut(&mut self) -> Vec<Param<'_>> {
        Vec::new()
    }
    /// Number of trainable scalars.
    fn param_count(&self) -> usize {
        0
    }
    /// How quantization treats it.
    fn quant_role(&self) -> QuantRole;
    /// Whether its output is never negative, given which inputs are never negative (in order). QAT centres
    /// the learned activation codes of values that can be negative ([`crate::quant::prepare_qat`]).
    fn nonnegative_output(&self, _inputs: &[bool]) -> bool {
        false
    }
}

/// The one input of a one-input op.
fn one<'a>(kind: &str, inputs: &[&'a Tensor]) -> Result<&'a Tensor> {
    match inputs {
        [x] => Ok(x),
        _ => Err(Error::Shape(format!(
            "a {kind} layer takes one input, got {}",
            inputs.len()
        ))),
    }
}

/// The one per-sample input shape of a one-input op.
fn one_shape<'a>(kind: &str, inputs: &[&'a [usize]]) -> Result<&'a [usize]> {
    match inputs {
        [x] => Ok(x),
        _ => Err(Error::Shape(format!(
            "a {kind} layer takes one input, got {}",
            inputs.len()
        ))),
    }
}

/// State of layers that have none.
macro_rules! stateless {
    ($($t:ty),*) => {$(
        impl Stateful for $t {
            fn visit_state(&mut self, _v: &mut StateVisitor<'_>) -> Result<()> {
                Ok(())
            }
        }
    )*};
}
stateless!(Relu, Flatten, MaxPool2d, AvgPool2d, Add, Concat, Pad, Slice, Clip);

impl Op for Dense {
    fn kind(&self) -> &'static str {
        "dense"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Dense::output_shape(self, one_shape("dense", inputs)?)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        Dense::forward(self, one("dense", inputs)?, train)
    }
    fn backward(&mut self, grad: &Tensor, need: bool) -> Result<Vec<Tensor>> {
        Ok(vec![self.backward_impl(grad, need)?])
    }
    fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        Dense::forward_buffered(self, x, train).map(|()| None)
    }
    fn output_buffer(&self) -> &Tensor {
        self.output()
    }
    fn backward_buffered(&mut self, grad: &Tensor, need: bool) -> Result<Option<Tensor>> {
        Dense::backward_buffered(self, grad, need).map(|()| None)
    }
    fn input_grad_buffer(&self) -> &Tensor {
        self.input_grad()
    }
    fn params_mut(&mut self) -> Vec<Param<'_>> {
        Dense::params_mut(self)
    }
    fn param_count(&self) -> usize {
        self.weight.len() + self.bias.len()
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Weighted
    }
}

impl Op for Conv2d {
    fn kind(&self) -> &'static str {
        "conv2d"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Conv2d::output_shape(self, one_shape("conv2d", inputs)?)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        Conv2d::forward(self, one("conv2d", inputs)?, train)
    }
    fn backward(&mut self, grad: &Tensor, need: bool) -> Result<Vec<Tensor>> {
        Ok(vec![self.backward_impl(grad, need)?])
    }
    fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        Conv2d::forward_buffered(self, x, train).map(|()| None)
    }
    fn output_buffer(&self) -> &Tensor {
        self.output()
    }
    fn backward_buffered(&mut self, grad: &Tensor, need: bool) -> Result<Option<Tensor>> {
        Conv2d::backward_buffered(self, grad, need).map(|()| None)
    }
    fn input_grad_buffer(&self) -> &Tensor {
        self.input_grad()
    }
    fn params_mut(&mut self) -> Vec<Param<'_>> {
        Conv2d::params_mut(self)
    }
    fn param_count(&self) -> usize {
        self.weight.len() + self.bias.len()
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Weighted
    }
}

impl Op for ConvBn2d {
    fn kind(&self) -> &'static str {
        "conv_bn2d"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        self.conv.output_shape(one_shape("conv_bn2d", inputs)?)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        ConvBn2d::forward(self, one("conv_bn2d", inputs)?, train)
    }
    fn backward(&mut self, grad: &Tensor, need: bool) -> Result<Vec<Tensor>> {
        Ok(vec![self.backward_impl(grad, need)?])
    }
    fn params_mut(&mut self) -> Vec<Param<'_>> {
        ConvBn2d::params_mut(self)
    }
    fn param_count(&self) -> usize {
        ConvBn2d::param_count(self)
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Weighted
    }
}

impl Op for Relu {
    fn kind(&self) -> &'static str {
        "relu"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Relu::output_shape(self, one_shape("relu", inputs)?)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        Ok(Relu::forward(self, one("relu", inputs)?, train))
    }
    fn backward(&mut self, grad: &Tensor, _need: bool) -> Result<Vec<Tensor>> {
        Ok(vec![Relu::backward(self, grad)?])
    }
    fn forward_buffered(&mut self, x: &Tensor, _train: bool) -> Result<Option<Tensor>> {
        Relu::forward_buffered(self, x);
        Ok(None)
    }
    fn output_buffer(&self) -> &Tensor {
        self.output()
    }
    fn backward_buffered(&mut self, grad: &Tensor, _need: bool) -> Result<Option<Tensor>> {
        Relu::backward_buffered(self, grad).map(|()| None)
    }
    fn input_grad_buffer(&self) -> &Tensor {
        self.input_grad()
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Clamp
    }
    fn nonnegative_output(&self, _inputs: &[bool]) -> bool {
        true
    }
}

impl Op for Flatten {
    fn kind(&self) -> &'static str {
        "flatten"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Flatten::output_shape(self, one_shape("flatten", inputs)?)
    }
    fn forward(&mut self, inputs: &[&Tensor], _train: bool) -> Result<Tensor> {
        Ok(Flatten::forward(self, one("flatten", inputs)?))
    }
    fn backward(&mut self, grad: &Tensor, _need: bool) -> Result<Vec<Tensor>> {
        Ok(vec![Flatten::backward(self, grad)?])
    }
    fn forward_buffered(&mut self, x: &Tensor, _train: bool) -> Result<Option<Tensor>> {
        Flatten::forward_buffered(self, x);
        Ok(None)
    }
    fn output_buffer(&self) -> &Tensor {
        self.output()
    }
    fn backward_buffered(&mut self, grad: &Tensor, _need: bool) -> Result<Option<Tensor>> {
        Flatten::backward_buffered(self, grad).map(|()| None)
    }
    fn input_grad_buffer(&self) -> &Tensor {
        self.input_grad()
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Transparent
    }
    fn nonnegative_output(&self, inputs: &[bool]) -> bool {
        inputs.iter().all(|&n| n)
    }
}

impl Op for MaxPool2d {
    fn kind(&self) -> &'static str {
        "maxpool2d"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        MaxPool2d::output_shape(self, one_shape("maxpool2d", inputs)?)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        MaxPool2d::forward(self, one("maxpool2d", inputs)?, train)
    }
    fn backward(&mut self, grad: &Tensor, _need: bool) -> Result<Vec<Tensor>> {
        Ok(vec![MaxPool2d::backward(self, grad)?])
    }
    fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        MaxPool2d::forward_buffered(self, x, train, false).map(|()| None)
    }
    fn output_buffer(&self) -> &Tensor {
        self.output()
    }
    fn backward_buffered(&mut self, grad: &Tensor, _need: bool) -> Result<Option<Tensor>> {
        MaxPool2d::backward_buffered(self, grad).map(|()| None)
    }
    fn input_grad_buffer(&self) -> &Tensor {
        self.input_grad()
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Transparent
    }
    fn nonnegative_output(&self, inputs: &[bool]) -> bool {
        inputs.iter().all(|&n| n)
    }
}

impl Op for AvgPool2d {
    fn kind(&self) -> &'static str {
        "avgpool2d"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        AvgPool2d::output_shape(self, one_shape("avgpool2d", inputs)?)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        AvgPool2d::forward(self, one("avgpool2d", inputs)?, train)
    }
    fn backward(&mut self, grad: &Tensor, _need: bool) -> Result<Vec<Tensor>> {
        Ok(vec![AvgPool2d::backward(self, grad)?])
    }
    fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        AvgPool2d::forward_buffered(self, x, train).map(|()| None)
    }
    fn output_buffer(&self) -> &Tensor {
        self.output()
    }
    fn backward_buffered(&mut self, grad: &Tensor, _need: bool) -> Result<Option<Tensor>> {
        AvgPool2d::backward_buffered(self, grad).map(|()| None)
    }
    fn input_grad_buffer(&self) -> &Tensor {
        self.input_grad()
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Requantizing
    }
    fn nonnegative_output(&self, inputs: &[bool]) -> bool {
        inputs.iter().all(|&n| n)
    }
}

impl Op for BatchNorm2d {
    fn kind(&self) -> &'static str {
        "batchnorm2d"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        BatchNorm2d::output_shape(self, one_shape("batchnorm2d", inputs)?)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        BatchNorm2d::forward(self, one("batchnorm2d", inputs)?, train)
    }
    fn backward(&mut self, grad: &Tensor, _need: bool) -> Result<Vec<Tensor>> {
        Ok(vec![BatchNorm2d::backward(self, grad)?])
    }
    fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        BatchNorm2d::forward_buffered(self, x, train).map(|()| None)
    }
    fn output_buffer(&self) -> &Tensor {
        self.output()
    }
    fn backward_buffered(&mut self, grad: &Tensor, _need: bool) -> Result<Option<Tensor>> {
        BatchNorm2d::backward_buffered(self, grad).map(|()| None)
    }
    fn input_grad_buffer(&self) -> &Tensor {
        self.input_grad()
    }
    fn params_mut(&mut self) -> Vec<Param<'_>> {
        BatchNorm2d::params_mut(self)
    }
    fn param_count(&self) -> usize {
        self.gamma.len() + self.beta.len()
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Folded
    }
}

impl Op for Dropout {
    fn kind(&self) -> &'static str {
        "dropout"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Dropout::output_shape(self, one_shape("dropout", inputs)?)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        Ok(Dropout::forward(self, one("dropout", inputs)?, train))
    }
    fn backward(&mut self, grad: &Tensor, _need: bool) -> Result<Vec<Tensor>> {
        Ok(vec![Dropout::backward(self, grad)?])
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Transparent
    }
    fn nonnegative_output(&self, inputs: &[bool]) -> bool {
        inputs.iter().all(|&n| n)
    }
}

impl Op for ActQuantizer {
    fn kind(&self) -> &'static str {
        "act_quant"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Ok(one_shape("act_quant", inputs)?.to_vec())
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        Ok(ActQuantizer::forward(
            self,
            one("act_quant", inputs)?,
            train,
        ))
    }
    fn backward(&mut self, grad: &Tensor, _need: bool) -> Result<Vec<Tensor>> {
        Ok(vec![ActQuantizer::backward(self, grad)])
    }
    // Learned quantizer parameters (LSQ step, PACT alpha); empty for the EMA and input quantizers.
    fn params_mut(&mut self) -> Vec<Param<'_>> {
        ActQuantizer::params_mut(self)
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Quantizer
    }
    fn nonnegative_output(&self, inputs: &[bool]) -> bool {
        inputs.iter().all(|&n| n)
    }
}

impl Op for Add {
    fn kind(&self) -> &'static str {
        "add"
    }
    fn accepts_inputs(&self, n: usize) -> bool {
        n == 2
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Add::output_shape(self, inputs)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        Add::forward(self, inputs, train)
    }
    fn backward(&mut self, grad: &Tensor, _need: bool) -> Result<Vec<Tensor>> {
        Add::backward(self, grad)
    }
    fn forward_multi_buffered(
        &mut self,
        inputs: &[&Tensor],
        train: bool,
    ) -> Result<Option<Tensor>> {
        Add::forward_buffered(self, inputs, train).map(|()| None)
    }
    fn output_buffer(&self) -> &Tensor {
        self.output()
    }
    fn gradient_passes_through(&self, grad: &Tensor) -> Result<bool> {
        self.check_grad(grad).map(|()| true)
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Requantizing
    }
    fn nonnegative_output(&self, inputs: &[bool]) -> bool {
        inputs.iter().all(|&n| n)
    }
}

impl Op for Concat {
    fn kind(&self) -> &'static str {
        "concat"
    }
    fn accepts_inputs(&self, n: usize) -> bool {
        n >= 1
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Concat::output_shape(self, inputs)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        Concat::forward(self, inputs, train)
    }
    fn backward(&mut self, grad: &Tensor, _need: bool) -> Result<Vec<Tensor>> {
        Concat::backward(self, grad)
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Requantizing
    }
    fn nonnegative_output(&self, inputs: &[bool]) -> bool {
        inputs.iter().all(|&n| n)
    }
}

impl Op for Pad {
    fn kind(&self) -> &'static str {
        "pad"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Pad::output_shape(self, one_shape("pad", inputs)?)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        Pad::forward(self, one("pad", inputs)?, train)
    }
    fn backward(&mut self, grad: &Tensor, _need: bool) -> Result<Vec<Tensor>> {
        Ok(vec![Pad::backward(self, grad)?])
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Transparent
    }
    fn nonnegative_output(&self, inputs: &[bool]) -> bool {
        inputs.iter().all(|&n| n)
    }
}

impl Op for Slice {
    fn kind(&self) -> &'static str {
        "slice"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Slice::output_shape(self, one_shape("slice", inputs)?)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        Slice::forward(self, one("slice", inputs)?, train)
    }
    fn backward(&mut self, grad: &Tensor, _need: bool) -> Result<Vec<Tensor>> {
        Ok(vec![Slice::backward(self, grad)?])
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Transparent
    }
    fn nonnegative_output(&self, inputs: &[bool]) -> bool {
        inputs.iter().all(|&n| n)
    }
}

impl Op for Clip {
    fn kind(&self) -> &'static str {
        "clip"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Clip::output_shape(self, one_shape("clip", inputs)?)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        Clip::forward(self, one("clip", inputs)?, train)
    }
    fn backward(&mut self, grad: &Tensor, _need: bool) -> Result<Vec<Tensor>> {
        Ok(vec![Clip::backward(self, grad)?])
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Clamp
    }
    fn nonnegative_output(&self, inputs: &[bool]) -> bool {
        self.min >= 0.0 || (self.max >= 0.0 && inputs.iter().all(|&n| n))
    }
}

/// The [`Layer`] enum over every kind and its dispatch to [`Op`]: the one list of layer kinds.
macro_rules! layers {
    ($($(#[$doc:meta])* $variant:ident($ty:ty)),* $(,)?) => {
        /// The op of one node of a [`super::Model`]: one variant per layer kind, each implementing [`Op`].
        /// Spatial layers work on NCHW tensors `[B, C, H, W]`.
        #[derive(Debug, Clone)]
        pub enum Layer {
            $($(#[$doc])* $variant($ty),)*
        }

        impl Layer {
            /// The layer as its [`Op`].
            pub fn op(&self) -> &dyn Op {
                match self {
                    $(Layer::$variant(l) => l,)*
                }
            }

            /// The layer as its [`Op`], mutably.
            pub fn op_mut(&mut self) -> &mut dyn Op {
                match self {
                    $(Layer::$variant(l) => l,)*
                }
            }
        }
    };
}

/// A boxed op is the op (layers too large to sit in the enum inline are boxed).
impl<T: Op + ?Sized> Op for Box<T> {
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn accepts_inputs(&self, n: usize) -> bool {
        (**self).accepts_inputs(n)
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        (**self).output_shape(inputs)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        (**self).forward(inputs, train)
    }
    fn backward(&mut self, grad: &Tensor, need: bool) -> Result<Vec<Tensor>> {
        (**self).backward(grad, need)
    }
    fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        (**self).forward_buffered(x, train)
    }
    fn output_buffer(&self) -> &Tensor {
        (**self).output_buffer()
    }
    fn backward_buffered(&mut self, grad: &Tensor, need: bool) -> Result<Option<Tensor>> {
        (**self).backward_buffered(grad, need)
    }
    fn input_grad_buffer(&self) -> &Tensor {
        (**self).input_grad_buffer()
    }
    fn forward_multi_buffered(
        &mut self,
        inputs: &[&Tensor],
        train: bool,
    ) -> Result<Option<Tensor>> {
        (**self).forward_multi_buffered(inputs, train)
    }
    fn gradient_passes_through(&self, grad: &Tensor) -> Result<bool> {
        (**self).gradient_passes_through(grad)
    }
    fn params_mut(&mut self) -> Vec<Param<'_>> {
        (**self).params_mut()
    }
    fn param_count(&self) -> usize {
        (**self).param_count()
    }
    fn quant_role(&self) -> QuantRole {
        (**self).quant_role()
    }
    fn nonnegative_output(&self, inputs: &[bool]) -> bool {
        (**self).nonnegative_output(inputs)
    }
}

layers! {
    /// Fully connected.
    Dense(Dense),
    /// ReLU activation.
    Relu(Relu),
    /// Activation fake-quantizer (QAT).
    ActQuant(ActQuantizer),
    /// Flatten to `[B, features]`.
    Flatten(Flatten),
    /// 2-D convolution (grouped and depthwise too).
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
    ConvBn2d(Box<ConvBn2d>),
    /// Residual sum of two values.
    Add(Add),
    /// Channel concatenation.
    Concat(Concat),
    /// Zero padding (spatial and channel).
    Pad(Pad),
    /// Strided slice of channels, rows and columns.
    Slice(Slice),
    /// Clamp to `[min, max]` (ReLU6 is `Clip(0, 6)`).
    Clip(Clip),
    /// An element-wise function (see [`super::unary`]).
    Unary(UnaryOp),
}

impl Layer {
    /// Whether the layer takes `n` inputs.
    pub fn accepts_inputs(&self, n: usize) -> bool {
        self.op().accepts_inputs(n)
    }

    /// Forward pass of a layer on its inputs (in the node's input order).
    pub fn forward_multi(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        self.op_mut().forward(inputs, train)
    }

    /// See [`Op::forward_multi_buffered`].
    pub(crate) fn forward_multi_buffered(
        &mut self,
        inputs: &[&Tensor],
        train: bool,
    ) -> Result<Option<Tensor>> {
        self.op_mut().forward_multi_buffered(inputs, train)
    }

    /// See [`Op::gradient_passes_through`].
    pub(crate) fn gradient_passes_through(&self, grad: &Tensor) -> Result<bool> {
        self.op().gradient_passes_through(grad)
    }

    /// Backward pass of a layer with several inputs: dL/dinput for each input, in order.
    pub fn backward_multi(&mut self, grad: &Tensor) -> Result<Vec<Tensor>> {
        self.op_mut().backward(grad, true)
    }

    /// Forward pass of a one-input layer; `train` makes the layer cache what backward needs (and update
    /// statistics).
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.op_mut().forward(&[x], train)
    }

    /// Backward pass of a one-input layer: stores parameter gradients, returns dL/dinput.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        self.backward_impl(grad, true)
    }

    /// Like [`Layer::backward`], but may skip computing dL/dinput (returning an empty tensor) when the caller
    /// does not need it.
    pub(crate) fn backward_impl(&mut self, grad: &Tensor, need_input_grad: bool) -> Result<Tensor> {
        Ok(self
            .op_mut()
            .backward(grad, need_input_grad)?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    /// See [`Op::forward_buffered`].
    pub(crate) fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        self.op_mut().forward_buffered(x, train)
    }

    /// See [`Op::output_buffer`].
    pub(crate) fn output_buffer(&self) -> &Tensor {
        self.op().output_buffer()
    }

    /// See [`Op::backward_buffered`].
    pub(crate) fn backward_buffered(
        &mut self,
        grad: &Tensor,
        need_input_grad: bool,
    ) -> Result<Option<Tensor>> {
        self.op_mut().backward_buffered(grad, need_input_grad)
    }

    /// See [`Op::input_grad_buffer`].
    pub(crate) fn input_grad_buffer(&self) -> &Tensor {
        self.op().input_grad_buffer()
    }

    /// The layer's trainable parameters with their gradients (empty for parameter-free layers).
    pub fn params_mut(&mut self) -> Vec<Param<'_>> {
        self.op_mut().params_mut()
    }

    /// Number of trainable scalars.
    pub fn param_count(&self) -> usize {
        self.op().param_count()
    }

    /// Short kind name, for summaries.
    pub fn kind(&self) -> &'static str {
        self.op().kind()
    }

    /// How quantization treats it.
    pub fn quant_role(&self) -> QuantRole {
        self.op().quant_role()
    }

    /// Per-sample output shape from the inputs'.
    pub fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        self.op().output_shape(inputs)
    }
}

impl Stateful for Layer {
    /// The state of the layer's component; layers without state (ReLU, flatten, pooling) visit nothing.
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        self.op_mut().visit_state(v)
    }
}

/// What [`Op::output_buffer`] and [`Op::input_grad_buffer`] return for layers without buffers.
static EMPTY: Tensor = Tensor {
    data: Vec::new(),
    shape: Vec::new(),
};
