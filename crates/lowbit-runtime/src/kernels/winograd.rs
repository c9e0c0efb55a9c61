//! Exact integer Winograd F(2x2, 3x3) for stride-1, single-group 3x3 convolutions: 16 products per 2 x 2 output
//! tile and input channel instead of the direct convolution's 36, with the same codes as
//! [`super::conv_planes::reference::plane_conv_requant`] (the normative arithmetic) on every input.
//!
//! Arithmetic (Lavin and Gray 2016, "Fast Algorithms for Convolutional Neural Networks", with `G` scaled by 2 so
//! that every matrix is integer). Output tile `(ty, tx)` covers outputs `(2 ty + r, 2 tx + s)`, `r, s` in `0..2`;
//! its input tile `d[ic]` is the 4 x 4 padded input from row `2 ty`, column `2 tx` (positions outside the input,
//! including those past the last row or column of an odd output, hold `pad_code`). With
//!
//! ```text
//! B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]     V[ic] = B^T d[ic] B       |V| <= 4 * 255
//! 2G  = [[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]]                   U[c][ic] = 2G w[c][ic] 2G^T  |U| <= 9 * 128
//! A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]                                  M[c] = sum_ic U[c][ic] (.) V[ic]
//! Y[c] = A^T M[c] A = 4 * sum_{ic, ky, kx} w[c][ic][ky][kx] * xpad[ic][2 ty + r + ky][2 tx + s + kx]
//! ```
//!
//! `Y` is exactly four times the direct sum (the identity of F(2, 3) with `2G` on both sides), so
//! `acc = bias + (Y >> 2)` (wrapping) and the output stage (requantization, then the fused residual Add) is the
//! planes path's, code for code. Outputs past an odd edge are computed and discarded.
//!
//! Overflow: every step is a ring operation, so computing in wrapping `i32` yields `Y mod 2^32`; that is `Y`
//! itself whenever `|Y| <= 4 * c_in * 9 * 255 * 128 <= i32::MAX`, i.e. for `c_in` up to [`MAX_WINOGRAD_C_IN`]
//! (1827), whatever the intermediate `M` or `A^T M` do. `V` and `U` fit `i16` exactly (bounds above), so the AVX2 kernel's
//! `vpmaddwd` products (`<= 1020 * 1152`, pair sums `< 2^22`) are exact too. Past the bound the planner keeps the
//! direct kernel.
//!
//! AVX2 (`x86_winograd`): the input transform of 8 tiles of one tile row at a time in i16 channel-pair lanes
//! (plain loads from planes split into even and odd columns), stored `[16][pair][tile]`; then per block of at most
//! 6 output channels and 16 tiles, 16 small GEMMs (one per transform position) with the planes kernel's micro-tile
//! (broadcast weight pairs, `vpmaddwd` on 2 vectors of 8 tiles), the 16 results kept in an L1 buffer; then the
//! output transform, the shift, the bias and the output stage in 8 tile lanes, and each output row's codes of the
//! 8 tiles interleaved into a 16-byte row segment.
use super::conv_planes::{channel_blocks, ChannelBlock, Residual, MAX_TILE_CHANNELS};
use super::{check_len, mismatch, Isa, OutputParams};
use crate::error::QuantError;
use crate::kernels::depthwise::GroupedConvGeometry;
use crate::pack::{PackedWeights, Packing};

/// Largest input channel count for which `|Y| = 4 |sum|` provably fits an `i32` (module doc):
/// `floor((2^31 - 1) / (4 * 9 * 255 * 128)) = 1827` (128: the largest magnitude an `I8` weight code can hold).
pub const MAX_WINOGRAD_C_IN: usize = i32::MAX as usize / (4 * 9 * 255 * 128);

/// Transform positions per tile (4 x 4).
pub(crate) const POSITIONS: usize = 16;

/// Whether [`WinogradConv`] computes a convolution of geometry `g`: 3 x 3, stride 1, one group, and few enough
/// input channels for the overflow bound.
pub fn winograd_applies(g: &GroupedConvGeometry) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == (1, 1)
        && g.groups == 1
        && g.c_in >= 1
        && g.c_in <= MAX_WINOGRAD_C_IN
}

/// The tiles of one sample: `th x tw` tiles of 2 x 2 outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tiles {
    pub(crate) th: usize,
    pub(crate) tw: usize,
}

impl Tiles {
    fn new(g: &GroupedConvGeometry) -> Self {
        Self {
            th: g.oh().div_ceil(2),
            tw: g.ow().div_ceil(2),
        }
    }

    /// Tiles per sample.
    pub(crate) fn len(&self) -> usize {
        self.th * self.tw
    }
}

/// Int8 weights `[c_out][c_in][3][3]` transformed to `U = 2G w 2G^T` and laid out as [`super::conv_planes`]'s
/// channel blocks: each block `[position][channel pair][channel in block]` as i16 pairs `(U[c][2i], U[c][2i + 1])`
/// (the odd last channel paired with 0).
#[derive(Debug, Clone, PartialEq)]
pub struct WinogradConv {
    geo: GroupedConvGeometry,
    isa: Isa,
    pub(crate) tiles: Tiles,
    pub(crate) pairs: usize,
    pub(crate) blocks: Vec<ChannelBlock>,
    pub(crate) weights: Vec<u32>,
}

/// `2G g 2G^T` of one 3 x 3 kernel, row-major 4 x 4.
fn transform_kernel(g: &[i8]) -> [i16; POSITIONS] {
    const G2: [[i32; 3]; 4] = [[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]];
    let mut u = [0i16; POSITIONS];
    for a in 0..4 {
        for b in 0..4 {
            let mut s = 0i32;
            for ky in 0..3 {
                for kx in 0..3 {
                    s += G2[a][ky] * i32::from(g[ky * 3 + kx]) * G2[b][kx];
                }
            }
            // |s| <= 9 * 128 (module doc).
            u[a * 4 + b] = s as i16;
        }
    }
    u
}

impl WinogradConv {
    /// Transforms `weights` (`I8`, `c_out` rows of `c_in * 9` codes) for a convolution of geometry `geo`
    /// ([`winograd_applies`], valid: see [`GroupedConvGeometry::validate`]) on `isa` ([`Isa::capped`]).
    pub fn new(
        isa: Isa,
        geo: GroupedConvGeometry,
        weights: &PackedWeights,
    ) -> Result<Self, QuantError> {
        const CTX: &str = "WinogradConv";
        geo.validate()?;
        if !winograd_applies(&geo) {
            return Err(mismatch(
                CTX,
                format!(
                    "needs a 3x3 stride-1 single-group convolution with 1..={MAX_WINOGRAD_C_IN} input channels, \
                     found {}x{} stride {:?} groups {} c_in {}",
                    geo.kh, geo.kw, geo.stride, geo.groups, geo.c_in
                ),
            ));
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
        let pairs = geo.c_in.div_ceil(2);
        let per_channel = POSITIONS * pairs;
        let blocks = channel_blocks(geo.c_out, per_channel, MAX_TILE_CHANNELS);
        let mut packed = vec![0u32; geo.c_out * per_channel];
        let mut row = vec![0i8; k];
        let mut u = vec![[0i16; POSITIONS]; 2 * pairs];
        for b in &blocks {
            for j in 0..b.len {
                weights.unpack_row(b.first + j, &mut row);
                for (ic, ui) in u.iter_mut().enumerate() {
                    *ui = match row.get(ic * 9..(ic + 1) * 9) {
                        Some(g) => transform_kernel(g),
                        None => [0; POSITIONS],
                    };
                }
                for t in 0..POSITIONS {
                    for i in 0..pairs {
                        let lo = u[2 * i][t] as u16 as u32;
                        let hi = u[2 * i + 1][t] as u16 as u32;
                        packed[b.at + (t * pairs + i) * b.len + j] = lo | hi << 16;
                    }
                }
            }
        }
        Ok(Self {
            geo,
            isa: isa.capped(),
            tiles: Tiles::new(&geo),
            pairs,
            blocks,
            weights: packed,
        })
    }

    /// The geometry these weights were prepared for.
    pub fn geometry(&self) -> GroupedConvGeometry {
        self.geo
    }

    /// The tier [`winograd_conv_requant`] runs on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Multiplies the AVX2 kernel issues per sample in its transformed products, padding lanes included: 16 per
    /// tile, channel pair (2 products each) and output channel, tiles in vectors of 8.
    pub fn issued_macs(&self) -> usize {
        2 * self.pairs * POSITIONS * self.geo.c_out * self.tiles.len().div_ceil(8) * 8
    }

    /// For reports: `winograd F(2x2,3x3) i16 pairs (3 channel blocks)`.
    pub fn path(&self) -> String {
        format!(
            "winograd F(2x2,3x3) i16 pairs ({} channel blocks)",
            self.blocks.len()
        )
    }

    /// `U[c][ic]` at transform position `t`, read back from the pairs.
    pub(crate) fn u(&self, c: usize, ic: usize, t: usize) -> i32 {
        let b = self
            .blocks
            .iter()
            .find(|b| c < b.first + b.len)
            .unwrap_or(&self.blocks[0]);
        let pair = self.weights[b.at + (t * self.pairs + ic / 2) * b.len + (c - b.first)];
        i32::from((pair >> (16 * (ic % 2))) as u16 as i16)
    }
}

/// One sample: `out` (`[c_out][oh][ow]` codes, the planes path's codes) from `x` (`[c_in][h][w]` codes). `bias`
/// is the zero-point-corrected bias; `p.bias` is not used. Uses the tier the weights were prepared for. With
/// `split`, the AVX2 tiers run the two halves of the tiles as two rayon tasks (for a lone sample on a multi-core
/// machine; the codes are the same); the scalar path ignores it.
#[allow(clippy::too_many_arguments)]
pub fn winograd_conv_requant(
    conv: &WinogradConv,
    x: &[u8],
    pad_code: u8,
    bias: &[i32],
    p: &OutputParams,
    residual: Option<Residual<'_>>,
    split: bool,
    out: &mut [u8],
) -> Result<(), QuantError> {
    const CTX: &str = "winograd_conv_requant";
    let g = &conv.geo;
    super::conv_planes::check_sample_args(CTX, g, x, bias, p, residual.as_ref(), out)?;
    match conv.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => super::x86_winograd::winograd_conv_requant(
            conv, x, pad_code, bias, p, residual, split, out,
        ),
        _ => reference::winograd_conv_requant(conv, x, pad_code, bias, p, residual, out),
    }
    Ok(())
}

/// The scalar Winograd path (the portable tier). Inputs pre-validated by the public entry point.
pub mod reference {
    use super::{Residual, WinogradConv, POSITIONS};
    use crate::kernels::eltwise::reference::add_code;
    use crate::kernels::OutputParams;
    use crate::qparams::requantize;

    /// `B^T d B` of one 4 x 4 input tile, row-major.
    fn transform_input(d: &[[i32; 4]; 4]) -> [i32; POSITIONS] {
        let bt = |v: [i32; 4]| [v[0] - v[2], v[1] + v[2], v[2] - v[1], v[1] - v[3]];
        // Rows first (B^T d), then each row's columns ((B^T d) B).
        let mut t = [[0i32; 4]; 4];
        for c in 0..4 {
            let col = bt([d[0][c], d[1][c], d[2][c], d[3][c]]);
            for r in 0..4 {
                t[r][c] = col[r];
            }
        }
        let mut v = [0i32; POSITIONS];
        for r in 0..4 {
            v[r * 4..r * 4 + 4].copy_from_slice(&bt(t[r]));
        }
        v
    }

    /// The module doc's computation, one tile and channel at a time (wrapping `i32` throughout).
    #[allow(clippy::needless_range_loop)]
    pub fn winograd_conv_requant(
        conv: &WinogradConv,
        x: &[u8],
        pad_code: u8,
        bias: &[i32],
        p: &OutputParams,
        residual: Option<Residual<'_>>,
        out: &mut [u8],
    ) {
        let g = &conv.geo;
        let (oh, ow) = (g.oh(), g.ow());
        let (ph, pw) = g.padding;
        let tiles = conv.tiles;
        let pixel = |ic: usize, y: usize, xx: usize| -> i32 {
            match (y.checked_sub(ph), xx.checked_sub(pw)) {
                (Some(iy), Some(ix)) if iy < g.h && ix < g.w => {
                    i32::from(x[(ic * g.h + iy) * g.w + ix])
                }
                _ => i32::from(pad_code),
            }
        };
        // V of every tile and input channel: [tile][ic][position].
        let mut v = vec![[0i32; POSITIONS]; tiles.len() * g.c_in];
        for ty in 0..tiles.th {
            for tx in 0..tiles.tw {
                for ic in 0..g.c_in {
                    let mut d = [[0i32; 4]; 4];
                    for (r, row) in d.iter_mut().enumerate() {
                        for (s, e) in row.iter_mut().enumerate() {
                            *e = pixel(ic, 2 * ty + r, 2 * tx + s);
                        }
                    }
                    v[(ty * tiles.tw + tx) * g.c_in + ic] = transform_input(&d);
                }
            }
        }
        for c in 0..g.c_out {
            let u: Vec<[i32; POSITIONS]> = (0..g.c_in)
                .map(|ic| std::array::from_fn(|t| conv.u(c, ic, t)))
                .collect();
            let rq = p.requant_for(c);
            for ty in 0..tiles.th {
                for tx in 0..tiles.tw {
                    let vt = &v[(ty * tiles.tw + tx) * g.c_in..][..g.c_in];
                    let mut m = [0i32; POSITIONS];
                    for (ui, vi) in u.iter().zip(vt) {
                        for t in 0..POSITIONS {
                            m[t] = m[t].wrapping_add(ui[t].wrapping_mul(vi[t]));
                        }
                    }
                    for (r, s, y) in output_transform(&m) {
                        let (oy, ox) = (2 * ty + r, 2 * tx + s);
                        if oy >= oh || ox >= ow {
                            continue;
                        }
                        let acc = bias[c].wrapping_add(y >> 2);
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

    /// `A^T M A` (wrapping), as `(r, s, Y[r][s])`.
    fn output_transform(m: &[i32; POSITIONS]) -> [(usize, usize, i32); 4] {
        let at = |v: [i32; 4]| {
            [
                v[0].wrapping_add(v[1]).wrapping_add(v[2]),
                v[1].wrapping_sub(v[2]).wrapping_sub(v[3]),
            ]
        };
        // Columns first (A^T M: 2 x 4), then each of its two rows.
        let cols: [[i32; 2]; 4] =
            std::array::from_fn(|c| at([m[c], m[4 + c], m[8 + c], m[12 + c]]));
        let y0 = at([cols[0][0], cols[1][0], cols[2][0], cols[3][0]]);
        let y1 = at([cols[0][1], cols[1][1], cols[2][1], cols[3][1]]);
        [(0, 0, y0[0]), (0, 1, y0[1]), (1, 0, y1[0]), (1, 1, y1[1])]
    }
}
