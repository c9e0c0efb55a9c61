//! AVX2 grouped / depthwise convolution of [`super::depthwise`] (scheme and exactness argument there).
//! Single-threaded.
// Kernel names follow STYLE.md: `<op>__<isa>`.
#![allow(non_snake_case)]
use super::depthwise::{GroupedConvGeometry, PhasePlanes, TapPairs};
use std::arch::x86_64::*;
use std::cell::RefCell;

/// The widened phase planes and the `(c_in, h, w, ph, pw, sw)` their zero borders were written for.
type Planes = (Vec<i16>, Option<[usize; 6]>);

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
        let key = [g.c_in, g.h, g.w, g.padding.0, g.padding.1, g.stride.1];
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
/// widened codes per step, stride 2 as 16 even and 16 odd codes per 32 input bytes (the low and high bytes of each
/// 16-bit lane), other strides element by element.
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
    let (ph, pw, sw, w) = (g.padding.0, g.padding.1, g.stride.1, g.w);
    let zp = i16::from(zero_point_in);
    let zpv = _mm256_set1_epi16(zp);
    let low = _mm256_set1_epi16(0xff);
    for ic in 0..g.c_in {
        for y in 0..g.h {
            let src = &x[(ic * g.h + y) * w..][..w];
            let at = |ix: usize| layout.offset(g, ic, y + ph, ix);
            let mut j = 0;
            match sw {
                1 => {
                    let dst = planes[at(pw)..][..w].as_mut_ptr();
                    while j + 16 <= w {
                        // SAFETY: j + 16 <= w, the length of `src` and of the destination row segment.
                        let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                            src.as_ptr().add(j) as *const __m128i
                        ));
                        _mm256_storeu_si256(dst.add(j) as *mut __m256i, _mm256_sub_epi16(v, zpv));
                        j += 16;
                    }
                }
                2 => {
                    // Input column 2t lands at `even + t`, 2t + 1 at `odd + t` (their own phases).
                    let even = planes.as_mut_ptr().add(at(pw));
                    let odd = planes.as_mut_ptr().add(at(pw + 1));
                    while j + 32 <= w {
                        // SAFETY: 32 codes of `src`; columns pw + j .. pw + j + 32 of the row, 16 in each phase.
                        let v = _mm256_loadu_si256(src.as_ptr().add(j) as *const __m256i);
                        let e = _mm256_sub_epi16(_mm256_and_si256(v, low), zpv);
                        let o = _mm256_sub_epi16(_mm256_srli_epi16::<8>(v), zpv);
                        _mm256_storeu_si256(even.add(j / 2) as *mut __m256i, e);
                        _mm256_storeu_si256(odd.add(j / 2) as *mut __m256i, o);
                        j += 32;
                    }
                }
                _ => {}
            }
            for (jj, &v) in src.iter().enumerate().skip(j) {
                planes[at(pw + jj)] = i16::from(v) - zp;
            }
        }
    }
}

/// Every output channel's rows, 16 outputs per step: per tap pair, two 16-element loads at the pair's offsets,
/// `vpunpck{l,h}wd` and `vpmaddwd` with the broadcast weight pair. The low accumulator then holds outputs 0-3 and
/// 8-11, the high one 4-7 and 12-15 (unpack works per 128-bit lane); `vperm2i128` restores the order.
///
/// Reads: output `(oy, ox)` of tap `(icg, ky, kx)` is element `offset + oy * sh * sw * wq + ox` with `offset` of
/// padded row `ky`, column `kx`; within a row the element index is at most `(ow - 1) + (kw - 1) / sw + 15 <=
/// (wp - 1) / sw + 15 < wq + 15` for the discarded lanes of the last block, so reads end within the 16 slack
/// elements past the planes.
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
    let (oh, ow) = (g.oh(), g.ow());
    let ppc = pairs.pairs_per_channel;
    let row_step = g.stride.0 * g.stride.1 * pairs.planes.wq;
    let mut tail = [0i32; 16];
    for (oc, &bias_c) in bias.iter().enumerate() {
        let offs = &pairs.offsets[oc * ppc..][..ppc];
        let ws = &pairs.weights[oc * ppc..][..ppc];
        let b = _mm256_set1_epi32(bias_c);
        for oy in 0..oh {
            let base = planes.as_ptr().add(oy * row_step);
            let orow = out.as_mut_ptr().add((oc * oh + oy) * ow);
            for ox0 in (0..ow).step_by(16) {
                let p = base.add(ox0);
                let (mut lo, mut hi) = (b, b);
                for (o, &wpair) in offs.iter().zip(ws) {
                    // SAFETY: within the planes and their slack (doc above).
                    let a0 = _mm256_loadu_si256(p.add(o[0]) as *const __m256i);
                    let a1 = _mm256_loadu_si256(p.add(o[1]) as *const __m256i);
                    let wv = _mm256_set1_epi32(wpair);
                    lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(a0, a1), wv));
                    hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(a0, a1), wv));
                }
                let first = _mm256_permute2x128_si256::<0x20>(lo, hi);
                let second = _mm256_permute2x128_si256::<0x31>(lo, hi);
                let lanes = (ow - ox0).min(16);
                let dst = orow.add(ox0);
                if lanes == 16 {
                    _mm256_storeu_si256(dst as *mut __m256i, first);
                    _mm256_storeu_si256(dst.add(8) as *mut __m256i, second);
                } else {
                    _mm256_storeu_si256(tail.as_mut_ptr() as *mut __m256i, first);
                    _mm256_storeu_si256(tail.as_mut_ptr().add(8) as *mut __m256i, second);
                    std::ptr::copy_nonoverlapping(tail.as_ptr(), dst, lanes);
                }
            }
        }
    }
}
