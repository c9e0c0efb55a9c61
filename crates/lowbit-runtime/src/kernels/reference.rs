//! Scalar reference kernels (normative).
//!
//! Every SIMD kernel in [`super`] must equal these functions bit for bit, on every input that passes the
//! public entry checks of [`super`]. The arithmetic:
//!
//! - Accumulation: `acc[i*n + j] = bias[j] + sum_kk a[i*k + kk] * code(w, j, kk)` in `i32`, with
//!   **wrapping** (two's complement) addition. Wrapping addition is associative, so any summation order a SIMD
//!   kernel picks gives the same bits even past overflow; see [`super::MAX_K`] for when overflow cannot happen
//!   (`|acc| <= K * 255 * 127 + |bias|`).
//! - Output stage: [`crate::qparams::requantize`] per element: `clamp(zero_point + rshift_round(acc *
//!   multiplier, 31 + shift), qmin, qmax)`, product in `i64`, rounding half toward +infinity, a single rounding.
//! - Binary activations ([`gemm_b1b1_i32`]): activation bit 1 is code 1, bit 0 is code 0; weight bit 1 is +1 and
//!   0 is -1, so `acc = bias + 2 * popcount(a & w) - popcount(a)` over the first `k` bits of each row.
use super::OutputParams;
use crate::pack::{row_bytes, PackedWeights, Packing};
use crate::qparams::requantize;

/// `out[i*n + j] = bias[j] + sum_kk a[i*k + kk] * w[j][kk]` (wrapping `i32`). Inputs pre-validated by the caller.
pub fn gemm_u8i8_i32(
    a: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    bias: &[i32],
    out: &mut [i32],
) {
    let n = w.rows;
    let mut wrow = vec![0i8; k];
    for j in 0..n {
        w.unpack_row(j, &mut wrow);
        for i in 0..m {
            let arow = &a[i * k..(i + 1) * k];
            let mut acc = bias[j];
            for (&x, &q) in arow.iter().zip(&wrow) {
                acc = acc.wrapping_add(x as i32 * q as i32);
            }
            out[i * n + j] = acc;
        }
    }
}

/// Output stage on an `rows x n` tile of accumulators: [`requantize`] with `requant[j]` (or `requant[0]` when
/// per-tensor), then cast to `u8` (the caller checked `0 <= qmin <= qmax <= 255`).
pub fn requant_u8(acc: &[i32], n: usize, p: &OutputParams, out: &mut [u8]) {
    for (arow, orow) in acc.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        for j in 0..n {
            let rq = p.requant_for(j);
            orow[j] = requantize(arow[j], rq, p.zero_point, p.qmin, p.qmax) as u8;
        }
    }
}

/// [`gemm_u8i8_i32`] with `p.bias`, followed by [`requant_u8`].
pub fn gemm_u8i8_u8(
    a: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    p: &OutputParams,
    out: &mut [u8],
) {
    let mut acc = vec![0i32; m * w.rows];
    gemm_u8i8_i32(a, m, k, w, p.bias, &mut acc);
    requant_u8(&acc, w.rows, p, out);
}

/// Binary activations times binary weights: `out[i*n + j] = bias[j] + 2*popcount(a_i & w_j) - popcount(a_i)`
/// over the first `k` bits; `a_bits` holds `m` rows of `row_bytes(B1x8, k)` bytes in the `B1x8` bit order.
/// Activation bits past `k` are ignored. Written bit by bit on purpose: it restates the definition.
pub fn gemm_b1b1_i32(
    a_bits: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    bias: &[i32],
    out: &mut [i32],
) {
    let n = w.rows;
    let rb = row_bytes(Packing::B1x8, k);
    for i in 0..m {
        let arow = &a_bits[i * rb..(i + 1) * rb];
        for j in 0..n {
            let wrow = w.row(j);
            let mut acc = bias[j];
            for kk in 0..k {
                let x = ((arow[kk / 8] >> (kk % 8)) & 1) as i32;
                let q = if (wrow[kk / 8] >> (kk % 8)) & 1 == 1 {
                    1
                } else {
                    -1
                };
                acc = acc.wrapping_add(x * q);
            }
            out[i * n + j] = acc;
        }
    }
}
