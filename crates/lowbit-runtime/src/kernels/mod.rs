//! Integer kernels: a normative scalar reference, SIMD variants, and run-time dispatch.
//!
//! Public entry points ([`gemm_acc`], [`gemm_requant`], [`gemm_acc_b1b1`] and their `_with` variants) check
//! slice lengths and parameters and return [`QuantError`]; the per-ISA kernels behind them assume checked input.
//! Every tier equals [`reference`](mod@reference) bit for bit (see that module for the arithmetic).
//!
//! Dispatch: the tier is [`crate::isa`]'s one selection ([`selected_isa`]: CPU features, capped by
//! `LOWBIT_ISA`, read once); the engine's kernels implement every tier of [`Isa::ALL`]. The unverified tier
//! (`neon`) is compiled only with its `unverified-neon` cargo feature.
//!
//! Every `unsafe` operation in the kernel modules states its contract (`# Safety` on each `unsafe fn`, a
//! `// SAFETY:` comment on each block), and `unsafe_op_in_unsafe_fn` is denied so that an `unsafe fn`'s body
//! gets no blanket licence.
#![deny(unsafe_op_in_unsafe_fn)]
use crate::error::QuantError;
use crate::pack::{row_bytes, PackedWeights, Packing};
use crate::qparams::Requant;

pub use crate::isa::{active_isa, selected_isa, Isa};

#[cfg(all(target_arch = "aarch64", feature = "unverified-neon"))]
pub mod aarch64;
pub mod conv;
pub mod conv_planes;
pub mod depthwise;
pub mod eltwise;
pub mod layout;
pub mod pairs;
pub mod pool;
pub mod reference;
pub mod winograd;
#[cfg(target_arch = "x86_64")]
pub mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_conv_planes;
#[cfg(target_arch = "x86_64")]
mod x86_conv_quads;
#[cfg(target_arch = "x86_64")]
mod x86_depthwise;
#[cfg(target_arch = "x86_64")]
mod x86_eltwise;
#[cfg(target_arch = "x86_64")]
mod x86_pool;
#[cfg(target_arch = "x86_64")]
mod x86_winograd;

/// Largest K for which `K * 255 * 127` (the largest |sum| of u8 x [-127, 127] products) fits an `i32`:
/// `floor((2^31 - 1) / 32385) = 66311`. The bias must additionally satisfy
/// `|bias| <= i32::MAX - K * 32385` (see [`acc_cannot_overflow`]); the engine checks both when a model loads.
/// Past this bound the kernels still agree bit for bit (wrapping arithmetic) but the result is meaningless.
pub const MAX_K: usize = (i32::MAX as usize) / (255 * 127);

/// Whether `bias + sum_K u8 x [-127,127]` can never leave `i32` for biases with `|bias| <= max_abs_bias`.
pub fn acc_cannot_overflow(k: usize, max_abs_bias: u32) -> bool {
    (k as u128) * 255 * 127 + max_abs_bias as u128 <= i32::MAX as u128
}

/// Output stage fused into the kernel's output loop.
#[derive(Debug, Clone, Copy)]
pub struct OutputParams<'a> {
    /// Per output column, added to the accumulator (bias plus zero-point correction).
    pub bias: &'a [i32],
    /// Requantization: len 1 (per-tensor) or n (per column).
    pub requant: &'a [Requant],
    /// Output zero point, added after the rounding shift.
    pub zero_point: i32,
    /// Lowest output code (>= 0).
    pub qmin: i32,
    /// Highest output code (<= 255).
    pub qmax: i32,
}

impl OutputParams<'_> {
    /// The requantization of output column (or channel) `j`: `requant[j]`, or `requant[0]` when per-tensor.
    #[inline]
    pub fn requant_for(&self, j: usize) -> Requant {
        self.requant[if self.requant.len() == 1 { 0 } else { j }]
    }
}

fn mismatch(context: &str, detail: String) -> QuantError {
    QuantError::ShapeMismatch {
        context: context.to_string(),
        detail,
    }
}

fn check_len(
    context: &str,
    what: &str,
    found: usize,
    expected: Option<usize>,
) -> Result<(), QuantError> {
    match expected {
        Some(e) if e == found => Ok(()),
        Some(e) => Err(mismatch(
            context,
            format!("{what}: expected {e} elements, found {found}"),
        )),
        None => Err(mismatch(context, format!("{what}: size overflows usize"))),
    }
}

fn check_weights(context: &str, k: usize, w: &PackedWeights) -> Result<(), QuantError> {
    if w.cols != k {
        return Err(mismatch(
            context,
            format!("weights have {} columns, k = {k}", w.cols),
        ));
    }
    check_len(
        context,
        "packed weight bytes",
        w.data.len(),
        w.rows.checked_mul(row_bytes(w.packing, w.cols)),
    )
}

#[allow(clippy::too_many_arguments)]
fn check_acc(
    context: &str,
    a_len: usize,
    a_row_elems: usize,
    m: usize,
    k: usize,
    w: &PackedWeights,
    bias_len: usize,
    out_len: usize,
) -> Result<(), QuantError> {
    check_weights(context, k, w)?;
    check_len(context, "activations", a_len, m.checked_mul(a_row_elems))?;
    check_len(context, "bias", bias_len, Some(w.rows))?;
    check_len(context, "output", out_len, m.checked_mul(w.rows))
}

fn check_output(context: &str, n: usize, p: &OutputParams) -> Result<(), QuantError> {
    if p.requant.len() != 1 && p.requant.len() != n {
        return Err(mismatch(
            context,
            format!(
                "requant: expected 1 or {n} entries, found {}",
                p.requant.len()
            ),
        ));
    }
    for rq in p.requant {
        rq.validate()?;
    }
    if !(0 <= p.qmin && p.qmin <= p.qmax && p.qmax <= 255) {
        return Err(QuantError::InvalidQParams {
            tensor: context.to_string(),
            reason: format!(
                "output range [{}, {}] must satisfy 0 <= qmin <= qmax <= 255",
                p.qmin, p.qmax
            ),
        });
    }
    Ok(())
}

/// `out[i*n + j] = bias[j] + sum_kk a[i*k + kk] * code(w, j, kk)` with `a` an `m x k` row-major `u8` matrix and
/// `w` holding `n` rows of `k` codes (any packing). Uses [`selected_isa`]; equals [`reference::gemm_u8i8_i32`].
pub fn gemm_acc(
    a: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    bias: &[i32],
    out: &mut [i32],
) -> Result<(), QuantError> {
    gemm_acc_with(selected_isa(), a, m, k, w, bias, out)
}

/// [`gemm_acc`] on an explicit tier; an unavailable tier runs [`Isa::capped`] instead.
pub fn gemm_acc_with(
    isa: Isa,
    a: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    bias: &[i32],
    out: &mut [i32],
) -> Result<(), QuantError> {
    check_acc("gemm_acc", a.len(), k, m, k, w, bias.len(), out.len())?;
    match isa.capped() {
        #[cfg(target_arch = "x86_64")]
        isa @ (Isa::Avx2 | Isa::Avx512Vnni) => {
            x86::gemm_acc(isa, a, m, k, w, x86::Prepared::None, bias, out)
        }
        #[cfg(all(target_arch = "aarch64", feature = "unverified-neon"))]
        isa @ Isa::Neon => aarch64::gemm_acc(isa, a, m, k, w, bias, out),
        _ => reference::gemm_u8i8_i32(a, m, k, w, bias, out),
    }
    Ok(())
}

/// `out[i*n + j] = requantize(acc[i*n + j], requant[j or 0], zero_point, qmin, qmax) as u8` where `acc` is
/// [`gemm_acc`] with `p.bias` ([`crate::qparams::requantize`] semantics, bit-exact). Requires
/// `0 <= qmin <= qmax <= 255` and valid [`Requant`]s.
pub fn gemm_requant(
    a: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    p: &OutputParams,
    out: &mut [u8],
) -> Result<(), QuantError> {
    gemm_requant_with(selected_isa(), a, m, k, w, p, out)
}

/// [`gemm_requant`] on an explicit tier; an unavailable tier runs [`Isa::capped`] instead.
pub fn gemm_requant_with(
    isa: Isa,
    a: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    p: &OutputParams,
    out: &mut [u8],
) -> Result<(), QuantError> {
    check_acc("gemm_requant", a.len(), k, m, k, w, p.bias.len(), out.len())?;
    check_output("gemm_requant", w.rows, p)?;
    match isa.capped() {
        #[cfg(target_arch = "x86_64")]
        isa @ (Isa::Avx2 | Isa::Avx512Vnni) => {
            x86::gemm_requant(isa, a, m, k, w, x86::Prepared::None, p, out)
        }
        #[cfg(all(target_arch = "aarch64", feature = "unverified-neon"))]
        isa @ Isa::Neon => aarch64::gemm_requant(isa, a, m, k, w, p, out),
        _ => reference::gemm_u8i8_u8(a, m, k, w, p, out),
    }
    Ok(())
}

/// Weights prepared once for repeated GEMMs on one tier (what [`crate::engine::Engine`] holds per layer).
///
/// On the AVX2 tier int8 weights are widened once into the kernel's i16 panel layout, which removes the per-call
/// decode and transpose and enables the batch-1 GEMV path; the panels take `2 * n_padded * k_padded` bytes (twice
/// the int8 matrix). Sub-8-bit packings (`I4x2`, `I2x4`, `B1x8`) are re-ordered once into 8-column panels that
/// stay packed at their storage width (about the packed size; never an int8 copy) and are expanded in registers
/// by the kernel (shift, mask, sign-extend; `vpmaddubsw`). Other tiers use the packed weights as they are.
/// Results equal [`gemm_acc`] / [`gemm_requant`] (and so the reference) bit for bit.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepackedWeights {
    weights: PackedWeights,
    isa: Isa,
    panels: Option<Vec<i16>>,
    /// The same panels at int8 width, for the batch-1 GEMV (AVX2 tiers, int8 weights).
    panels8: Option<Vec<i8>>,
    /// Sub-byte panels at storage width (AVX2 tiers, `I4x2` / `I2x4` / `B1x8`).
    subbyte: Option<Vec<u8>>,
    /// Int8 panels in a safe pair order for the `vpmaddubsw` kernels, with the bias fix of its flips (AVX2 tier,
    /// see [`pairs`]).
    pairs: Option<(pairs::PairPlan, Vec<i8>, Vec<i32>)>,
}

/// Longest pair plan worth taking, for `k` activations: appended indices add work, and past a quarter more
/// positions the `vpmaddubsw` kernels (about 1.4x the multiply rate of `vpmaddwd` on Zen3) lose their edge.
#[cfg(target_arch = "x86_64")]
fn max_pair_len(k: usize) -> usize {
    let k4 = k.div_ceil(4) * 4;
    k4 + k4 / 4
}

impl PrepackedWeights {
    /// Prepares `weights` for [`selected_isa`].
    pub fn new(weights: PackedWeights) -> Result<Self, QuantError> {
        Self::with_isa(selected_isa(), weights)
    }

    /// Prepares `weights` for `isa` (an unavailable tier is [`Isa::capped`]); checks the packed length.
    pub fn with_isa(isa: Isa, weights: PackedWeights) -> Result<Self, QuantError> {
        Self::prepare(isa, weights, true)
    }

    /// Like [`PrepackedWeights::with_isa`] but never takes the `vpmaddubsw` pair path: int8 weights on AVX2 are
    /// widened to i16 (`vpmaddwd`), for tests and benchmarks that compare the two.
    pub fn widened(isa: Isa, weights: PackedWeights) -> Result<Self, QuantError> {
        Self::prepare(isa, weights, false)
    }

    fn prepare(isa: Isa, weights: PackedWeights, allow_pairs: bool) -> Result<Self, QuantError> {
        check_weights("PrepackedWeights", weights.cols, &weights)?;
        let isa = isa.capped();
        #[cfg(not(target_arch = "x86_64"))]
        let _ = allow_pairs; // the pair path is x86-only
        let pairs = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni if weights.packing == Packing::I8 && allow_pairs => {
                pairs::plan_pairs(&weights, max_pair_len(weights.cols)).map(|plan| {
                    let panels = x86::prepack_pairs(&weights, &plan);
                    let fix = plan.bias_fix(&weights);
                    (plan, panels, fix)
                })
            }
            _ => None,
        };
        let panels = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni if weights.packing == Packing::I8 && pairs.is_none() => {
                Some(x86::prepack_panels(&weights))
            }
            _ => None,
        };
        let panels8 = match &panels {
            #[cfg(target_arch = "x86_64")]
            Some(_) => Some(x86::prepack_panels_i8(&weights)),
            _ => None,
        };
        let subbyte = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni if weights.packing != Packing::I8 => {
                Some(x86::prepack_subbyte(&weights))
            }
            _ => None,
        };
        Ok(Self {
            weights,
            isa,
            panels,
            panels8,
            subbyte,
            pairs,
        })
    }

    /// The packed weights these were prepared from.
    pub fn weights(&self) -> &PackedWeights {
        &self.weights
    }

    /// The tier the kernels run on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Whether the weights were re-ordered into kernel panels (AVX2 tiers: int8 widened to i16, sub-byte packings
    /// kept at their width).
    pub fn is_panelized(&self) -> bool {
        self.panels.is_some() || self.subbyte.is_some() || self.pairs.is_some()
    }

    /// The kernel path these weights take, for reports: `pairs` (u8 x i8 `vpmaddubsw` on a safe K order, with the
    /// positions per row), `i16` (widened, `vpmaddwd`), `subbyte`, or the tier's generic kernel.
    pub fn path(&self) -> String {
        match (&self.pairs, &self.panels, &self.subbyte) {
            (Some((plan, ..)), _, _) if plan.is_identity() => format!("{} pairs", self.isa.name()),
            (Some((plan, ..)), _, _) => format!(
                "{} pairs (re-paired, K {} -> {}, {} flipped)",
                self.isa.name(),
                self.weights.cols,
                plan.len(),
                plan.flipped().iter().filter(|&&f| f).count()
            ),
            (None, Some(_), _) => format!("{} i16", self.isa.name()),
            (None, None, Some(_)) => format!("{} subbyte", self.isa.name()),
            _ => self.isa.name().to_string(),
        }
    }

    /// Bytes of the prepared kernel layout beyond the packed weights (0 when the packed bytes are used as is).
    pub fn prepared_bytes(&self) -> usize {
        self.panels.as_ref().map_or(0, |p| 2 * p.len())
            + self.panels8.as_ref().map_or(0, Vec::len)
            + self.subbyte.as_ref().map_or(0, Vec::len)
            + self
                .pairs
                .as_ref()
                .map_or(0, |(plan, p, fix)| p.len() + 5 * plan.len() + 4 * fix.len())
    }

    #[cfg(target_arch = "x86_64")]
    fn x86_prepared(&self) -> x86::Prepared<'_> {
        if let Some((plan, panels, bias_fix)) = &self.pairs {
            return x86::Prepared::Pairs(x86::PairPanels {
                plan,
                panels,
                bias_fix,
            });
        }
        match (&self.panels, &self.subbyte) {
            (Some(p), _) => x86::Prepared::I16(p, self.panels8.as_deref().unwrap_or_default()),
            (None, Some(b)) => x86::Prepared::SubByte(b),
            (None, None) => x86::Prepared::None,
        }
    }
}

/// [`gemm_acc`] on prepared weights (`w.weights()` is the `n x k` matrix), on the tier they were prepared for.
pub fn gemm_acc_prepacked(
    a: &[u8],
    m: usize,
    k: usize,
    w: &PrepackedWeights,
    bias: &[i32],
    out: &mut [i32],
) -> Result<(), QuantError> {
    let pw = &w.weights;
    check_acc("gemm_acc", a.len(), k, m, k, pw, bias.len(), out.len())?;
    match w.isa {
        #[cfg(target_arch = "x86_64")]
        isa @ (Isa::Avx2 | Isa::Avx512Vnni) => {
            x86::gemm_acc(isa, a, m, k, pw, w.x86_prepared(), bias, out)
        }
        #[cfg(all(target_arch = "aarch64", feature = "unverified-neon"))]
        isa @ Isa::Neon => aarch64::gemm_acc(isa, a, m, k, pw, bias, out),
        _ => reference::gemm_u8i8_i32(a, m, k, pw, bias, out),
    }
    Ok(())
}

/// [`gemm_requant`] on prepared weights, on the tier they were prepared for.
pub fn gemm_requant_prepacked(
    a: &[u8],
    m: usize,
    k: usize,
    w: &PrepackedWeights,
    p: &OutputParams,
    out: &mut [u8],
) -> Result<(), QuantError> {
    let pw = &w.weights;
    check_acc(
        "gemm_requant",
        a.len(),
        k,
        m,
        k,
        pw,
        p.bias.len(),
        out.len(),
    )?;
    check_output("gemm_requant", pw.rows, p)?;
    match w.isa {
        #[cfg(target_arch = "x86_64")]
        isa @ (Isa::Avx2 | Isa::Avx512Vnni) => {
            x86::gemm_requant(isa, a, m, k, pw, w.x86_prepared(), p, out)
        }
        #[cfg(all(target_arch = "aarch64", feature = "unverified-neon"))]
        isa @ Isa::Neon => aarch64::gemm_requant(isa, a, m, k, pw, p, out),
        _ => reference::gemm_u8i8_u8(a, m, k, pw, p, out),
    }
    Ok(())
}

/// Binary activations (codes {0, 1}, bit-packed like `B1x8`: `m` rows of `row_bytes(B1x8, k)` bytes) times
/// binary weights (`w.packing == B1x8`): `out[i*n + j] = bias[j] + 2*popcount(a_i & w_j) - popcount(a_i)`.
/// Activation bits past `k` are ignored. Equals [`reference::gemm_b1b1_i32`].
pub fn gemm_acc_b1b1(
    a_bits: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    bias: &[i32],
    out: &mut [i32],
) -> Result<(), QuantError> {
    gemm_acc_b1b1_with(selected_isa(), a_bits, m, k, w, bias, out)
}

/// [`gemm_acc_b1b1`] on an explicit tier; an unavailable tier runs [`Isa::capped`] instead.
pub fn gemm_acc_b1b1_with(
    isa: Isa,
    a_bits: &[u8],
    m: usize,
    k: usize,
    w: &PackedWeights,
    bias: &[i32],
    out: &mut [i32],
) -> Result<(), QuantError> {
    if w.packing != Packing::B1x8 {
        return Err(mismatch(
            "gemm_acc_b1b1",
            format!("weights must be B1x8, found {:?}", w.packing),
        ));
    }
    let rb = row_bytes(Packing::B1x8, k);
    check_acc(
        "gemm_acc_b1b1",
        a_bits.len(),
        rb,
        m,
        k,
        w,
        bias.len(),
        out.len(),
    )?;
    match isa.capped() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => x86::gemm_b1b1(a_bits, m, k, w, bias, out),
        _ => reference::gemm_b1b1_i32(a_bits, m, k, w, bias, out),
    }
    Ok(())
}

/// Zero-point-padded copies of one sample's `[c][h][w]` planes, reused across calls by the convolutions: planes of
/// `h + 2 * pad_h` rows of `row` bytes (`row >= w + 2 * pad_w`; the extra columns absorb over-reads), `len` bytes
/// in all (slack past the last plane included). Every interior byte is overwritten on each call, so the borders are
/// written only when the layout or the pad code changes.
#[derive(Debug, Default)]
pub(crate) struct PaddedPlanes {
    pub(crate) data: Vec<u8>,
    /// `[c, h, w, pad_h, pad_w, row, len]` and the pad code the borders were written for.
    layout: Option<([usize; 7], u8)>,
}

impl PaddedPlanes {
    /// Copies `x` (`c` planes of `h x w`, `h * w > 0`) in at row `pad_h`, column `pad_w` of each padded plane.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fill(
        &mut self,
        x: &[u8],
        (c, h, w): (usize, usize, usize),
        (pad_h, pad_w): (usize, usize),
        row: usize,
        len: usize,
        pad_code: u8,
    ) {
        let key = ([c, h, w, pad_h, pad_w, row, len], pad_code);
        if self.layout != Some(key) {
            self.data.clear();
            self.data.resize(len, pad_code);
            self.layout = Some(key);
        }
        let hp = h + 2 * pad_h;
        for (ic, plane) in x.chunks_exact(h * w).enumerate() {
            for (y, src) in plane.chunks_exact(w).enumerate() {
                copy_short(&mut self.data[(ic * hp + y + pad_h) * row + pad_w..], src);
            }
        }
    }
}

/// `dst[..src.len()] = src`; rows of 8 to 32 bytes (LeNet's 14 and 28) as 8-byte moves, the last one
/// overlapping, instead of a `memcpy` call each.
pub(crate) fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    if !(8..=32).contains(&n) {
        dst[..n].copy_from_slice(src);
        return;
    }
    let mut i = 0;
    while i + 8 < n {
        dst[i..i + 8].copy_from_slice(&src[i..i + 8]);
        i += 8;
    }
    dst[n - 8..n].copy_from_slice(&src[n - 8..]);
}
