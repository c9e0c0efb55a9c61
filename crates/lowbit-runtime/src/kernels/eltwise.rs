//! Element-wise kernels on `u8` activation codes: residual `Add` of two tensors with different quantization
//! parameters, `Rescale` of one tensor onto other parameters (a `Concat` input), and a 256-entry lookup table that
//! every unary op on codes lowers to (ReLU6 / Clip, and any float function via [`unary_table`]).
//!
//! Arithmetic (normative, in [`reference`](mod@reference); every tier equals it bit for bit):
//! - Add: `out = clamp(zp_out + rshift_round((a - zp_a) * m_a + (b - zp_b) * m_b, shift), qmin, qmax)` with
//!   [`AddParams`] (multipliers in `[0, 32767]`, shift in `0..=30`, [`crate::qparams::rshift_round`] rounds half
//!   toward +infinity). A fused ReLU is `qmin = zp_out`; a ReLU6-style clip is any `[qmin, qmax]`.
//! - Rescale: `out = clamp(zp_out + rshift_round((x - zp_in) * m, shift), qmin, qmax)` with [`Rescale`].
//! - Lut: `out[i] = table[x[i]]`.
//!
//! Overflow: code differences are within `[-255, 255]` (zero points are checked to lie in `0..=255`), so the sum
//! is below `2 * 255 * 32767 < 2^24` and, with the rounding constant (at most `2^29`), fits an `i32`: the AVX2
//! kernels compute in i32 lanes and are exact.
//!
//! AVX2 (`x86_eltwise`): Add widens 16 codes of each input to i16 (`vpmovzxbw`), subtracts the zero points,
//! interleaves the two differences as i16 pairs and multiplies them by the broadcast `(m_a, m_b)` pair with one
//! `vpmaddwd` (two exact products summed in i32), then `vpsrad` after the rounding constant, adds the output zero
//! point and narrows with saturating packs before the `[qmin, qmax]` clamp (saturation is monotone and the clamp
//! range lies inside it, so the result is the reference's). Rescale pairs the difference with 0. Lut selects among
//! 16 `vpshufb` lookups of the 16-entry sub-tables with a tree of 15 `vpblendvb` on bits 4 to 7 of the code.
use super::{check_len, Isa};
use crate::error::QuantError;
use crate::qparams::{quantize, AddParams, QParams, Rescale};

/// Parameters of a quantized residual `Add` (see the module doc for the formula).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddQuant {
    /// Fixed-point multipliers and shift ([`AddParams::from_scales`] of the two input scales and the output's).
    pub params: AddParams,
    /// Zero point of input `a`, in `0..=255`.
    pub zero_point_a: i32,
    /// Zero point of input `b`, in `0..=255`.
    pub zero_point_b: i32,
    /// Output zero point, in `0..=255`.
    pub zero_point_out: i32,
    /// Lowest output code (`zero_point_out` for a fused ReLU), `0 <= qmin <= qmax`.
    pub qmin: i32,
    /// Highest output code, at most 255.
    pub qmax: i32,
}

/// Parameters of a quantized [`Rescale`] of codes onto other parameters (see the module doc for the formula).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RescaleQuant {
    /// Fixed-point multiplier and shift ([`Rescale::from_scales`] of the input and output scales).
    pub params: Rescale,
    /// Input zero point, in `0..=255`.
    pub zero_point_in: i32,
    /// Output zero point, in `0..=255`.
    pub zero_point_out: i32,
    /// Lowest output code, `0 <= qmin <= qmax`.
    pub qmin: i32,
    /// Highest output code, at most 255.
    pub qmax: i32,
}

fn invalid(context: &str, reason: String) -> QuantError {
    QuantError::InvalidQParams {
        tensor: context.to_string(),
        reason,
    }
}

/// Zero points in `0..=255` and `0 <= qmin <= qmax <= 255`.
pub(crate) fn check_codes(
    context: &str,
    zero_points: &[(&str, i32)],
    qmin: i32,
    qmax: i32,
) -> Result<(), QuantError> {
    for &(name, zp) in zero_points {
        if !(0..=255).contains(&zp) {
            return Err(invalid(context, format!("{name} {zp} is outside 0..=255")));
        }
    }
    if !(0 <= qmin && qmin <= qmax && qmax <= 255) {
        return Err(invalid(
            context,
            format!("output range [{qmin}, {qmax}] must satisfy 0 <= qmin <= qmax <= 255"),
        ));
    }
    Ok(())
}

impl AddQuant {
    /// The same Add with its inputs exchanged: `add_code(a, b, q) == add_code(b, a, &q.swapped())` for all codes,
    /// as the fixed-point sum `da * m_a + db * m_b` is the same integer in either order.
    pub fn swapped(&self) -> AddQuant {
        AddQuant {
            params: AddParams {
                multiplier_a: self.params.multiplier_b,
                multiplier_b: self.params.multiplier_a,
                shift: self.params.shift,
            },
            zero_point_a: self.zero_point_b,
            zero_point_b: self.zero_point_a,
            ..*self
        }
    }

    /// Checks the multipliers and shift, the zero points and the output range.
    pub fn validate(&self) -> Result<(), QuantError> {
        self.params.validate()?;
        check_codes(
            "add",
            &[
                ("zero_point_a", self.zero_point_a),
                ("zero_point_b", self.zero_point_b),
                ("zero_point_out", self.zero_point_out),
            ],
            self.qmin,
            self.qmax,
        )
    }
}

impl RescaleQuant {
    /// Checks the multiplier and shift, the zero points and the output range.
    pub fn validate(&self) -> Result<(), QuantError> {
        self.params.validate()?;
        check_codes(
            "rescale",
            &[
                ("zero_point_in", self.zero_point_in),
                ("zero_point_out", self.zero_point_out),
            ],
            self.qmin,
            self.qmax,
        )
    }
}

/// Scalar definitions (normative). Inputs pre-validated by the public entry points.
pub mod reference {
    use super::{AddQuant, RescaleQuant};

    /// One output code of [`add_u8`].
    #[inline]
    pub fn add_code(a: u8, b: u8, q: &AddQuant) -> u8 {
        let v = q
            .params
            .apply(a as i32 - q.zero_point_a, b as i32 - q.zero_point_b);
        (q.zero_point_out as i64 + v as i64).clamp(q.qmin as i64, q.qmax as i64) as u8
    }

    /// One output code of [`rescale_u8`].
    #[inline]
    pub fn rescale_code(x: u8, q: &RescaleQuant) -> u8 {
        let v = q.params.apply(x as i32 - q.zero_point_in);
        (q.zero_point_out as i64 + v as i64).clamp(q.qmin as i64, q.qmax as i64) as u8
    }

    /// `out[i] = clamp(zp_out + rshift_round((a[i] - zp_a) * m_a + (b[i] - zp_b) * m_b, shift), qmin, qmax)`.
    pub fn add_u8(a: &[u8], b: &[u8], q: &AddQuant, out: &mut [u8]) {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = add_code(x, y, q);
        }
    }

    /// `out[i] = clamp(zp_out + rshift_round((x[i] - zp_in) * m, shift), qmin, qmax)`.
    pub fn rescale_u8(x: &[u8], q: &RescaleQuant, out: &mut [u8]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = rescale_code(v, q);
        }
    }

    /// `out[i] = table[x[i]]`.
    pub fn lut_u8(x: &[u8], table: &[u8; 256], out: &mut [u8]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = table[v as usize];
        }
    }
}

fn check_same_len(context: &str, what: &str, found: usize, n: usize) -> Result<(), QuantError> {
    check_len(context, what, found, Some(n))
}

/// Residual add of two code tensors of equal length onto the output parameters (module doc); uses
/// [`super::selected_isa`] and equals [`reference::add_u8`].
pub fn add_u8(a: &[u8], b: &[u8], q: &AddQuant, out: &mut [u8]) -> Result<(), QuantError> {
    add_u8_with(super::selected_isa(), a, b, q, out)
}

/// [`add_u8`] on an explicit tier; an unavailable tier runs [`Isa::capped`] instead.
pub fn add_u8_with(
    isa: Isa,
    a: &[u8],
    b: &[u8],
    q: &AddQuant,
    out: &mut [u8],
) -> Result<(), QuantError> {
    check_same_len("add", "input b", b.len(), a.len())?;
    check_same_len("add", "output", out.len(), a.len())?;
    q.validate()?;
    match isa.capped() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => super::x86_eltwise::add_u8(a, b, q, out),
        _ => reference::add_u8(a, b, q, out),
    }
    Ok(())
}

/// Rescales codes onto other quantization parameters (module doc); uses [`super::selected_isa`] and equals
/// [`reference::rescale_u8`].
pub fn rescale_u8(x: &[u8], q: &RescaleQuant, out: &mut [u8]) -> Result<(), QuantError> {
    rescale_u8_with(super::selected_isa(), x, q, out)
}

/// [`rescale_u8`] on an explicit tier; an unavailable tier runs [`Isa::capped`] instead.
pub fn rescale_u8_with(
    isa: Isa,
    x: &[u8],
    q: &RescaleQuant,
    out: &mut [u8],
) -> Result<(), QuantError> {
    check_same_len("rescale", "output", out.len(), x.len())?;
    q.validate()?;
    match isa.capped() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => super::x86_eltwise::rescale_u8(x, q, out),
        _ => reference::rescale_u8(x, q, out),
    }
    Ok(())
}

/// `out[i] = table[x[i]]`; uses [`super::selected_isa`] and equals [`reference::lut_u8`].
pub fn lut_u8(x: &[u8], table: &[u8; 256], out: &mut [u8]) -> Result<(), QuantError> {
    lut_u8_with(super::selected_isa(), x, table, out)
}

/// [`lut_u8`] on an explicit tier; an unavailable tier runs [`Isa::capped`] instead.
pub fn lut_u8_with(
    isa: Isa,
    x: &[u8],
    table: &[u8; 256],
    out: &mut [u8],
) -> Result<(), QuantError> {
    check_same_len("lut", "output", out.len(), x.len())?;
    match isa.capped() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => super::x86_eltwise::lut_u8(x, table, out),
        _ => reference::lut_u8(x, table, out),
    }
    Ok(())
}

/// `data[i] = table[data[i]]` in place (the same codes as [`lut_u8`]); uses [`super::selected_isa`].
pub fn lut_u8_in_place(data: &mut [u8], table: &[u8; 256]) {
    lut_u8_in_place_with(super::selected_isa(), data, table)
}

/// [`lut_u8_in_place`] on an explicit tier; an unavailable tier runs [`Isa::capped`] instead.
pub fn lut_u8_in_place_with(isa: Isa, data: &mut [u8], table: &[u8; 256]) {
    match isa.capped() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => super::x86_eltwise::lut_u8_in_place(data, table),
        _ => {
            for v in data.iter_mut() {
                *v = table[*v as usize];
            }
        }
    }
}

/// The table of a unary function on codes (normative lowering of every element-wise unary op):
/// `table[q] = quantize(f(dequantize(q, input)), output, qmin, qmax)` for `q` in `0..=255`, with the crate's one
/// [`quantize`] (round half away from zero, computed in f32). Codes a tensor cannot hold are tabulated too, so the
/// table is total. A clip `[lo, hi]` on unchanged parameters is `table[q] = clamp(q, lo_code, hi_code)` exactly.
pub fn unary_table(
    input: QParams,
    output: QParams,
    qmin: i32,
    qmax: i32,
    f: impl Fn(f32) -> f32,
) -> Result<[u8; 256], QuantError> {
    check_codes(
        "unary_table",
        &[
            ("input zero point", input.zero_point),
            ("output zero point", output.zero_point),
        ],
        qmin,
        qmax,
    )?;
    let mut table = [0u8; 256];
    for (q, t) in table.iter_mut().enumerate() {
        let x = crate::qparams::dequantize(q as i32, input);
        *t = quantize(f(x), output, qmin, qmax) as u8;
    }
    Ok(table)
}
