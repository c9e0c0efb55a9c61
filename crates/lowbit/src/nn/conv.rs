//! 2-D convolution (NCHW, stride, zero padding) by per-sample im2col and small f32 products.
//!
//! Layout: each sample is unfolded into `col_s[K, P]` (row `k = ic*kh*kw + ky*kw + kx`, the runtime's column
//! index; column `p` = output position), stored one after the other as `col[B, K, P]`. Then, per sample,
//! - forward: `Y_s[oc, P] = W[oc, K] col_s` (written straight into the NCHW output, then the bias);
//! - dW `[oc, K] = sum_s dY_s col_s^T`, one partial per fixed group of `DW_GROUP` samples, partials added in
//!   group order (deterministic whatever the thread count);
//! - dcol_s `[K, P] = W^T dY_s`, folded back into dX by col2im.
//!
//! Why per sample and not one product over the whole batch: a sample's `col_s` (LeNet: 78 KB for conv1, 60 KB
//! for conv2) stays in L2 between im2col and the product, NCHW needs no scatter or transposition, and rayon
//! splits samples across threads with no nested threading. The whole-batch matrixmultiply version ran LeNet's
//! conv GEMMs at ~1 GMAC/s (packing `[K, B*P]` operands, its own threads competing with rayon's).
//!
//! Grouped convolutions (`groups > 1`) live in the child modules: `grouped` (constructors, one plain
//! convolution per group) and `depthwise` (a direct per-channel kernel). This file stays above the house's ~800
//! lines because the dense paths (im2col and implicit), their backward and the geometry helpers share private
//! buffers and are read together.
//!
//! (Over 800 lines on purpose: the forward pass and both backward paths share the im2col layout and the reused
//! buffers documented here; splitting them would split that contract.)
use super::activation::reshape_buffer;
use super::kernels::{gemm_abt_batched, gemm_abt_batched_rows, gemm_atb, gemm_atb_rows};
#[cfg(target_arch = "x86_64")]
use super::kernels::{isa, Isa};
use super::Param;
use crate::error::{Error, Result};
use crate::quant::WeightQuantizer;
use crate::rng::Rng;
use crate::state::{StateVisitor, Stateful};
use crate::tensor::Tensor;
use rayon::prelude::*;

mod depthwise;
mod grouped;

/// Samples per backward task. The weight gradient is summed per group, then over groups in order; fixing the
/// group size (not the thread count) keeps results identical on any machine. 8 gives 8 tasks at batch 64 and
/// amortizes the kernel's horizontal sums over 8 samples.
const DW_GROUP: usize = 8;

/// 2-D convolution layer. Input `[B, in_channels, H, W]`, output `[B, out_channels, OH, OW]` with
/// `OH = (H + 2*ph - kh) / sh + 1` (likewise OW).
///
/// With [`Conv2d::groups`] `> 1` the channels split into `groups` equal groups: output channel `oc` reads only the
/// `in_channels / groups` input channels of its group `oc / (out_channels / groups)`. `groups == in_channels`
/// is the depthwise convolution (with a channel multiplier `out_channels / in_channels`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel (rows, cols).
    pub kernel: (usize, usize),
    /// Stride (rows, cols).
    pub stride: (usize, usize),
    /// Zero padding (rows, cols).
    pub padding: (usize, usize),
    /// Float (shadow) weights `[out_channels][in_channels/groups * kh * kw]`, column `ic*kh*kw + ky*kw + kx`
    /// with `ic` counted within the output channel's group.
    pub weight: Vec<f32>,
    /// Bias, `[out_channels]`.
    pub bias: Vec<f32>,
    /// Fake-quantizer of the weights (rows = output channels, cols = [`Conv2d::k`]); `None` for f32.
    pub weight_quant: Option<WeightQuantizer>,
    /// dL/dweight of the last backward pass.
    pub grad_weight: Vec<f32>,
    /// dL/dbias of the last backward pass.
    pub grad_bias: Vec<f32>,
    weight_q: Vec<f32>,
    grad_weight_q: Vec<f32>,
    /// im2col of the last training forward, `[K, B*P]`.
    col: Vec<f32>,
    /// Input shape `[B, C, H, W]` of the last training forward.
    input_shape: Vec<usize>,
    /// Output of the last forward pass; this and the scratch buffers below are reused from step to step.
    output: Tensor,
    /// dL/dinput of the last backward pass.
    input_grad: Tensor,
    /// The group count and the state of the grouped paths; `None` for a dense convolution (`groups == 1`).
    /// Boxed: `Conv2d` is the largest variant of [`super::Layer`].
    grouped: Option<Box<grouped::GroupState>>,
    /// `W^T [K, oc]` of the last forward.
    w_t: Vec<f32>,
    /// Zero-padded input planes, one sample after the other (training forward, padded layers only).
    padded: Vec<f32>,
    /// Stride-1 layers: where row `k` of the implicit im2col starts in a padded sample (see
    /// [`Geometry::implicit`]).
    offsets: Vec<usize>,
    /// Backward scratch, boxed: inline it made `Conv2d` the one variant of [`super::Layer`] over 200 bytes
    /// larger than the next.
    scratch: Box<BackwardScratch>,
}

/// [`Conv2d`]'s backward buffers, reused from step to step.
#[derive(Debug, Clone, Default)]
struct BackwardScratch {
    /// Per backward group: `[dW partial (oc*K) | db partial (oc)]`.
    partials: Vec<f32>,
    /// Per backward group: one sample's `dcol [K, P]` (or, for the transposed dX, its padded dY and product).
    dcol: Vec<f32>,
    /// Stride-1 layers, per backward group: the output gradient of its samples at the padded width, zero in
    /// the discarded columns.
    dy_wide: Vec<f32>,
    /// Weights of the transposed convolution that gives dX (see [`Geometry::transposed`]), `[oc*kh*kw, ic]`.
    w_flip: Vec<f32>,
    /// Row offsets of the transposed convolution's implicit im2col.
    offsets_t: Vec<usize>,
}

/// Output size of a window of `k` with stride `s` over `n + 2*p`, or `None` if it does not fit (or k, s = 0, or
/// the padded size overflows: shape inference runs on sizes read from files).
pub fn window_len(n: usize, k: usize, s: usize, p: usize) -> Option<usize> {
    let padded = p.checked_mul(2)?.checked_add(n)?;
    (k >= 1 && s >= 1 && padded >= k).then(|| (padded - k) / s + 1)
}

/// Glorot-uniform weights `[oc][ic/groups * kh * kw]`: limit `sqrt(6 / (fan_in + fan_out))` with the fans one
/// output and one input actually see, `fan_in = ic/groups * kh*kw`, `fan_out = oc/groups * kh*kw` (Keras' default
/// for `groups == 1`).
fn glorot(
    in_channels: usize,
    out_channels: usize,
    kernel: (usize, usize),
    groups: usize,
    rng: &mut Rng,
) -> Vec<f32> {
    let area = kernel.0 * kernel.1;
    let (ic, oc) = (in_channels / groups, out_channels / groups);
    let limit = (6.0 / ((ic + oc) * area) as f32).sqrt();
    (0..out_channels * ic * area)
        .map(|_| rng.uniform_range(-limit, limit))
        .collect()
}

/// The range of output columns `ox` whose input column `ox*s + kx - p` lies in `[0, n)`.
fn valid_range(out: usize, n: usize, s: usize, kx: usize, p: usize) -> (usize, usize) {
    let lo = if p > kx { (p - kx).div_ceil(s) } else { 0 };
    // ox*s + kx - p <= n - 1  <=>  ox <= (n - 1 + p - kx) / s
    let hi = if n + p > kx {
        ((n - 1 + p - kx) / s + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Sum in 8 interleaved lanes, then the lanes in a fixed order: vectorizes (a plain f32 `sum` is one serial
/// chain of adds, ~4 cycles each: 0.4 ms per LeNet batch for conv1's bias gradient alone) and stays
/// deterministic.
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    let lanes = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    lanes + tail
}

/// `dw` and `db` (overwritten) as the sums of per-group partials `[dW | db]` (each `dw.len() + db.len()` long),
/// added in group order, so the result does not depend on how the groups were spread over threads.
fn sum_partials(partials: &[f32], dw: &mut [f32], db: &mut [f32]) {
    let n = dw.len();
    dw.fill(0.0);
    db.fill(0.0);
    for part in partials.chunks_exact((n + db.len()).max(1)) {
        for (d, v) in dw.iter_mut().zip(&part[..n]) {
            *d += v;
        }
        for (d, v) in db.iter_mut().zip(&part[n..]) {
            *d += v;
        }
    }
}

/// `dst.copy_from_slice(src)` for rows of a few dozen floats: fixed-size chunk copies are inlined, where a
/// `memcpy` call per row (700 rows per LeNet conv1 sample) cost more than the copying.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let block: [f32; 8] = sc.try_into().unwrap_or([0.0; 8]);
        dc.copy_from_slice(&block);
    }
    for (dv, &sv) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *dv = sv;
    }
}

/// `dst += src` over the leading whole `N`-float chunks of both, as fixed-size blocks (they vectorize); returns
/// the unprocessed tails.
#[inline(always)]
fn add_blocks<'a, 'b, const N: usize>(
    dst: &'a mut [f32],
    src: &'b [f32],
) -> (&'a mut [f32], &'b [f32]) {
    let mut d = dst.chunks_exact_mut(N);
    let mut s = src.chunks_exact(N);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let mut block: [f32; N] = sc.try_into().unwrap_or([0.0; N]);
        for (b, &v) in block.iter_mut().zip(dc.iter()) {
            *b += v;
        }
        dc.copy_from_slice(&block);
    }
    (d.into_remainder(), s.remainder())
}

/// `dst += src` elementwise for rows of a few dozen floats: fixed-size chunks vectorize, where the plain loop
/// over LeNet conv2's 10-float rows ran one scalar add at a time (12% of a training step in col2im).
#[inline(always)]
fn add_short(dst: &mut [f32], src: &[f32]) {
    let (d, s) = add_blocks::<8>(dst, src);
    let (d, s) = add_blocks::<4>(d, s);
    for (dv, &sv) in d.iter_mut().zip(s) {
        *dv += sv;
    }
}

/// The weights of [`Geometry::transposed`] in the layout of the implicit product's `A^T`: `out[(c*kh + ky)*kw +
/// kx][i] = w[c][(i*kh + kh-1-ky)*kw + kw-1-kx]` for `w = [oc][ic*kh*kw]`.
fn flip_transpose(w: &[f32], oc: usize, ic: usize, kernel: (usize, usize), out: &mut Vec<f32>) {
    let (kh, kw) = kernel;
    let area = kh * kw;
    out.resize(oc * area * ic, 0.0);
    for c in 0..oc {
        for i in 0..ic {
            let src = &w[(c * ic + i) * area..(c * ic + i + 1) * area];
            for (t, &v) in src.iter().rev().enumerate() {
                out[(c * area + t) * ic + i] = v;
            }
        }
    }
}

/// Shape of one sample's convolution, for the per-sample im2col and col2im.
/// `dx[offsets[k]..][..n] += rows[k]` for each row of `rows[K, n]`, k ascending.
fn add_wide_rows(rows: &[f32], n: usize, offsets: &[usize], dx: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx2 {
        // SAFETY: isa() reports AVX2 only when the CPU has it; the body is safe code.
        return unsafe { add_wide_rows__avx2(rows, n, offsets, dx) };
    }
    add_wide_rows_portable(rows, n, offsets, dx);
}

/// [`add_wide_rows`] compiled for AVX2 (8-float adds; the same adds, so the same results).
///
/// # Safety
/// The CPU must support AVX2 (the body is safe code).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(non_snake_case)]
unsafe fn add_wide_rows__avx2(rows: &[f32], n: usize, offsets: &[usize], dx: &mut [f32]) {
    add_wide_rows_portable(rows, n, offsets, dx);
}

#[inline(always)]
fn add_wide_rows_portable(rows: &[f32], n: usize, offsets: &[usize], dx: &mut [f32]) {
    for (row, &off) in rows.chunks_exact(n.max(1)).zip(offsets) {
        for (d, &v) in dx[off..off + n].iter_mut().zip(row) {
            *d += v;
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    oh: usize,
    ow: usize,
}

impl Geometry {
    /// Unfolds one sample `x[C, H, W]` into `col[K, P]`, writing every element (padded positions are 0).
    ///
    /// A padded input is first copied into a zero-bordered `[C, H+2ph, W+2pw]` scratch (a few KB, far smaller than
    /// `col`), so every column row becomes one fixed-length copy with no edge tests or fills: the per-row branches
    /// and short fills were most of conv1's unfold time (700 rows of 28 floats per LeNet sample).
    ///
    /// `pad` is that scratch, [`Geometry::padded_len`] elements (any contents; empty when there is no padding).
    fn im2col(&self, x: &[f32], col: &mut [f32], pad: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if isa() == Isa::Avx2 {
            // SAFETY: isa() reports AVX2 only when the CPU has it; the body is safe code.
            return unsafe { self.im2col__avx2(x, col, pad) };
        }
        self.im2col_portable(x, col, pad);
    }

    /// [`Geometry::im2col`] compiled for AVX2: the short row copies move 8 floats at a time instead of 4 (the
    /// crate's baseline is SSE2). Same results: only copies.
    ///
    /// # Safety
    /// The CPU must support AVX2 (the body is safe code).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(non_snake_case)]
    unsafe fn im2col__avx2(&self, x: &[f32], col: &mut [f32], pad: &mut [f32]) {
        self.im2col_portable(x, col, pad);
    }

    #[inline(always)]
    fn im2col_portable(&self, x: &[f32], col: &mut [f32], pad: &mut [f32]) {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (ph, pw) = self.padding;
        let (h, w, ow) = (self.h, self.w, self.ow);
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        let src: &[f32] = if ph == 0 && pw == 0 {
            x
        } else {
            self.pad_into(x, pad);
            pad
        };
        let p = self.oh * ow;
        for (kidx, row) in col.chunks_exact_mut(p).enumerate() {
            let (ic, ky, kx) = (kidx / (kh * kw), (kidx / kw) % kh, kidx % kw);
            let plane = &src[ic * hp * wp..(ic + 1) * hp * wp];
            // Output row oy reads padded row oy*sh + ky <= (oh-1)*sh + kh-1 < hp (and likewise for columns).
            for (oy, dst) in row.chunks_exact_mut(ow).enumerate() {
                let start = (oy * sh + ky) * wp + kx;
                if sw == 1 {
                    copy_short(dst, &plane[start..start + ow]);
                } else {
                    for (ox, d) in dst.iter_mut().enumerate() {
                        *d = plane[start + ox * sw];
                    }
                }
            }
        }
    }

    /// Copies one sample `x[C, H, W]` into zero-bordered planes `pad[C, H+2ph, W+2pw]`, every element written.
    #[inline(always)]
    fn pad_into(&self, x: &[f32], pad: &mut [f32]) {
        let (ph, pw) = self.padding;
        let (h, w) = (self.h, self.w);
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        if ph == 0 && pw == 0 {
            let n = x.len().min(pad.len());
            pad[..n].copy_from_slice(&x[..n]);
            return;
        }
        // Only the border is zeroed (one write per element: a fill of the whole buffer first cost a second
        // pass over it).
        for (dst_plane, src_plane) in pad
            .chunks_exact_mut((hp * wp).max(1))
            .zip(x.chunks_exact((h * w).max(1)))
        {
            let (top, rest) = dst_plane.split_at_mut(ph * wp);
            let (middle, bottom) = rest.split_at_mut(h * wp);
            top.fill(0.0);
            bottom.fill(0.0);
            for (dst_row, src_row) in middle
                .chunks_exact_mut(wp.max(1))
                .zip(src_plane.chunks_exact(w.max(1)))
            {
                dst_row[..pw].fill(0.0);
                copy_short(&mut dst_row[pw..pw + w], src_row);
                dst_row[pw + w..].fill(0.0);
            }
        }
    }

    /// Whether the layer runs by implicit im2col: with stride 1, row `k = (ic, ky, kx)` of a sample's im2col,
    /// taken over the positions `oy * Wp + ox` of the padded width `Wp = W + 2pw`, is the padded input read
    /// contiguously from `ic*Hp*Wp + ky*Wp + kx`. The products then read the padded input in place instead of
    /// a materialized `[K, P]` matrix (which, kept for the whole batch, was 8.8 MB per LeNet step written in
    /// forward and read back from memory by the weight gradient); they also compute the `ow..Wp` columns of
    /// each output row, which are discarded (LeNet: 892 columns for 784 outputs in conv1, 136 for 100 in
    /// conv2).
    fn implicit(&self) -> bool {
        self.stride == (1, 1)
    }

    /// The stride-1 convolution whose output is dX, for a stride-1 layer with padding below the kernel size:
    /// `dX[ic, y, x] = sum_{oc, ky, kx} W[oc, ic, kh-1-ky, kw-1-kx] dYp[oc, y+ky, x+kx]`, with `dYp` = dY
    /// zero-padded by `(kh-1-ph, kw-1-pw)`; its input is `[oc, OH, OW]` and its output `[ic, H, W]`. `None` for
    /// other layers.
    fn transposed(&self) -> Option<Geometry> {
        let (kh, kw) = self.kernel;
        let (ph, pw) = self.padding;
        (self.stride == (1, 1) && ph < kh && pw < kw).then_some(Geometry {
            h: self.oh,
            w: self.ow,
            kernel: self.kernel,
            stride: (1, 1),
            padding: (kh - 1 - ph, kw - 1 - pw),
            oh: self.h,
            ow: self.w,
        })
    }

    /// Padded row length `Wp`.
    fn wp(&self) -> usize {
        self.w + 2 * self.padding.1
    }

    /// Elements of one padded sample of `channels` planes.
    fn padded_sample_len(&self, channels: usize) -> usize {
        channels * (self.h + 2 * self.padding.0) * self.wp()
    }

    /// Columns of the implicit products: positions `oy * Wp + ox` up to the last output, `(oh-1)*Wp + ow`.
    fn n_wide(&self) -> usize {
        (self.oh.max(1) - 1) * self.wp() + self.ow
    }

    /// Start of each implicit im2col row in a padded sample (see [`Geometry::implicit`]). The last row ends
    /// at `(C-1)*Hp*Wp + (kh-1)*Wp + kw-1 + n_wide = C*Hp*Wp` (stride 1: `oh + kh - 1 = Hp`), inside the sample.
    fn row_offsets(&self, channels: usize, out: &mut Vec<usize>) {
        let (kh, kw) = self.kernel;
        let (hp, wp) = (self.h + 2 * self.padding.0, self.wp());
        out.clear();
        for ic in 0..channels {
            for ky in 0..kh {
                for kx in 0..kw {
                    out.push(ic * hp * wp + ky * wp + kx);
                }
            }
        }
    }

    /// Length of [`Geometry::im2col`]'s padded scratch for `channels` input channels (0 without padding).
    fn padded_len(&self, channels: usize) -> usize {
        if self.padding == (0, 0) {
            0
        } else {
            channels * (self.h + 2 * self.padding.0) * (self.w + 2 * self.padding.1)
        }
    }

    /// Adds one sample's `dcol[K, P]` back into `dx[C, H, W]`.
    fn col2im(&self, dcol: &[f32], dx: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if isa() == Isa::Avx2 {
            // SAFETY: isa() reports AVX2 only when the CPU has it; the body is safe code.
            return unsafe { self.col2im__avx2(dcol, dx) };
        }
        self.col2im_portable(dcol, dx);
    }

    /// [`Geometry::col2im`] compiled for AVX2 (8-float adds). The same adds in the same order as the portable
    /// code (no FMA contraction in Rust), so the same results.
    ///
    /// # Safety
    /// The CPU must support AVX2 (the body is safe code).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[allow(non_snake_case)]
    unsafe fn col2im__avx2(&self, dcol: &[f32], dx: &mut [f32]) {
        self.col2im_portable(dcol, dx);
    }

    #[inline(always)]
    fn col2im_portable(&self, dcol: &[f32], dx: &mut [f32]) {
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let (ph, pw) = self.padding;
        let (h, w, ow) = (self.h, self.w, self.ow);
        let p = self.oh * ow;
        for (kidx, row) in dcol.chunks_exact(p).enumerate() {
            let (ic, ky, kx) = (kidx / (kh * kw), (kidx / kw) % kh, kidx % kw);
            let (lo, hi) = valid_range(ow, w, sw, kx, pw);
            if hi <= lo {
                continue;
            }
            let plane = &mut dx[ic * h * w..(ic + 1) * h * w];
            for (oy, src) in row.chunks_exact(ow).enumerate() {
                let iy = oy * sh + ky;
                if iy < ph || iy - ph >= h {
                    continue;
                }
                let dst = &mut plane[(iy - ph) * w..(iy - ph + 1) * w];
                if sw == 1 {
                    let start = lo + kx - pw;
                    add_short(&mut dst[start..start + (hi - lo)], &src[lo..hi]);
                } else {
                    for ox in lo..hi {
                        dst[ox * sw + kx - pw] += src[ox];
                    }
                }
            }
        }
    }
}

impl Conv2d {
    /// Glorot-uniform weights with `fan_in = ic*kh*kw`, `fan_out = oc*kh*kw` (Keras' default) and zero bias.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        rng: &mut Rng,
    ) -> Self {
        let weight = glorot(in_channels, out_channels, kernel, 1, rng);
        Self::from_weights(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            weight,
            vec![0.0; out_channels],
        )
    }

    /// A layer with the given weights (`[oc][ic*kh*kw]`) and bias; lengths are the caller's contract.
    pub fn from_weights(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Self {
        debug_assert_eq!(
            weight.len(),
            out_channels * in_channels * kernel.0 * kernel.1
        );
        debug_assert_eq!(bias.len(), out_channels);
        Self::with_checked_weights(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            weight,
            bias,
        )
    }

    /// A one-group layer of `weight` and `bias`, whose lengths the caller has checked for its group count.
    fn with_checked_weights(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            grad_weight: vec![0.0; weight.len()],
            grad_bias: vec![0.0; bias.len()],
            weight,
            bias,
            weight_quant: None,
            weight_q: Vec::new(),
            grad_weight_q: Vec::new(),
            col: Vec::new(),
            input_shape: Vec::new(),
            output: Tensor::default(),
            input_grad: Tensor::default(),
            grouped: None,
            w_t: Vec::new(),
            padded: Vec::new(),
            offsets: Vec::new(),
            scratch: Box::default(),
        }
    }

    /// Columns of the weight matrix, `in_channels / groups * kh * kw`.
    pub fn k(&self) -> usize {
        self.in_channels / self.groups() * self.kernel.0 * self.kernel.1
    }

    /// Channel groups: output channel `oc` reads the `in_channels / groups` input channels of group
    /// `oc / (out_channels / groups)`; 1 for a dense convolution, `in_channels` for a depthwise one. Fixed at
    /// construction ([`Conv2d::new_grouped`]), as the weight layout depends on it.
    pub fn groups(&self) -> usize {
        self.grouped.as_ref().map_or(1, |g| g.groups)
    }

    /// Per-sample output shape `[out_channels, OH, OW]` for an input of `[in_channels, H, W]`.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let fits = |(c, h, w)| {
            (c == self.in_channels)
                .then(|| self.output_hw(h, w))
                .flatten()
        };
        match input[..] {
            [c, h, w] => fits((c, h, w)),
            _ => None,
        }
        .map(|(oh, ow)| vec![self.out_channels, oh, ow])
        .ok_or_else(|| {
            Error::Shape(format!(
                "conv2d {}->{} {}x{}: per-sample shape {input:?} (expected [{}, H, W] with H, W covering the kernel)",
                self.in_channels, self.out_channels, self.kernel.0, self.kernel.1, self.in_channels
            ))
        })
    }

    /// Output (height, width) for an input of (h, w), or `None` if the kernel does not fit.
    pub fn output_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        Some((
            window_len(h, self.kernel.0, self.stride.0, self.padding.0)?,
            window_len(w, self.kernel.1, self.stride.1, self.padding.1)?,
        ))
    }

    /// The weights the product uses: fake-quantized when quantizing (valid after a forward pass).
    pub fn effective_weight(&self) -> &[f32] {
        if self.weight_quant.is_some() && self.weight_q.len() == self.weight.len() {
            &self.weight_q
        } else {
            &self.weight
        }
    }

    /// Folds a following batch norm into this convolution (Jacob et al. 2018, sec. 3.2):
    /// `w' = w * gamma / sqrt(var + eps)`, `b' = (b - mean) * gamma / sqrt(var + eps) + beta`, with the running
    /// statistics. After folding, this layer alone computes what conv followed by the (eval-mode) norm did.
    /// Weight rows are output channels whatever the groups, so grouped and depthwise layers fold the same way.
    pub fn fold_batchnorm(&mut self, bn: &super::BatchNorm2d) -> Result<()> {
        if bn.channels != self.out_channels {
            return Err(Error::Shape(format!(
                "cannot fold a batch norm of {} channels into a conv with {} outputs",
                bn.channels, self.out_channels
            )));
        }
        let k = self.k();
        for c in 0..self.out_channels {
            let f =
                f64::from(bn.gamma[c]) / (f64::from(bn.running_var[c]) + f64::from(bn.eps)).sqrt();
            for w in &mut self.weight[c * k..(c + 1) * k] {
                *w = (f64::from(*w) * f) as f32;
            }
            self.bias[c] = ((f64::from(self.bias[c]) - f64::from(bn.running_mean[c])) * f
                + f64::from(bn.beta[c])) as f32;
        }
        Ok(())
    }

    fn check_input(&self, x: &Tensor) -> Result<(usize, usize, usize, usize, usize)> {
        let bad = || {
            Error::Shape(format!(
                "conv2d {}->{} {}x{}: input shape {:?} (expected [B, {}, H, W])",
                self.in_channels,
                self.out_channels,
                self.kernel.0,
                self.kernel.1,
                x.shape,
                self.in_channels
            ))
        };
        let [b, c, h, w] = x.shape[..] else {
            return Err(bad());
        };
        if c != self.in_channels || x.len() != b * c * h * w {
            return Err(bad());
        }
        let (oh, ow) = self.output_hw(h, w).ok_or_else(bad)?;
        Ok((b, h, w, oh, ow))
    }

    fn geometry(&self, h: usize, w: usize, oh: usize, ow: usize) -> Geometry {
        Geometry {
            h,
            w,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            oh,
            ow,
        }
    }

    /// Forward pass; in training mode the im2col matrices are kept for [`Conv2d::backward`].
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_buffered(x, train)?;
        Ok(self.output.clone())
    }

    /// The output of the last forward pass.
    pub(crate) fn output(&self) -> &Tensor {
        &self.output
    }

    /// dL/dinput of the last backward pass.
    pub(crate) fn input_grad(&self) -> &Tensor {
        &self.input_grad
    }

    /// [`Conv2d::forward`] into the layer's output buffer.
    pub(crate) fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<()> {
        let (b, h, w, oh, ow) = self.check_input(x)?;
        let k = self.k();
        if let Some(q) = &mut self.weight_quant {
            self.weight_q.resize(self.weight.len(), 0.0);
            q.forward(&self.weight, self.out_channels, k, &mut self.weight_q);
        }
        if self.grouped.is_some() {
            return self.forward_grouped(x, train);
        }
        let geom = self.geometry(h, w, oh, ow);
        let (oc, p) = (self.out_channels, oh * ow);
        let wt = if self.weight_quant.is_some() {
            &self.weight_q
        } else {
            &self.weight
        };
        // W^T [K, oc]: the kernel broadcasts one weight per (step of K, output channel) against a row of col.
        let w_t = &mut self.w_t;
        w_t.resize(k * oc, 0.0);
        for (c, row) in wt.chunks_exact(k.max(1)).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                w_t[j * oc + c] = v;
            }
        }
        // Every output element is written below, so the old contents do not matter.
        reshape_buffer(&mut self.output, &[b, oc, oh, ow]);
        let x_len = (self.in_channels * h * w).max(1);
        if geom.implicit() {
            self.forward_implicit(x, &geom, train);
            return Ok(());
        }
        let w_t = &self.w_t;
        let bias = &self.bias;
        let sample = |xs: &[f32], cs: &mut [f32], pad: &mut [f32], ys: &mut [f32]| {
            geom.im2col(xs, cs, pad);
            gemm_atb(k, oc, p, w_t, cs, ys);
            for (plane, &bc) in ys.chunks_exact_mut(p).zip(bias) {
                for v in plane {
                    *v += bc;
                }
            }
        };
        let y = &mut self.output.data;
        let pad_len = geom.padded_len(self.in_channels);
        if train {
            // Every element is written by im2col (padding included), so the old contents do not matter.
            self.col.resize(b * k * p, 0.0);
            self.padded.resize(b * pad_len, 0.0);
            // `chunks_mut(0)` panics, and an unpadded layer has no scratch: hand each sample an empty slice then.
            let pads: Vec<&mut [f32]> = if pad_len == 0 {
                (0..b).map(|_| <&mut [f32]>::default()).collect()
            } else {
                self.padded.chunks_mut(pad_len).collect()
            };
            y.par_chunks_mut((oc * p).max(1))
                .zip(self.col.par_chunks_mut((k * p).max(1)))
                .zip(x.data.par_chunks(x_len))
                .zip(pads)
                .for_each(|(((ys, cs), xs), pad)| sample(xs, cs, pad, ys));
            self.input_shape.clone_from(&x.shape);
        } else {
            // Inference keeps no cache: one [K, P] scratch per rayon job instead of the whole batch's columns.
            y.par_chunks_mut((oc * p).max(1))
                .zip(x.data.par_chunks(x_len))
                .for_each_init(
                    || (vec![0.0f32; k * p], vec![0.0f32; pad_len]),
                    |(cs, pad), (ys, xs)| sample(xs, cs, pad, ys),
                );
            self.input_shape.clear();
        }
        Ok(())
    }

    /// [`Conv2d::forward_buffered`] of a stride-1 layer by implicit im2col (see [`Geometry::implicit`]), after
    /// `w_t` and the output buffer are set up. Each output is the same sum in the same order as the
    /// im2col product (its K terms in ascending order), plus the bias, so the results are identical.
    fn forward_implicit(&mut self, x: &Tensor, geom: &Geometry, train: bool) {
        let (oc, k, ow, p) = (self.out_channels, self.k(), geom.ow, geom.oh * geom.ow);
        let (wp, nw) = (geom.wp(), geom.n_wide());
        let x_len = (self.in_channels * geom.h * geom.w).max(1);
        let pad_len = geom.padded_sample_len(self.in_channels).max(1);
        geom.row_offsets(self.in_channels, &mut self.offsets);
        let (w_t, bias, offsets) = (&self.w_t, &self.bias, &self.offsets);
        let sample = |xs: &[f32], pad: &mut [f32], wide: &mut [f32], ys: &mut [f32]| {
            geom.pad_into(xs, pad);
            gemm_atb_rows(k, oc, nw, w_t, pad, offsets, wide);
            for ((plane, &bc), src) in ys
                .chunks_exact_mut(p.max(1))
                .zip(bias)
                .zip(wide.chunks_exact(nw.max(1)))
            {
                for (oy, row) in plane.chunks_exact_mut(ow.max(1)).enumerate() {
                    for (v, &s) in row.iter_mut().zip(&src[oy * wp..]) {
                        *v = s + bc;
                    }
                }
            }
        };
        let y = &mut self.output.data;
        if train {
            // Every element is written by pad_into, so the old contents do not matter. The wide product is
            // per-job scratch (read back at once), not a batch buffer: kept per sample it would cycle 1.4 MB
            // (LeNet conv1) through the cache at every step.
            self.padded.resize(x.rows() * pad_len, 0.0);
            y.par_chunks_mut((oc * p).max(1))
                .zip(self.padded.par_chunks_mut(pad_len))
                .zip(x.data.par_chunks(x_len))
                .for_each_init(
                    || vec![0.0f32; oc * nw],
                    |wide, ((ys, pad), xs)| sample(xs, pad, wide, ys),
                );
            self.input_shape.clone_from(&x.shape);
            self.col.clear();
        } else {
            y.par_chunks_mut((oc * p).max(1))
                .zip(x.data.par_chunks(x_len))
                .for_each_init(
                    || (vec![0.0f32; pad_len], vec![0.0f32; oc * nw]),
                    |(pad, wide), (ys, xs)| sample(xs, pad, wide, ys),
                );
            self.input_shape.clear();
        }
    }

    /// Backward pass: sets `grad_weight` and `grad_bias`, returns dL/dx.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        self.backward_impl(grad, true)
    }

    /// Backward pass; skips the input gradient (col2im) when not needed, returning an empty tensor then.
    pub(crate) fn backward_impl(&mut self, grad: &Tensor, need_input_grad: bool) -> Result<Tensor> {
        self.backward_buffered(grad, need_input_grad)?;
        Ok(if need_input_grad {
            self.input_grad.clone()
        } else {
            Tensor::default()
        })
    }

    /// Backward pass into the layer's input-gradient buffer (left as it was when `need_input_grad` is false).
    pub(crate) fn backward_buffered(&mut self, grad: &Tensor, need_input_grad: bool) -> Result<()> {
        if self.grouped.is_some() {
            return self.backward_grouped(grad, need_input_grad);
        }
        let [b, c_in, h, w] = self.input_shape[..] else {
            return Err(Error::Shape(
                "conv2d: backward without a training forward pass".into(),
            ));
        };
        let (oh, ow) = self
            .output_hw(h, w)
            .ok_or_else(|| Error::Shape("conv2d: cached shape does not fit".into()))?;
        let geom = self.geometry(h, w, oh, ow);
        let (oc, k, p) = (self.out_channels, self.k(), oh * ow);
        let implicit = geom.implicit();
        let (nw, wp) = (geom.n_wide(), geom.wp());
        let pad_len = geom.padded_sample_len(c_in);
        let cached = if implicit {
            self.padded.len() == b * pad_len.max(1)
        } else {
            self.col.len() == b * k * p
        };
        if grad.shape != [b, oc, oh, ow] || !cached {
            return Err(Error::Shape(format!(
                "conv2d: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.input_shape
            )));
        }
        let wt = if self.weight_quant.is_some() {
            &self.weight_q
        } else {
            &self.weight
        };
        let groups = b.div_ceil(DW_GROUP);
        let x_len = c_in * h * w;
        let part_len = oc * k + oc;
        self.scratch.partials.resize(groups * part_len, 0.0);
        // Unpadded stride-1 layers take dX at the padded width too (= the input width here): dcol_wide [K, n_wide]
        // = W^T dY_wide, and row k of it adds into dX contiguously from offset(k) (its discarded columns are
        // exact zeros, since dY_wide is zero there). Each dX element gets the same terms in the same k order as
        // through col2im, so the same value; col2im's 10-float rows (LeNet conv2) cost more than the 36% of
        // extra columns in the product.
        let wide_dx = implicit && self.padding == (0, 0);
        // Padded stride-1 layers whose padding is below the kernel size take dX as a stride-1 convolution of
        // dY (see [`Geometry::transposed`]) by the same implicit product as the forward pass: no [K, P] matrix
        // written per sample and added back by col2im (at ResNet-20's 28x28 layers, 450 KB per sample, more
        // than L2, and ~2x the time of the product itself).
        let tgeom = (implicit && !wide_dx).then(|| geom.transposed()).flatten();
        let dcol_len = if let Some(t) = &tgeom {
            if need_input_grad {
                t.row_offsets(oc, &mut self.scratch.offsets_t);
                flip_transpose(wt, oc, c_in, self.kernel, &mut self.scratch.w_flip);
            }
            t.padded_sample_len(oc) + c_in * t.n_wide()
        } else if wide_dx {
            k * nw
        } else {
            k * p
        };
        let dx_parts: Vec<(&mut [f32], &mut [f32])> = if need_input_grad {
            reshape_buffer(&mut self.input_grad, &[b, c_in, h, w]);
            if tgeom.is_none() {
                // col2im adds into dx (the transposed path overwrites it).
                self.input_grad.data.fill(0.0);
            }
            self.scratch.dcol.resize(groups * dcol_len, 0.0);
            self.input_grad
                .data
                .chunks_mut((DW_GROUP * x_len).max(1))
                .zip(self.scratch.dcol.chunks_mut(dcol_len.max(1)))
                .collect()
        } else {
            (0..groups)
                .map(|_| (<&mut [f32]>::default(), <&mut [f32]>::default()))
                .collect()
        };
        let dy_group_len = DW_GROUP * oc * nw;
        let dy_wides: Vec<&mut [f32]> = if implicit {
            self.scratch.dy_wide.resize(groups * dy_group_len, 0.0);
            self.scratch
                .dy_wide
                .chunks_mut(dy_group_len.max(1))
                .collect()
        } else {
            (0..groups).map(|_| <&mut [f32]>::default()).collect()
        };
        let (col, padded, offsets, gd) = (&self.col, &self.padded, &self.offsets, &grad.data);
        let (w_flip, offsets_t) = (&self.scratch.w_flip, &self.scratch.offsets_t);
        // Per group of samples: [dW partial (oc*K) | db partial (oc)], and dX of its samples.
        self.scratch
            .partials
            .par_chunks_mut(part_len.max(1))
            .zip(dx_parts)
            .zip(dy_wides)
            .enumerate()
            .for_each(|(gi, ((part, (dx_group, dcol)), dy_wide))| {
                let s0 = gi * DW_GROUP;
                let s1 = (s0 + DW_GROUP).min(b);
                let (pw, pb) = part.split_at_mut(oc * k);
                let gd_group = &gd[s0 * oc * p..s1 * oc * p];
                if implicit {
                    // dY at the padded width, zero in the discarded columns `ow..Wp`, so that
                    // dW[oc, k] = sum over samples and columns of dY_wide[oc, j] * padded[offset(k) + j].
                    let dy_wide = &mut dy_wide[..(s1 - s0) * oc * nw];
                    for (dst, src) in dy_wide
                        .chunks_exact_mut(nw.max(1))
                        .zip(gd_group.chunks_exact(p.max(1)))
                    {
                        for (oy, row) in src.chunks_exact(ow.max(1)).enumerate() {
                            let d = &mut dst[oy * wp..];
                            copy_short(&mut d[..ow], row);
                            let gap = (wp - ow).min(d.len() - ow);
                            d[ow..ow + gap].fill(0.0);
                        }
                    }
                    gemm_abt_batched_rows(
                        s1 - s0,
                        oc,
                        nw,
                        k,
                        dy_wide,
                        oc * nw,
                        &padded[s0 * pad_len..s1 * pad_len],
                        pad_len,
                        offsets,
                        pw,
                    );
                } else {
                    gemm_abt_batched(
                        s1 - s0,
                        oc,
                        p,
                        k,
                        gd_group,
                        &col[s0 * k * p..s1 * k * p],
                        pw,
                        false,
                    );
                }
                pb.fill(0.0);
                // The group starts at channel 0 of sample s0, so plane i is channel i % oc.
                for (i, plane) in gd[s0 * oc * p..s1 * oc * p].chunks_exact(p).enumerate() {
                    pb[i % oc] += sum_lanes(plane);
                }
                if let (Some(t), false) = (&tgeom, dx_group.is_empty()) {
                    let (kt, nwt, wq) = (oc * self.kernel.0 * self.kernel.1, t.n_wide(), t.wp());
                    let (pad, wide) = dcol.split_at_mut(t.padded_sample_len(oc));
                    for (i, dxs) in dx_group.chunks_exact_mut(x_len).enumerate() {
                        let s = s0 + i;
                        t.pad_into(&gd[s * oc * p..(s + 1) * oc * p], pad);
                        gemm_atb_rows(kt, c_in, nwt, w_flip, pad, offsets_t, wide);
                        for (plane, src) in dxs
                            .chunks_exact_mut((h * w).max(1))
                            .zip(wide.chunks_exact(nwt.max(1)))
                        {
                            for (iy, row) in plane.chunks_exact_mut(w.max(1)).enumerate() {
                                copy_short(row, &src[iy * wq..iy * wq + w]);
                            }
                        }
                    }
                } else if !dx_group.is_empty() && wide_dx {
                    for (dxs, dyw) in dx_group
                        .chunks_exact_mut(x_len)
                        .zip(dy_wide.chunks_exact((oc * nw).max(1)))
                    {
                        gemm_atb(oc, k, nw, wt, dyw, dcol);
                        add_wide_rows(dcol, nw, offsets, dxs);
                    }
                } else if !dx_group.is_empty() {
                    for (i, dxs) in dx_group.chunks_exact_mut(x_len).enumerate() {
                        let s = s0 + i;
                        // dcol [K, P] = W^T dY_s
                        gemm_atb(oc, k, p, wt, &gd[s * oc * p..(s + 1) * oc * p], dcol);
                        geom.col2im(dcol, dxs);
                    }
                }
            });
        let dw = if self.weight_quant.is_some() {
            self.grad_weight_q.resize(oc * k, 0.0);
            &mut self.grad_weight_q
        } else {
            &mut self.grad_weight
        };
        sum_partials(&self.scratch.partials, dw, &mut self.grad_bias);
        if let Some(q) = &mut self.weight_quant {
            self.grad_weight.fill(0.0);
            q.backward(&self.weight, &self.grad_weight_q, &mut self.grad_weight);
        }
        Ok(())
    }

    /// The layer's parameters with their gradients: weight, bias, then the weight quantizer's learned steps (LSQ).
    pub fn params_mut(&mut self) -> Vec<Param<'_>> {
        // The quantizer's learned parameters (LSQ steps) are optimizer parameters too, initialized before the
        // optimizer first sees them, as in `Dense::params_mut`.
        let k = self.k();
        if let Some(q) = &mut self.weight_quant {
            q.ensure_init(&self.weight, self.out_channels, k);
        }
        let mut params = vec![
            Param {
                name: "weight",
                value: &mut self.weight,
                grad: &mut self.grad_weight,
            },
            Param {
                name: "bias",
                value: &mut self.bias,
                grad: &mut self.grad_bias,
            },
        ];
        if let Some(q) = &mut self.weight_quant {
            params.extend(q.params_mut());
        }
        params
    }
}

impl Stateful for Conv2d {
    /// `weight`, `bias`, then the weight quantizer's state under `weight_quant`.
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        super::dense::visit_weight_layer(
            v,
            &mut self.weight,
            &mut self.bias,
            &mut self.weight_quant,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implicit_stride_one_path_equals_the_im2col_products() {
        // (c_in, h, w, oc, kernel, padding): LeNet conv1 and conv2, asymmetric kernels and padding, kernel = input.
        let cases = [
            (1, 28, 28, 6, (5, 5), (2, 2)),
            (6, 14, 14, 16, (5, 5), (0, 0)),
            (2, 7, 5, 3, (3, 2), (1, 2)),
            (3, 6, 9, 5, (2, 4), (0, 0)),
            (1, 4, 4, 2, (4, 4), (0, 0)),
        ];
        let batch = 11; // one full dW group of 8 and a partial one
        for (seed, &(c_in, h, w, oc, kernel, padding)) in cases.iter().enumerate() {
            let mut rng = Rng::new(40 + seed as u64);
            let mut conv = Conv2d::new(c_in, oc, kernel, (1, 1), padding, &mut rng);
            conv.bias = rng.uniform_vec(oc, -1.0, 1.0);
            let x = Tensor::new(
                rng.uniform_vec(batch * c_in * h * w, -1.0, 1.0),
                vec![batch, c_in, h, w],
            );
            let y = conv.forward(&x, true).unwrap_or_default();
            let (oh, ow) = conv.output_hw(h, w).unwrap_or((0, 0));
            let g = rng.uniform_vec(batch * oc * oh * ow, -1.0, 1.0);
            let dx = conv
                .backward(&Tensor::new(g.clone(), vec![batch, oc, oh, ow]))
                .unwrap_or_default();
            let geom = conv.geometry(h, w, oh, ow);
            assert!(geom.implicit());
            let (k, p) = (conv.k(), oh * ow);
            let mut w_t = vec![0.0; k * oc];
            for (c, row) in conv.weight.chunks_exact(k).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    w_t[j * oc + c] = v;
                }
            }
            let mut col = vec![0.0; batch * k * p];
            let mut pad = vec![0.0; geom.padded_len(c_in)];
            let mut want_dx = vec![0.0; batch * c_in * h * w];
            let mut dcol = vec![0.0; k * p];
            for s in 0..batch {
                let xs = &x.data[s * c_in * h * w..(s + 1) * c_in * h * w];
                let cs = &mut col[s * k * p..(s + 1) * k * p];
                geom.im2col(xs, cs, &mut pad);
                let mut ys = vec![0.0; oc * p];
                gemm_atb(k, oc, p, &w_t, cs, &mut ys);
                for (plane, &bc) in ys.chunks_exact_mut(p).zip(&conv.bias) {
                    for v in plane {
                        *v += bc;
                    }
                }
                let got = &y.data[s * oc * p..(s + 1) * oc * p];
                // Same terms in the same order: identical bits.
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(&ys), "forward, case {seed}, sample {s}");
                let gs = &g[s * oc * p..(s + 1) * oc * p];
                gemm_atb(oc, k, p, &conv.weight, gs, &mut dcol);
                geom.col2im(
                    &dcol,
                    &mut want_dx[s * c_in * h * w..(s + 1) * c_in * h * w],
                );
            }
            // Unpadded: the same terms in the same order (plus exact zeros), so equal values. Padded: the
            // transposed convolution adds the same n = oc*kh*kw terms in another order; two orders each within
            // (n-1) eps sum|t| of the exact sum, and sum|t| <= n max|w| (|dY| <= 1).
            let n = (oc * kernel.0 * kernel.1) as f32;
            let w_max = conv.weight.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let tol = if padding == (0, 0) {
                0.0
            } else {
                2.0 * n * n * w_max * f32::EPSILON
            };
            for (i, (a, b)) in dx.data.iter().zip(&want_dx).enumerate() {
                assert!((a - b).abs() <= tol, "dx, case {seed}, at {i}: {a} vs {b}");
            }
            let mut want_dw = vec![0.0; oc * k];
            super::super::kernels::reference::gemm_abt_batched(
                batch,
                oc,
                p,
                k,
                &g,
                &col,
                &mut want_dw,
                false,
            );
            // Sums of batch * P products of magnitude <= 1 in another order.
            let tol = 4.0 * (batch * p) as f32 * f32::EPSILON;
            for (i, (a, b)) in conv.grad_weight.iter().zip(&want_dw).enumerate() {
                assert!((a - b).abs() <= tol, "dW, case {seed}, at {i}: {a} vs {b}");
            }
        }
    }
}
