//! AVX2 pooling kernels of [`super::pool`] (scheme there). Single-threaded.
// Kernel names follow STYLE.md: `<op>__<isa>`.
#![allow(non_snake_case)]
use super::pool::{avg_from_sum, AvgPoolQuant, PoolGeometry};
use std::arch::x86_64::*;

/// Dispatch target of `pool::global_avg_pool_u8_with` on the AVX2 tiers (lengths and parameters checked).
pub(crate) fn global_avg_pool_u8(x: &[u8], n: usize, q: &AvgPoolQuant, out: &mut [u8]) {
    assert!(n > 0 && x.len() == n * out.len());
    for (p, o) in out.iter_mut().enumerate() {
        // SAFETY: AVX2 detected (dispatch); plane p is x[p * n..(p + 1) * n].
        let sum = unsafe { plane_sum__avx2(x, p * n, n) };
        *o = avg_from_sum(sum as i64, n, q);
    }
}

/// `0x00` then `0xff` bytes: the 32 bytes from offset `t` keep the last `t` lanes of a load.
static TAIL_MASK: [u8; 64] = {
    let mut m = [0u8; 64];
    let mut i = 32;
    while i < 64 {
        m[i] = 0xff;
        i += 1;
    }
    m
};

/// `sum_i x[start + i]` over `i < n` (at most `255 * n`), 32 codes per `vpsadbw` against zero. A tail of `t` codes
/// is the 32-byte load ending at the plane's end with its first `32 - t` lanes masked off (those codes belong to the
/// plane itself or the one before), unless fewer than 32 bytes precede the end; then it is summed one by one.
///
/// # Safety
/// AVX2 must be available; `start + n <= x.len()`.
#[target_feature(enable = "avx2")]
unsafe fn plane_sum__avx2(x: &[u8], start: usize, n: usize) -> u64 {
    // SAFETY: the caller upholds this function's `# Safety` contract, which covers every access below.
    unsafe {
        let zero = _mm256_setzero_si256();
        let mut acc = zero;
        let end = start + n;
        let mut i = start;
        while i + 32 <= end {
            // SAFETY: i + 32 <= end <= x.len().
            let v = _mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i);
            acc = _mm256_add_epi64(acc, _mm256_sad_epu8(v, zero));
            i += 32;
        }
        let t = end - i;
        let mut rest = 0u64;
        if t > 0 && end >= 32 {
            // SAFETY: end - 32 >= 0 and end <= x.len(); TAIL_MASK[t..t + 32] is in bounds for t < 32.
            let v = _mm256_loadu_si256(x.as_ptr().add(end - 32) as *const __m256i);
            let mask = _mm256_loadu_si256(TAIL_MASK.as_ptr().add(t) as *const __m256i);
            acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_and_si256(v, mask), zero));
        } else {
            rest = x[i..end].iter().map(|&v| u64::from(v)).sum();
        }
        let mut lanes = [0u64; 4];
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc);
        lanes.iter().sum::<u64>() + rest
    }
}

/// Dispatch target of `pool::max_pool_u8_with` on the AVX2 tiers (geometry validated, lengths checked).
pub(crate) fn max_pool_u8(x: &[u8], planes: usize, g: &PoolGeometry, out: &mut [u8]) {
    let (oh, ow) = (g.oh(), g.ow());
    assert!(x.len() == planes * g.h * g.w && out.len() == planes * oh * ow);
    let (pw, sw) = (g.padding.1, g.stride.1);
    // Stride-1 maxima are needed at columns 0..(ow - 1) * sw + 1 of the padded row, computed 32 at a time: the
    // padded row then needs that many (rounded up to 32) plus kw - 1 columns.
    let wide = ((ow - 1) * sw + 1).div_ceil(32) * 32;
    let row_len = (wide + g.kw).max(pw + g.w);
    // Zeros left and right of the input columns are code 0, which a max over a non-empty window ignores.
    let mut vrow = vec![0u8; row_len];
    let mut maxima = vec![0u8; wide];
    for p in 0..planes {
        let plane = &x[p * g.h * g.w..][..g.h * g.w];
        for oy in 0..oh {
            let (lo, hi) = PoolGeometry::span(oy, g.stride.0, g.padding.0, g.kh, g.h);
            let dst = &mut out[(p * oh + oy) * ow..][..ow];
            // SAFETY: AVX2 detected (dispatch); rows lo..hi lie in the plane (span clips to h); `vrow` holds
            // pw + w columns and `row_len >= wide + kw`; `maxima` holds `wide >= (ow - 1) * sw + 1`.
            unsafe {
                vertical_max__avx2(plane, g.w, lo, hi, &mut vrow[pw..pw + g.w]);
                horizontal_max__avx2(&vrow, g.kw, &mut maxima);
                if sw == 1 {
                    dst.copy_from_slice(&maxima[..ow]);
                } else if sw == 2 {
                    even_bytes__avx2(&maxima, dst);
                } else {
                    for (ox, d) in dst.iter_mut().enumerate() {
                        *d = maxima[ox * sw];
                    }
                }
            }
        }
    }
}

/// `dst[x] = max_{lo <= y < hi} plane[y * w + x]` (`lo < hi`), 32 columns per `vpmaxub`.
///
/// # Safety
/// AVX2 must be available; rows `lo..hi` of `w` codes lie in `plane`; `dst` holds `w` codes.
#[target_feature(enable = "avx2")]
unsafe fn vertical_max__avx2(plane: &[u8], w: usize, lo: usize, hi: usize, dst: &mut [u8]) {
    // SAFETY: the caller upholds this function's `# Safety` contract, which covers every access below.
    unsafe {
        dst.copy_from_slice(&plane[lo * w..][..w]);
        for y in lo + 1..hi {
            let src = &plane[y * w..][..w];
            let mut j = 0;
            while j + 32 <= w {
                // SAFETY: j + 32 <= w, the length of `src` and `dst`.
                let a = _mm256_loadu_si256(src.as_ptr().add(j) as *const __m256i);
                let d = _mm256_loadu_si256(dst.as_ptr().add(j) as *const __m256i);
                _mm256_storeu_si256(
                    dst.as_mut_ptr().add(j) as *mut __m256i,
                    _mm256_max_epu8(a, d),
                );
                j += 32;
            }
            for (d, &s) in dst[j..].iter_mut().zip(&src[j..]) {
                *d = (*d).max(s);
            }
        }
    }
}

/// `maxima[j] = max_{kx < kw} row[j + kx]` for every `j < maxima.len()` (a multiple of 32), 32 per step.
///
/// # Safety
/// AVX2 must be available; `row.len() >= maxima.len() + kw - 1`; `maxima.len()` is a multiple of 32.
#[target_feature(enable = "avx2")]
unsafe fn horizontal_max__avx2(row: &[u8], kw: usize, maxima: &mut [u8]) {
    // SAFETY: the caller upholds this function's `# Safety` contract, which covers every access below.
    unsafe {
        for j in (0..maxima.len()).step_by(32) {
            // SAFETY: j + kx + 32 <= maxima.len() + kw - 1 <= row.len().
            let mut m = _mm256_loadu_si256(row.as_ptr().add(j) as *const __m256i);
            for kx in 1..kw {
                m = _mm256_max_epu8(
                    m,
                    _mm256_loadu_si256(row.as_ptr().add(j + kx) as *const __m256i),
                );
            }
            _mm256_storeu_si256(maxima.as_mut_ptr().add(j) as *mut __m256i, m);
        }
    }
}

/// `dst[i] = src[2 * i]`, 16 per step: the low byte of each 16-bit lane, packed with `vpackuswb`.
///
/// # Safety
/// AVX2 must be available; `src.len() >= 2 * dst.len() - 1`.
#[target_feature(enable = "avx2")]
unsafe fn even_bytes__avx2(src: &[u8], dst: &mut [u8]) {
    // SAFETY: the caller upholds this function's `# Safety` contract, which covers every access below.
    unsafe {
        let low = _mm256_set1_epi16(0xff);
        let mut i = 0;
        while i + 16 <= dst.len() && 2 * i + 32 <= src.len() {
            // SAFETY: 2i + 32 <= src.len(), i + 16 <= dst.len().
            let v = _mm256_and_si256(
                _mm256_loadu_si256(src.as_ptr().add(2 * i) as *const __m256i),
                low,
            );
            let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi16(v, v));
            _mm_storeu_si128(
                dst.as_mut_ptr().add(i) as *mut __m128i,
                _mm256_castsi256_si128(packed),
            );
            i += 16;
        }
        for (j, d) in dst.iter_mut().enumerate().skip(i) {
            *d = src[2 * j];
        }
    }
}
