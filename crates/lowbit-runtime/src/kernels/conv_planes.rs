//! Direct convolution of one NCHW sample on channel-chunk planes (i16 channel pairs on AVX2, u8 channel quads on
//! AVX-512 VNNI), any stride and padding, int8 weights, with the requantization and optionally a following
//! residual Add fused into its output stage.
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
//!
//! AVX-512 VNNI (`x86_conv_quads`, [`Scheme::Quads`]): the same scheme with 32-bit elements holding the u8 codes
//! of four input channels (`x[4i] | x[4i+1] << 8 | x[4i+2] << 16 | x[4i+3] << 24`, missing channels 0) and weight
//! quads of i8 alike: one `vpdpbusd` adds 64 exact products (u8 x i8 in groups of 4, wrapping i32 sums, no
//! intermediate saturation) into 16 outputs of one channel. A micro-tile holds up to 12 channels x 2 vectors. At
//! stride 1 a vector is 16 consecutive elements of the flattened padded rows (row length `w + 2 pw`), so narrow
//! outputs (8 x 8) fill its lanes except for the padding columns; the lanes that fall on padding columns or past
//! the last row are computed and discarded. At other strides vectors are 16 outputs of one row, as on AVX2.
use super::eltwise::AddQuant;
use super::{check_len, mismatch, Isa, OutputParams};
use crate::error::QuantError;
use crate::kernels::depthwise::GroupedConvGeometry;
use crate::pack::{PackedWeights, Packing};

/// Output channels per micro-tile at most (6 x 2 accumulator registers, 2 activation vectors, 1 broadcast).
pub const MAX_TILE_CHANNELS: usize = 6;

/// Output channels per micro-tile of [`Scheme::Quads`] at most (12 x 2 of the 32 zmm registers as accumulators).
pub const MAX_QUAD_TILE_CHANNELS: usize = 12;

/// How input channels share a 32-bit plane element, and the kernel that reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Two channels as i16 (`vpmaddwd`, 8 outputs per vector): the AVX2 tiers and the reference.
    Pairs,
    /// Four channels as u8 (`vpdpbusd`, 16 outputs per vector): the AVX-512 VNNI tier.
    Quads,
}

impl Scheme {
    /// Input channels per element.
    pub fn channels(self) -> usize {
        match self {
            Scheme::Pairs => 2,
            Scheme::Quads => 4,
        }
    }

    /// Outputs per vector.
    pub fn lanes(self) -> usize {
        match self {
            Scheme::Pairs => 8,
            Scheme::Quads => 16,
        }
    }

    fn max_tile_channels(self) -> usize {
        match self {
            Scheme::Pairs => MAX_TILE_CHANNELS,
            Scheme::Quads => MAX_QUAD_TILE_CHANNELS,
        }
    }
}

/// A block of output channels: `len` channels from `first`, its weights at `at` in [`PlaneConv`]'s buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelBlock {
    pub(crate) first: usize,
    pub(crate) len: usize,
    pub(crate) at: usize,
}

/// How a sample lies in the channel-chunk planes (module doc): element `(i, y, phase, j)` is at
/// `((i * hp + y) * sw + phase) * phase_len + j` and holds input column `j * sw + phase` of padded row `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlaneLayout {
    /// Channel chunks (pairs or quads), `ceil(c_in / scheme.channels())`.
    pub(crate) chunks: usize,
    /// Padded rows, `h + 2 ph`.
    pub(crate) hp: usize,
    /// Elements per phase row: every padded column, and the reads of the last (partial) vector of a row.
    pub(crate) phase_len: usize,
    /// Elements per padded row (`sw * phase_len`).
    pub(crate) row: usize,
    /// Elements per channel-chunk plane (`hp * row`).
    pub(crate) plane: usize,
    /// Elements past the last plane that vectors may read (their discarded lanes; quads only).
    pub(crate) slack: usize,
}

impl PlaneLayout {
    fn new(g: &GroupedConvGeometry, scheme: Scheme) -> Self {
        let (sw, pw) = (g.stride.1, g.padding.1);
        let wp = g.w + 2 * pw;
        let hp = g.h + 2 * g.padding.0;
        let (phase_len, slack) = match scheme {
            Scheme::Pairs => (
                wp.div_ceil(sw)
                    .max(g.ow().div_ceil(8) * 8 + (g.kw - 1) / sw),
                0,
            ),
            // Valid lanes read inside their padded row (column `ox * sw + kx < wp`); the others may run one row
            // plus one vector past the last plane.
            Scheme::Quads => (wp.div_ceil(sw), sw * wp.div_ceil(sw) + 2 * 16),
        };
        let row = sw * phase_len;
        Self {
            chunks: g.c_in.div_ceil(scheme.channels()),
            hp,
            phase_len,
            row,
            plane: hp * row,
            slack,
        }
    }

    /// Elements of one sample's planes (and their slack).
    pub(crate) fn len(&self) -> usize {
        self.chunks * self.plane + self.slack
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

/// A run of a quad vector's lanes that are real outputs: lanes `lane..lane + len` hold outputs
/// `lane + offset..lane + offset + len` of the channel (`oy * ow + ox`, one output row or consecutive rows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Seg {
    pub(crate) lane: usize,
    /// Output index minus lane (may be negative at the first vector of a row).
    pub(crate) offset: isize,
    /// `len` bits from bit `lane`.
    pub(crate) mask: u16,
}

/// 16 outputs of [`Scheme::Quads`]: `base` is their first input element under tap `(0, 0)` in plane 0;
/// `segs[..nsegs]` the lanes that are written (at most 3: at stride 1 a vector spans at most three rows of at
/// least 8 elements, otherwise one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QuadVector {
    pub(crate) base: usize,
    pub(crate) segs: [Seg; 3],
    pub(crate) nsegs: usize,
}

impl QuadVector {
    /// The written lanes.
    pub(crate) fn segs(&self) -> &[Seg] {
        &self.segs[..self.nsegs]
    }

    fn push(&mut self, lane: usize, pos: usize) {
        let offset = pos as isize - lane as isize;
        match self.segs[..self.nsegs].last_mut() {
            Some(s) if s.offset == offset => s.mask |= 1 << lane,
            _ => {
                self.segs[self.nsegs] = Seg {
                    lane,
                    offset,
                    mask: 1 << lane,
                };
                self.nsegs += 1;
            }
        }
    }
}

/// The output vectors of one sample for [`Scheme::Quads`]. Stride 1 with rows of at least 8 elements: 16
/// consecutive elements of the flattened padded rows (element `oy * row + ox` is output `(oy, ox)` when
/// `ox < ow`); otherwise 16 outputs of one output row.
fn quad_vectors(g: &GroupedConvGeometry, l: &PlaneLayout) -> Vec<QuadVector> {
    const LANES: usize = 16;
    let (oh, ow) = (g.oh(), g.ow());
    let mut out = Vec::new();
    if g.stride == (1, 1) && l.row >= 8 {
        let end = oh * l.row;
        for f0 in (0..end).step_by(LANES) {
            let mut v = QuadVector {
                base: f0,
                ..QuadVector::default()
            };
            for lane in 0..LANES.min(end - f0) {
                let (oy, ox) = ((f0 + lane) / l.row, (f0 + lane) % l.row);
                if ox < ow {
                    v.push(lane, oy * ow + ox);
                }
            }
            if v.nsegs > 0 {
                out.push(v);
            }
        }
    } else {
        for oy in 0..oh {
            for ox in (0..ow).step_by(LANES) {
                let mut v = QuadVector {
                    base: l.base(g, oy, ox),
                    ..QuadVector::default()
                };
                for lane in 0..(ow - ox).min(LANES) {
                    v.push(lane, oy * ow + ox + lane);
                }
                out.push(v);
            }
        }
    }
    out
}

/// Int8 weights `[c_out][c_in][kh][kw]` prepared for [`plane_conv_requant`]: channel blocks of at most
/// [`MAX_TILE_CHANNELS`] ([`MAX_QUAD_TILE_CHANNELS`] for quads), each `[tap][channel chunk][channel in block]` as
/// i16 pairs `(w[c][2i], w[c][2i + 1])` or i8 quads `w[c][4i..4i + 4]` (missing last channels 0).
#[derive(Debug, Clone, PartialEq)]
pub struct PlaneConv {
    geo: GroupedConvGeometry,
    isa: Isa,
    scheme: Scheme,
    pub(crate) layout: PlaneLayout,
    pub(crate) blocks: Vec<ChannelBlock>,
    pub(crate) weights: Vec<u32>,
    /// Per tap `(ky, kx)` in row-major order, its offset in the planes.
    pub(crate) taps: Vec<usize>,
    /// The output vectors of [`Scheme::Quads`] (empty for pairs).
    pub(crate) vectors: Vec<QuadVector>,
}

/// The channel blocks: `ceil(c_out / max)` blocks whose sizes differ by at most one (16 channels, at most 6 each:
/// 6, 5, 5), so no block wastes most of a tile.
pub(crate) fn channel_blocks(c_out: usize, per_block: usize, max: usize) -> Vec<ChannelBlock> {
    let n = c_out.div_ceil(max);
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
    /// (`groups == 1`, valid: see [`GroupedConvGeometry::validate`]) on `isa` ([`Isa::capped`]): channel quads
    /// for the AVX-512 VNNI tier, pairs for the others.
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
        let isa = isa.capped();
        let scheme = match isa {
            Isa::Avx512Vnni => Scheme::Quads,
            _ => Scheme::Pairs,
        };
        let layout = PlaneLayout::new(&geo, scheme);
        let kk = geo.kh * geo.kw;
        let per_channel = kk * layout.chunks;
        let blocks = channel_blocks(geo.c_out, per_channel, scheme.max_tile_channels());
        let mut packed = vec![0u32; geo.c_out * per_channel];
        let mut row = vec![0i8; k];
        let (per, bits) = (scheme.channels(), 32 / scheme.channels());
        for b in &blocks {
            for j in 0..b.len {
                weights.unpack_row(b.first + j, &mut row);
                for t in 0..kk {
                    for i in 0..layout.chunks {
                        let code = |ic: usize| match (ic < geo.c_in, scheme) {
                            (false, _) => 0,
                            (true, Scheme::Pairs) => row[ic * kk + t] as i16 as u16 as u32,
                            (true, Scheme::Quads) => row[ic * kk + t] as u8 as u32,
                        };
                        packed[b.at + (t * layout.chunks + i) * b.len + j] =
                            (0..per).fold(0, |acc, q| acc | code(per * i + q) << (bits * q));
                    }
                }
            }
        }
        let taps = (0..geo.kh)
            .flat_map(|ky| (0..geo.kw).map(move |kx| (ky, kx)))
            .map(|(ky, kx)| layout.tap(&geo, ky, kx))
            .collect();
        let vectors = match scheme {
            Scheme::Quads => quad_vectors(&geo, &layout),
            Scheme::Pairs => Vec::new(),
        };
        Ok(Self {
            vectors,
            geo,
            isa,
            scheme,
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

    /// The element scheme (pairs or quads) the kernel reads.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Weight code of output channel `c`, input channel `ic`, tap `t` (`ky * kw + kx`), read back from the
    /// prepared blocks.
    pub fn weight(&self, c: usize, ic: usize, t: usize) -> i32 {
        let b = self
            .blocks
            .iter()
            .find(|b| (b.first..b.first + b.len).contains(&c));
        let Some(b) = b else { return 0 };
        let per = self.scheme.channels();
        let e = self.weights[b.at + (t * self.layout.chunks + ic / per) * b.len + (c - b.first)];
        match self.scheme {
            Scheme::Pairs => i32::from((e >> (16 * (ic % 2))) as u16 as i16),
            Scheme::Quads => i32::from((e >> (8 * (ic % 4))) as u8 as i8),
        }
    }

    /// Multiply-accumulates the kernel issues per sample, padding lanes included: channel chunks, output rows in
    /// vectors of 8 (pairs), or the flattened padded rows in vectors of 16 at stride 1 (quads).
    pub fn issued_macs(&self) -> usize {
        let g = &self.geo;
        let per = self.scheme.channels() * self.layout.chunks * g.kh * g.kw * g.c_out;
        match self.scheme {
            Scheme::Quads => per * self.vectors.len() * 16,
            Scheme::Pairs => per * g.oh() * g.ow().div_ceil(8) * 8,
        }
    }

    /// Elements (4 bytes each) of the channel-chunk planes of one sample.
    pub fn plane_elems(&self) -> usize {
        self.layout.len()
    }

    /// For reports: `direct i16 pair planes (3 channel blocks)`.
    pub fn path(&self) -> String {
        let kind = match self.scheme {
            Scheme::Pairs => "i16 pair",
            Scheme::Quads => "u8 quad (vpdpbusd)",
        };
        format!(
            "direct {kind} planes ({} channel blocks)",
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
    match (conv.isa, conv.scheme) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni, Scheme::Quads) => super::x86_conv_quads::plane_conv_requant(
            conv, x, pad_code, bias, p, residual, split, out,
        ),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512Vnni, Scheme::Pairs) => super::x86_conv_planes::plane_conv_requant(
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

    /// The module doc's formula, one output at a time; the weights are read back from `conv`'s blocks.
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
                                let w = conv.weight(c, ic, t);
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
