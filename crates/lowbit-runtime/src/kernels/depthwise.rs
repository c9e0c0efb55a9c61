//! Grouped and depthwise convolution of one NCHW sample of `u8` codes with int8 weights, any kernel, stride and
//! padding.
//!
//! Arithmetic (normative, [`reference::grouped_conv_acc`]): input `x[c_in][h][w]` with zero point `zp_in`,
//! weights `w[c_out][c_in / g][kh][kw]`, output channel `oc` reading input channels `ic0 .. ic0 + c_in / g` with
//! `ic0 = (oc / (c_out / g)) * (c_in / g)`:
//!
//! ```text
//! acc[oc][oy][ox] = bias[oc]
//!     + sum_{icg, ky, kx} (x[ic0 + icg][oy*sh + ky - ph][ox*sw + kx - pw] - zp_in) * w[oc][icg][ky][kx]
//! ```
//!
//! in wrapping i32, where out-of-bounds (padded) positions hold `zp_in` and so add nothing; `oh = (h + 2 ph - kh) /
//! sh + 1`, `ow` likewise (floor). This equals the engine's convention of raw codes times weights with
//! `bias - zp_in * sum w` folded into the bias (the same integer in wrapping arithmetic). The requantized output is
//! [`crate::qparams::requantize`] of `acc` with `requant[oc]` (or `requant[0]` per tensor), as
//! [`super::conv::requant_channels`] computes it. Overflow: `|acc| <= taps * 255 * 128 + |bias|` with `taps = (c_in
//! / g) * kh * kw` (`* 127` for weights in `[-127, 127]`, see [`super::acc_cannot_overflow`]); past it every tier
//! still agrees (wrapping addition is associative).
//!
//! AVX2 (`x86_depthwise`, any geometry): the sample is widened once into zero-point-subtracted i16 planes (padding
//! is then 0, whatever the zero point) split into `sh * sw` row and column phases, so that the inputs of 16
//! consecutive outputs under one tap are 16 consecutive i16 (`PhasePlanes`). Each output channel's taps are taken in
//! pairs: two 16-element loads interleaved by `vpunpck{l,h}wd` and one `vpmaddwd` with the broadcast weight pair add
//! 32 exact products (`|(x - zp) * w| <= 255 * 128`) into 16 i32 accumulators; an odd last tap pairs with weight 0.
//! Outputs go 16 columns of a row at a time, or, when that wastes more lanes (rows narrower than 16), 16
//! consecutive positions of the wide grid `oy * wq + ox`, whose columns past `ow` are dropped. This is the fast path
//! for depthwise layers (`g == c_in`, any channel multiplier `c_out / c_in`); for groups with many input channels
//! each, the engine's GEMM or direct convolution per group re-uses each load across output channels and is faster.
//! Measured in `tests/kernels_graph_timing.rs` (thread CPU time, shared 2-core Zen3): 3x3 depthwise layers of a
//! CIFAR MobileNet at 0.07-0.28 ns per multiply-accumulate, 8-36x the scalar reference.
use super::{check_len, mismatch, Isa, OutputParams};
use crate::error::QuantError;
use crate::pack::PackedWeights;

/// Shape of a grouped convolution on one NCHW sample (depthwise when `groups == c_in`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupedConvGeometry {
    /// Input channels, a multiple of `groups`.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels, a multiple of `groups`.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// `(sh, sw)`: rows and columns between consecutive windows, at least 1.
    pub stride: (usize, usize),
    /// `(ph, pw)`: zero-point rows added above and below, columns left and right.
    pub padding: (usize, usize),
    /// Groups, at least 1.
    pub groups: usize,
}

/// Largest spatial extent, channel count or kernel side accepted (keeps every index product far from overflow).
pub const MAX_GROUPED_DIM: usize = 1 << 16;

impl GroupedConvGeometry {
    /// A depthwise convolution: `groups == c_in == c_out`, square `k x k` kernel, the same stride and padding on
    /// both axes.
    pub fn depthwise(
        channels: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        Self {
            c_in: channels,
            h,
            w,
            c_out: channels,
            kh: k,
            kw: k,
            stride: (stride, stride),
            padding: (pad, pad),
            groups: channels,
        }
    }

    /// Checks the invariants: positive sizes, strides and groups, channel counts divisible by `groups`, the kernel
    /// within the padded input, every size at most [`MAX_GROUPED_DIM`].
    pub fn validate(&self) -> Result<(), QuantError> {
        let bad = |detail: String| Err(mismatch("grouped_conv", detail));
        let dims = [
            self.c_in,
            self.h,
            self.w,
            self.c_out,
            self.kh,
            self.kw,
            self.stride.0,
            self.stride.1,
            self.groups,
        ];
        if dims.iter().any(|&d| d == 0 || d > MAX_GROUPED_DIM)
            || self.padding.0 > MAX_GROUPED_DIM
            || self.padding.1 > MAX_GROUPED_DIM
        {
            return bad(format!(
                "{self:?}: sizes, strides and groups must lie in 1..={MAX_GROUPED_DIM}, padding at most that"
            ));
        }
        if !self.c_in.is_multiple_of(self.groups) || !self.c_out.is_multiple_of(self.groups) {
            return bad(format!(
                "{} input and {} output channels are not both divisible by {} groups",
                self.c_in, self.c_out, self.groups
            ));
        }
        if self.kh > self.h + 2 * self.padding.0 || self.kw > self.w + 2 * self.padding.1 {
            return bad(format!(
                "kernel {}x{} exceeds the padded input {}x{}",
                self.kh,
                self.kw,
                self.h + 2 * self.padding.0,
                self.w + 2 * self.padding.1
            ));
        }
        Ok(())
    }

    /// Output height (valid geometry).
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.padding.0 - self.kh) / self.stride.0 + 1
    }

    /// Output width (valid geometry).
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.padding.1 - self.kw) / self.stride.1 + 1
    }

    /// Weights per output channel: `(c_in / groups) * kh * kw`.
    pub fn taps(&self) -> usize {
        self.c_in / self.groups * self.kh * self.kw
    }

    /// First input channel read by output channel `oc`.
    pub fn first_input_channel(&self, oc: usize) -> usize {
        oc / (self.c_out / self.groups) * (self.c_in / self.groups)
    }
}

/// Scalar definitions (normative).
pub mod reference {
    use super::GroupedConvGeometry;

    /// `acc[oc][oy][ox]` of the module doc, NCHW; shapes checked by the caller.
    pub fn grouped_conv_acc(
        g: &GroupedConvGeometry,
        x: &[u8],
        zero_point_in: u8,
        weights: &[i8],
        bias: &[i32],
        out: &mut [i32],
    ) {
        let (oh, ow, cig) = (g.oh(), g.ow(), g.c_in / g.groups);
        let zp = i32::from(zero_point_in);
        for oc in 0..g.c_out {
            let ic0 = g.first_input_channel(oc);
            let wrow = &weights[oc * g.taps()..][..g.taps()];
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias[oc];
                    for icg in 0..cig {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride.0 + ky).checked_sub(g.padding.0);
                                let ix = (ox * g.stride.1 + kx).checked_sub(g.padding.1);
                                let v = match (iy, ix) {
                                    (Some(iy), Some(ix)) if iy < g.h && ix < g.w => {
                                        i32::from(x[((ic0 + icg) * g.h + iy) * g.w + ix])
                                    }
                                    _ => zp,
                                };
                                let wv = i32::from(wrow[(icg * g.kh + ky) * g.kw + kx]);
                                acc = acc.wrapping_add((v - zp) * wv);
                            }
                        }
                    }
                    out[(oc * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
}

/// Weights of one grouped convolution prepared for a tier: the int8 codes `[c_out][taps]`, and on the AVX2 tiers
/// each channel's tap pairs (offsets into the widened phase planes and packed weight pairs).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupedConv {
    geo: GroupedConvGeometry,
    weights: Vec<i8>,
    isa: Isa,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pairs: Option<TapPairs>,
}

/// Per output channel, `pairs_per_channel` tap pairs: the two taps' offsets in the phase planes of output position
/// (0, 0), and the weights `w0 as u16 | w1 << 16` (a single last tap has `w1 = 0` and its own offset twice).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct TapPairs {
    pub(crate) pairs_per_channel: usize,
    pub(crate) offsets: Vec<[usize; 2]>,
    pub(crate) weights: Vec<i32>,
    pub(crate) planes: PhasePlanes,
}

/// Layout of the AVX2 kernel's widened input: per input channel, `sh * sw` phase planes `[ic][row phase][column
/// phase][hq][wq]` of i16, `hq = ceil((h + 2 ph) / sh)`, `wq = ceil((w + 2 pw) / sw)`: padded row `iy`, column `ix`
/// is row `iy / sh`, column `ix / sw` of phase plane `(iy % sh, ix % sw)`. Tap `(ky, kx)` of output `(oy, ox)` is
/// then element `oy * wq + ox` past the tap's own offset, for every stride: consecutive outputs are consecutive
/// elements, and consecutive output rows `wq` apart. `slack` elements follow the last plane (see `x86_depthwise`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct PhasePlanes {
    pub(crate) hq: usize,
    pub(crate) wq: usize,
    pub(crate) len: usize,
    /// Whether output positions are computed on the wide grid `p = oy * wq + ox` (16 consecutive `p`, spanning
    /// rows, the columns `ox >= ow` discarded) rather than 16 columns of one row at a time: the choice with fewer
    /// 16-position blocks, i.e. the wide grid for narrow outputs (8 x 8: 5 blocks instead of 8).
    pub(crate) wide: bool,
}

impl PhasePlanes {
    fn new(g: &GroupedConvGeometry) -> Self {
        let (sh, sw) = g.stride;
        let hq = (g.h + 2 * g.padding.0).div_ceil(sh);
        let wq = (g.w + 2 * g.padding.1).div_ceil(sw);
        let row_blocks = g.oh() * g.ow().div_ceil(16);
        let wide_blocks = (g.oh() * wq).div_ceil(16);
        Self {
            hq,
            wq,
            len: g.c_in * sh * sw * hq * wq + 16 + g.kw,
            wide: wide_blocks < row_blocks,
        }
    }

    /// Offset of padded row `iy`, column `ix` of input channel `ic`.
    pub(crate) fn offset(&self, g: &GroupedConvGeometry, ic: usize, iy: usize, ix: usize) -> usize {
        let (sh, sw) = g.stride;
        let plane = (ic * sh + iy % sh) * sw + ix % sw;
        plane * self.hq * self.wq + iy / sh * self.wq + ix / sw
    }
}

impl TapPairs {
    fn new(g: &GroupedConvGeometry, weights: &[i8]) -> Self {
        let planes = PhasePlanes::new(g);
        let taps = g.taps();
        let ppc = taps.div_ceil(2);
        let mut offsets = Vec::with_capacity(g.c_out * ppc);
        let mut packed = Vec::with_capacity(g.c_out * ppc);
        for oc in 0..g.c_out {
            let ic0 = g.first_input_channel(oc);
            let tap = |t: usize| {
                let (icg, ky, kx) = (t / (g.kh * g.kw), t / g.kw % g.kh, t % g.kw);
                let off = planes.offset(g, ic0 + icg, ky, kx);
                (off, weights[oc * taps + t])
            };
            for p in 0..ppc {
                let (o0, w0) = tap(2 * p);
                let (o1, w1) = if 2 * p + 1 < taps {
                    tap(2 * p + 1)
                } else {
                    (o0, 0)
                };
                offsets.push([o0, o1]);
                packed.push((w0 as i16 as u16 as u32 | (w1 as i16 as u16 as u32) << 16) as i32);
            }
        }
        Self {
            pairs_per_channel: ppc,
            offsets,
            weights: packed,
            planes,
        }
    }
}

impl GroupedConv {
    /// Prepares int8 codes `[c_out][c_in / groups][kh][kw]` (any i8) for `isa` (an unavailable tier is
    /// [`Isa::capped`]); checks the geometry and the weight count.
    pub fn new(isa: Isa, geo: GroupedConvGeometry, weights: &[i8]) -> Result<Self, QuantError> {
        geo.validate()?;
        check_len(
            "grouped_conv",
            "weights",
            weights.len(),
            geo.c_out.checked_mul(geo.taps()),
        )?;
        let isa = isa.capped();
        let pairs = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni => Some(TapPairs::new(&geo, weights)),
            _ => None,
        };
        Ok(Self {
            geo,
            weights: weights.to_vec(),
            isa,
            pairs,
        })
    }

    /// [`GroupedConv::new`] from packed weights of `c_out` rows and `taps` columns (any bit width).
    pub fn from_packed(
        isa: Isa,
        geo: GroupedConvGeometry,
        weights: &PackedWeights,
    ) -> Result<Self, QuantError> {
        geo.validate()?;
        weights.validate()?;
        if weights.rows != geo.c_out || weights.cols != geo.taps() {
            return Err(mismatch(
                "grouped_conv",
                format!(
                    "weights are {} x {}, expected {} x {}",
                    weights.rows,
                    weights.cols,
                    geo.c_out,
                    geo.taps()
                ),
            ));
        }
        let mut codes = vec![0i8; geo.c_out * geo.taps()];
        for (oc, row) in codes.chunks_exact_mut(geo.taps()).enumerate() {
            weights.unpack_row(oc, row);
        }
        Self::new(isa, geo, &codes)
    }

    /// The geometry.
    pub fn geometry(&self) -> GroupedConvGeometry {
        self.geo
    }

    /// The weight codes `[c_out][taps]`.
    pub fn weights(&self) -> &[i8] {
        &self.weights
    }

    /// The tier [`grouped_conv_acc`] runs on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The kernel, for reports: `reference`, or on AVX2 `avx2 rows` (16 columns of a row per block) or `avx2 wide
    /// grid` (16 consecutive positions spanning rows, for narrow outputs).
    pub fn path(&self) -> &'static str {
        match &self.pairs {
            Some(p) if p.planes.wide => "avx2 wide grid",
            Some(_) => "avx2 rows",
            None => "reference",
        }
    }

    fn check_io(&self, x_len: usize, bias_len: usize, out_len: usize) -> Result<(), QuantError> {
        const CTX: &str = "grouped_conv";
        let g = &self.geo;
        check_len(CTX, "input", x_len, Some(g.c_in * g.h * g.w))?;
        check_len(CTX, "bias", bias_len, Some(g.c_out))?;
        check_len(CTX, "output", out_len, Some(g.c_out * g.oh() * g.ow()))
    }
}

/// One sample's accumulators `out[oc][oy][ox]` (module doc), `x` is `[c_in][h][w]` codes with zero point
/// `zero_point_in`. Runs on `conv`'s tier; equals [`reference::grouped_conv_acc`].
pub fn grouped_conv_acc(
    conv: &GroupedConv,
    x: &[u8],
    zero_point_in: u8,
    bias: &[i32],
    out: &mut [i32],
) -> Result<(), QuantError> {
    conv.check_io(x.len(), bias.len(), out.len())?;
    match (&conv.pairs, conv.isa) {
        #[cfg(target_arch = "x86_64")]
        (Some(pairs), Isa::Avx2 | Isa::Avx512Vnni) => {
            super::x86_depthwise::grouped_conv_acc(&conv.geo, pairs, x, zero_point_in, bias, out)
        }
        _ => reference::grouped_conv_acc(&conv.geo, x, zero_point_in, &conv.weights, bias, out),
    }
    Ok(())
}

/// One sample's requantized codes: [`grouped_conv_acc`] with `p.bias`, then per output channel
/// [`crate::qparams::requantize`] with `p.requant[oc]` (or `[0]`), `p.zero_point`, `[p.qmin, p.qmax]`; NCHW
/// `[c_out][oh][ow]`.
pub fn grouped_conv_requant(
    conv: &GroupedConv,
    x: &[u8],
    zero_point_in: u8,
    p: &OutputParams,
    out: &mut [u8],
) -> Result<(), QuantError> {
    let g = conv.geo;
    conv.check_io(x.len(), p.bias.len(), out.len())?;
    super::check_output("grouped_conv", g.c_out, p)?;
    thread_local! {
        static ACC: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut run = |acc: &mut Vec<i32>| {
        acc.resize(out.len(), 0);
        grouped_conv_acc(conv, x, zero_point_in, p.bias, acc)?;
        super::conv::requant_channels(
            acc,
            g.c_out,
            g.oh() * g.ow(),
            p.requant,
            p.zero_point,
            p.qmin,
            p.qmax,
            out,
        )
    };
    ACC.with(|cell| match cell.try_borrow_mut() {
        Ok(mut acc) => run(&mut acc),
        Err(_) => run(&mut Vec::new()),
    })
}
