//! Direct convolution of one NCHW sample on i16 channel-pair planes, any stride and padding, int8 weights, with
//! the requantization and optionally a following residual Add fused into its output stage.
//!
//! Arithmetic (normative, [`reference::plane_conv_requant`]): with input codes `x[c_in][h][w]`, padded positions
//! holding `pad_code` (the input zero point), weights `w[c_out][c_in][kh][kw]` and the zero-point-corrected bias
//! (`bias[c] - zp_in * sum w[c]`, see [`crate::ops`]' matrix conventions),
//!
//! ```text
//! acc[c][oy][ox] = bias[c] + sum_{ic, ky, kx} w[c][ic][ky][kx] * xpad[ic][oy*sh + ky][ox*sw + kx]   (wrapping i32)
//! q[c][oy][ox]   = requantize(acc, requant[c or 0], zero_point, qmin, qmax)                     (qparams::requantize)
//! ```
//!
//! and, with a residual `r` and [`AddQuant`] `a` (the convolution's codes are the Add's first input),
//! `out = eltwise::reference::add_code(q, r, a)`, else `out = q`; `oh = (h + 2 ph - kh) / sh + 1`, `ow` likewise.
//! This is the engine's im2col convolution followed by its Add, bit for bit: wrapping addition is associative, so
//! the order of the products does not matter, and the Add reads the same codes.
//!
//! AVX2 (`x86_conv_planes`, the scheme): the sample is laid out once as `[c_in / 2][hp][sw][phase]` 32-bit
//! elements, each the i16 pair `(x[2i], x[2i + 1])` of two input channels at one position (the odd last channel
//! paired with 0), columns split into `sw` phases so that the inputs of 8 consecutive outputs under one tap are 8
//! consecutive elements for any stride. One `vpmaddwd` of such a vector with a broadcast weight pair `(w[c][2i],
//! w[c][2i + 1])` adds 16 exact products (`|code * w| <= 255 * 127`, pair sums far inside i32) into the 8
//! accumulators of channel `c`. A micro-tile holds up to 6 channels x 2 vectors (16 outputs) in 12 registers: per
//! tap and channel pair, 2 loads, 6 broadcasts, 12 `vpmaddwd` and 12 `vpaddd`, the multiplier-port bound of
//! AVX2's exact integer products (the same products per multiply instruction as `vpmaddubsw` followed by
//! `vpmaddwd`, which would need a saturation-free pair order, see [`super::pairs`]). The tile's accumulators start
//! at the bias and leave through the output stage in registers: requantization (`x86`'s exact i64 lanes), the
//! Add's fixed-point sum when fused, and 8 codes stored per channel row. No im2col, no transposes, no i32
//! accumulator buffer. Vectors are 8 outputs of one output row, so rows whose width is not a multiple of 8 compute
//! a few discarded lanes.
use super::eltwise::AddQuant;
use super::{check_len, mismatch, Isa, OutputParams};
use crate::error::QuantError;
use crate::kernels::depthwise::GroupedConvGeometry;
use crate::pack::{PackedWeights, Packing};

/// Output channels per micro-tile at most (6 x 2 accumulator registers, 2 activation vectors, 1 broadcast).
pub const MAX_TILE_CHANNELS: usize = 6;

/// A block of output channels: `len` channels from `first`, its weights at `at` in [`PlaneConv`]'s buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelBlock {
    pub(crate) first: usize,
    pub(crate) len: usize,
    pub(crate) at: usize,
}

/// How a sample lies in the i16 channel-pair planes (module doc): element `(i, y, phase, j)` is at
/// `((i * hp + y) * sw + phase) * phase_len + j` and holds input column `j * sw + phase` of padded row `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlaneLayout {
    /// Channel pairs, `ceil(c_in / 2)`.
    pub(crate) pairs: usize,
    /// Padded rows, `h + 2 ph`.
    pub(crate) hp: usize,
    /// Elements per phase row: every padded column, and the reads of the last (partial) vector of a row.
    pub(crate) phase_len: usize,
    /// Elements per padded row (`sw * phase_len`).
    pub(crate) row: usize,
    /// Elements per channel-pair plane (`hp * row`).
    pub(crate) plane: usize,
}

impl PlaneLayout {
    fn new(g: &GroupedConvGeometry) -> Self {
        let (sw, pw) = (g.stride.1, g.padding.1);
        let wp = g.w + 2 * pw;
        let hp = g.h + 2 * g.padding.0;
        let ow8 = g.ow().div_ceil(8) * 8;
        let phase_len = wp.div_ceil(sw).max(ow8 + (g.kw - 1) / sw);
        let row = sw * phase_len;
        Self {
            pairs: g.c_in.div_ceil(2),
            hp,
            phase_len,
            row,
            plane: hp * row,
        }
    }

    /// Elements of one sample's planes.
    pub(crate) fn len(&self) -> usize {
        self.pairs * self.plane
    }

    /// Offset of tap `(ky, kx)` from its output's vector base.
    pub(crate) fn tap(&self, g: &GroupedConvGeometry, ky: usize, kx: usize) -> usize {
        let sw = g.stride.1;
        ky * self.row + (kx % sw) * self.phase_len + kx / sw
    }

    /// Element of output position `(oy, ox)` under tap `(0, 0)` in plane 0.
    pub(crate) fn base(&self, g: &GroupedConvGeometry, oy: usize, ox: usize) -> usize {
        oy * g.stride.0 * self.row + ox
    }
}

/// Int8 weights `[c_out][c_in][kh][kw]` prepared for [`plane_conv_requant`]: channel blocks of at most
/// [`MAX_TILE_CHANNELS`], each `[tap][channel pair][channel in block]` as i16 pairs `(w[c][2i], w[c][2i + 1])`
/// (the odd last channel paired with 0).
#[derive(Debug, Clone, PartialEq)]
pub struct PlaneConv {
    geo: GroupedConvGeometry,
    isa: Isa,
    pub(crate) layout: PlaneLayout,
    pub(crate) blocks: Vec<ChannelBlock>,
    pub(crate) weights: Vec<u32>,
    /// Per tap `(ky, kx)` in row-major order, its offset in the planes.
    pub(crate) taps: Vec<usize>,
}

/// The channel blocks: `ceil(c_out / 6)` blocks whose sizes differ by at most one (16 channels: 6, 5, 5), so no
/// block wastes most of a tile.
pub(crate) fn channel_blocks(c_out: usize, per_block: usize) -> Vec<ChannelBlock> {
    let n = c_out.div_ceil(MAX_TILE_CHANNELS);
    let mut blocks = Vec::with_capacity(n);
    let mut first = 0;
    for b in 0..n {
        let len = c_out / n + usize::from(b < c_out % n);
        blocks.push(ChannelBlock {
            first,
            len,
            at: first * per_block,
        });
        first += len;
    }
    blocks
}

impl PlaneConv {
    /// Prepares `weights` (`I8`, `c_out` rows of `c_in * kh * kw` codes) for a convolution of geometry `geo`
    /// (`groups == 1`, valid: see [`GroupedConvGeometry::validate`]) on `isa` ([`Isa::capped`]).
    pub fn new(
        isa: Isa,
        geo: GroupedConvGeometry,
        weights: &PackedWeights,
    ) -> Result<Self, QuantError> {
        const CTX: &str = "PlaneConv";
        geo.validate()?;
        if geo.groups != 1 {
            return Err(mismatch(CTX, format!("{} groups, expected 1", geo.groups)));
        }
        if weights.packing != Packing::I8 {
            return Err(mismatch(
                CTX,
                format!("weights must be I8, found {:?}", weights.packing),
            ));
        }
        let k = geo.taps();
        if weights.rows != geo.c_out || weights.cols != k {
            return Err(mismatch(
                CTX,
                format!(
                    "weights are {} x {}, geometry needs {} x {k}",
                    weights.rows, weights.cols, geo.c_out
                ),
            ));
        }
        check_len(
            CTX,
            "packed weight bytes",
            weights.data.len(),
            weights.rows.checked_mul(weights.cols),
        )?;
        let layout = PlaneLayout::new(&geo);
        let kk = geo.kh * geo.kw;
        let per_channel = kk * layout.pairs;
        let blocks = channel_blocks(geo.c_out, per_channel);
        let mut packed = vec![0u32; geo.c_out * per_channel];
        let mut row = vec![0i8; k];
        for b in &blocks {
            for j in 0..b.len {
                weights.unpack_row(b.first + j, &mut row);
                for t in 0..kk {
                    for i in 0..layout.pairs {
                        let code = |ic: usize| {
                            if ic < geo.c_in {
                                row[ic * kk + t] as i16 as u16 as u32
                            } else {
                                0
                            }
                        };
                        packed[b.at + (t * layout.pairs + i) * b.len + j] =
                            code(2 * i) | code(2 * i + 1) << 16;
                    }
                }
            }
        }
        let taps = (0..geo.kh)
            .flat_map(|ky| (0..geo.kw).map(move |kx| (ky, kx)))
            .map(|(ky, kx)| layout.tap(&geo, ky, kx))
            .collect();
        Ok(Self {
            geo,
            isa: isa.capped(),
            layout,
            blocks,
            weights: packed,
            taps,
        })
    }

    /// The geometry these weights were prepared for.
    pub fn geometry(&self) -> GroupedConvGeometry {
        self.geo
    }

    /// The tier [`plane_conv_requant`] runs on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Multiply-accumulates the AVX2 kernel issues per sample, padding lanes included: channel pairs, output rows
    /// in vectors of 8.
    pub fn issued_macs(&self) -> usize {
        let g = &self.geo;
        2 * self.layout.pairs * g.kh * g.kw * g.c_out * g.oh() * g.ow().div_ceil(8) * 8
    }

    /// Elements (4 bytes each) of the channel-pair planes of one sample.
    pub fn plane_elems(&self) -> usize {
        self.layout.len()
    }

    /// For reports: `direct i16 planes (6-channel tiles)`.
    pub fn path(&self) -> String {
        format!(
            "direct i16 pair planes ({} channel blocks)",
            self.blocks.len()
        )
    }
}

/// A residual Add fused into a convolution's output stage: `out = add_code(conv code, codes[i], quant)` (the
/// convolution's codes are the Add's first input).
#[derive(Debug, Clone, Copy)]
pub struct Residual<'a> {
    /// The other input of the Add, NCHW like the convolution's output.
    pub codes: &'a [u8],
    /// The Add's parameters.
    pub quant: &'a AddQuant,
}

/// One sample: the module doc's `out` (`[c_out][oh][ow]` codes) from `x` (`[c_in][h][w]` codes). `bias` is the
/// zero-point-corrected bias; `p.bias` is not used. Uses the tier the weights were prepared for. With `split`, the
/// AVX2 tiers run the two halves of the output rows as two rayon tasks (for a lone sample on a multi-core
/// machine; the codes are the same); the reference ignores it.
#[allow(clippy::too_many_arguments)]
pub fn plane_conv_requant(
    conv: &PlaneConv,
    x: &[u8],
    pad_code: u8,
    bias: &[i32],
    p: &OutputParams,
    residual: Option<Residual<'_>>,
    split: bool,
    out: &mut [u8],
) -> Result<(), QuantError> {
    const CTX: &str = "plane_conv_requant";
    let g = &conv.geo;
    check_sample_args(CTX, g, x, bias, p, residual.as_ref(), out)?;
    match conv.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => super::x86_conv_planes::plane_conv_requant(
            conv, x, pad_code, bias, p, residual, split, out,
        ),
        _ => reference::plane_conv_requant(g, conv, x, pad_code, bias, p, residual, out),
    }
    Ok(())
}

/// The checks of a one-sample convolution entry point (this module's and [`super::winograd`]'s): input, bias and
/// output lengths against `g`, the output stage, and the residual's length and quantization.
pub(crate) fn check_sample_args(
    ctx: &str,
    g: &GroupedConvGeometry,
    x: &[u8],
    bias: &[i32],
    p: &OutputParams,
    residual: Option<&Residual<'_>>,
    out: &[u8],
) -> Result<(), QuantError> {
    let out_elems = g.c_out.checked_mul(g.oh() * g.ow());
    check_len(ctx, "input", x.len(), g.c_in.checked_mul(g.h * g.w))?;
    check_len(ctx, "bias", bias.len(), Some(g.c_out))?;
    check_len(ctx, "output", out.len(), out_elems)?;
    super::check_output(ctx, g.c_out, p)?;
    if let Some(r) = residual {
        check_len(ctx, "residual", r.codes.len(), out_elems)?;
        r.quant.validate()?;
    }
    Ok(())
}

/// Scalar definitions (normative). Inputs pre-validated by the public entry point.
pub mod reference {
    use super::{PlaneConv, Residual};
    use crate::kernels::depthwise::GroupedConvGeometry;
    use crate::kernels::eltwise::reference::add_code;
    use crate::kernels::OutputParams;
    use crate::qparams::requantize;

    /// The module doc's formula, one output at a time; the weights are read back from `conv`'s pairs.
    #[allow(clippy::too_many_arguments)]
    pub fn plane_conv_requant(
        g: &GroupedConvGeometry,
        conv: &PlaneConv,
        x: &[u8],
        pad_code: u8,
        bias: &[i32],
        p: &OutputParams,
        residual: Option<Residual<'_>>,
        out: &mut [u8],
    ) {
        let (oh, ow) = (g.oh(), g.ow());
        let (sh, sw) = g.stride;
        let (ph, pw) = g.padding;
        let kk = g.kh * g.kw;
        let pairs = conv.layout.pairs;
        let pixel = |ic: usize, y: usize, xx: usize| -> i32 {
            match (y.checked_sub(ph), xx.checked_sub(pw)) {
                (Some(iy), Some(ix)) if iy < g.h && ix < g.w => {
                    i32::from(x[(ic * g.h + iy) * g.w + ix])
                }
                _ => i32::from(pad_code),
            }
        };
        for b in &conv.blocks {
            for j in 0..b.len {
                let c = b.first + j;
                let rq = p.requant_for(c);
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias[c];
                        for t in 0..kk {
                            let (ky, kx) = (t / g.kw, t % g.kw);
                            for ic in 0..g.c_in {
                                let pair = conv.weights[b.at + (t * pairs + ic / 2) * b.len + j];
                                let w = i32::from((pair >> (16 * (ic % 2))) as u16 as i16);
                                acc = acc.wrapping_add(w.wrapping_mul(pixel(
                                    ic,
                                    oy * sh + ky,
                                    ox * sw + kx,
                                )));
                            }
                        }
                        let i = (c * oh + oy) * ow + ox;
                        let q = requantize(acc, rq, p.zero_point, p.qmin, p.qmax) as u8;
                        out[i] = match &residual {
                            Some(r) => add_code(q, r.codes[i], r.quant),
                            None => q,
                        };
                    }
                }
            }
        }
    }
}
