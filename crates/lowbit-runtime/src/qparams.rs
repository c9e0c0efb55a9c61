//! The one quantize / dequantize / requantize arithmetic of lowbit. **Normative**: QAT fake-quant, calibration,
//! conversion, the reference kernels and every SIMD kernel must produce exactly what these functions produce.
//!
//! Conventions, fixed once:
//! - `quantize(x) = clamp(round_half_away_from_zero(x / scale) + zero_point, qmin, qmax)` computed in f32
//!   (`f32::round` rounds half away from zero). `dequantize(q) = (q - zero_point) as f32 * scale`.
//! - Weight codes are symmetric: bits `b >= 2` use `[-(2^(b-1)-1), 2^(b-1)-1]` (so int8 is [-127, 127] and 2 bits
//!   is ternary {-1, 0, 1}); `b == 1` is binary {-1, +1} (sign, with 0 mapped to +1).
//! - Activation codes are unsigned: `[0, 2^b - 1]` with a zero point in that range.
//! - Requantization: `out = clamp(zero_point_out + rshift_round(acc * multiplier, 31 + shift), qmin, qmax)` with
//!   a Q31 `multiplier` in `[2^30, 2^31)` and the product taken in i64; `rshift_round(v, n) = (v + 2^(n-1)) >> n`
//!   (arithmetic shift: round half toward +infinity). A single rounding, no saturating doubling step.
//! - Element-wise rescaling (residual `Add`, `Concat` inputs whose parameters differ from the output): a Q15-style
//!   [`AddParams`] / [`Rescale`] with multipliers in `[0, 32767]` and one right shift in `0..=30`, applied to code
//!   differences `q - zero_point` with the same [`rshift_round`]; see [`AddParams::from_scales`].
use crate::error::QuantError;
use serde::{Deserialize, Serialize};

/// A validated scale and zero point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    /// Real value of one code step; finite and > 0.
    pub scale: f32,
    /// Code that represents real 0.
    pub zero_point: i32,
}

impl QParams {
    /// Builds validated parameters: the scale must be finite and strictly positive.
    pub fn new(scale: f32, zero_point: i32) -> Result<Self, QuantError> {
        if !scale.is_finite() || scale <= 0.0 || !scale.is_normal() {
            return Err(QuantError::InvalidQParams {
                tensor: String::new(),
                reason: format!("scale {scale} must be finite, normal and > 0"),
            });
        }
        Ok(Self { scale, zero_point })
    }
}

/// Code range of a signed symmetric weight quantizer of `bits` bits (see module doc).
pub fn weight_code_range(bits: u32) -> Result<(i32, i32), QuantError> {
    match bits {
        1 => Ok((-1, 1)),
        2..=8 => {
            let q = (1i32 << (bits - 1)) - 1;
            Ok((-q, q))
        }
        _ => Err(QuantError::InvalidBitWidth { bits }),
    }
}

/// Code range of an unsigned activation quantizer of `bits` bits.
pub fn act_code_range(bits: u32) -> Result<(i32, i32), QuantError> {
    match bits {
        1..=8 => Ok((0, (1i32 << bits) - 1)),
        _ => Err(QuantError::InvalidBitWidth { bits }),
    }
}

/// Quantizes one value (normative, see module doc).
#[inline]
pub fn quantize(x: f32, qp: QParams, qmin: i32, qmax: i32) -> i32 {
    let r = (x / qp.scale).round();
    // Clamp in f32 first so huge or NaN inputs cannot overflow the cast (NaN maps to qmin via `as`-free path).
    let r = if r.is_nan() {
        0.0
    } else {
        r.clamp(-1_073_741_824.0, 1_073_741_824.0)
    };
    (r as i32 + qp.zero_point).clamp(qmin, qmax)
}

/// Binary weight code: +1 for `x >= 0`, -1 otherwise.
#[inline]
pub fn quantize_binary(x: f32) -> i32 {
    if x >= 0.0 {
        1
    } else {
        -1
    }
}

/// Dequantizes one code.
#[inline]
pub fn dequantize(q: i32, qp: QParams) -> f32 {
    (q - qp.zero_point) as f32 * qp.scale
}

/// `dequantize(quantize(x))`, the fake-quant used by QAT; identical by construction to the deployed arithmetic.
#[inline]
pub fn fake_quantize(x: f32, qp: QParams, qmin: i32, qmax: i32) -> f32 {
    dequantize(quantize(x, qp, qmin, qmax), qp)
}

/// A real multiplier represented as a Q31 integer multiplier and a right shift (Jacob et al. 2018, section 2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requant {
    /// Q31 multiplier in `[2^30, 2^31)`.
    pub multiplier: i32,
    /// Extra right shift; total right shift is `31 + shift`, which must lie in `1..=62`.
    pub shift: i32,
}

impl Requant {
    /// Represents `real` (finite, > 0, and within `[2^-31, 2^30)`) as multiplier and shift.
    pub fn from_real(real: f64) -> Result<Self, QuantError> {
        if !real.is_finite() || real <= 0.0 {
            return Err(QuantError::MultiplierOutOfRange { multiplier: real });
        }
        // real = m * 2^-e with m in [0.5, 1)
        let mut e = 0i32;
        let mut m = real;
        while m >= 1.0 {
            m /= 2.0;
            e -= 1;
        }
        while m < 0.5 {
            m *= 2.0;
            e += 1;
        }
        let mut q = (m * (1i64 << 31) as f64).round() as i64;
        if q == 1i64 << 31 {
            q /= 2;
            e -= 1;
        }
        let r = Self {
            multiplier: q as i32,
            shift: e,
        };
        r.validate()?;
        Ok(r)
    }

    /// Checks the invariants (multiplier in `[2^30, 2^31)`, total shift in `1..=62`).
    pub fn validate(&self) -> Result<(), QuantError> {
        let total = 31i64 + self.shift as i64;
        if self.multiplier < (1 << 30) || !(1..=62).contains(&total) {
            return Err(QuantError::MultiplierOutOfRange {
                multiplier: self.multiplier as f64 * (2f64).powi(-(total as i32)),
            });
        }
        Ok(())
    }

    /// The real value this represents.
    pub fn to_real(&self) -> f64 {
        self.multiplier as f64 * (2f64).powi(-(31 + self.shift))
    }

    /// `rshift_round(acc * multiplier, 31 + shift)` (normative; see module doc).
    #[inline]
    pub fn apply(&self, acc: i32) -> i32 {
        rshift_round(
            acc as i64 * self.multiplier as i64,
            (31 + self.shift) as u32,
        ) as i32
    }
}

/// `v` for `n == 0`, else `(v + 2^(n-1)) >> n` with an arithmetic shift: division by `2^n` rounding half toward
/// +infinity. `n` must be at most 62 (every caller's shift is validated first); `|v| + 2^(n-1)` must fit an `i64`.
#[inline]
pub fn rshift_round(v: i64, n: u32) -> i64 {
    if n == 0 {
        v
    } else {
        (v + (1i64 << (n - 1))) >> n
    }
}

/// Largest element-wise rescaling multiplier: 15 bits, so a code difference (`|q - zp| <= 255`) times it fits an
/// i16 x i16 `vpmaddwd` product and two of them sum to less than `2^24`.
pub const MAX_ELTWISE_MULTIPLIER: i32 = 32767;

/// Largest element-wise rescaling shift.
pub const MAX_ELTWISE_SHIFT: u32 = 30;

/// `round(r * 2^n)` as f64 (half away from zero, like `f64::round`).
fn scaled(r: f64, n: u32) -> f64 {
    (r * (1u64 << n) as f64).round()
}

/// The shared shift of ratios whose largest is `max_ratio`: the largest `n` in `0..=30` with
/// `round(max_ratio * 2^n) <= 32767`. Fails when no `n` fits, or when the ratio is not finite and positive.
fn eltwise_shift(max_ratio: f64) -> Result<u32, QuantError> {
    if !max_ratio.is_finite() || max_ratio <= 0.0 {
        return Err(QuantError::MultiplierOutOfRange {
            multiplier: max_ratio,
        });
    }
    (0..=MAX_ELTWISE_SHIFT)
        .rev()
        .find(|&n| scaled(max_ratio, n) <= MAX_ELTWISE_MULTIPLIER as f64)
        .ok_or(QuantError::MultiplierOutOfRange {
            multiplier: max_ratio,
        })
}

/// `s_x / s_out` in f64, checking both scales are finite and > 0 (reported as an out-of-range ratio).
fn scale_ratio(s_x: f32, s_out: f32) -> Result<f64, QuantError> {
    let r = s_x as f64 / s_out as f64;
    let ok = |s: f32| s.is_finite() && s > 0.0;
    if !ok(s_x) || !ok(s_out) || !r.is_finite() {
        return Err(QuantError::MultiplierOutOfRange { multiplier: r });
    }
    Ok(r)
}

fn check_eltwise(multipliers: &[i32], shift: u32) -> Result<(), QuantError> {
    for &m in multipliers {
        if !(0..=MAX_ELTWISE_MULTIPLIER).contains(&m) || shift > MAX_ELTWISE_SHIFT {
            return Err(QuantError::MultiplierOutOfRange {
                multiplier: m as f64 * (2f64).powi(-(shift.min(1000) as i32)),
            });
        }
    }
    Ok(())
}

/// Fixed-point rescaling of two code differences onto a common output scale (residual `Add`, normative):
/// `apply(da, db) = rshift_round(da * multiplier_a + db * multiplier_b, shift)`, which approximates
/// `da * s_a / s_out + db * s_b / s_out`.
///
/// Built by [`AddParams::from_scales`]: with `r_x = s_x as f64 / s_out as f64` and `r = max(r_a, r_b)`, `shift` is
/// the largest `n` in `0..=30` with `round(r * 2^n) <= 32767` (f64 `round`, half away from zero) and `multiplier_x =
/// round(r_x * 2^shift)`. Precision: the larger multiplier is at least 16384 (15 significant bits, relative error
/// at most `2^-15`) unless the shift saturates at 30 (ratios below about `2^-15`); the smaller one keeps the same
/// absolute step `2^-shift` and may round to 0. Fails when `round(r) > 32767` (a ratio of 32767.5 or more).
///
/// Overflow: for code differences `|da|, |db| <= 255` the sum is below `2 * 255 * 32767 < 2^24`, and with the
/// rounding constant (at most `2^29`) it fits an `i32`, so SIMD kernels may use i32 lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddParams {
    /// Multiplier of the first input's code difference, in `[0, 32767]`.
    pub multiplier_a: i32,
    /// Multiplier of the second input's code difference, in `[0, 32767]`.
    pub multiplier_b: i32,
    /// Rounding right shift, in `0..=30`.
    pub shift: u32,
}

impl AddParams {
    /// Parameters for inputs of scales `scale_a` and `scale_b` added onto `scale_out` (see the type doc).
    pub fn from_scales(scale_a: f32, scale_b: f32, scale_out: f32) -> Result<Self, QuantError> {
        let (ra, rb) = (
            scale_ratio(scale_a, scale_out)?,
            scale_ratio(scale_b, scale_out)?,
        );
        let shift = eltwise_shift(ra.max(rb))?;
        let p = Self {
            multiplier_a: scaled(ra, shift) as i32,
            multiplier_b: scaled(rb, shift) as i32,
            shift,
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks the invariants: both multipliers in `[0, 32767]`, shift in `0..=30`.
    pub fn validate(&self) -> Result<(), QuantError> {
        check_eltwise(&[self.multiplier_a, self.multiplier_b], self.shift)
    }

    /// `rshift_round(da * multiplier_a + db * multiplier_b, shift)` (normative; exact in i32 for `|da|, |db| <=
    /// 255`, computed in i64 so no input can overflow; an invalid shift past 30 acts as 30).
    #[inline]
    pub fn apply(&self, da: i32, db: i32) -> i32 {
        let v = da as i64 * self.multiplier_a as i64 + db as i64 * self.multiplier_b as i64;
        rshift_round(v, self.shift.min(MAX_ELTWISE_SHIFT)) as i32
    }
}

/// Fixed-point rescaling of one code difference (a `Concat` input whose parameters differ from the output's):
/// `apply(d) = rshift_round(d * multiplier, shift)`, built like [`AddParams`] with one ratio `s_in / s_out`
/// (multiplier in `[16384, 32767]` unless the shift saturates at 30).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rescale {
    /// Multiplier, in `[0, 32767]`.
    pub multiplier: i32,
    /// Rounding right shift, in `0..=30`.
    pub shift: u32,
}

impl Rescale {
    /// Parameters mapping codes of scale `scale_in` onto `scale_out` (see [`AddParams`]).
    pub fn from_scales(scale_in: f32, scale_out: f32) -> Result<Self, QuantError> {
        let r = scale_ratio(scale_in, scale_out)?;
        let shift = eltwise_shift(r)?;
        let p = Self {
            multiplier: scaled(r, shift) as i32,
            shift,
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks the invariants: multiplier in `[0, 32767]`, shift in `0..=30`.
    pub fn validate(&self) -> Result<(), QuantError> {
        check_eltwise(&[self.multiplier], self.shift)
    }

    /// `rshift_round(d * multiplier, shift)` (normative; exact in i32 for `|d| <= 255`; an invalid shift past 30
    /// acts as 30).
    #[inline]
    pub fn apply(&self, d: i32) -> i32 {
        rshift_round(
            d as i64 * self.multiplier as i64,
            self.shift.min(MAX_ELTWISE_SHIFT),
        ) as i32
    }
}

/// Full output stage of a layer: requantize, add the output zero point, clamp (ReLU is a clamp at the zero point).
#[inline]
pub fn requantize(acc: i32, rq: Requant, zero_point_out: i32, qmin: i32, qmax: i32) -> i32 {
    (zero_point_out as i64 + rq.apply(acc) as i64).clamp(qmin as i64, qmax as i64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nan_zero_and_negative_scales() {
        assert!(QParams::new(f32::NAN, 0).is_err());
        assert!(QParams::new(0.0, 0).is_err());
        assert!(QParams::new(-1.0, 0).is_err());
        assert!(QParams::new(f32::INFINITY, 0).is_err());
        assert!(QParams::new(0.1, 3).is_ok());
    }

    #[test]
    fn code_ranges_match_the_documented_convention() {
        assert_eq!(weight_code_range(8).unwrap(), (-127, 127));
        assert_eq!(weight_code_range(4).unwrap(), (-7, 7));
        assert_eq!(weight_code_range(2).unwrap(), (-1, 1));
        assert_eq!(weight_code_range(1).unwrap(), (-1, 1));
        assert_eq!(act_code_range(8).unwrap(), (0, 255));
        assert!(weight_code_range(0).is_err());
        assert!(act_code_range(9).is_err());
    }

    #[test]
    fn quantize_rounds_half_away_from_zero_and_clamps() {
        let qp = QParams::new(1.0, 0).unwrap();
        assert_eq!(quantize(2.5, qp, -127, 127), 3);
        assert_eq!(quantize(-2.5, qp, -127, 127), -3);
        assert_eq!(quantize(1e30, qp, -127, 127), 127);
        assert_eq!(quantize(f32::NAN, qp, -127, 127), 0);
    }

    #[test]
    fn requant_matches_real_multiplier_within_half_a_step() {
        for &m in &[0.5, 0.75, 0.001234, 1.0, 3.7, 1e-7, 0.999999] {
            let rq = Requant::from_real(m).unwrap();
            assert!((rq.to_real() - m).abs() <= m * 1e-9, "{m}");
            for acc in [-100000, -7, 0, 1, 9999, 1 << 20] {
                let got = rq.apply(acc) as f64;
                assert!(
                    (got - acc as f64 * m).abs() <= 0.5 + 1e-6,
                    "m={m} acc={acc} got={got}"
                );
            }
        }
        assert!(Requant::from_real(0.0).is_err());
        assert!(Requant::from_real(f64::NAN).is_err());
    }

    #[test]
    fn rshift_round_rounds_half_toward_positive_infinity() {
        assert_eq!(rshift_round(5, 0), 5);
        assert_eq!(rshift_round(-5, 0), -5);
        assert_eq!(rshift_round(3, 1), 2);
        assert_eq!(rshift_round(-3, 1), -1);
        assert_eq!(rshift_round(-5, 2), -1);
        assert_eq!(rshift_round(-6, 2), -1);
        assert_eq!(rshift_round(-7, 2), -2);
    }

    #[test]
    fn add_params_take_the_largest_shift_that_keeps_15_bits() {
        // Equal scales: ratio 1, 32767 >= 1 * 2^14 = 16384 but 2^15 = 32768 does not fit, so shift 14.
        let p = AddParams::from_scales(0.1, 0.1, 0.1).unwrap();
        assert_eq!(
            p,
            AddParams {
                multiplier_a: 16384,
                multiplier_b: 16384,
                shift: 14
            }
        );
        // round(0.99997 * 2^15) = 32767 fits at shift 15.
        let r = Rescale::from_scales(0.99997, 1.0).unwrap();
        assert_eq!(r.shift, 15);
        assert_eq!(r.multiplier, 32767);
        // The ratio 32767.5 rounds to 32768 at shift 0: rejected; 32767.4 rounds to 32767.
        assert!(Rescale::from_scales(32767.5, 1.0).is_err());
        assert_eq!(
            Rescale::from_scales(32767.4, 1.0).unwrap(),
            Rescale {
                multiplier: 32767,
                shift: 0
            }
        );
        // A tiny ratio saturates the shift; its multiplier keeps the absolute step 2^-30.
        let t = Rescale::from_scales(1e-7, 1.0).unwrap();
        assert_eq!(
            t,
            Rescale {
                multiplier: 107,
                shift: 30
            }
        );
        // The smaller of two very different ratios may round to 0.
        let z = AddParams::from_scales(1.0, 1e-6, 1.0).unwrap();
        assert_eq!((z.multiplier_a, z.multiplier_b, z.shift), (16384, 0, 14));
    }

    #[test]
    fn add_params_larger_multiplier_keeps_at_least_15_bits_below_the_shift_cap() {
        for i in 0..2000 {
            let ra = (2f64).powf(-14.0 + 28.0 * (i as f64 / 2000.0));
            let p = Rescale::from_scales(ra as f32, 1.0).unwrap();
            let r = ra as f32 as f64;
            assert!(p.shift == 30 || p.multiplier >= 16384, "{r}: {p:?}");
            assert!(
                (p.multiplier as f64 * (2f64).powi(-(p.shift as i32)) - r).abs()
                    <= (2f64).powi(-(p.shift as i32) - 1)
            );
        }
    }

    #[test]
    fn eltwise_parameters_reject_bad_scales_and_invalid_fields() {
        for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                AddParams::from_scales(bad, 1.0, 1.0),
                Err(QuantError::MultiplierOutOfRange { .. })
            ));
            assert!(matches!(
                AddParams::from_scales(1.0, bad, 1.0),
                Err(QuantError::MultiplierOutOfRange { .. })
            ));
            assert!(matches!(
                AddParams::from_scales(1.0, 1.0, bad),
                Err(QuantError::MultiplierOutOfRange { .. })
            ));
            assert!(matches!(
                Rescale::from_scales(bad, 1.0),
                Err(QuantError::MultiplierOutOfRange { .. })
            ));
        }
        assert!(AddParams {
            multiplier_a: 32768,
            multiplier_b: 0,
            shift: 3
        }
        .validate()
        .is_err());
        assert!(AddParams {
            multiplier_a: 0,
            multiplier_b: -1,
            shift: 3
        }
        .validate()
        .is_err());
        assert!(AddParams {
            multiplier_a: 1,
            multiplier_b: 1,
            shift: 31
        }
        .validate()
        .is_err());
        assert!(Rescale {
            multiplier: 32767,
            shift: 30
        }
        .validate()
        .is_ok());
        assert!(Rescale {
            multiplier: 0,
            shift: 0
        }
        .validate()
        .is_ok());
        assert!(Rescale {
            multiplier: 1,
            shift: 31
        }
        .validate()
        .is_err());
    }

    #[test]
    fn add_params_apply_rounds_the_sum_once() {
        let p = AddParams {
            multiplier_a: 3,
            multiplier_b: 5,
            shift: 2,
        };
        // 1*3 + 1*5 = 8 -> 2; -1*3 + 0 = -3 -> -3/4 = -0.75 -> -1; 2*3 + 0 = 6 -> 1.5 -> 2; -6 -> -1.5 -> -1.
        assert_eq!(p.apply(1, 1), 2);
        assert_eq!(p.apply(-1, 0), -1);
        assert_eq!(p.apply(2, 0), 2);
        assert_eq!(p.apply(-2, 0), -1);
        let big = AddParams {
            multiplier_a: 32767,
            multiplier_b: 32767,
            shift: 0,
        };
        assert_eq!(big.apply(-255, -255), -2 * 255 * 32767);
    }

    #[test]
    fn requant_rounds_half_up() {
        let rq = Requant::from_real(0.5).unwrap();
        assert_eq!(rq.apply(1), 1);
        assert_eq!(rq.apply(-1), 0);
        assert_eq!(rq.apply(3), 2);
        assert_eq!(rq.apply(-3), -1);
    }
}
