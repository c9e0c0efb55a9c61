//! x86_64 kernels: AVX2 for every packing, AVX-512 VNNI for int8 weights, hardware popcount for binary x binary.
//!
//! AVX2 int8 weights take one of two exact paths. Prepared weights whose K indices can be paired so that no pair
//! can saturate an i16 (see [`super::pairs`]: always for codes within +-64, after re-pairing for most trained
//! layers) run `gemm_pairs__avx2`: activations gathered into pair order by byte shuffles, weights kept at int8
//! width in `[k / 4][16][4]` panels, `vpmaddubsw` + `vpmaddwd` by ones, half the multiply instructions per
//! product of the widened path. Everything else runs `gemm_u8i8_i32__avx2`, where `vpmaddubsw` is NOT used
//! because its i16 pair sums could saturate (255 * 127 * 2 > 32767). Activations are widened u8 -> i16 (`vpmovzxbw`, exact) once per K block and L2 block
//! of `MC` rows. Weight codes are widened i8 -> i16 into panels of `KC x 16` codes laid out as
//! `[k pair][column][2]`: once per model for int8 (`prepack_panels`, held by `PrepackedWeights`), or per call and
//! K block from the packed bytes (the plain `gemm_acc` API). Prepared sub-8-bit weights take another path
//! (`gemm_subbyte_i32__avx2`): 8-column panels kept at their storage width (`prepack_subbyte`), expanded in
//! registers by shift and mask and multiplied with `vpmaddubsw`, which cannot saturate for codes of at most 4 bits. The micro-kernel broadcasts one
//! activation pair per row (`vpbroadcastd`) and multiplies it with 8 weight pairs (`vpmaddwd`, exact: two
//! i16 x i16 products summed into i32), adding into a 6 x 16 tile of i32 accumulators held in 12 ymm registers.
//! Batch 1 on prepacked panels runs a GEMV (`gemv_u8i8_i32__avx2`) over 64 columns at a time instead of a 6-row
//! tile, reading a second copy of the panels kept at int8 width (half the L2 traffic; `vpmovsxbw` widens them). Accumulation is wrapping, like the reference. The output stage (`requant_u8__avx2`, bit-exact with
//! [`super::reference::requant_u8`]) runs on each finished row block while it is still in cache. Scratch buffers
//! are thread-local and reused across calls.
//!
//! (Over 800 lines on purpose: the AVX2/VNNI/popcount GEMMs share private scratch, prepacking and output-stage
//! helpers whose `target_feature` safety contracts are easiest to audit in one module; graph-op kernels live in
//! the `x86_*.rs` siblings.)
// Kernel names follow STYLE.md: `<op>__<isa>` (double underscore separates the ISA, as in XNNPACK).
#![allow(non_snake_case)]
use super::conv::{AccLayout, ConvAcc};
use super::pairs::{self, PairPlan};
use super::{Isa, OutputParams};
use crate::pack::{PackedWeights, Packing};
use crate::qparams::{requantize, Requant};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Rows of `a` per micro-tile.
const MR: usize = 6;
/// Output columns per micro-tile (two ymm of 8 x i32).
const NR: usize = 16;
/// K per block: a 6-row A slice is 6 x 256 x 2 = 3 KiB and a weight panel 256 x 16 x 2 = 8 KiB, both L1-resident.
/// Multiple of 16 so block starts are byte-aligned in every packing.
const KC: usize = 256;

/// Below this many multiply-accumulates (`m * n * k`) one thread does the whole GEMM. Measured on this Zen3
/// (2 cores): a rayon split of 256x64x10 (164K MACs) was slower than one thread, 256x784x64 (12.8M MACs) gained
/// about 1.6x with two threads; 2M MACs (~60 us single-threaded) is past the break-even point of ~15 us
/// rayon overhead with margin.
const PAR_MIN_MACS: usize = 2_000_000;

/// Codes of each packed byte, decoded (normative bit order of [`crate::pack`]).
const fn build_lut<const PER: usize>(packing: Packing) -> [[i8; PER]; 256] {
    let mut lut = [[0i8; PER]; 256];
    let mut b = 0;
    while b < 256 {
        let mut j = 0;
        while j < PER {
            let byte = b as u8;
            lut[b][j] = match packing {
                Packing::I8 => byte as i8,
                Packing::I4x2 => ((byte >> (4 * j)) << 4) as i8 >> 4,
                Packing::I2x4 => ((byte >> (2 * j)) << 6) as i8 >> 6,
                Packing::B1x8 => {
                    if (byte >> j) & 1 == 1 {
                        1
                    } else {
                        -1
                    }
                }
            };
            j += 1;
        }
        b += 1;
    }
    lut
}

static LUT4: [[i8; 2]; 256] = build_lut::<2>(Packing::I4x2);
static LUT2: [[i8; 4]; 256] = build_lut::<4>(Packing::I2x4);
static LUT1: [[i8; 8]; 256] = build_lut::<8>(Packing::B1x8);

fn decode_bytes<const PER: usize>(lut: &[[i8; PER]; 256], src: &[u8], kc: usize, dst: &mut [i8]) {
    let full = kc / PER;
    for (d, &b) in dst[..full * PER].chunks_exact_mut(PER).zip(src) {
        d.copy_from_slice(&lut[b as usize]);
    }
    let rem = kc % PER;
    if rem > 0 {
        dst[full * PER..kc].copy_from_slice(&lut[src[full] as usize][..rem]);
    }
}

/// Decodes codes `k0..k0 + kc` of weight row `j` into `dst[..kc]`; `k0` is a multiple of 8.
fn decode_segment(w: &PackedWeights, j: usize, k0: usize, kc: usize, dst: &mut [i8]) {
    let row = w.row(j);
    match w.packing {
        Packing::I8 => {
            for (d, &b) in dst[..kc].iter_mut().zip(&row[k0..k0 + kc]) {
                *d = b as i8;
            }
        }
        Packing::I4x2 => decode_bytes(&LUT4, &row[k0 / 2..], kc, dst),
        Packing::I2x4 => decode_bytes(&LUT2, &row[k0 / 4..], kc, dst),
        Packing::B1x8 => decode_bytes(&LUT1, &row[k0 / 8..], kc, dst),
    }
}

/// Per-thread scratch: widened activations, decoded weight codes, one K block of i16 weight panels, and the
/// accumulators of a requantized row block. Kept in a thread-local and only grown, so a steady stream of calls
/// (batch-1 inference in particular) allocates nothing.
#[derive(Default)]
struct Scratch {
    a16: Vec<i16>,
    wtmp: Vec<i8>,
    bblock: Vec<i16>,
    acc: Vec<i32>,
    /// Zero-padded activation rows for the sub-byte kernel.
    apad: Vec<u8>,
    /// [`direct_conv_quads`]: the zero-point-padded planes, ...
    quad_planes: super::PaddedPlanes,
    /// ... the built quads of one 16-position block (64 bytes per quad) ...
    quad_panel: Vec<u8>,
    /// ... and the caller's bias plus the flips' fix, per channel.
    quad_bias: Vec<i32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch (a fresh one if it is already borrowed, which no caller does today).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// Codes of `w` in panels of [`NR`] columns, `[panel][k16 / 2][NR][2]` with `k16 = round_up(k, 16)`, zero padded in
/// both directions, each code converted to `T`. The K block starting at `k0` of panel `p` begins at
/// `p * k16 * NR + k0 * NR`.
fn prepack_pair_panels<T: Copy + Default + From<i8>>(w: &PackedWeights) -> Vec<T> {
    let (n, k) = (w.rows, w.cols);
    let k16 = k.div_ceil(16) * 16;
    let mut panels = vec![T::default(); n.div_ceil(NR) * k16 * NR];
    let mut row = vec![0i8; k];
    for j in 0..n {
        w.unpack_row(j, &mut row);
        let base = (j / NR) * k16 * NR + (j % NR) * 2;
        // Pair `kk / 2` of column j sits 2 NR codes after the previous one.
        let mut at = base;
        let mut pairs = row.chunks_exact(2);
        for pair in &mut pairs {
            panels[at] = T::from(pair[0]);
            panels[at + 1] = T::from(pair[1]);
            at += 2 * NR;
        }
        if let [q] = pairs.remainder() {
            panels[at] = T::from(*q);
        }
    }
    panels
}

/// Int8-tier weight layout prepared once per model: every code widened to i16 ([`prepack_pair_panels`]), exactly
/// the layout [`pack_panel__avx2`] builds per call and K block.
pub(crate) fn prepack_panels(w: &PackedWeights) -> Vec<i16> {
    prepack_pair_panels(w)
}

/// [`prepack_panels`] at int8 width (same order): the batch-1 GEMV streams the whole matrix once per call, from L2
/// for any real layer, so half the bytes is nearly half the time; it widens each 16-code row with `vpmovsxbw` on
/// the way in.
pub(crate) fn prepack_panels_i8(w: &PackedWeights) -> Vec<i8> {
    prepack_pair_panels(w)
}

/// Widens `rows x kc` activations starting at column `k0` into `dst` (`rows` rows of `kc16` i16, zero padded).
///
/// # Safety
/// AVX2 must be available; `a` holds `rows` rows of `k >= k0 + kc` bytes; `dst.len() >= rows * kc16`.
#[target_feature(enable = "avx2")]
unsafe fn widen_a__avx2(
    a: &[u8],
    k: usize,
    rows: usize,
    k0: usize,
    kc: usize,
    kc16: usize,
    dst: &mut [i16],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        for r in 0..rows {
            let src = &a[r * k + k0..r * k + k0 + kc];
            let d = &mut dst[r * kc16..(r + 1) * kc16];
            let mut t = 0;
            while t + 16 <= kc {
                // SAFETY: t + 16 <= kc = src.len() and kc <= kc16 = d.len(), so both 16-element accesses are in bounds.
                let v = _mm_loadu_si128(src.as_ptr().add(t) as *const __m128i);
                _mm256_storeu_si256(
                    d.as_mut_ptr().add(t) as *mut __m256i,
                    _mm256_cvtepu8_epi16(v),
                );
                t += 16;
            }
            for (dd, &s) in d[t..kc].iter_mut().zip(&src[t..]) {
                *dd = s as i16;
            }
            d[kc..].fill(0);
        }
    }
}

/// Builds the i16 weight panel `[kc16 / 2][NR][2]` at `panel` for columns `j0..j0 + nc` and codes `k0..k0 + kc`,
/// zero padded; `wtmp` is scratch for the decoded codes.
///
/// # Safety
/// AVX2 must be available; `j0 + nc <= w.rows`, `nc <= NR`, `k0 + kc <= w.cols`, `kc16 = round_up(kc, 16) <= KC`,
/// `wtmp` holds `NR * kc16` codes and `panel` is writable for `NR * kc16` i16.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn pack_panel__avx2(
    w: &PackedWeights,
    j0: usize,
    nc: usize,
    k0: usize,
    kc: usize,
    kc16: usize,
    wtmp: &mut [i8],
    panel: *mut i16,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let wtmp = &mut wtmp[..NR * kc16];
        for c in 0..NR {
            let d = &mut wtmp[c * kc16..(c + 1) * kc16];
            if c < nc {
                decode_segment(w, j0 + c, k0, kc, d);
                d[kc..].fill(0);
            } else {
                d.fill(0);
            }
        }
        let src = wtmp.as_ptr();
        for kb in (0..kc16).step_by(16) {
            for half in 0..2 {
                // Row c of this 8 x 8 block: 8 code pairs (k = kb..kb+16) of column half*8 + c, as i16 pairs.
                let mut r = [_mm256_setzero_si256(); 8];
                for (c, rc) in r.iter_mut().enumerate() {
                    // SAFETY: (half*8 + c) * kc16 + kb + 16 <= NR * kc16 = wtmp.len().
                    let v = _mm_loadu_si128(src.add((half * 8 + c) * kc16 + kb) as *const __m128i);
                    *rc = _mm256_cvtepi8_epi16(v);
                }
                // 8 x 8 transpose of 32-bit pairs: afterwards o[p] holds pair p of the 8 columns.
                let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
                let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
                let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
                let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
                let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
                let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
                let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
                let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
                let u0 = _mm256_unpacklo_epi64(t0, t2);
                let u1 = _mm256_unpackhi_epi64(t0, t2);
                let u2 = _mm256_unpacklo_epi64(t1, t3);
                let u3 = _mm256_unpackhi_epi64(t1, t3);
                let u4 = _mm256_unpacklo_epi64(t4, t6);
                let u5 = _mm256_unpackhi_epi64(t4, t6);
                let u6 = _mm256_unpacklo_epi64(t5, t7);
                let u7 = _mm256_unpackhi_epi64(t5, t7);
                let o = [
                    _mm256_permute2x128_si256::<0x20>(u0, u4),
                    _mm256_permute2x128_si256::<0x20>(u1, u5),
                    _mm256_permute2x128_si256::<0x20>(u2, u6),
                    _mm256_permute2x128_si256::<0x20>(u3, u7),
                    _mm256_permute2x128_si256::<0x31>(u0, u4),
                    _mm256_permute2x128_si256::<0x31>(u1, u5),
                    _mm256_permute2x128_si256::<0x31>(u2, u6),
                    _mm256_permute2x128_si256::<0x31>(u3, u7),
                ];
                for (p, op) in o.iter().enumerate() {
                    // SAFETY: pair index kb/2 + p < kc16/2, so the 16 i16 written end at most at kc16 * NR.
                    let dst = panel.add(((kb / 2 + p) * NR + half * 8) * 2);
                    _mm256_storeu_si256(dst as *mut __m256i, *op);
                }
            }
        }
    }
}

/// 6 x 16 micro-kernel: `c[r][col] += sum_p a_r[2p..2p+2] . b[p][col][0..2]` over `kp` pairs (wrapping i32).
///
/// # Safety
/// AVX2 must be available; `a` points at 6 rows of at least `2 * kp` i16 spaced `lda` apart; `b` at `kp * 32` i16;
/// `c` at 6 rows of 16 i32 spaced `ldc` apart, all readable and writable.
#[target_feature(enable = "avx2")]
unsafe fn ukernel_6x16__avx2(
    kp: usize,
    a: *const i16,
    lda: usize,
    b: *const i16,
    c: *mut i32,
    ldc: usize,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let mut acc = [_mm256_setzero_si256(); 2 * MR];
        for p in 0..kp {
            let b0 = _mm256_loadu_si256(b.add(p * 32) as *const __m256i);
            let b1 = _mm256_loadu_si256(b.add(p * 32 + 16) as *const __m256i);
            for r in 0..MR {
                let pair = std::ptr::read_unaligned(a.add(r * lda + 2 * p) as *const i32);
                let av = _mm256_set1_epi32(pair);
                acc[2 * r] = _mm256_add_epi32(acc[2 * r], _mm256_madd_epi16(av, b0));
                acc[2 * r + 1] = _mm256_add_epi32(acc[2 * r + 1], _mm256_madd_epi16(av, b1));
            }
        }
        for r in 0..MR {
            let c0 = c.add(r * ldc) as *mut __m256i;
            let c1 = c.add(r * ldc + 8) as *mut __m256i;
            _mm256_storeu_si256(c0, _mm256_add_epi32(_mm256_loadu_si256(c0), acc[2 * r]));
            _mm256_storeu_si256(c1, _mm256_add_epi32(_mm256_loadu_si256(c1), acc[2 * r + 1]));
        }
    }
}

/// Runs a 6 x 16 micro-kernel `kern(c, ldc)` for the tile at rows `r0..r0 + mr`, columns `j0..j0 + nc` of `out`
/// (`n` columns): in place when the tile is full, otherwise into `tile` (zeroed) and only the valid `mr x nc`
/// results are added, so the kernel never writes past `out`.
///
/// # Safety
/// `kern` adds at most 6 rows of 16 i32 at `c`, spaced `ldc` apart; `r0 + mr` rows and `j0 + nc` columns exist.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn run_tile(
    out: &mut [i32],
    n: usize,
    r0: usize,
    j0: usize,
    mr: usize,
    nc: usize,
    tile: &mut [i32; MR * NR],
    kern: impl FnOnce(*mut i32, usize),
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        if mr == MR && nc == NR {
            kern(out.as_mut_ptr().add(r0 * n + j0), n);
        } else {
            tile.fill(0);
            kern(tile.as_mut_ptr(), NR);
            for r in 0..mr {
                let o = &mut out[(r0 + r) * n + j0..(r0 + r) * n + j0 + nc];
                for (x, t) in o.iter_mut().zip(&tile[r * NR..]) {
                    *x = x.wrapping_add(*t);
                }
            }
        }
    }
}

/// The batch-1 paths' outer loop: `f(p, g, tile)` fills `tile` with panels `p..p + g` (`g <= 4`, 64 columns per
/// pass over the activations) and their valid columns are added into `out`.
fn gemv_groups(n: usize, out: &mut [i32], mut f: impl FnMut(usize, usize, &mut [i32; 4 * NR])) {
    let np = n.div_ceil(NR);
    let mut tile = [0i32; 4 * NR];
    let mut p = 0;
    while p < np {
        let g = (np - p).min(4);
        f(p, g, &mut tile);
        let j0 = p * NR;
        let cols = (g * NR).min(n - j0);
        for (o, &t) in out[j0..j0 + cols].iter_mut().zip(&tile) {
            *o = o.wrapping_add(t);
        }
        p += g;
    }
}

/// Rows of `a` per L2 block: 240 x 256 x 2 bytes = 120 KiB of widened activations stay in the 512 KiB L2 while
/// every weight panel of the K block streams past them. Multiple of [`MR`].
const MC: usize = 240;

/// `out = bias + a . w^T` for `rows` rows, single-threaded. `panels` is [`prepack_panels`] of `w` when the caller
/// has it; otherwise each K block's panels are decoded from `w` into scratch once per call.
///
/// # Safety
/// AVX2 must be available; shapes checked by the entry point (`a`: rows x k, `out`: rows x n, `bias`: n);
/// `panels`, if given, is `prepack_panels(w)`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn gemm_u8i8_i32__avx2(
    a: &[u8],
    rows: usize,
    k: usize,
    w: &PackedWeights,
    panels: Option<&[i16]>,
    bias: &[i32],
    out: &mut [i32],
    s: &mut Scratch,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let n = w.rows;
        for orow in out.chunks_exact_mut(n) {
            orow.copy_from_slice(bias);
        }
        if rows == 0 || k == 0 {
            return;
        }
        let np = n.div_ceil(NR);
        let k16 = k.div_ceil(16) * 16;
        grow(&mut s.a16, rows.min(MC).div_ceil(MR) * MR * KC);
        if panels.is_none() {
            grow(&mut s.wtmp, NR * KC);
            grow(&mut s.bblock, np * NR * KC);
        }
        let mut tile = [0i32; MR * NR];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let kc16 = kc.div_ceil(16) * 16;
            let kp = kc16 / 2;
            let (bbase, pstride) = match panels {
                // SAFETY: the prepacked buffer holds np * k16 * NR i16 and k0 * NR < k16 * NR.
                Some(pn) => (pn.as_ptr().add(k0 * NR), k16 * NR),
                None => {
                    for p in 0..np {
                        let j0 = p * NR;
                        // SAFETY: bblock holds np * NR * KC >= (p + 1) * kc16 * NR i16.
                        let dst = s.bblock.as_mut_ptr().add(p * kc16 * NR);
                        pack_panel__avx2(w, j0, NR.min(n - j0), k0, kc, kc16, &mut s.wtmp, dst);
                    }
                    (s.bblock.as_ptr(), kc16 * NR)
                }
            };
            for ib in (0..rows).step_by(MC) {
                let mc = MC.min(rows - ib);
                widen_a__avx2(&a[ib * k..], k, mc, k0, kc, kc16, &mut s.a16);
                for p in 0..np {
                    let j0 = p * NR;
                    let nc = NR.min(n - j0);
                    let bp = bbase.add(p * pstride);
                    for i0 in (0..mc).step_by(MR) {
                        let mr = MR.min(mc - i0);
                        // SAFETY: a16 holds round_up(mc, MR) rows of kc16, so rows i0..i0+6 exist (padding rows are
                        // stale and their results are discarded below); the panel holds kp * 32 i16 from bp.
                        let ap = s.a16.as_ptr().add(i0 * kc16);
                        run_tile(out, n, ib + i0, j0, mr, nc, &mut tile, |c, ldc| {
                            ukernel_6x16__avx2(kp, ap, kc16, bp, c, ldc)
                        });
                    }
                }
            }
        }
    }
}

/// `G` panels of one activation row: `tile[q * 16 + c] = sum_t a16[2t..2t+2] . panel_q[t][c][0..2]` (wrapping).
/// One broadcast activation pair feeds `2 G` `vpmaddwd`, so for `G = 4` (64 columns) the loop is bound by the
/// multiplier ports, not by loads.
///
/// # Safety
/// AVX2 must be available; `a16` points at `2 kp` i16; panel `q < G` starts at `b + q * pstride` and holds `kp * 32`
/// i8 codes; `G <= 4`.
#[target_feature(enable = "avx2")]
unsafe fn gemv_panels__avx2<const G: usize>(
    kp: usize,
    a16: *const i16,
    b: *const i8,
    pstride: usize,
    tile: &mut [i32; 4 * NR],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let mut acc = [_mm256_setzero_si256(); 8];
        for t in 0..kp {
            let av = _mm256_set1_epi32(std::ptr::read_unaligned(a16.add(2 * t) as *const i32));
            for q in 0..G {
                let bq = b.add(q * pstride + t * 32);
                let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bq as *const __m128i));
                let b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bq.add(16) as *const __m128i));
                acc[2 * q] = _mm256_add_epi32(acc[2 * q], _mm256_madd_epi16(av, b0));
                acc[2 * q + 1] = _mm256_add_epi32(acc[2 * q + 1], _mm256_madd_epi16(av, b1));
            }
        }
        for (q, pair) in acc.chunks_exact(2).take(G).enumerate() {
            _mm256_storeu_si256(tile.as_mut_ptr().add(q * NR) as *mut __m256i, pair[0]);
            _mm256_storeu_si256(tile.as_mut_ptr().add(q * NR + 8) as *mut __m256i, pair[1]);
        }
    }
}

/// Batch-1 path (`m = 1`) on prepacked int8 panels: `out = bias + w . a`. No 6-row tile, so no wasted rows, and
/// no per-call weight decoding.
///
/// # Safety
/// AVX2 must be available; `a` holds `k` codes, `bias` and `out` `w.rows`; `panels` is `prepack_panels_i8(w)`.
#[target_feature(enable = "avx2")]
unsafe fn gemv_u8i8_i32__avx2(
    a: &[u8],
    k: usize,
    n: usize,
    panels: &[i8],
    bias: &[i32],
    out: &mut [i32],
    s: &mut Scratch,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        if k == 0 {
            out.copy_from_slice(bias);
            return;
        }
        let k16 = k.div_ceil(16) * 16;
        grow(&mut s.a16, k16);
        widen_a__avx2(a, k, 1, 0, k, k16, &mut s.a16);
        let pstride = k16 * NR;
        let kp = k16 / 2;
        out.copy_from_slice(bias);
        let ap = s.a16.as_ptr();
        gemv_groups(n, out, |p, g, tile| {
            // SAFETY: panels p..p+g exist (each pstride i8), a16 holds k16 i16.
            let b = panels.as_ptr().add(p * pstride);
            match g {
                4 => gemv_panels__avx2::<4>(kp, ap, b, pstride, tile),
                3 => gemv_panels__avx2::<3>(kp, ap, b, pstride, tile),
                2 => gemv_panels__avx2::<2>(kp, ap, b, pstride, tile),
                _ => gemv_panels__avx2::<1>(kp, ap, b, pstride, tile),
            }
        });
    }
}

/// K positions per block of the pair kernels: a 6-row activation slice is 6 KiB and a 16-column weight panel
/// 16 KiB, both L1-resident. Multiple of 4.
const KCQ: usize = 1024;

/// Int8 weights re-ordered for the pair kernels: panels of [`NR`] columns, `[panel][kq / 4][NR][4]` i8 with
/// `kq = plan.len()`, each position's effective code ([`PairPlan::code_at`]: negated where flipped, zero for
/// zero positions) and zero for columns past `n`. The K block starting at position `t0` (a multiple of 4) of panel
/// `p` begins at `p * kq * NR + t0 * NR`.
pub(crate) fn prepack_pairs(w: &PackedWeights, plan: &PairPlan) -> Vec<i8> {
    let (n, k) = (w.rows, w.cols);
    let kq = plan.len();
    let mut panels = vec![0i8; n.div_ceil(NR) * kq * NR];
    let mut row = vec![0i8; k];
    for j in 0..n {
        w.unpack_row(j, &mut row);
        let base = (j / NR) * kq * NR + (j % NR) * 4;
        for t in 0..kq {
            panels[base + (t / 4) * NR * 4 + t % 4] = plan.code_at(&row, t);
        }
    }
    panels
}

/// Gathers one activation row into plan order at `dst`: each 16-byte chunk is one `vpshufb` and one `vpxor` (two
/// chunks per ymm), then the appended indices are copied. `a` starts at the row and may run past its `k` bytes
/// (the next rows of a matrix): chunks are loaded straight from it while 16 bytes are there, which the masks never
/// read past `k`, and the last chunk of the last row goes through a zero-padded copy. Chunk stores may run up to
/// 16 bytes past the chunks' end; the appended indices and zero padding are written after them.
///
/// # Safety
/// AVX2 must be available; `a.len() >= plan.k()`; `dst` is writable for `plan.len() + 16` bytes.
#[target_feature(enable = "avx2")]
unsafe fn gather_row__avx2(plan: &PairPlan, a: &[u8], dst: *mut u8) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        const C: usize = pairs::CHUNK;
        let chunks = plan.chunks();
        let direct = a.len() / C;
        let (shuffle, xor) = plan.masks();
        let (sp, xp) = (shuffle.as_ptr(), xor.as_ptr());
        let mut c = 0;
        while c + 2 <= chunks.min(direct) {
            // SAFETY: 32 bytes of `a` from 16c exist; the masks hold (chunks + 1) * 16 bytes; the store ends at most
            // 16 bytes past the chunks.
            let x = _mm256_loadu_si256(a.as_ptr().add(C * c) as *const __m256i);
            let m = _mm256_loadu_si256(sp.add(C * c) as *const __m256i);
            let f = _mm256_loadu_si256(xp.add(C * c) as *const __m256i);
            let y = _mm256_xor_si256(_mm256_shuffle_epi8(x, m), f);
            _mm256_storeu_si256(dst.add(C * c) as *mut __m256i, y);
            c += 2;
        }
        while c < chunks {
            let mut tmp = [0u8; C];
            let src = if c < direct {
                a.as_ptr().add(C * c)
            } else {
                // Byte loop, not a memcpy call: at most 15 bytes, once per matrix.
                for (d, &x) in tmp.iter_mut().zip(&a[C * c..]) {
                    *d = x;
                }
                tmp.as_ptr()
            };
            let x = _mm_loadu_si128(src as *const __m128i);
            let m = _mm_loadu_si128(sp.add(C * c) as *const __m128i);
            let f = _mm_loadu_si128(xp.add(C * c) as *const __m128i);
            let y = _mm_xor_si128(_mm_shuffle_epi8(x, m), f);
            _mm_storeu_si128(dst.add(C * c) as *mut __m128i, y);
            c += 1;
        }
        let mut t = plan.main_len();
        for &i in plan.extra() {
            *dst.add(t) = a[i as usize];
            *dst.add(t + 1) = 0;
            t += 2;
        }
        for i in t..plan.len() {
            *dst.add(i) = 0;
        }
    }
}

/// `vpmaddubsw` then `vpmaddwd` by ones: four u8 x i8 products per i32 lane, exact because the plan made every
/// byte pair safe (no i16 saturation).
///
/// # Safety
/// AVX2 must be available (callers are `#[target_feature(enable = "avx2")]` kernels it is inlined into).
#[inline(always)]
unsafe fn quad_dot(av: __m256i, b: __m256i, ones: __m256i) -> __m256i {
    // SAFETY: AVX2 is available (this function's contract); the intrinsics only compute on registers.
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(av, b), ones) }
}

/// 6 x 16 micro-kernel of the pair path: `c[r][col] += sum_q a_r[4q..4q+4] . b[q][col][0..4]` over `kq4` quads.
///
/// # Safety
/// AVX2 must be available; `a` points at 6 rows of at least `4 * kq4` bytes spaced `lda` apart; `b` at `kq4 * 64`
/// i8; `c` at 6 rows of 16 i32 spaced `ldc` apart, all readable and writable; the weights are safe pairs.
#[target_feature(enable = "avx2")]
unsafe fn ukernel_pairs_6x16__avx2(
    kq4: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    c: *mut i32,
    ldc: usize,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 2 * MR];
        for q in 0..kq4 {
            let b0 = _mm256_loadu_si256(b.add(q * 64) as *const __m256i);
            let b1 = _mm256_loadu_si256(b.add(q * 64 + 32) as *const __m256i);
            for r in 0..MR {
                let quad = std::ptr::read_unaligned(a.add(r * lda + 4 * q) as *const i32);
                let av = _mm256_set1_epi32(quad);
                acc[2 * r] = _mm256_add_epi32(acc[2 * r], quad_dot(av, b0, ones));
                acc[2 * r + 1] = _mm256_add_epi32(acc[2 * r + 1], quad_dot(av, b1, ones));
            }
        }
        for r in 0..MR {
            let c0 = c.add(r * ldc) as *mut __m256i;
            let c1 = c.add(r * ldc + 8) as *mut __m256i;
            _mm256_storeu_si256(c0, _mm256_add_epi32(_mm256_loadu_si256(c0), acc[2 * r]));
            _mm256_storeu_si256(c1, _mm256_add_epi32(_mm256_loadu_si256(c1), acc[2 * r + 1]));
        }
    }
}

/// `G` panels of one gathered activation row (the batch-1 path of the pair kernels):
/// `tile[g * 16 + c] = sum_q a[4q..4q+4] . panel_g[q][c][0..4]`.
///
/// # Safety
/// AVX2 must be available; `a` points at `4 * kq4` bytes; panel `g < G` starts at `b + g * pstride` and holds
/// `kq4 * 64` i8; `G <= 4`; the weights are safe pairs.
#[target_feature(enable = "avx2")]
unsafe fn gemv_pairs__avx2<const G: usize>(
    kq4: usize,
    a: *const u8,
    b: *const i8,
    pstride: usize,
    tile: &mut [i32; 4 * NR],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 8];
        for q in 0..kq4 {
            let av = _mm256_set1_epi32(std::ptr::read_unaligned(a.add(4 * q) as *const i32));
            for g in 0..G {
                let bq = b.add(g * pstride + q * 64);
                let b0 = _mm256_loadu_si256(bq as *const __m256i);
                let b1 = _mm256_loadu_si256(bq.add(32) as *const __m256i);
                acc[2 * g] = _mm256_add_epi32(acc[2 * g], quad_dot(av, b0, ones));
                acc[2 * g + 1] = _mm256_add_epi32(acc[2 * g + 1], quad_dot(av, b1, ones));
            }
        }
        for (g, pair) in acc.chunks_exact(2).take(G).enumerate() {
            _mm256_storeu_si256(tile.as_mut_ptr().add(g * NR) as *mut __m256i, pair[0]);
            _mm256_storeu_si256(tile.as_mut_ptr().add(g * NR + 8) as *mut __m256i, pair[1]);
        }
    }
}

/// `out = bias + a . w^T` on pair panels ([`prepack_pairs`] of `w` for `plan`), single-threaded. Each block of
/// [`MC`] rows is gathered once into plan order; row blocks, then K blocks of [`KCQ`] positions, then panels,
/// then 6-row tiles, so a weight panel's K block stays in L1 across the tiles. One row runs the GEMV instead.
///
/// # Safety
/// AVX2 must be available; `a` holds `rows` rows of `plan`'s `k`; `bias` holds `n`, `out` `rows * n`; `pp` was
/// prepared from the `n x k` weights.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn gemm_pairs__avx2(
    a: &[u8],
    rows: usize,
    k: usize,
    n: usize,
    pp: PairPanels<'_>,
    bias: &[i32],
    out: &mut [i32],
    s: &mut Scratch,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let PairPanels {
            plan,
            panels,
            bias_fix,
        } = pp;
        for orow in out.chunks_exact_mut(n) {
            for ((o, &b), &f) in orow.iter_mut().zip(bias).zip(bias_fix) {
                *o = b.wrapping_add(f);
            }
        }
        let kq = plan.len();
        if rows == 0 || kq == 0 {
            return;
        }
        let np = n.div_ceil(NR);
        let pstride = kq * NR;
        // 16 bytes of slack: the gather's chunk stores may run past a row.
        if rows == 1 {
            grow(&mut s.apad, kq + 16);
            gather_row__avx2(plan, &a[..k], s.apad.as_mut_ptr());
            let ap = s.apad.as_ptr();
            gemv_groups(n, out, |p, g, tile| {
                // SAFETY: panels p..p+g exist (pstride bytes each); apad holds kq gathered bytes.
                let b = panels.as_ptr().add(p * pstride);
                match g {
                    4 => gemv_pairs__avx2::<4>(kq / 4, ap, b, pstride, tile),
                    3 => gemv_pairs__avx2::<3>(kq / 4, ap, b, pstride, tile),
                    2 => gemv_pairs__avx2::<2>(kq / 4, ap, b, pstride, tile),
                    _ => gemv_pairs__avx2::<1>(kq / 4, ap, b, pstride, tile),
                }
            });
            return;
        }
        grow(&mut s.apad, rows.min(MC).div_ceil(MR) * MR * kq + 16);
        let mut tile = [0i32; MR * NR];
        for ib in (0..rows).step_by(MC) {
            let mc = MC.min(rows - ib);
            for r in 0..mc {
                // SAFETY: row r of kq bytes starts at r * kq, and apad has 16 bytes of slack after the last row; rows
                // are gathered in order, so a store running into row r + 1 is overwritten by it.
                gather_row__avx2(plan, &a[(ib + r) * k..], s.apad.as_mut_ptr().add(r * kq));
            }
            for k0 in (0..kq).step_by(KCQ) {
                let kc = KCQ.min(kq - k0);
                for p in 0..np {
                    let j0 = p * NR;
                    let nc = NR.min(n - j0);
                    // SAFETY: panel p holds kq * NR bytes from p * pstride; its block at k0 holds kc * NR.
                    let bp = panels.as_ptr().add(p * pstride + k0 * NR);
                    for i0 in (0..mc).step_by(MR) {
                        let mr = MR.min(mc - i0);
                        // SAFETY: apad holds round_up(mc, MR) rows of kq bytes (padding rows are stale and their
                        // results discarded below); k0 + kc <= kq.
                        let ap = s.apad.as_ptr().add(i0 * kq + k0);
                        run_tile(out, n, ib + i0, j0, mr, nc, &mut tile, |c, ldc| {
                            ukernel_pairs_6x16__avx2(kc / 4, ap, kq, bp, c, ldc)
                        });
                    }
                }
            }
        }
    }
}

/// Weights prepared once per model for the AVX2 kernels (held by `PrepackedWeights`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Prepared<'a> {
    /// Nothing prepared: weights are decoded per call and K block.
    None,
    /// [`prepack_panels`] of int8 weights, and [`prepack_panels_i8`] for the batch-1 GEMV.
    I16(&'a [i16], &'a [i8]),
    /// [`prepack_subbyte`] of `I4x2` / `I2x4` / `B1x8` weights.
    SubByte(&'a [u8]),
    /// [`prepack_pairs`] of int8 weights for the plan (the `vpmaddubsw` path).
    Pairs(PairPanels<'a>),
}

/// What the pair kernels need: the activation plan, the weights in its order, and the per-column bias fix of
/// its flips ([`PairPlan::bias_fix`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PairPanels<'a> {
    pub plan: &'a PairPlan,
    pub panels: &'a [i8],
    pub bias_fix: &'a [i32],
}

/// Output columns per sub-byte panel: one ymm of 8 i32 accumulators.
const SB_NR: usize = 8;
/// Bytes per sub-byte chunk: 8 columns x 4 bytes; byte `4c + t` holds, in its `cpb` fields (field `j` at bits
/// `j * bits..`), the codes of column `c` at `k = 4 (g * cpb + j) + t` for chunk `g`.
const SB_CHUNK_BYTES: usize = 32;
/// Rows sharing one expansion of the weights in [`subbyte_rows__avx2`].
const SB_MR: usize = 4;

/// Sub-byte weights re-ordered into panels of [`SB_NR`] columns, still at their storage width (`bits = 4, 2, 1`
/// for `I4x2`, `I2x4`, `B1x8`): panel `p` is `chunks = ceil(k / (4 * cpb))` chunks of [`SB_CHUNK_BYTES`]
/// (`cpb` = codes per byte), so the buffer is `ceil(n / 8) * chunks * 32` bytes, the packed size plus padding.
/// Field `j` of every byte of a chunk together forms the `[8 columns][4 k]` block of k quad `g * cpb + j`, stored
/// offset-binary so that the kernel only shifts and masks: `v = code + 2^(bits - 1)` (0..=15 or 0..=3) for
/// `I4x2` / `I2x4`, `v = (code + 1) / 2` (0 or 1) for `B1x8`. The kernel accumulates `sum a * v` and recovers
/// `sum a * code = sum a * v - 2^(bits - 1) * sum a` (binary: `2 sum a * v - sum a`), exact modulo 2^32 like the
/// reference. Padding fields (past `n` or `k`) are 0 and meet zero activations, so they add nothing.
pub(crate) fn prepack_subbyte(w: &PackedWeights) -> Vec<u8> {
    let cpb = w.packing.codes_per_byte();
    let bits = 8 / cpb;
    let (n, k) = (w.rows, w.cols);
    let kchunk = 4 * cpb;
    let chunks = k.div_ceil(kchunk);
    let np = n.div_ceil(SB_NR);
    let mut out = vec![0u8; np * chunks * SB_CHUNK_BYTES];
    let mask = ((1u16 << bits) - 1) as u8;
    let mut row = vec![0i8; k];
    for j in 0..n {
        w.unpack_row(j, &mut row);
        let (p, c) = (j / SB_NR, j % SB_NR);
        for (kk, &q) in row.iter().enumerate() {
            let (g, within) = (kk / kchunk, kk % kchunk);
            let field = if w.packing == Packing::B1x8 {
                u8::from(q > 0)
            } else {
                (q as u8).wrapping_add(1 << (bits - 1)) & mask
            };
            let idx = (p * chunks + g) * SB_CHUNK_BYTES + c * 4 + within % 4;
            out[idx] |= field << (bits * (within / 4));
        }
    }
    out
}

/// Field `j` of every byte of `x`: the offset-binary values `v` of [`prepack_subbyte`], as u8 in i8 lanes.
///
/// # Safety
/// AVX2 must be available.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn subbyte_field__avx2<const BITS: usize>(x: __m256i, j: usize) -> __m256i {
    let mask = _mm256_set1_epi8(((1u16 << BITS) - 1) as i8);
    // A 16-bit lane shift moves bits across the byte boundary; the mask drops exactly those.
    _mm256_and_si256(
        _mm256_srl_epi16(x, _mm_cvtsi32_si128((BITS * j) as i32)),
        mask,
    )
}

/// `R` activation rows times one sub-byte panel: `tile[r][c] = sum_k a_r[k] * v(c, k)` (wrapping i32) for the
/// offset-binary field values `v` of [`prepack_subbyte`]; the caller turns this into `sum a * code`.
///
/// `vpmaddubsw` (u8 x i8, pair sums saturating to i16) is exact here because `0 <= v <= 15`: a pair sum is at most
/// `2 * 255 * 15 = 7650`, and the `cpb` pair sums of one chunk added in i16 stay within `cpb * 2 * 255 * max v`
/// = 15300 (4-bit), 6120 (2-bit), 4080 (1-bit) < 32767. `vpmaddwd` with ones then widens column pairs to i32.
///
/// # Safety
/// AVX2 must be available; `BITS` is 4, 2 or 1; row `r < R` starts at `a + r * lda` and holds
/// `chunks * 4 * (8 / BITS)` bytes; `panel` holds `chunks * 32` bytes.
#[target_feature(enable = "avx2")]
unsafe fn subbyte_rows__avx2<const BITS: usize, const R: usize>(
    chunks: usize,
    a: *const u8,
    lda: usize,
    panel: *const u8,
    tile: &mut [[i32; SB_NR]; SB_MR],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let cpb = 8 / BITS;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); R];
        for g in 0..chunks {
            let x = _mm256_loadu_si256(panel.add(g * SB_CHUNK_BYTES) as *const __m256i);
            let mut s16 = [_mm256_setzero_si256(); R];
            for j in 0..cpb {
                let wv = subbyte_field__avx2::<BITS>(x, j);
                let koff = (g * cpb + j) * 4;
                for (r, s) in s16.iter_mut().enumerate() {
                    let quad = std::ptr::read_unaligned(a.add(r * lda + koff) as *const i32);
                    *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(_mm256_set1_epi32(quad), wv));
                }
            }
            for (ac, s) in acc.iter_mut().zip(&s16) {
                *ac = _mm256_add_epi32(*ac, _mm256_madd_epi16(*s, ones));
            }
        }
        for (t, ac) in tile.iter_mut().zip(&acc) {
            _mm256_storeu_si256(t.as_mut_ptr() as *mut __m256i, *ac);
        }
    }
}

/// `out = bias + a . w^T` on [`prepack_subbyte`] panels (`bits` = storage bits 4, 2 or 1), single-threaded.
/// Rows go [`SB_MR`] at a time through a zero-padded copy (so the kernel's quad reads stay in bounds and padded
/// codes meet zero activations); each panel chunk is expanded once per row group.
///
/// # Safety
/// AVX2 must be available; shapes checked by the entry point (`a`: rows x k, `out`: rows x n, `bias`: n);
/// `panels` is `prepack_subbyte` of an `n x k` matrix with `bits` storage bits.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn gemm_subbyte_i32__avx2(
    a: &[u8],
    rows: usize,
    k: usize,
    n: usize,
    bits: u32,
    panels: &[u8],
    bias: &[i32],
    out: &mut [i32],
    s: &mut Scratch,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let cpb = 8 / bits as usize;
        let chunks = k.div_ceil(4 * cpb);
        let kpad = chunks * 4 * cpb;
        let np = n.div_ceil(SB_NR);
        grow(&mut s.apad, SB_MR * kpad);
        let mut tile = [[0i32; SB_NR]; SB_MR];
        // sum a * code = scale * (sum a * v) - offset * sum a, per the offset-binary fields.
        let (scale, offset) = if bits == 1 {
            (2i32, 1i32)
        } else {
            (1, 1 << (bits - 1))
        };
        let mut asum = [0i32; SB_MR];
        for i0 in (0..rows).step_by(SB_MR) {
            let mr = SB_MR.min(rows - i0);
            for r in 0..mr {
                let d = &mut s.apad[r * kpad..(r + 1) * kpad];
                d[..k].copy_from_slice(&a[(i0 + r) * k..(i0 + r + 1) * k]);
                d[k..].fill(0);
                let sum = d[..k]
                    .iter()
                    .fold(0u32, |acc, &x| acc.wrapping_add(x as u32));
                asum[r] = (sum as i32).wrapping_mul(offset);
            }
            let ap = s.apad.as_ptr();
            for p in 0..np {
                // SAFETY: panel p holds chunks * 32 bytes; apad holds mr rows of kpad bytes.
                let panel = panels.as_ptr().add(p * chunks * SB_CHUNK_BYTES);
                match (bits, mr == SB_MR) {
                    (4, true) => subbyte_rows__avx2::<4, SB_MR>(chunks, ap, kpad, panel, &mut tile),
                    (2, true) => subbyte_rows__avx2::<2, SB_MR>(chunks, ap, kpad, panel, &mut tile),
                    (1, true) => subbyte_rows__avx2::<1, SB_MR>(chunks, ap, kpad, panel, &mut tile),
                    _ => {
                        for r in 0..mr {
                            let (ar, t) = (ap.add(r * kpad), &mut tile[r..]);
                            let mut one = [[0i32; SB_NR]; SB_MR];
                            match bits {
                                4 => subbyte_rows__avx2::<4, 1>(chunks, ar, kpad, panel, &mut one),
                                2 => subbyte_rows__avx2::<2, 1>(chunks, ar, kpad, panel, &mut one),
                                _ => subbyte_rows__avx2::<1, 1>(chunks, ar, kpad, panel, &mut one),
                            }
                            t[0] = one[0];
                        }
                    }
                }
                let j0 = p * SB_NR;
                let nc = SB_NR.min(n - j0);
                for (r, t) in tile.iter().enumerate().take(mr) {
                    let o = &mut out[(i0 + r) * n + j0..(i0 + r) * n + j0 + nc];
                    for ((x, &b), &v) in o.iter_mut().zip(&bias[j0..]).zip(t) {
                        *x = b.wrapping_add(v.wrapping_mul(scale).wrapping_sub(asum[r]));
                    }
                }
            }
        }
    }
}

/// Requantization constants of 8 consecutive columns: the Q31 multipliers (even lanes, and odd ones shifted
/// down), then per i64 lane (even, odd columns) the total shift `s = 31 + shift`, the rounding constant
/// `2^(s - 1)` and the offset `2^(63 - s)` of the logical-shift trick (see [`requant_u8__avx2`]).
#[derive(Clone, Copy)]
pub(crate) struct RequantConsts8 {
    mult: __m256i,
    mult_odd: __m256i,
    shift: [__m256i; 2],
    round: [__m256i; 2],
    offset: [__m256i; 2],
    /// Per column `s - 32`, the i32 arithmetic shift of the short path ([`OutputStage8::codes_i32`]).
    high_shift: __m256i,
    /// Every column has `s >= 32` (requantization shift at least 1, every scale ratio below 1/2): the short path.
    high: bool,
}

impl RequantConsts8 {
    /// Constants of columns `j..j + 8` (`p.requant[0]` for all when per-tensor).
    ///
    /// # Safety
    /// AVX2 must be available; `p` passed `check_output` and has `j + 8` columns (or is per-tensor).
    #[target_feature(enable = "avx2")]
    unsafe fn new(p: &OutputParams, j: usize) -> Self {
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
            let (mut mult, mut shift) = ([0i32; 8], [0i32; 8]);
            for c in 0..8 {
                let rq = p.requant_for(j + c);
                mult[c] = rq.multiplier;
                shift[c] = rq.shift;
            }
            let one = _mm256_set1_epi64x(1);
            let mv = _mm256_loadu_si256(mult.as_ptr() as *const __m256i);
            // s = 31 + shift in 1..=62 (checked), so its i32 lanes zero-extend to the i64 shift counts.
            let s = _mm256_add_epi32(
                _mm256_loadu_si256(shift.as_ptr() as *const __m256i),
                _mm256_set1_epi32(31),
            );
            let sh = [
                _mm256_and_si256(s, _mm256_set1_epi64x(0xffff_ffff)),
                _mm256_srli_epi64::<32>(s),
            ];
            let c63 = _mm256_set1_epi64x(63);
            Self {
                mult: mv,
                mult_odd: _mm256_srli_epi64::<32>(mv),
                shift: sh,
                round: sh.map(|v| _mm256_sllv_epi64(one, _mm256_sub_epi64(v, one))),
                offset: sh.map(|v| _mm256_sllv_epi64(one, _mm256_sub_epi64(c63, v))),
                high_shift: _mm256_sub_epi32(s, _mm256_set1_epi32(32)),
                high: shift.iter().all(|&x| x >= 1),
            }
        }
    }
}

impl RequantConsts8 {
    /// The constants of `rq` in every lane (one channel row); `rq` passed [`Requant::validate`].
    ///
    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn broadcast(rq: Requant) -> Self {
        // 31 + shift in 1..=62 (validated), so both powers of two fit an i64.
        let s = (31 + rq.shift) as i64;
        let sh = _mm256_set1_epi64x(s);
        Self {
            mult: _mm256_set1_epi32(rq.multiplier),
            mult_odd: _mm256_set1_epi32(rq.multiplier),
            shift: [sh; 2],
            round: [_mm256_set1_epi64x(1i64 << (s - 1)); 2],
            offset: [_mm256_set1_epi64x(1i64 << (63 - s)); 2],
            high_shift: _mm256_set1_epi32(rq.shift - 1),
            high: rq.shift >= 1,
        }
    }
}

/// The zero point and clamp bounds of an output stage, broadcast.
pub(crate) struct OutputStage8 {
    lo_t: __m256i,
    hi_t: __m256i,
    zp: __m256i,
    qmin: __m256i,
    qmax: __m256i,
    sign: __m256i,
}

impl OutputStage8 {
    /// The broadcast constants of `p`'s output stage.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn new(p: &OutputParams) -> Self {
        let zp = p.zero_point as i64;
        let lo_t = (p.qmin as i64 - zp - 1).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        let hi_t = (p.qmax as i64 - zp + 1).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        Self {
            lo_t: _mm256_set1_epi32(lo_t),
            hi_t: _mm256_set1_epi32(hi_t),
            zp: _mm256_set1_epi32(p.zero_point),
            qmin: _mm256_set1_epi32(p.qmin),
            qmax: _mm256_set1_epi32(p.qmax),
            sign: _mm256_set1_epi64x(i64::MIN),
        }
    }

    /// Requantizes the 8 accumulators at `src` into 8 codes at `dst` (see [`requant_u8__avx2`]).
    ///
    /// # Safety
    /// AVX2 must be available; `src` is readable for 8 i32, `dst` writable for 8 bytes.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn apply(&self, src: *const i32, c: &RequantConsts8, dst: *mut u8) {
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
            let x = _mm256_loadu_si256(src as *const __m256i);
            std::ptr::write_unaligned(dst as *mut i64, self.codes(x, c));
        }
    }

    /// The 8 codes of the accumulators `x`, code `i` in byte `i` (see [`requant_u8__avx2`]).
    ///
    /// # Safety
    /// AVX2 must be available.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes(&self, x: __m256i, c: &RequantConsts8) -> i64 {
        // SAFETY: AVX2 available (this function's contract); register arithmetic only.
        unsafe { pack_codes8(self.codes_i32(x, c)) }
    }

    /// The 8 codes of the accumulators `x` as i32 lanes, in `[qmin, qmax]` (see [`requant_u8__avx2`]).
    ///
    /// # Safety
    /// AVX2 must be available.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn codes_i32(&self, x: __m256i, c: &RequantConsts8) -> __m256i {
        let ve = _mm256_mul_epi32(x, c.mult);
        let vo = _mm256_mul_epi32(_mm256_srli_epi64::<32>(x), c.mult_odd);
        if c.high {
            // s >= 32: `(v + 2^(s-1)) >> s` is `((v + 2^(s-1)) >> 32) >> (s - 32)` (floor divisions compose), the
            // first shift is the i64 lane's high half, and `|v| < 2^62` with `2^(s-1) <= 2^61` leaves quotients of
            // at most 2^30 in magnitude: an i32 arithmetic shift, no wrap in the reference's `as i32`, and the zero
            // point added without overflow.
            let ve = _mm256_add_epi64(ve, c.round[0]);
            let vo = _mm256_add_epi64(vo, c.round[1]);
            let t = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(ve), vo);
            let q = _mm256_add_epi32(_mm256_srav_epi32(t, c.high_shift), self.zp);
            return _mm256_min_epi32(_mm256_max_epi32(q, self.qmin), self.qmax);
        }
        let ve = _mm256_xor_si256(_mm256_add_epi64(ve, c.round[0]), self.sign);
        let vo = _mm256_xor_si256(_mm256_add_epi64(vo, c.round[1]), self.sign);
        let ve = _mm256_sub_epi64(_mm256_srlv_epi64(ve, c.shift[0]), c.offset[0]);
        let vo = _mm256_sub_epi64(_mm256_srlv_epi64(vo, c.shift[1]), c.offset[1]);
        let t = _mm256_blend_epi32::<0b1010_1010>(ve, _mm256_slli_epi64::<32>(vo));
        let t = _mm256_min_epi32(_mm256_max_epi32(t, self.lo_t), self.hi_t);
        let q = _mm256_add_epi32(t, self.zp);
        _mm256_min_epi32(_mm256_max_epi32(q, self.qmin), self.qmax)
    }
}

/// The 8 i32 lanes of `q` (each in `0..=255`) as 8 bytes, lane `i` in byte `i`.
///
/// # Safety
/// AVX2 must be available.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn pack_codes8(q: __m256i) -> i64 {
    let q16 = _mm256_packs_epi32(q, q);
    let q8 = _mm256_packus_epi16(q16, q16);
    // Each 128-bit lane holds its 4 codes in its low 4 bytes.
    let both = _mm_unpacklo_epi32(
        _mm256_castsi256_si128(q8),
        _mm256_extracti128_si256::<1>(q8),
    );
    _mm_cvtsi128_si64(both)
}

/// Output stage of [`reference::requant_u8`] on `rows x n` accumulators, 8 columns per step, bit-exact:
/// the Q31 product is formed in i64 lanes (`vpmuldq` on even and odd columns), the rounding constant
/// `2^(s - 1)` is added, and the arithmetic right shift by `s = 31 + shift` (AVX2 has no 64-bit arithmetic
/// shift) is a logical shift of `v + 2^63` minus `2^(63 - s)`, exact for every `s` in `1..=62`. The low 32 bits
/// are kept (the reference's `as i32`), clamped to `[qmin - zp - 1, qmax - zp + 1]` so adding the zero point cannot
/// overflow, and clamped again to `[qmin, qmax]` after it: the same three outcomes as the reference's i64 clamp.
/// Columns past the last multiple of 8 run the reference.
///
/// # Safety
/// AVX2 must be available; `acc` and `out` hold `rows * n` elements; `p` passed `check_output`.
#[target_feature(enable = "avx2")]
unsafe fn requant_u8__avx2(acc: &[i32], rows: usize, n: usize, p: &OutputParams, out: &mut [u8]) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let n8 = n / 8 * 8;
        let stage = OutputStage8::new(p);
        let per_tensor = p.requant.len() == 1;
        if per_tensor && n8 > 0 {
            // One set of constants for the whole tile (per-tensor layers, and `kernels::conv`'s channel rows).
            let c = RequantConsts8::new(p, 0);
            for r in 0..rows {
                for j in (0..n8).step_by(8) {
                    stage.apply(
                        acc.as_ptr().add(r * n + j),
                        &c,
                        out.as_mut_ptr().add(r * n + j),
                    );
                }
            }
        } else {
            for j in (0..n8).step_by(8) {
                let c = RequantConsts8::new(p, j);
                for r in 0..rows {
                    stage.apply(
                        acc.as_ptr().add(r * n + j),
                        &c,
                        out.as_mut_ptr().add(r * n + j),
                    );
                }
            }
        }
        if n8 < n {
            for r in 0..rows {
                for j in n8..n {
                    let rq = p.requant_for(j);
                    out[r * n + j] =
                        requantize(acc[r * n + j], rq, p.zero_point, p.qmin, p.qmax) as u8;
                }
            }
        }
    }
}

/// Least work per row block when weights are prepared, in multiply-accumulates (about 8 us on one Zen3 core,
/// several times rayon's cost per task).
const PAR_BLOCK_MACS: usize = 1_000_000;
/// Row blocks per thread when weights are prepared.
const PAR_BLOCKS_PER_THREAD: usize = 8;

/// Row block for the rayon split, a multiple of MR rows. Unprepared weights are decoded again by every block, so
/// they get one block per thread. Prepared ones ([`Prepared`] other than `None`) cost nothing per block and get
/// about [`PAR_BLOCKS_PER_THREAD`] blocks per thread (at least [`PAR_BLOCK_MACS`] each), which rayon's work stealing
/// spreads over threads that a shared machine slows unevenly (measurements in docs/KERNELS.md, "Dispatch").
fn par_rows(m: usize, n: usize, k: usize, panels: Prepared<'_>) -> Option<usize> {
    let threads = rayon::current_num_threads();
    if threads < 2 || m < 2 * MR || m.saturating_mul(n).saturating_mul(k) < PAR_MIN_MACS {
        return None;
    }
    let rows = if !matches!(panels, Prepared::None) {
        m.div_ceil(threads * PAR_BLOCKS_PER_THREAD)
            .max(PAR_BLOCK_MACS.div_ceil(n.saturating_mul(k).max(1)))
    } else {
        m.div_ceil(threads)
    };
    Some(rows.div_ceil(MR) * MR)
}

/// Single-threaded accumulation on the chosen tier (validated input).
#[allow(clippy::too_many_arguments)]
fn acc_rows(
    isa: Isa,
    a: &[u8],
    rows: usize,
    k: usize,
    w: &PackedWeights,
    panels: Prepared<'_>,
    bias: &[i32],
    out: &mut [i32],
    s: &mut Scratch,
) {
    // Prepared int8 weights take the AVX2 kernels on this tier too (its convolutions are where VNNI pays, see
    // `conv_planes`); weights decoded per call take the VNNI GEMM.
    if isa == Isa::Avx512Vnni && w.packing == Packing::I8 && matches!(panels, Prepared::None) {
        // SAFETY: the dispatcher only passes Avx512Vnni when `Isa::is_available` detected avx512f/bw/vnni; the
        // entry point checked the shapes and `w.packing` is I8.
        unsafe { gemm_u8i8_i32__avx512vnni(a, rows, k, w, bias, out) }
        return;
    }
    match panels {
        // SAFETY: Avx2 was detected by `Isa::is_available`; the entry point checked the shapes; `PrepackedWeights`
        // built these panels from `w` for this plan.
        Prepared::Pairs(pp) => unsafe { gemm_pairs__avx2(a, rows, k, w.rows, pp, bias, out, s) },
        // SAFETY: Avx2 (or Avx512Vnni, which implies it) was detected by `Isa::is_available`; the entry point
        // checked the shapes and that `panels` belongs to `w`.
        Prepared::I16(pn, pn8) if rows == 1 && pn8.len() == pn.len() => unsafe {
            gemv_u8i8_i32__avx2(a, k, w.rows, pn8, bias, out, s)
        },
        // SAFETY: as above; `PrepackedWeights` builds sub-byte panels only for I4x2 / I2x4 / B1x8.
        Prepared::SubByte(pn) if w.packing != Packing::I8 => unsafe {
            let bits = w.packing.storage_bits();
            gemm_subbyte_i32__avx2(a, rows, k, w.rows, bits, pn, bias, out, s)
        },
        // SAFETY: as above.
        Prepared::I16(pn, _) => unsafe {
            gemm_u8i8_i32__avx2(a, rows, k, w, Some(pn), bias, out, s)
        },
        // SAFETY: as above.
        _ => unsafe { gemm_u8i8_i32__avx2(a, rows, k, w, None, bias, out, s) },
    }
}

/// Dispatch target for [`Isa::Avx2`] / [`Isa::Avx512Vnni`] (validated input; `panels` is `prepack_panels(w)`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_acc(
    isa: Isa,
    a: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    panels: Prepared<'_>,
    bias: &[i32],
    out: &mut [i32],
) {
    debug_assert!(isa.is_available());
    let n = w.rows;
    if n == 0 || m == 0 {
        return;
    }
    match par_rows(m, n, k, panels) {
        Some(block) => out
            .par_chunks_mut(block * n)
            .zip(a.par_chunks(block * k))
            .for_each(|(o, ab)| {
                with_scratch(|s| acc_rows(isa, ab, o.len() / n, k, w, panels, bias, o, s))
            }),
        None => with_scratch(|s| acc_rows(isa, a, m, k, w, panels, bias, out, s)),
    }
}

/// Accumulates a row block into scratch and requantizes it while it is in cache.
#[allow(clippy::too_many_arguments)]
fn requant_rows(
    isa: Isa,
    a: &[u8],
    rows: usize,
    k: usize,
    w: &PackedWeights,
    panels: Prepared<'_>,
    p: &OutputParams,
    out: &mut [u8],
) {
    let n = w.rows;
    with_scratch(|s| {
        let mut acc = std::mem::take(&mut s.acc);
        grow(&mut acc, rows * n);
        acc_rows(isa, a, rows, k, w, panels, p.bias, &mut acc[..rows * n], s);
        // SAFETY: AVX2 is implied by the tiers that reach this module; lengths are rows * n; `p` was checked.
        unsafe { requant_u8__avx2(&acc[..rows * n], rows, n, p, out) };
        s.acc = acc;
    })
}

/// Dispatch target for [`Isa::Avx2`] / [`Isa::Avx512Vnni`] (validated input; `panels` is `prepack_panels(w)`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_requant(
    isa: Isa,
    a: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    panels: Prepared<'_>,
    p: &OutputParams,
    out: &mut [u8],
) {
    debug_assert!(isa.is_available());
    let n = w.rows;
    if n == 0 || m == 0 {
        return;
    }
    match par_rows(m, n, k, panels) {
        Some(block) => out
            .par_chunks_mut(block * n)
            .zip(a.par_chunks(block * k))
            .for_each(|(o, ab)| requant_rows(isa, ab, o.len() / n, k, w, panels, p, o)),
        None => requant_rows(isa, a, m, k, w, panels, p, out),
    }
}

/// Rows of the VNNI micro-tile (one zmm accumulator of 16 columns per row).
const VNNI_MR: usize = 4;

/// Int8 weights with `vpdpbusd` (u8 x i8 -> i32 in groups of 4, no intermediate saturation, unlike `vpmaddubsw`;
/// `vpdpbusds` would saturate the i32 sum and is not used). Panel layout `[k / 4][16][4]` i8, activations padded
/// to a multiple of 4 with zeros; weights re-laid per call (the engine's prepared int8 weights take the AVX2
/// kernels). Conformance: `tests/kernels_exact.rs` on an AVX-512 VNNI machine (docs/KERNELS.md).
///
/// # Safety
/// avx512f, avx512bw and avx512vnni must be available; shapes checked by the entry point; `w.packing == I8`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemm_u8i8_i32__avx512vnni(
    a: &[u8],
    rows: usize,
    k: usize,
    w: &PackedWeights,
    bias: &[i32],
    out: &mut [i32],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let n = w.rows;
        for orow in out.chunks_exact_mut(n) {
            orow.copy_from_slice(bias);
        }
        if rows == 0 || k == 0 {
            return;
        }
        let rows_pad = rows.div_ceil(VNNI_MR) * VNNI_MR;
        let mut ablk = vec![0u8; rows_pad * KC];
        let mut panel = vec![0i8; KC * 16];
        let mut tile = [0i32; 16];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let kc4 = kc.div_ceil(4) * 4;
            for r in 0..rows {
                let d = &mut ablk[r * kc4..(r + 1) * kc4];
                d[..kc].copy_from_slice(&a[r * k + k0..r * k + k0 + kc]);
                d[kc..].fill(0);
            }
            for j0 in (0..n).step_by(16) {
                let nc = 16.min(n - j0);
                panel[..kc4 * 16].fill(0);
                for c in 0..nc {
                    let row = w.row(j0 + c);
                    for t in 0..kc {
                        panel[(t / 4) * 64 + c * 4 + t % 4] = row[k0 + t] as i8;
                    }
                }
                for i0 in (0..rows).step_by(VNNI_MR) {
                    let mut acc = [_mm512_setzero_si512(); VNNI_MR];
                    for q in 0..kc4 / 4 {
                        // SAFETY: q * 64 + 64 <= kc4 * 16 <= panel.len().
                        let bv = _mm512_loadu_si512(panel.as_ptr().add(q * 64) as *const _);
                        for (r, accr) in acc.iter_mut().enumerate() {
                            // SAFETY: row i0 + r < rows_pad and 4q + 4 <= kc4, inside ablk.
                            let quad = std::ptr::read_unaligned(
                                ablk.as_ptr().add((i0 + r) * kc4 + 4 * q) as *const i32,
                            );
                            *accr = _mm512_dpbusd_epi32(*accr, _mm512_set1_epi32(quad), bv);
                        }
                    }
                    for (r, accr) in acc.iter().enumerate().take(VNNI_MR.min(rows - i0)) {
                        _mm512_storeu_si512(tile.as_mut_ptr() as *mut _, *accr);
                        let o = &mut out[(i0 + r) * n + j0..(i0 + r) * n + j0 + nc];
                        for (x, t) in o.iter_mut().zip(&tile) {
                            *x = x.wrapping_add(*t);
                        }
                    }
                }
            }
        }
    }
}

/// `acc = bias + 2 * popcount(a & w) - popcount(a)` with 64-bit hardware popcount.
///
/// # Safety
/// popcnt must be available; shapes checked by the entry point (`a_bits`: rows x row_bytes(B1x8, k)).
#[target_feature(enable = "popcnt")]
unsafe fn gemm_b1b1_i32__popcnt(
    a_bits: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    bias: &[i32],
    out: &mut [i32],
) {
    let n = w.rows;
    let rb = k.div_ceil(8);
    let words = k / 64;
    let mut arow = vec![0u8; rb];
    for i in 0..m {
        arow.copy_from_slice(&a_bits[i * rb..(i + 1) * rb]);
        if !k.is_multiple_of(8) {
            // Activation bits past k are ignored by definition.
            arow[rb - 1] &= (1u8 << (k % 8)) - 1;
        }
        let apop: u32 = arow.iter().map(|b| b.count_ones()).sum();
        for j in 0..n {
            let wrow = w.row(j);
            let mut both = 0u32;
            for t in 0..words {
                let mut x = [0u8; 8];
                let mut y = [0u8; 8];
                x.copy_from_slice(&arow[t * 8..t * 8 + 8]);
                y.copy_from_slice(&wrow[t * 8..t * 8 + 8]);
                both += (u64::from_le_bytes(x) & u64::from_le_bytes(y)).count_ones();
            }
            for (x, y) in arow[words * 8..].iter().zip(&wrow[words * 8..]) {
                both += (x & y).count_ones();
            }
            // 2 * both - apop lies in [-k, k]; wrapping keeps the reference's semantics for any bias.
            out[i * n + j] = bias[j].wrapping_add(2 * both as i32 - apop as i32);
        }
    }
}

/// Dispatch target for binary x binary on x86 tiers (validated input).
pub(crate) fn gemm_b1b1(
    a_bits: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    bias: &[i32],
    out: &mut [i32],
) {
    // SAFETY: only called for Avx2 / Avx512Vnni, whose availability check includes popcnt.
    unsafe { gemm_b1b1_i32__popcnt(a_bits, m, k, w, bias, out) }
}

/// Starts of 8-element blocks covering `0..len` (`len >= 8`): every multiple of 8 that leaves a full block, then
/// `len - 8` when a tail remains. The last block overlaps its predecessor and recomputes the same values, so a
/// row of any length runs vector code only.
fn block_starts(len: usize) -> impl Iterator<Item = usize> {
    (0..len.div_ceil(8)).map(move |b| (8 * b).min(len - 8))
}

/// Dispatch target of `conv::requant_channels` on the AVX2 tiers: `[channels][positions]` accumulators, one
/// requantization per channel row (lengths checked, `p` checked for `acc.len() / positions` channels,
/// `positions >= 8`).
pub(crate) fn requant_channels(acc: &[i32], positions: usize, p: &OutputParams, out: &mut [u8]) {
    assert!(positions >= 8 && acc.len() == out.len() && (acc.len()).is_multiple_of(positions));
    // SAFETY: reached only on the AVX2 tiers, which `Isa::is_available` detected; lengths asserted above.
    unsafe { requant_channels__avx2(acc, positions, p, out) }
}

/// Each channel row with its own constants broadcast, 8 values per step (see [`block_starts`]).
///
/// # Safety
/// AVX2 must be available; `acc` and `out` hold whole rows of `positions >= 8`; `p` passed `check_output` for
/// the row count.
#[target_feature(enable = "avx2")]
unsafe fn requant_channels__avx2(acc: &[i32], positions: usize, p: &OutputParams, out: &mut [u8]) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let stage = OutputStage8::new(p);
        let rows = acc
            .chunks_exact(positions)
            .zip(out.chunks_exact_mut(positions));
        for (c, (arow, orow)) in rows.enumerate() {
            let consts = RequantConsts8::broadcast(p.requant_for(c));
            for x in block_starts(positions) {
                stage.apply(arow.as_ptr().add(x), &consts, orow.as_mut_ptr().add(x));
            }
        }
    }
}

/// Dispatch target of `conv::max_pool_requant` on the AVX2 tiers (lengths checked, `p` checked for `channels`).
/// Returns false, having written nothing, when the shape has no vector path: planes less than 16 wide, fewer than
/// 8 channels in the position layout.
pub(crate) fn max_pool_requant(conv: ConvAcc<'_>, p: &OutputParams, out: &mut [u8]) -> bool {
    let (c, h, w) = (conv.channels, conv.height, conv.width);
    let (vector, elems) = match conv.layout {
        AccLayout::Planes { row, plane } => (w / 2 >= 8 && row >= w && plane >= h * row, c * plane),
        AccLayout::Positions => (c >= 8, c * h * w),
    };
    if !vector {
        return false;
    }
    assert!(conv.acc.len() >= elems && out.len() >= c * (h / 2) * (w / 2));
    // SAFETY: reached only on the AVX2 tiers, which `Isa::is_available` detected; lengths asserted above, shape
    // checked just before.
    unsafe { max_pool_requant__avx2(conv, p, out) };
    true
}

/// 2 x 2 window maxima of planes whose pooled rows are under 8 wide (`ow < 8`): `maxima[(c * oh + oy) * ow + ox]`
/// for planes `plane` apart with rows `row` apart, 8 windows per row pair of which `ow` are kept. `maxima` needs 8
/// elements of slack (a row's spare lanes are overwritten by the next row). Returns false, writing nothing, when
/// the last row pair's 16-wide reads would pass the end of `acc` (the caller then takes the scalar definition).
pub(crate) fn max_pool_narrow_planes(
    acc: &[i32],
    channels: usize,
    (row, plane): (usize, usize),
    (oh, ow): (usize, usize),
    maxima: &mut [i32],
) -> bool {
    if channels == 0 || oh == 0 || ow == 0 || ow >= 8 {
        return false;
    }
    let last_read = (channels - 1) * plane + (2 * oh - 1) * row + 16;
    if last_read > acc.len() || maxima.len() < channels * oh * ow + 8 {
        return false;
    }
    // SAFETY: AVX2 tiers only (dispatch); every read of 16 from a row start ends by last_read <= acc.len(); every
    // 8-lane store starts at most at channels * oh * ow - ow and ends inside the slack.
    unsafe { max_pool_narrow_planes__avx2(acc, channels, (row, plane), (oh, ow), maxima) };
    true
}

/// See [`max_pool_narrow_planes`].
///
/// # Safety
/// AVX2 must be available; the bounds [`max_pool_narrow_planes`] checks hold.
#[target_feature(enable = "avx2")]
unsafe fn max_pool_narrow_planes__avx2(
    acc: &[i32],
    channels: usize,
    (row, plane): (usize, usize),
    (oh, ow): (usize, usize),
    maxima: &mut [i32],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        for c in 0..channels {
            for oy in 0..oh {
                let r0 = acc.as_ptr().add(c * plane + 2 * oy * row);
                let m = max_pool_2x2_i32x8(r0, r0.add(row));
                let dst = maxima.as_mut_ptr().add((c * oh + oy) * ow);
                _mm256_storeu_si256(dst as *mut __m256i, m);
            }
        }
    }
}

/// Max of each 2 x 2 window of two rows: outputs `0..8` from the 16 accumulators at `r0` and at `r1`.
///
/// # Safety
/// AVX2 must be available; `r0` and `r1` are readable for 16 i32.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn max_pool_2x2_i32x8(r0: *const i32, r1: *const i32) -> __m256i {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let v0 = _mm256_max_epi32(
            _mm256_loadu_si256(r0 as *const __m256i),
            _mm256_loadu_si256(r1 as *const __m256i),
        );
        let v1 = _mm256_max_epi32(
            _mm256_loadu_si256(r0.add(8) as *const __m256i),
            _mm256_loadu_si256(r1.add(8) as *const __m256i),
        );
        let (f0, f1) = (_mm256_castsi256_ps(v0), _mm256_castsi256_ps(v1));
        // Per 128-bit lane: even columns (0, 2 of v0, then of v1) and odd ones; their max is window order
        // [0 1 4 5 | 2 3 6 7], which the 64-bit permute puts back in order.
        let even = _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(f0, f1));
        let odd = _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(f0, f1));
        _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_max_epi32(even, odd))
    }
}

/// Planes: per channel plane and output row, 8 windows per step (see [`block_starts`]), max then requantization
/// with the channel's constants broadcast. Positions: channels across lanes, 8 per step with their own constants;
/// per output position the max of the 4 window rows of 8 channels, requantized, its 8 codes stored one per
/// channel plane (NCHW).
///
/// # Safety
/// AVX2 must be available; `acc` holds `channels * plane` (planes) or `channels * h * w`, `out` `channels * (h / 2) * (w / 2)`; `w / 2 >= 8` for
/// planes, `channels >= 8` for positions; `p` passed `check_output` for `channels`.
#[target_feature(enable = "avx2")]
unsafe fn max_pool_requant__avx2(conv: ConvAcc<'_>, p: &OutputParams, out: &mut [u8]) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let ConvAcc {
            acc,
            channels,
            height: h,
            width: w,
            ..
        } = conv;
        let (oh, ow) = (h / 2, w / 2);
        let stage = OutputStage8::new(p);
        match conv.layout {
            AccLayout::Planes { row, plane } => {
                for c in 0..channels {
                    let consts = RequantConsts8::broadcast(p.requant_for(c));
                    let cplane = acc.as_ptr().add(c * plane);
                    let oplane = out.as_mut_ptr().add(c * oh * ow);
                    for oy in 0..oh {
                        let r0 = cplane.add(2 * oy * row);
                        for x in block_starts(ow) {
                            // Reads columns 2x..2x + 16 <= 2 ow <= w <= row of rows 2 oy and 2 oy + 1 < h.
                            let m = max_pool_2x2_i32x8(r0.add(2 * x), r0.add(row + 2 * x));
                            std::ptr::write_unaligned(
                                oplane.add(oy * ow + x) as *mut i64,
                                stage.codes(m, &consts),
                            );
                        }
                    }
                }
            }
            AccLayout::Positions => {
                let plane = oh * ow;
                for j in block_starts(channels) {
                    let consts = RequantConsts8::new(p, j);
                    for oy in 0..oh {
                        for ox in 0..ow {
                            // Window rows 2 oy and 2 oy + 1 < h, columns 2 ox and 2 ox + 1 < w, channels j..j + 8.
                            let a = acc.as_ptr().add((2 * oy * w + 2 * ox) * channels + j);
                            let b = a.add(w * channels);
                            let m = _mm256_max_epi32(
                                _mm256_max_epi32(
                                    _mm256_loadu_si256(a as *const __m256i),
                                    _mm256_loadu_si256(a.add(channels) as *const __m256i),
                                ),
                                _mm256_max_epi32(
                                    _mm256_loadu_si256(b as *const __m256i),
                                    _mm256_loadu_si256(b.add(channels) as *const __m256i),
                                ),
                            );
                            let codes = stage.codes(m, &consts);
                            let o = out.as_mut_ptr().add(j * plane + oy * ow + ox);
                            for l in 0..8 {
                                *o.add(l * plane) = (codes >> (8 * l)) as u8;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Padded planes and the layout key their borders match (see [`direct_conv`]).
type PaddedPlanes = (
    Vec<i16>,
    Option<(usize, usize, usize, usize, usize, usize, u8)>,
);

thread_local! {
    /// Zero-point-padded i16 planes of the sample [`direct_conv`] is working on, with the layout
    /// `(c_in, h, w, pad_h, pad_w, wp, pad code)` their borders were written for.
    static CONV_PLANES: RefCell<PaddedPlanes> = const { RefCell::new((Vec::new(), None)) };
}

/// Dispatch target of `conv::direct_conv_acc` on the AVX2 tiers (shapes checked; `pairs` as `DirectConv` builds
/// them).
pub(crate) fn direct_conv(
    g: &super::conv::ConvGeometry,
    pairs: &[i32],
    x: &[u8],
    pad_code: u8,
    bias: &[i32],
    out: &mut [i32],
) {
    let (oh, ow) = (g.oh(), g.ow());
    if oh == 0 || ow == 0 {
        return;
    }
    let hp = g.h + 2 * g.pad_h;
    // Widest read: group start round_up(ow, 8) - 8, pair offset kw - 1, 8 lanes plus the pair's second element.
    let wp = ow.div_ceil(8) * 8 + g.kw + 1;
    let mut run = |(planes, layout): &mut PaddedPlanes| {
        // Interior values are overwritten below; the borders only when the layout or the pad code changed.
        let key = (g.c_in, g.h, g.w, g.pad_h, g.pad_w, wp, pad_code);
        if *layout != Some(key) {
            planes.clear();
            planes.resize(g.c_in * hp * wp, i16::from(pad_code));
            *layout = Some(key);
        }
        for ic in 0..g.c_in {
            for y in 0..g.h {
                let src = &x[(ic * g.h + y) * g.w..][..g.w];
                let dst = &mut planes[(ic * hp + y + g.pad_h) * wp + g.pad_w..][..g.w];
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = i16::from(s);
                }
            }
        }
        let mut c0 = 0;
        while c0 < g.c_out {
            let cb = (g.c_out - c0).min(super::conv::MAX_CHANNEL_BLOCK);
            // SAFETY: AVX2 was detected (dispatch); `planes` holds c_in * hp * wp i16 with wp covering every read
            // (see `direct_block__avx2`); pairs hold c_out * c_in * kh * kx_pairs; out holds c_out * oh * ow.
            unsafe {
                let f = match cb {
                    12 => direct_block__avx2::<12>,
                    11 => direct_block__avx2::<11>,
                    10 => direct_block__avx2::<10>,
                    9 => direct_block__avx2::<9>,
                    8 => direct_block__avx2::<8>,
                    7 => direct_block__avx2::<7>,
                    6 => direct_block__avx2::<6>,
                    5 => direct_block__avx2::<5>,
                    4 => direct_block__avx2::<4>,
                    3 => direct_block__avx2::<3>,
                    2 => direct_block__avx2::<2>,
                    _ => direct_block__avx2::<1>,
                };
                f(g, hp, wp, planes, pairs, c0, bias, out);
            }
            c0 += cb;
        }
    };
    CONV_PLANES.with(|cell| match cell.try_borrow_mut() {
        Ok(mut planes) => run(&mut planes),
        Err(_) => run(&mut (Vec::new(), None)),
    })
}

/// Output channels `c0..c0 + CB` of a direct convolution, 8 output columns at a time (see `kernels::conv`).
///
/// # Safety
/// AVX2 must be available; `planes` is `[c_in][hp][wp]` with `wp >= round_up(ow, 8) + kw + 1`; `pairs` and `out`
/// as `direct_conv` documents; `c0 + CB <= c_out`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn direct_block__avx2<const CB: usize>(
    g: &super::conv::ConvGeometry,
    hp: usize,
    wp: usize,
    planes: &[i16],
    pairs: &[i32],
    c0: usize,
    bias: &[i32],
    out: &mut [i32],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let (oh, ow) = (g.oh(), g.ow());
        let kxp = g.kw.div_ceil(2);
        // Distance between the same (ic, ky, pair) of consecutive channels.
        let cstride = g.c_in * g.kh * kxp;
        let wbase = pairs.as_ptr().add(c0 * cstride);
        let mut biasv = [_mm256_setzero_si256(); CB];
        for (c, b) in biasv.iter_mut().enumerate() {
            *b = _mm256_set1_epi32(bias[c0 + c]);
        }
        let mut tail = [0i32; 8];
        for oy in 0..oh {
            for ox0 in (0..ow).step_by(8) {
                let mut acc = biasv;
                for ic in 0..g.c_in {
                    for ky in 0..g.kh {
                        // Lane j of group ox0 reads columns ox0 + j + 2p and + 1 of padded row oy + ky: at most
                        // round_up(ow, 8) - 1 + kw < wp.
                        let row = planes.as_ptr().add((ic * hp + oy + ky) * wp + ox0);
                        let wrow = wbase.add((ic * g.kh + ky) * kxp);
                        for p in 0..kxp {
                            let lo = _mm_loadu_si128(row.add(2 * p) as *const __m128i);
                            let hi = _mm_loadu_si128(row.add(2 * p + 1) as *const __m128i);
                            let pv = _mm256_set_m128i(
                                _mm_unpackhi_epi16(lo, hi),
                                _mm_unpacklo_epi16(lo, hi),
                            );
                            for (c, a) in acc.iter_mut().enumerate() {
                                let wv = _mm256_set1_epi32(*wrow.add(c * cstride + p));
                                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pv, wv));
                            }
                        }
                    }
                }
                let lanes = (ow - ox0).min(8);
                for (c, a) in acc.iter().enumerate() {
                    let dst = out.as_mut_ptr().add(((c0 + c) * oh + oy) * ow + ox0);
                    if lanes == 8 {
                        _mm256_storeu_si256(dst as *mut __m256i, *a);
                    } else {
                        _mm256_storeu_si256(tail.as_mut_ptr() as *mut __m256i, *a);
                        std::ptr::copy_nonoverlapping(tail.as_ptr(), dst, lanes);
                    }
                }
            }
        }
    }
}

/// Channels accumulated together by [`quad_channels__avx2`] (two accumulators each, 16 positions).
const QUAD_CHANNEL_BLOCK: usize = 6;

/// Dispatch target of `conv::direct_conv_acc_wide` for the u8 quad scheme (see `conv::Quads`; shapes checked):
/// `out` is `[c_out][blocks * 16]`, position `oy * wp + ox`.
pub(crate) fn direct_conv_quads(
    g: &super::conv::ConvGeometry,
    q: &super::conv::Quads,
    x: &[u8],
    pad_code: u8,
    bias: &[i32],
    out: &mut [i32],
) {
    let (_, wp) = g.padded();
    let stride = q.blocks.len() * 16;
    let nq = q.len() / 4;
    let len = q.span;
    with_scratch(|s| {
        s.quad_bias.clear();
        s.quad_bias.extend(
            bias.iter()
                .zip(&q.bias_fix)
                .map(|(&b, &f)| b.wrapping_add(f)),
        );
        let dims = (g.c_in, g.h, g.w);
        s.quad_planes
            .fill(x, dims, (g.pad_h, g.pad_w), wp, len, pad_code);
        s.quad_panel.resize(nq * 64, 0);
        for (b, block) in q.blocks.iter().enumerate() {
            // SAFETY: AVX2 was detected (dispatch); each read is 16 bytes from a segment base plus a tap offset,
            // inside `q.span` = `len` (see `Quads::span`); 1 <= block.len <= 3; the panel holds nq quads of
            // 64 bytes; out holds c_out rows of `stride` (checked).
            unsafe {
                build_quads__avx2(
                    q,
                    &s.quad_planes.data,
                    &block.segments[..block.len],
                    &mut s.quad_panel,
                );
                let mut c0 = 0;
                while c0 < g.c_out {
                    let cb = (g.c_out - c0).min(QUAD_CHANNEL_BLOCK);
                    let f = match cb {
                        6 => quad_channels__avx2::<6>,
                        5 => quad_channels__avx2::<5>,
                        4 => quad_channels__avx2::<4>,
                        3 => quad_channels__avx2::<3>,
                        2 => quad_channels__avx2::<2>,
                        _ => quad_channels__avx2::<1>,
                    };
                    f(
                        &s.quad_panel,
                        &q.weights[c0 * nq..(c0 + cb) * nq],
                        &s.quad_bias[c0..c0 + cb],
                        out.as_mut_ptr().add(c0 * stride + b * 16),
                        stride,
                    );
                    c0 += cb;
                }
            }
        }
    })
}

/// Interleaves the taps of every quad for one block of 16 positions into `panel` (64 bytes per quad): 32 bytes
/// of `[position][4 taps]` for positions 0-3 and 8-11, then 32 for 4-7 and 12-15 (the order the in-lane unpacks
/// give), complemented where flipped. `segments` are `(base, first lane)` of the rows the block spans: a tap's
/// lanes from a segment's first lane on read `planes[base + off..]`, later segments overriding earlier ones.
///
/// # Safety
/// AVX2 must be available; `planes[base + off..][..16]` must exist for every segment and offset of `q`; `panel`
/// holds `q.len() * 16` bytes; `segments` is not empty.
#[target_feature(enable = "avx2")]
unsafe fn build_quads__avx2(
    q: &super::conv::Quads,
    planes: &[u8],
    segments: &[(usize, usize)],
    panel: &mut [u8],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        // One instance per segment count, so the blends unroll.
        match segments.len() {
            1 => build_quads_n__avx2::<0>(q, planes, segments, panel),
            2 => build_quads_n__avx2::<1>(q, planes, segments, panel),
            _ => build_quads_n__avx2::<2>(q, planes, segments, panel),
        }
    }
}

/// [`build_quads__avx2`] for `1 + EXTRA` segments.
///
/// # Safety
/// As [`build_quads__avx2`], with `segments.len() == 1 + EXTRA`.
#[target_feature(enable = "avx2")]
unsafe fn build_quads_n__avx2<const EXTRA: usize>(
    q: &super::conv::Quads,
    planes: &[u8],
    segments: &[(usize, usize)],
    panel: &mut [u8],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let lanes = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let mut rest = [(std::ptr::null::<u8>(), _mm_setzero_si128()); EXTRA];
        for (r, &(base, lane)) in rest.iter_mut().zip(&segments[1..]) {
            // Lanes at or past the segment's first lane (lane <= 15).
            *r = (
                planes.as_ptr().add(base),
                _mm_cmpgt_epi8(lanes, _mm_set1_epi8(lane as i8 - 1)),
            );
        }
        let base = planes.as_ptr().add(segments[0].0);
        for ((offs, &xor), dst) in q
            .offsets
            .chunks_exact(4)
            .zip(&q.xor)
            .zip(panel.chunks_exact_mut(64))
        {
            // The 16 positions of a tap zero-extended to words; two taps' words merged by a shift and an or give the
            // byte pairs (fewer shuffles than byte unpacks, which the shuffle ports bound).
            let tap = |o: usize| {
                let mut v = _mm_loadu_si128(base.add(o) as *const __m128i);
                for &(b, mask) in &rest {
                    v = _mm_blendv_epi8(v, _mm_loadu_si128(b.add(o) as *const __m128i), mask);
                }
                _mm256_cvtepu8_epi16(v)
            };
            let pair = |a: usize, b: usize| _mm256_or_si256(tap(a), _mm256_slli_epi16::<8>(tap(b)));
            let (u01, u23) = (pair(offs[0], offs[1]), pair(offs[2], offs[3]));
            let m = _mm256_set1_epi32(xor);
            let lo = _mm256_xor_si256(_mm256_unpacklo_epi16(u01, u23), m);
            let hi = _mm256_xor_si256(_mm256_unpackhi_epi16(u01, u23), m);
            _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, lo);
            _mm256_storeu_si256(dst.as_mut_ptr().add(32) as *mut __m256i, hi);
        }
    }
}

/// `CB` channels of one 16-position block: `out[c * stride + i] = bias[c] + sum over quads of the 4 products`,
/// `weights` being `[CB][quads]` quads.
///
/// # Safety
/// AVX2 must be available; `panel` holds `weights.len() / CB` quads of 64 bytes; `out` points to `CB` rows of
/// `stride` i32 with 16 writable at each.
#[target_feature(enable = "avx2")]
unsafe fn quad_channels__avx2<const CB: usize>(
    panel: &[u8],
    weights: &[i32],
    bias: &[i32],
    out: *mut i32,
    stride: usize,
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let nq = weights.len() / CB;
        let ones = _mm256_set1_epi16(1);
        let mut lo = [_mm256_setzero_si256(); CB];
        let mut hi = [_mm256_setzero_si256(); CB];
        for c in 0..CB {
            lo[c] = _mm256_set1_epi32(bias[c]);
            hi[c] = lo[c];
        }
        for (qi, quad) in panel.chunks_exact(64).take(nq).enumerate() {
            let a = _mm256_loadu_si256(quad.as_ptr() as *const __m256i);
            let b = _mm256_loadu_si256(quad.as_ptr().add(32) as *const __m256i);
            for c in 0..CB {
                // Exact: the plan makes every pair of effective weights safe, so vpmaddubsw never saturates.
                let wv = _mm256_set1_epi32(*weights.get_unchecked(c * nq + qi));
                lo[c] =
                    _mm256_add_epi32(lo[c], _mm256_madd_epi16(_mm256_maddubs_epi16(a, wv), ones));
                hi[c] =
                    _mm256_add_epi32(hi[c], _mm256_madd_epi16(_mm256_maddubs_epi16(b, wv), ones));
            }
        }
        for c in 0..CB {
            let dst = out.add(c * stride);
            _mm256_storeu_si256(
                dst as *mut __m256i,
                _mm256_permute2x128_si256::<0x20>(lo[c], hi[c]),
            );
            _mm256_storeu_si256(
                dst.add(8) as *mut __m256i,
                _mm256_permute2x128_si256::<0x31>(lo[c], hi[c]),
            );
        }
    }
}

/// Dispatch target of `conv::max_pool_2x2_row` on the AVX2 tiers (lengths checked).
pub(crate) fn max_pool_2x2_row(a: &[u8], b: &[u8], out: &mut [u8]) {
    // SAFETY: reached only on the AVX2 tiers, which `Isa::is_available` detected; a and b hold 2 * out.len().
    unsafe { max_pool_2x2_row__avx2(a, b, out) }
}

/// 16 outputs per step: the vertical max of 32 codes, then the max of each byte pair (the high byte shifted onto
/// the low one within 16-bit lanes), packed back to bytes.
///
/// # Safety
/// AVX2 must be available; `a` and `b` hold at least `2 * out.len()` codes.
#[target_feature(enable = "avx2")]
unsafe fn max_pool_2x2_row__avx2(a: &[u8], b: &[u8], out: &mut [u8]) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
    // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
    unsafe {
        let n = out.len();
        let low = _mm256_set1_epi16(0xff);
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: 2i + 32 <= 2n <= a.len(), b.len(); i + 16 <= n = out.len().
            let va = _mm256_loadu_si256(a.as_ptr().add(2 * i) as *const __m256i);
            let vb = _mm256_loadu_si256(b.as_ptr().add(2 * i) as *const __m256i);
            let v = _mm256_max_epu8(va, vb);
            let m = _mm256_and_si256(_mm256_max_epu8(v, _mm256_srli_epi16::<8>(v)), low);
            let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi16(m, m));
            _mm_storeu_si128(
                out.as_mut_ptr().add(i) as *mut __m128i,
                _mm256_castsi256_si128(packed),
            );
            i += 16;
        }
        super::conv::max_pool_2x2_row_reference(&a[2 * i..], &b[2 * i..], &mut out[i..]);
    }
}
