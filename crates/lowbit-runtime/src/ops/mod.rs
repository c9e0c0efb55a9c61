//! One definition per op kind: what it needs of its inputs and what it produces (`OpDef::infer`, used by
//! [`crate::graph::check`] for the reader and the engine alike), a one-line description for `inspect` and
//! reports, and the engine step that runs it (`OpDef::plan`).
//!
//! Adding an op means one module here with its `OpDef`, one variant in [`crate::model::QOp`] (and its file
//! metadata in [`crate::format`]). Element-wise unary ops need none of this: they lower to a 256-entry table.
use crate::error::QuantError;
use crate::kernels::Isa;
use crate::model::QOp;
use crate::qparams::QParams;
use std::fmt::Debug;

pub(crate) mod conv;
pub(crate) mod eltwise;
pub(crate) mod layout;
pub(crate) mod matrix;
pub(crate) mod pool;

/// Largest raw input code: kernels multiply `u8` codes, so every bound assumes 255.
pub(crate) const MAX_ACT_CODE: i64 = 255;

/// Per-sample activation shape (NCHW without the batch); flat features are `(n, 1, 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Channels.
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
}

impl Shape {
    /// Elements per sample, `None` on overflow.
    pub fn elems(&self) -> Option<usize> {
        self.channels
            .checked_mul(self.height)?
            .checked_mul(self.width)
    }
}

/// What a value holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueQuant {
    /// Unsigned activation codes with these parameters, `bits` significant bits.
    Codes {
        /// Scale and zero point.
        qparams: QParams,
        /// Code range `[0, 2^bits - 1]`.
        bits: u32,
    },
    /// f32 logits (the graph's output).
    Logits,
}

impl ValueQuant {
    /// The largest code the value can hold (255 for logits, which no op reads).
    pub fn qmax(&self) -> i32 {
        match self {
            ValueQuant::Codes { bits, .. } => (1i32 << (*bits).min(8)) - 1,
            ValueQuant::Logits => MAX_ACT_CODE as i32,
        }
    }
}

/// Shape and quantization of one value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueInfo {
    /// Per-sample shape.
    pub shape: Shape,
    /// Codes or logits.
    pub quant: ValueQuant,
}

/// What [`OpDef::infer`] knows of a node.
pub(crate) struct InferCx<'a> {
    /// Node name, for errors.
    pub name: &'a str,
    /// The node's input values.
    pub inputs: &'a [ValueInfo],
    /// Whether the node is the graph's output (which must emit logits, and only it).
    pub is_output: bool,
}

impl InferCx<'_> {
    /// The only input of a one-input op.
    pub fn input(&self) -> Result<&ValueInfo, QuantError> {
        match self.inputs {
            [x] => Ok(x),
            _ => Err(shape_err(
                self.name,
                format!("takes 1 input, found {}", self.inputs.len()),
            )),
        }
    }

    /// The quantization of input `i`, which must be codes.
    pub fn codes(&self, i: usize) -> Result<(QParams, i32), QuantError> {
        match self.inputs.get(i).map(|v| v.quant) {
            Some(ValueQuant::Codes { qparams, bits }) => Ok((qparams, (1i32 << bits.min(8)) - 1)),
            _ => Err(shape_err(
                self.name,
                format!("input {i} is not activation codes"),
            )),
        }
    }

    /// Fails unless the node emits codes (every node but the output).
    pub fn not_output(&self) -> Result<(), QuantError> {
        if self.is_output {
            return Err(shape_err(
                self.name,
                "the last node must emit logits".into(),
            ));
        }
        Ok(())
    }
}

/// What an op produces, and what running it costs per sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inferred {
    /// The output value.
    pub output: ValueInfo,
    /// Scratch elements per sample (im2col, accumulators) beyond the input and output buffers.
    pub scratch_elems: usize,
    /// Multiply-accumulates per sample.
    pub macs: usize,
}

/// What [`OpDef::plan`] is given: the checked node.
pub(crate) struct PlanCx<'a> {
    /// Node name.
    pub name: &'a str,
    /// The node's input values.
    pub inputs: &'a [ValueInfo],
    /// Its output value.
    pub output: ValueInfo,
    /// Kernel tier to prepare weights for.
    pub isa: Isa,
    /// Whether eligible 3x3 convolutions may run as Winograd ([`crate::engine::EngineOptions::direct_3x3`]).
    pub winograd: bool,
}

/// Where a step writes.
pub(crate) enum StepOut<'a> {
    /// Activation codes, `[batch, out elems]`.
    Codes(&'a mut [u8]),
    /// The output node's i32 accumulators, `[batch, out elems]`.
    Acc(&'a mut [i32]),
}

/// One planned unit of engine work over a batch of samples (`[batch, elems]` per input).
pub(crate) trait Step: Debug + Send + Sync {
    /// Runs `batch` samples. `inputs` are the node's input values in order.
    fn run(&self, inputs: &[&[u8]], batch: usize, out: StepOut<'_>) -> Result<(), QuantError>;
    /// Logits from the accumulators of the output node (only matrix ops emit logits).
    fn logits(&self, _acc: &[i32]) -> Result<Vec<f32>, QuantError> {
        Err(internal("this node does not emit logits"))
    }
    /// The kernel that runs, for reports (`None` for data movement).
    fn path(&self) -> Option<String> {
        None
    }
}

/// How many inputs an op takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arity {
    /// Exactly this many.
    Exactly(usize),
    /// This many or more.
    AtLeast(usize),
}

impl Arity {
    pub(crate) fn accepts(&self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == *k,
            Arity::AtLeast(k) => n >= *k,
        }
    }
}

/// Everything the runtime knows about one op kind.
pub(crate) trait OpDef {
    /// Inputs it takes.
    fn arity(&self) -> Arity {
        Arity::Exactly(1)
    }
    /// Validates the op against its inputs (shapes, quantization, parameters, overflow bounds) and infers its
    /// output.
    fn infer(&self, cx: &InferCx<'_>) -> Result<Inferred, QuantError>;
    /// One line for `inspect` and reports (`conv2d 1->6 5x5 pad 2, int4 per-channel, requant 8-bit relu`).
    fn describe(&self) -> String;
    /// The engine step; `cx` has been through [`OpDef::infer`].
    fn plan(&self, cx: &PlanCx<'_>) -> Result<Box<dyn Step>, QuantError>;
    /// If this op's output is aliased to its input (no copy), the planner skips its step.
    fn is_alias(&self) -> bool {
        false
    }
}

/// Flatten: NCHW codes as flat features, the same bytes.
#[derive(Debug)]
struct Flatten;

impl OpDef for Flatten {
    fn infer(&self, cx: &InferCx<'_>) -> Result<Inferred, QuantError> {
        cx.not_output()?;
        let x = cx.input()?;
        let n = x
            .shape
            .elems()
            .ok_or_else(|| shape_err(cx.name, "size overflow".into()))?;
        Ok(Inferred {
            output: ValueInfo {
                shape: Shape {
                    channels: n,
                    height: 1,
                    width: 1,
                },
                quant: x.quant,
            },
            scratch_elems: 0,
            macs: 0,
        })
    }
    fn describe(&self) -> String {
        "flatten".into()
    }
    fn plan(&self, _cx: &PlanCx<'_>) -> Result<Box<dyn Step>, QuantError> {
        Ok(Box::new(CopyStep))
    }
    fn is_alias(&self) -> bool {
        true
    }
}

/// A plain copy (a Flatten that a trace needs materialised).
#[derive(Debug)]
struct CopyStep;

impl Step for CopyStep {
    fn run(&self, inputs: &[&[u8]], _batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        match (inputs, out) {
            ([x], StepOut::Codes(o)) if o.len() == x.len() => {
                o.copy_from_slice(x);
                Ok(())
            }
            _ => Err(internal("flatten copy of the wrong size")),
        }
    }
}

impl QOp {
    /// The definition of this op kind.
    pub(crate) fn def(&self) -> &dyn OpDef {
        match self {
            QOp::Dense(d) => d,
            QOp::Conv2d(c) => c,
            QOp::MaxPool2d(p) => p,
            QOp::AvgPool2d(p) => p,
            QOp::Flatten => &Flatten,
            QOp::Add(a) => a,
            QOp::Concat(c) => c,
            QOp::Pad(p) => p,
            QOp::Slice(s) => s,
            QOp::Lut(l) => l,
        }
    }

    /// One line describing the op (kind, geometry, bit widths, output stage).
    pub fn describe(&self) -> String {
        self.def().describe()
    }
}

/// Makes `v` exactly `len` long without touching kept elements: for buffers every element of which the caller
/// overwrites, so a same-size call (every sample, every batch) costs no memset.
pub(crate) fn fit<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() != len {
        v.resize(len, T::default());
    }
}

pub(crate) fn shape_err(context: &str, detail: String) -> QuantError {
    QuantError::ShapeMismatch {
        context: context.to_string(),
        detail,
    }
}

pub(crate) fn internal(detail: &str) -> QuantError {
    shape_err("engine", detail.into())
}

pub(crate) fn qp_err(tensor: String, reason: String) -> QuantError {
    QuantError::InvalidQParams { tensor, reason }
}

/// Validates activation parameters: a finite positive scale and a zero point in `[0, qmax]`.
pub(crate) fn check_qparams(qp: QParams, tensor: &str, qmax: i32) -> Result<(), QuantError> {
    QParams::new(qp.scale, qp.zero_point).map_err(|e| match e {
        QuantError::InvalidQParams { reason, .. } => qp_err(tensor.into(), reason),
        other => other,
    })?;
    if !(0..=qmax).contains(&qp.zero_point) {
        return Err(qp_err(
            tensor.into(),
            format!("zero point {} outside [0, {qmax}]", qp.zero_point),
        ));
    }
    Ok(())
}

/// Checks that an op's stated input parameters are those of the value that reaches it.
pub(crate) fn check_input_qparams(
    cx: &InferCx<'_>,
    i: usize,
    stated: QParams,
) -> Result<(), QuantError> {
    let (qp, qmax) = cx.codes(i)?;
    let tensor = format!("{}.input", cx.name);
    check_qparams(stated, &tensor, qmax)?;
    if stated != qp {
        return Err(qp_err(
            tensor,
            format!("{stated:?} differs from the incoming activation {qp:?}"),
        ));
    }
    Ok(())
}

/// A pooling or convolution window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl Window {
    /// Output shape of the window over `input`, with `channels` output channels.
    pub(crate) fn output(
        &self,
        name: &str,
        input: Shape,
        channels: usize,
    ) -> Result<Shape, QuantError> {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (ph, pw) = self.padding;
        let err = |d: String| shape_err(name, d);
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
            return Err(err(format!(
                "kernel {:?} and stride {:?} must be >= 1",
                self.kernel, self.stride
            )));
        }
        let ih = ph.checked_mul(2).and_then(|p| input.height.checked_add(p));
        let iw = pw.checked_mul(2).and_then(|p| input.width.checked_add(p));
        match (ih, iw) {
            (Some(ih), Some(iw)) if ih >= kh && iw >= kw => Ok(Shape {
                channels,
                height: (ih - kh) / sh + 1,
                width: (iw - kw) / sw + 1,
            }),
            _ => Err(err(format!(
                "kernel {:?} does not fit input {}x{} with padding {:?}",
                self.kernel, input.height, input.width, self.padding
            ))),
        }
    }
}
