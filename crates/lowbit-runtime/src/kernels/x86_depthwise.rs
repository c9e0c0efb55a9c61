//! AVX2 grouped / depthwise convolution of [`super::depthwise`] (scheme and exactness argument there).
//! Single-threaded.
// Kernel names follow STYLE.md: `<op>__<isa>`.
#![allow(non_snake_case)]
use super::depthwise::{GroupedConvGeometry, PhasePlanes, TapPairs};
use std::arch::x86_64::*;
use std::cell::RefCell;

/// The widened phase planes and the `(c_in, h, w, ph, pw, sh, sw)` their zero borders were written for.
type Planes = (Vec<i16>, Option<[usize; 7]>);

thread_local! {
    static PLANES: RefCell<Planes> = const { RefCell::new((Vec::new(), None)) };
}

/// Dispatch target of `depthwise::grouped_conv_acc` on the AVX2 tiers (geometry validated, lengths checked,
/// `pairs` built by `TapPairs::new` for `g`).
pub(crate) fn grouped_conv_acc(
    g: &GroupedConvGeometry,
    pairs: &TapPairs,
    x: &[u8],
    zero_point_in: u8,
    bias: &[i32],
    out: &mut [i32],
) {
    assert!(x.len() == g.c_in * g.h * g.w && bias.len() == g.c_out);
    assert!(
        out.len() == g.c_out * g.oh() * g.ow()
            && pairs.offsets.len() == g.c_out * pairs.pairs_per_channel
    );
    let mut run = |(planes, layout): &mut Planes| {
        // Borders hold x - zp = 0 for every zero point, so they are written only when the layout changes.
        let key = [
            g.c_in,
            g.h,
            g.w,
            g.padding.0,
            g.padding.1,
            g.stride.0,
            g.stride.1,
        ];
        if *layout != Some(key) || planes.len() != pairs.planes.len {
            planes.clear();
            planes.resize(pairs.planes.len, 0);
            *layout = Some(key);
        }
        // SAFETY: AVX2 detected (dispatch); `planes` has the `PhasePlanes` length for `g`, `x` holds the sample;
        // every offset of `pairs` plus the block reads stays inside `planes` (see `grouped_conv_acc__avx2`).
        unsafe {
            fill_planes__avx2(g, &pairs.planes, x, zero_point_in, planes);
            grouped_conv_acc__avx2(g, pairs, planes, bias, out);
        }
    };
    PLANES.with(|cell| match cell.try_borrow_mut() {
        Ok(mut planes) => run(&mut planes),
        Err(_) => run(&mut (Vec::new(), None)),
    })
}

/// Writes `x - zp` as i16 into the interior of the phase planes (`PhasePlanes` layout): unit column stride as 16
/// (then 8) widened codes per step, stride 2 as 16 (then 8) even and odd codes per 32 (16) input bytes, the low and
/// high bytes of each 16-bit lane; the rest, and other strides, one column phase at a time.
///
/// # Safety
/// AVX2 must be available; `x` holds `c_in * h * w` codes, `planes` `layout.len` elements for `g`.
#[target_feature(enable = "avx2")]
unsafe fn fill_planes__avx2(
    g: &GroupedConvGeometry,
    layout: &PhasePlanes,
    x: &[u8],
    zero_point_in: u8,
    planes: &mut [i16],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract, which covers every access below.
    unsafe {
        let (ph, pw, sw, w) = (g.padding.0, g.padding.1, g.stride.1, g.w);
        let zp = i16::from(zero_point_in);
        let (zpv, zpv8) = (_mm256_set1_epi16(zp), _mm_set1_epi16(zp));
        let (low, low8) = (_mm256_set1_epi16(0xff), _mm_set1_epi16(0xff));
        // Offsets of the first input column of each column phase, without divisions in the row loop: column
        // `pw + r + k * sw` of padded row `iy` is element `k` past `at(r)` of that row.
        let (sh, plane) = (g.stride.0, layout.hq * layout.wq);
        let first: Vec<usize> = (0..sw).map(|r| layout.offset(g, 0, 0, pw + r)).collect();
        for ic in 0..g.c_in {
            let (mut row_phase, mut row) = (ph % sh, ph / sh);
            for y in 0..g.h {
                let src = &x[(ic * g.h + y) * w..][..w];
                let row_base = (ic * sh + row_phase) * sw * plane + row * layout.wq;
                let at = |r: usize| row_base + first[r];
                row_phase += 1;
                if row_phase == sh {
                    row_phase = 0;
                    row += 1;
                }
                let mut j = 0;
                match sw {
                    1 => {
                        let dst = planes[at(0)..][..w].as_mut_ptr();
                        while j + 16 <= w {
                            // SAFETY: j + 16 <= w, the length of `src` and of the destination row segment.
                            let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                                src.as_ptr().add(j) as *const __m128i
                            ));
                            _mm256_storeu_si256(
                                dst.add(j) as *mut __m256i,
                                _mm256_sub_epi16(v, zpv),
                            );
                            j += 16;
                        }
                        if j + 8 <= w {
                            // SAFETY: as above, for 8 codes.
                            let v = _mm_cvtepu8_epi16(_mm_loadl_epi64(
                                src.as_ptr().add(j) as *const __m128i
                            ));
                            _mm_storeu_si128(dst.add(j) as *mut __m128i, _mm_sub_epi16(v, zpv8));
                            j += 8;
                        }
                    }
                    2 => {
                        // Input column 2t lands at `even + t`, 2t + 1 at `odd + t` (each in its column phase).
                        let even = planes.as_mut_ptr().add(at(0));
                        let odd = planes.as_mut_ptr().add(at(1));
                        while j + 32 <= w {
                            // SAFETY: 32 codes of `src`; columns pw + j .. pw + j + 32 of the row, 16 in each phase.
                            let v = _mm256_loadu_si256(src.as_ptr().add(j) as *const __m256i);
                            let e = _mm256_sub_epi16(_mm256_and_si256(v, low), zpv);
                            let o = _mm256_sub_epi16(_mm256_srli_epi16::<8>(v), zpv);
                            _mm256_storeu_si256(even.add(j / 2) as *mut __m256i, e);
                            _mm256_storeu_si256(odd.add(j / 2) as *mut __m256i, o);
                            j += 32;
                        }
                        if j + 16 <= w {
                            // SAFETY: as above, for 16 codes.
                            let v = _mm_loadu_si128(src.as_ptr().add(j) as *const __m128i);
                            let e = _mm_sub_epi16(_mm_and_si128(v, low8), zpv8);
                            let o = _mm_sub_epi16(_mm_srli_epi16::<8>(v), zpv8);
                            _mm_storeu_si128(even.add(j / 2) as *mut __m128i, e);
                            _mm_storeu_si128(odd.add(j / 2) as *mut __m128i, o);
                            j += 16;
                        }
                    }
                    _ => {}
                }
                // Columns j.. (j a multiple of sw): those of one phase are consecutive elements.
                for r in 0..sw.min(w - j) {
                    let base = at(r) + j / sw;
                    for (k, &v) in src[j + r..].iter().step_by(sw).enumerate() {
                        planes[base + k] = i16::from(v) - zp;
                    }
                }
            }
        }
    }
}

/// 16 consecutive outputs of one channel starting at `p` (the planes at the block's first position): per tap pair,
/// two 16-element loads at the pair's offsets, `vpunpck{l,h}wd` and `vpmaddwd` with the broadcast weight pair. The
/// low accumulator then holds outputs 0-3 and 8-11, the high one 4-7 and 12-15 (unpack works per 128-bit lane);
/// `vperm2i128` restores the order. Returns outputs 0-7 and 8-15.
///
/// # Safety
/// AVX2 must be available; `p + offset + 16` stays within the planes and their slack for every offset.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn block16__avx2(
    p: *const i16,
    offs: &[[usize; 2]],
    ws: &[i32],
    bias: __m256i,
) -> [__m256i; 2] {
    // SAFETY: the caller upholds this function's `# Safety` contract, which covers every access below.
    unsafe {
        let (mut lo, mut hi) = (bias, bias);
        for (o, &wpair) in offs.iter().zip(ws) {
            let a0 = _mm256_loadu_si256(p.add(o[0]) as *const __m256i);
            let a1 = _mm256_loadu_si256(p.add(o[1]) as *const __m256i);
            let wv = _mm256_set1_epi32(wpair);
            lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(a0, a1), wv));
            hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(a0, a1), wv));
        }
        [
            _mm256_permute2x128_si256::<0x20>(lo, hi),
            _mm256_permute2x128_si256::<0x31>(lo, hi),
        ]
    }
}

/// Every output channel, in blocks of 16 outputs ([`block16__avx2`]): 16 columns of a row at a time, or on the wide
/// grid (`PhasePlanes::wide`) 16 consecutive positions `oy * wq + ox` into a scratch row, whose real columns are then
/// copied out.
///
/// Reads: tap `(icg, ky, kx)` of output `(oy, ox)` is element `oy * wq + ox` past the tap's offset, which lies in
/// row `ky / sh`, column `kx / sw` of its phase plane. Since `oh - 1 + (kh - 1) / sh <= hq - 1` and `ow - 1 + (kw -
/// 1) / sw <= wq - 1`, a row block's discarded lanes read at most 15 elements past the plane's `hq * wq`, and the
/// wide grid's last block (positions below `oh * wq + 15`) at most `15 + (kw - 1) / sw`: within the next plane or
/// the `16 + kw` slack elements after the last.
///
/// # Safety
/// AVX2 must be available; `planes` is `PhasePlanes::new(g).len` elements filled for this sample; `pairs` built
/// for `g`; `bias` and `out` hold `c_out` and `c_out * oh * ow` elements.
#[target_feature(enable = "avx2")]
unsafe fn grouped_conv_acc__avx2(
    g: &GroupedConvGeometry,
    pairs: &TapPairs,
    planes: &[i16],
    bias: &[i32],
    out: &mut [i32],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract, which covers every access below.
    unsafe {
        let (oh, ow) = (g.oh(), g.ow());
        let ppc = pairs.pairs_per_channel;
        let wq = pairs.planes.wq;
        let mut wide = vec![
            0i32;
            if pairs.planes.wide {
                (oh * wq).div_ceil(16) * 16
            } else {
                16
            }
        ];
        for (oc, &bias_c) in bias.iter().enumerate() {
            let offs = &pairs.offsets[oc * ppc..][..ppc];
            let ws = &pairs.weights[oc * ppc..][..ppc];
            let b = _mm256_set1_epi32(bias_c);
            let oplane = &mut out[oc * oh * ow..][..oh * ow];
            if pairs.planes.wide {
                for (k, chunk) in wide.chunks_exact_mut(16).enumerate() {
                    // SAFETY: reads as the doc above bounds them; the chunk holds 16 i32.
                    let [first, second] = block16__avx2(planes.as_ptr().add(16 * k), offs, ws, b);
                    _mm256_storeu_si256(chunk.as_mut_ptr() as *mut __m256i, first);
                    _mm256_storeu_si256(chunk.as_mut_ptr().add(8) as *mut __m256i, second);
                }
                for (oy, orow) in oplane.chunks_exact_mut(ow).enumerate() {
                    orow.copy_from_slice(&wide[oy * wq..][..ow]);
                }
                continue;
            }
            for (oy, orow) in oplane.chunks_exact_mut(ow).enumerate() {
                for ox0 in (0..ow).step_by(16) {
                    // SAFETY: reads as the doc above bounds them.
                    let [first, second] =
                        block16__avx2(planes.as_ptr().add(oy * wq + ox0), offs, ws, b);
                    let lanes = (ow - ox0).min(16);
                    if lanes == 16 {
                        // SAFETY: ox0 + 16 <= ow, the row's length.
                        _mm256_storeu_si256(orow.as_mut_ptr().add(ox0) as *mut __m256i, first);
                        _mm256_storeu_si256(orow.as_mut_ptr().add(ox0 + 8) as *mut __m256i, second);
                    } else {
                        _mm256_storeu_si256(wide.as_mut_ptr() as *mut __m256i, first);
                        _mm256_storeu_si256(wide.as_mut_ptr().add(8) as *mut __m256i, second);
                        orow[ox0..].copy_from_slice(&wide[..lanes]);
                    }
                }
            }
        }
    }
}
