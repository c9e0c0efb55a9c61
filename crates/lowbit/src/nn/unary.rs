//! Element-wise functions `y = f(x)` (LeakyReLU...): defined once each by an [`Elementwise`] impl below and one
//! line in the `unary_ops!` list. Everything else follows from `f` and `df`: the layer's forward and backward,
//! its float-file metadata (kind + parameters), and its quantized form, a 256-entry table
//! `table[q] = quantize(f(dequantize(q, in)), out)` that the runtime runs as is ([`crate::quant::convert()`]).
//! The table is exact by construction: QAT's fake-quant graph evaluates the same `f` on the same dequantized
//! codes in f32, and the following activation quantizer rounds it with the same arithmetic.
use super::layer::{Op, QuantRole};
use crate::error::{Error, Result};
use crate::state::{StateVisitor, Stateful};
use crate::tensor::Tensor;

/// An element-wise function and its derivative, with the parameters that define it.
pub trait Elementwise: std::fmt::Debug + Clone + Send + Sync {
    /// Kind name in files and summaries.
    const KIND: &'static str;
    /// `f(x)`.
    fn f(&self, x: f32) -> f32;
    /// `f'(x)` (any subgradient at kinks).
    fn df(&self, x: f32) -> f32;
    /// The parameters (for files), in [`Elementwise::from_params`]'s order.
    fn params(&self) -> Vec<f32>;
    /// Rebuilds the function from [`Elementwise::params`], rejecting invalid values.
    fn from_params(p: &[f32]) -> Result<Self>;
    /// A representative instance (what the generic tests of every function check).
    fn example() -> Self;
    /// Whether `f(x) >= 0` for every `x` the input can hold (`input_nonnegative`: only `x >= 0`).
    fn nonnegative_output(&self, _input_nonnegative: bool) -> bool {
        false
    }
}

/// LeakyReLU: `x` for `x > 0`, else `alpha * x` (ONNX's default alpha 0.01).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeakyRelu {
    /// Slope for negative inputs, finite.
    pub alpha: f32,
}

impl Elementwise for LeakyRelu {
    const KIND: &'static str = "leaky_relu";
    fn f(&self, x: f32) -> f32 {
        if x > 0.0 {
            x
        } else {
            self.alpha * x
        }
    }
    fn df(&self, x: f32) -> f32 {
        if x > 0.0 {
            1.0
        } else {
            self.alpha
        }
    }
    fn params(&self) -> Vec<f32> {
        vec![self.alpha]
    }
    fn from_params(p: &[f32]) -> Result<Self> {
        match p {
            [a] if a.is_finite() => Ok(Self { alpha: *a }),
            _ => Err(Error::Shape(format!(
                "leaky_relu takes one finite alpha, got {p:?}"
            ))),
        }
    }
    fn example() -> Self {
        Self { alpha: 0.1 }
    }
    fn nonnegative_output(&self, input_nonnegative: bool) -> bool {
        input_nonnegative
    }
}

/// Sigmoid: `1 / (1 + e^-x)`, computed as `0.5 * (1 + tanh(x / 2))` (no overflow for any `x`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sigmoid;

impl Elementwise for Sigmoid {
    const KIND: &'static str = "sigmoid";
    fn f(&self, x: f32) -> f32 {
        0.5 * (1.0 + (0.5 * x).tanh())
    }
    fn df(&self, x: f32) -> f32 {
        let s = self.f(x);
        s * (1.0 - s)
    }
    fn params(&self) -> Vec<f32> {
        Vec::new()
    }
    fn from_params(p: &[f32]) -> Result<Self> {
        match p {
            [] => Ok(Sigmoid),
            _ => Err(Error::Shape(format!(
                "sigmoid takes no parameters, got {p:?}"
            ))),
        }
    }
    fn example() -> Self {
        Sigmoid
    }
    fn nonnegative_output(&self, _input_nonnegative: bool) -> bool {
        true
    }
}

/// A layer applying an element-wise function; caches its input for the backward pass.
#[derive(Debug, Clone)]
pub struct Unary<E: Elementwise> {
    /// The function.
    pub func: E,
    input: Tensor,
}

impl<E: Elementwise> Unary<E> {
    /// The layer of `func`.
    pub fn new(func: E) -> Self {
        Self {
            func,
            input: Tensor::default(),
        }
    }
}

impl<E: Elementwise> Stateful for Unary<E> {
    fn visit_state(&mut self, _v: &mut StateVisitor<'_>) -> Result<()> {
        Ok(())
    }
}

impl<E: Elementwise> Op for Unary<E> {
    fn kind(&self) -> &'static str {
        E::KIND
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        match inputs {
            [x] => Ok(x.to_vec()),
            _ => Err(Error::Shape(format!("{} takes one input", E::KIND))),
        }
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        let [x] = inputs else {
            return Err(Error::Shape(format!("{} takes one input", E::KIND)));
        };
        if train {
            self.input = (*x).clone();
        }
        let data = x.data.iter().map(|&v| self.func.f(v)).collect();
        Ok(Tensor::new(data, x.shape.clone()))
    }
    fn backward(&mut self, grad: &Tensor, _need: bool) -> Result<Vec<Tensor>> {
        if grad.data.len() != self.input.data.len() {
            return Err(Error::Shape(format!(
                "{} backward: gradient of {} values for an input of {}",
                E::KIND,
                grad.data.len(),
                self.input.data.len()
            )));
        }
        let data = grad
            .data
            .iter()
            .zip(&self.input.data)
            .map(|(&g, &x)| g * self.func.df(x))
            .collect();
        Ok(vec![Tensor::new(data, grad.shape.clone())])
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Elementwise
    }
    fn nonnegative_output(&self, inputs: &[bool]) -> bool {
        self.func.nonnegative_output(inputs.iter().all(|&n| n))
    }
}

/// The [`UnaryOp`] enum over every element-wise function: the one list of them.
macro_rules! unary_ops {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// An element-wise layer: one variant per function.
        #[derive(Debug, Clone)]
        pub enum UnaryOp {
            $(#[doc = concat!("[`", stringify!($ty), "`].")] $variant(Unary<$ty>),)*
        }

        impl UnaryOp {
            /// The layer as its [`Op`].
            pub fn op(&self) -> &dyn Op {
                match self {
                    $(UnaryOp::$variant(u) => u,)*
                }
            }

            /// The layer as its [`Op`], mutably.
            pub fn op_mut(&mut self) -> &mut dyn Op {
                match self {
                    $(UnaryOp::$variant(u) => u,)*
                }
            }

            /// `f(x)`: what the quantized table tabulates.
            pub fn apply(&self, x: f32) -> f32 {
                match self {
                    $(UnaryOp::$variant(u) => u.func.f(x),)*
                }
            }

            /// The function's parameters (for files).
            pub fn params(&self) -> Vec<f32> {
                match self {
                    $(UnaryOp::$variant(u) => u.func.params(),)*
                }
            }

            /// One layer of every function ([`Elementwise::example`]), for tests.
            pub fn examples() -> Vec<UnaryOp> {
                vec![$(UnaryOp::$variant(Unary::new(<$ty>::example())),)*]
            }

            /// The layer of kind `kind` with parameters `params`; `None` for an unknown kind.
            pub fn from_kind(kind: &str, params: &[f32]) -> Option<Result<UnaryOp>> {
                $(if kind == <$ty>::KIND {
                    return Some(<$ty>::from_params(params).map(|f| UnaryOp::$variant(Unary::new(f))));
                })*
                None
            }
        }
    };
}

impl Stateful for UnaryOp {
    fn visit_state(&mut self, _v: &mut StateVisitor<'_>) -> Result<()> {
        Ok(())
    }
}

impl Op for UnaryOp {
    fn kind(&self) -> &'static str {
        self.op().kind()
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        self.op().output_shape(inputs)
    }
    fn forward(&mut self, inputs: &[&Tensor], train: bool) -> Result<Tensor> {
        self.op_mut().forward(inputs, train)
    }
    fn backward(&mut self, grad: &Tensor, need: bool) -> Result<Vec<Tensor>> {
        self.op_mut().backward(grad, need)
    }
    fn quant_role(&self) -> QuantRole {
        QuantRole::Elementwise
    }
    fn nonnegative_output(&self, inputs: &[bool]) -> bool {
        self.op().nonnegative_output(inputs)
    }
}

unary_ops! {
    LeakyRelu(LeakyRelu),
    Sigmoid(Sigmoid),
}
