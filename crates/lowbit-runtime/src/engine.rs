//! Runs a [`QuantModel`] integer-only.
//!
//! [`Engine::new`] validates the whole graph once (shapes chain from the [`crate::model::InputSpec`] through every
//! layer, parameter lengths, bit widths, zero points, requantization invariants, the i32 accumulator bound) and
//! precomputes what every call needs. Between layers activations are `u8` codes; only the last layer's i32
//! accumulators become f32 logits.
//!
//! Conventions (normative; the training library's simulation must match them bit for bit):
//! - Zero-point correction is folded into the bias once: `bias_eff[j] = bias[j] - zp_in * sum_k w[j][k]`, so the
//!   kernels multiply raw `u8` codes by weight codes and `acc[j] = bias[j] + sum_k (a[k] - zp_in) * w[j][k]`.
//! - Layer `i`'s `input` parameters must equal the parameters of the activation that reaches it.
//! - Requantized layers: `out = clamp(zp_out + requant[j or 0].apply(acc), qmin, qmax)` ([`requantize`]) with
//!   `qmax = 2^bits - 1` and `qmin = zp_out` when ReLU is fused, else 0.
//! - Logits: `acc as f32 * (s_in * s_w[j])`, the product of the two scales taken in f32 first.
//! - Conv2d: im2col on codes, padded positions hold the input zero point, column index
//!   `k = ic*kh*kw + ky*kw + kx` (weights are `[oc][ic][kh][kw]`); output is NCHW.
//! - MaxPool2d: max of codes over the window (no padding). A 2 x 2, stride-2 max pool right after a requantized
//!   conv runs fused with it (max of the accumulators, then one requantization), which gives the same codes
//!   because requantization never decreases as the accumulator grows; traced runs keep the layers apart.
//!   AvgPool2d (no padding):
//!   `out = clamp(zp_out + Requant::from_real(s_in / (s_out * window)).apply(sum(q - zp_in)), 0, 2^bits - 1)`
//!   where the real multiplier is computed in f64 as `s_in as f64 / (s_out as f64 * window as f64)`.
//! - Dense after a spatial layer reads the NCHW features in order (Flatten is a no-op on the data).
use crate::error::QuantError;
use crate::kernels;
use crate::kernels::conv::{AccLayout, ConvAcc, ConvGeometry, DirectConv};
use crate::kernels::{Isa, PaddedPlanes, PrepackedWeights};
use crate::model::{OutputStage, QLayer, QuantModel};
use crate::pack::PackedWeights;
use crate::qparams::{act_code_range, requantize, QParams, Requant};
use crate::workers;
use rayon::prelude::*;
use std::cell::RefCell;

/// Largest raw input code: kernels multiply `u8` codes, so every bound assumes 255.
const MAX_ACT_CODE: i64 = 255;

/// Work per task when [`Engine::run`] splits a batch across threads, in multiply-accumulates. 1M MACs is about
/// 30-40 us on one Zen3 core, far above the cost of handing out a task (~1-2 us in rayon), and cuts a batch of 256 through
/// the 784-64-10 MLP (51K MACs per sample) into 11 tasks of 24 samples: taking tasks from a shared counter (or
/// work stealing, inside the pool) then rebalances when a thread is descheduled on a shared machine, which a split
/// into one equal half per thread cannot (the call waits for the slower half), and every layer of a task runs on
/// one thread with its data in cache.
const PAR_TASK_MACS: usize = 1_000_000;

thread_local! {
    /// Set while a thread runs tasks of a split batch (the caller or a [`workers`] helper): its convolutions then
    /// run their samples sequentially, like the rayon pool's workers do, instead of splitting them again.
    static IN_SPLIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
/// Task rows are a multiple of this: the int8 micro-tile is 6 rows, the sub-byte one 4.
const PAR_TASK_ROW_MULTIPLE: usize = 12;

/// Per-sample activation shape (NCHW without the batch).
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
    fn elems(&self) -> Option<usize> {
        self.channels
            .checked_mul(self.height)?
            .checked_mul(self.width)
    }
}

/// Every layer's integer output for a batch, for layer-by-layer comparison with a simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Codes after each layer except the last, `[batch, elems]` NCHW each; `codes.len() == layers.len() - 1`.
    pub codes: Vec<Vec<u8>>,
    /// The last layer's i32 accumulators `[batch, classes]` (zero-point corrected, bias included).
    pub accumulators: Vec<i32>,
    /// Logits `[batch, classes]`, computed from `accumulators` as the module doc states.
    pub logits: Vec<f32>,
}

/// How a matrix layer's accumulators leave it.
#[derive(Debug, Clone)]
enum Out {
    Requant {
        requant: Vec<Requant>,
        zero_point: i32,
        qmin: i32,
        qmax: i32,
    },
    /// `s_in * s_w[j]` in f32, one per output row.
    Logits { factor: Vec<f32> },
}

/// A validated weight matrix with its zero-point-corrected bias.
#[derive(Debug, Clone)]
struct Gemm {
    /// Output rows (N).
    n: usize,
    /// Codes per row (K).
    k: usize,
    /// Prepared once for the selected kernel tier (int8 panels on AVX2; see [`PrepackedWeights`]).
    weights: PrepackedWeights,
    bias_eff: Vec<i32>,
    out: Out,
}

impl Gemm {
    fn acc(&self, a: &[u8], m: usize, out: &mut [i32]) -> Result<(), QuantError> {
        kernels::gemm_acc_prepacked(a, m, self.k, &self.weights, &self.bias_eff, out)
    }

    fn requant(&self, a: &[u8], m: usize, out: &mut [u8]) -> Result<(), QuantError> {
        let p = self.requant_out()?.params(&self.bias_eff);
        kernels::gemm_requant_prepacked(a, m, self.k, &self.weights, &p, out)
    }

    fn requant_out(&self) -> Result<RequantOut<'_>, QuantError> {
        match &self.out {
            Out::Requant {
                requant,
                zero_point,
                qmin,
                qmax,
            } => Ok(RequantOut {
                requant,
                zero_point: *zero_point,
                qmin: *qmin,
                qmax: *qmax,
            }),
            Out::Logits { .. } => Err(internal("requant called on a logits layer")),
        }
    }
}

#[derive(Debug, Clone)]
struct Window {
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
}

#[derive(Debug, Clone)]
enum Op {
    Dense(Gemm),
    Conv(ConvOp),
    MaxPool {
        input: Shape,
        output: Shape,
        window: Window,
    },
    AvgPool {
        input: Shape,
        output: Shape,
        window: Window,
        requant: Requant,
        zp_in: i32,
        zp_out: i32,
        qmax: i32,
    },
    Flatten,
}

/// A convolution: im2col + GEMM, or the direct kernel when it issues fewer multiply-accumulates.
#[derive(Debug, Clone)]
struct ConvOp {
    gemm: Gemm,
    input: Shape,
    output: Shape,
    window: Window,
    /// The input zero point, which padded positions hold.
    pad_code: u8,
    /// Int8 weights prepared for [`kernels::conv::direct_conv_acc`] (stride 1, AVX2 tiers), when cheaper.
    direct: Option<Box<DirectConv>>,
}

/// Per-thread activation buffers reused across [`Engine::run`] calls (grown, never shrunk).
#[derive(Default)]
struct Buffers {
    cur: Vec<u8>,
    next: Vec<u8>,
    acc: Vec<i32>,
}

/// How an [`Engine`] runs, beyond what the model fixes. Build with struct update syntax,
/// `EngineOptions { allow_spinning: true, ..EngineOptions::default() }`, so that new options keep old code compiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineOptions {
    /// After a batch split over the helper threads, let them poll for the next batch for `LOWBIT_SPIN_US`
    /// microseconds (default [`workers::DEFAULT_SPIN_US`]) before they sleep, like ONNX Runtime's
    /// `allow_spinning`. Back-to-back calls then skip the helpers' wake-up (tens of microseconds on a VM, against
    /// about 100 us for a batch of 256 through the MLP), at the price of a busy core per helper after every call.
    /// Off by default, so that a library call leaves the host process idle when it returns; `lowbit bench`,
    /// `lowbit eval` and the benchmarks turn it on. The `split_ab` example measures both ways (BENCHMARKS.md).
    pub allow_spinning: bool,
}

/// A validated, ready-to-run quantized model.
///
/// An `Engine` is immutable once built and is `Send + Sync` (asserted at compile time): share one between threads
/// (by reference, or in an `Arc`) and call [`Engine::run`] from all of them at once. Every call uses its own
/// thread's scratch buffers and returns exactly the logits a single-threaded call would. A large batch is split
/// between the calling thread and the runtime's helper threads ([`workers`]); while one call holds the helpers,
/// concurrent calls run on their own threads.
#[derive(Debug, Clone)]
pub struct Engine {
    options: EngineOptions,
    ops: Vec<Op>,
    /// Per-sample element count after each op.
    out_elems: Vec<usize>,
    input_features: usize,
    classes: usize,
    max_sample_elems: usize,
    /// Multiply-accumulates per sample over all matrix layers; sizes the batch split of [`Engine::run`].
    macs_per_sample: usize,
}

// Fails to compile if a field ever makes `Engine` unshareable between threads (its docs promise that it is).
const _: fn() = || {
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Engine>();
};

fn shape_err(context: String, detail: String) -> QuantError {
    QuantError::ShapeMismatch { context, detail }
}

fn internal(detail: &str) -> QuantError {
    shape_err("engine".into(), detail.into())
}

fn qp_err(tensor: String, reason: String) -> QuantError {
    QuantError::InvalidQParams { tensor, reason }
}

fn check_qparams(qp: QParams, tensor: &str, qmax: i32) -> Result<(), QuantError> {
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

/// Validates packed weights ([`PackedWeights::validate`] plus non-empty shape) and returns each row's code sum.
/// Used by [`Engine::new`] and by the `.lbq` loader.
pub fn validate_weights(w: &PackedWeights, tensor: &str) -> Result<Vec<i64>, QuantError> {
    if w.rows == 0 || w.cols == 0 {
        return Err(shape_err(
            tensor.into(),
            format!("empty weight matrix {} x {}", w.rows, w.cols),
        ));
    }
    w.validate().map_err(|e| match e {
        QuantError::InvalidQParams { reason, .. } => qp_err(tensor.into(), reason),
        QuantError::ShapeMismatch { detail, .. } => shape_err(tensor.into(), detail),
        other => other,
    })?;
    let mut row = vec![0i8; w.cols];
    let mut sums = Vec::with_capacity(w.rows);
    for r in 0..w.rows {
        w.unpack_row(r, &mut row);
        sums.push(row.iter().map(|&c| c as i64).sum());
    }
    Ok(sums)
}

/// Everything a Dense or Conv2d layer shares.
struct MatrixSpec<'a> {
    name: String,
    rows: usize,
    k: usize,
    weights: &'a PackedWeights,
    weight_scales: &'a [f32],
    bias: &'a [i32],
    input: QParams,
    output: &'a OutputStage,
    is_last: bool,
    /// Prepare the weights for the selected tier (else they stay as they are, for the reference kernels).
    prepare: bool,
}

fn build_gemm(
    s: MatrixSpec<'_>,
    cur_qp: QParams,
    cur_qmax: i32,
) -> Result<(Gemm, QParams, i32), QuantError> {
    let name = &s.name;
    check_qparams(s.input, &format!("{name}.input"), cur_qmax)?;
    if s.input != cur_qp {
        return Err(qp_err(
            format!("{name}.input"),
            format!(
                "{:?} differs from the incoming activation {:?}",
                s.input, cur_qp
            ),
        ));
    }
    if s.weights.rows != s.rows || s.weights.cols != s.k {
        return Err(shape_err(
            format!("{name}.weight"),
            format!(
                "expected {} x {}, found {} x {}",
                s.rows, s.k, s.weights.rows, s.weights.cols
            ),
        ));
    }
    let sums = validate_weights(s.weights, &format!("{name}.weight"))?;
    if s.bias.len() != s.rows {
        return Err(shape_err(
            format!("{name}.bias"),
            format!("expected {} values, found {}", s.rows, s.bias.len()),
        ));
    }
    if s.weight_scales.len() != 1 && s.weight_scales.len() != s.rows {
        return Err(shape_err(
            format!("{name}.weight_scales"),
            format!(
                "expected 1 or {} values, found {}",
                s.rows,
                s.weight_scales.len()
            ),
        ));
    }
    for &sw in s.weight_scales {
        QParams::new(sw, 0).map_err(|_| {
            qp_err(
                format!("{name}.weight_scales"),
                format!("scale {sw} must be finite, normal and > 0"),
            )
        })?;
    }
    // Overflow bound (the kernels' one, for every bit width): any partial sum of products is at most
    // K * 255 * 127 (K <= kernels::MAX_K); the kernels may add the bias before or after, so |bias_eff| plus that
    // must fit in i32 too. The original bias is checked as well: it bounds the true (zero-point corrected) sum.
    let prod_bound = Some(s.k)
        .filter(|&k| k <= kernels::MAX_K)
        .map(|k| k as i64 * MAX_ACT_CODE * 127)
        .ok_or_else(|| QuantError::ShapeMismatch {
            context: format!("{name}.weight"),
            detail: format!("K = {} can overflow the i32 accumulator", s.k),
        })?;
    let zp = s.input.zero_point as i64;
    let mut bias_eff = Vec::with_capacity(s.rows);
    for (j, (&b, &sum)) in s.bias.iter().zip(&sums).enumerate() {
        let e = b as i64 - zp * sum;
        if e.abs() + prod_bound > i32::MAX as i64 || (b as i64).abs() + prod_bound > i32::MAX as i64
        {
            return Err(shape_err(
                format!("{name}.bias"),
                format!(
                    "bias[{j}] = {b} with K = {} can overflow the i32 accumulator",
                    s.k
                ),
            ));
        }
        bias_eff.push(e as i32);
    }
    let (out, qp, qmax) = match s.output {
        OutputStage::Logits => {
            if !s.is_last {
                return Err(shape_err(
                    name.clone(),
                    "only the last layer may emit logits".into(),
                ));
            }
            let mut factor = Vec::with_capacity(s.rows);
            for j in 0..s.rows {
                let sw = if s.weight_scales.len() == 1 {
                    s.weight_scales.first()
                } else {
                    s.weight_scales.get(j)
                };
                let f = s.input.scale * sw.copied().unwrap_or(f32::NAN);
                if !f.is_finite() {
                    return Err(qp_err(
                        format!("{name}.weight_scales"),
                        format!("s_in * s_w[{j}] = {f} is not finite"),
                    ));
                }
                factor.push(f);
            }
            (Out::Logits { factor }, cur_qp, cur_qmax)
        }
        OutputStage::Requantize {
            qparams,
            bits,
            relu,
            requant,
        } => {
            if s.is_last {
                return Err(shape_err(
                    name.clone(),
                    "the last layer must emit logits".into(),
                ));
            }
            let (_, qmax) = act_code_range(*bits)?;
            check_qparams(*qparams, &format!("{name}.output"), qmax)?;
            if requant.len() != 1 && requant.len() != s.rows {
                return Err(shape_err(
                    format!("{name}.requant"),
                    format!("expected 1 or {} values, found {}", s.rows, requant.len()),
                ));
            }
            for r in requant {
                r.validate()?;
            }
            let qmin = if *relu { qparams.zero_point } else { 0 };
            (
                Out::Requant {
                    requant: requant.clone(),
                    zero_point: qparams.zero_point,
                    qmin,
                    qmax,
                },
                *qparams,
                qmax,
            )
        }
    };
    Ok((
        Gemm {
            n: s.rows,
            k: s.k,
            weights: if s.prepare {
                PrepackedWeights::new(s.weights.clone())?
            } else {
                PrepackedWeights::with_isa(Isa::Reference, s.weights.clone())?
            },
            bias_eff,
            out,
        },
        qp,
        qmax,
    ))
}

fn window_out(name: &str, input: Shape, w: &Window, channels: usize) -> Result<Shape, QuantError> {
    let (kh, kw) = w.kernel;
    let (sh, sw) = w.stride;
    let (ph, pw) = w.padding;
    let err = |d: String| shape_err(name.into(), d);
    if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
        return Err(err(format!(
            "kernel {:?} and stride {:?} must be >= 1",
            w.kernel, w.stride
        )));
    }
    let ih = input.height.checked_add(
        ph.checked_mul(2)
            .ok_or_else(|| err("padding overflow".into()))?,
    );
    let iw = input.width.checked_add(
        pw.checked_mul(2)
            .ok_or_else(|| err("padding overflow".into()))?,
    );
    match (ih, iw) {
        (Some(ih), Some(iw)) if ih >= kh && iw >= kw => Ok(Shape {
            channels,
            height: (ih - kh) / sh + 1,
            width: (iw - kw) / sw + 1,
        }),
        _ => Err(err(format!(
            "kernel {:?} does not fit input {}x{} with padding {:?}",
            w.kernel, input.height, input.width, w.padding
        ))),
    }
}

impl Engine {
    /// Validates `model` completely and prepares it to run, with the default [`EngineOptions`].
    pub fn new(model: &QuantModel) -> Result<Engine, QuantError> {
        Self::build(model, true)
    }

    /// [`Engine::new`] with explicit [`EngineOptions`].
    pub fn with_options(model: &QuantModel, options: EngineOptions) -> Result<Engine, QuantError> {
        let mut engine = Self::build(model, true)?;
        engine.options = options;
        Ok(engine)
    }

    /// The options this engine runs with.
    pub fn options(&self) -> EngineOptions {
        self.options
    }

    /// Every check of [`Engine::new`] without preparing weights for the selected kernel tier (the pair plans and
    /// panels are most of its cost): for the `.lbq` reader and writer, which only validate. The engine it returns
    /// runs matrix layers on the reference kernels.
    pub(crate) fn validated(model: &QuantModel) -> Result<Engine, QuantError> {
        Self::build(model, false)
    }

    fn build(model: &QuantModel, prepare: bool) -> Result<Engine, QuantError> {
        let spec = &model.input;
        check_qparams(spec.qparams, "input", MAX_ACT_CODE as i32)?;
        let mut shape = Shape {
            channels: spec.channels,
            height: spec.height,
            width: spec.width,
        };
        let input_features = match shape.elems() {
            Some(n) if n > 0 => n,
            _ => {
                return Err(shape_err(
                    "input".into(),
                    format!(
                        "{}x{}x{} is empty or overflows",
                        shape.channels, shape.height, shape.width
                    ),
                ))
            }
        };
        if model.layers.is_empty() {
            return Err(shape_err("model".into(), "no layers".into()));
        }
        if !model.class_names.is_empty() && model.class_names.len() != model.classes {
            return Err(shape_err(
                "class_names".into(),
                format!(
                    "{} names for {} classes",
                    model.class_names.len(),
                    model.classes
                ),
            ));
        }
        let mut cur_qp = spec.qparams;
        let mut cur_qmax = MAX_ACT_CODE as i32;
        let mut ops = Vec::with_capacity(model.layers.len());
        let mut out_elems = Vec::with_capacity(model.layers.len());
        let mut max_sample_elems = input_features;
        let last = model.layers.len() - 1;
        for (i, layer) in model.layers.iter().enumerate() {
            let name = format!("layers.{i}");
            let in_elems = shape
                .elems()
                .ok_or_else(|| shape_err(name.clone(), "size overflow".into()))?;
            let op = match layer {
                QLayer::Dense(d) => {
                    if d.in_features != in_elems {
                        return Err(shape_err(
                            name,
                            format!(
                                "in_features {} but the incoming activation has {in_elems}",
                                d.in_features
                            ),
                        ));
                    }
                    let (gemm, qp, qmax) = build_gemm(
                        MatrixSpec {
                            name: name.clone(),
                            rows: d.out_features,
                            k: d.in_features,
                            weights: &d.weights,
                            weight_scales: &d.weight_scales,
                            bias: &d.bias,
                            input: d.input,
                            output: &d.output,
                            is_last: i == last,
                            prepare,
                        },
                        cur_qp,
                        cur_qmax,
                    )?;
                    cur_qp = qp;
                    cur_qmax = qmax;
                    shape = Shape {
                        channels: d.out_features,
                        height: 1,
                        width: 1,
                    };
                    Op::Dense(gemm)
                }
                QLayer::Conv2d(c) => {
                    if c.in_channels != shape.channels {
                        return Err(shape_err(
                            name,
                            format!(
                                "in_channels {} but the incoming activation has {}",
                                c.in_channels, shape.channels
                            ),
                        ));
                    }
                    let window = Window {
                        kernel: c.kernel,
                        stride: c.stride,
                        padding: c.padding,
                    };
                    let output = window_out(&name, shape, &window, c.out_channels)?;
                    let k = c
                        .in_channels
                        .checked_mul(c.kernel.0)
                        .and_then(|v| v.checked_mul(c.kernel.1))
                        .ok_or_else(|| shape_err(name.clone(), "K overflows".into()))?;
                    let (gemm, qp, qmax) = build_gemm(
                        MatrixSpec {
                            name: name.clone(),
                            rows: c.out_channels,
                            k,
                            weights: &c.weights,
                            weight_scales: &c.weight_scales,
                            bias: &c.bias,
                            input: c.input,
                            output: &c.output,
                            is_last: i == last,
                            prepare,
                        },
                        cur_qp,
                        cur_qmax,
                    )?;
                    let pad_code =
                        u8::try_from(c.input.zero_point).map_err(|_| internal("zero point"))?;
                    // im2col scratch (positions x K) plus the i32 accumulators, per sample.
                    let positions = output.height.checked_mul(output.width);
                    let scratch = positions
                        .and_then(|p| p.checked_mul(k.checked_add(c.out_channels)?))
                        .ok_or_else(|| shape_err(name.clone(), "im2col size overflows".into()))?;
                    max_sample_elems = max_sample_elems.max(scratch);
                    let direct = if prepare {
                        choose_direct(c, shape, &output)?.map(Box::new)
                    } else {
                        None
                    };
                    // A direct kernel's accumulators in its own layout, at most whole padded rows rounded up to 16
                    // positions (u8 quads on the wide grid). Bounded from the shape alone, so that validation
                    // without prepared kernels (`prepare == false`) bounds the same memory.
                    let padded_w = window
                        .padding
                        .1
                        .checked_mul(2)
                        .and_then(|p| shape.width.checked_add(p));
                    let direct_elems = padded_w
                        .and_then(|wp| output.height.checked_mul(wp))
                        .and_then(|p| p.checked_next_multiple_of(16))
                        .and_then(|p| p.checked_mul(c.out_channels))
                        .ok_or_else(|| {
                            shape_err(name.clone(), "direct conv size overflows".into())
                        })?;
                    if c.stride == (1, 1) {
                        max_sample_elems = max_sample_elems.max(direct_elems);
                    }
                    let op = Op::Conv(ConvOp {
                        gemm,
                        input: shape,
                        output,
                        window,
                        pad_code,
                        direct,
                    });
                    cur_qp = qp;
                    cur_qmax = qmax;
                    shape = output;
                    op
                }
                QLayer::MaxPool2d { kernel, stride } => {
                    if i == last {
                        return Err(shape_err(name, "the last layer must emit logits".into()));
                    }
                    let window = Window {
                        kernel: *kernel,
                        stride: *stride,
                        padding: (0, 0),
                    };
                    let output = window_out(&name, shape, &window, shape.channels)?;
                    let op = Op::MaxPool {
                        input: shape,
                        output,
                        window,
                    };
                    shape = output;
                    op
                }
                QLayer::AvgPool2d {
                    kernel,
                    stride,
                    input,
                    output: out_qp,
                    bits,
                } => {
                    if i == last {
                        return Err(shape_err(name, "the last layer must emit logits".into()));
                    }
                    check_qparams(*input, &format!("{name}.input"), cur_qmax)?;
                    if *input != cur_qp {
                        return Err(qp_err(
                            format!("{name}.input"),
                            format!("{input:?} differs from the incoming activation {cur_qp:?}"),
                        ));
                    }
                    let (_, qmax) = act_code_range(*bits)?;
                    check_qparams(*out_qp, &format!("{name}.output"), qmax)?;
                    let window = Window {
                        kernel: *kernel,
                        stride: *stride,
                        padding: (0, 0),
                    };
                    let output = window_out(&name, shape, &window, shape.channels)?;
                    let area = kernel
                        .0
                        .checked_mul(kernel.1)
                        .filter(|&a| (a as i64) * MAX_ACT_CODE <= i32::MAX as i64);
                    let area = area
                        .ok_or_else(|| shape_err(name.clone(), "pool window too large".into()))?;
                    let real = input.scale as f64 / (out_qp.scale as f64 * area as f64);
                    let requant = Requant::from_real(real)?;
                    let op = Op::AvgPool {
                        input: shape,
                        output,
                        window,
                        requant,
                        zp_in: input.zero_point,
                        zp_out: out_qp.zero_point,
                        qmax,
                    };
                    cur_qp = *out_qp;
                    cur_qmax = qmax;
                    shape = output;
                    op
                }
                QLayer::Flatten => {
                    if i == last {
                        return Err(shape_err(name, "the last layer must emit logits".into()));
                    }
                    shape = Shape {
                        channels: in_elems,
                        height: 1,
                        width: 1,
                    };
                    Op::Flatten
                }
            };
            let e = shape.elems().filter(|&e| e > 0).ok_or_else(|| {
                shape_err(format!("layers.{i}"), "output is empty or overflows".into())
            })?;
            max_sample_elems = max_sample_elems.max(e);
            out_elems.push(e);
            ops.push(op);
        }
        let classes = out_elems.last().copied().unwrap_or(0);
        if classes != model.classes {
            return Err(shape_err(
                "classes".into(),
                format!(
                    "model declares {} classes, the last layer emits {classes}",
                    model.classes
                ),
            ));
        }
        let macs_per_sample = ops
            .iter()
            .map(|op| match op {
                Op::Dense(g) => g.n.saturating_mul(g.k),
                Op::Conv(ConvOp { gemm, output, .. }) => gemm
                    .n
                    .saturating_mul(gemm.k)
                    .saturating_mul(output.height * output.width),
                _ => 0,
            })
            .fold(0usize, usize::saturating_add);
        Ok(Engine {
            options: EngineOptions::default(),
            ops,
            out_elems,
            input_features,
            classes,
            max_sample_elems,
            macs_per_sample,
        })
    }

    /// The kernel path of each matrix layer, in order (`dense 784x64: avx2 pairs`, `conv 16x150: direct`...), for
    /// reports that say which kernel ran.
    pub fn kernel_paths(&self) -> Vec<String> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Dense(g) => Some(format!("dense {}x{}: {}", g.k, g.n, g.weights.path())),
                Op::Conv(ConvOp {
                    direct: Some(d),
                    gemm,
                    ..
                }) => Some(format!("conv {}x{}: {}", gemm.k, gemm.n, d.path())),
                Op::Conv(c) => Some(format!(
                    "conv {}x{}: {}",
                    c.gemm.k,
                    c.gemm.n,
                    c.gemm.weights.path()
                )),
                _ => None,
            })
            .collect()
    }

    /// Input features per sample.
    pub fn input_features(&self) -> usize {
        self.input_features
    }

    /// Logits per sample.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Largest per-sample buffer (activation, im2col scratch) a run allocates, in elements; lets a loader bound
    /// the memory an untrusted model can demand.
    pub fn max_sample_elems(&self) -> usize {
        self.max_sample_elems
    }

    /// Runs `batch` samples of raw `u8` input (`[batch, features]`) and returns f32 logits `[batch, classes]`.
    pub fn run(&self, input: &[u8], batch: usize) -> Result<Vec<f32>, QuantError> {
        Ok(self.execute(input, batch, None, true)?.1)
    }

    /// Like [`Engine::run`], but a large batch is always handed whole to the rayon pool, the caller waiting on
    /// rayon's latch, as `run` does only when called from inside the pool (for comparisons: the `split_ab`
    /// example times the two strategies in alternating windows).
    pub fn run_pooled(&self, input: &[u8], batch: usize) -> Result<Vec<f32>, QuantError> {
        Ok(self.execute(input, batch, None, false)?.1)
    }

    /// Like [`Engine::run`], also returning every layer's integer output.
    pub fn run_traced(&self, input: &[u8], batch: usize) -> Result<Trace, QuantError> {
        let mut codes = Vec::with_capacity(self.ops.len().saturating_sub(1));
        let (accumulators, logits) = self.execute(input, batch, Some(&mut codes), true)?;
        Ok(Trace {
            codes,
            accumulators,
            logits,
        })
    }

    /// Predicted class per sample: argmax of the logits, ties going to the lowest index.
    pub fn predict(&self, input: &[u8], batch: usize) -> Result<Vec<usize>, QuantError> {
        let logits = self.run(input, batch)?;
        Ok(argmax_rows(&logits, self.classes))
    }

    /// Runs the graph with this thread's reusable activation buffers (only the returned logits are allocated,
    /// plus the accumulators and codes when tracing). Returns the last layer's accumulators only when tracing.
    fn execute(
        &self,
        input: &[u8],
        batch: usize,
        trace: Option<&mut Vec<Vec<u8>>>,
        caller_splits: bool,
    ) -> Result<(Vec<i32>, Vec<f32>), QuantError> {
        let rows = self.task_rows();
        if trace.is_none() && batch > rows && rayon::current_num_threads() > 1 {
            let features = self.input_features;
            if batch.checked_mul(features) != Some(input.len()) {
                return self.execute_local(input, batch, None);
            }
            if caller_splits && rayon::current_thread_index().is_none() {
                return self.execute_split(input, batch, rows);
            }
            let mut logits = vec![0f32; batch * self.classes];
            logits
                .par_chunks_mut(rows * self.classes)
                .zip(input.par_chunks(rows * features))
                .try_for_each(|(out, x)| {
                    let (_, l) = self.execute_local(x, x.len() / features, None)?;
                    out.copy_from_slice(&l);
                    Ok::<(), QuantError>(())
                })?;
            return Ok((Vec::new(), logits));
        }
        self.execute_local(input, batch, trace)
    }

    /// The batch split when the caller is outside the rayon pool: the caller and the spinning [`workers`] take
    /// tasks of `rows` samples from a shared counter. Against handing the whole split to the rayon pool
    /// ([`Engine::run_pooled`]), whose workers fall asleep between calls and take tens of microseconds to wake on
    /// this VM, the `split_ab` example measures the difference in alternating windows (BENCHMARKS.md). While
    /// another thread's batch holds the helpers, this one runs on the calling thread alone.
    fn execute_split(
        &self,
        input: &[u8],
        batch: usize,
        rows: usize,
    ) -> Result<(Vec<i32>, Vec<f32>), QuantError> {
        use std::sync::Mutex;
        let features = self.input_features;
        let tasks = batch.div_ceil(rows);
        let mut logits = vec![0f32; batch * self.classes];
        let outs: Vec<Mutex<&mut [f32]>> = logits
            .chunks_mut(rows * self.classes)
            .map(Mutex::new)
            .collect();
        let first_err: Mutex<Option<QuantError>> = Mutex::new(None);
        let task = |i: usize| {
            // Resets the flag even if the task panics.
            struct Split;
            impl Drop for Split {
                fn drop(&mut self) {
                    IN_SPLIT.set(false);
                }
            }
            IN_SPLIT.set(true);
            let _guard = Split;
            let lo = i * rows;
            let hi = (lo + rows).min(batch);
            let result = self
                .execute_local(&input[lo * features..hi * features], hi - lo, None)
                .and_then(|(_, l)| {
                    let out = outs
                        .get(i)
                        .ok_or_else(|| internal("batch task out of range"))?;
                    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                    if out.len() != l.len() {
                        return Err(internal("batch task logits of the wrong length"));
                    }
                    out.copy_from_slice(&l);
                    Ok(())
                });
            if let Err(e) = result {
                first_err
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e);
            }
        };
        let completed = workers::run_tasks(tasks, self.options.allow_spinning, &task);
        drop(outs);
        match first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None if !completed => Err(internal("a batch task panicked")),
            None => Ok((Vec::new(), logits)),
        }
    }

    /// Samples per rayon task of the batch split (see [`PAR_TASK_MACS`]).
    fn task_rows(&self) -> usize {
        PAR_TASK_MACS
            .div_ceil(self.macs_per_sample.max(1))
            .next_multiple_of(PAR_TASK_ROW_MULTIPLE)
    }

    /// [`Engine::execute`] on the calling thread.
    fn execute_local(
        &self,
        input: &[u8],
        batch: usize,
        trace: Option<&mut Vec<Vec<u8>>>,
    ) -> Result<(Vec<i32>, Vec<f32>), QuantError> {
        thread_local! {
            static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
        }
        BUFFERS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut b) => self.execute_in(input, batch, trace, &mut b),
            Err(_) => self.execute_in(input, batch, trace, &mut Buffers::default()),
        })
    }

    fn execute_in(
        &self,
        input: &[u8],
        batch: usize,
        mut trace: Option<&mut Vec<Vec<u8>>>,
        bufs: &mut Buffers,
    ) -> Result<(Vec<i32>, Vec<f32>), QuantError> {
        let expected = batch.checked_mul(self.input_features);
        if expected != Some(input.len()) {
            return Err(shape_err(
                "engine input".into(),
                format!(
                    "batch {batch} x {} features needs {:?} bytes, found {}",
                    self.input_features,
                    expected,
                    input.len()
                ),
            ));
        }
        if batch == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let Buffers { cur, next, acc } = bufs;
        // The first layer reads the caller's input in place; afterwards `cur` holds the previous layer's codes.
        let mut from_input = true;
        let last = self.ops.len() - 1;
        let mut i = 0;
        while let Some(op) = self.ops.get(i) {
            let src: &[u8] = if from_input { input } else { cur };
            // Conv + 2 x 2 max pool run fused when no layer-by-layer trace needs the conv's own codes.
            if let (None, Op::Conv(conv), Some(Op::MaxPool { output, window, .. })) =
                (&trace, op, self.ops.get(i + 1))
            {
                if i + 1 < last
                    && window.kernel == (2, 2)
                    && window.stride == (2, 2)
                    && matches!(conv.gemm.out, Out::Requant { .. })
                {
                    let out_len = batch
                        .checked_mul(self.out_elems.get(i + 1).copied().unwrap_or(0))
                        .ok_or_else(|| internal("batch too large"))?;
                    fit(next, out_len);
                    conv_pool_requant(conv, *output, src, next)?;
                    std::mem::swap(cur, next);
                    from_input = false;
                    i += 2;
                    continue;
                }
            }
            let out_len = batch
                .checked_mul(self.out_elems.get(i).copied().unwrap_or(0))
                .ok_or_else(|| internal("batch too large"))?;
            if i == last {
                fit(acc, out_len);
                match op {
                    Op::Dense(g) => g.acc(src, batch, acc)?,
                    Op::Conv(conv) => conv_acc(conv, src, acc)?,
                    _ => return Err(internal("the last layer must emit logits")),
                }
                let logits = self.logits(op, acc)?;
                let accumulators = if trace.is_some() {
                    acc.clone()
                } else {
                    Vec::new()
                };
                return Ok((accumulators, logits));
            }
            if let (Op::Flatten, None) = (op, &trace) {
                // A no-op on NCHW codes: the next layer reads them where they are.
                i += 1;
                continue;
            }
            fit(next, out_len);
            match op {
                Op::Dense(g) => g.requant(src, batch, next)?,
                Op::Conv(conv) => conv_requant(conv, src, next)?,
                Op::MaxPool {
                    input,
                    output,
                    window,
                } => {
                    if window.kernel == (2, 2) && window.stride == (2, 2) {
                        max_pool_2x2(src, *input, *output, next)?;
                    } else {
                        pool(src, *input, *output, window, next, 0u8, u8::max, |m| m);
                    }
                }
                Op::AvgPool {
                    input,
                    output,
                    window,
                    requant,
                    zp_in,
                    zp_out,
                    qmax,
                } => {
                    let zp = *zp_in;
                    pool(
                        src,
                        *input,
                        *output,
                        window,
                        next,
                        0i32,
                        |sum, v| sum + (v as i32 - zp),
                        |sum| requantize(sum, *requant, *zp_out, 0, *qmax) as u8,
                    );
                }
                Op::Flatten => next.copy_from_slice(src),
            }
            if let Some(t) = trace.as_deref_mut() {
                t.push(next.clone());
            }
            std::mem::swap(cur, next);
            from_input = false;
            i += 1;
        }
        Err(internal("no layers"))
    }

    fn logits(&self, op: &Op, acc: &[i32]) -> Result<Vec<f32>, QuantError> {
        let (gemm, positions) = match op {
            Op::Dense(g) => (g, 1),
            Op::Conv(ConvOp { gemm, output, .. }) => (gemm, output.height * output.width),
            _ => return Err(internal("the last layer must emit logits")),
        };
        let Out::Logits { factor } = &gemm.out else {
            return Err(internal("the last layer must emit logits"));
        };
        // NCHW: each run of `positions` accumulators is one channel, channels cycling per sample.
        let mut logits = Vec::with_capacity(acc.len());
        for (row, &f) in acc.chunks(positions.max(1)).zip(factor.iter().cycle()) {
            logits.extend(row.iter().map(|&a| a as f32 * f));
        }
        Ok(logits)
    }
}

/// Argmax of each row of `values` (`cols` per row), ties to the lowest index.
pub fn argmax_rows(values: &[f32], cols: usize) -> Vec<usize> {
    if cols == 0 {
        return Vec::new();
    }
    values
        .chunks(cols)
        .map(|row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best
        })
        .collect()
}

/// The direct kernel for a conv layer when it applies (int8 weights, stride 1, an AVX2 tier) and costs less than
/// the im2col GEMM, whose int8 tile pads positions to 6 rows, channels to 16 columns and K to 16: the u8 quad
/// scheme when the weights have a safe pair order, else the i16 scheme when it issues fewer multiply-accumulates.
fn choose_direct(
    c: &crate::model::QConv2d,
    input: Shape,
    output: &Shape,
) -> Result<Option<DirectConv>, QuantError> {
    let isa = kernels::selected_isa();
    if c.stride != (1, 1)
        || c.weights.packing != crate::pack::Packing::I8
        || !matches!(isa, Isa::Avx2 | Isa::Avx512Vnni)
    {
        return Ok(None);
    }
    let geo = ConvGeometry {
        c_in: input.channels,
        h: input.height,
        w: input.width,
        c_out: c.out_channels,
        kh: c.kernel.0,
        kw: c.kernel.1,
        pad_h: c.padding.0,
        pad_w: c.padding.1,
    };
    if geo.oh() != output.height || geo.ow() != output.width {
        return Err(internal("direct convolution geometry"));
    }
    let positions = output.height * output.width;
    let gemm_macs = positions.next_multiple_of(6)
        * geo.c_out.next_multiple_of(16)
        * geo.k().next_multiple_of(16);
    // The u8 quad scheme multiplies like the GEMM's pair path and skips its im2col, gather, and transpose or
    // positions-layout pooling: it is worth up to 1.5x the GEMM's multiply-accumulates (LeNet's second conv,
    // 1.34x, took 17% less CPU per sample on quads).
    let direct = DirectConv::new(isa, geo, &c.weights)?;
    match direct.quad_len() {
        Some(len) if 2 * direct.layout().1 * len * geo.c_out <= 3 * gemm_macs => Ok(Some(direct)),
        _ if geo.direct_macs() >= gemm_macs => Ok(None),
        // Without a quad plan `new` already built the i16 scheme.
        None => Ok(Some(direct)),
        Some(_) => DirectConv::widened(isa, geo, &c.weights).map(Some),
    }
}

/// Copies one NCHW sample into `[c][h + 2 ph][w + 2 pw + 8]` planes filled with `pad_code`: im2col then reads
/// every window row as one 8-byte load, with no edge cases (the 8 extra columns absorb the over-read). Returns the
/// padded row length.
fn pad_planes(
    x: &[u8],
    input: Shape,
    w: &Window,
    pad_code: u8,
    planes: &mut PaddedPlanes,
) -> usize {
    let (ph, pw) = w.padding;
    let wp = input.width + 2 * pw + 8;
    let len = input.channels * (input.height + 2 * ph) * wp;
    let dims = (input.channels, input.height, input.width);
    planes.fill(x, dims, w.padding, wp, len, pad_code);
    wp
}

/// im2col of one NCHW sample: `col[p * k + (ic*kh*kw + ky*kw + kx)]` for output position `p`, padded positions
/// holding `pad_code`. `col` must have 8 bytes of slack past `positions * k`, which may be overwritten.
fn im2col(
    x: &[u8],
    input: Shape,
    output: Shape,
    w: &Window,
    pad_code: u8,
    planes: &mut PaddedPlanes,
    col: &mut [u8],
) {
    let (kh, kw) = w.kernel;
    let (sh, sw) = w.stride;
    let k = input.channels * kh * kw;
    let wp = pad_planes(x, input, w, pad_code, planes);
    let plane = (input.height + 2 * w.padding.0) * wp;
    let positions = output.height * output.width;
    let data = &planes.data;
    if kw <= 8 {
        // Every read ends at most at the last padded row's column (ow - 1) * sw + 8 <= w + 2 pw + 8 - kw < wp,
        // and every write at most at positions * k + 8 = col.len(): checked once here, not per copy.
        let last_read = input.channels.saturating_sub(1) * plane
            + kh.saturating_sub(1) * wp
            + output.height.saturating_sub(1) * sh * wp
            + output.width.saturating_sub(1) * sw
            + 8;
        assert!(last_read <= data.len() && positions * k + 8 <= col.len());
        let g = WindowCopy {
            src: data.as_ptr(),
            dst: col.as_mut_ptr(),
            channels: input.channels,
            plane,
            wp,
            out: (output.height, output.width),
            stride: (sh, sw),
        };
        // SAFETY: the reads and writes stay within the bounds asserted above; the buffers are distinct
        // allocations. LeNet's 5 x 5 and the common 3 x 3 kernels get their row loops unrolled.
        unsafe {
            match (kh, kw) {
                (5, 5) => g.run(5, 5),
                (3, 3) => g.run(3, 3),
                _ => g.run(kh, kw),
            }
        }
    } else {
        let mut d = 0;
        for oy in 0..output.height {
            for ox in 0..output.width {
                let corner = oy * sh * wp + ox * sw;
                for ic in 0..input.channels {
                    for ky in 0..kh {
                        let r = corner + ic * plane + ky * wp;
                        col[d..d + kw].copy_from_slice(&data[r..r + kw]);
                        d += kw;
                    }
                }
            }
        }
    }
}

/// The 8-byte window-row copies of [`im2col`] for kernels at most 8 wide.
struct WindowCopy {
    src: *const u8,
    dst: *mut u8,
    channels: usize,
    /// Bytes per padded plane.
    plane: usize,
    /// Bytes per padded row.
    wp: usize,
    out: (usize, usize),
    stride: (usize, usize),
}

impl WindowCopy {
    /// Copies window row `(ic, ky)` of each output position as one 8-byte load and store; the `8 - kw` surplus
    /// bytes land on the next row's place (or the slack), which is written after.
    ///
    /// # Safety
    /// `src` is readable up to the last window row's byte 8 and `dst` writable for `positions * k + 8` bytes
    /// (as [`im2col`] asserts); `kw <= 8`.
    #[inline(always)]
    unsafe fn run(&self, kh: usize, kw: usize) {
        let mut d = self.dst;
        for oy in 0..self.out.0 {
            for ox in 0..self.out.1 {
                let mut s = self
                    .src
                    .add(oy * self.stride.0 * self.wp + ox * self.stride.1);
                for _ in 0..self.channels {
                    for ky in 0..kh {
                        std::ptr::copy_nonoverlapping(s.add(ky * self.wp), d.add(ky * kw), 8);
                    }
                    s = s.add(self.plane);
                    d = d.add(kh * kw);
                }
            }
        }
    }
}

/// Makes `v` exactly `len` long without touching kept elements: for buffers every element of which the caller
/// overwrites, so a same-size call (every sample, every batch) costs no memset.
fn fit<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() != len {
        v.resize(len, T::default());
    }
}

/// Transposes `[positions, channels]` into `[channels, positions]`.
fn transpose_into<T: Copy>(src: &[T], positions: usize, channels: usize, dst: &mut [T]) {
    for (c, drow) in dst.chunks_exact_mut(positions).take(channels).enumerate() {
        for (p, d) in drow.iter_mut().enumerate() {
            *d = src[p * channels + c];
        }
    }
}

/// Scratch for one convolution sample; `T` is the layer's output element (`u8` codes or `i32` accumulators).
struct ConvScratch<T> {
    planes: PaddedPlanes,
    col: Vec<u8>,
    acc: Vec<i32>,
    tmp: Vec<T>,
}

impl<T> Default for ConvScratch<T> {
    fn default() -> Self {
        Self {
            planes: PaddedPlanes::default(),
            col: Vec::new(),
            acc: Vec::new(),
            tmp: Vec::new(),
        }
    }
}

impl ConvOp {
    /// Runs every sample of `x` into `out` (`out_elems` per sample): `direct(weights, sample, scratch
    /// accumulators, out)` on the direct path, else im2col, `gemm(col, positions, [positions][channels] tmp)` and
    /// `finish(one sample's tmp, out)`. Samples run in parallel when called outside the
    /// rayon pool (a batch too small for [`Engine::execute`] to split), else sequentially (the batch split already
    /// occupies every thread).
    fn run<T: Copy + Default + Send, U: Send>(
        &self,
        x: &[u8],
        out: &mut [U],
        out_elems: usize,
        direct: impl Fn(&DirectConv, &[u8], &mut Vec<i32>, &mut [U]) -> Result<(), QuantError> + Sync,
        gemm: impl Fn(&[u8], usize, &mut [T]) -> Result<(), QuantError> + Sync,
        finish: impl Fn(&[T], &mut [U]) -> Result<(), QuantError> + Sync,
    ) -> Result<(), QuantError> {
        let (input, output) = (self.input, self.output);
        let in_elems = input.channels * input.height * input.width;
        let positions = output.height * output.width;
        let tmp_elems = positions * self.gemm.n;
        let col_len = positions * self.gemm.k;
        // im2col of `samples` samples into one matrix, one GEMM over all their positions (full micro-tiles, one
        // call), then `finish` per sample.
        let im2col_gemm = |s: &mut ConvScratch<T>, o: &mut [U], xs: &[u8]| {
            let samples = o.len() / out_elems.max(1);
            fit(&mut s.col, samples * col_len + 8);
            for (i, xi) in xs.chunks(in_elems).take(samples).enumerate() {
                let dst = &mut s.col[i * col_len..];
                im2col(
                    xi,
                    input,
                    output,
                    &self.window,
                    self.pad_code,
                    &mut s.planes,
                    dst,
                );
            }
            fit(&mut s.tmp, samples * tmp_elems);
            gemm(&s.col[..samples * col_len], samples * positions, &mut s.tmp)?;
            for (t, oi) in s.tmp.chunks(tmp_elems).zip(o.chunks_mut(out_elems)) {
                finish(t, oi)?;
            }
            Ok(())
        };
        let sample = |s: &mut ConvScratch<T>, o: &mut [U], xs: &[u8]| match &self.direct {
            Some(d) => direct(d, xs, &mut s.acc, o),
            None => im2col_gemm(s, o, xs),
        };
        if rayon::current_thread_index().is_some() || IN_SPLIT.get() || out.len() <= out_elems {
            let mut s = ConvScratch::default();
            match &self.direct {
                Some(_) => out
                    .chunks_mut(out_elems)
                    .zip(x.chunks(in_elems))
                    .try_for_each(|(o, xs)| sample(&mut s, o, xs)),
                None => im2col_gemm(&mut s, out, x),
            }
        } else {
            out.par_chunks_mut(out_elems)
                .zip(x.par_chunks(in_elems))
                .try_for_each_init(ConvScratch::default, |s, (o, xs)| sample(s, o, xs))
        }
    }

    /// Per-sample output elements (NCHW).
    fn out_elems(&self) -> usize {
        self.output.channels * self.output.height * self.output.width
    }
}

/// The requantization of a layer that emits codes.
struct RequantOut<'a> {
    requant: &'a [Requant],
    zero_point: i32,
    qmin: i32,
    qmax: i32,
}

impl<'a> RequantOut<'a> {
    /// The kernels' output stage with `bias` (empty where the accumulators already hold it).
    fn params(&self, bias: &'a [i32]) -> kernels::OutputParams<'a> {
        kernels::OutputParams {
            bias,
            requant: self.requant,
            zero_point: self.zero_point,
            qmin: self.qmin,
            qmax: self.qmax,
        }
    }

    /// Requantizes `[channels][positions]` accumulators of one sample.
    fn channels(&self, acc: &[i32], channels: usize, out: &mut [u8]) -> Result<(), QuantError> {
        kernels::conv::requant_channels(
            acc,
            channels,
            acc.len() / channels.max(1),
            self.requant,
            self.zero_point,
            self.qmin,
            self.qmax,
            out,
        )
    }
}

fn conv_requant(conv: &ConvOp, x: &[u8], out: &mut [u8]) -> Result<(), QuantError> {
    let g = &conv.gemm;
    let rq = g.requant_out()?;
    let positions = conv.output.height * conv.output.width;
    conv.run(
        x,
        out,
        conv.out_elems(),
        |d, xs, acc, o| {
            fit(acc, o.len());
            kernels::conv::direct_conv_acc(d, xs, conv.pad_code, &g.bias_eff, acc)?;
            rq.channels(acc, g.n, o)
        },
        |col, m, tmp| g.requant(col, m, tmp),
        |t, o| {
            transpose_into(t, positions, g.n, o);
            Ok(())
        },
    )
}

fn conv_acc(conv: &ConvOp, x: &[u8], out: &mut [i32]) -> Result<(), QuantError> {
    let g = &conv.gemm;
    let positions = conv.output.height * conv.output.width;
    conv.run(
        x,
        out,
        conv.out_elems(),
        |d, xs, _, o| kernels::conv::direct_conv_acc(d, xs, conv.pad_code, &g.bias_eff, o),
        |col, m, tmp| g.acc(col, m, tmp),
        |t, o| {
            transpose_into(t, positions, g.n, o);
            Ok(())
        },
    )
}

/// A convolution followed by a 2 x 2, stride-2 max pool, fused: the pool takes the max of the i32 accumulators
/// and only its outputs are requantized. Exact: requantization (positive multiplier, rounding, zero point,
/// clamp) never decreases as the accumulator grows, so the max of requantized codes is the requantized max, and
/// a quarter of the values go through it.
fn conv_pool_requant(
    conv: &ConvOp,
    pooled: Shape,
    x: &[u8],
    out: &mut [u8],
) -> Result<(), QuantError> {
    let g = &conv.gemm;
    let rq = g.requant_out()?;
    let (h, w) = (conv.output.height, conv.output.width);
    let pooled_elems = pooled.channels * pooled.height * pooled.width;
    let p = rq.params(&[]);
    let isa = kernels::selected_isa();
    let pool = |acc: &[i32], layout, o: &mut [u8]| {
        let conv = ConvAcc {
            acc,
            layout,
            channels: g.n,
            height: h,
            width: w,
        };
        kernels::conv::max_pool_requant(isa, conv, &p, o)
    };
    conv.run(
        x,
        out,
        pooled_elems,
        |d, xs, acc, o| {
            // The scheme's own layout (whole padded rows for the u8 quads): the pool reads the valid columns.
            let (row, plane) = d.layout();
            fit(acc, g.n * plane);
            kernels::conv::direct_conv_acc_wide(d, xs, conv.pad_code, &g.bias_eff, acc)?;
            pool(acc, AccLayout::Planes { row, plane }, o)
        },
        |col, m, tmp: &mut [i32]| g.acc(col, m, tmp),
        |t, o| pool(t, AccLayout::Positions, o),
    )
}

/// [`pool`] with the max over 2 x 2 windows at stride 2 (LeNet's pooling): the vertical max of each row pair
/// into one contiguous plane, then the SIMD pair max over the whole plane at once (LeNet's rows are too short
/// for a vector each).
fn max_pool_2x2(x: &[u8], input: Shape, output: Shape, out: &mut [u8]) -> Result<(), QuantError> {
    let (w, ow) = (input.width, output.width);
    let in_plane = input.height * w;
    let out_plane = output.height * ow;
    let mut vmax = vec![0u8; 2 * out_plane];
    for (xp, op) in x.chunks(in_plane).zip(out.chunks_mut(out_plane)) {
        for (oy, v) in vmax.chunks_exact_mut(2 * ow).enumerate() {
            let a = &xp[2 * oy * w..][..2 * ow];
            let b = &xp[(2 * oy + 1) * w..][..2 * ow];
            for ((v, &a), &b) in v.iter_mut().zip(a).zip(b) {
                *v = a.max(b);
            }
        }
        kernels::conv::max_pool_2x2_row(&vmax, &vmax, op)?;
    }
    Ok(())
}

/// Pooling without padding over each channel plane: `finish(fold(step, init, window codes))` per output.
#[allow(clippy::too_many_arguments)]
fn pool<T: Copy>(
    x: &[u8],
    input: Shape,
    output: Shape,
    w: &Window,
    out: &mut [u8],
    init: T,
    step: impl Fn(T, u8) -> T,
    finish: impl Fn(T) -> u8,
) {
    let (kh, kw) = w.kernel;
    let (sh, sw) = w.stride;
    let in_plane = input.height * input.width;
    let out_plane = output.height * output.width;
    for (xp, op) in x.chunks(in_plane).zip(out.chunks_mut(out_plane)) {
        for (oy, orow) in op.chunks_exact_mut(output.width).enumerate() {
            for (ox, o) in orow.iter_mut().enumerate() {
                let mut a = init;
                for ky in 0..kh {
                    let row = (oy * sh + ky) * input.width + ox * sw;
                    for &v in &xp[row..row + kw] {
                        a = step(a, v);
                    }
                }
                *o = finish(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{random_cnn, random_mlp, LayerOpts, Rng};

    #[test]
    fn validation_only_engine_computes_the_same_logits_and_limits() {
        for seed in 0..6u64 {
            let o = LayerOpts {
                weight_bits: [8, 4, 2][seed as usize % 3],
                act_bits: 8,
                per_channel: seed % 2 == 0,
            };
            let model = if seed < 3 {
                random_cnn(seed, o)
            } else {
                random_mlp(seed, o)
            };
            let fast = Engine::new(&model).expect("valid model");
            let checked = Engine::validated(&model).expect("valid model");
            assert_eq!(fast.max_sample_elems(), checked.max_sample_elems());
            let x = Rng(seed).bytes(7 * fast.input_features());
            let (a, b) = (fast.run(&x, 7), checked.run(&x, 7));
            assert_eq!(a.expect("runs"), b.expect("runs"), "seed {seed}");
        }
    }
}
