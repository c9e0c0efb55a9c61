//! AVX2 kernel of [`super::conv_planes`] (scheme and exactness argument there). Single-threaded; scratch (the
//! channel-pair planes, the output vectors, per-channel requantization constants) is thread-local and only grown.
// Kernel names follow STYLE.md: `<op>__<isa>`.
#![allow(non_snake_case)]
use super::conv_planes::{PlaneConv, Residual};
use super::eltwise::AddQuant;
use super::x86::{pack_codes8, OutputStage8, RequantConsts8};
use super::OutputParams;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// 8 outputs of one output row: `base` is their first input element under tap `(0, 0)` in plane 0, `pos` their
/// first output index (`oy * ow + ox`), `valid` how many of the 8 lanes are real outputs (the rest are discarded).
#[derive(Debug, Clone, Copy, Default)]
struct Vector {
    base: usize,
    pos: usize,
    valid: usize,
}

#[derive(Default)]
struct Scratch {
    planes: Vec<u32>,
    vectors: Vec<Vector>,
    requant: Vec<RequantConsts8>,
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

/// Dispatch target of `conv_planes::plane_conv_requant` on the AVX2 tiers (lengths and parameters checked there);
/// with `split`, the output vectors in two halves on two rayon tasks.
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
            x.len() == g.c_in * g.h * g.w
                && bias.len() == g.c_out
                && out.len() == g.c_out * g.oh() * g.ow()
                && residual.is_none_or(|r| r.codes.len() == out.len())
        );
        if s.planes.len() < l.len() {
            s.planes.resize(l.len(), 0);
        }
        // SAFETY: AVX2 detected (dispatch); `x` holds the sample (asserted) and `planes` its layout.
        unsafe { build_planes__avx2(conv, x, pad_code, &mut s.planes[..l.len()]) };
        s.vectors.clear();
        let (oh, ow) = (g.oh(), g.ow());
        for oy in 0..oh {
            for ox in (0..ow).step_by(8) {
                s.vectors.push(Vector {
                    base: l.base(&g, oy, ox),
                    pos: oy * ow + ox,
                    valid: (ow - ox).min(8),
                });
            }
        }
        s.requant.clear();
        for c in 0..g.c_out {
            // SAFETY: AVX2 detected (dispatch); register arithmetic only.
            s.requant
                .push(unsafe { RequantConsts8::broadcast(p.requant_for(c)) });
        }
        let (planes, requant) = (&s.planes[..], &s.requant[..]);
        let run_part = |vectors: &[Vector], out: OutPtr| {
            // SAFETY: AVX2 detected; the planes hold the sample in `conv`'s layout, every vector's reads stay
            // within them (`PlaneLayout`'s bounds), the blocks' weights are `conv`'s, and `out` (and the residual)
            // hold `c_out * oh * ow` codes (asserted). The two halves of a split write the outputs of disjoint
            // vectors, every channel of a vector by one task, so no byte is written twice.
            unsafe { run_blocks__avx2(conv, planes, vectors, requant, bias, p, residual, out.0) }
        };
        let out = OutPtr(out.as_mut_ptr());
        // Half the vectors each, at an even index (the tiles take them in pairs).
        let half = s.vectors.len() / 4 * 2;
        if split && half > 0 {
            let (a, b) = s.vectors.split_at(half);
            crate::workers::join(|| run_part(a, out), || run_part(b, out));
        } else {
            run_part(&s.vectors, out);
        }
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => run(&mut s),
        Err(_) => run(&mut Scratch::default()),
    })
}

/// Writes the sample `x` into `dst` in `conv`'s plane layout: channel pairs as `x[2i] | x[2i + 1] << 16`
/// (`x[2i]` alone for an odd last channel), padded positions and the slack past each row `pad_code` in both
/// halves. Rows are widened 8 or 16 columns at a time; other strides then copy each column phase out of the
/// widened row.
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
    let mut wide = vec![0u32; if sw == 1 { 0 } else { g.w + 2 * pw }];
    for i in 0..l.chunks {
        let (a, b, pad) = channel_pair(x, plane_in, i, pad_code);
        let planes = &mut dst[i * l.plane..(i + 1) * l.plane];
        for (y, row) in planes.chunks_exact_mut(l.row).enumerate() {
            let Some(iy) = y.checked_sub(ph).filter(|&iy| iy < g.h) else {
                row.fill(pad);
                continue;
            };
            let ra = &a[iy * g.w..(iy + 1) * g.w];
            let rb = b.map(|b| &b[iy * g.w..(iy + 1) * g.w]);
            if sw == 1 {
                row[..pw].fill(pad);
                // SAFETY: AVX2 available (this function's contract); `row[pw..pw + w]` exists because the row holds
                // every padded column.
                unsafe { interleave_row__avx2(ra, rb, &mut row[pw..pw + g.w]) };
                row[pw + g.w..].fill(pad);
            } else {
                // The padded row once, then each column phase a strided copy of it.
                wide[..pw].fill(pad);
                // SAFETY: as above; `wide` holds the `w + 2 pw` padded columns.
                unsafe { interleave_row__avx2(ra, rb, &mut wide[pw..pw + g.w]) };
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
}

/// `even[j] = src[2j]`, `odd[j] = src[2j + 1]` for `j` below the returned count (a multiple of 8, as far as
/// 16-element blocks of `src` and both outputs reach).
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn deinterleave_u32__avx2(
    src: &[u32],
    even: &mut [u32],
    odd: &mut [u32],
) -> usize {
    let mut j = 0;
    while 2 * j + 16 <= src.len() && j + 8 <= even.len() && j + 8 <= odd.len() {
        // SAFETY: reads `src[2j..2j + 16]`, writes `even[j..j + 8]` and `odd[j..j + 8]`, all in bounds (loop test).
        unsafe {
            let a = _mm256_loadu_si256(src.as_ptr().add(2 * j) as *const __m256i);
            let b = _mm256_loadu_si256(src.as_ptr().add(2 * j + 8) as *const __m256i);
            // Per 128-bit lane: [a0 a2 b0 b2] and [a1 a3 b1 b3]; then the 64-bit quarters in order 0, 2, 1, 3.
            let (af, bf) = (_mm256_castsi256_ps(a), _mm256_castsi256_ps(b));
            let e = _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(af, bf));
            let o = _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(af, bf));
            let e = _mm256_permute4x64_epi64::<0b11_01_10_00>(e);
            let o = _mm256_permute4x64_epi64::<0b11_01_10_00>(o);
            _mm256_storeu_si256(even.as_mut_ptr().add(j) as *mut __m256i, e);
            _mm256_storeu_si256(odd.as_mut_ptr().add(j) as *mut __m256i, o);
        }
        j += 8;
    }
    j
}

/// Channel pair `i` of a sample `x` of `plane_in`-code channels: its two channels (the second absent for an odd
/// last channel) and the pad word of its planes (`pad_code` in both halves, or in the low one alone).
pub(crate) fn channel_pair(
    x: &[u8],
    plane_in: usize,
    i: usize,
    pad_code: u8,
) -> (&[u8], Option<&[u8]>, u32) {
    let a = &x[2 * i * plane_in..(2 * i + 1) * plane_in];
    let b = x.get((2 * i + 1) * plane_in..(2 * i + 2) * plane_in);
    let high = if b.is_some() { pad_code } else { 0 };
    (a, b, u32::from(pad_code) | u32::from(high) << 16)
}

/// `dst[j] = a[j] | b[j] << 16` (`b` absent: 0), 16 columns per step, then 8.
///
/// # Safety
/// AVX2 must be available; `a` (and `b`) hold `dst.len()` codes.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn interleave_row__avx2(a: &[u8], b: Option<&[u8]>, dst: &mut [u32]) {
    let n = dst.len();
    let zero = [0u8; 16];
    let mut j = 0;
    // SAFETY: every 16-byte load reads `a[j..j + 16]` (or `b`'s, or the zero array) with `j + 16 <= n`, and every
    // store writes `dst[j..j + 16]`.
    unsafe {
        while j + 16 <= n {
            let va = _mm_loadu_si128(a.as_ptr().add(j) as *const __m128i);
            let vb = match b {
                Some(b) => _mm_loadu_si128(b.as_ptr().add(j) as *const __m128i),
                None => _mm_loadu_si128(zero.as_ptr() as *const __m128i),
            };
            let (a16, b16) = (_mm256_cvtepu8_epi16(va), _mm256_cvtepu8_epi16(vb));
            // Per 128-bit lane: `lo` holds columns 0..4 and 8..12, `hi` 4..8 and 12..16.
            let lo = _mm256_unpacklo_epi16(a16, b16);
            let hi = _mm256_unpackhi_epi16(a16, b16);
            let d = dst.as_mut_ptr().add(j) as *mut __m256i;
            _mm256_storeu_si256(d, _mm256_permute2x128_si256::<0x20>(lo, hi));
            _mm256_storeu_si256(d.add(1), _mm256_permute2x128_si256::<0x31>(lo, hi));
            j += 16;
        }
    }
    if j + 8 <= n {
        // SAFETY: 8-byte loads of `a[j..j + 8]` (and `b`'s, or the zero array), a 32-byte store to `dst[j..j + 8]`.
        unsafe {
            let va = _mm256_cvtepu8_epi32(_mm_loadl_epi64(a.as_ptr().add(j) as *const __m128i));
            let vb = match b {
                Some(b) => {
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(b.as_ptr().add(j) as *const __m128i))
                }
                None => _mm256_setzero_si256(),
            };
            let v = _mm256_or_si256(va, _mm256_slli_epi32::<16>(vb));
            _mm256_storeu_si256(dst.as_mut_ptr().add(j) as *mut __m256i, v);
        }
        j += 8;
    }
    for (k, d) in dst.iter_mut().enumerate().skip(j) {
        *d = u32::from(a[k]) | b.map_or(0, |b| u32::from(b[k]) << 16);
    }
}

/// The Add of [`Residual`] in 8 i32 lanes: the multiplier pair, rounding constant and shift, the zero points
/// and the clamp bounds, broadcast.
pub(crate) struct AddStage8 {
    mults: __m256i,
    round: __m256i,
    count: __m128i,
    zp_a: __m256i,
    zp_b: __m256i,
    zp_out: __m256i,
    qmin: __m256i,
    qmax: __m256i,
}

impl AddStage8 {
    /// # Safety
    /// AVX2 must be available; `q` passed [`AddQuant::validate`].
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn new(q: &AddQuant) -> Self {
        let prm = q.params;
        let round = if prm.shift == 0 {
            0
        } else {
            1i32 << (prm.shift - 1)
        };
        Self {
            mults: _mm256_set1_epi32(
                (prm.multiplier_a as u32 | (prm.multiplier_b as u32) << 16) as i32,
            ),
            round: _mm256_set1_epi32(round),
            count: _mm_cvtsi32_si128(prm.shift as i32),
            zp_a: _mm256_set1_epi32(q.zero_point_a),
            zp_b: _mm256_set1_epi32(q.zero_point_b),
            zp_out: _mm256_set1_epi32(q.zero_point_out),
            qmin: _mm256_set1_epi32(q.qmin),
            qmax: _mm256_set1_epi32(q.qmax),
        }
    }

    /// `add_code(a, b)` for 8 lanes of codes `a` and the 8 codes at `b`: the differences `a - zp_a`, `b - zp_b`
    /// (in `[-255, 255]`) as an i16 pair per lane, one `vpmaddwd` with `(m_a, m_b)` (exact, below `2^24`), the
    /// rounding shift, the zero point and the clamp, all in i32 as `eltwise`'s module doc allows.
    ///
    /// # Safety
    /// AVX2 must be available; `b` is readable for 8 bytes; the lanes of `a` lie in `0..=255`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn apply(&self, a: __m256i, b: *const u8) -> __m256i {
        // SAFETY: `b` readable for 8 bytes (contract).
        let vb = _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(b as *const __m128i) });
        // SAFETY: AVX2 available (contract).
        unsafe { self.apply_i32(a, vb) }
    }

    /// [`AddStage8::apply`] with the other input's 8 codes as i32 lanes `vb` (each in `0..=255`).
    ///
    /// # Safety
    /// AVX2 must be available; the lanes of `a` and `vb` lie in `0..=255`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn apply_i32(&self, a: __m256i, vb: __m256i) -> __m256i {
        let da = _mm256_sub_epi32(a, self.zp_a);
        let db = _mm256_sub_epi32(vb, self.zp_b);
        let pair = _mm256_blend_epi16::<0b1010_1010>(da, _mm256_slli_epi32::<16>(db));
        let v = _mm256_madd_epi16(pair, self.mults);
        let v = _mm256_sra_epi32(_mm256_add_epi32(v, self.round), self.count);
        let q = _mm256_add_epi32(v, self.zp_out);
        _mm256_min_epi32(_mm256_max_epi32(q, self.qmin), self.qmax)
    }
}

/// Every tile of `conv`'s blocks at `vectors`: channel-major (a block's weights stay in L1 while its tiles pass;
/// position-major measured 1.5% slower on ResNet-20's 16-channel layers, whose weights all fit L1).
///
/// # Safety
/// AVX2 must be available; `planes` holds a sample in `conv`'s layout, `vectors` are some of that sample's output
/// vectors, `requant` has one entry per output channel, `bias` `c_out` values, and `out` (and the residual's codes)
/// hold `c_out * oh * ow` codes, the bytes of `vectors` written by no one else meanwhile.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn run_blocks__avx2(
    conv: &PlaneConv,
    planes: &[u32],
    vectors: &[Vector],
    requant: &[RequantConsts8],
    bias: &[i32],
    p: &OutputParams,
    residual: Option<Residual<'_>>,
    out: *mut u8,
) {
    let blocks = &conv.blocks;
    let g = conv.geometry();
    let cx = TileCx {
        planes: planes.as_ptr(),
        plane: conv.layout.plane,
        pairs: conv.layout.chunks,
        taps: &conv.taps,
        positions: g.oh() * g.ow(),
        // SAFETY: AVX2 available (contract); register arithmetic only.
        stage: unsafe { OutputStage8::new(p) },
        // SAFETY: as above; the Add's parameters were validated by the entry point.
        add: residual.map(|r| (unsafe { AddStage8::new(r.quant) }, r.codes.as_ptr())),
        requant,
        bias,
        out,
    };
    for b in blocks {
        let w = conv.weights[b.at..].as_ptr();
        let mut pairs = vectors.chunks_exact(2);
        for v in &mut pairs {
            // SAFETY: this function's contract covers every block, vector and channel used by the tile.
            unsafe {
                match b.len {
                    6 => cx.tile::<6, 2>(b.first, w, [v[0], v[1]]),
                    5 => cx.tile::<5, 2>(b.first, w, [v[0], v[1]]),
                    4 => cx.tile::<4, 2>(b.first, w, [v[0], v[1]]),
                    3 => cx.tile::<3, 2>(b.first, w, [v[0], v[1]]),
                    2 => cx.tile::<2, 2>(b.first, w, [v[0], v[1]]),
                    _ => cx.tile::<1, 2>(b.first, w, [v[0], v[1]]),
                }
            }
        }
        if let [v] = pairs.remainder() {
            // SAFETY: as above.
            unsafe {
                match b.len {
                    6 => cx.tile::<6, 1>(b.first, w, [*v]),
                    5 => cx.tile::<5, 1>(b.first, w, [*v]),
                    4 => cx.tile::<4, 1>(b.first, w, [*v]),
                    3 => cx.tile::<3, 1>(b.first, w, [*v]),
                    2 => cx.tile::<2, 1>(b.first, w, [*v]),
                    _ => cx.tile::<1, 1>(b.first, w, [*v]),
                }
            }
        }
    }
}

/// What every tile of one sample shares.
struct TileCx<'a> {
    planes: *const u32,
    plane: usize,
    pairs: usize,
    taps: &'a [usize],
    positions: usize,
    stage: OutputStage8,
    add: Option<(AddStage8, *const u8)>,
    requant: &'a [RequantConsts8],
    bias: &'a [i32],
    out: *mut u8,
}

impl TileCx<'_> {
    /// Channels `first..first + OB` at the `V` output vectors `vs`: accumulators from the bias, `taps x pairs`
    /// steps of `V` loads, `OB` weight broadcasts and `OB x V` `vpmaddwd` + `vpaddd`, then the output stage.
    ///
    /// # Safety
    /// AVX2 must be available; `w` points at the block's `taps * pairs * OB` weight pairs; the vectors' reads
    /// (`base + tap + i * plane + 0..8` for every tap and pair `i`) lie in the planes; channels
    /// `first..first + OB` exist in `requant`, `bias` and the output.
    #[target_feature(enable = "avx2")]
    unsafe fn tile<const OB: usize, const V: usize>(
        &self,
        first: usize,
        w: *const u32,
        vs: [Vector; V],
    ) {
        // SAFETY: the reads and writes below stay within the bounds this function's contract lists.
        unsafe {
            let mut acc = [[_mm256_setzero_si256(); V]; OB];
            accumulate__avx2::<OB, V>(
                self.planes,
                self.plane,
                self.pairs,
                self.taps,
                vs.map(|v| v.base),
                w,
                self.bias.as_ptr().add(first),
                &mut acc,
            );
            for (o, row) in acc.iter().enumerate() {
                let c = first + o;
                let rq = &self.requant[c];
                for (v, &x) in vs.iter().zip(row) {
                    let at = c * self.positions + v.pos;
                    let mut q = self.stage.codes_i32(x, rq);
                    if let Some((add, codes)) = &self.add {
                        q = if v.valid == 8 {
                            add.apply(q, codes.add(at))
                        } else {
                            let mut tmp = [0u8; 8];
                            std::ptr::copy_nonoverlapping(codes.add(at), tmp.as_mut_ptr(), v.valid);
                            add.apply(q, tmp.as_ptr())
                        };
                    }
                    let bytes = pack_codes8(q);
                    if v.valid == 8 {
                        std::ptr::write_unaligned(self.out.add(at) as *mut i64, bytes);
                    } else {
                        let tmp = bytes.to_le_bytes();
                        std::ptr::copy_nonoverlapping(tmp.as_ptr(), self.out.add(at), v.valid);
                    }
                }
            }
        }
    }
}

/// The accumulation of [`TileCx::tile`], apart so that its `OB x V` accumulators stay in registers through the
/// loops (inlined into the output stage, they were written back to the stack on every step).
///
/// # Safety
/// AVX2 must be available; as [`TileCx::tile`]: `w` points at `taps.len() * pairs * OB` weight pairs, every read
/// `planes + base + tap + i * plane + 0..8` (`i < pairs`) is in bounds, `bias` holds `OB` values.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn accumulate__avx2<const OB: usize, const V: usize>(
    planes: *const u32,
    plane: usize,
    pairs: usize,
    taps: &[usize],
    bases: [usize; V],
    w: *const u32,
    bias: *const i32,
    out: &mut [[__m256i; V]; OB],
) {
    // SAFETY: the reads stay within the bounds this function's contract lists.
    unsafe {
        let mut acc = [[_mm256_setzero_si256(); V]; OB];
        for (o, row) in acc.iter_mut().enumerate() {
            *row = [_mm256_set1_epi32(*bias.add(o)); V];
        }
        let mut wp = w;
        for &t in taps {
            let mut a = bases.map(|b| planes.add(b + t));
            for _ in 0..pairs {
                let mut av = [_mm256_setzero_si256(); V];
                for v in 0..V {
                    av[v] = _mm256_loadu_si256(a[v] as *const __m256i);
                    a[v] = a[v].add(plane);
                }
                for row in acc.iter_mut() {
                    let wb = _mm256_set1_epi32(std::ptr::read_unaligned(wp as *const i32));
                    wp = wp.add(1);
                    for v in 0..V {
                        row[v] = _mm256_add_epi32(row[v], _mm256_madd_epi16(av[v], wb));
                    }
                }
            }
        }
        *out = acc;
    }
}
