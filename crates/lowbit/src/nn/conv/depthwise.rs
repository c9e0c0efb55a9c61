//! Depthwise convolution (`groups == in_channels`, channel multiplier `m = out_channels / in_channels`) by direct
//! per-channel loops: output channel `o = c*m + j` reads input channel `c` only, with the `kh*kw` weights of row
//! `o`.
//!
//! Layout: each zero-padded input plane (`Hp x Wp`) is split into `sh*sw` stride phases, phase `(qy, qx)` holding
//! the padded positions `(r, col)` with `r % sh == qy`, `col % sw == qx` at `(r / sh, col / sw)` in an
//! `Hq x Wq` plane (`Hq = ceil(Hp / sh)`, `Wq = ceil(Wp / sw)`, zero beyond the padded plane). Tap `(ky, kx)`
//! of output `(oy, ox)` reads padded `(oy*sh + ky, ox*sw + kx)`, which is phase `(ky % sh, kx % sw)` at
//! `(oy + ky/sh, ox + kx/sw)`: every tap is a plain shifted window of one phase. Outputs are computed on a
//! "wide" grid `oy*Wq + ox` (the `Wq - OW` extra columns per row are discarded), so each tap is one contiguous
//! multiply-add of `n_wide = (OH-1)*Wq + OW` floats, for any stride. With stride 1 this is the implicit im2col of
//! the dense path (one phase, the padded plane).
//!
//! - forward: `wide = sum over taps (ascending) of w[o, tap] * window(tap)`, then `y = wide + bias`;
//! - dW[o, tap] = sum over samples of `dot(dY_wide, window(tap))` (dY at the wide width, zero in the discarded
//!   columns), one partial per fixed group of [`DW_GROUP`] samples, partials added in group order: the result
//!   does not depend on the thread count;
//! - dX: `dphase[window(tap)] += w[o, tap] * dY_wide`, then the phases are cropped back to `[H, W]`.
//!
//! The AVX2 tier compiles the same loops with FMA (8-float vectors); the portable tier multiplies then adds.
//! Both are deterministic; they differ by FMA rounding only, like the dense kernels.
use super::grouped::group_state;
use super::{copy_short, sum_lanes, sum_partials, Conv2d, DW_GROUP};
use crate::error::{Error, Result};
use crate::nn::kernels::{isa, Isa};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Caches of the depthwise path, reused from step to step.
#[derive(Debug, Clone, Default)]
pub(super) struct Cache {
    /// Phase planes of every sample of the last training forward, `[B, C, sh*sw, Hq, Wq]`.
    phased: Vec<f32>,
    /// Per backward group of [`DW_GROUP`] samples: `[dW partial (oc*kh*kw) | db partial (oc)]`.
    partials: Vec<f32>,
}

/// Geometry of one depthwise layer on one input size, and the weights it runs with.
#[derive(Debug, Clone, Copy)]
struct Plan<'a> {
    /// Input channels.
    c: usize,
    /// Channel multiplier.
    m: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    /// Rows of a phase plane, `ceil((H + 2ph) / sh)`.
    hq: usize,
    /// Columns of a phase plane, `ceil((W + 2pw) / sw)`.
    wq: usize,
    /// `[oc][kh*kw]`, fake-quantized when the layer quantizes.
    weight: &'a [f32],
    /// `[oc]`.
    bias: &'a [f32],
}

impl<'a> Plan<'a> {
    fn new(layer: &'a Conv2d, h: usize, w: usize, oh: usize, ow: usize) -> Self {
        let (sh, sw) = layer.stride;
        let (ph, pw) = layer.padding;
        Plan {
            c: layer.in_channels,
            m: layer.out_channels / layer.in_channels.max(1),
            kh: layer.kernel.0,
            kw: layer.kernel.1,
            sh,
            sw,
            ph,
            pw,
            h,
            w,
            oh,
            ow,
            hq: (h + 2 * ph).div_ceil(sh),
            wq: (w + 2 * pw).div_ceil(sw),
            weight: layer.effective_weight(),
            bias: &layer.bias,
        }
    }

    /// Elements of one channel's phase planes.
    fn chan_len(&self) -> usize {
        self.sh * self.sw * self.hq * self.wq
    }

    /// Length of the wide output grid, `(OH-1)*Wq + OW`.
    fn n_wide(&self) -> usize {
        (self.oh - 1) * self.wq + self.ow
    }

    /// Index in a channel's phase planes of padded position `(r, col)`.
    #[inline(always)]
    fn at(&self, r: usize, col: usize) -> usize {
        ((r % self.sh) * self.sw + col % self.sw) * self.hq * self.wq
            + (r / self.sh) * self.wq
            + col / self.sw
    }

    /// Start of tap `(ky, kx)`'s window: output `(oy, ox)` reads `window + oy*Wq + ox`. The last read,
    /// `at(ky, kx) + n_wide - 1`, stays inside the tap's phase plane: `(OH-1)*sh + ky < Hp` gives
    /// `OH-1 + ky/sh <= Hq-1`, and likewise for columns.
    #[inline(always)]
    fn window(&self, ky: usize, kx: usize) -> usize {
        self.at(ky, kx)
    }

    /// Writes one input plane `x[H, W]` into its phase planes `out[chan_len]`, zeros elsewhere.
    #[inline(always)]
    fn split(&self, x: &[f32], out: &mut [f32]) {
        out.fill(0.0);
        let (h, w) = (self.h, self.w);
        for iy in 0..h {
            let row = &x[iy * w..(iy + 1) * w];
            if self.sw == 1 {
                let at = self.at(iy + self.ph, self.pw);
                copy_short(&mut out[at..at + w], row);
            } else {
                for (ix, &v) in row.iter().enumerate() {
                    out[self.at(iy + self.ph, ix + self.pw)] = v;
                }
            }
        }
    }

    /// Writes the input positions of phase planes `d[chan_len]` into `dx[H, W]` (the padding is dropped).
    #[inline(always)]
    fn merge(&self, d: &[f32], dx: &mut [f32]) {
        let (h, w) = (self.h, self.w);
        for iy in 0..h {
            let row = &mut dx[iy * w..(iy + 1) * w];
            if self.sw == 1 {
                let at = self.at(iy + self.ph, self.pw);
                copy_short(row, &d[at..at + w]);
            } else {
                for (ix, v) in row.iter_mut().enumerate() {
                    *v = d[self.at(iy + self.ph, ix + self.pw)];
                }
            }
        }
    }
}

/// `acc + a*b`: fused on the FMA tier, multiply then add on the portable one.
#[inline(always)]
fn madd<const FMA: bool>(acc: f32, a: f32, b: f32) -> f32 {
    if FMA {
        a.mul_add(b, acc)
    } else {
        acc + a * b
    }
}

/// `y += a * x`.
#[inline(always)]
fn axpy<const FMA: bool>(y: &mut [f32], x: &[f32], a: f32) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = madd::<FMA>(*yv, a, xv);
    }
}

/// `wide[i] = sum over taps t, ascending, of w[t] * src[windows[t] + i]`, for `V` vectors of 8 outputs from `i`.
/// Each output's taps accumulate in a register and are stored once (one pass over `wide` per tap loaded and
/// stored it 9 times for a 3x3 kernel); `V` independent vectors keep several multiply-adds in flight (one
/// vector is a chain of dependent multiply-adds, latency-bound).
#[inline(always)]
fn taps_block<const FMA: bool, const V: usize>(
    wide: &mut [f32],
    i: usize,
    src: &[f32],
    windows: &[usize],
    w: &[f32],
) {
    let mut acc = [[0.0f32; 8]; V];
    for (&at, &wt) in windows.iter().zip(w) {
        let x = &src[at + i..at + i + 8 * V];
        for (av, xv) in acc.iter_mut().zip(x.chunks_exact(8)) {
            for (a, &v) in av.iter_mut().zip(xv) {
                *a = madd::<FMA>(*a, wt, v);
            }
        }
    }
    for (out, av) in wide[i..i + 8 * V].chunks_exact_mut(8).zip(&acc) {
        out.copy_from_slice(av);
    }
}

/// `wide[i] = sum over taps t, ascending, of w[t] * src[windows[t] + i]` for every `i < wide.len()`: blocks of
/// 32 and 8 outputs, then the last 8 outputs again for a partial vector (recomputing an output gives the same
/// value, as its multiply-adds and their order do not depend on the block).
#[inline(always)]
fn taps<const FMA: bool>(wide: &mut [f32], src: &[f32], windows: &[usize], w: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: FMA = true is instantiated only inside the `avx2,fma` kernels, which run when isa() reports
        // AVX2 and FMA; the kernel checks its bounds.
        return unsafe { avx2::taps__avx2_fma(wide, src, windows, w) };
    }
    let n = wide.len();
    let mut i = 0;
    while i + 32 <= n {
        taps_block::<FMA, 4>(wide, i, src, windows, w);
        i += 32;
    }
    while i + 8 <= n {
        taps_block::<FMA, 1>(wide, i, src, windows, w);
        i += 8;
    }
    if i < n && n >= 8 {
        taps_block::<FMA, 1>(wide, n - 8, src, windows, w);
    } else {
        for j in i..n {
            let mut a = 0.0f32;
            for (&at, &wt) in windows.iter().zip(w) {
                a = madd::<FMA>(a, wt, src[at + j]);
            }
            wide[j] = a;
        }
    }
}

/// `sum a*b` in 8 interleaved lanes, then the lanes in a fixed order and the last `< 8` products: vectorizes
/// and stays deterministic, as [`sum_lanes`]. The AVX2 tier keeps four vectors of lanes in flight.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: as in `taps`.
        return unsafe { avx2::dot__avx2_fma(a, b) };
    }
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut tail = 0.0f32;
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = madd::<FMA>(tail, x, y);
    }
    for (x, y) in ca.zip(cb) {
        for ((s, &u), &v) in acc.iter_mut().zip(x).zip(y) {
            *s = madd::<FMA>(*s, u, v);
        }
    }
    let lanes = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    lanes + tail
}

/// The AVX2 + FMA forms of [`taps`] and [`dot`]: explicit vectors, as the compiler split the portable loops'
/// arrays of lanes into 2-float operations.
#[cfg(target_arch = "x86_64")]
#[allow(non_snake_case)] // XNNPACK-style kernel names: stem__isa
mod avx2 {
    use std::arch::x86_64::*;

    /// [`super::taps`]: each output is a chain of FMAs over the taps in order, from 0, so recomputing the last
    /// partial vector gives the same values.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA. Bounds are checked here (a call that would read past `src` takes the
    /// scalar loop, which panics on the bad index).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn taps__avx2_fma(wide: &mut [f32], src: &[f32], windows: &[usize], w: &[f32]) {
        // SAFETY: AVX2 and FMA are present (this function's contract); the pointer reads are bounds-checked
        // below before any vector load.
        unsafe {
            let n = wide.len();
            let in_bounds = w.len() >= windows.len()
                && windows
                    .iter()
                    .all(|&at| at.checked_add(n).is_some_and(|end| end <= src.len()));
            if !in_bounds || n < 8 {
                for (j, out) in wide.iter_mut().enumerate() {
                    let mut a = 0.0f32;
                    for (&at, &wt) in windows.iter().zip(w) {
                        a = wt.mul_add(src[at + j], a);
                    }
                    *out = a;
                }
                return;
            }
            let (sp, wp) = (src.as_ptr(), wide.as_mut_ptr());
            let mut i = 0;
            while i + 32 <= n {
                let (mut a0, mut a1, mut a2, mut a3) = (
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                    _mm256_setzero_ps(),
                );
                for (&at, &wt) in windows.iter().zip(w) {
                    let wv = _mm256_set1_ps(wt);
                    let p = sp.add(at + i);
                    a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p), a0);
                    a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p.add(8)), a1);
                    a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p.add(16)), a2);
                    a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p.add(24)), a3);
                }
                _mm256_storeu_ps(wp.add(i), a0);
                _mm256_storeu_ps(wp.add(i + 8), a1);
                _mm256_storeu_ps(wp.add(i + 16), a2);
                _mm256_storeu_ps(wp.add(i + 24), a3);
                i += 32;
            }
            loop {
                // The last vector may overlap the previous one: it ends exactly at n (n >= 8).
                let at_i = i.min(n - 8);
                let mut acc = _mm256_setzero_ps();
                for (&at, &wt) in windows.iter().zip(w) {
                    acc = _mm256_fmadd_ps(
                        _mm256_set1_ps(wt),
                        _mm256_loadu_ps(sp.add(at + at_i)),
                        acc,
                    );
                }
                _mm256_storeu_ps(wp.add(at_i), acc);
                i += 8;
                if at_i + 8 >= n {
                    break;
                }
            }
        }
    }

    /// [`super::dot`] in four vectors of 8 lanes over blocks of 32, leftover whole vectors into the first, the
    /// lanes reduced as `((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7))` after adding the four vectors pairwise, then
    /// the last `< 8` products.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot__avx2_fma(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: AVX2 and FMA are present (this function's contract); loads stay below `n`, the shorter length.
        unsafe {
            let n = a.len().min(b.len());
            let (ap, bp) = (a.as_ptr(), b.as_ptr());
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
            );
            let mut i = 0;
            while i + 32 <= n {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i)), _mm256_loadu_ps(bp.add(i)), a0);
                a1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(ap.add(i + 8)),
                    _mm256_loadu_ps(bp.add(i + 8)),
                    a1,
                );
                a2 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(ap.add(i + 16)),
                    _mm256_loadu_ps(bp.add(i + 16)),
                    a2,
                );
                a3 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(ap.add(i + 24)),
                    _mm256_loadu_ps(bp.add(i + 24)),
                    a3,
                );
                i += 32;
            }
            while i + 8 <= n {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i)), _mm256_loadu_ps(bp.add(i)), a0);
                i += 8;
            }
            let v = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            // [l0+l4, l1+l5, l2+l6, l3+l7], then [(l0+l4)+(l2+l6), (l1+l5)+(l3+l7), ..], then their sum.
            let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let y = _mm_add_ps(x, _mm_movehl_ps(x, x));
            let lanes = _mm_cvtss_f32(_mm_add_ss(y, _mm_shuffle_ps::<0b01>(y, y)));
            let mut tail = 0.0f32;
            for (&x, &y) in a[i..n].iter().zip(&b[i..n]) {
                tail = x.mul_add(y, tail);
            }
            lanes + tail
        }
    }
}

/// Forward of one sample: `xs[C, H, W]` into `ys[oc, OH, OW]`, its phase planes left in `phased[C, chan_len]`;
/// `wide` is `n_wide` floats of scratch.
#[inline(always)]
fn forward_sample<const FMA: bool>(
    p: &Plan,
    xs: &[f32],
    phased: &mut [f32],
    wide: &mut [f32],
    ys: &mut [f32],
) {
    let (kk, plane, out_plane, len) = (p.kh * p.kw, p.h * p.w, p.oh * p.ow, p.chan_len());
    let windows: Vec<usize> = (0..kk).map(|t| p.window(t / p.kw, t % p.kw)).collect();
    for c in 0..p.c {
        let pc = &mut phased[c * len..(c + 1) * len];
        p.split(&xs[c * plane..(c + 1) * plane], pc);
        for o in c * p.m..(c + 1) * p.m {
            taps::<FMA>(wide, pc, &windows, &p.weight[o * kk..(o + 1) * kk]);
            let bias = p.bias[o];
            for (oy, row) in ys[o * out_plane..(o + 1) * out_plane]
                .chunks_exact_mut(p.ow)
                .enumerate()
            {
                for (v, &s) in row.iter_mut().zip(&wide[oy * p.wq..]) {
                    *v = s + bias;
                }
            }
        }
    }
}

/// [`forward_sample`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA (the body is safe code, compiled with those features enabled).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(non_snake_case)]
unsafe fn forward_sample__avx2_fma(
    p: &Plan,
    xs: &[f32],
    phased: &mut [f32],
    wide: &mut [f32],
    ys: &mut [f32],
) {
    forward_sample::<true>(p, xs, phased, wide, ys);
}

fn forward_sample_dispatch(
    p: &Plan,
    xs: &[f32],
    phased: &mut [f32],
    wide: &mut [f32],
    ys: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx2 {
        // SAFETY: isa() reports Avx2Fma only when the CPU has AVX2 and FMA; the body is safe code.
        return unsafe { forward_sample__avx2_fma(p, xs, phased, wide, ys) };
    }
    forward_sample::<false>(p, xs, phased, wide, ys);
}

/// Scratch of one backward task.
struct Scratch {
    /// One output channel's gradient on the wide grid, `n_wide` floats.
    dy_wide: Vec<f32>,
    /// dL/d(phase planes) of one channel, `chan_len` floats.
    dphase: Vec<f32>,
}

/// Backward of one group of samples: their phase planes `phased[S, C, chan_len]` and output gradients
/// `gd[S, oc, OH, OW]` give the group's `[dW | db]` partial `part` and, unless `dx` is empty, `dx[S, C, H, W]`.
#[inline(always)]
fn backward_group<const FMA: bool>(
    p: &Plan,
    phased: &[f32],
    gd: &[f32],
    part: &mut [f32],
    dx: &mut [f32],
    s: &mut Scratch,
) {
    let (kk, plane, out_plane, len) = (p.kh * p.kw, p.h * p.w, p.oh * p.ow, p.chan_len());
    let (nw, oc) = (p.n_wide(), p.c * p.m);
    let need_dx = !dx.is_empty();
    let (pw, pb) = part.split_at_mut(oc * kk);
    pw.fill(0.0);
    pb.fill(0.0);
    let dy_wide = &mut s.dy_wide[..nw];
    // The gaps between wide rows stay zero: only the first OW columns of each row are written below.
    dy_wide.fill(0.0);
    for (si, gs) in gd.chunks_exact((oc * out_plane).max(1)).enumerate() {
        for c in 0..p.c {
            let pc = &phased[(si * p.c + c) * len..(si * p.c + c + 1) * len];
            if need_dx {
                s.dphase.fill(0.0);
            }
            for o in c * p.m..(c + 1) * p.m {
                let dyp = &gs[o * out_plane..(o + 1) * out_plane];
                pb[o] += sum_lanes(dyp);
                for (oy, row) in dyp.chunks_exact(p.ow).enumerate() {
                    copy_short(&mut dy_wide[oy * p.wq..oy * p.wq + p.ow], row);
                }
                let (wo, dwo) = (
                    &p.weight[o * kk..(o + 1) * kk],
                    &mut pw[o * kk..(o + 1) * kk],
                );
                for ky in 0..p.kh {
                    for kx in 0..p.kw {
                        let (at, t) = (p.window(ky, kx), ky * p.kw + kx);
                        dwo[t] += dot::<FMA>(dy_wide, &pc[at..at + nw]);
                        if need_dx {
                            axpy::<FMA>(&mut s.dphase[at..at + nw], dy_wide, wo[t]);
                        }
                    }
                }
            }
            if need_dx {
                let at = (si * p.c + c) * plane;
                p.merge(&s.dphase, &mut dx[at..at + plane]);
            }
        }
    }
}

/// [`backward_group`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA (the body is safe code, compiled with those features enabled).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(non_snake_case)]
unsafe fn backward_group__avx2_fma(
    p: &Plan,
    phased: &[f32],
    gd: &[f32],
    part: &mut [f32],
    dx: &mut [f32],
    s: &mut Scratch,
) {
    backward_group::<true>(p, phased, gd, part, dx, s);
}

fn backward_group_dispatch(
    p: &Plan,
    phased: &[f32],
    gd: &[f32],
    part: &mut [f32],
    dx: &mut [f32],
    s: &mut Scratch,
) {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx2 {
        // SAFETY: isa() reports Avx2Fma only when the CPU has AVX2 and FMA; the body is safe code.
        return unsafe { backward_group__avx2_fma(p, phased, gd, part, dx, s) };
    }
    backward_group::<false>(p, phased, gd, part, dx, s);
}

impl Conv2d {
    /// Depthwise forward into the layer's output buffer (already shaped `[B, oc, OH, OW]`); in training the
    /// phase planes are kept for backward.
    pub(super) fn forward_depthwise(&mut self, x: &Tensor, train: bool) -> Result<()> {
        let [b, _, h, w] = x.shape[..] else {
            return Err(Error::Shape(format!("conv2d: input shape {:?}", x.shape)));
        };
        let (oh, ow) = (self.output.shape[2], self.output.shape[3]);
        let mut cache = std::mem::take(&mut group_state(&mut self.grouped)?.depthwise);
        let mut y = std::mem::take(&mut self.output.data);
        let p = Plan::new(self, h, w, oh, ow);
        let (x_len, y_len, ph_len) = (p.c * h * w, y.len() / b.max(1), p.c * p.chan_len());
        let nw = p.n_wide();
        let xs = |s: usize| &x.data[s * x_len..(s + 1) * x_len];
        // Samples are indexed (not zipped with chunks of x), which keeps empty input planes right (H or W = 0
        // with padding).
        if train {
            // Every element is written by `split`.
            cache.phased.resize(b * ph_len, 0.0);
            y.par_chunks_mut(y_len.max(1))
                .zip(cache.phased.par_chunks_mut(ph_len.max(1)))
                .enumerate()
                .for_each_init(
                    || vec![0.0f32; nw],
                    |wide, (s, (ys, ps))| forward_sample_dispatch(&p, xs(s), ps, wide, ys),
                );
        } else {
            cache.phased.clear();
            y.par_chunks_mut(y_len.max(1)).enumerate().for_each_init(
                || (vec![0.0f32; ph_len], vec![0.0f32; nw]),
                |(ps, wide), (s, ys)| forward_sample_dispatch(&p, xs(s), ps, wide, ys),
            );
        }
        self.output.data = y;
        group_state(&mut self.grouped)?.depthwise = cache;
        Ok(())
    }

    /// Depthwise backward (after [`Conv2d::backward_grouped`]'s checks): dW into `grad_weight_q` when
    /// quantizing (else `grad_weight`), db, and dX into the input-gradient buffer when `need_input_grad`.
    pub(super) fn backward_depthwise(
        &mut self,
        grad: &Tensor,
        need_input_grad: bool,
    ) -> Result<()> {
        let [b, _, h, w] = self.input_shape[..] else {
            return Err(Error::Shape(
                "conv2d: backward without a training forward pass".into(),
            ));
        };
        let (oh, ow) = (grad.shape[2], grad.shape[3]);
        let mut cache = std::mem::take(&mut group_state(&mut self.grouped)?.depthwise);
        let mut input_grad = std::mem::take(&mut self.input_grad.data);
        let p = Plan::new(self, h, w, oh, ow);
        let (x_len, g_len, ph_len) = (p.c * h * w, grad.row_len(), p.c * p.chan_len());
        let matches = cache.phased.len() == b * ph_len;
        if matches {
            let groups = b.div_ceil(DW_GROUP);
            let part_len = p.weight.len() + p.bias.len();
            cache.partials.resize(groups * part_len, 0.0);
            let mut dx_parts: Vec<&mut [f32]> = if need_input_grad {
                input_grad.chunks_mut((DW_GROUP * x_len).max(1)).collect()
            } else {
                Vec::new()
            };
            dx_parts.resize_with(groups, Default::default);
            let phased = &cache.phased;
            cache
                .partials
                .par_chunks_mut(part_len.max(1))
                .zip(dx_parts)
                .enumerate()
                .for_each_init(
                    || Scratch {
                        dy_wide: vec![0.0; p.n_wide()],
                        dphase: vec![0.0; p.chan_len()],
                    },
                    |scratch, (gi, (part, dx))| {
                        let (s0, s1) = (gi * DW_GROUP, ((gi + 1) * DW_GROUP).min(b));
                        let ph = &phased[s0 * ph_len..s1 * ph_len];
                        let gd = &grad.data[s0 * g_len..s1 * g_len];
                        backward_group_dispatch(&p, ph, gd, part, dx, scratch);
                    },
                );
            let dw = if self.weight_quant.is_some() {
                &mut self.grad_weight_q
            } else {
                &mut self.grad_weight
            };
            sum_partials(&cache.partials, dw, &mut self.grad_bias);
        }
        self.input_grad.data = input_grad;
        group_state(&mut self.grouped)?.depthwise = cache;
        if !matches {
            return Err(Error::Shape(format!(
                "conv2d: depthwise backward with gradient {:?} without a matching training forward",
                grad.shape
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The dispatched kernels (AVX2 + FMA where the CPU has it) agree with the portable loops up to FMA
    /// rounding, on strides 1-3, asymmetric kernels and padding, and a multiplier of 2.
    #[test]
    fn dispatched_depthwise_kernels_match_the_portable_loops() {
        let cases = [
            // (c, m, kernel, stride, padding, h, w)
            (3, 1, (3, 3), (1, 1), (1, 1), 7, 9),
            (2, 2, (3, 3), (2, 2), (1, 1), 9, 8),
            (4, 1, (5, 3), (3, 2), (2, 0), 11, 6),
            (1, 3, (2, 2), (1, 2), (0, 1), 5, 5),
        ];
        for (seed, &(c, m, kernel, stride, padding, h, w)) in cases.iter().enumerate() {
            let mut rng = Rng::new(70 + seed as u64);
            let mut layer = Conv2d::depthwise(c, m, kernel, stride, padding, &mut rng)
                .unwrap_or_else(|e| panic!("{e}"));
            layer.bias = rng.uniform_vec(c * m, -1.0, 1.0);
            let (oh, ow) = layer.output_hw(h, w).unwrap_or((0, 0));
            let p = Plan::new(&layer, h, w, oh, ow);
            let b = 3;
            let x = rng.uniform_vec(b * c * h * w, -1.0, 1.0);
            let gd = rng.uniform_vec(b * c * m * oh * ow, -1.0, 1.0);
            let mut phased = vec![0.0; b * c * p.chan_len()];
            let mut wide = vec![0.0; p.n_wide()];
            let (mut y1, mut y2) = (vec![0.0; c * m * oh * ow], vec![0.0; c * m * oh * ow]);
            let x0 = &x[..c * h * w];
            forward_sample::<false>(&p, x0, &mut phased[..c * p.chan_len()], &mut wide, &mut y1);
            forward_sample_dispatch(&p, x0, &mut phased[..c * p.chan_len()], &mut wide, &mut y2);
            // |terms| <= 1, kh*kw <= 15 of them plus the bias: FMA changes each rounding by <= 1 ulp of 16.
            let tol = 16.0 * 16.0 * f32::EPSILON;
            for (i, (a, e)) in y2.iter().zip(&y1).enumerate() {
                assert!(
                    (a - e).abs() <= tol,
                    "forward case {seed} at {i}: {a} vs {e}"
                );
            }
            for s in 0..b {
                let len = c * p.chan_len();
                forward_sample::<false>(
                    &p,
                    &x[s * c * h * w..(s + 1) * c * h * w],
                    &mut phased[s * len..(s + 1) * len],
                    &mut wide,
                    &mut y1,
                );
            }
            let part_len = layer.weight.len() + c * m;
            let (mut part1, mut part2) = (vec![0.0; part_len], vec![0.0; part_len]);
            let (mut dx1, mut dx2) = (vec![0.0; b * c * h * w], vec![0.0; b * c * h * w]);
            let scratch = || Scratch {
                dy_wide: vec![0.0; p.n_wide()],
                dphase: vec![0.0; p.chan_len()],
            };
            backward_group::<false>(&p, &phased, &gd, &mut part1, &mut dx1, &mut scratch());
            backward_group_dispatch(&p, &phased, &gd, &mut part2, &mut dx2, &mut scratch());
            // dW sums b*OH*OW products of magnitude <= 1 in another rounding.
            let tol = 4.0 * (b * oh * ow) as f32 * f32::EPSILON;
            for (i, (a, e)) in part2.iter().zip(&part1).enumerate() {
                assert!((a - e).abs() <= tol, "dW/db case {seed} at {i}: {a} vs {e}");
            }
            for (i, (a, e)) in dx2.iter().zip(&dx1).enumerate() {
                assert!((a - e).abs() <= tol, "dX case {seed} at {i}: {a} vs {e}");
            }
        }
    }
}
