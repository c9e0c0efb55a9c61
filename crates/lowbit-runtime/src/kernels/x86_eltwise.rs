//! AVX2 element-wise kernels of [`super::eltwise`] (arithmetic and the exactness argument there). Single-threaded;
//! 32 codes per step, the tail through the scalar reference. Measured on 64 KiB of codes (thread CPU time, shared
//! 2-core Zen3, `tests/kernels_graph_timing.rs`): Add 0.13 ns per code (23x the reference), Rescale 0.12 (11x), Lut
//! 0.15 (2.8x).
// Kernel names follow STYLE.md: `<op>__<isa>`.
#![allow(non_snake_case)]
use super::eltwise::{reference, AddQuant, RescaleQuant};
use std::arch::x86_64::*;

/// Dispatch target of `eltwise::add_u8_with` on the AVX2 tiers (lengths and parameters checked).
pub(crate) fn add_u8(a: &[u8], b: &[u8], q: &AddQuant, out: &mut [u8]) {
    assert!(a.len() == out.len() && b.len() == out.len());
    // SAFETY: reached only on the AVX2 tiers, which `Isa::is_available` detected; lengths asserted above.
    unsafe { add_u8__avx2(a, b, q, out) }
}

/// Dispatch target of `eltwise::rescale_u8_with` on the AVX2 tiers (lengths and parameters checked).
pub(crate) fn rescale_u8(x: &[u8], q: &RescaleQuant, out: &mut [u8]) {
    assert!(x.len() == out.len());
    // SAFETY: as in `add_u8`.
    unsafe { rescale_u8__avx2(x, q, out) }
}

/// Dispatch target of `eltwise::lut_u8_with` on the AVX2 tiers.
pub(crate) fn lut_u8(x: &[u8], table: &[u8; 256], out: &mut [u8]) {
    assert!(x.len() == out.len());
    // SAFETY: AVX2 detected (dispatch); `x` readable and `out` writable for `out.len()` codes, and they cannot
    // overlap (a shared and a mutable borrow).
    unsafe { lut_u8__avx2(table, x.as_ptr(), out.as_mut_ptr(), out.len()) }
}

/// Dispatch target of `eltwise::lut_u8_in_place_with` on the AVX2 tiers.
pub(crate) fn lut_u8_in_place(data: &mut [u8], table: &[u8; 256]) {
    let p = data.as_mut_ptr();
    // SAFETY: AVX2 detected (dispatch); source and destination are the same `data.len()` codes, which
    // `lut_u8__avx2` allows (each block is loaded before it is stored).
    unsafe { lut_u8__avx2(table, p, p, data.len()) }
}

/// The output stage shared by Add and Rescale, broadcast: the multiplier pair, rounding constant and shift, the
/// output zero point and the clamp bounds.
struct FixedPoint16 {
    mults: __m256i,
    round: __m256i,
    count: __m128i,
    zero_point: __m256i,
    qmin: __m256i,
    qmax: __m256i,
}

impl FixedPoint16 {
    /// `(m_a, m_b)` in `[0, 32767]`, `shift` in `0..=30`, zero point and bounds in `0..=255` (all validated).
    ///
    /// # Safety
    /// AVX2 must be available (the intrinsics read no memory).
    #[target_feature(enable = "avx2")]
    unsafe fn new(m_a: i32, m_b: i32, shift: u32, zero_point: i32, qmin: i32, qmax: i32) -> Self {
        let round = if shift == 0 { 0 } else { 1i32 << (shift - 1) };
        Self {
            mults: _mm256_set1_epi32((m_a as u32 | (m_b as u32) << 16) as i32),
            round: _mm256_set1_epi32(round),
            count: _mm_cvtsi32_si128(shift as i32),
            zero_point: _mm256_set1_epi32(zero_point),
            qmin: _mm256_set1_epi8(qmin as u8 as i8),
            qmax: _mm256_set1_epi8(qmax as u8 as i8),
        }
    }

    /// For 16 code differences `da`, `db` (i16 in `[-255, 255]`, element order 0..16): `zp + rshift_round(da * m_a
    /// + db * m_b, shift)` as 16 saturated i16 in element order. The i32 sums are below `2^24 + 2^29` in magnitude
    /// (module doc of `eltwise`), so nothing wraps.
    ///
    /// # Safety
    /// AVX2 must be available (register arithmetic only).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn half(&self, da: __m256i, db: __m256i) -> __m256i {
        // unpacklo/hi work per 128-bit lane: `lo` holds elements 0..4 and 8..12, `hi` 4..8 and 12..16, and the
        // saturating pack below puts them back in order.
        let lo = _mm256_madd_epi16(_mm256_unpacklo_epi16(da, db), self.mults);
        let hi = _mm256_madd_epi16(_mm256_unpackhi_epi16(da, db), self.mults);
        let lo = _mm256_sra_epi32(_mm256_add_epi32(lo, self.round), self.count);
        let hi = _mm256_sra_epi32(_mm256_add_epi32(hi, self.round), self.count);
        _mm256_packs_epi32(
            _mm256_add_epi32(lo, self.zero_point),
            _mm256_add_epi32(hi, self.zero_point),
        )
    }

    /// 32 codes from two [`FixedPoint16::half`] results (elements 0..16 and 16..32): saturate to `[0, 255]`,
    /// restore the element order across lanes, clamp to `[qmin, qmax]`.
    ///
    /// # Safety
    /// AVX2 must be available (register arithmetic only).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes(&self, r0: __m256i, r1: __m256i) -> __m256i {
        let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(r0, r1));
        _mm256_max_epu8(_mm256_min_epu8(packed, self.qmax), self.qmin)
    }
}

/// Zero-extends the low (`HIGH == 0`) or high 16 codes of `v` to i16 and subtracts `zp`.
///
/// # Safety
/// AVX2 must be available (register arithmetic only).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn diff16<const HIGH: i32>(v: __m256i, zp: __m256i) -> __m256i {
    _mm256_sub_epi16(
        _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<HIGH>(v)),
        zp,
    )
}

/// Residual Add, 32 codes per step (module doc of `eltwise`).
///
/// # Safety
/// AVX2 must be available; `a`, `b` and `out` have equal lengths; `q` passed `AddQuant::validate`.
#[target_feature(enable = "avx2")]
unsafe fn add_u8__avx2(a: &[u8], b: &[u8], q: &AddQuant, out: &mut [u8]) {
    // SAFETY: the caller upholds this function's `# Safety` contract, which covers every access below.
    unsafe {
        let n = out.len();
        let p = q.params;
        let stage = FixedPoint16::new(
            p.multiplier_a,
            p.multiplier_b,
            p.shift,
            q.zero_point_out,
            q.qmin,
            q.qmax,
        );
        let zpa = _mm256_set1_epi16(q.zero_point_a as i16);
        let zpb = _mm256_set1_epi16(q.zero_point_b as i16);
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n, the length of all three slices.
            let va = _mm256_loadu_si256(a.as_ptr().add(i) as *const __m256i);
            let vb = _mm256_loadu_si256(b.as_ptr().add(i) as *const __m256i);
            let r0 = stage.half(diff16::<0>(va, zpa), diff16::<0>(vb, zpb));
            let r1 = stage.half(diff16::<1>(va, zpa), diff16::<1>(vb, zpb));
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, stage.codes(r0, r1));
            i += 32;
        }
        reference::add_u8(&a[i..], &b[i..], q, &mut out[i..]);
    }
}

/// Rescale, 32 codes per step: Add's stage with each difference paired with 0 and `m_b = 0`.
///
/// # Safety
/// AVX2 must be available; `x` and `out` have equal lengths; `q` passed `RescaleQuant::validate`.
#[target_feature(enable = "avx2")]
unsafe fn rescale_u8__avx2(x: &[u8], q: &RescaleQuant, out: &mut [u8]) {
    // SAFETY: the caller upholds this function's `# Safety` contract, which covers every access below.
    unsafe {
        let n = out.len();
        let p = q.params;
        let stage = FixedPoint16::new(p.multiplier, 0, p.shift, q.zero_point_out, q.qmin, q.qmax);
        let zp = _mm256_set1_epi16(q.zero_point_in as i16);
        let zero = _mm256_setzero_si256();
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n, the length of both slices.
            let v = _mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i);
            let r0 = stage.half(diff16::<0>(v, zp), zero);
            let r1 = stage.half(diff16::<1>(v, zp), zero);
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, stage.codes(r0, r1));
            i += 32;
        }
        reference::rescale_u8(&x[i..], q, &mut out[i..]);
    }
}

/// Table lookup, 32 codes per step: the 16 sub-tables `table[16j..16j + 16]` (broadcast to both lanes) are looked
/// up by the low nibble with `vpshufb`, then a tree of `vpblendvb` picks the sub-table by bits 4, 5, 6 and 7 of the
/// code (each moved to its byte's top bit by a 16-bit left shift of 3, 2, 1 and 0; bits crossing into the next
/// byte land below its top bit). 16 lookups + 15 blends + 4 shifts and masks per 32 codes.
///
/// Kept because it beats the scalar loop, which is bound by one table load per code: 0.15 against 0.42 ns per code
/// (2.8x) on 64 KiB of codes, thread CPU time on the shared 2-core Zen3 (`tests/kernels_graph_timing.rs`).
///
/// # Safety
/// AVX2 must be available; `src` is readable and `dst` writable for `n` bytes; they are either the same pointer
/// or do not overlap.
#[target_feature(enable = "avx2")]
unsafe fn lut_u8__avx2(table: &[u8; 256], src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: the caller upholds this function's `# Safety` contract, which covers every access below.
    unsafe {
        let mut sub = [_mm256_setzero_si256(); 16];
        for (j, s) in sub.iter_mut().enumerate() {
            *s = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                table.as_ptr().add(16 * j) as *const __m128i
            ));
        }
        let low = _mm256_set1_epi8(0x0f);
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n; the block is loaded before it is stored, so src == dst is fine.
            let x = _mm256_loadu_si256(src.add(i) as *const __m256i);
            let idx = _mm256_and_si256(x, low);
            let mut v = [_mm256_setzero_si256(); 16];
            for (vj, s) in v.iter_mut().zip(&sub) {
                *vj = _mm256_shuffle_epi8(*s, idx);
            }
            let m4 = _mm256_slli_epi16::<3>(x);
            let mut w = [_mm256_setzero_si256(); 8];
            for (j, wj) in w.iter_mut().enumerate() {
                *wj = _mm256_blendv_epi8(v[2 * j], v[2 * j + 1], m4);
            }
            let m5 = _mm256_slli_epi16::<2>(x);
            let mut u = [_mm256_setzero_si256(); 4];
            for (j, uj) in u.iter_mut().enumerate() {
                *uj = _mm256_blendv_epi8(w[2 * j], w[2 * j + 1], m5);
            }
            let m6 = _mm256_slli_epi16::<1>(x);
            let s0 = _mm256_blendv_epi8(u[0], u[1], m6);
            let s1 = _mm256_blendv_epi8(u[2], u[3], m6);
            _mm256_storeu_si256(dst.add(i) as *mut __m256i, _mm256_blendv_epi8(s0, s1, x));
            i += 32;
        }
        while i < n {
            // SAFETY: i < n.
            *dst.add(i) = table[*src.add(i) as usize];
            i += 1;
        }
    }
}
