//! PACT, parameterized clipping activation (Choi et al. 2018): `y = clamp(x, 0, alpha)` quantized uniformly
//! on `[0, alpha]` with `2^b - 1` steps, alpha learned.
//!
//! Forward: code `= qparams::quantize(x, QParams(alpha / (2^b - 1), 0), 0, 2^b - 1)`; the clamp of codes to
//! `[0, 2^b - 1]` is the clamp of `x` to `[0, alpha]` (integer bounds, see [`super::lsq`]).
//! Backward (eq. 3, with the straight-through estimator for the rounding): `dy_q/dx = 1` for `0 <= x < alpha`
//! (0 elsewhere; at `x < 0` the clamp is ReLU's), `dy_q/dalpha = 1` for `x >= alpha`, 0 elsewhere. An optional
//! L2 penalty `lambda/2 * alpha^2` adds `lambda * alpha` (section 3 of the paper regularizes alpha this way).

/// Smallest alpha used (keeps the scale a valid, representable `QParams` scale).
pub const MIN_ALPHA: f32 = 1e-4;

/// Largest alpha used.
pub const MAX_ALPHA: f32 = 1e6;

/// The clipping level actually used for a learned `alpha`: clamped to `[MIN_ALPHA, MAX_ALPHA]`, NaN to
/// `MIN_ALPHA`.
#[inline]
pub fn effective_alpha(alpha: f32) -> f32 {
    if alpha.is_nan() {
        MIN_ALPHA
    } else {
        alpha.clamp(MIN_ALPHA, MAX_ALPHA)
    }
}

/// Scale of a `bits`-bit PACT quantizer clipping at `alpha`: `alpha / (2^bits - 1)`.
#[inline]
pub fn scale(alpha: f32, bits: u32) -> f32 {
    effective_alpha(alpha) / ((1i32 << bits) - 1) as f32
}

/// `dL/dalpha = sum of dL/dy_q over elements with x >= alpha` (plus `l2 * alpha`).
pub fn alpha_gradient(x: &[f32], grad_out: &[f32], alpha: f32, l2: f32) -> f32 {
    let a = effective_alpha(alpha);
    let sum: f64 = x
        .iter()
        .zip(grad_out)
        .filter(|(&v, _)| v >= a)
        .map(|(_, &g)| f64::from(g))
        .sum();
    sum as f32 + l2 * alpha
}
