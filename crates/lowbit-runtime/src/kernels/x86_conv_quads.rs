//! AVX-512 VNNI kernel of [`super::conv_planes`] ([`Scheme::Quads`]; scheme and exactness argument there).
//! Single-threaded; scratch (the channel-quad planes, the output vectors, per-channel requantization constants) is
//! thread-local and only grown. The output stage runs in 16 lanes: requantization with AVX-512's 64-bit arithmetic
//! shift (`vpsraq`), the fused Add with `vpmaddwd` as on AVX2, masked narrowing stores of the written lanes.
// Kernel names follow STYLE.md: `<op>__<isa>`.
#![allow(non_snake_case)]
use super::conv_planes::{PlaneConv, QuadVector, Residual, Scheme};
use super::eltwise::AddQuant;
use super::x86_conv_planes::deinterleave_u32__avx2;
use super::OutputParams;
use crate::qparams::Requant;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Lanes of a vector: 16 i32 accumulators of one zmm.
const LANES: usize = 16;

#[derive(Default)]
struct Scratch {
    planes: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The output codes' base, shared by the two tasks of a split sample (each writes other bytes).
#[derive(Clone, Copy)]
struct OutPtr(*mut u8);
// SAFETY: the tasks holding copies write disjoint bytes (see the split in `plane_conv_requant`) and the slice it
// points into outlives them (`workers::join` returns before the caller's borrow ends).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Dispatch target of `conv_planes::plane_conv_requant` for quads on the AVX-512 VNNI tier (lengths and
/// parameters checked there); with `split`, the output vectors in two halves on two rayon tasks.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plane_conv_requant(
    conv: &PlaneConv,
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
        let l = &conv.layout;
        assert!(
            conv.scheme() == Scheme::Quads
                && x.len() == g.c_in * g.h * g.w
                && bias.len() == g.c_out
                && out.len() == g.c_out * g.oh() * g.ow()
                && residual.is_none_or(|r| r.codes.len() == out.len())
        );
        if s.planes.len() < l.len() {
            s.planes.resize(l.len(), 0);
        }
        // SAFETY: AVX-512 VNNI (so AVX2) detected (dispatch); `x` holds the sample (asserted) and `planes` its
        // layout.
        unsafe { build_planes__avx2(conv, x, pad_code, &mut s.planes[..l.len()]) };
        // Every read of every vector, discarded lanes included, stays inside the planes and their slack.
        let last_tap = conv.taps.iter().copied().max().unwrap_or(0);
        let last_base = conv.vectors.iter().map(|v| v.base).max().unwrap_or(0);
        assert!((l.chunks.max(1) - 1) * l.plane + last_base + last_tap + LANES <= l.len());
        let planes = &s.planes[..];
        let run_part = |vectors: &[QuadVector], out: OutPtr| {
            // SAFETY: AVX-512 VNNI detected; the planes hold the sample in `conv`'s layout, every vector's reads
            // stay within them (asserted above), the blocks' weights are `conv`'s, and `out` (and the residual)
            // hold `c_out * oh * ow` codes (asserted). Vectors write disjoint outputs (their segments partition
            // the output positions), every channel of a vector by one task, so no byte is written twice.
            unsafe { run_blocks__avx512vnni(conv, planes, vectors, bias, p, residual, out.0) }
        };
        let out = OutPtr(out.as_mut_ptr());
        let half = conv.vectors.len() / 4 * 2;
        if split && half > 0 {
            let (a, b) = conv.vectors.split_at(half);
            crate::workers::join(|| run_part(a, out), || run_part(b, out));
        } else {
            run_part(&conv.vectors, out);
        }
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => run(&mut s),
        Err(_) => run(&mut Scratch::default()),
    })
}

/// Writes the sample `x` into `dst` in `conv`'s quad layout: channels `4i..4i + 4` of a position as the bytes of
/// one element (missing channels 0), padded positions `pad_code` in the present channels' bytes, and the slack
/// past the last plane the pad word.
///
/// # Safety
/// AVX2 must be available; `x` holds `c_in * h * w` codes and `dst` exactly `conv.layout.len()` elements.
#[target_feature(enable = "avx2")]
unsafe fn build_planes__avx2(conv: &PlaneConv, x: &[u8], pad_code: u8, dst: &mut [u32]) {
    let g = conv.geometry();
    let l = conv.layout;
    let (ph, pw) = g.padding;
    let sw = g.stride.1;
    let plane_in = g.h * g.w;
    let zeros = vec![0u8; g.w];
    let mut wide = vec![0u32; if sw == 1 { 0 } else { g.w + 2 * pw }];
    for i in 0..l.chunks {
        // The four channels' planes (a missing channel reads zeros) and the pad word.
        let mut chans = [&zeros[..]; 4];
        let mut pad = 0u32;
        for (q, c) in chans.iter_mut().enumerate() {
            if let Some(p) = x.get((4 * i + q) * plane_in..(4 * i + q + 1) * plane_in) {
                *c = p;
                pad |= u32::from(pad_code) << (8 * q);
            }
        }
        let planes = &mut dst[i * l.plane..(i + 1) * l.plane];
        for (y, row) in planes.chunks_exact_mut(l.row).enumerate() {
            let iy = match y.checked_sub(ph) {
                Some(iy) if iy < g.h => iy,
                _ => {
                    row.fill(pad);
                    continue;
                }
            };
            let mut src = [&zeros[..]; 4];
            for (s, c) in src.iter_mut().zip(chans) {
                if c.len() == plane_in {
                    *s = &c[iy * g.w..(iy + 1) * g.w];
                }
            }
            if sw == 1 {
                row[..pw].fill(pad);
                // SAFETY: AVX2 available (this function's contract); `row[pw..pw + w]` exists because the row holds
                // every padded column, and every source row holds `w` codes.
                unsafe { interleave4_row__avx2(&src, &mut row[pw..pw + g.w]) };
                row[pw + g.w..].fill(pad);
            } else {
                wide[..pw].fill(pad);
                // SAFETY: as above; `wide` holds the `w + 2 pw` padded columns.
                unsafe { interleave4_row__avx2(&src, &mut wide[pw..pw + g.w]) };
                wide[pw + g.w..].fill(pad);
                let mut done = 0;
                if sw == 2 {
                    let (even, odd) = row.split_at_mut(l.phase_len);
                    // SAFETY: AVX2 available (this function's contract); slices bounds-checked by the callee.
                    done = unsafe { deinterleave_u32__avx2(&wide, even, odd) };
                }
                for (phase, prow) in row.chunks_exact_mut(l.phase_len).enumerate() {
                    for (j, e) in prow.iter_mut().enumerate().skip(done) {
                        *e = wide.get(j * sw + phase).copied().unwrap_or(pad);
                    }
                }
            }
        }
    }
    let tail = l.chunks * l.plane;
    dst[tail..].fill(u32::from(pad_code) * 0x0101_0101);
}

/// `dst[j] = a[j] | b[j] << 8 | c[j] << 16 | d[j] << 24` for the rows `[a, b, c, d]`, 16 columns per step.
///
/// # Safety
/// AVX2 must be available; every row holds `dst.len()` codes.
#[target_feature(enable = "avx2")]
unsafe fn interleave4_row__avx2(src: &[&[u8]; 4], dst: &mut [u32]) {
    let n = dst.len();
    assert!(src.iter().all(|r| r.len() >= n));
    let mut j = 0;
    // SAFETY: every 16-byte load reads `row[j..j + 16]` with `j + 16 <= n <= row.len()`, and the four stores write
    // `dst[j..j + 16]`.
    unsafe {
        while j + 16 <= n {
            let ld = |q: usize| _mm_loadu_si128(src[q].as_ptr().add(j) as *const __m128i);
            let (a, b, c, d) = (ld(0), ld(1), ld(2), ld(3));
            let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
            let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
            let o = dst.as_mut_ptr().add(j) as *mut __m128i;
            _mm_storeu_si128(o, _mm_unpacklo_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(o.add(1), _mm_unpackhi_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(o.add(2), _mm_unpacklo_epi16(ab_hi, cd_hi));
            _mm_storeu_si128(o.add(3), _mm_unpackhi_epi16(ab_hi, cd_hi));
            j += 16;
        }
    }
    for (k, e) in dst.iter_mut().enumerate().skip(j) {
        *e = u32::from_le_bytes([src[0][k], src[1][k], src[2][k], src[3][k]]);
    }
}

/// Every tile of `conv`'s blocks at `vectors`, channel-major (a block's weights stay in L1 while its tiles pass).
///
/// # Safety
/// AVX-512 F/BW/VNNI must be available; `planes` holds a sample in `conv`'s layout with every read of `vectors`
/// inside it, `vectors` are some of that sample's output vectors, `p` passed `check_output`, `bias` holds `c_out`
/// values, and `out` (and the residual's codes) hold `c_out * oh * ow` codes, the bytes of `vectors`
/// written by no one else meanwhile.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
unsafe fn run_blocks__avx512vnni(
    conv: &PlaneConv,
    planes: &[u32],
    vectors: &[QuadVector],
    bias: &[i32],
    p: &OutputParams,
    residual: Option<Residual<'_>>,
    out: *mut u8,
) {
    let g = conv.geometry();
    let cx = TileCx {
        planes: planes.as_ptr(),
        plane: conv.layout.plane,
        chunks: conv.layout.chunks,
        taps: &conv.taps,
        positions: g.oh() * g.ow(),
        // SAFETY: AVX-512 F available (contract); register arithmetic only.
        stage: unsafe { Stage16::new(p) },
        // SAFETY: as above; the Add's parameters were validated by the entry point.
        add: residual.map(|r| (unsafe { AddStage16::new(r.quant) }, r.codes.as_ptr())),
        p,
        bias,
        out,
    };
    macro_rules! tiles {
        ($b:expr, $w:expr, $v:expr, $V:literal) => {
            match $b.len {
                12 => cx.tile::<12, $V>($b.first, $w, $v),
                11 => cx.tile::<11, $V>($b.first, $w, $v),
                10 => cx.tile::<10, $V>($b.first, $w, $v),
                9 => cx.tile::<9, $V>($b.first, $w, $v),
                8 => cx.tile::<8, $V>($b.first, $w, $v),
                7 => cx.tile::<7, $V>($b.first, $w, $v),
                6 => cx.tile::<6, $V>($b.first, $w, $v),
                5 => cx.tile::<5, $V>($b.first, $w, $v),
                4 => cx.tile::<4, $V>($b.first, $w, $v),
                3 => cx.tile::<3, $V>($b.first, $w, $v),
                2 => cx.tile::<2, $V>($b.first, $w, $v),
                _ => cx.tile::<1, $V>($b.first, $w, $v),
            }
        };
    }
    for b in &conv.blocks {
        let w = conv.weights[b.at..].as_ptr();
        let mut two = vectors.chunks_exact(2);
        for v in &mut two {
            // SAFETY: this function's contract covers every block, vector and channel used by the tile.
            unsafe { tiles!(b, w, [v[0], v[1]], 2) }
        }
        if let [v] = two.remainder() {
            // SAFETY: as above.
            unsafe { tiles!(b, w, [*v], 1) }
        }
    }
}

/// What every tile of one sample shares.
struct TileCx<'a> {
    planes: *const u32,
    plane: usize,
    chunks: usize,
    taps: &'a [usize],
    positions: usize,
    stage: Stage16,
    add: Option<(AddStage16, *const u8)>,
    p: &'a OutputParams<'a>,
    bias: &'a [i32],
    out: *mut u8,
}

impl TileCx<'_> {
    /// Channels `first..first + OB` at the `V` output vectors `vs`: accumulators from the bias, `taps x chunks`
    /// steps of `V` loads, `OB` weight broadcasts and `OB x V` `vpdpbusd`, then the 16-lane output stage and
    /// masked stores of each vector's written lanes.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI must be available; `w` points at the block's `taps * chunks * OB` weight quads; the
    /// vectors' reads (`base + tap + i * plane + 0..16` for every tap and chunk `i`) lie in the planes; channels
    /// `first..first + OB` exist in `p`'s requantization, `bias` and the output.
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const OB: usize, const V: usize>(
        &self,
        first: usize,
        w: *const u32,
        vs: [QuadVector; V],
    ) {
        // SAFETY: the reads and writes below stay within the bounds this function's contract lists.
        unsafe {
            let mut acc = [[_mm512_setzero_si512(); V]; OB];
            accumulate__avx512vnni::<OB, V>(
                self.planes,
                self.plane,
                self.chunks,
                self.taps,
                vs.map(|v| v.base),
                w,
                self.bias.as_ptr().add(first),
                &mut acc,
            );
            for (o, row) in acc.iter().enumerate() {
                let c = first + o;
                let rq = Rq16::new(self.p.requant_for(c));
                let out = self.out.wrapping_add(c * self.positions);
                for (v, &x) in vs.iter().zip(row) {
                    let mut q = self.stage.codes(x, &rq);
                    if let Some((add, codes)) = &self.add {
                        // The other input's codes at the written lanes (0 elsewhere), masked loads that touch
                        // only those bytes.
                        let codes = codes.wrapping_add(c * self.positions);
                        let mut other = _mm_setzero_si128();
                        for s in v.segs() {
                            let z = _mm512_maskz_loadu_epi8(
                                u64::from(s.mask),
                                codes.wrapping_offset(s.offset) as *const i8,
                            );
                            other = _mm_or_si128(other, _mm512_castsi512_si128(z));
                        }
                        q = add.apply(q, _mm512_cvtepu8_epi32(other));
                    }
                    for s in v.segs() {
                        // Codes lie in 0..=255: the saturating narrowing stores them unchanged, at the written
                        // lanes only.
                        _mm512_mask_cvtusepi32_storeu_epi8(
                            out.wrapping_offset(s.offset) as *mut i8,
                            s.mask,
                            q,
                        );
                    }
                }
            }
        }
    }
}

/// The accumulation of [`TileCx::tile`], apart so that its `OB x V` accumulators stay in registers through the
/// loops.
///
/// # Safety
/// AVX-512 F/BW/VNNI must be available; as [`TileCx::tile`]: `w` points at `taps.len() * chunks * OB` weight
/// quads, every read `planes + base + tap + i * plane + 0..16` (`i < chunks`) is in bounds, `bias` holds `OB`
/// values.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn accumulate__avx512vnni<const OB: usize, const V: usize>(
    planes: *const u32,
    plane: usize,
    chunks: usize,
    taps: &[usize],
    bases: [usize; V],
    w: *const u32,
    bias: *const i32,
    out: &mut [[__m512i; V]; OB],
) {
    // SAFETY: the reads stay within the bounds this function's contract lists.
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); V]; OB];
        for (o, row) in acc.iter_mut().enumerate() {
            *row = [_mm512_set1_epi32(*bias.add(o)); V];
        }
        let mut wp = w;
        for &t in taps {
            let mut a = bases.map(|b| planes.add(b + t));
            for _ in 0..chunks {
                let mut av = [_mm512_setzero_si512(); V];
                for v in 0..V {
                    av[v] = _mm512_loadu_si512(a[v] as *const _);
                    a[v] = a[v].add(plane);
                }
                for row in acc.iter_mut() {
                    let wb = _mm512_set1_epi32(std::ptr::read_unaligned(wp as *const i32));
                    wp = wp.add(1);
                    for v in 0..V {
                        row[v] = _mm512_dpbusd_epi32(row[v], av[v], wb);
                    }
                }
            }
        }
        *out = acc;
    }
}

/// One channel's requantization in 16 lanes: the multiplier, the rounding constant `2^(s - 1)` and the shift
/// `s = 31 + shift` (in `1..=62` for a validated [`Requant`]).
struct Rq16 {
    mult: __m512i,
    round: __m512i,
    count: __m128i,
}

impl Rq16 {
    /// # Safety
    /// AVX-512 F must be available; `rq` passed [`Requant::validate`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn new(rq: Requant) -> Self {
        let s = (31 + rq.shift) as i64;
        Self {
            mult: _mm512_set1_epi32(rq.multiplier),
            round: _mm512_set1_epi64(1i64 << (s - 1)),
            count: _mm_cvtsi64_si128(s),
        }
    }
}

/// The zero point and clamp bounds of an output stage in 16 lanes.
struct Stage16 {
    lo_t: __m512i,
    hi_t: __m512i,
    zp: __m512i,
    qmin: __m512i,
    qmax: __m512i,
}

impl Stage16 {
    /// # Safety
    /// AVX-512 F must be available.
    #[target_feature(enable = "avx512f")]
    unsafe fn new(p: &OutputParams) -> Self {
        let zp = p.zero_point as i64;
        let lo_t = (p.qmin as i64 - zp - 1).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        let hi_t = (p.qmax as i64 - zp + 1).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        Self {
            lo_t: _mm512_set1_epi32(lo_t),
            hi_t: _mm512_set1_epi32(hi_t),
            zp: _mm512_set1_epi32(p.zero_point),
            qmin: _mm512_set1_epi32(p.qmin),
            qmax: _mm512_set1_epi32(p.qmax),
        }
    }

    /// `qparams::requantize` of the 16 accumulators `x`, as i32 lanes in `[qmin, qmax]`: the product in i64
    /// lanes (even and odd accumulators), `(v + 2^(s - 1)) >> s` with the arithmetic shift (`|v| <= 2^62`, so the
    /// sum fits), its low 32 bits (the reference's `as i32`), clamped to `[qmin - zp - 1, qmax - zp + 1]` so that
    /// adding the zero point cannot overflow, then clamped to `[qmin, qmax]`: the reference's i64 clamp.
    ///
    /// # Safety
    /// AVX-512 F must be available.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn codes(&self, x: __m512i, rq: &Rq16) -> __m512i {
        let ve = _mm512_mul_epi32(x, rq.mult);
        let vo = _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), rq.mult);
        let ve = _mm512_sra_epi64(_mm512_add_epi64(ve, rq.round), rq.count);
        let vo = _mm512_sra_epi64(_mm512_add_epi64(vo, rq.round), rq.count);
        let t = _mm512_mask_blend_epi32(0xAAAA, ve, _mm512_slli_epi64::<32>(vo));
        let t = _mm512_min_epi32(_mm512_max_epi32(t, self.lo_t), self.hi_t);
        let q = _mm512_add_epi32(t, self.zp);
        _mm512_min_epi32(_mm512_max_epi32(q, self.qmin), self.qmax)
    }
}

/// The Add of [`Residual`] in 16 i32 lanes (as `x86_conv_planes`' 8-lane stage): the multiplier pair, rounding
/// constant and shift, the zero points and the clamp bounds.
struct AddStage16 {
    mults: __m512i,
    round: __m512i,
    count: __m128i,
    zp_a: __m512i,
    zp_b: __m512i,
    zp_out: __m512i,
    qmin: __m512i,
    qmax: __m512i,
}

impl AddStage16 {
    /// # Safety
    /// AVX-512 F must be available; `q` passed [`AddQuant::validate`].
    #[target_feature(enable = "avx512f")]
    unsafe fn new(q: &AddQuant) -> Self {
        let prm = q.params;
        let round = if prm.shift == 0 {
            0
        } else {
            1i32 << (prm.shift - 1)
        };
        Self {
            mults: _mm512_set1_epi32(
                (prm.multiplier_a as u32 | (prm.multiplier_b as u32) << 16) as i32,
            ),
            round: _mm512_set1_epi32(round),
            count: _mm_cvtsi32_si128(prm.shift as i32),
            zp_a: _mm512_set1_epi32(q.zero_point_a),
            zp_b: _mm512_set1_epi32(q.zero_point_b),
            zp_out: _mm512_set1_epi32(q.zero_point_out),
            qmin: _mm512_set1_epi32(q.qmin),
            qmax: _mm512_set1_epi32(q.qmax),
        }
    }

    /// `add_code(a, b)` for 16 lanes of codes `a` and `b` (each in `0..=255`): the differences (in `[-255, 255]`)
    /// as an i16 pair per lane, one `vpmaddwd` with `(m_a, m_b)` (exact, below `2^24`), the rounding shift, the
    /// zero point and the clamp, all in i32 as `eltwise`'s module doc allows.
    ///
    /// # Safety
    /// AVX-512 F/BW must be available.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn apply(&self, a: __m512i, b: __m512i) -> __m512i {
        let da = _mm512_sub_epi32(a, self.zp_a);
        let db = _mm512_sub_epi32(b, self.zp_b);
        let pair = _mm512_mask_blend_epi16(0xAAAA_AAAA, da, _mm512_slli_epi32::<16>(db));
        let v = _mm512_madd_epi16(pair, self.mults);
        let v = _mm512_sra_epi32(_mm512_add_epi32(v, self.round), self.count);
        let q = _mm512_add_epi32(v, self.zp_out);
        _mm512_min_epi32(_mm512_max_epi32(q, self.qmin), self.qmax)
    }
}
