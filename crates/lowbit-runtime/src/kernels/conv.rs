//! Direct (im2col-free) stride-1 convolution on `u8` codes with int8 weights, for layers whose output channels
//! are few: there an im2col GEMM wastes most of its 16-column tile (LeNet's first conv has 6 channels and
//! K = 25, so 70% of a 6 x 16 tile with K padded to 32 is padding) and spends more time building the column
//! matrix than multiplying it.
//!
//! Arithmetic (normative, equal to the im2col path of the engine bit for bit): the sample is padded with
//! `pad_code` (the input zero point), and
//! `out[c][oy][ox] = bias[c] + sum_{ic, ky, kx} w[c][ic][ky][kx] * xpad[ic][oy + ky][ox + kx]` in wrapping i32,
//! output NCHW. [`requant_channels`] then applies one requantization per channel row.
//!
//! AVX2 schemes, both exact:
//! - **u8 quads** (`vpmaddubsw`, when the weights have a safe pair order, see [`super::pairs`]): the taps are
//!   ordered and flipped by a [`super::pairs::PairPlan`] and grouped four by four. Output positions are taken on
//!   the *wide grid* of the zero-point-padded planes (whole padded rows, the columns past `ow` discarded), where
//!   16 consecutive positions of one tap are one 16-byte load; four such loads interleave into `[position][4
//!   taps]` bytes, and one `vpmaddubsw` + `vpmaddwd` per broadcast weight quad adds 64 products into 16
//!   positions of a channel. Twice the products per instruction of the i16 scheme, and no im2col.
//! - **i16 pairs** (any int8 weights): the sample is widened once into zero-point-padded i16 planes; for 8
//!   adjacent output columns, one register holds the 8 input pairs `(x[ox + kx], x[ox + kx + 1])` of a
//!   kernel-column pair (two loads and two unpacks), and `vpmaddwd` with the broadcast weight pair
//!   `(w[kx], w[kx + 1])` adds both products into each of up to 12 channel accumulators. An odd kernel width
//!   pairs its last column with a zero weight.
use super::{check_len, mismatch, Isa, OutputParams};
use crate::error::QuantError;
use crate::pack::{PackedWeights, Packing};
use crate::qparams::{requantize, Requant};

/// Shape of a stride-1 convolution on one NCHW sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Zero-point rows added above and below.
    pub pad_h: usize,
    /// Zero-point columns added left and right.
    pub pad_w: usize,
}

impl ConvGeometry {
    /// Output height (0 when the kernel does not fit).
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad_h + 1).saturating_sub(self.kh)
    }

    /// Output width (0 when the kernel does not fit).
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad_w + 1).saturating_sub(self.kw)
    }

    /// Codes per output channel (`c_in * kh * kw`).
    pub fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Height and width of the zero-point-padded input planes.
    pub(crate) fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.pad_h, self.w + 2 * self.pad_w)
    }

    /// Kernel-column pairs per kernel row.
    fn kx_pairs(&self) -> usize {
        self.kw.div_ceil(2)
    }

    /// Multiply-accumulates the direct kernel issues per sample, padding lanes included: channels in blocks of
    /// [`MAX_CHANNEL_BLOCK`] cost their real count, columns are computed 8 at a time, kernel columns in pairs.
    pub fn direct_macs(&self) -> usize {
        self.c_out
            * self.c_in
            * self.kh
            * 2
            * self.kx_pairs()
            * self.oh()
            * self.ow().div_ceil(8)
            * 8
    }
}

/// Channels accumulated together by the AVX2 kernel (12 ymm accumulators, one pair register, one broadcast).
pub const MAX_CHANNEL_BLOCK: usize = 12;

/// Int8 weights `[c_out][c_in][kh][kw]` prepared for [`direct_conv_acc`], in one of two schemes (module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct DirectConv {
    geo: ConvGeometry,
    scheme: Scheme,
    isa: Isa,
}

/// How [`DirectConv`] multiplies.
#[derive(Debug, Clone, PartialEq)]
enum Scheme {
    /// i16 kernel-column pairs for `vpmaddwd`: `(w[kx] as u16) | (w[kx + 1] as u16) << 16`,
    /// `[c_out][c_in][kh][kx pair]`, the odd last column paired with 0. Any int8 weights; the scalar reference.
    Pairs16(Vec<i32>),
    /// u8 tap quads for `vpmaddubsw` in a safe pair order (AVX2 tiers only).
    Quads(Quads),
}

/// Taps of a stride-1 convolution in a [`PairPlan`] order, four per quad, read on the *wide grid*: the sample's
/// zero-point-padded planes are `[c_in][hp][wp]` bytes (`hp = h + 2 pad_h`, `wp = w + 2 pad_w`), output position
/// `p = oy * wp + ox` is computed for every `ox < wp` (columns from `ow` on are discarded), and tap
/// `(ic, ky, kx)` of position `p` is the byte at `p + (ic * hp + ky) * wp + kx`. So 16 consecutive positions of
/// one tap are one 16-byte load, and four taps interleave into the `[position][4 taps]` bytes `vpmaddubsw`
/// multiplies by a broadcast weight quad.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Quads {
    /// Per plan position, the tap's offset in the padded planes; 0 for a zero position, whose weight is 0 in
    /// every channel (so whatever it reads adds nothing).
    pub(crate) offsets: Vec<usize>,
    /// Per quad, `0xff` in the bytes of complemented (flipped) taps.
    pub(crate) xor: Vec<i32>,
    /// `[c_out][quads]` effective weight codes, four bytes per quad (negated where flipped).
    pub(crate) weights: Vec<i32>,
    /// Per channel, `255 * sum of its flipped weights`, which the complement moved out of the products.
    pub(crate) bias_fix: Vec<i32>,
    /// Flipped taps (for [`DirectConv::path`]).
    flipped: usize,
    /// Positions in compact order (`oy * ow + ox`, only real ones) instead of the wide grid; see [`Grid`].
    pub(crate) compact: bool,
    /// Per block of 16 positions, the rows it spans: `(base, first lane)` of each (1 to 3; see [`QuadBlock`]).
    pub(crate) blocks: Vec<QuadBlock>,
    /// Bytes of padded planes the blocks read: the last segment base plus the largest tap offset plus 16 (bases
    /// grow with the block), at least the planes themselves.
    pub(crate) span: usize,
}

/// The output rows one block of 16 positions of the u8 quad scheme spans: a tap's lanes from `segments[j].1` on
/// read the padded planes at `segments[j].0 + tap offset` (later segments override earlier ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct QuadBlock {
    /// Segments in use (1 on the wide grid, up to 3 on the compact one).
    pub(crate) len: usize,
    /// `(base, first lane)` per segment.
    pub(crate) segments: [(usize, usize); 3],
}

/// The blocks of a sample: position `c` of the order is at `c + (c / row) * gap` in the padded planes, where
/// compact positions skip the `wp - ow` columns past each row's end and wide ones compute them.
fn quad_blocks(geo: &ConvGeometry, compact: bool) -> Vec<QuadBlock> {
    let wp = geo.padded().1;
    let (positions, row, gap) = if compact {
        (geo.oh() * geo.ow(), geo.ow(), wp - geo.ow())
    } else {
        (geo.oh() * wp, wp, 0)
    };
    (0..positions.div_ceil(16))
        .map(|b| {
            let c0 = 16 * b;
            let first = c0 / row;
            let len = if gap == 0 {
                1
            } else {
                (c0 + 15) / row - first + 1
            };
            let mut segments = [(0, 0); 3];
            for (j, seg) in segments.iter_mut().enumerate().take(len) {
                let r = first + j;
                *seg = (c0 + r * gap, (r * row).saturating_sub(c0));
            }
            QuadBlock { len, segments }
        })
        .collect()
}

/// Which output positions the u8 quad scheme computes, 16 at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grid {
    /// The cheaper of the two by `quad_cost`.
    Auto,
    /// Whole padded rows (`oy * wp + ox` for every `ox < wp`): one load per tap and block, `wp - ow` wasted
    /// columns per row.
    Wide,
    /// Only real positions (`oy * ow + ox`): a block spanning rows loads each row's segment of a tap and blends
    /// them (at most 3 segments, so only for `ow >= 8`; narrower outputs stay on the wide grid).
    Compact,
}

/// Rough instructions of the u8 quad scheme per tap quad, over all 16-position blocks of one sample: per block,
/// a tap costs one load per row segment plus a blend per extra one, a quad 6 more to interleave, and 8 per
/// channel to multiply (two `vpmaddubsw`, two `vpmaddwd`, two adds, a broadcast, a share of the loop).
fn quad_cost(geo: &ConvGeometry, compact: bool) -> usize {
    quad_blocks(geo, compact)
        .iter()
        .map(|b| 4 * (2 * b.len - 1) + 6 + 8 * geo.c_out)
        .sum()
}

impl Quads {
    fn new(geo: ConvGeometry, weights: &PackedWeights, grid: Grid) -> Option<Quads> {
        let k = geo.k();
        let k4 = k.div_ceil(4) * 4;
        let plan = super::pairs::plan_pairs(weights, k4 + k4 / 4)?;
        let (hp, wp) = geo.padded();
        let offsets: Vec<usize> = plan
            .src()
            .iter()
            .map(|&s| match s {
                super::pairs::ZERO => 0,
                s => {
                    let s = s as usize;
                    let (ic, ky, kx) = (s / (geo.kh * geo.kw), s / geo.kw % geo.kh, s % geo.kw);
                    (ic * hp + ky) * wp + kx
                }
            })
            .collect();
        let flipped = plan.flipped();
        // Compact blocks span at most 3 rows only when rows hold at least 8 positions.
        let compact = geo.ow() >= 8
            && match grid {
                Grid::Auto => quad_cost(&geo, true) < quad_cost(&geo, false),
                Grid::Wide => false,
                Grid::Compact => true,
            };
        let blocks = quad_blocks(&geo, compact);
        let span = {
            let (hp, wp) = geo.padded();
            let last_base = blocks.last().map_or(0, |b| b.segments[b.len - 1].0);
            let max_off = offsets.iter().copied().max().unwrap_or(0);
            (geo.c_in * hp * wp).max(last_base + max_off + 16)
        };
        let xor = flipped
            .chunks_exact(4)
            .map(|f| (0..4).fold(0u32, |m, j| m | if f[j] { 0xff << (8 * j) } else { 0 }) as i32)
            .collect();
        let mut row = vec![0i8; k];
        let mut quads = Vec::with_capacity(geo.c_out * plan.len() / 4);
        for c in 0..geo.c_out {
            weights.unpack_row(c, &mut row);
            for t in (0..plan.len()).step_by(4) {
                let b = |j: usize| plan.code_at(&row, t + j) as u8 as u32;
                quads.push((b(0) | b(1) << 8 | b(2) << 16 | b(3) << 24) as i32);
            }
        }
        Some(Quads {
            offsets,
            xor,
            weights: quads,
            bias_fix: plan.bias_fix(weights),
            flipped: flipped.iter().filter(|&&f| f).count(),
            compact,
            span,
            blocks,
        })
    }

    /// Positions per row of the plan (a multiple of 4).
    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }
}

impl DirectConv {
    /// Prepares `weights` (`I8`, `c_out` rows of `c_in * kh * kw` codes) for `isa` ([`Isa::capped`]): the u8 quad
    /// scheme on the AVX2 tiers when a safe pair order fits in 1.25 times the taps, else i16 pairs.
    pub fn new(isa: Isa, geo: ConvGeometry, weights: &PackedWeights) -> Result<Self, QuantError> {
        Self::build(isa, geo, weights, Some(Grid::Auto))
    }

    /// Like [`DirectConv::new`], with the u8 quad scheme (when it applies) on the given grid.
    pub fn with_grid(
        isa: Isa,
        geo: ConvGeometry,
        weights: &PackedWeights,
        grid: Grid,
    ) -> Result<Self, QuantError> {
        Self::build(isa, geo, weights, Some(grid))
    }

    /// Like [`DirectConv::new`], always on the i16 pair scheme (for comparisons).
    pub fn widened(
        isa: Isa,
        geo: ConvGeometry,
        weights: &PackedWeights,
    ) -> Result<Self, QuantError> {
        Self::build(isa, geo, weights, None)
    }

    fn build(
        isa: Isa,
        geo: ConvGeometry,
        weights: &PackedWeights,
        quads: Option<Grid>,
    ) -> Result<Self, QuantError> {
        const CTX: &str = "DirectConv";
        if geo.kh == 0 || geo.kw == 0 || geo.h == 0 || geo.w == 0 {
            return Err(mismatch(CTX, format!("empty kernel or input: {geo:?}")));
        }
        if weights.packing != Packing::I8 {
            return Err(mismatch(
                CTX,
                format!("weights must be I8, found {:?}", weights.packing),
            ));
        }
        if weights.rows != geo.c_out || weights.cols != geo.k() {
            return Err(mismatch(
                CTX,
                format!(
                    "weights are {} x {}, geometry needs {} x {}",
                    weights.rows,
                    weights.cols,
                    geo.c_out,
                    geo.k()
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
        let avx2 = matches!(isa, Isa::Avx2 | Isa::Avx512Vnni);
        if let Some(q) = quads
            .filter(|_| avx2 && geo.oh() > 0 && geo.ow() > 0)
            .and_then(|grid| Quads::new(geo, weights, grid))
        {
            return Ok(Self {
                geo,
                scheme: Scheme::Quads(q),
                isa,
            });
        }
        let kxp = geo.kx_pairs();
        let mut pairs = Vec::with_capacity(geo.c_out * geo.c_in * geo.kh * kxp);
        let mut row = vec![0i8; geo.k()];
        for c in 0..geo.c_out {
            weights.unpack_row(c, &mut row);
            for kernel_row in row.chunks_exact(geo.kw.max(1)).take(geo.c_in * geo.kh) {
                for p in 0..kxp {
                    let lo = kernel_row[2 * p] as i16 as u16 as u32;
                    let hi = kernel_row
                        .get(2 * p + 1)
                        .map_or(0, |&v| v as i16 as u16 as u32);
                    pairs.push((lo | hi << 16) as i32);
                }
            }
        }
        Ok(Self {
            geo,
            scheme: Scheme::Pairs16(pairs),
            isa,
        })
    }

    /// The geometry these weights were prepared for.
    pub fn geometry(&self) -> ConvGeometry {
        self.geo
    }

    /// The tier [`direct_conv_acc`] runs on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `(row, plane)`: the strides of [`direct_conv_acc_wide`]'s output, `(ow, oh * ow)` on the i16 scheme; the
    /// u8 quads compute whole padded rows on the wide grid, `(wp, oh * wp rounded up to 16)`, and `(ow, oh * ow
    /// rounded up to 16)` on the compact one.
    pub fn layout(&self) -> (usize, usize) {
        let (oh, ow) = (self.geo.oh(), self.geo.ow());
        match self.scheme {
            Scheme::Pairs16(_) => (ow, oh * ow),
            Scheme::Quads(Quads { compact: true, .. }) => (ow, (oh * ow).next_multiple_of(16)),
            Scheme::Quads(_) => {
                let wp = self.geo.padded().1;
                (wp, (oh * wp).next_multiple_of(16))
            }
        }
    }

    /// Positions per row of the u8 quad scheme's tap order (taps, re-paired and padded), `None` on i16 pairs.
    pub fn quad_len(&self) -> Option<usize> {
        match &self.scheme {
            Scheme::Quads(q) => Some(q.len()),
            Scheme::Pairs16(_) => None,
        }
    }

    /// The scheme, for reports: `direct i16` or `direct u8 quads (K 25 -> 28, 3 flipped, wide grid)`.
    pub fn path(&self) -> String {
        match &self.scheme {
            Scheme::Pairs16(_) => "direct i16".into(),
            Scheme::Quads(q) => format!(
                "direct u8 quads (K {} -> {}, {} flipped, {} grid)",
                self.geo.k(),
                q.len(),
                q.flipped,
                if q.compact { "compact" } else { "wide" }
            ),
        }
    }
}

/// One sample: `out[c][oy * ow + ox] = bias[c] + sum w * xpad` (module doc), `x` is `[c_in][h][w]` codes.
pub fn direct_conv_acc(
    conv: &DirectConv,
    x: &[u8],
    pad_code: u8,
    bias: &[i32],
    out: &mut [i32],
) -> Result<(), QuantError> {
    let g = conv.geo;
    check_len(
        "direct_conv_acc",
        "output",
        out.len(),
        g.c_out.checked_mul(g.oh() * g.ow()),
    )?;
    let (row, plane) = conv.layout();
    if (row, plane) == (g.ow(), g.oh() * g.ow()) {
        return direct_conv_acc_wide(conv, x, pad_code, bias, out);
    }
    thread_local! {
        static WIDE: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut compact = |wide: &mut Vec<i32>| {
        wide.resize(g.c_out * plane, 0);
        direct_conv_acc_wide(conv, x, pad_code, bias, wide)?;
        for (wplane, oplane) in wide
            .chunks_exact(plane)
            .zip(out.chunks_exact_mut(g.oh() * g.ow()))
        {
            for (wrow, orow) in wplane.chunks(row).zip(oplane.chunks_exact_mut(g.ow())) {
                orow.copy_from_slice(&wrow[..g.ow()]);
            }
        }
        Ok(())
    };
    WIDE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut wide) => compact(&mut wide),
        Err(_) => compact(&mut Vec::new()),
    })
}

/// [`direct_conv_acc`] in the scheme's own output layout ([`DirectConv::layout`]): `out[c * plane + oy * row +
/// ox]` for `ox < ow`; the other elements are scratch (left with unspecified values).
pub fn direct_conv_acc_wide(
    conv: &DirectConv,
    x: &[u8],
    pad_code: u8,
    bias: &[i32],
    out: &mut [i32],
) -> Result<(), QuantError> {
    const CTX: &str = "direct_conv_acc";
    let g = conv.geo;
    check_len(CTX, "input", x.len(), g.c_in.checked_mul(g.h * g.w))?;
    check_len(CTX, "bias", bias.len(), Some(g.c_out))?;
    check_len(
        CTX,
        "output",
        out.len(),
        g.c_out.checked_mul(conv.layout().1),
    )?;
    match (&conv.scheme, conv.isa) {
        #[cfg(target_arch = "x86_64")]
        (Scheme::Pairs16(pairs), Isa::Avx2 | Isa::Avx512Vnni) => {
            super::x86::direct_conv(&g, pairs, x, pad_code, bias, out)
        }
        #[cfg(target_arch = "x86_64")]
        (Scheme::Quads(q), Isa::Avx2 | Isa::Avx512Vnni) => {
            super::x86::direct_conv_quads(&g, q, x, pad_code, bias, out)
        }
        (Scheme::Pairs16(pairs), _) => direct_conv_reference(&g, pairs, x, pad_code, bias, out),
        #[allow(unreachable_patterns)]
        (Scheme::Quads(_), _) => return Err(mismatch(CTX, "u8 quads need an AVX2 tier".into())),
    }
    Ok(())
}

/// Scalar definition of [`direct_conv_acc`] on prepared pairs (checked shapes).
fn direct_conv_reference(
    g: &ConvGeometry,
    pairs: &[i32],
    x: &[u8],
    pad_code: u8,
    bias: &[i32],
    out: &mut [i32],
) {
    let (oh, ow, kxp) = (g.oh(), g.ow(), g.kx_pairs());
    let pixel = |ic: usize, y: usize, xx: usize| -> i32 {
        match (y.checked_sub(g.pad_h), xx.checked_sub(g.pad_w)) {
            (Some(iy), Some(ix)) if iy < g.h && ix < g.w => {
                i32::from(x[(ic * g.h + iy) * g.w + ix])
            }
            _ => i32::from(pad_code),
        }
    };
    for c in 0..g.c_out {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = bias[c];
                for ic in 0..g.c_in {
                    for ky in 0..g.kh {
                        for p in 0..kxp {
                            let pair = pairs[((c * g.c_in + ic) * g.kh + ky) * kxp + p];
                            let (w0, w1) = (i32::from(pair as i16), i32::from((pair >> 16) as i16));
                            let kx = 2 * p;
                            acc = acc.wrapping_add(w0.wrapping_mul(pixel(ic, oy + ky, ox + kx)));
                            if kx + 1 < g.kw {
                                acc = acc.wrapping_add(w1.wrapping_mul(pixel(
                                    ic,
                                    oy + ky,
                                    ox + kx + 1,
                                )));
                            }
                        }
                    }
                }
                out[(c * oh + oy) * ow + ox] = acc;
            }
        }
    }
}

/// Requantizes `[channels][positions]` accumulators (NCHW, one sample) with `requant[c]` on channel row `c`
/// (`requant[0]` for every row when per-tensor): [`crate::qparams::requantize`] per value, cast to `u8`.
#[allow(clippy::too_many_arguments)]
pub fn requant_channels(
    acc: &[i32],
    channels: usize,
    positions: usize,
    requant: &[Requant],
    zero_point: i32,
    qmin: i32,
    qmax: i32,
    out: &mut [u8],
) -> Result<(), QuantError> {
    const CTX: &str = "requant_channels";
    check_len(
        CTX,
        "accumulators",
        acc.len(),
        channels.checked_mul(positions),
    )?;
    check_len(CTX, "output", out.len(), channels.checked_mul(positions))?;
    if requant.len() != 1 && requant.len() != channels {
        return Err(mismatch(
            CTX,
            format!(
                "requant: expected 1 or {channels} entries, found {}",
                requant.len()
            ),
        ));
    }
    if positions == 0 {
        return Ok(());
    }
    let p = OutputParams {
        bias: &[],
        requant,
        zero_point,
        qmin,
        qmax,
    };
    super::check_output(CTX, channels, &p)?;
    match super::selected_isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni if positions >= 8 => {
            super::x86::requant_channels(acc, positions, &p, out)
        }
        _ => {
            let rows = acc
                .chunks_exact(positions)
                .zip(out.chunks_exact_mut(positions));
            for (c, (arow, orow)) in rows.enumerate() {
                let rq = p.requant_for(c);
                for (o, &a) in orow.iter_mut().zip(arow) {
                    *o = requantize(a, rq, zero_point, qmin, qmax) as u8;
                }
            }
        }
    }
    Ok(())
}

/// How one sample's convolution accumulators are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccLayout {
    /// Channel planes `plane` elements apart, rows `row` apart (`row >= w`, `plane >= h * row`; the columns from
    /// `w` on are ignored): NCHW when `(row, plane) == (w, h * w)`, or a direct kernel's own layout
    /// ([`DirectConv::layout`]).
    Planes {
        /// Elements between rows.
        row: usize,
        /// Elements between channel planes.
        plane: usize,
    },
    /// `[h * w][channels]`, as the im2col GEMM writes them (one row per output position).
    Positions,
}

/// One sample's convolution accumulators.
#[derive(Debug, Clone, Copy)]
pub struct ConvAcc<'a> {
    /// The accumulators in `layout`: `channels * height * width` for positions, `channels * plane` for planes.
    pub acc: &'a [i32],
    /// Their order.
    pub layout: AccLayout,
    /// Output channels.
    pub channels: usize,
    /// Output height.
    pub height: usize,
    /// Output width.
    pub width: usize,
}

/// A 2 x 2, stride-2 max pool of one sample's `h x w` convolution accumulators ([`ConvAcc`]), then the output stage
/// of channel `c` (`p.requant[c]`, or `p.requant[0]` when per-tensor; `p.bias` is not used):
/// `out[c][oy][ox] = requantize(max_{dy, dx in 0..2} acc(c, 2 oy + dy, 2 ox + dx)) as u8`, NCHW
/// `[channels][h / 2][w / 2]`. Equal to pooling the requantized codes, as requantization never decreases as the
/// accumulator grows. `isa` picks the kernel (unavailable tiers run the scalar definition); the AVX2 one needs
/// `w / 2 >= 8` for planes and `channels >= 8` for positions, else the scalar definition runs too.
pub fn max_pool_requant(
    isa: Isa,
    conv: ConvAcc<'_>,
    p: &OutputParams,
    out: &mut [u8],
) -> Result<(), QuantError> {
    const CTX: &str = "max_pool_requant";
    let ConvAcc {
        acc,
        layout,
        channels,
        height: h,
        width: w,
    } = conv;
    let elems = match layout {
        AccLayout::Planes { row, plane } => {
            if row < w || plane < h.saturating_mul(row) {
                return Err(mismatch(
                    CTX,
                    format!("planes of {plane} with rows of {row} cannot hold {h} x {w}"),
                ));
            }
            channels.checked_mul(plane)
        }
        AccLayout::Positions => channels.checked_mul(h).and_then(|v| v.checked_mul(w)),
    };
    check_len(CTX, "accumulators", acc.len(), elems)?;
    check_len(CTX, "output", out.len(), Some(channels * (h / 2) * (w / 2)))?;
    super::check_output(CTX, channels, p)?;
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni)
        && isa.is_available()
        && super::x86::max_pool_requant(conv, p, out)
    {
        return Ok(());
    }
    let (oh, ow) = (h / 2, w / 2);
    // Planes whose pooled rows are too short for a vector each (LeNet's second conv pools to 5 x 5): the window
    // maxima first, then the vector requantization of whole pooled planes.
    #[cfg(target_arch = "x86_64")]
    if let (AccLayout::Planes { row, plane }, Isa::Avx2 | Isa::Avx512Vnni) = (layout, isa) {
        if oh * ow >= 8 && isa.is_available() {
            // 8 elements of slack for the vector rows' spare lanes.
            let n = channels * oh * ow;
            let mut maxima = vec![0i32; n + 8];
            let shape = ((row, plane), (oh, ow));
            if !super::x86::max_pool_narrow_planes(acc, channels, shape.0, shape.1, &mut maxima) {
                let mut vmax = [0i32; 16];
                for (c, mplane) in maxima[..n].chunks_exact_mut(oh * ow).enumerate() {
                    for (oy, mrow) in mplane.chunks_exact_mut(ow).enumerate() {
                        let r0 = &acc[c * plane + 2 * oy * row..][..2 * ow];
                        let r1 = &acc[c * plane + (2 * oy + 1) * row..][..2 * ow];
                        // Vertical max of the row pair, then the max of each column pair.
                        let v = &mut vmax[..2 * ow];
                        for ((v, &a), &b) in v.iter_mut().zip(r0).zip(r1) {
                            *v = a.max(b);
                        }
                        for (m, pair) in mrow.iter_mut().zip(v.chunks_exact(2)) {
                            *m = pair[0].max(pair[1]);
                        }
                    }
                }
            }
            super::x86::requant_channels(&maxima[..n], oh * ow, p, out);
            return Ok(());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    // The scalar definition.
    let at = |c: usize, y: usize, x: usize| match layout {
        AccLayout::Planes { row, plane } => acc[c * plane + y * row + x],
        AccLayout::Positions => acc[(y * w + x) * channels + c],
    };
    for c in 0..channels {
        let rq = p.requant_for(c);
        for oy in 0..oh {
            for ox in 0..ow {
                let (y, x) = (2 * oy, 2 * ox);
                let m =
                    at(c, y, x)
                        .max(at(c, y, x + 1))
                        .max(at(c, y + 1, x).max(at(c, y + 1, x + 1)));
                out[(c * oh + oy) * ow + ox] =
                    requantize(m, rq, p.zero_point, p.qmin, p.qmax) as u8;
            }
        }
    }
    Ok(())
}

/// One output row of a 2 x 2, stride-2 max pool on codes: `out[i] = max(a[2i], a[2i+1], b[2i], b[2i+1])` where
/// `a` and `b` are the two input rows (each at least `2 * out.len()` codes).
pub fn max_pool_2x2_row(a: &[u8], b: &[u8], out: &mut [u8]) -> Result<(), QuantError> {
    let need = 2 * out.len();
    if a.len() < need || b.len() < need {
        return Err(mismatch(
            "max_pool_2x2_row",
            format!(
                "input rows of {} and {} codes, need {need}",
                a.len(),
                b.len()
            ),
        ));
    }
    match super::selected_isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => super::x86::max_pool_2x2_row(a, b, out),
        _ => max_pool_2x2_row_reference(a, b, out),
    }
    Ok(())
}

/// Scalar definition of [`max_pool_2x2_row`] (checked lengths).
pub(crate) fn max_pool_2x2_row_reference(a: &[u8], b: &[u8], out: &mut [u8]) {
    for ((o, pa), pb) in out.iter_mut().zip(a.chunks_exact(2)).zip(b.chunks_exact(2)) {
        *o = pa[0].max(pa[1]).max(pb[0].max(pb[1]));
    }
}
