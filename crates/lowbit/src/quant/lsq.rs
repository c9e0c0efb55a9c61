//! Learned Step Size Quantization (LSQ, Esser et al. 2020): the arithmetic shared by the weight and activation
//! quantizers.
//!
//! Forward: `v_q = round(clamp(v / s, -Qn, Qp)) * s`. Because `-Qn` and `Qp` are integers, rounding after the
//! clamp equals clamping after the rounding, so codes are computed with the normative
//! [`qparams::quantize`]`(v, QParams(s, 0), -Qn, Qp)` and deployed exactly.
//!
//! Backward (eq. 3): `dv_q/dv = 1` where `-Qn < v/s < Qp`, else 0 (straight-through); `dv_q/ds = -v/s +
//! round(v/s)` inside, `-Qn` at or below the range and `Qp` at or above it, multiplied by the gradient scale
//! `g = 1 / sqrt(N * Qp)` (section 2.2), where N is the number of values sharing the step: the weights of the
//! tensor (or of the output channel, per channel) or the features of one sample's activation.
use lowbit_runtime::qparams::{self, QParams};

/// Smallest step a quantizer uses: keeps `QParams` valid and the runtime's requantization multiplier
/// (`s_in * s_w / s_out >= 2^-31`) representable even if the optimizer drives a step towards 0.
pub const MIN_STEP: f32 = 1e-6;

/// Largest step a quantizer uses (keeps `v / s` and `code * s` finite).
pub const MAX_STEP: f32 = 1e6;

/// The step actually used for a learned value `s`: clamped to `[MIN_STEP, MAX_STEP]`, NaN mapped to `MIN_STEP`.
/// Forward, backward and conversion all go through this, so they agree even for a degenerate learned value.
#[inline]
pub fn effective_step(s: f32) -> f32 {
    if s.is_nan() {
        MIN_STEP
    } else {
        s.clamp(MIN_STEP, MAX_STEP)
    }
}

/// LSQ initial step `2 * mean|v| / sqrt(Qp)` (Esser et al. 2020, section 2.1); `fallback` when `v` is empty or
/// all zeros.
pub fn init_step(v: &[f32], qp: i32, fallback: f32) -> f32 {
    let n = v.iter().filter(|x| x.is_finite()).count();
    let sum: f64 = v
        .iter()
        .filter(|x| x.is_finite())
        .map(|x| f64::from(x.abs()))
        .sum();
    let s = (2.0 * sum / n.max(1) as f64 / f64::from(qp.max(1)).sqrt()) as f32;
    if s.is_normal() {
        effective_step(s)
    } else {
        fallback
    }
}

/// Step candidates of [`mse_step`]: `k / MSE_CANDIDATES` of the smallest step that clips nothing.
const MSE_CANDIDATES: usize = 100;

/// Values [`mse_step`] measures the error on: an evenly strided sample of at most this many.
const MSE_SAMPLE: usize = 1 << 16;

/// The step with the least squared quantization error `sum (v - s * code(v, s))^2` for codes `[-qn, qp]`,
/// among `k / 100` (k = 1..=100) of the smallest step that clips no value, measured on an evenly strided sample
/// of at most 65,536 finite values; ties keep the larger step. `fallback` when no finite value is representable
/// (all zeros, or only negatives with `qn = 0`).
///
/// Why: LSQ's `2 mean|v| / sqrt(Qp)` is far from the error-minimising step at 2-4 bits (about 1.7x too large for
/// Gaussian weights at 4 bits), and in a short fine-tuning the steps, trained at a fraction of the learning rate,
/// do not travel that far.
pub fn mse_step(v: &[f32], qn: i32, qp: i32, fallback: f32) -> f32 {
    let finite = v.iter().filter(|x| x.is_finite()).count();
    let stride = finite.div_ceil(MSE_SAMPLE).max(1);
    let sample: Vec<f32> = v
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .step_by(stride)
        .collect();
    let reach = |x: f32| {
        if x > 0.0 && qp > 0 {
            x / qp as f32
        } else if x < 0.0 && qn > 0 {
            -x / qn as f32
        } else {
            0.0
        }
    };
    let base = sample.iter().fold(0f32, |m, &x| m.max(reach(x)));
    if !base.is_normal() {
        return fallback;
    }
    let mut best = (f64::INFINITY, fallback);
    for k in (1..=MSE_CANDIDATES).rev() {
        let s = base * k as f32 / MSE_CANDIDATES as f32;
        if !s.is_normal() {
            continue;
        }
        let s = effective_step(s);
        let err: f64 = sample
            .iter()
            .map(|&x| {
                let d = f64::from(x) - f64::from(code(x, s, qn, qp) as f32 * s);
                d * d
            })
            .sum();
        if err < best.0 {
            best = (err, s);
        }
    }
    best.1
}

/// Gradient scale `g = 1 / sqrt(N * Qp)` (Esser et al. 2020, section 2.2).
#[inline]
pub fn grad_scale(n: usize, qp: i32) -> f32 {
    (1.0 / ((n.max(1) as f64) * f64::from(qp.max(1))).sqrt()) as f32
}

/// Code of `v` for step `s` (already effective) and range `[-qn, qp]`: the normative quantize.
#[inline]
pub fn code(v: f32, s: f32, qn: i32, qp: i32) -> i32 {
    qparams::quantize(
        v,
        QParams {
            scale: s,
            zero_point: 0,
        },
        -qn,
        qp,
    )
}

/// True where the straight-through gradient passes: `-Qn < v/s < Qp`.
#[inline]
pub fn inside(v: f32, s: f32, qn: i32, qp: i32) -> bool {
    let r = v / s;
    r > -(qn as f32) && r < qp as f32
}

/// `dv_q/ds` of one value, without the gradient scale (Esser et al. 2020, eq. 3): `-v/s + round(v/s)` inside,
/// `-Qn` when `v/s <= -Qn`, `Qp` when `v/s >= Qp`. Rounding is half away from zero, as in [`code`].
#[inline]
pub fn step_derivative(v: f32, s: f32, qn: i32, qp: i32) -> f32 {
    let r = v / s;
    if r <= -(qn as f32) {
        -(qn as f32)
    } else if r >= qp as f32 {
        qp as f32
    } else {
        -r + r.round()
    }
}
