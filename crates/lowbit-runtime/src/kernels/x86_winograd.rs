//! AVX2 kernel of [`super::winograd`] (scheme and exactness argument there). Scratch (one padded channel-pair
//! plane at a time, the transformed tiles, per-channel requantization constants, output runs) is thread-local
//! and only grown. With `split` (a lone sample), the calling thread and a helper ([`crate::workers::join`])
//! share first the channel pairs of the input transform, then the tiles.
//!
//! The planes hold each padded row as its even columns, then its odd ones, so that the 4 columns of the input
//! tiles of 8 consecutive tiles are 4 plain loads (no shuffles per tile). The codes of 8 tiles leave as one
//! 16-byte row segment per output row (the two columns interleaved), stored whole where the 8 tiles are 8
//! consecutive tiles of one tile row, else run by run (tile rows shorter than 8, row ends, odd edges).
// Kernel names follow STYLE.md: `<op>__<isa>`.
#![allow(non_snake_case)]
use super::conv_planes::ChannelBlock;
use super::conv_planes::Residual;
use super::winograd::{WinogradConv, POSITIONS};
use super::x86::{pack_codes8, OutputStage8, RequantConsts8};
use super::x86_conv_planes::{
    channel_pair, deinterleave_u32__avx2, interleave_row__avx2, AddStage8,
};
use super::OutputParams;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Consecutive tiles of one tile row within a vector of 8, from lane `lo`: their first output row segment starts
/// at `pos` in a channel (output `(2 ty, 2 tx)`) and holds `cols` codes (2 per tile, one less at an odd right
/// edge); `below` whether their second output row exists.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    lo: usize,
    pos: usize,
    cols: usize,
    below: bool,
}

#[derive(Default)]
struct Scratch {
    v: Vec<u32>,
    requant: Vec<RequantConsts8>,
    runs: Vec<Run>,
    /// Per vector of 8 tiles, its runs' range in `runs`.
    vector_runs: Vec<(usize, usize)>,
}

/// One channel pair's padded plane and the widened rows it is built from ([`build_plane__avx2`]): per thread, as
/// the two halves of a split sample build their pairs on two threads.
#[derive(Default)]
struct PlaneScratch {
    plane: Vec<u32>,
    wide: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    static PLANE: RefCell<PlaneScratch> = RefCell::new(PlaneScratch::default());
}

/// The padded plane of one channel pair: `rows x row` elements, every position the input tiles of
/// 8-tile vectors read (rows `0..2 th + 2`, columns `0..2 half`), outside the input `pad_code`; each row is its
/// `half` even columns, then its `half` odd ones.
#[derive(Debug, Clone, Copy)]
struct Layout {
    rows: usize,
    half: usize,
    row: usize,
    /// Elements per `[position][pair]` row of the transformed tiles: every tile, rounded up to a vector, and one
    /// more vector for the last tile row's discarded lanes.
    tile_stride: usize,
}

impl Layout {
    fn new(conv: &WinogradConv) -> Self {
        let t = conv.tiles;
        // The last vector of a tile row starts at tile 8 (ceil(tw / 8) - 1) and reads phase columns up to 8 past
        // it, plus one.
        let half = 8 * t.tw.div_ceil(8) + 1;
        Self {
            rows: 2 * t.th + 2,
            half,
            row: 2 * half,
            tile_stride: t.len().div_ceil(8) * 8 + 8,
        }
    }
}

/// A buffer's base shared by the two tasks of a split sample, each writing other elements: the output codes (of
/// disjoint tiles) or the transformed inputs (of disjoint channel pairs).
#[derive(Clone, Copy)]
struct SharedPtr<T>(*mut T);
// SAFETY: the tasks holding copies write disjoint elements (see the splits in `winograd_conv_requant`) and the
// buffer it points into outlives them (`workers::join` returns before the caller's borrow ends).
unsafe impl<T> Send for SharedPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SharedPtr<T> {}
type OutPtr = SharedPtr<u8>;

/// Dispatch target of `winograd::winograd_conv_requant` on the AVX2 tiers (lengths and parameters checked there);
/// with `split`, the channel pairs and then the tiles in two halves on two threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn winograd_conv_requant(
    conv: &WinogradConv,
    x: &[u8],
    pad_code: u8,
    bias: &[i32],
    p: &OutputParams,
    residual: Option<Residual<'_>>,
    split: bool,
    out: &mut [u8],
) {
    let mut run = |s: &mut Scratch| {
        let g = conv.geometry();
        assert!(
            x.len() == g.c_in * g.h * g.w
                && bias.len() == g.c_out
                && out.len() == g.c_out * g.oh() * g.ow()
                && residual.is_none_or(|r| r.codes.len() == out.len())
        );
        let l = Layout::new(conv);
        let pairs = conv.pairs;
        fit(&mut s.v, POSITIONS * pairs * l.tile_stride);
        let v_len = s.v.len();
        // Pair by pair, so that each plane is transformed while it is still in L1.
        let prepare = |lo: usize, hi: usize, v: SharedPtr<u32>| {
            let build = |ps: &mut PlaneScratch| {
                fit(&mut ps.plane, l.rows * l.row);
                ps.wide.clear();
                ps.wide.resize(l.rows * l.row, 0);
                for i in lo..hi {
                    // SAFETY: AVX2 detected (dispatch); `x` holds the sample (asserted), `plane` and `wide` the
                    // layout's sizes, `v` points at `v_len` elements of which this task writes pairs `lo..hi`'s
                    // rows only.
                    unsafe {
                        build_plane__avx2(conv, &l, x, pad_code, i, &mut ps.wide, &mut ps.plane);
                        transform_input__avx2(conv, &l, i, &ps.plane, v.0, v_len);
                    }
                }
            };
            PLANE.with(|cell| match cell.try_borrow_mut() {
                Ok(mut ps) => build(&mut ps),
                Err(_) => build(&mut PlaneScratch::default()),
            })
        };
        let vp = SharedPtr(s.v.as_mut_ptr());
        if split && pairs >= 2 {
            crate::workers::join(
                || prepare(0, pairs / 2, vp),
                || prepare(pairs / 2, pairs, vp),
            );
        } else {
            prepare(0, pairs, vp);
        }
        output_runs(conv, &mut s.runs, &mut s.vector_runs);
        s.requant.clear();
        for c in 0..g.c_out {
            // SAFETY: AVX2 detected (dispatch); register arithmetic only.
            s.requant
                .push(unsafe { RequantConsts8::broadcast(p.requant_for(c)) });
        }
        let (v, requant) = (&s.v[..], &s.requant[..]);
        let (runs, vector_runs) = (&s.runs[..], &s.vector_runs[..]);
        let run_part = |blocks: &[ChannelBlock], lo: usize, hi: usize, out: OutPtr| {
            // SAFETY: AVX2 detected; `v` holds the transformed tiles in `l`'s layout, `runs` those of every vector,
            // `requant` and `bias` one per channel, `out` and the residual `c_out * oh * ow` codes (asserted). The
            // two halves of a split write the outputs of disjoint tiles or channels, so no byte is written twice.
            unsafe {
                run_blocks__avx2(
                    conv,
                    &l,
                    v,
                    (runs, vector_runs),
                    blocks,
                    lo..hi,
                    requant,
                    bias,
                    p,
                    residual,
                    out.0,
                )
            }
        };
        let out = SharedPtr(out.as_mut_ptr());
        // Half the tiles each, at a multiple of 16 (the micro-tiles take two vectors of 8); with too few tiles
        // for that (ResNet-20's 8x8 stage has 16), half the channel blocks each.
        let end = conv.tiles.len().div_ceil(8) * 8;
        let half = end / 32 * 16;
        let blocks = &conv.blocks[..];
        let (b1, b2) = blocks.split_at(blocks.len() / 2);
        if split && half > 0 {
            crate::workers::join(
                || run_part(blocks, 0, half, out),
                || run_part(blocks, half, end, out),
            );
        } else if split && !b1.is_empty() {
            crate::workers::join(|| run_part(b1, 0, end, out), || run_part(b2, 0, end, out));
        } else {
            run_part(blocks, 0, end, out);
        }
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => run(&mut s),
        Err(_) => run(&mut Scratch::default()),
    })
}

/// The output runs of every vector of 8 tiles (see [`Run`]).
fn output_runs(conv: &WinogradConv, runs: &mut Vec<Run>, vector_runs: &mut Vec<(usize, usize)>) {
    let g = conv.geometry();
    let (oh, ow) = (g.oh(), g.ow());
    let (n, tw) = (conv.tiles.len(), conv.tiles.tw);
    runs.clear();
    vector_runs.clear();
    for t0 in (0..n).step_by(8) {
        let first = runs.len();
        let mut lane = 0;
        while lane < 8 && t0 + lane < n {
            let (ty, tx) = ((t0 + lane) / tw, (t0 + lane) % tw);
            let len = (tw - tx).min(8 - lane).min(n - t0 - lane);
            runs.push(Run {
                lo: lane,
                pos: 2 * ty * ow + 2 * tx,
                cols: (2 * len).min(ow - 2 * tx),
                below: 2 * ty + 1 < oh,
            });
            lane += len;
        }
        vector_runs.push((first, runs.len()));
    }
}

fn fit(v: &mut Vec<u32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0);
    }
}

/// Writes channel pair `i` of `x` into `dst` as `l`'s padded plane: `x[2i] | x[2i + 1] << 16` (the odd last
/// channel alone, its partner 0), every other position `pad_code` in both halves; the padded rows widened into
/// `wide` first, then split into their even and odd columns (a row split right after it is written reloads its
/// stores at another alignment, which stalls store forwarding: measured 9% of the kernel's time). One pair at a
/// time, each transformed right after ([`transform_input__avx2`]) while its plane is in L1: building every
/// pair's plane first (37 KB on ResNet-20's 16-channel layers) measured 5% slower on the whole network.
///
/// # Safety
/// AVX2 must be available; `x` holds `c_in * h * w` codes, `i < pairs`, `wide` exactly `rows * row` elements
/// and `dst` at least `rows * row`.
#[target_feature(enable = "avx2")]
unsafe fn build_plane__avx2(
    conv: &WinogradConv,
    l: &Layout,
    x: &[u8],
    pad_code: u8,
    i: usize,
    wide: &mut [u32],
    dst: &mut [u32],
) {
    let g = conv.geometry();
    let (ph, pw) = g.padding;
    let plane_in = g.h * g.w;
    let (a, b, pad) = channel_pair(x, plane_in, i, pad_code);
    for (y, wide) in wide.chunks_exact_mut(l.row).enumerate() {
        let Some(iy) = y.checked_sub(ph).filter(|&iy| iy < g.h) else {
            wide.fill(pad);
            continue;
        };
        wide[..pw].fill(pad);
        let ra = &a[iy * g.w..(iy + 1) * g.w];
        let rb = b.map(|b| &b[iy * g.w..(iy + 1) * g.w]);
        // SAFETY: AVX2 available (this function's contract); `wide[pw..pw + w]` exists (`row = 2 half >= 2 tw +
        // 2 >= w + 2 pw`).
        unsafe { interleave_row__avx2(ra, rb, &mut wide[pw..pw + g.w]) };
        wide[pw + g.w..].fill(pad);
    }
    let plane = &mut dst[..l.rows * l.row];
    for (row, wide) in plane.chunks_exact_mut(l.row).zip(wide.chunks_exact(l.row)) {
        let (even, odd) = row.split_at_mut(l.half);
        // SAFETY: AVX2 available (this function's contract); slices bounds-checked by the callee.
        let done = unsafe { deinterleave_u32__avx2(wide, even, odd) };
        for j in done..l.half {
            even[j] = wide[2 * j];
            odd[j] = wide[2 * j + 1];
        }
    }
}

/// `B^T v` of one column (or row) of 4 vectors, in i16 lanes (exact: `|result| <= 2 * 510`).
///
/// # Safety
/// AVX2 must be available (register arithmetic only).
#[inline]
#[target_feature(enable = "avx2")]
fn bt4(v: [__m256i; 4]) -> [__m256i; 4] {
    [
        _mm256_sub_epi16(v[0], v[2]),
        _mm256_add_epi16(v[1], v[2]),
        _mm256_sub_epi16(v[2], v[1]),
        _mm256_sub_epi16(v[1], v[3]),
    ]
}

/// `V = B^T d B` of every tile of channel pair `i` into `v` (`[position][pair][tile]`, rows `tile_stride`
/// apart), 8 tiles of one tile row per step in i16 pair lanes. Each step stores 8 lanes; the lanes past a tile
/// row's end are overwritten by the next row's step (tiles run in increasing order) or land in the row's last
/// vector of slack: every store stays in pair `i`'s rows.
///
/// # Safety
/// AVX2 must be available; `plane` holds pair `i`'s `rows * row` elements built by [`build_plane__avx2`] and
/// `v` (`v_len` elements, checked against `16 * pairs * tile_stride`) writable in pair `i`'s rows, which no one
/// else writes meanwhile.
#[target_feature(enable = "avx2")]
unsafe fn transform_input__avx2(
    conv: &WinogradConv,
    l: &Layout,
    i: usize,
    plane: &[u32],
    v: *mut u32,
    v_len: usize,
) {
    let (pairs, t) = (conv.pairs, conv.tiles);
    assert!(
        i < pairs && plane.len() >= l.rows * l.row && v_len >= POSITIONS * pairs * l.tile_stride
    );
    let (src, dst) = (plane.as_ptr(), v);
    for ty in 0..t.th {
        for tx in (0..t.tw).step_by(8) {
            // SAFETY: rows `2 ty..2 ty + 4 <= rows` and phase columns `tx..tx + 9 <= half` (the layout covers
            // the last vector of every tile row); stores at `ty * tw + tx + 8 <= tile_stride` within each
            // `[position][pair]` row.
            unsafe {
                let mut d = [[_mm256_setzero_si256(); 4]; 4];
                for (r, dr) in d.iter_mut().enumerate() {
                    let e = src.add((2 * ty + r) * l.row + tx);
                    let o = e.add(l.half);
                    *dr = [
                        _mm256_loadu_si256(e as *const __m256i),
                        _mm256_loadu_si256(o as *const __m256i),
                        _mm256_loadu_si256(e.add(1) as *const __m256i),
                        _mm256_loadu_si256(o.add(1) as *const __m256i),
                    ];
                }
                // B^T d: each column of d; then each row of the result times B.
                let mut cols = [[_mm256_setzero_si256(); 4]; 4];
                for c in 0..4 {
                    let tc = bt4([d[0][c], d[1][c], d[2][c], d[3][c]]);
                    for r in 0..4 {
                        cols[r][c] = tc[r];
                    }
                }
                let at = ty * t.tw + tx;
                for (r, row) in cols.iter().enumerate() {
                    for (c, &e) in bt4(*row).iter().enumerate() {
                        let k = r * 4 + c;
                        let q = dst.add((k * pairs + i) * l.tile_stride + at);
                        _mm256_storeu_si256(q as *mut __m256i, e);
                    }
                }
            }
        }
    }
}

/// Tiles `range` (`start` a multiple of 16, `end` of 8, at most the tiles rounded up to 8) of `blocks` (some of
/// `conv`'s), channel-major like the planes kernel: 16 tiles (2 vectors) per micro-tile, a final single vector.
///
/// # Safety
/// AVX2 must be available; as [`winograd_conv_requant`]'s call: `v` holds the transformed tiles in `l`'s layout,
/// `runs` the output runs of every vector, `requant` and `bias` one per output channel, `out` (and the residual's
/// codes) `c_out * oh * ow` codes, those of the tiles in `range` and the channels of `blocks` written by no one
/// else meanwhile.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn run_blocks__avx2(
    conv: &WinogradConv,
    l: &Layout,
    v: &[u32],
    runs: (&[Run], &[(usize, usize)]),
    blocks: &[ChannelBlock],
    range: std::ops::Range<usize>,
    requant: &[RequantConsts8],
    bias: &[i32],
    p: &OutputParams,
    residual: Option<Residual<'_>>,
    out: *mut u8,
) {
    let g = conv.geometry();
    let cx = TileCx {
        v: v.as_ptr(),
        stride: l.tile_stride,
        pairs: conv.pairs,
        positions: g.oh() * g.ow(),
        ow: g.ow(),
        // SAFETY: AVX2 available (contract); register arithmetic only.
        stage: unsafe { OutputStage8::new(p) },
        // SAFETY: as above; the Add's parameters were validated by the entry point.
        add: residual.map(|r| (unsafe { AddStage8::new(r.quant) }, r.codes)),
        requant,
        bias,
        runs: runs.0,
        vector_runs: runs.1,
    };
    for b in blocks {
        let w = conv.weights[b.at..].as_ptr();
        let mut t0 = range.start;
        while t0 + 16 <= range.end {
            // SAFETY: this function's contract covers every block, tile and channel used by the micro-tile.
            unsafe {
                match b.len {
                    6 => cx.tile::<6, 2>(b.first, w, t0, out),
                    5 => cx.tile::<5, 2>(b.first, w, t0, out),
                    4 => cx.tile::<4, 2>(b.first, w, t0, out),
                    3 => cx.tile::<3, 2>(b.first, w, t0, out),
                    2 => cx.tile::<2, 2>(b.first, w, t0, out),
                    _ => cx.tile::<1, 2>(b.first, w, t0, out),
                }
            }
            t0 += 16;
        }
        if t0 < range.end {
            // SAFETY: as above.
            unsafe {
                match b.len {
                    6 => cx.tile::<6, 1>(b.first, w, t0, out),
                    5 => cx.tile::<5, 1>(b.first, w, t0, out),
                    4 => cx.tile::<4, 1>(b.first, w, t0, out),
                    3 => cx.tile::<3, 1>(b.first, w, t0, out),
                    2 => cx.tile::<2, 1>(b.first, w, t0, out),
                    _ => cx.tile::<1, 1>(b.first, w, t0, out),
                }
            }
        }
    }
}

/// What every micro-tile of one sample shares.
struct TileCx<'a> {
    v: *const u32,
    stride: usize,
    pairs: usize,
    positions: usize,
    ow: usize,
    stage: OutputStage8,
    add: Option<(AddStage8, &'a [u8])>,
    requant: &'a [RequantConsts8],
    bias: &'a [i32],
    runs: &'a [Run],
    vector_runs: &'a [(usize, usize)],
}

impl TileCx<'_> {
    /// Channels `first..first + OB` at the `8 V` tiles from `t0`: the 16 products `M` (see [`accumulate__avx2`]),
    /// then per channel and vector `A^T M A`, the exact division by 4, the bias and the output stage, and the
    /// codes stored by output row.
    ///
    /// # Safety
    /// AVX2 must be available; `w` points at the block's `16 * pairs * OB` weight pairs; the tiles' transformed
    /// inputs `v + (k * pairs + i) * stride + t0 + 0..8 V` lie in the buffer; channels `first..first + OB` exist
    /// in `requant`, `bias` and `out`, whose codes of these tiles no one else writes meanwhile.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2")]
    unsafe fn tile<const OB: usize, const V: usize>(
        &self,
        first: usize,
        w: *const u32,
        t0: usize,
        out: *mut u8,
    ) {
        // Not zeroed first (a 6 KB memset per micro-tile, measured 5% of the kernel's time): the accumulation
        // writes every element.
        let mut m = std::mem::MaybeUninit::<[[[__m256i; V]; OB]; POSITIONS]>::uninit();
        // SAFETY: the reads stay within the bounds this function's contract lists; `accumulate__avx2` writes all
        // of `m` (one `OB x V` block per position) before it is read.
        let m = unsafe {
            accumulate__avx2::<OB, V>(self.v, self.stride, self.pairs, t0, w, m.as_mut_ptr());
            m.assume_init()
        };
        for o in 0..OB {
            let c = first + o;
            let rq = &self.requant[c];
            let bias = _mm256_set1_epi32(self.bias[c]);
            for vi in 0..V {
                let at = |r: usize, s: usize| m[r * 4 + s][o][vi];
                // A^T M (2 x 4), then times A: Y[r][0] = T[r][0] + T[r][1] + T[r][2], Y[r][1] = T[r][1] - T[r][2]
                // - T[r][3]; wrapping i32 (module doc).
                let mut t = [[_mm256_setzero_si256(); 4]; 2];
                for s in 0..4 {
                    t[0][s] = _mm256_add_epi32(_mm256_add_epi32(at(0, s), at(1, s)), at(2, s));
                    t[1][s] = _mm256_sub_epi32(_mm256_sub_epi32(at(1, s), at(2, s)), at(3, s));
                }
                for (r, tr) in t.iter().enumerate() {
                    let y0 = _mm256_add_epi32(_mm256_add_epi32(tr[0], tr[1]), tr[2]);
                    let y1 = _mm256_sub_epi32(_mm256_sub_epi32(tr[1], tr[2]), tr[3]);
                    let acc = [
                        _mm256_add_epi32(_mm256_srai_epi32::<2>(y0), bias),
                        _mm256_add_epi32(_mm256_srai_epi32::<2>(y1), bias),
                    ];
                    // SAFETY: AVX2 available; channel `c` and these tiles' codes are this call's (contract).
                    unsafe { self.store_row(acc, rq, c, t0 / 8 + vi, r, out) };
                }
            }
        }
    }

    /// The output stage of output row `r` of the tiles of vector `vector`, channel `c`: the accumulators of their
    /// two columns `acc`, requantized, the Add when fused (its other codes gathered by run and split into the two
    /// columns), and the codes interleaved back into row order and stored by run.
    ///
    /// # Safety
    /// AVX2 must be available; `out` holds `c_out * oh * ow` codes, channel `c` exists, and no one else writes
    /// these tiles' codes meanwhile.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store_row(
        &self,
        acc: [__m256i; 2],
        rq: &RequantConsts8,
        c: usize,
        vector: usize,
        r: usize,
        out: *mut u8,
    ) {
        let (lo, hi) = self.vector_runs[vector];
        let runs = &self.runs[lo..hi];
        let base = c * self.positions + r * self.ow;
        let exists = |run: &Run| r == 0 || run.below;
        // SAFETY: AVX2 available (contract); register arithmetic only.
        let mut q = unsafe {
            [
                self.stage.codes_i32(acc[0], rq),
                self.stage.codes_i32(acc[1], rq),
            ]
        };
        let whole = match runs {
            [run] if run.cols == 16 && exists(run) => Some(base + run.pos),
            _ => None,
        };
        if let Some((add, codes)) = &self.add {
            let mut other = [0u8; 16];
            // A whole row segment loads straight from the codes (a copy then a 16-byte load would stall store
            // forwarding).
            let direct = whole.and_then(|at| codes.get(at..at + 16));
            for run in runs.iter().filter(|run| direct.is_none() && exists(run)) {
                let at = base + run.pos;
                let dst = &mut other[2 * run.lo..2 * run.lo + run.cols];
                // Whole runs of 8 or 4 tiles as one fixed-size copy (a variable one is a library call).
                match run.cols {
                    16 => dst.copy_from_slice(&codes[at..at + 16]),
                    8 => dst.copy_from_slice(&codes[at..at + 8]),
                    n => dst.copy_from_slice(&codes[at..at + n]),
                }
            }
            // SAFETY: AVX2 available (contract); `other` holds 16 bytes.
            unsafe {
                // Even bytes (first columns) to the low half, odd ones (second columns) to the high half.
                let split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
                let src = direct.unwrap_or(&other).as_ptr();
                let b = _mm_shuffle_epi8(_mm_loadu_si128(src as *const __m128i), split);
                q[0] = add.apply_i32(q[0], _mm256_cvtepu8_epi32(b));
                q[1] = add.apply_i32(q[1], _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(b)));
            }
        }
        // SAFETY: AVX2 available (contract); register arithmetic only.
        let row = unsafe {
            _mm_unpacklo_epi8(
                _mm_cvtsi64_si128(pack_codes8(q[0])),
                _mm_cvtsi64_si128(pack_codes8(q[1])),
            )
        };
        if let Some(at) = whole {
            // SAFETY: the run's 16 codes lie in channel `c`'s output row (contract).
            unsafe { _mm_storeu_si128(out.add(at) as *mut __m128i, row) };
            return;
        }
        let mut bytes = [0u8; 16];
        // SAFETY: a 16-byte store into `bytes`.
        unsafe { _mm_storeu_si128(bytes.as_mut_ptr() as *mut __m128i, row) };
        for run in runs.iter().filter(|run| exists(run)) {
            let (src, dst) = (
                bytes.as_ptr().wrapping_add(2 * run.lo),
                out.wrapping_add(base + run.pos),
            );
            // SAFETY: the run's `cols` codes lie in channel `c`'s output row (contract; `cols` stops at its end),
            // and `src` is within `bytes` for `cols` bytes (`2 lo + cols <= 16`).
            unsafe {
                match run.cols {
                    8 => std::ptr::copy_nonoverlapping(src, dst, 8),
                    n => std::ptr::copy_nonoverlapping(src, dst, n),
                }
            };
        }
    }
}

/// The 16 per-position GEMMs of [`TileCx::tile`]: `m[k][o][v] = sum_i vpmaddwd(V[k][i][t0 + 8 v..], (U[k][o][2i],
/// U[k][o][2i + 1]))`, one position at a time with its `OB x V` accumulators in registers.
///
/// # Safety
/// AVX2 must be available; `w` points at `16 * pairs * OB` weight pairs; every read `v + (k * pairs + i) * stride
/// + t0 + 0..8 V` is in bounds; `m` is writable (every element is written, none read).
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn accumulate__avx2<const OB: usize, const V: usize>(
    v: *const u32,
    stride: usize,
    pairs: usize,
    t0: usize,
    w: *const u32,
    m: *mut [[[__m256i; V]; OB]; POSITIONS],
) {
    // SAFETY: the reads stay within the bounds this function's contract lists.
    unsafe {
        let mut wp = w;
        for k in 0..POSITIONS {
            let mut acc = [[_mm256_setzero_si256(); V]; OB];
            let mut a = v.add(k * pairs * stride + t0);
            for _ in 0..pairs {
                let mut av = [_mm256_setzero_si256(); V];
                for (j, x) in av.iter_mut().enumerate() {
                    *x = _mm256_loadu_si256(a.add(8 * j) as *const __m256i);
                }
                a = a.add(stride);
                for row in acc.iter_mut() {
                    let wb = _mm256_set1_epi32(std::ptr::read_unaligned(wp as *const i32));
                    wp = wp.add(1);
                    for j in 0..V {
                        row[j] = _mm256_add_epi32(row[j], _mm256_madd_epi16(av[j], wb));
                    }
                }
            }
            (m as *mut [[__m256i; V]; OB]).add(k).write(acc);
        }
    }
}
