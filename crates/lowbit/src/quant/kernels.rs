//! Slice kernels for QAT's per-step fake-quantization, exactly equal to the normative scalar arithmetic
//! ([`lowbit_runtime::qparams::fake_quantize`]) but written so LLVM vectorizes them, and compiled twice: once
//! for the baseline target and once with AVX2 (run when [`crate::kernel_tiers::Family::FakeQuant`]'s tier is
//! `avx2`, i.e. unless `LOWBIT_ISA=reference` or the CPU lacks AVX2).
//!
//! Why the vector form is exact: `fake_quantize(x) = (clamp(round(x / s) + zp, qmin, qmax) - zp) * s`.
//! Division is exactly rounded in SIMD as in scalar code. `round` (half away from zero) is monotone and fixes
//! integers, so with integer bounds `clamp(round(q) + zp, qmin, qmax) - zp = clamp(round(q), qmin - zp,
//! qmax - zp)`, which stays in f32 (every value is a small integer, exactly representable); NaN maps to code
//! `zp`, i.e. 0 here, as in `qparams::quantize`. Adding `+0.0` turns a `-0.0` (from rounding e.g. `-0.3`)
//! into the `+0.0` that `(code - zp) as f32` gives. With SSE4.1 / AVX, LLVM lowers `f32::round` to
//! `trunc(q + copysign(0.49999997, q))`, which is exact for every f32; `fake_quant_is_exact_on_ties_and_a_sweep`
//! checks this against `qparams::fake_quantize` over ties, clamps, NaN and a sweep of bit patterns.
//!
//! Sums in f64 keep the sequential order of the scalar code they replace (so results stay bit-identical); only
//! independent groups are interleaved, to hide the add latency.
#[cfg(target_arch = "x86_64")]
use crate::kernel_tiers::Family;
#[cfg(target_arch = "x86_64")]
use lowbit_runtime::isa::Isa;

/// Fake-quantizes one value: `qparams::fake_quantize(x, QParams(scale, zp), qmin, qmax)` with
/// `lo = qmin - zp`, `hi = qmax - zp`; also returns the clamped rounded quotient (the code minus `zp`).
#[inline(always)]
fn fq(x: f32, scale: f32, lo: f32, hi: f32) -> (f32, f32) {
    let r = (x / scale).round();
    let r = if r.is_nan() { 0.0 } else { r };
    let r = r.max(lo).min(hi) + 0.0;
    (r * scale, r)
}

/// Weight fake-quant of one group: writes `out`, returns (zero codes, values with `x / s` not strictly inside
/// `(lo, hi)`: LSQ's clipped count).
#[inline(always)]
fn weight_impl(x: &[f32], scale: f32, lo: f32, hi: f32, out: &mut [f32]) -> (usize, usize) {
    let (mut zeros, mut outside) = (0usize, 0usize);
    for (xc, oc) in x.chunks(1024).zip(out.chunks_mut(1024)) {
        let (mut z, mut o) = (0u32, 0u32);
        for (&v, dst) in xc.iter().zip(oc.iter_mut()) {
            let q = v / scale;
            let (y, r) = fq(v, scale, lo, hi);
            *dst = y;
            z += u32::from(r == 0.0);
            o += u32::from(!(q > lo && q < hi));
        }
        zeros += z as usize;
        outside += o as usize;
    }
    (zeros, outside)
}

/// Activation fake-quant: writes `out` and the STE mask `inside`, returns the clipped count. `mask(v, q)`
/// with `q = v / scale` gives (inside, clipped).
#[inline(always)]
fn act_impl<F: Fn(f32, f32) -> (bool, bool)>(
    x: &[f32],
    scale: f32,
    lo: f32,
    hi: f32,
    out: &mut [f32],
    inside: &mut [bool],
    mask: F,
) -> usize {
    let mut clipped = 0usize;
    for ((xc, oc), ic) in x
        .chunks(1024)
        .zip(out.chunks_mut(1024))
        .zip(inside.chunks_mut(1024))
    {
        let mut c = 0u32;
        for ((&v, dst), ins) in xc.iter().zip(oc.iter_mut()).zip(ic.iter_mut()) {
            let q = v / scale;
            let (y, _) = fq(v, scale, lo, hi);
            *dst = y;
            let (i, cl) = mask(v, q);
            *ins = i;
            c += u32::from(cl);
        }
        clipped += c as usize;
    }
    clipped
}

#[inline(always)]
fn max_abs_impl(x: &[f32]) -> f32 {
    // Max is exact and order-free on non-negative values (abs makes every zero +0), so lanes change nothing.
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    let mut m = tail.iter().fold(0f32, |m, v| m.max(v.abs()));
    for l in lanes {
        m = m.max(l);
    }
    m
}

/// Smallest and largest finite value of `x` (None when there is none): the scalar reference.
fn finite_range_impl(x: &[f32]) -> Option<(f32, f32)> {
    let mut it = x.iter().copied().filter(|v| v.is_finite());
    let first = it.next()?;
    Some(it.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v))))
}

/// [`finite_range_impl`] eight lanes at a time. Min and max are exact and order-free (up to the sign of a
/// zero, which `act::act_qparams` erases), so lanes change nothing; non-finite values become the neutral
/// infinities. LLVM does not vectorize a float min reduction it cannot prove NaN-free, hence intrinsics.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn finite_range_avx2(x: &[f32]) -> Option<(f32, f32)> {
    use std::arch::x86_64::*;
    let inf = _mm256_set1_ps(f32::INFINITY);
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let (mut lo, mut hi) = (inf, ninf);
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        // SAFETY: `c` holds exactly 8 floats; the load is unaligned.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        // |v| < inf is false for infinities and NaN (ordered compare).
        let finite = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, abs_mask), inf);
        lo = _mm256_min_ps(lo, _mm256_blendv_ps(inf, v, finite));
        hi = _mm256_max_ps(hi, _mm256_blendv_ps(ninf, v, finite));
    }
    let (mut l, mut h) = ([0f32; 8], [0f32; 8]);
    // SAFETY: both arrays hold 8 floats.
    unsafe {
        _mm256_storeu_ps(l.as_mut_ptr(), lo);
        _mm256_storeu_ps(h.as_mut_ptr(), hi);
    }
    let (mut l, mut h) = (
        l.into_iter().fold(f32::INFINITY, f32::min),
        h.into_iter().fold(f32::NEG_INFINITY, f32::max),
    );
    if let Some((tl, th)) = finite_range_impl(tail) {
        (l, h) = (l.min(tl), h.max(th));
    }
    (l <= h).then_some((l, h))
}

/// Smallest and largest finite value (None when there is none), equal to the sequential fold up to the sign of
/// a zero.
pub(crate) fn finite_range(x: &[f32]) -> Option<(f32, f32)> {
    #[cfg(target_arch = "x86_64")]
    if Family::FakeQuant.tier() == Isa::Avx2 {
        // SAFETY: fake-quant's tier is avx2 only when the CPU has AVX2 (`kernel_tiers`).
        return unsafe { finite_range_avx2(x) };
    }
    finite_range_impl(x)
}

/// `a` where `take`, else `+0.0`, without a branch (a data-dependent branch here mispredicts half the time).
#[inline(always)]
fn select_or_zero(take: bool, a: f64) -> f64 {
    f64::from_bits(a.to_bits() & u64::from(take).wrapping_neg())
}

/// Sequential f64 sums of `|x|` (optionally only where `|x| > thr[g]`, also counting those) of each group of
/// `group_len` consecutive values. Four groups run side by side, each in its own sequential order; a lone
/// group (per-tensor) is one long dependent chain, so its thresholded pass first compacts the values it takes
/// and then adds only those, in order.
#[inline(always)]
fn group_abs_sums_impl(
    x: &[f32],
    group_len: usize,
    thr: Option<&[f32]>,
    sums: &mut [f64],
    counts: &mut [usize],
) {
    let ngroups = sums.len();
    let group = |g: usize| &x[(g * group_len).min(x.len())..((g + 1) * group_len).min(x.len())];
    let mut g = 0;
    while g + 4 <= ngroups && (g + 4) * group_len <= x.len() {
        let quad = (group(g), group(g + 1), group(g + 2), group(g + 3));
        let rows = quad.0.iter().zip(quad.1).zip(quad.2).zip(quad.3);
        let mut s = [0f64; 4];
        let mut n = [0usize; 4];
        match thr {
            None => {
                for (((&a, &b), &c), &d) in rows {
                    for (sk, v) in s.iter_mut().zip([a, b, c, d]) {
                        *sk += f64::from(v.abs());
                    }
                }
                n = [group_len; 4];
            }
            Some(t) => {
                let t = [t[g], t[g + 1], t[g + 2], t[g + 3]];
                for (((&a, &b), &c), &d) in rows {
                    for (k, v) in [a, b, c, d].into_iter().enumerate() {
                        let a = v.abs();
                        // Adding +0.0 to a sum of non-negative terms changes nothing: "skip" is "add 0".
                        let take = a > t[k];
                        s[k] += select_or_zero(take, f64::from(a));
                        n[k] += usize::from(take);
                    }
                }
            }
        }
        sums[g..g + 4].copy_from_slice(&s);
        counts[g..g + 4].copy_from_slice(&n);
        g += 4;
    }
    for g in g..ngroups {
        let row = group(g);
        let (mut s, mut n) = (0f64, 0usize);
        match thr {
            None => {
                for &v in row {
                    s += f64::from(v.abs());
                }
                n = row.len();
            }
            Some(t) => {
                let t = t[g];
                let mut buf = [0f64; 512];
                for chunk in row.chunks(512) {
                    let mut k = 0;
                    for &v in chunk {
                        let a = v.abs();
                        buf[k] = f64::from(a);
                        k += usize::from(a > t);
                    }
                    for &a in &buf[..k] {
                        s += a;
                    }
                    n += k;
                }
            }
        }
        sums[g] = s;
        counts[g] = n;
    }
}

#[inline(always)]
fn add_masked_impl(grad_w: &mut [f32], grad_q: &[f32], mask: Option<&[bool]>) {
    match mask {
        None => {
            for (g, &q) in grad_w.iter_mut().zip(grad_q) {
                *g += q;
            }
        }
        Some(m) => {
            for ((g, &q), &i) in grad_w.iter_mut().zip(grad_q).zip(m) {
                // `g + 0.0` is not always `g` (-0.0), so keep `g` where the scalar code did not add; a select
                // and an unconditional store vectorize, a conditional store does not.
                let sum = *g + q;
                *g = if i { sum } else { *g };
            }
        }
    }
}

macro_rules! dispatched {
    ($(#[$doc:meta])* fn $name:ident = $imp:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)?) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                /// The safe body compiled for AVX2.
                ///
                /// # Safety
                /// The CPU must support AVX2.
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                if Family::FakeQuant.tier() == Isa::Avx2 {
                    // SAFETY: fake-quant's tier is avx2 only when the CPU has AVX2 (`kernel_tiers`); the function
                    // is safe code and only touches the slices it is given.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $imp($($arg),*)
        }
    };
}

dispatched!(
    /// Weight fake-quant of one group with scale `scale` and codes in `[lo, hi]` (zero point 0); returns
    /// (zero codes, values whose `x / scale` is not strictly inside `(lo, hi)`).
    fn weight_fake_quant = weight_impl(x: &[f32], scale: f32, lo: f32, hi: f32, out: &mut [f32]) -> (usize, usize)
);

dispatched!(
    /// Largest `|x|` (0 for an empty slice; NaN ignored), equal to the sequential fold.
    fn max_abs = max_abs_impl(x: &[f32]) -> f32
);

dispatched!(
    /// Per group of `group_len`: sequential f64 sum of `|x|` (where `|x| > thr[g]` if given) and its count.
    fn group_abs_sums = group_abs_sums_impl(
        x: &[f32],
        group_len: usize,
        thr: Option<&[f32]>,
        sums: &mut [f64],
        counts: &mut [usize]
    )
);

dispatched!(
    /// `grad_w += grad_q` where `mask` is true (everywhere when `None`).
    fn add_masked = add_masked_impl(grad_w: &mut [f32], grad_q: &[f32], mask: Option<&[bool]>)
);

#[inline(always)]
fn act_ste_impl(
    x: &[f32],
    scale: f32,
    zero_point: i32,
    qmax: i32,
    out: &mut [f32],
    inside: &mut [bool],
) -> usize {
    let lo = (-zero_point) as f32;
    let hi = (qmax - zero_point) as f32;
    // The representable range in real units, as `qparams::dequantize(0)` and `dequantize(qmax)` give it.
    let (rlo, rhi) = (lo * scale, hi * scale);
    act_impl(x, scale, lo, hi, out, inside, |v, _| {
        let i = v >= rlo && v <= rhi;
        (i, !i)
    })
}

#[inline(always)]
fn act_lsq_impl(
    x: &[f32],
    scale: f32,
    qn: i32,
    qp: i32,
    out: &mut [f32],
    inside: &mut [bool],
) -> usize {
    let (lo, hi) = ((-qn) as f32, qp as f32);
    // Below the range counts as clipped only for signed codes: at or below 0 unsigned codes hold ReLU's zeros.
    let signed = qn > 0;
    act_impl(x, scale, lo, hi, out, inside, |_, q| {
        (q > lo && q < hi, q >= hi || (signed && q <= lo))
    })
}

#[inline(always)]
fn act_pact_impl(
    x: &[f32],
    scale: f32,
    qmax: i32,
    alpha: f32,
    out: &mut [f32],
    inside: &mut [bool],
) -> usize {
    act_impl(x, scale, 0.0, qmax as f32, out, inside, |v, _| {
        (v >= 0.0 && v < alpha, v >= alpha)
    })
}

dispatched!(
    /// EMA / fixed activation fake-quant; mask = inside `[dequantize(0), dequantize(qmax)]`; returns the
    /// count outside.
    fn act_fake_quant_ste = act_ste_impl(
        x: &[f32],
        scale: f32,
        zero_point: i32,
        qmax: i32,
        out: &mut [f32],
        inside: &mut [bool]
    ) -> usize
);

dispatched!(
    /// LSQ activation fake-quant to the codes `[-qn, qp]` relative to the zero point (`qn = 0`: unsigned, zero
    /// point 0); mask = `-qn < x/s < qp`; returns the count with `x/s >= qp` (or, when `qn > 0`, `<= -qn`).
    fn act_fake_quant_lsq = act_lsq_impl(
        x: &[f32],
        scale: f32,
        qn: i32,
        qp: i32,
        out: &mut [f32],
        inside: &mut [bool]
    ) -> usize
);

dispatched!(
    /// PACT activation fake-quant (zero point 0); mask = `0 <= x < alpha`; returns the count with
    /// `x >= alpha`.
    fn act_fake_quant_pact = act_pact_impl(
        x: &[f32],
        scale: f32,
        qmax: i32,
        alpha: f32,
        out: &mut [f32],
        inside: &mut [bool]
    ) -> usize
);

#[inline(always)]
fn ternary_impl(x: &[f32], delta: f32, alpha: f32, out: &mut [f32]) -> usize {
    let mut zeros = 0usize;
    for (xc, oc) in x.chunks(1024).zip(out.chunks_mut(1024)) {
        let mut z = 0u32;
        for (&v, dst) in xc.iter().zip(oc.iter_mut()) {
            let c: f32 = if v > delta {
                1.0
            } else if v < -delta {
                -1.0
            } else {
                0.0
            };
            *dst = c * alpha;
            z += u32::from(c == 0.0);
        }
        zeros += z as usize;
    }
    zeros
}

#[inline(always)]
fn binary_impl(x: &[f32], alpha: f32, out: &mut [f32]) {
    for (&v, dst) in x.iter().zip(out.iter_mut()) {
        // `qparams::quantize_binary`: +1 for v >= 0, else -1 (NaN too).
        *dst = if v >= 0.0 { alpha } else { -alpha };
    }
}

/// LSQ weight backward, elementwise part: `grad_w += grad_q` where `-qp < x/s < qp`, and `d[i] = dw_q/ds`
/// ([`super::lsq::step_derivative`]).
#[inline(always)]
fn lsq_backward_impl(
    x: &[f32],
    s: f32,
    qp: i32,
    grad_q: &[f32],
    grad_w: &mut [f32],
    d: &mut [f32],
) {
    let (lo, hi) = (-(qp as f32), qp as f32);
    for (((&v, &g), gw), dv) in x
        .iter()
        .zip(grad_q)
        .zip(grad_w.iter_mut())
        .zip(d.iter_mut())
    {
        let r = v / s;
        // Selects and unconditional stores (see `add_masked_impl`), so the loop vectorizes.
        let sum = *gw + g;
        *gw = if r > lo && r < hi { sum } else { *gw };
        let frac = -r + r.round();
        let d = if r >= hi { hi } else { frac };
        *dv = if r <= lo { lo } else { d };
    }
}

/// Per group of `group_len`: the sequential f64 sum of `a[i] * b[i]` (each product exact in f64); four groups
/// run side by side.
#[inline(always)]
fn group_dots_impl(a: &[f32], b: &[f32], group_len: usize, sums: &mut [f64]) {
    let n = a.len().min(b.len());
    let ngroups = sums.len();
    let range = |g: usize| (g * group_len).min(n)..((g + 1) * group_len).min(n);
    let mut g = 0;
    while g + 4 <= ngroups && (g + 4) * group_len <= n {
        let base = g * group_len;
        // Start where `Iterator::sum` starts (its neutral element, -0.0 in recent std), so an all-(-0.0) group
        // sums to the same signed zero as the sequential code.
        let mut s = [std::iter::empty::<f64>().sum::<f64>(); 4];
        for j in 0..group_len {
            for (k, sk) in s.iter_mut().enumerate() {
                let i = base + k * group_len + j;
                *sk += f64::from(a[i]) * f64::from(b[i]);
            }
        }
        sums[g..g + 4].copy_from_slice(&s);
        g += 4;
    }
    for (g, sum) in sums.iter_mut().enumerate().skip(g) {
        let r = range(g);
        *sum = a[r.clone()]
            .iter()
            .zip(&b[r])
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum();
    }
}

dispatched!(
    /// Ternary fake-quant of one group (codes by the TWN threshold `delta`, scale `alpha`); returns zeros.
    fn ternary_fake_quant = ternary_impl(x: &[f32], delta: f32, alpha: f32, out: &mut [f32]) -> usize
);

dispatched!(
    /// Binary fake-quant of one group: `+alpha` for `x >= 0`, else `-alpha`.
    fn binary_fake_quant = binary_impl(x: &[f32], alpha: f32, out: &mut [f32])
);

dispatched!(
    /// LSQ weight backward, elementwise part (see `lsq_backward_impl`).
    fn lsq_weight_backward = lsq_backward_impl(
        x: &[f32],
        s: f32,
        qp: i32,
        grad_q: &[f32],
        grad_w: &mut [f32],
        d: &mut [f32]
    )
);

dispatched!(
    /// Per group: sequential f64 sum of exact products `a[i] * b[i]`.
    fn group_dots = group_dots_impl(a: &[f32], b: &[f32], group_len: usize, sums: &mut [f64])
);

/// Lanes of [`lsq_act_step_grad`]'s interleaved sum.
const STEP_LANES: usize = 8;

/// LSQ activation step gradient without the gradient scale: `sum g[i] * dv_q/ds(x[i])` for the range
/// `[-qn, qp]` ([`super::lsq::step_derivative`]), each product exact in f64. One activation step covers the
/// whole tensor (hundreds of thousands of values per batch), so a single sequential sum would be bound by the
/// add latency; element `i` goes to partial sum `i % 8` and the eight are combined pairwise, a fixed order that
/// gives the same bits on every build and tier.
#[inline(always)]
fn lsq_act_step_grad_impl(x: &[f32], g: &[f32], s: f32, qn: i32, qp: i32) -> f64 {
    let hi = qp as f32;
    // `-0.0` for unsigned codes, as `step_derivative` returns it.
    let lo = -(qn as f32);
    let n = x.len().min(g.len());
    let full = n / STEP_LANES * STEP_LANES;
    let term = |v: f32, gv: f32| {
        let r = v / s;
        let d = if r >= hi { hi } else { -r + r.round() };
        let d = if r <= lo { lo } else { d };
        f64::from(gv) * f64::from(d)
    };
    let mut acc = [0f64; STEP_LANES];
    for (xc, gc) in x[..full]
        .chunks_exact(STEP_LANES)
        .zip(g[..full].chunks_exact(STEP_LANES))
    {
        for k in 0..STEP_LANES {
            acc[k] += term(xc[k], gc[k]);
        }
    }
    for i in full..n {
        acc[i % STEP_LANES] += term(x[i], g[i]);
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

dispatched!(
    /// LSQ activation step gradient, unscaled (see `lsq_act_step_grad_impl`).
    fn lsq_act_step_grad = lsq_act_step_grad_impl(x: &[f32], g: &[f32], s: f32, qn: i32, qp: i32) -> f64
);

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_runtime::qparams::{self, QParams};

    fn check_weight(xs: &[f32], scale: f32, qmax: i32) {
        let mut out = vec![0f32; xs.len()];
        let (zeros, _) = weight_fake_quant(xs, scale, -qmax as f32, qmax as f32, &mut out);
        let qp = QParams {
            scale,
            zero_point: 0,
        };
        let mut want_zeros = 0;
        for (i, (&x, &y)) in xs.iter().zip(&out).enumerate() {
            let want = qparams::fake_quantize(x, qp, -qmax, qmax);
            want_zeros += usize::from(qparams::quantize(x, qp, -qmax, qmax) == 0);
            assert_eq!(
                y.to_bits(),
                want.to_bits(),
                "index {i}: x={x:e} scale={scale:e} qmax={qmax}: got {y:e}, want {want:e}"
            );
        }
        assert_eq!(zeros, want_zeros);
    }

    #[test]
    fn fake_quant_is_exact_on_ties_and_a_sweep() {
        let mut xs: Vec<f32> = Vec::new();
        for k in -300..=300 {
            let t = k as f32 + 0.5;
            xs.extend([
                t,
                f32::from_bits(t.to_bits() - 1),
                f32::from_bits(t.to_bits() + 1),
                k as f32,
            ]);
        }
        xs.extend([
            0.0,
            -0.0,
            0.49999997,
            -0.49999997,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            1e-45,
            -1e-45,
            8388607.5,
            8388608.0,
            -8388609.0,
        ]);
        for qmax in [1, 7, 127, 1 << 30] {
            check_weight(&xs, 1.0, qmax);
        }
        // A sweep of bit patterns (every sign, exponent and many mantissas), with odd scales.
        let sweep: Vec<f32> = (0..(1u64 << 32))
            .step_by(40_503)
            .map(|b| f32::from_bits(b as u32))
            .collect();
        for &(scale, qmax) in &[(1.0f32, 127), (0.037, 7), (3.3e-3, 1), (1.7e-6, 127)] {
            check_weight(&sweep, scale, qmax);
            let scaled: Vec<f32> = sweep.iter().map(|v| v * scale).collect();
            check_weight(&scaled, scale, qmax);
        }
    }

    #[test]
    fn activation_kernels_match_scalar_fake_quant_with_zero_point() {
        let xs: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.01237).collect();
        for (scale, zp, qmax) in [(0.05f32, 3, 255), (0.3, 0, 3), (0.011, 200, 255)] {
            let mut out = vec![0f32; xs.len()];
            let mut inside = vec![false; xs.len()];
            let clipped = act_fake_quant_ste(&xs, scale, zp, qmax, &mut out, &mut inside);
            let qp = QParams {
                scale,
                zero_point: zp,
            };
            let (lo, hi) = (qparams::dequantize(0, qp), qparams::dequantize(qmax, qp));
            let mut want_clipped = 0;
            for (i, &x) in xs.iter().enumerate() {
                let want = qparams::fake_quantize(x, qp, 0, qmax);
                assert_eq!(out[i].to_bits(), want.to_bits(), "x={x} zp={zp}");
                assert_eq!(inside[i], x >= lo && x <= hi, "x={x}");
                want_clipped += usize::from(!(x >= lo && x <= hi));
            }
            assert_eq!(clipped, want_clipped);
        }
    }

    #[test]
    fn activation_step_gradient_sums_eight_lanes_in_a_fixed_order() {
        let n = 1003;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 20.0) * 0.071)
            .collect();
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.013)
            .collect();
        let s = 0.25f32;
        // Unsigned 4-bit codes, then signed ones (zero point 8: codes -8..=7 about it).
        for (qn, qp) in [(0, 15), (8, 7)] {
            let term = |i: usize| {
                f64::from(g[i]) * f64::from(super::super::lsq::step_derivative(x[i], s, qn, qp))
            };
            let mut lanes = [0f64; 8];
            for i in 0..n {
                lanes[i % 8] += term(i);
            }
            let want = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
                + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
            let got = lsq_act_step_grad(&x, &g, s, qn, qp);
            assert_eq!(got.to_bits(), want.to_bits(), "qn={qn}");
            assert_eq!(
                lsq_act_step_grad_impl(&x, &g, s, qn, qp).to_bits(),
                want.to_bits()
            );
            let sequential: f64 = (0..n).map(term).sum();
            assert!((got - sequential).abs() <= 1e-12 * sequential.abs().max(1.0));
        }
    }

    #[test]
    fn lsq_activation_kernel_matches_scalar_fake_quant_unsigned_and_signed() {
        let xs: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.01237).collect();
        // (scale, bits, zero point): unsigned codes have zero point 0, signed ones 2^(b-1).
        for (scale, bits, zp) in [
            (0.05f32, 8, 0),
            (0.3, 2, 0),
            (0.05, 8, 128),
            (0.3, 4, 8),
            (0.7, 2, 2),
        ] {
            let qmax = (1i32 << bits) - 1;
            let (qn, qp) = (zp, qmax - zp);
            let mut out = vec![0f32; xs.len()];
            let mut inside = vec![false; xs.len()];
            let clipped = act_fake_quant_lsq(&xs, scale, qn, qp, &mut out, &mut inside);
            let q = QParams {
                scale,
                zero_point: zp,
            };
            let mut want_clipped = 0;
            for (i, &x) in xs.iter().enumerate() {
                let want = qparams::fake_quantize(x, q, 0, qmax);
                assert_eq!(out[i].to_bits(), want.to_bits(), "x={x} zp={zp}");
                let r = x / scale;
                assert_eq!(inside[i], r > -(qn as f32) && r < qp as f32, "x={x}");
                want_clipped += usize::from(r >= qp as f32 || (zp > 0 && r <= -(qn as f32)));
            }
            assert_eq!(clipped, want_clipped, "zp={zp}");
        }
    }

    #[test]
    fn finite_range_matches_the_scalar_reference() {
        let mut rng = crate::rng::Rng::new(11);
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::MAX,
            -f32::MAX,
            1e-45,
        ];
        for n in (0..40).chain([1000, 4099]) {
            for special_rate in [0.0, 0.1, 0.9, 1.0] {
                let x: Vec<f32> = (0..n)
                    .map(|_| match rng.uniform() < special_rate {
                        true => specials[(rng.uniform() * 8.0) as usize % 8],
                        false => rng.uniform_range(-3.0, 5.0),
                    })
                    .collect();
                let want = finite_range_impl(&x);
                // `==` treats the two zeros as equal; nothing downstream tells them apart.
                assert_eq!(finite_range(&x), want, "n={n} rate={special_rate}");
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    assert_eq!(unsafe { finite_range_avx2(&x) }, want, "n={n}");
                }
            }
        }
        assert_eq!(finite_range(&[f32::NAN, f32::INFINITY]), None);
        assert_eq!(finite_range(&[]), None);
    }

    #[test]
    fn group_sums_keep_the_sequential_order() {
        let mut rng = crate::rng::Rng::new(7);
        let x: Vec<f32> = (0..7 * 129)
            .map(|_| {
                rng.uniform_range(-1.0, 1.0) * 10f32.powi((rng.uniform_range(-9.0, 3.0)) as i32)
            })
            .collect();
        let thr: Vec<f32> = (0..7).map(|g| 0.01 * g as f32).collect();
        for t in [None, Some(&thr[..])] {
            let mut sums = vec![0f64; 7];
            let mut counts = vec![0usize; 7];
            group_abs_sums(&x, 129, t, &mut sums, &mut counts);
            for (g, row) in x.chunks(129).enumerate() {
                let (mut s, mut n) = (0f64, 0usize);
                for &v in row {
                    let take = match t {
                        Some(t) => v.abs() > t[g],
                        None => true,
                    };
                    if take {
                        s += f64::from(v.abs());
                        n += 1;
                    }
                }
                assert_eq!(sums[g].to_bits(), s.to_bits(), "group {g}");
                assert_eq!(counts[g], n, "group {g}");
            }
        }
    }
}
