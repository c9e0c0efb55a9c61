//! Pooling over NCHW planes without padding: max (with an argmax cache), average, and global average.
use super::activation::reshape_buffer;
use super::conv::window_len;
use super::shape::{chw, nchw, per_task};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

fn out_hw(
    name: &str,
    h: usize,
    w: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
) -> Result<(usize, usize)> {
    match (
        window_len(h, kernel.0, stride.0, 0),
        window_len(w, kernel.1, stride.1, 0),
    ) {
        (Some(oh), Some(ow)) => Ok((oh, ow)),
        _ => Err(Error::Shape(format!(
            "{name}: window {kernel:?} stride {stride:?} does not fit a {h}x{w} input"
        ))),
    }
}

/// Whether `v` replaces the current maximum `best`: larger, or NaN over a number so a poisoned input stays
/// visible. Ties keep the earlier element (row-major), which receives the gradient.
#[inline]
fn beats(v: f32, best: f32) -> bool {
    (v > best) | (v.is_nan() & !best.is_nan())
}

/// Argmax entry of a window whose gradient is cut by a fused ReLU (its maximum is not positive).
const NO_GRAD: u32 = u32::MAX;

/// ReLU of a window maximum, and whether the gradient passes: the same value and mask as max pooling the
/// ReLU's output (ReLU is monotone, and the first maximum of the ReLU'd window is the first raw maximum whenever
/// that is positive; otherwise the ReLU gradient is 0 either way).
#[inline(always)]
fn relu_of_max(best: f32) -> (f32, bool) {
    (if best < 0.0 { 0.0 } else { best }, best > 0.0)
}

/// 2x2 windows with stride 2 (LeNet and VGG pooling): same results as the general loop, without its index
/// arithmetic per element. `args` is empty in inference. `RELU` fuses a preceding ReLU (see [`relu_of_max`]).
#[inline(always)]
fn max_plane_2x2<const RELU: bool>(
    plane: &[f32],
    w: usize,
    oh: usize,
    ow: usize,
    out: &mut [f32],
    args: &mut [u32],
) {
    for oy in 0..oh {
        let r0 = &plane[2 * oy * w..2 * oy * w + 2 * ow];
        let r1 = &plane[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * ow];
        let o = &mut out[oy * ow..(oy + 1) * ow];
        for ox in 0..ow {
            // Selects, not branches: on real activations the winner is unpredictable, and mispredicted
            // branches made this loop ~15 cycles per output.
            let cand = [r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]];
            let (mut best, mut at) = (cand[0], 0usize);
            for (i, &v) in cand.iter().enumerate().skip(1) {
                let take = beats(v, best);
                best = if take { v } else { best };
                at = if take { i } else { at };
            }
            let (value, pass) = if RELU {
                relu_of_max(best)
            } else {
                (best, true)
            };
            o[ox] = value;
            if let Some(a) = args.get_mut(oy * ow + ox) {
                let idx = ((2 * oy + at / 2) * w + 2 * ox + at % 2) as u32;
                *a = if pass { idx } else { NO_GRAD };
            }
        }
    }
}

/// Max pooling. The gradient goes to the first maximum of each window (row-major order).
#[derive(Debug, Clone)]
pub struct MaxPool2d {
    /// Window (rows, cols).
    pub kernel: (usize, usize),
    /// Stride (rows, cols).
    pub stride: (usize, usize),
    /// Index within its input plane of each output's maximum (last training forward).
    argmax: Vec<u32>,
    input_shape: Vec<usize>,
    /// Output of the last forward pass.
    output: Tensor,
    /// dL/dinput of the last backward pass.
    input_grad: Tensor,
    /// The last training forward also applied the preceding ReLU (see [`super::Model::forward`]).
    relu_fused: bool,
}

/// [`max_plane_2x2`] through the AVX2 kernel when the CPU has it. The scalar loop (with the fused ReLU and the
/// argmax) was 13% of a LeNet training step; the kernel does 8 windows per step with the same comparisons.
fn max_plane_2x2_dispatch<const RELU: bool>(
    plane: &[f32],
    w: usize,
    oh: usize,
    ow: usize,
    out: &mut [f32],
    args: &mut [u32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::kernels::isa() == super::kernels::Isa::Avx2
        && plane.len() >= 2 * oh * w
        && w >= 2 * ow
        && out.len() >= oh * ow
        && (args.is_empty() || args.len() >= oh * ow)
        && plane.len() < i32::MAX as usize
    {
        // SAFETY: the CPU has AVX2 (isa()); the checks above are the kernel's bounds contract.
        return unsafe { avx2::max_plane_2x2__avx2::<RELU>(plane, w, oh, ow, out, args) };
    }
    max_plane_2x2::<RELU>(plane, w, oh, ow, out, args);
}

#[cfg(target_arch = "x86_64")]
#[allow(non_snake_case)] // XNNPACK-style kernel names: stem__isa
mod avx2 {
    use super::NO_GRAD;
    use std::arch::x86_64::*;

    /// Even and odd elements of the 16 floats `a ++ b`, each in element order.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn deinterleave(a: __m256, b: __m256) -> (__m256, __m256) {
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
            // shuffle_ps works per 128-bit half: [a0 a2 b0 b2 | a4 a6 b4 b6]; swapping the middle 64-bit pairs
            // restores element order.
            let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            let o = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
            (swap_middle(e), swap_middle(o))
        }
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn swap_middle(v: __m256) -> __m256 {
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
    }

    /// 16 floats at `p`: two plain loads for a full step, else the lanes of `m_lo`, `m_hi` (masked-off lanes
    /// read no memory, so they may lie past the row's end).
    ///
    /// # Safety
    /// The CPU must support AVX2; `p` is readable for 16 floats when `full`, else for the lanes set in `m_lo` and
    /// `m_hi`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load16(p: *const f32, full: bool, m_lo: __m256i, m_hi: __m256i) -> (__m256, __m256) {
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
            if full {
                (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
            } else {
                (
                    _mm256_maskload_ps(p, m_lo),
                    _mm256_maskload_ps(p.add(8), m_hi),
                )
            }
        }
    }

    /// Lanes `0..n` all ones (n clamped to 0..=8).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn first_lanes(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n.min(8) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// AVX2 [`super::max_plane_2x2`]: windows in the same candidate order with the same `beats` rule, so the
    /// same maxima, argmax entries and fused ReLU.
    ///
    /// # Safety
    /// The CPU must support AVX2; `plane` holds at least `2*oh*w` elements with `w >= 2*ow`, `out` at least
    /// `oh*ow`, `args` is empty or at least `oh*ow`, and `plane.len() < i32::MAX`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn max_plane_2x2__avx2<const RELU: bool>(
        plane: &[f32],
        w: usize,
        oh: usize,
        ow: usize,
        out: &mut [f32],
        args: &mut [u32],
    ) {
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
            let with_args = !args.is_empty();
            let lane = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
            let w32 = w as i32;
            // Offset of each candidate from its window's top-left element, in candidate order.
            let offs = [
                _mm256_set1_epi32(0),
                _mm256_set1_epi32(1),
                _mm256_set1_epi32(w32),
                _mm256_set1_epi32(w32 + 1),
            ];
            let zero = _mm256_setzero_ps();
            for oy in 0..oh {
                let r0 = plane.as_ptr().add(2 * oy * w);
                let r1 = r0.add(w);
                let o = out.as_mut_ptr().add(oy * ow);
                let mut ox = 0;
                while ox < ow {
                    let rem = (ow - ox).min(8);
                    let (p0, p1) = (r0.add(2 * ox), r1.add(2 * ox));
                    let (m_lo, m_hi) = (
                        first_lanes(2 * rem),
                        first_lanes((2 * rem).saturating_sub(8)),
                    );
                    let (a0, b0) = load16(p0, rem == 8, m_lo, m_hi);
                    let (a1, b1) = load16(p1, rem == 8, m_lo, m_hi);
                    let (c0, c1) = deinterleave(a0, b0);
                    let (c2, c3) = deinterleave(a1, b1);
                    let mut best = c0;
                    let mut off = offs[0];
                    for (c, &oc) in [c1, c2, c3].iter().zip(&offs[1..]) {
                        // beats(c, best) = c > best, or c is NaN and best is not.
                        let take = _mm256_or_ps(
                            _mm256_cmp_ps::<_CMP_GT_OQ>(*c, best),
                            _mm256_and_ps(
                                _mm256_cmp_ps::<_CMP_UNORD_Q>(*c, *c),
                                _mm256_cmp_ps::<_CMP_ORD_Q>(best, best),
                            ),
                        );
                        best = _mm256_blendv_ps(best, *c, take);
                        off = _mm256_castps_si256(_mm256_blendv_ps(
                            _mm256_castsi256_ps(off),
                            _mm256_castsi256_ps(oc),
                            take,
                        ));
                    }
                    let value = if RELU {
                        _mm256_blendv_ps(best, zero, _mm256_cmp_ps::<_CMP_LT_OQ>(best, zero))
                    } else {
                        best
                    };
                    let m_out = first_lanes(rem);
                    if rem == 8 {
                        _mm256_storeu_ps(o.add(ox), value);
                    } else {
                        _mm256_maskstore_ps(o.add(ox), m_out, value);
                    }
                    if with_args {
                        let base = _mm256_set1_epi32((2 * oy * w + 2 * ox) as i32);
                        let mut idx = _mm256_add_epi32(_mm256_add_epi32(base, lane), off);
                        if RELU {
                            let pass = _mm256_cmp_ps::<_CMP_GT_OQ>(best, zero);
                            idx = _mm256_castps_si256(_mm256_blendv_ps(
                                _mm256_castsi256_ps(_mm256_set1_epi32(NO_GRAD as i32)),
                                _mm256_castsi256_ps(idx),
                                pass,
                            ));
                        }
                        let a = args.as_mut_ptr().add(oy * ow + ox) as *mut i32;
                        if rem == 8 {
                            _mm256_storeu_si256(a as *mut __m256i, idx);
                        } else {
                            _mm256_maskstore_epi32(a, m_out, idx);
                        }
                    }
                    ox += 8;
                }
            }
        }
    }
}

impl MaxPool2d {
    /// Max pooling with the given window and stride.
    pub fn new(kernel: (usize, usize), stride: (usize, usize)) -> Self {
        Self {
            kernel,
            stride,
            argmax: Vec::new(),
            input_shape: Vec::new(),
            output: Tensor::default(),
            input_grad: Tensor::default(),
            relu_fused: false,
        }
    }

    /// Per-sample output shape `[C, OH, OW]` for an input of `[C, H, W]`.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let [c, h, w] = chw("maxpool2d", input)?;
        let (oh, ow) = out_hw("maxpool2d", h, w, self.kernel, self.stride)?;
        Ok(vec![c, oh, ow])
    }

    /// Forward pass into the layer's output buffer; caches the argmax positions in training mode. `relu`
    /// computes `maxpool(relu(x))` (and its gradient on backward) in the same pass.
    pub(crate) fn forward_buffered(&mut self, x: &Tensor, train: bool, relu: bool) -> Result<()> {
        let [b, c, h, w] = nchw("maxpool2d", x)?;
        let (oh, ow) = out_hw("maxpool2d", h, w, self.kernel, self.stride)?;
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.stride;
        let op = oh * ow;
        reshape_buffer(&mut self.output, &[b, c, oh, ow]);
        let y = &mut self.output.data;
        let work = |plane: &[f32], out: &mut [f32], args: &mut [u32]| {
            if (kh, kw, sh, sw) == (2, 2, 2, 2) {
                if relu {
                    max_plane_2x2_dispatch::<true>(plane, w, oh, ow, out, args);
                } else {
                    max_plane_2x2_dispatch::<false>(plane, w, oh, ow, out, args);
                }
                return;
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best = oy * sh * w + ox * sw;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let i = (oy * sh + ky) * w + ox * sw + kx;
                            if beats(plane[i], plane[best]) {
                                best = i;
                            }
                        }
                    }
                    let (value, pass) = if relu {
                        relu_of_max(plane[best])
                    } else {
                        (plane[best], true)
                    };
                    out[oy * ow + ox] = value;
                    if let Some(a) = args.get_mut(oy * ow + ox) {
                        *a = if pass { best as u32 } else { NO_GRAD };
                    }
                }
            }
        };
        let planes = per_task(h * w);
        if train {
            // Every element is written below.
            self.argmax.resize(b * c * op, 0);
            x.data
                .par_chunks(h * w)
                .zip(y.par_chunks_mut(op).zip(self.argmax.par_chunks_mut(op)))
                .with_min_len(planes)
                .for_each(|(plane, (out, args))| work(plane, out, args));
            self.input_shape.clone_from(&x.shape);
            self.relu_fused = relu;
        } else {
            x.data
                .par_chunks(h * w)
                .zip(y.par_chunks_mut(op))
                .with_min_len(planes)
                .for_each(|(plane, out)| work(plane, out, &mut []));
        }
        Ok(())
    }

    /// The output of the last forward pass.
    pub(crate) fn output(&self) -> &Tensor {
        &self.output
    }

    /// Forward pass; caches the argmax positions in training mode.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_buffered(x, train, false)?;
        Ok(self.output.clone())
    }

    /// Whether the last training forward pass also applied the preceding ReLU.
    pub(crate) fn relu_fused(&self) -> bool {
        self.relu_fused
    }

    /// Backward pass into the layer's input-gradient buffer.
    pub(crate) fn backward_buffered(&mut self, grad: &Tensor) -> Result<()> {
        let [b, c, h, w] = self.input_shape[..] else {
            return Err(Error::Shape(
                "maxpool2d: backward without a training forward pass".into(),
            ));
        };
        if grad.len() != self.argmax.len() || grad.rows() != b {
            return Err(Error::Shape(format!(
                "maxpool2d: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.input_shape
            )));
        }
        let op = grad.len() / (b * c).max(1);
        reshape_buffer(&mut self.input_grad, &[b, c, h, w]);
        self.input_grad
            .data
            .par_chunks_mut(h * w)
            .zip(grad.data.par_chunks(op).zip(self.argmax.par_chunks(op)))
            .with_min_len(per_task(h * w))
            .for_each(|(plane, (g, a))| {
                // Zeroed here, plane by plane, while the plane is in cache for the scatter.
                plane.fill(0.0);
                for (&gv, &i) in g.iter().zip(a) {
                    // NO_GRAD (a fused ReLU cut the gradient) is past the end of any plane.
                    if let Some(d) = plane.get_mut(i as usize) {
                        *d += gv;
                    }
                }
            });
        Ok(())
    }

    /// dL/dinput of the last backward pass.
    pub(crate) fn input_grad(&self) -> &Tensor {
        &self.input_grad
    }

    /// Backward pass: each output gradient goes to its window's maximum.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        self.backward_buffered(grad)?;
        Ok(self.input_grad.clone())
    }
}

/// Average pooling (no padding); `global` pools each whole plane to 1x1 whatever its size.
#[derive(Debug, Clone)]
pub struct AvgPool2d {
    /// Window (rows, cols); ignored when `global`.
    pub kernel: (usize, usize),
    /// Stride (rows, cols); ignored when `global`.
    pub stride: (usize, usize),
    /// Global average pooling: the window is the whole input plane.
    pub global: bool,
    input_shape: Vec<usize>,
    /// Output of the last forward pass.
    output: Tensor,
    /// dL/dinput of the last backward pass.
    input_grad: Tensor,
}

impl AvgPool2d {
    /// Average pooling with the given window and stride.
    pub fn new(kernel: (usize, usize), stride: (usize, usize)) -> Self {
        Self {
            kernel,
            stride,
            global: false,
            input_shape: Vec::new(),
            output: Tensor::default(),
            input_grad: Tensor::default(),
        }
    }

    /// Global average pooling: `[B, C, H, W] -> [B, C, 1, 1]`.
    pub fn global() -> Self {
        Self {
            global: true,
            ..Self::new((1, 1), (1, 1))
        }
    }

    /// Window and stride for an input of (h, w).
    pub fn window_for(&self, h: usize, w: usize) -> ((usize, usize), (usize, usize)) {
        if self.global {
            ((h, w), (h.max(1), w.max(1)))
        } else {
            (self.kernel, self.stride)
        }
    }

    /// Per-sample output shape `[C, OH, OW]` for an input of `[C, H, W]` (`[C, 1, 1]` when global).
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let [c, h, w] = chw("avgpool2d", input)?;
        let (kernel, stride) = self.window_for(h, w);
        let (oh, ow) = out_hw("avgpool2d", h, w, kernel, stride)?;
        Ok(vec![c, oh, ow])
    }

    /// Forward pass into the layer's output buffer.
    pub(crate) fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<()> {
        let [b, c, h, w] = nchw("avgpool2d", x)?;
        let (kernel, stride) = self.window_for(h, w);
        let (oh, ow) = out_hw("avgpool2d", h, w, kernel, stride)?;
        let inv = 1.0 / (kernel.0 * kernel.1) as f32;
        let op = oh * ow;
        reshape_buffer(&mut self.output, &[b, c, oh, ow]);
        x.data
            .par_chunks(h * w)
            .zip(self.output.data.par_chunks_mut(op))
            .with_min_len(per_task(h * w))
            .for_each(|(plane, out)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0.0f32;
                        for ky in 0..kernel.0 {
                            let r = (oy * stride.0 + ky) * w + ox * stride.1;
                            s += plane[r..r + kernel.1].iter().sum::<f32>();
                        }
                        out[oy * ow + ox] = s * inv;
                    }
                }
            });
        if train {
            self.input_shape.clone_from(&x.shape);
        }
        Ok(())
    }

    /// The output of the last forward pass.
    pub(crate) fn output(&self) -> &Tensor {
        &self.output
    }

    /// Forward pass.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_buffered(x, train)?;
        Ok(self.output.clone())
    }

    /// Backward pass into the layer's input-gradient buffer.
    pub(crate) fn backward_buffered(&mut self, grad: &Tensor) -> Result<()> {
        let [b, c, h, w] = self.input_shape[..] else {
            return Err(Error::Shape(
                "avgpool2d: backward without a training forward pass".into(),
            ));
        };
        let (kernel, stride) = self.window_for(h, w);
        let (oh, ow) = out_hw("avgpool2d", h, w, kernel, stride)?;
        if grad.shape != [b, c, oh, ow] {
            return Err(Error::Shape(format!(
                "avgpool2d: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.input_shape
            )));
        }
        let inv = 1.0 / (kernel.0 * kernel.1) as f32;
        reshape_buffer(&mut self.input_grad, &[b, c, h, w]);
        self.input_grad
            .data
            .par_chunks_mut(h * w)
            .zip(grad.data.par_chunks(oh * ow))
            .with_min_len(per_task(h * w))
            .for_each(|(plane, g)| {
                plane.fill(0.0);
                for oy in 0..oh {
                    for ox in 0..ow {
                        let v = g[oy * ow + ox] * inv;
                        for ky in 0..kernel.0 {
                            let r = (oy * stride.0 + ky) * w + ox * stride.1;
                            for d in &mut plane[r..r + kernel.1] {
                                *d += v;
                            }
                        }
                    }
                }
            });
        Ok(())
    }

    /// dL/dinput of the last backward pass.
    pub(crate) fn input_grad(&self) -> &Tensor {
        &self.input_grad
    }

    /// Backward pass: each output gradient is spread evenly over its window.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        self.backward_buffered(grad)?;
        Ok(self.input_grad.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Values from a small set (ties in most windows), some NaN and negative, so every branch of `beats` and
    /// of the fused ReLU is taken.
    fn plane(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| match rng.uniform_range(0.0, 10.0) as u32 {
                0 => f32::NAN,
                v => (v as f32 - 4.0) * 0.5,
            })
            .collect()
    }

    fn both<const RELU: bool>(x: &[f32], w: usize, oh: usize, ow: usize, args: bool) {
        let n = if args { oh * ow } else { 0 };
        let (mut o1, mut o2) = (vec![7.0; oh * ow], vec![7.0; oh * ow]);
        let (mut a1, mut a2) = (vec![3u32; n], vec![3u32; n]);
        max_plane_2x2::<RELU>(x, w, oh, ow, &mut o1, &mut a1);
        max_plane_2x2_dispatch::<RELU>(x, w, oh, ow, &mut o2, &mut a2);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&o1), bits(&o2), "relu={RELU} w={w} oh={oh} ow={ow}");
        assert_eq!(a1, a2, "relu={RELU} w={w} oh={oh} ow={ow}");
    }

    #[test]
    fn the_dispatched_2x2_max_pool_matches_the_scalar_loop_bit_for_bit_on_ties_nan_and_tails() {
        let mut rng = Rng::new(31);
        for ow in [1, 2, 5, 7, 8, 9, 14, 16, 17] {
            for extra in [0, 1, 3] {
                let (w, oh) = (2 * ow + extra, 3);
                let x = plane(&mut rng, (2 * oh + 1) * w);
                for args in [false, true] {
                    both::<false>(&x, w, oh, ow, args);
                    both::<true>(&x, w, oh, ow, args);
                }
            }
        }
    }
}
