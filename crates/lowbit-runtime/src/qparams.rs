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
        let n = (31 + self.shift) as u32;
        let v = acc as i64 * self.multiplier as i64;
        ((v + (1i64 << (n - 1))) >> n) as i32
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
    fn requant_rounds_half_up() {
        let rq = Requant::from_real(0.5).unwrap();
        assert_eq!(rq.apply(1), 1);
        assert_eq!(rq.apply(-1), 0);
        assert_eq!(rq.apply(3), 2);
        assert_eq!(rq.apply(-3), -1);
    }
}
