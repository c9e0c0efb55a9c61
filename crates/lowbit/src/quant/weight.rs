//! Weight quantizers. [`WeightQuantizer::quantize`] is the single source of weight codes: QAT's fake-quant
//! forward (`code * scale`) and the conversion to the runtime model both call it, so they agree by construction.
//!
//! (Over 800 lines on purpose: the single source of weight codes, every rule's forward and straight-through
//! backward together, so QAT and conversion cannot drift apart.)
use super::calibrate::WeightCalibration;
use super::config::{LsqInit, QuantConfig, WeightQuantKind};
use super::kernels;
use super::lsq;
use crate::error::{Error, Result};
use crate::nn::Param;
use crate::state::{StateValue, StateVisitor, Stateful};
use lowbit_runtime::qparams::{self, QParams};

/// Codes of a weight matrix and the scales that dequantize them (`w ~= code * scale`).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightCodes {
    /// One code per weight, row-major `[rows, cols]`, within [`qparams::weight_code_range`] of `bits`.
    pub codes: Vec<i8>,
    /// One scale (per-tensor) or one per row (per-channel); each finite, normal and > 0.
    pub scales: Vec<f32>,
    /// Stored bit width (for fixed step: the smallest width holding the codes, at most 8).
    pub bits: u32,
    /// Per weight: true when the weight lies inside the clipping range (the STE passes its gradient).
    pub inside: Vec<bool>,
    /// Number of weights clipped to the code range.
    pub clipped: usize,
}

impl WeightCodes {
    /// Scale of row `r` (the only scale when per-tensor).
    pub fn scale_of_row(&self, r: usize) -> f32 {
        if self.scales.len() == 1 {
            self.scales[0]
        } else {
            self.scales[r]
        }
    }

    /// Dequantized weights `code * scale`, computed with [`qparams::dequantize`] (zero point 0).
    pub fn dequantize(&self, cols: usize) -> Vec<f32> {
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let s = self.scale_of_row(i.checked_div(cols).unwrap_or(0));
                qparams::dequantize(
                    c as i32,
                    QParams {
                        scale: s,
                        zero_point: 0,
                    },
                )
            })
            .collect()
    }
}

/// Fallback scale when a row (or tensor) is all zeros: its codes are all 0 (binary: all +1), so any scale is
/// exact for min-max and ternary. Not a tiny value: the runtime needs `s_in * s_w / s_out` to be a
/// representable requantization multiplier (>= 2^-31).
const ZERO_TENSOR_SCALE: f32 = 1.0;

/// Fake-quantizer of a layer's weights (a `[rows = out channels, cols = K]` row-major matrix).
///
/// `nn::Dense` calls [`WeightQuantizer::forward`] before its matrix product and
/// [`WeightQuantizer::backward`] to map the gradient of the quantized weights back to the float shadow weights.
#[derive(Debug, Clone)]
pub struct WeightQuantizer {
    kind: WeightQuantKind,
    /// Configured width (min-max); the stored width of fixed step is found per call.
    config_bits: u32,
    per_channel: bool,
    inside: Vec<bool>,
    clipped_fraction: f32,
    zero_fraction: f32,
    last_bits: u32,
    /// LSQ: learned steps, one per tensor or per output row (empty until initialized from the weights).
    step: Vec<f32>,
    /// LSQ: dL/dstep of the last backward pass.
    grad_step: Vec<f32>,
    /// Length of the weights of the last fast [`forward`](Self::forward) (`None`: backward must recompute the
    /// mask); every kind but fixed step then needs no stored mask (all pass, or LSQ recomputes it fused).
    fast_len: Option<usize>,
    /// Scratch reused across steps (per-group scales / thresholds, f64 sums, counts, LSQ `dw_q/ds`).
    scratch: Scratch,
    /// Quantization delay: forward passes the float weights, backward the whole gradient, steps get none.
    bypassed: bool,
    /// Min-max: clipping ratio per group (scale `c max|w| / qmax`); empty means 1 (nothing clipped).
    clip: Vec<f32>,
    /// How PTQ chose the scale (`None` outside PTQ), for reports.
    calibration: Option<WeightCalibration>,
    /// AdaRound: per weight, round up (`floor(w/s) + 1`) or down (`floor(w/s)`) instead of to nearest; empty
    /// means nearest. Set by PTQ ([`super::adaround`]); a list whose length does not match the weights is ignored.
    round_up: Vec<bool>,
    /// How LSQ steps start.
    lsq_init: LsqInit,
}

#[derive(Debug, Clone, Default)]
struct Scratch {
    scales: Vec<f32>,
    thresholds: Vec<f32>,
    sums: Vec<f64>,
    counts: Vec<usize>,
    derivative: Vec<f32>,
}

impl Default for WeightQuantizer {
    /// 8-bit symmetric min-max, per tensor.
    fn default() -> Self {
        Self {
            kind: WeightQuantKind::MinMax,
            config_bits: 8,
            per_channel: false,
            inside: Vec::new(),
            clipped_fraction: 0.0,
            zero_fraction: 0.0,
            last_bits: 8,
            step: Vec::new(),
            grad_step: Vec::new(),
            fast_len: None,
            scratch: Scratch::default(),
            bypassed: false,
            clip: Vec::new(),
            calibration: None,
            round_up: Vec::new(),
            lsq_init: LsqInit::Lsq,
        }
    }
}

impl WeightQuantizer {
    /// A quantizer of the given kind. `bits` is used by min-max only (2..=8); ternary is 2 bits, binary 1 bit
    /// and always per channel, fixed step derives its width from the codes.
    pub fn new(kind: WeightQuantKind, bits: u32, per_channel: bool) -> Result<Self> {
        let (bits, per_channel) = match kind {
            WeightQuantKind::MinMax => {
                if !(2..=8).contains(&bits) {
                    return Err(Error::option(
                        "--weight-bits",
                        format!("min-max weights need 2..=8 bits, got {bits}"),
                    ));
                }
                (bits, per_channel)
            }
            WeightQuantKind::FixedStep { k } => {
                if !k.is_finite() || k <= 0.0 || !(1.0 / k).is_normal() {
                    return Err(Error::option(
                        "--quant-step",
                        format!("must be finite and > 0, got {k}"),
                    ));
                }
                (8, false)
            }
            WeightQuantKind::Ternary => (2, per_channel),
            WeightQuantKind::Binary => (1, true),
            WeightQuantKind::Lsq => {
                if !(2..=8).contains(&bits) {
                    return Err(Error::option(
                        "--weight-bits",
                        format!("lsq weights need 2..=8 bits, got {bits}"),
                    ));
                }
                (bits, per_channel)
            }
        };
        Ok(Self {
            kind,
            config_bits: bits,
            per_channel,
            last_bits: bits,
            ..Self::default()
        })
    }

    /// LSQ code bound `Qp = Qn = 2^(b-1) - 1` (lowbit's symmetric weight convention).
    fn lsq_qp(&self) -> i32 {
        (1i32 << (self.config_bits - 1)) - 1
    }

    /// LSQ: initializes the learned steps from `w` (`2 mean|w| / sqrt(Qp)` per group, Esser et al. 2020) unless
    /// already done for this shape. No-op for the other kinds. Called by the first forward and by the layer's
    /// `params_mut`, so the step is an optimizer parameter from the first step on.
    pub fn ensure_init(&mut self, w: &[f32], rows: usize, cols: usize) {
        if self.kind != WeightQuantKind::Lsq {
            return;
        }
        let (ngroups, _) = self.groups(rows, cols, w.len());
        if self.step.len() != ngroups {
            self.step = self.initial_steps(w, rows, cols);
            self.grad_step = vec![0.0; self.step.len()];
        }
    }

    fn initial_steps(&self, w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let qp = self.lsq_qp();
        let (ngroups, group_len) = self.groups(rows, cols, w.len());
        let init = |v: &[f32], fallback| match self.lsq_init {
            LsqInit::Lsq => lsq::init_step(v, qp, fallback),
            LsqInit::Mse => lsq::mse_step(v, qp, qp, fallback),
        };
        let tensor = init(w, ZERO_TENSOR_SCALE);
        group_chunks(w, ngroups, group_len)
            .map(|g| init(g, tensor))
            .collect()
    }

    /// Bypasses (or restores) quantization, for a QAT quantization delay: while bypassed, the forward writes
    /// the float weights unchanged, the backward passes every gradient and gives the LSQ steps a zero gradient
    /// (so an optimizer leaves them as they are). The steps stay optimizer parameters throughout, so the
    /// parameter list does not change at the switch.
    pub fn set_bypassed(&mut self, bypassed: bool) {
        self.bypassed = bypassed;
    }

    /// Whether quantization is bypassed ([`set_bypassed`](Self::set_bypassed)).
    pub fn is_bypassed(&self) -> bool {
        self.bypassed
    }

    /// Forgets the learned state (LSQ steps) and the last forward's statistics, so the next forward (or the
    /// layer's `params_mut`) initializes the steps from the weights it is given then: the end of a
    /// quantization delay. Stateless kinds (min-max, ternary, binary, fixed step) derive everything from the
    /// weights at each forward anyway.
    pub fn reset(&mut self) {
        self.step.clear();
        self.grad_step.clear();
        self.inside.clear();
        self.fast_len = None;
        self.clipped_fraction = 0.0;
        self.zero_fraction = 0.0;
    }

    /// LSQ: the learned steps (empty before initialization or for other kinds).
    pub fn steps(&self) -> &[f32] {
        &self.step
    }

    /// LSQ: sets the learned steps (e.g. from a checkpoint); each must be finite and > 0.
    pub fn set_steps(&mut self, steps: Vec<f32>) -> Result<()> {
        if let Some(s) = steps.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::option(
                "weight step",
                format!("must be finite and > 0, got {s}"),
            ));
        }
        self.grad_step = vec![0.0; steps.len()];
        self.step = steps;
        Ok(())
    }

    /// The learned parameters (LSQ steps) with their gradients, for the optimizer; empty for other kinds or
    /// before [`ensure_init`](Self::ensure_init).
    pub fn params_mut(&mut self) -> Vec<Param<'_>> {
        if self.kind == WeightQuantKind::Lsq && !self.step.is_empty() {
            vec![Param {
                name: "weight_step",
                value: &mut self.step,
                grad: &mut self.grad_step,
            }]
        } else {
            Vec::new()
        }
    }

    /// Min-max only: clips each group (the tensor, or each output row when per channel) at `ratio` times its
    /// largest magnitude, so `scale = ratio max|w| / qmax` and larger weights take the extreme code (PTQ's MSE
    /// weight calibration). Each ratio must be in `(0, 1]`; an empty list restores plain min-max. A list
    /// whose length does not match the weights' groups at quantization is ignored.
    pub fn set_clip(&mut self, ratios: Vec<f32>) -> Result<()> {
        if self.kind != WeightQuantKind::MinMax && !ratios.is_empty() {
            return Err(Error::option(
                "--weight-calibration",
                "clipping applies to min-max weights (3..=8 bits, no --quant-step)",
            ));
        }
        if let Some(r) = ratios
            .iter()
            .find(|r| !(r.is_finite() && **r > 0.0 && **r <= 1.0))
        {
            return Err(Error::option(
                "--weight-calibration",
                format!("a clipping ratio must be in (0, 1], got {r}"),
            ));
        }
        self.clip = ratios;
        self.inside.clear();
        self.fast_len = None;
        Ok(())
    }

    /// The clipping ratios set by [`set_clip`](Self::set_clip) (empty: none).
    pub fn clip(&self) -> &[f32] {
        &self.clip
    }

    /// Records how PTQ chose this quantizer's scale (reports only; [`set_clip`](Self::set_clip) does the work).
    pub fn set_calibration(&mut self, c: Option<WeightCalibration>) {
        self.calibration = c;
    }

    /// How PTQ chose the scale, if this quantizer was calibrated by PTQ.
    pub fn calibration(&self) -> Option<WeightCalibration> {
        self.calibration
    }

    /// The largest code of the uniform symmetric grid `{-q..=q} * scale` this quantizer rounds onto (min-max:
    /// `2^(b-1) - 1`; ternary: 1, on the grid of its scale `alpha`), or `None` for rules without such a grid
    /// (binary, fixed step, LSQ), whose rounding AdaRound cannot choose.
    pub fn grid_max(&self) -> Option<i32> {
        match self.kind {
            WeightQuantKind::MinMax => Some((1i32 << (self.config_bits - 1)) - 1),
            WeightQuantKind::Ternary => Some(1),
            _ => None,
        }
    }

    /// Chooses the rounding direction of every weight (AdaRound): code `clamp(floor(w/s) + up, -q, q)` with
    /// `floor` from [`floor_code`] and the scale as the rule computes it; an empty list restores rounding to
    /// nearest. Only for rules with a [`grid_max`](Self::grid_max).
    pub fn set_rounding(&mut self, round_up: Vec<bool>) -> Result<()> {
        if self.grid_max().is_none() && !round_up.is_empty() {
            return Err(Error::option(
                "--adaround",
                "learned rounding applies to min-max and ternary weights (no --quant-step, not binary)",
            ));
        }
        self.round_up = round_up;
        self.inside.clear();
        self.fast_len = None;
        Ok(())
    }

    /// The rounding directions set by [`set_rounding`](Self::set_rounding) (empty: to nearest).
    pub fn rounding(&self) -> &[bool] {
        &self.round_up
    }

    /// Fraction of zero codes in the last forward (the ternary / low-bit dead zone).
    pub fn zero_fraction(&self) -> f32 {
        self.zero_fraction
    }

    /// The quantizer a [`QuantConfig`] asks for (validates the config first).
    pub fn from_config(cfg: &QuantConfig) -> Result<Self> {
        cfg.validate()?;
        let mut q = Self::new(cfg.weight_kind(), cfg.weight_bits, cfg.per_channel)?;
        q.lsq_init = cfg.lsq_init;
        Ok(q)
    }

    /// The rule in use.
    pub fn kind(&self) -> WeightQuantKind {
        self.kind
    }

    /// Whether scales are per output channel.
    pub fn per_channel(&self) -> bool {
        self.per_channel
    }

    /// Bit width of the codes produced by the last [`forward`](Self::forward) (for fixed step it depends on the
    /// weights; otherwise it is the configured width).
    pub fn bits(&self) -> u32 {
        self.last_bits
    }

    /// Fraction of weights clipped in the last forward (non-zero only for fixed step beyond +-127 codes).
    pub fn clipped_fraction(&self) -> f32 {
        self.clipped_fraction
    }

    /// Codes, scales, bit width and clipping of `w` (`[rows, cols]`, row-major).
    ///
    /// - min-max: `scale = max|w| / qmax` per row or tensor, `code = qparams::quantize(w, scale)`.
    /// - fixed step: `scale = 1/k` (the f32 reciprocal), `code = qparams::quantize(w, scale)`, so
    ///   `w_q = round(w * k) / k` up to the f32 rounding of `1/k`; the width is the smallest that holds every
    ///   code that occurs (1 bit when all codes are +-1, else the smallest `b >= 2` with
    ///   `max|code| <= 2^(b-1) - 1`), capped at 8 bits with codes clipped to +-127.
    /// - ternary (TWN, Li et al. 2016, eq. 9-10): `delta = 0.7 * mean|w|`, codes `sign(w)` where `|w| > delta`
    ///   else 0, `alpha = mean |w|` over `|w| > delta`. The codes come from this threshold rule, not from
    ///   `quantize(w, alpha)`.
    /// - binary: `code = qparams::quantize_binary(w)` (+1 for `w >= 0`), `alpha = mean|w|` per row.
    /// - LSQ: `scale = s` (the learned step, see [`lsq::effective_step`]), `code = qparams::quantize(w, s)`
    ///   clamped to `[-Qp, Qp]`, `Qp = 2^(b-1) - 1`; before initialization the initial step of `w` is used.
    ///
    /// With a rounding set by [`set_rounding`](Self::set_rounding), min-max and ternary keep their scales and
    /// take `clamp(floor(w/s) + up, -q, q)` as the codes.
    pub fn quantize(&self, w: &[f32], rows: usize, cols: usize) -> WeightCodes {
        debug_assert_eq!(w.len(), rows * cols);
        let mut q = match self.kind {
            WeightQuantKind::MinMax => self.quantize_min_max(w, rows, cols),
            WeightQuantKind::FixedStep { k } => quantize_fixed_step(w, k),
            WeightQuantKind::Ternary => self.quantize_ternary(w, rows, cols),
            WeightQuantKind::Binary => quantize_binary(w, rows, cols),
            WeightQuantKind::Lsq => self.quantize_lsq(w, rows, cols),
        };
        if let Some(qmax) = self.grid_max().filter(|_| self.round_up.len() == w.len()) {
            for (i, ((&x, &up), (c, inside))) in w
                .iter()
                .zip(&self.round_up)
                .zip(q.codes.iter_mut().zip(q.inside.iter_mut()))
                .enumerate()
            {
                let s = q.scales[if q.scales.len() == 1 {
                    0
                } else {
                    i / cols.max(1)
                }];
                let wide = floor_code(x, s) + i32::from(up);
                *inside = wide.abs() <= qmax;
                *c = wide.clamp(-qmax, qmax) as i8;
            }
            q.clipped = q.inside.iter().filter(|&&i| !i).count();
        }
        q
    }

    fn quantize_lsq(&self, w: &[f32], rows: usize, cols: usize) -> WeightCodes {
        let qp = self.lsq_qp();
        let (ngroups, group_len) = self.groups(rows, cols, w.len());
        let steps: Vec<f32> = if self.step.len() == ngroups {
            self.step.iter().map(|&s| lsq::effective_step(s)).collect()
        } else {
            self.initial_steps(w, rows, cols)
        };
        let mut codes = Vec::with_capacity(w.len());
        let mut inside = Vec::with_capacity(w.len());
        for (g, &s) in group_chunks(w, ngroups, group_len).zip(&steps) {
            for &x in g {
                codes.push(lsq::code(x, s, qp, qp) as i8);
                inside.push(lsq::inside(x, s, qp, qp));
            }
        }
        let clipped = inside.iter().filter(|&&i| !i).count();
        WeightCodes {
            codes,
            scales: steps,
            bits: self.config_bits,
            inside,
            clipped,
        }
    }

    /// `(codes, scales)` of [`quantize`](Self::quantize): what conversion stores.
    pub fn quantize_codes(&self, w: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
        let q = self.quantize(w, rows, cols);
        (q.codes, q.scales)
    }

    /// Fake-quantized weights `code * scale` without touching the STE state.
    pub fn fake_quantize(&self, w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        self.quantize(w, rows, cols).dequantize(cols)
    }

    /// Bias as deployed, in real units: on the fixed-step grid (`round(b * k) / k`) in fixed-step mode,
    /// unchanged otherwise (it becomes an int32 at scale `s_in * s_w`, whose rounding the conversion does).
    pub fn quantize_bias(&self, b: &[f32]) -> Vec<f32> {
        match self.kind {
            WeightQuantKind::FixedStep { k } => {
                let qp = QParams {
                    scale: 1.0 / k,
                    zero_point: 0,
                };
                b.iter()
                    .map(|&x| qparams::fake_quantize(x, qp, i32::MIN / 2, i32::MAX / 2))
                    .collect()
            }
            _ => b.to_vec(),
        }
    }

    /// Writes fake-quantized weights into `out` (same length as `w`) and remembers what backward needs.
    ///
    /// Writes exactly `self.quantize(w, rows, cols).dequantize(cols)`, but without building [`WeightCodes`]:
    /// fused, vectorized passes (`quant::kernels`) over reused buffers.
    pub fn forward(&mut self, w: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
        self.ensure_init(w, rows, cols);
        if self.bypassed {
            return self.forward_bypassed(w, out);
        }
        // Clipped min-max needs the STE mask, which only the reference path keeps.
        if w.is_empty()
            || out.len() != w.len()
            || rows.checked_mul(cols) != Some(w.len())
            || !self.clip.is_empty()
            || !self.round_up.is_empty()
        {
            return self.forward_generic(w, rows, cols, out);
        }
        let n = w.len();
        let (zeros, clipped) = match self.kind {
            WeightQuantKind::MinMax => self.forward_min_max(w, rows, cols, out),
            WeightQuantKind::Ternary => self.forward_ternary(w, rows, cols, out),
            WeightQuantKind::Binary => self.forward_binary(w, rows, cols, out),
            WeightQuantKind::Lsq => self.forward_lsq(w, rows, cols, out),
            WeightQuantKind::FixedStep { .. } => return self.forward_generic(w, rows, cols, out),
        };
        self.zero_fraction = zeros as f32 / n as f32;
        self.clipped_fraction = clipped as f32 / n as f32;
        self.last_bits = self.config_bits;
        self.inside.clear();
        self.fast_len = Some(n);
    }

    /// Float forward of a quantization delay: `out = w`; nothing is clipped or zeroed.
    fn forward_bypassed(&mut self, w: &[f32], out: &mut [f32]) {
        let n = w.len().min(out.len());
        out[..n].copy_from_slice(&w[..n]);
        self.zero_fraction = 0.0;
        self.clipped_fraction = 0.0;
        self.last_bits = self.config_bits;
        self.inside.clear();
        self.fast_len = Some(w.len());
    }

    fn forward_min_max(
        &mut self,
        w: &[f32],
        rows: usize,
        cols: usize,
        out: &mut [f32],
    ) -> (usize, usize) {
        let qmax = (1i32 << (self.config_bits - 1)) - 1;
        let (ngroups, group_len) = self.groups(rows, cols, w.len());
        let maxes = &mut self.scratch.scales;
        maxes.clear();
        maxes.extend(group_chunks(w, ngroups, group_len).map(kernels::max_abs));
        // The tensor's max is the max of the groups' (max is exact), so `max_abs(w)` need not be rescanned.
        let tensor_scale = maxes.iter().fold(0f32, |m, &v| m.max(v)) / qmax as f32;
        let fallback = if tensor_scale.is_normal() {
            tensor_scale
        } else {
            ZERO_TENSOR_SCALE
        };
        let hi = qmax as f32;
        let mut zeros = 0;
        for ((g, o), &m) in group_chunks(w, ngroups, group_len)
            .zip(out.chunks_mut(group_len.max(1)))
            .zip(maxes.iter())
        {
            let s = m / qmax as f32;
            let s = if s.is_normal() { s } else { fallback };
            zeros += kernels::weight_fake_quant(g, s, -hi, hi, o).0;
        }
        (zeros, 0)
    }

    fn forward_ternary(
        &mut self,
        w: &[f32],
        rows: usize,
        cols: usize,
        out: &mut [f32],
    ) -> (usize, usize) {
        let (ngroups, group_len) = self.groups(rows, cols, w.len());
        let sc = &mut self.scratch;
        sc.sums.resize(ngroups, 0.0);
        sc.counts.resize(ngroups, 0);
        kernels::group_abs_sums(w, group_len, None, &mut sc.sums, &mut sc.counts);
        sc.thresholds.clear();
        for (g, &sum) in group_chunks(w, ngroups, group_len).zip(sc.sums.iter()) {
            let mean_abs = sum / g.len().max(1) as f64;
            sc.thresholds.push((0.7 * mean_abs) as f32);
        }
        kernels::group_abs_sums(
            w,
            group_len,
            Some(&sc.thresholds),
            &mut sc.sums,
            &mut sc.counts,
        );
        let mut zeros = 0;
        for (((g, o), &delta), (&sum, &n)) in group_chunks(w, ngroups, group_len)
            .zip(out.chunks_mut(group_len.max(1)))
            .zip(sc.thresholds.iter())
            .zip(sc.sums.iter().zip(sc.counts.iter()))
        {
            let alpha = (sum / n.max(1) as f64) as f32;
            let alpha = if alpha.is_normal() {
                alpha
            } else {
                ZERO_TENSOR_SCALE
            };
            zeros += kernels::ternary_fake_quant(g, delta, alpha, o);
        }
        (zeros, 0)
    }

    fn forward_binary(
        &mut self,
        w: &[f32],
        rows: usize,
        cols: usize,
        out: &mut [f32],
    ) -> (usize, usize) {
        let (ngroups, group_len) = if rows > 0 { (rows, cols) } else { (1, w.len()) };
        let sc = &mut self.scratch;
        sc.sums.resize(ngroups, 0.0);
        sc.counts.resize(ngroups, 0);
        kernels::group_abs_sums(w, group_len, None, &mut sc.sums, &mut sc.counts);
        // The tensor mean is only a fallback for all-zero rows: computed only if one occurs.
        let mut fallback = None;
        for ((g, o), &sum) in group_chunks(w, ngroups, group_len)
            .zip(out.chunks_mut(group_len.max(1)))
            .zip(sc.sums.iter())
        {
            let alpha = (sum / g.len().max(1) as f64) as f32;
            let alpha = if alpha.is_normal() {
                alpha
            } else {
                *fallback.get_or_insert_with(|| {
                    let t = (w.iter().map(|x| x.abs() as f64).sum::<f64>() / w.len().max(1) as f64)
                        as f32;
                    if t.is_normal() {
                        t
                    } else {
                        ZERO_TENSOR_SCALE
                    }
                })
            };
            kernels::binary_fake_quant(g, alpha, o);
        }
        (0, 0)
    }

    fn forward_lsq(
        &mut self,
        w: &[f32],
        rows: usize,
        cols: usize,
        out: &mut [f32],
    ) -> (usize, usize) {
        let qp = self.lsq_qp();
        let (ngroups, group_len) = self.groups(rows, cols, w.len());
        if self.step.len() != ngroups {
            let steps = self.initial_steps(w, rows, cols);
            self.scratch.scales = steps;
        } else {
            self.scratch.scales.clear();
            self.scratch
                .scales
                .extend(self.step.iter().map(|&s| lsq::effective_step(s)));
        }
        let hi = qp as f32;
        let (mut zeros, mut clipped) = (0, 0);
        for ((g, o), &s) in group_chunks(w, ngroups, group_len)
            .zip(out.chunks_mut(group_len.max(1)))
            .zip(self.scratch.scales.iter())
        {
            let (z, c) = kernels::weight_fake_quant(g, s, -hi, hi, o);
            zeros += z;
            clipped += c;
        }
        (zeros, clipped)
    }

    /// The reference path (fixed step, and odd shapes): builds the [`WeightCodes`] and stores the STE mask.
    fn forward_generic(&mut self, w: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
        self.fast_len = None;
        let q = self.quantize(w, rows, cols);
        let zeros = q.codes.iter().filter(|&&c| c == 0).count();
        self.zero_fraction = if w.is_empty() {
            0.0
        } else {
            zeros as f32 / w.len() as f32
        };
        for (i, (o, &c)) in out.iter_mut().zip(&q.codes).enumerate() {
            let s = q.scale_of_row(i.checked_div(cols).unwrap_or(0));
            *o = qparams::dequantize(
                c as i32,
                QParams {
                    scale: s,
                    zero_point: 0,
                },
            );
        }
        self.clipped_fraction = if w.is_empty() {
            0.0
        } else {
            q.clipped as f32 / w.len() as f32
        };
        self.last_bits = q.bits;
        self.inside = q.inside;
    }

    /// Given `grad_wq` = dL/dw_q, adds dL/dw (straight-through estimator) into `grad_w`: the gradient passes
    /// where the weight was inside the clipping range in the last forward and is zero where it was clipped.
    /// Min-max ranges cover every weight, and ternary / binary pass every gradient (plain STE as in TWN).
    ///
    /// LSQ also sets the step gradient (overwriting): `dL/ds = g * sum_i dL/dw_q[i] * dw_q[i]/ds` over each
    /// step's group, with `dw_q/ds` and `g = 1/sqrt(N Qp)` from Esser et al. 2020, eq. 3 (see [`lsq`]); N is
    /// the group size (the tensor, or one output row per channel).
    pub fn backward(&mut self, w: &[f32], grad_wq: &[f32], grad_w: &mut [f32]) {
        if self.bypassed {
            // The forward was the identity: every gradient passes and the steps did not take part.
            kernels::add_masked(grad_w, grad_wq, None);
            self.grad_step.fill(0.0);
            return;
        }
        if self.fast_len == Some(w.len()) && grad_wq.len() == w.len() && grad_w.len() == w.len() {
            if self.kind == WeightQuantKind::Lsq && !self.step.is_empty() {
                return self.backward_lsq(w, grad_wq, grad_w);
            }
            // Every other fast kind passes every gradient.
            kernels::add_masked(grad_w, grad_wq, None);
            return;
        }
        if self.inside.len() != w.len() {
            // No matching forward: recompute the mask (rows do not matter for clipping).
            let rows = self.step.len().max(1);
            self.inside = self.quantize(w, rows, w.len() / rows).inside;
        }
        for ((g, &gq), &inside) in grad_w.iter_mut().zip(grad_wq).zip(&self.inside) {
            if inside {
                *g += gq;
            }
        }
        if self.kind == WeightQuantKind::Lsq && !self.step.is_empty() {
            let qp = self.lsq_qp();
            let group_len = w.len().div_ceil(self.step.len()).max(1);
            self.grad_step.resize(self.step.len(), 0.0);
            for (((s, gs), wg), gg) in self
                .step
                .iter()
                .zip(self.grad_step.iter_mut())
                .zip(w.chunks(group_len))
                .zip(grad_wq.chunks(group_len))
            {
                let s = lsq::effective_step(*s);
                let sum: f64 = wg
                    .iter()
                    .zip(gg)
                    .map(|(&x, &g)| f64::from(g) * f64::from(lsq::step_derivative(x, s, qp, qp)))
                    .sum();
                *gs = (sum * f64::from(lsq::grad_scale(wg.len(), qp))) as f32;
            }
        }
    }

    /// LSQ backward after a fast forward: the mask and `dw_q/ds` come from one division per weight (the same
    /// `w / s` the forward saw), and each group's step gradient is the same sequential f64 sum as before.
    fn backward_lsq(&mut self, w: &[f32], grad_wq: &[f32], grad_w: &mut [f32]) {
        let qp = self.lsq_qp();
        let group_len = w.len().div_ceil(self.step.len()).max(1);
        let sc = &mut self.scratch;
        sc.derivative.resize(w.len(), 0.0);
        for (((s, wg), gq), (gw, d)) in self
            .step
            .iter()
            .zip(w.chunks(group_len))
            .zip(grad_wq.chunks(group_len))
            .zip(
                grad_w
                    .chunks_mut(group_len)
                    .zip(sc.derivative.chunks_mut(group_len)),
            )
        {
            kernels::lsq_weight_backward(wg, lsq::effective_step(*s), qp, gq, gw, d);
        }
        let ngroups = w.chunks(group_len).len().min(self.step.len());
        sc.sums.resize(ngroups, 0.0);
        kernels::group_dots(grad_wq, &sc.derivative, group_len, &mut sc.sums);
        self.grad_step.resize(self.step.len(), 0.0);
        for ((gs, &sum), wg) in self
            .grad_step
            .iter_mut()
            .zip(sc.sums.iter())
            .zip(w.chunks(group_len))
        {
            *gs = (sum * f64::from(lsq::grad_scale(wg.len(), qp))) as f32;
        }
    }

    fn groups(&self, rows: usize, cols: usize, len: usize) -> (usize, usize) {
        if self.per_channel && rows > 0 {
            (rows, cols)
        } else {
            (1, len)
        }
    }

    fn quantize_min_max(&self, w: &[f32], rows: usize, cols: usize) -> WeightCodes {
        let qmax = (1i32 << (self.config_bits - 1)) - 1;
        let (ngroups, group_len) = self.groups(rows, cols, w.len());
        let tensor_scale = max_abs(w) / qmax as f32;
        let fallback = if tensor_scale.is_normal() {
            tensor_scale
        } else {
            ZERO_TENSOR_SCALE
        };
        let clip = (self.clip.len() == ngroups).then_some(self.clip.as_slice());
        let mut scales = Vec::with_capacity(ngroups);
        let mut codes = Vec::with_capacity(w.len());
        let mut inside = Vec::with_capacity(w.len());
        for (i, g) in group_chunks(w, ngroups, group_len).enumerate() {
            let s = match clip {
                Some(c) => max_abs(g) * c[i] / qmax as f32,
                None => max_abs(g) / qmax as f32,
            };
            let s = if s.is_normal() { s } else { fallback };
            let qp = QParams {
                scale: s,
                zero_point: 0,
            };
            for &x in g {
                let wide = qparams::quantize(x, qp, -(1 << 30), 1 << 30);
                inside.push(wide.abs() <= qmax);
                codes.push(wide.clamp(-qmax, qmax) as i8);
            }
            scales.push(s);
        }
        let clipped = inside.iter().filter(|&&i| !i).count();
        WeightCodes {
            codes,
            scales,
            bits: self.config_bits,
            inside,
            clipped,
        }
    }

    fn quantize_ternary(&self, w: &[f32], rows: usize, cols: usize) -> WeightCodes {
        let (ngroups, group_len) = self.groups(rows, cols, w.len());
        let mut scales = Vec::with_capacity(ngroups);
        let mut codes = Vec::with_capacity(w.len());
        for g in group_chunks(w, ngroups, group_len) {
            let mean_abs = g.iter().map(|x| x.abs() as f64).sum::<f64>() / g.len().max(1) as f64;
            let delta = (0.7 * mean_abs) as f32;
            let (mut sum, mut n) = (0f64, 0usize);
            for &x in g {
                if x.abs() > delta {
                    sum += x.abs() as f64;
                    n += 1;
                }
            }
            let alpha = (sum / n.max(1) as f64) as f32;
            let alpha = if alpha.is_normal() {
                alpha
            } else {
                ZERO_TENSOR_SCALE
            };
            codes.extend(g.iter().map(|&x| {
                if x > delta {
                    1i8
                } else if x < -delta {
                    -1
                } else {
                    0
                }
            }));
            scales.push(alpha);
        }
        WeightCodes {
            codes,
            scales,
            bits: 2,
            inside: vec![true; w.len()],
            clipped: 0,
        }
    }
}

/// `floor(x / s)` as an integer (saturating far outside the i32 range, 0 for NaN): the lower of the two grid
/// points AdaRound chooses between. The division is the one [`qparams::quantize`] rounds, so rounding up or
/// down lands within one step of the nearest code.
pub fn floor_code(x: f32, s: f32) -> i32 {
    let r = (x / s).floor();
    if r.is_nan() {
        0
    } else {
        r.clamp(-1_073_741_824.0, 1_073_741_824.0) as i32
    }
}

fn max_abs(w: &[f32]) -> f32 {
    w.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// Splits `w` into `ngroups` groups of `group_len` (the last may be short; an empty `w` gives no groups).
fn group_chunks(w: &[f32], ngroups: usize, group_len: usize) -> impl Iterator<Item = &[f32]> {
    w.chunks(group_len.max(1)).take(ngroups.max(1))
}

fn quantize_fixed_step(w: &[f32], k: f32) -> WeightCodes {
    let qp = QParams {
        scale: 1.0 / k,
        zero_point: 0,
    };
    let mut wide = Vec::with_capacity(w.len());
    let mut max_code = 0i32;
    let mut has_zero = false;
    for &x in w {
        let c = qparams::quantize(x, qp, -(1 << 30), 1 << 30);
        max_code = max_code.max(c.abs());
        has_zero |= c == 0;
        wide.push(c);
    }
    let bits = if max_code == 1 && !has_zero {
        1
    } else {
        (2..=8u32).find(|&b| max_code < (1 << (b - 1))).unwrap_or(8)
    };
    let inside: Vec<bool> = wide.iter().map(|c| c.abs() <= 127).collect();
    let clipped = inside.iter().filter(|&&i| !i).count();
    let codes = wide.iter().map(|&c| c.clamp(-127, 127) as i8).collect();
    WeightCodes {
        codes,
        scales: vec![qp.scale],
        bits,
        inside,
        clipped,
    }
}

fn quantize_binary(w: &[f32], rows: usize, cols: usize) -> WeightCodes {
    let tensor_alpha =
        (w.iter().map(|x| x.abs() as f64).sum::<f64>() / w.len().max(1) as f64) as f32;
    let fallback = if tensor_alpha.is_normal() {
        tensor_alpha
    } else {
        ZERO_TENSOR_SCALE
    };
    let (ngroups, group_len) = if rows > 0 { (rows, cols) } else { (1, w.len()) };
    let mut scales = Vec::with_capacity(ngroups);
    let mut codes = Vec::with_capacity(w.len());
    for g in group_chunks(w, ngroups, group_len) {
        let alpha = (g.iter().map(|x| x.abs() as f64).sum::<f64>() / g.len().max(1) as f64) as f32;
        scales.push(if alpha.is_normal() { alpha } else { fallback });
        codes.extend(g.iter().map(|&x| qparams::quantize_binary(x) as i8));
    }
    WeightCodes {
        codes,
        scales,
        bits: 1,
        inside: vec![true; w.len()],
        clipped: 0,
    }
}

impl Stateful for WeightQuantizer {
    /// The LSQ steps (`step`, empty until initialized) and the quantization-delay flag (`bypassed`). The other
    /// kinds derive everything from the weights at each forward.
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        v.value("step", StateValue::F32Vec(&mut self.step))?;
        v.value("bypassed", StateValue::Flag(&mut self.bypassed))?;
        if self.grad_step.len() != self.step.len() {
            self.grad_step = vec![0.0; self.step.len()];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Weights with a spread of magnitudes, exact ties of the grid, zeros, an all-zero row and a -0.0.
    fn weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut w: Vec<f32> = (0..rows * cols)
            .map(|_| rng.uniform_range(-0.3, 0.3) * 10f32.powi(rng.uniform_range(-3.0, 1.0) as i32))
            .collect();
        w[1] = 0.0;
        w[2] = -0.0;
        if rows > 2 {
            w[2 * cols..3 * cols].fill(0.0);
        }
        w
    }

    fn kinds() -> Vec<(WeightQuantKind, u32, bool)> {
        let mut v = Vec::new();
        for pc in [false, true] {
            for bits in [2, 4, 8] {
                v.push((WeightQuantKind::MinMax, bits, pc));
                v.push((WeightQuantKind::Lsq, bits, pc));
            }
            v.push((WeightQuantKind::Ternary, 2, pc));
            v.push((WeightQuantKind::Binary, 1, pc));
        }
        v.push((WeightQuantKind::FixedStep { k: 4.0 }, 8, false));
        v
    }

    #[test]
    fn fast_forward_writes_exactly_the_dequantized_codes() {
        for (rows, cols) in [(7, 13), (64, 784), (10, 64), (1, 5)] {
            let w = weights(rows, cols, 11 + rows as u64);
            for (kind, bits, pc) in kinds() {
                let mut q = WeightQuantizer::new(kind, bits, pc).unwrap();
                let mut out = vec![f32::NAN; w.len()];
                q.forward(&w, rows, cols, &mut out);
                let codes = q.quantize(&w, rows, cols);
                let want = codes.dequantize(cols);
                for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{kind:?} bits={bits} pc={pc} {rows}x{cols} index {i}: got {a:e}, want {b:e}"
                    );
                }
                let zeros = codes.codes.iter().filter(|&&c| c == 0).count();
                assert_eq!(q.zero_fraction(), zeros as f32 / w.len() as f32, "{kind:?}");
                assert_eq!(
                    q.clipped_fraction(),
                    codes.clipped as f32 / w.len() as f32,
                    "{kind:?}"
                );
                assert_eq!(q.bits(), codes.bits);
            }
        }
    }

    #[test]
    fn fast_backward_matches_the_mask_and_step_gradient_of_the_reference_path() {
        for (rows, cols) in [(7, 13), (64, 784), (10, 64)] {
            let w = weights(rows, cols, 5 + cols as u64);
            let mut rng = Rng::new(99);
            let gq: Vec<f32> = (0..w.len()).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
            for (kind, bits, pc) in kinds() {
                let mut fast = WeightQuantizer::new(kind, bits, pc).unwrap();
                let mut out = vec![0.0; w.len()];
                fast.forward(&w, rows, cols, &mut out);
                // Shrink LSQ steps so that some weights clip.
                if kind == WeightQuantKind::Lsq {
                    let s: Vec<f32> = fast.steps().iter().map(|s| s * 0.3).collect();
                    fast.set_steps(s).unwrap();
                    fast.forward(&w, rows, cols, &mut out);
                }
                // The reference: the same quantizer state with the mask recomputed from `quantize`.
                let mut slow = fast.clone();
                slow.fast_len = None;
                slow.inside = slow.quantize(&w, rows, cols).inside;
                let mut g_fast = vec![0.0; w.len()];
                let mut g_slow = vec![0.0; w.len()];
                fast.backward(&w, &gq, &mut g_fast);
                slow.backward(&w, &gq, &mut g_slow);
                for (i, (a, b)) in g_fast.iter().zip(&g_slow).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{kind:?} pc={pc} index {i}");
                }
                let (sf, ss) = (fast.grad_step.clone(), slow.grad_step.clone());
                assert_eq!(sf.len(), ss.len());
                for (a, b) in sf.iter().zip(&ss) {
                    assert_eq!(a.to_bits(), b.to_bits(), "{kind:?} pc={pc} step grad");
                }
            }
        }
    }
}
