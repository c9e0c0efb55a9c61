//! Conv2d: im2col + GEMM, or a direct kernel when it issues fewer multiply-accumulates; fused with a following
//! 2 x 2 max pool when the planner asks ([`QConv2d::plan_fused_max_pool`]).
//!
//! Conventions (normative, with those of [`super::matrix`]): im2col on codes, padded positions hold the input
//! zero point, column index `k = ic*kh*kw + ky*kw + kx` (weights are `[oc][ic][kh][kw]`); output is NCHW.
//! Fused conv + 2 x 2 stride-2 max pool takes the max of the i32 accumulators, then one requantization: the same
//! codes, because requantization never decreases as the accumulator grows.
//!
//! (Over 800 lines on purpose: the planner's choice between im2col, direct and plane kernels, and each one's
//! geometry checks, in one place.)
use super::matrix::{describe_matrix, Gemm, MatrixSpec, Out};
use super::{
    fit, internal, shape_err, InferCx, Inferred, OpDef, PlanCx, Shape, Step, StepOut, ValueInfo,
    ValueQuant, Window,
};
use crate::error::QuantError;
use crate::kernels;
use crate::kernels::conv::{AccLayout, ConvAcc, ConvGeometry, DirectConv};
use crate::kernels::conv_planes::{plane_conv_requant, PlaneConv, Residual, Scheme};
use crate::kernels::depthwise::{
    grouped_conv_acc, grouped_conv_requant, GroupedConv, GroupedConvGeometry,
};
use crate::kernels::eltwise::{add_u8, AddQuant};
use crate::kernels::winograd::{winograd_applies, winograd_conv_requant, WinogradConv};
use crate::kernels::{Isa, PaddedPlanes};
use crate::model::{QAdd, QConv2d};
use crate::workers;
use rayon::prelude::*;

impl QConv2d {
    fn window(&self) -> Window {
        Window {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// Codes per weight row: `in_channels / groups * kh * kw`.
    fn k(&self, name: &str) -> Result<usize, QuantError> {
        let g = self.groups;
        if g == 0 || !self.in_channels.is_multiple_of(g) || !self.out_channels.is_multiple_of(g) {
            return Err(shape_err(
                name,
                format!(
                    "{} groups do not divide {} input and {} output channels",
                    g, self.in_channels, self.out_channels
                ),
            ));
        }
        (self.in_channels / g)
            .checked_mul(self.kernel.0)
            .and_then(|v| v.checked_mul(self.kernel.1))
            .ok_or_else(|| shape_err(name, "K overflows".into()))
    }

    fn spec<'a>(&'a self, name: &'a str, k: usize) -> MatrixSpec<'a> {
        MatrixSpec {
            name,
            rows: self.out_channels,
            k,
            weights: &self.weights,
            weight_scales: &self.weight_scales,
            bias: &self.bias,
            input: self.input,
            output: &self.output,
        }
    }

    /// Input and output shapes.
    fn shapes(&self, cx: &InferCx<'_>) -> Result<(Shape, Shape), QuantError> {
        let input = cx.input()?.shape;
        if self.in_channels != input.channels {
            return Err(shape_err(
                cx.name,
                format!(
                    "in_channels {} but the incoming activation has {}",
                    self.in_channels, input.channels
                ),
            ));
        }
        let output = self.window().output(cx.name, input, self.out_channels)?;
        Ok((input, output))
    }

    /// The step, fused with a 2 x 2 stride-2 max pool to `pooled` (a requantizing conv whose only consumer is
    /// that pool).
    pub(crate) fn plan_fused_max_pool(
        &self,
        cx: &PlanCx<'_>,
        pooled: Shape,
    ) -> Result<Box<dyn Step>, QuantError> {
        let conv = self.conv_op(cx, false)?;
        conv.gemm.output_params(&[])?;
        Ok(Box::new(ConvPoolStep { conv, pooled }))
    }

    /// The step of this requantizing convolution fused with the residual `add` that is its only consumer:
    /// `cx.inputs` are the convolution's input then the Add's other input, `conv_first` whether the convolution
    /// is the Add's first input. The Add reads the convolution's codes as they leave its output stage
    /// ([`crate::kernels::conv_planes`]), or, where that kernel does not apply, from a scratch buffer: the same
    /// codes either way.
    pub(crate) fn plan_fused_add(
        &self,
        cx: &PlanCx<'_>,
        add: &QAdd,
        add_name: &str,
        conv_first: bool,
    ) -> Result<Box<dyn Step>, QuantError> {
        let [conv_input, residual] = cx.inputs else {
            return Err(internal("a fused conv + add reads two values"));
        };
        let conv_cx = PlanCx {
            inputs: std::slice::from_ref(conv_input),
            ..*cx
        };
        let conv = self.conv_op(&conv_cx, true)?;
        conv.gemm.output_params(&[])?;
        if residual.shape != conv.output {
            return Err(internal("a fused add's inputs differ in shape"));
        }
        let quant = add.quant(add_name)?;
        Ok(Box::new(ConvAddStep {
            conv,
            add: if conv_first { quant } else { quant.swapped() },
        }))
    }

    /// This layer's geometry on an input of shape `input`, in the grouped kernels' terms.
    fn grouped_geometry(&self, input: Shape) -> GroupedConvGeometry {
        GroupedConvGeometry {
            c_in: input.channels,
            h: input.height,
            w: input.width,
            c_out: self.out_channels,
            kh: self.kernel.0,
            kw: self.kernel.1,
            stride: self.stride,
            padding: self.padding,
            groups: self.groups,
        }
    }

    /// The step of a grouped (or depthwise) convolution: one kernel over every group.
    fn grouped_step(&self, cx: &PlanCx<'_>) -> Result<Box<dyn Step>, QuantError> {
        let icx = InferCx {
            name: cx.name,
            inputs: cx.inputs,
            is_output: cx.output.quant == ValueQuant::Logits,
        };
        let (input, output) = self.shapes(&icx)?;
        let k = self.k(cx.name)?;
        let checked = self.spec(cx.name, k).check(&icx)?;
        let geo = self.grouped_geometry(input);
        let conv = GroupedConv::from_packed(cx.isa, geo, &self.weights)?;
        let zero_point = u8::try_from(self.input.zero_point).map_err(|_| internal("zero point"))?;
        Ok(Box::new(GroupedStep {
            conv,
            bias: self.bias.clone(),
            out: checked.out,
            zero_point,
            input,
            output,
        }))
    }

    /// Elements of the zero-point-padded copy of one input sample that the kernels read, or more: `c_in` planes
    /// of `(h + 2 ph + sh) x (w + 2 pw + sw + 8)` cover im2col's planes (8 columns of over-read slack) and the
    /// grouped kernel's stride-phase planes (each axis rounded up to a multiple of the stride). A large padding
    /// with a large stride gives a small output from huge planes, so this must be bounded on its own.
    fn padded_input_elems(&self, input: Shape) -> Option<usize> {
        let axis = |n: usize, pad: usize, stride: usize, slack: usize| {
            pad.checked_mul(2)?
                .checked_add(n)?
                .checked_add(stride)?
                .checked_add(slack)
        };
        let rows = axis(input.height, self.padding.0, self.stride.0, 0)?;
        let cols = axis(input.width, self.padding.1, self.stride.1, 8)?;
        input.channels.checked_mul(rows)?.checked_mul(cols)
    }

    /// The convolution's kernels; `planes_allowed` when its codes leave through a requantizing output stage that
    /// [`PlaneConv`] computes (not the accumulators a fused pool or the logits need).
    fn conv_op(&self, cx: &PlanCx<'_>, planes_allowed: bool) -> Result<ConvOp, QuantError> {
        let icx = InferCx {
            name: cx.name,
            inputs: cx.inputs,
            is_output: cx.output.quant == ValueQuant::Logits,
        };
        let (input, output) = self.shapes(&icx)?;
        let k = self.k(cx.name)?;
        let gemm = self.spec(cx.name, k).gemm(&icx, cx.isa)?;
        let pad_code = u8::try_from(self.input.zero_point).map_err(|_| internal("zero point"))?;
        let direct = choose_direct(cx.isa, self, input, &output)?;
        let planes = match planes_allowed && matches!(gemm.out, Out::Requant { .. }) {
            true => choose_planes(cx.isa, self, input, direct.as_ref())?,
            false => None,
        };
        let winograd = match &planes {
            Some(p) if cx.winograd => choose_winograd(cx.isa, self, input, p)?,
            _ => None,
        };
        Ok(ConvOp {
            gemm,
            input,
            output,
            window: self.window(),
            pad_code,
            direct: direct.filter(|_| planes.is_none()).map(Box::new),
            planes: planes.map(Box::new),
            winograd: winograd.map(Box::new),
        })
    }
}

impl OpDef for QConv2d {
    fn infer(&self, cx: &InferCx<'_>) -> Result<Inferred, QuantError> {
        let (input, output) = self.shapes(cx)?;
        let k = self.k(cx.name)?;
        let c = self.spec(cx.name, k).check(cx)?;
        let name = cx.name;
        // im2col scratch (positions x K) plus the i32 accumulators, per sample.
        let positions = output.height.checked_mul(output.width);
        let mut scratch = positions
            .and_then(|p| p.checked_mul(k.checked_add(self.out_channels)?))
            .ok_or_else(|| shape_err(name, "im2col size overflows".into()))?;
        // A direct kernel's accumulators in its own layout, at most whole padded rows rounded up to 16 positions
        // (u8 quads on the wide grid). Bounded from the shape alone, so validation bounds the memory whichever
        // kernel the engine later picks.
        let direct_elems = self
            .padding
            .1
            .checked_mul(2)
            .and_then(|p| input.width.checked_add(p))
            .and_then(|wp| output.height.checked_mul(wp))
            .and_then(|p| p.checked_next_multiple_of(16))
            .and_then(|p| p.checked_mul(self.out_channels))
            .ok_or_else(|| shape_err(name, "direct conv size overflows".into()))?;
        if self.stride == (1, 1) {
            scratch = scratch.max(direct_elems);
        }
        let padded = self
            .padded_input_elems(input)
            .ok_or_else(|| shape_err(name, "padded input size overflows".into()))?;
        scratch = scratch.max(padded);
        if self.groups > 1 {
            // The engine runs grouped convolutions on a kernel with limits of its own: a file must not load
            // that the engine then refuses.
            self.grouped_geometry(input)
                .validate()
                .map_err(|e| match e {
                    QuantError::ShapeMismatch { detail, .. } => shape_err(name, detail),
                    other => other,
                })?;
        }
        let macs = self
            .out_channels
            .saturating_mul(k)
            .saturating_mul(output.height * output.width);
        Ok(Inferred {
            output: ValueInfo {
                shape: output,
                quant: c.quant,
            },
            scratch_elems: scratch,
            macs,
        })
    }

    fn describe(&self) -> String {
        let (kh, kw) = self.kernel;
        let mut s = format!(
            "conv2d {}->{} {kh}x{kw}",
            self.in_channels, self.out_channels
        );
        if self.groups == self.in_channels && self.groups > 1 {
            s += " depthwise";
        } else if self.groups > 1 {
            s += &format!(" groups {}", self.groups);
        }
        if self.stride != (1, 1) {
            s += &format!(" stride {}x{}", self.stride.0, self.stride.1);
        }
        if self.padding != (0, 0) {
            s += &format!(" pad {}x{}", self.padding.0, self.padding.1);
        }
        format!(
            "{s}, {}",
            describe_matrix(&self.weights, &self.weight_scales, &self.output)
        )
    }

    fn plan(&self, cx: &PlanCx<'_>) -> Result<Box<dyn Step>, QuantError> {
        if self.groups > 1 {
            return self.grouped_step(cx);
        }
        Ok(Box::new(ConvStep {
            conv: self.conv_op(cx, true)?,
        }))
    }
}

/// A grouped or depthwise convolution, per sample on [`GroupedConv`]'s kernel (its bias is the stored one: the
/// kernel subtracts the input zero point itself).
#[derive(Debug)]
struct GroupedStep {
    conv: GroupedConv,
    bias: Vec<i32>,
    out: Out,
    zero_point: u8,
    input: Shape,
    output: Shape,
}

impl Step for GroupedStep {
    fn run(&self, inputs: &[&[u8]], _batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        let [x] = inputs else {
            return Err(internal("conv takes one input"));
        };
        let in_elems = self.input.elems().unwrap_or(0);
        let out_elems = self.output.elems().unwrap_or(0);
        let samples = x.chunks(in_elems.max(1));
        match out {
            StepOut::Codes(o) => {
                let p = self.out.params(&self.bias)?;
                for (xs, os) in samples.zip(o.chunks_mut(out_elems.max(1))) {
                    grouped_conv_requant(&self.conv, xs, self.zero_point, &p, os)?;
                }
            }
            StepOut::Acc(o) => {
                for (xs, os) in samples.zip(o.chunks_mut(out_elems.max(1))) {
                    grouped_conv_acc(&self.conv, xs, self.zero_point, &self.bias, os)?;
                }
            }
        }
        Ok(())
    }

    fn logits(&self, acc: &[i32]) -> Result<Vec<f32>, QuantError> {
        self.out.logits(acc, self.output.height * self.output.width)
    }

    fn path(&self) -> Option<String> {
        let g = self.conv.geometry();
        Some(format!(
            "conv {}x{} groups {}: {}",
            g.c_in / g.groups * g.kh * g.kw,
            g.c_out,
            g.groups,
            self.conv.path()
        ))
    }
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
    /// Int8 weights prepared for [`plane_conv_requant`] (AVX2 tiers, requantized outputs), when cheaper; it then
    /// runs instead of `direct` and the GEMM.
    planes: Option<Box<PlaneConv>>,
    /// The same convolution as Winograd F(2x2, 3x3) (3x3 stride 1 within the overflow bound), when it issues
    /// fewer multiplies than `planes`; it then runs instead.
    winograd: Option<Box<WinogradConv>>,
}

#[derive(Debug)]
struct ConvStep {
    conv: ConvOp,
}

impl Step for ConvStep {
    fn run(&self, inputs: &[&[u8]], _batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        let [x] = inputs else {
            return Err(internal("conv takes one input"));
        };
        match out {
            StepOut::Codes(o) => conv_requant(&self.conv, x, None, o),
            StepOut::Acc(o) => conv_acc(&self.conv, x, o),
        }
    }

    fn logits(&self, acc: &[i32]) -> Result<Vec<f32>, QuantError> {
        let o = self.conv.output;
        self.conv.gemm.logits(acc, o.height * o.width)
    }

    fn path(&self) -> Option<String> {
        Some(self.conv.path())
    }
}

#[derive(Debug)]
struct ConvPoolStep {
    conv: ConvOp,
    pooled: Shape,
}

impl Step for ConvPoolStep {
    fn run(&self, inputs: &[&[u8]], _batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        match (inputs, out) {
            ([x], StepOut::Codes(o)) => conv_pool_requant(&self.conv, self.pooled, x, o),
            _ => Err(internal("fused conv + pool emits codes from one input")),
        }
    }

    fn path(&self) -> Option<String> {
        Some(format!("{} + 2x2 max pool", self.conv.path()))
    }
}

/// A convolution and the residual Add that reads its codes, as one step (inputs: the convolution's input, the
/// Add's other input; output: the Add's codes).
#[derive(Debug)]
struct ConvAddStep {
    conv: ConvOp,
    /// The Add with the convolution's codes as its first input.
    add: AddQuant,
}

impl Step for ConvAddStep {
    fn run(&self, inputs: &[&[u8]], _batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        match (inputs, out) {
            ([x, r], StepOut::Codes(o)) if r.len() == o.len() => {
                conv_requant(&self.conv, x, Some((r, &self.add)), o)
            }
            _ => Err(internal("fused conv + add: two inputs, codes out")),
        }
    }

    fn path(&self) -> Option<String> {
        Some(format!("{} + add", self.conv.path()))
    }
}

/// Multiply-accumulates from which a lone sample's plane convolution runs as two tasks (about 30 us of work on
/// one core; `workers::join` hands a half to a polling helper in about a microsecond). 1,000,000 (the stride-2
/// convolutions of ResNet-20 too) measured no better at batch 1.
const PAR_SAMPLE_SPLIT_MACS: usize = 2_000_000;

/// [`PlaneConv`] for a conv layer when it applies (int8 weights, groups 1, an AVX2 tier) and issues no more
/// multiply-accumulates than the u8 quad scheme, the only other kernel with as many products per multiply
/// instruction (LeNet's single-channel first convolution stays on quads: a channel pair there is half zero).
fn choose_planes(
    isa: Isa,
    c: &QConv2d,
    input: Shape,
    direct: Option<&DirectConv>,
) -> Result<Option<PlaneConv>, QuantError> {
    if c.groups != 1
        || c.weights.packing != crate::pack::Packing::I8
        || !matches!(isa, Isa::Avx2 | Isa::Avx512Vnni)
    {
        return Ok(None);
    }
    let planes = PlaneConv::new(isa, c.grouped_geometry(input), &c.weights)?;
    if planes.scheme() == Scheme::Quads {
        // 64 products per multiply instruction, four times the AVX2 kernels' (direct quads included).
        return Ok(Some(planes));
    }
    let quads = direct.and_then(|d| {
        let len = d.quad_len()?;
        Some(d.layout().1 * len * d.geometry().c_out)
    });
    Ok(match quads {
        Some(q) if q < planes.issued_macs() => None,
        _ => Some(planes),
    })
}

/// Input channels from which Winograd pays for its transforms: the output transform and stage cost the same per
/// output channel whatever `c_in`, so few input channels leave too few products to save. Measured on ResNet-20
/// (`engine_profile ... ab`, one thread, planes time / Winograd time): the 3-channel stem 0.81-0.85 (kernel as
/// of the planner commit), the 16-channel layers 1.12-1.31, the 32- and 64-channel ones 1.29-1.54 (final kernel).
const WINOGRAD_MIN_C_IN: usize = 8;

/// [`WinogradConv`] for a conv layer on the planes kernel when it applies ([`winograd_applies`]), has at least
/// [`WINOGRAD_MIN_C_IN`] input channels, and issues fewer multiplies than `planes` (about 2.25 times fewer on
/// large outputs; not on outputs of a few positions, where its 16-product tiles and 8-tile vectors are mostly
/// padding).
fn choose_winograd(
    isa: Isa,
    c: &QConv2d,
    input: Shape,
    planes: &PlaneConv,
) -> Result<Option<WinogradConv>, QuantError> {
    let geo = c.grouped_geometry(input);
    // Winograd's AVX2 products (`vpmaddwd`, 2.25 times fewer) do not beat the VNNI quads' `vpdpbusd` (4 times
    // as many products per instruction).
    if !winograd_applies(&geo) || geo.c_in < WINOGRAD_MIN_C_IN || planes.scheme() == Scheme::Quads {
        return Ok(None);
    }
    let w = WinogradConv::new(isa, geo, &c.weights)?;
    Ok((w.issued_macs() < planes.issued_macs()).then_some(w))
}

/// The direct kernel for a conv layer when it applies (int8 weights, stride 1, an AVX2 tier) and costs less than
/// the im2col GEMM, whose int8 tile pads positions to 6 rows, channels to 16 columns and K to 16: the u8 quad
/// scheme when the weights have a safe pair order, else the i16 scheme when it issues fewer multiply-accumulates.
fn choose_direct(
    isa: Isa,
    c: &QConv2d,
    input: Shape,
    output: &Shape,
) -> Result<Option<DirectConv>, QuantError> {
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
        if rayon::current_thread_index().is_some() || workers::in_split() || out.len() <= out_elems
        {
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

    /// The kernel that runs (`conv 150x16: direct u8 quads ...`).
    fn path(&self) -> String {
        let g = &self.gemm;
        let path = match (&self.winograd, &self.planes, &self.direct) {
            (Some(w), _, _) => w.path(),
            (None, Some(p), _) => p.path(),
            (None, None, Some(d)) => d.path(),
            (None, None, None) => g.weights.path(),
        };
        format!("conv {}x{}: {path}", g.k, g.n)
    }

    /// [`plane_conv_requant`] of every sample of `x` into `out` (`self.planes` must be set), each with its slice
    /// of the residual when an Add is fused. Samples run in parallel under the same rule as [`ConvOp::run`].
    fn run_planes(
        &self,
        planes: &PlaneConv,
        x: &[u8],
        residual: Option<(&[u8], &AddQuant)>,
        out: &mut [u8],
    ) -> Result<(), QuantError> {
        let g = &self.gemm;
        let p = g.output_params(&[])?;
        let in_elems = self.input.elems().unwrap_or(0).max(1);
        let out_elems = self.out_elems().max(1);
        let nested = rayon::current_thread_index().is_some() || workers::in_split();
        // A lone sample (batch 1) splits its output rows over two tasks when it is worth a fork (the GEMM's
        // threshold); batches split by sample.
        let split = !nested
            && out.len() <= out_elems
            && rayon::current_num_threads() > 1
            && planes.issued_macs() >= PAR_SAMPLE_SPLIT_MACS;
        let sample = |i: usize, xs: &[u8], os: &mut [u8]| {
            let r = match residual {
                Some((codes, quant)) => Some(Residual {
                    codes: codes
                        .get(i * out_elems..(i + 1) * out_elems)
                        .ok_or_else(|| internal("residual too short"))?,
                    quant,
                }),
                None => None,
            };
            match &self.winograd {
                Some(w) => {
                    winograd_conv_requant(w, xs, self.pad_code, &g.bias_eff, &p, r, split, os)
                }
                None => {
                    plane_conv_requant(planes, xs, self.pad_code, &g.bias_eff, &p, r, split, os)
                }
            }
        };
        if nested || out.len() <= out_elems {
            out.chunks_mut(out_elems)
                .zip(x.chunks(in_elems))
                .enumerate()
                .try_for_each(|(i, (os, xs))| sample(i, xs, os))
        } else {
            out.par_chunks_mut(out_elems)
                .zip(x.par_chunks(in_elems))
                .enumerate()
                .try_for_each(|(i, (os, xs))| sample(i, xs, os))
        }
    }
}

/// The convolution's codes of every sample, or with `residual` the codes of the Add that reads them.
fn conv_requant(
    conv: &ConvOp,
    x: &[u8],
    residual: Option<(&[u8], &AddQuant)>,
    out: &mut [u8],
) -> Result<(), QuantError> {
    if let Some(planes) = &conv.planes {
        return conv.run_planes(planes, x, residual, out);
    }
    if let Some((codes, quant)) = residual {
        thread_local! {
            static CODES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let mut unfused = |tmp: &mut Vec<u8>| {
            fit(tmp, out.len());
            conv_requant(conv, x, None, tmp)?;
            add_u8(tmp, codes, quant, out)
        };
        return CODES.with(|cell| match cell.try_borrow_mut() {
            Ok(mut tmp) => unfused(&mut tmp),
            Err(_) => unfused(&mut Vec::new()),
        });
    }
    let g = &conv.gemm;
    let p = g.output_params(&[])?;
    let positions = conv.output.height * conv.output.width;
    conv.run(
        x,
        out,
        conv.out_elems(),
        |d, xs, acc, o| {
            fit(acc, o.len());
            kernels::conv::direct_conv_acc(d, xs, conv.pad_code, &g.bias_eff, acc)?;
            kernels::conv::requant_channels(
                acc,
                g.n,
                positions,
                p.requant,
                p.zero_point,
                p.qmin,
                p.qmax,
                o,
            )
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
    let (h, w) = (conv.output.height, conv.output.width);
    let pooled_elems = pooled.channels * pooled.height * pooled.width;
    let p = g.output_params(&[])?;
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
