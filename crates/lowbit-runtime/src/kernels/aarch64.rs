//! aarch64 NEON kernels: one dot-form kernel using only long-stable intrinsics. Unverified on hardware, so compiled
//! only with the `unverified-neon` feature (docs/KERNELS.md: its conformance tests pass under qemu-aarch64 with
//! `scripts/test-aarch64.sh`). No dot-product (`sdot`) tier exists yet.
// Kernel names follow STYLE.md: `<op>__<isa>`.
#![allow(non_snake_case)]
use super::{reference, Isa, OutputParams};
use crate::pack::PackedWeights;
use std::arch::aarch64::*;

/// Rows of `a` per requantized block, so the accumulator scratch stays small.
const ROW_BLOCK: usize = 16;

/// Dispatch target for [`Isa::Neon`] (validated input).
pub(crate) fn gemm_acc(
    isa: Isa,
    a: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    bias: &[i32],
    out: &mut [i32],
) {
    debug_assert!(isa == Isa::Neon && isa.is_available());
    let n = w.rows;
    let mut wrow = vec![0i8; k];
    for j in 0..n {
        w.unpack_row(j, &mut wrow);
        for i in 0..m {
            // SAFETY: NEON is detected by the dispatcher (and is baseline on aarch64); the kernel reads exactly
            // `k` elements of each slice, whose lengths the entry point checked.
            let dot = unsafe { dot_u8i8__neon(&a[i * k..(i + 1) * k], &wrow) };
            out[i * n + j] = bias[j].wrapping_add(dot);
        }
    }
}

/// [`gemm_acc`] followed by the reference output stage, one block of rows at a time.
pub(crate) fn gemm_requant(
    isa: Isa,
    a: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    p: &OutputParams,
    out: &mut [u8],
) {
    let n = w.rows;
    let mut acc = vec![0i32; ROW_BLOCK.min(m) * n];
    for r0 in (0..m).step_by(ROW_BLOCK) {
        let rows = ROW_BLOCK.min(m - r0);
        let acc = &mut acc[..rows * n];
        gemm_acc(isa, &a[r0 * k..(r0 + rows) * k], rows, k, w, p.bias, acc);
        reference::requant_u8(acc, n, p, &mut out[r0 * n..(r0 + rows) * n]);
    }
}

/// `sum a[t] * w[t]` over `a.len()` (== `w.len()`) elements, wrapping `i32`.
///
/// # Safety
/// The CPU must support NEON; `a.len() == w.len()`.
#[target_feature(enable = "neon")]
unsafe fn dot_u8i8__neon(a: &[u8], w: &[i8]) -> i32 {
    // SAFETY: the caller guarantees NEON (this function's contract); every pointer load below is bounded by
    // `k = min(a.len(), w.len())` as its comment says.
    unsafe {
        let k = a.len().min(w.len());
        let mut acc0 = vdupq_n_s32(0);
        let mut acc1 = vdupq_n_s32(0);
        let mut t = 0;
        while t + 16 <= k {
            // SAFETY: t + 16 <= k bounds both 16-byte loads.
            let av = vld1q_u8(a.as_ptr().add(t));
            let wv = vld1q_s8(w.as_ptr().add(t));
            // u8 -> u16 is exact and <= 255, so reinterpreting as i16 is exact too; i16 x i16 -> i32 is exact.
            let a_lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(av)));
            let a_hi = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(av)));
            let w_lo = vmovl_s8(vget_low_s8(wv));
            let w_hi = vmovl_s8(vget_high_s8(wv));
            acc0 = vmlal_s16(acc0, vget_low_s16(a_lo), vget_low_s16(w_lo));
            acc1 = vmlal_s16(acc1, vget_high_s16(a_lo), vget_high_s16(w_lo));
            acc0 = vmlal_s16(acc0, vget_low_s16(a_hi), vget_low_s16(w_hi));
            acc1 = vmlal_s16(acc1, vget_high_s16(a_hi), vget_high_s16(w_hi));
            t += 16;
        }
        let mut sum = vaddvq_s32(vaddq_s32(acc0, acc1));
        while t < k {
            sum = sum.wrapping_add(a[t] as i32 * w[t] as i32);
            t += 1;
        }
        sum
    }
}
