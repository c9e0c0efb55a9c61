//! Pooling on NCHW `u8` codes: global average pool (the network heads of ResNet and MobileNet) and max pool with
//! any kernel, stride and padding. Planes (`batch * channels` of them) are independent, so the kernels take a
//! plane count rather than a batch and channel count.
//!
//! Arithmetic (normative, [`reference`](mod@reference)):
//! - Global average pool of a plane of `n = h * w` codes: `out = requantize(sum_i (x_i - zp_in), requant, zp_out,
//!   qmin, qmax)` ([`crate::qparams::requantize`]) with `requant = Requant::from_real(s_in / (s_out * n))`, the
//!   real multiplier computed in f64 as `s_in as f64 / (s_out as f64 * n as f64)` ([`AvgPoolQuant::new`]): the
//!   engine's AvgPool2d formula with the window equal to the whole map. The sum lies within `255 * n`, which fits
//!   an `i32` for `n <= ` [`MAX_AVG_POOL_ELEMS`].
//! - Max pool: `out[oy][ox] = max` of the codes `x[oy*sh + ky - ph][ox*sw + kx - pw]` inside the input
//!   (`ky < kh`, `kx < kw`); padded positions are ignored, which equals treating them as code 0. Padding below the
//!   kernel size (checked) leaves every window at least one input code. `oh = (h + 2 ph - kh) / sh + 1` (floor).
//!
//! AVX2 (`x86_pool`): the average pool sums 32 codes per `vpsadbw` (a tail as one masked load) and subtracts
//! `zp_in * n` once (the same integer); the max pool takes the vertical max of a window's input rows (`vpmaxub`, 32
//! columns per step) into a zero-bordered row, then the horizontal max of `kw` shifted loads, and for stride 2 keeps
//! the even bytes (`vpand` + `vpackuswb`); other column strides pick every `sw`-th value from the stride-1 maxima.
//! Measured in `tests/kernels_graph_timing.rs` (thread CPU time, shared 2-core Zen3): global average pool of 64 x
//! 64 planes of 8x8 / 7x7 codes 2.1x / 1.6x the (auto-vectorised) reference; max pool 3x3 stride 2 on 64 planes of
//! 32x32 8.5x.
use super::{check_len, mismatch, Isa};
use crate::error::QuantError;
use crate::qparams::{requantize, QParams, Requant};

/// Largest plane a global average pool accepts: `floor((2^31 - 1) / 255)`, so that the sum of code differences
/// cannot leave `i32`.
pub const MAX_AVG_POOL_ELEMS: usize = i32::MAX as usize / 255;

/// Output stage of a global average pool (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPoolQuant {
    /// `Requant::from_real(s_in / (s_out * n))`.
    pub requant: Requant,
    /// Input zero point, in `0..=255`.
    pub zero_point_in: i32,
    /// Output zero point, in `0..=255`.
    pub zero_point_out: i32,
    /// Lowest output code (the engine's AvgPool2d uses 0).
    pub qmin: i32,
    /// Highest output code, at most 255.
    pub qmax: i32,
}

impl AvgPoolQuant {
    /// The stage averaging `window_elems` codes of parameters `input` onto `output`, output range `[0, qmax]`.
    pub fn new(
        input: QParams,
        output: QParams,
        window_elems: usize,
        qmax: i32,
    ) -> Result<Self, QuantError> {
        check_window(window_elems)?;
        let real = input.scale as f64 / (output.scale as f64 * window_elems as f64);
        let q = Self {
            requant: Requant::from_real(real)?,
            zero_point_in: input.zero_point,
            zero_point_out: output.zero_point,
            qmin: 0,
            qmax,
        };
        q.validate()?;
        Ok(q)
    }

    /// Checks the requantization, the zero points and the output range.
    pub fn validate(&self) -> Result<(), QuantError> {
        self.requant.validate()?;
        super::eltwise::check_codes(
            "global_avg_pool",
            &[
                ("zero_point_in", self.zero_point_in),
                ("zero_point_out", self.zero_point_out),
            ],
            self.qmin,
            self.qmax,
        )
    }
}

fn check_window(n: usize) -> Result<(), QuantError> {
    if n == 0 || n > MAX_AVG_POOL_ELEMS {
        return Err(mismatch(
            "global_avg_pool",
            format!("plane of {n} codes: must lie in 1..={MAX_AVG_POOL_ELEMS}"),
        ));
    }
    Ok(())
}

/// Shape of a max pool on one plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// `(sh, sw)`, at least 1.
    pub stride: (usize, usize),
    /// `(ph, pw)`: rows ignored above and below, columns left and right; below the kernel size.
    pub padding: (usize, usize),
}

/// Largest size of any max pool dimension (keeps index arithmetic far from overflow).
pub const MAX_POOL_DIM: usize = 1 << 16;

impl PoolGeometry {
    /// Checks: sizes and strides in `1..=`[`MAX_POOL_DIM`], padding below the kernel, kernel within the padded
    /// input.
    pub fn validate(&self) -> Result<(), QuantError> {
        let dims = [
            self.h,
            self.w,
            self.kh,
            self.kw,
            self.stride.0,
            self.stride.1,
        ];
        if dims.iter().any(|&d| d == 0 || d > MAX_POOL_DIM)
            || self.padding.0 >= self.kh
            || self.padding.1 >= self.kw
            || self.kh > self.h + 2 * self.padding.0
            || self.kw > self.w + 2 * self.padding.1
        {
            return Err(mismatch(
                "max_pool",
                format!(
                    "{self:?}: sizes and strides must lie in 1..={MAX_POOL_DIM}, padding below the kernel, the \
                     kernel within the padded input"
                ),
            ));
        }
        Ok(())
    }

    /// Output height (valid geometry).
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.padding.0 - self.kh) / self.stride.0 + 1
    }

    /// Output width (valid geometry).
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.padding.1 - self.kw) / self.stride.1 + 1
    }

    /// Input rows `lo..hi` of output row `oy`'s windows (never empty for a valid geometry); the same for columns
    /// with `(w, kw, sw, pw)`.
    pub(crate) fn span(
        o: usize,
        stride: usize,
        pad: usize,
        k: usize,
        len: usize,
    ) -> (usize, usize) {
        let start = o * stride;
        (
            start.saturating_sub(pad),
            (start + k).saturating_sub(pad).min(len),
        )
    }
}

/// Scalar definitions (normative).
pub mod reference {
    use super::{AvgPoolQuant, PoolGeometry};
    use crate::qparams::requantize;

    /// `out[p] = requantize(sum_i (x[p * n + i] - zp_in), ...)` for each of `out.len()` planes of `n` codes.
    pub fn global_avg_pool_u8(x: &[u8], n: usize, q: &AvgPoolQuant, out: &mut [u8]) {
        for (o, plane) in out.iter_mut().zip(x.chunks_exact(n)) {
            let sum: i32 = plane.iter().map(|&v| v as i32 - q.zero_point_in).sum();
            *o = requantize(sum, q.requant, q.zero_point_out, q.qmin, q.qmax) as u8;
        }
    }

    /// The max over each window's in-bounds codes (module doc), `planes` planes.
    pub fn max_pool_u8(x: &[u8], planes: usize, g: &PoolGeometry, out: &mut [u8]) {
        let (oh, ow) = (g.oh(), g.ow());
        for p in 0..planes {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut m = 0u8;
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let iy = (oy * g.stride.0 + ky).checked_sub(g.padding.0);
                            let ix = (ox * g.stride.1 + kx).checked_sub(g.padding.1);
                            if let (Some(iy), Some(ix)) = (iy, ix) {
                                if iy < g.h && ix < g.w {
                                    m = m.max(x[(p * g.h + iy) * g.w + ix]);
                                }
                            }
                        }
                    }
                    out[(p * oh + oy) * ow + ox] = m;
                }
            }
        }
    }
}

/// Global average pool of `planes` planes of `plane_elems` codes each (`x` is `[planes][plane_elems]`, NCHW with
/// `planes = batch * channels`) into `out[planes]`; uses [`super::selected_isa`] and equals
/// [`reference::global_avg_pool_u8`].
pub fn global_avg_pool_u8(
    x: &[u8],
    planes: usize,
    plane_elems: usize,
    q: &AvgPoolQuant,
    out: &mut [u8],
) -> Result<(), QuantError> {
    global_avg_pool_u8_with(super::selected_isa(), x, planes, plane_elems, q, out)
}

/// [`global_avg_pool_u8`] on an explicit tier; an unavailable tier runs [`Isa::capped`] instead.
pub fn global_avg_pool_u8_with(
    isa: Isa,
    x: &[u8],
    planes: usize,
    plane_elems: usize,
    q: &AvgPoolQuant,
    out: &mut [u8],
) -> Result<(), QuantError> {
    const CTX: &str = "global_avg_pool";
    check_window(plane_elems)?;
    check_len(CTX, "input", x.len(), planes.checked_mul(plane_elems))?;
    check_len(CTX, "output", out.len(), Some(planes))?;
    q.validate()?;
    match isa.capped() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => super::x86_pool::global_avg_pool_u8(x, plane_elems, q, out),
        _ => reference::global_avg_pool_u8(x, plane_elems, q, out),
    }
    Ok(())
}

/// Max pool of `planes` planes (`x` is `[planes][h][w]`) into `out[planes][oh][ow]`; uses
/// [`super::selected_isa`] and equals [`reference::max_pool_u8`].
pub fn max_pool_u8(
    x: &[u8],
    planes: usize,
    g: &PoolGeometry,
    out: &mut [u8],
) -> Result<(), QuantError> {
    max_pool_u8_with(super::selected_isa(), x, planes, g, out)
}

/// [`max_pool_u8`] on an explicit tier; an unavailable tier runs [`Isa::capped`] instead.
pub fn max_pool_u8_with(
    isa: Isa,
    x: &[u8],
    planes: usize,
    g: &PoolGeometry,
    out: &mut [u8],
) -> Result<(), QuantError> {
    const CTX: &str = "max_pool";
    g.validate()?;
    check_len(CTX, "input", x.len(), planes.checked_mul(g.h * g.w))?;
    check_len(
        CTX,
        "output",
        out.len(),
        planes.checked_mul(g.oh() * g.ow()),
    )?;
    match isa.capped() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => super::x86_pool::max_pool_u8(x, planes, g, out),
        _ => reference::max_pool_u8(x, planes, g, out),
    }
    Ok(())
}

/// One plane's average-pool output from its plain code sum (`sum_i x_i`, at most `255 * n`): the same integer as
/// the reference's sum of differences, requantized.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline]
pub(crate) fn avg_from_sum(sum: i64, n: usize, q: &AvgPoolQuant) -> u8 {
    let diff = (sum - q.zero_point_in as i64 * n as i64) as i32;
    requantize(diff, q.requant, q.zero_point_out, q.qmin, q.qmax) as u8
}
