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
//! AVX2 scheme: the sample is widened once into zero-point-padded i16 planes; for 8 adjacent output columns, one
//! register holds the 8 input pairs `(x[ox + kx], x[ox + kx + 1])` of a kernel-column pair (two loads and two
//! unpacks), and `vpmaddwd` with the broadcast weight pair `(w[kx], w[kx + 1])` adds both products into each
//! of up to 12 channel accumulators. An odd kernel width pairs its last column with a zero weight.
use super::{check_len, mismatch, reference, Isa, OutputParams};
use crate::error::QuantError;
use crate::pack::{PackedWeights, Packing};
use crate::qparams::Requant;

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

/// Int8 weights `[c_out][c_in][kh][kw]` prepared for [`direct_conv_acc`]: kernel-column pairs packed as
/// `(w[kx] as u16) | (w[kx + 1] as u16) << 16`, `[c_out][c_in][kh][kx pair]`, the odd last column paired with 0.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectConv {
    geo: ConvGeometry,
    pairs: Vec<i32>,
    isa: Isa,
}

impl DirectConv {
    /// Prepares `weights` (`I8`, `c_out` rows of `c_in * kh * kw` codes) for `isa` ([`Isa::capped`]).
    pub fn new(isa: Isa, geo: ConvGeometry, weights: &PackedWeights) -> Result<Self, QuantError> {
        const CTX: &str = "DirectConv";
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
            pairs,
            isa: isa.capped(),
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
}

/// One sample: `out[c][oy * ow + ox] = bias[c] + sum w * xpad` (module doc), `x` is `[c_in][h][w]` codes.
pub fn direct_conv_acc(
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
        g.c_out.checked_mul(g.oh() * g.ow()),
    )?;
    match conv.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => {
            super::x86::direct_conv(&g, &conv.pairs, x, pad_code, bias, out)
        }
        _ => direct_conv_reference(&g, &conv.pairs, x, pad_code, bias, out),
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
    let isa = super::selected_isa();
    for (c, (arow, orow)) in acc
        .chunks_exact(positions)
        .zip(out.chunks_exact_mut(positions))
        .enumerate()
    {
        let rq = if requant.len() == 1 { 0 } else { c };
        let p = OutputParams {
            bias: &[],
            requant: &requant[rq..rq + 1],
            zero_point,
            qmin,
            qmax,
        };
        super::check_output(CTX, 1, &p)?;
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni => super::x86::requant_row(arow, &p, orow),
            _ => reference::requant_u8(arow, positions, &p, orow),
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
