//! Activation quantizer: unsigned asymmetric codes with a tracked range, fake-quantized with
//! [`qparams::fake_quantize`] exactly.
use super::calibrate::Calibrator;
use super::config::{ActMethod, LsqInit, QuantConfig};
use super::{kernels, lsq, pact};
use crate::error::{Error, Result};
use crate::nn::Param;
use crate::state::{StateValue, StateVisitor, Stateful};
use crate::tensor::Tensor;
use lowbit_runtime::preprocess::Normalization;
use lowbit_runtime::qparams::{self, QParams};
use rayon::prelude::*;

/// Scale of the network input: pixels are `u8` codes `p` meaning `p / 255`.
pub const INPUT_SCALE: f32 = 1.0 / 255.0;

/// Quantization parameters of an unsigned `bits`-bit activation covering `[lo, hi]`.
///
/// The range is first widened to contain 0 (so real zero, e.g. ReLU's output and zero padding, is exact), then
/// `scale = (hi - lo) / (2^bits - 1)` and `zero_point = round(-lo / scale)` clamped to the code range. An empty
/// range (all zeros) becomes `[0, 1]`; a non-finite range is an error.
pub fn act_qparams(lo: f32, hi: f32, bits: u32) -> Result<QParams> {
    let (_, qmax) = qparams::act_code_range(bits)?;
    if !lo.is_finite() || !hi.is_finite() || lo > hi {
        return Err(Error::Quant(lowbit_runtime::QuantError::InvalidQParams {
            tensor: "activation".into(),
            reason: format!("range [{lo}, {hi}] is not a finite interval"),
        }));
    }
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let mut scale = (hi - lo) / qmax as f32;
    if !scale.is_normal() {
        scale = 1.0 / qmax as f32;
    }
    let zero_point = ((-lo / scale).round() as i32).clamp(0, qmax);
    Ok(QParams::new(scale, zero_point)?)
}

/// Fake-quantizer of activations, used as a layer (`nn::Layer::ActQuant`).
///
/// Range tracking: in train mode an EMA of the batch min/max (`r <- m r + (1 - m) batch`, the first batch
/// initializes); in calibration mode the running min/max over all batches seen (the output is then the input,
/// unquantized: observers only watch); in eval mode (or once frozen) the range is fixed. The input quantizer
/// ([`ActQuantizer::input`]) has fixed parameters `1/255, 0` and never updates.
///
/// Learned methods ([`ActMethod::Lsq`], [`ActMethod::Pact`]) replace the tracked range by one learned scalar
/// (the LSQ step `s`, or PACT's clipping level `alpha`) exposed through [`ActQuantizer::params_mut`]; their
/// codes are `[0, 2^b - 1]` with zero point 0 and scale `s` (LSQ) or `alpha / (2^b - 1)` (PACT). On a value
/// that can be negative ([`ActQuantizer::set_signed`], e.g. a residual branch before its `Add`) LSQ codes are
/// centred instead: zero point `2^(b-1)`, so the range is `[-2^(b-1) s, (2^(b-1) - 1) s]`. The scalar is
/// initialized by the first training forward: LSQ `2 mean|x| / sqrt(Qp)` with `Qp` the largest positive code
/// (Esser et al. 2020), PACT the configured alpha or else the batch maximum.
#[derive(Debug, Clone)]
pub struct ActQuantizer {
    bits: u32,
    momentum: f32,
    range: Option<(f32, f32)>,
    fixed: Option<QParams>,
    calibrating: bool,
    frozen: bool,
    inside: Vec<bool>,
    clipped_fraction: f32,
    method: ActMethod,
    /// LSQ step or PACT alpha (always one element, so the optimizer's parameter list never changes).
    learned: Vec<f32>,
    /// dL/d`learned` of the last backward pass.
    grad_learned: Vec<f32>,
    initialized: bool,
    pact_alpha_init: Option<f32>,
    pact_l2: f32,
    /// Input of the last training forward (learned methods need it for the scalar's gradient).
    last_input: Vec<f32>,
    /// Features per sample of the last training forward (LSQ's gradient scale N).
    features: usize,
    /// Quantization delay: forward is the identity, backward passes every gradient, nothing is tracked.
    bypassed: bool,
    /// How PTQ chooses this range from the calibration samples (`None` outside PTQ).
    calibrator: Option<Calibrator>,
    /// The value read can be negative: LSQ codes are centred on zero point `2^(b-1)`.
    signed: bool,
    /// How an LSQ step starts.
    lsq_init: LsqInit,
}

impl Default for ActQuantizer {
    /// 8 bits, EMA momentum 0.99, no range yet.
    fn default() -> Self {
        Self {
            bits: 8,
            momentum: 0.99,
            range: None,
            fixed: None,
            calibrating: false,
            frozen: false,
            inside: Vec::new(),
            clipped_fraction: 0.0,
            method: ActMethod::Ste,
            learned: vec![1.0],
            grad_learned: vec![0.0],
            initialized: false,
            pact_alpha_init: None,
            pact_l2: 0.0,
            last_input: Vec::new(),
            features: 0,
            bypassed: false,
            calibrator: None,
            signed: false,
            lsq_init: LsqInit::Lsq,
        }
    }
}

impl ActQuantizer {
    /// A learned-range quantizer of `bits` bits (1..=8) with EMA `momentum` in `[0, 1)`.
    pub fn new(bits: u32, momentum: f32) -> Result<Self> {
        if !(1..=8).contains(&bits) {
            return Err(Error::option(
                "--act-bits",
                format!("must be 1..=8, got {bits}"),
            ));
        }
        if !momentum.is_finite() || !(0.0..1.0).contains(&momentum) {
            return Err(Error::option(
                "--ema-momentum",
                format!("must be in [0, 1), got {momentum}"),
            ));
        }
        Ok(Self {
            bits,
            momentum,
            ..Self::default()
        })
    }

    /// The hidden-activation quantizer `cfg` asks for (`cfg.act_quantizer`), with `bits` bits (the caller
    /// resolves per-layer widths).
    pub fn from_config(cfg: &QuantConfig, bits: u32) -> Result<Self> {
        let mut q = Self::new(bits, cfg.ema_momentum)?;
        q.method = cfg.act_quantizer;
        q.pact_alpha_init = cfg.pact_alpha_init;
        q.pact_l2 = cfg.pact_l2;
        q.lsq_init = cfg.lsq_init;
        if let Some(a) = cfg.pact_alpha_init.filter(|_| q.method == ActMethod::Pact) {
            q.learned[0] = a;
        }
        Ok(q)
    }

    /// Bypasses (or restores) quantization, for a QAT quantization delay: while bypassed, the forward returns
    /// its input unchanged (no EMA update, no initialization of a learned scalar) and the backward passes every
    /// gradient, giving the learned scalar a zero gradient (so an optimizer leaves it as it is).
    pub fn set_bypassed(&mut self, bypassed: bool) {
        self.bypassed = bypassed;
    }

    /// Whether quantization is bypassed ([`set_bypassed`](Self::set_bypassed)).
    pub fn is_bypassed(&self) -> bool {
        self.bypassed
    }

    /// Forgets what was observed or learned, so the next training forward initializes the quantizer from its
    /// batch, as the first one after construction does: the end of a quantization delay. A learned scalar
    /// returns to its configured start (PACT's `--pact-alpha`, else set from the batch); an EMA range is
    /// cleared unless frozen (a frozen range, e.g. from calibration, is kept: nothing would re-observe it).
    /// The fixed input quantizer has nothing to forget.
    pub fn reset(&mut self) {
        if self.fixed.is_some() {
            return;
        }
        if !self.frozen {
            self.range = None;
        }
        self.initialized = false;
        self.learned[0] = match self.pact_alpha_init {
            Some(a) if self.method == ActMethod::Pact => a,
            _ => 1.0,
        };
        self.grad_learned[0] = 0.0;
        self.inside.clear();
        self.last_input.clear();
        self.features = 0;
        self.clipped_fraction = 0.0;
    }

    /// Sets how PTQ chooses this quantizer's range (see [`super::ptq()`]); `None` outside PTQ.
    pub fn set_calibrator(&mut self, c: Option<Calibrator>) {
        self.calibrator = c;
    }

    /// How PTQ chooses (or chose) this quantizer's range, if it is calibrated by PTQ.
    pub fn calibrator(&self) -> Option<Calibrator> {
        self.calibrator
    }

    /// Which quantizer this is.
    pub fn method(&self) -> ActMethod {
        self.method
    }

    /// The learned scalar (LSQ step or PACT alpha) with its gradient, for the optimizer; empty for the EMA
    /// quantizer and the input quantizer.
    pub fn params_mut(&mut self) -> Vec<Param<'_>> {
        if self.method == ActMethod::Ste || self.fixed.is_some() {
            return Vec::new();
        }
        let name = if self.method == ActMethod::Lsq {
            "act_step"
        } else {
            "pact_alpha"
        };
        vec![Param {
            name,
            value: &mut self.learned,
            grad: &mut self.grad_learned,
        }]
    }

    /// The learned scalar (LSQ step or PACT alpha), if this is a learned quantizer that has been initialized.
    pub fn learned_value(&self) -> Option<f32> {
        (self.method != ActMethod::Ste && self.initialized).then_some(self.learned[0])
    }

    fn qmax(&self) -> i32 {
        (1i32 << self.bits) - 1
    }

    /// Zero point of a learned quantizer's codes: `2^(b-1)` when signed, else 0.
    fn learned_zero_point(&self) -> i32 {
        if self.signed {
            1 << (self.bits - 1)
        } else {
            0
        }
    }

    /// Marks the value this quantizer reads as one that can be negative (no ReLU before it), or not.
    /// [`super::prepare_qat`] sets it from the graph. It changes only learned quantizers: LSQ centres its codes
    /// (see the type's doc); PACT, whose clipping level has no signed form here, and 1-bit LSQ (whose centred
    /// codes would be `{-s, 0}`) become the EMA min/max quantizer, whose zero point follows the range.
    pub fn set_signed(&mut self, signed: bool) {
        self.signed = signed;
        if signed
            && (self.method == ActMethod::Pact || (self.method == ActMethod::Lsq && self.bits == 1))
        {
            self.method = ActMethod::Ste;
        }
    }

    /// Whether the value read can be negative ([`ActQuantizer::set_signed`]).
    pub fn is_signed(&self) -> bool {
        self.signed
    }

    /// Scale of a learned quantizer whose scalar is `v`.
    fn learned_scale(&self, v: f32) -> f32 {
        match self.method {
            ActMethod::Pact => pact::scale(v, self.bits),
            _ => lsq::effective_step(v),
        }
    }

    /// The scalar a learned quantizer starts from on batch `x`.
    fn initial_value(&self, x: &[f32]) -> f32 {
        let qmax = self.qmax();
        match self.method {
            ActMethod::Pact => self.pact_alpha_init.unwrap_or_else(|| {
                let m = batch_range(x).map_or(0.0, |(_, hi)| hi);
                if m.is_normal() && m > 0.0 {
                    m
                } else {
                    1.0
                }
            }),
            _ => {
                let qn = self.learned_zero_point();
                let qp = qmax - qn;
                match self.lsq_init {
                    LsqInit::Lsq => lsq::init_step(x, qp, 1.0 / qp as f32),
                    LsqInit::Mse => lsq::mse_step(x, qn, qp, 1.0 / qp as f32),
                }
            }
        }
    }

    /// The network-input quantizer: 8 bits, scale exactly `1/255` (f32), zero point 0, never updated. It maps
    /// `x = p / 255` to `qparams::dequantize(p)`, the value the integer engine implies for pixel `p`.
    pub fn input() -> Self {
        Self {
            bits: 8,
            fixed: Some(QParams {
                scale: INPUT_SCALE,
                zero_point: 0,
            }),
            frozen: true,
            ..Self::default()
        }
    }

    /// The input quantizer of a model whose inputs are normalised: 8 bits, fixed parameters covering every value
    /// `n` can give a pixel of `channels` channels ([`act_qparams`] of [`Normalization::range`]), never updated.
    /// The engine's input codes are `quantize` of the same values with the same parameters
    /// ([`Normalization::codes`]), so the simulation reads what the engine reads.
    pub fn normalized_input(n: &Normalization, channels: usize) -> Result<Self> {
        n.check_channels(channels)?;
        let (lo, hi) = n.range(channels);
        Ok(Self {
            bits: 8,
            fixed: Some(act_qparams(lo, hi, 8)?),
            frozen: true,
            ..Self::default()
        })
    }

    /// Activation bit width.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// True for the fixed input quantizer.
    pub fn is_input(&self) -> bool {
        self.fixed.is_some()
    }

    /// Tracked range `[lo, hi]`, if any batch has been seen (for the input quantizer: `[0, 1]`).
    pub fn range(&self) -> Option<(f32, f32)> {
        if self.fixed.is_none() && self.method != ActMethod::Ste && !self.calibrating {
            let qp = self.try_qparams().ok()?;
            return Some((
                qparams::dequantize(0, qp),
                qparams::dequantize(self.qmax(), qp),
            ));
        }
        match self.fixed {
            Some(qp) => {
                let qmax = (1i32 << self.bits) - 1;
                Some((qparams::dequantize(0, qp), qparams::dequantize(qmax, qp)))
            }
            None => self.range,
        }
    }

    /// Sets the range directly (e.g. restored from a checkpoint), then freezes it. For learned quantizers `hi`
    /// sets the scalar (LSQ step `hi / (2^b - 1)`, or `(hi - lo) / (2^b - 1)` when signed; PACT alpha `hi`).
    pub fn set_range(&mut self, lo: f32, hi: f32) -> Result<()> {
        act_qparams(lo, hi, self.bits)?;
        if self.method != ActMethod::Ste && hi > 0.0 {
            let span = if self.signed { hi - lo.min(0.0) } else { hi };
            self.learned[0] = match self.method {
                ActMethod::Pact => hi,
                _ => span / self.qmax() as f32,
            };
            self.initialized = true;
        }
        self.range = Some((lo, hi));
        self.frozen = true;
        Ok(())
    }

    /// Starts calibration: later forwards accumulate the running min/max and do not quantize.
    pub fn start_calibration(&mut self) {
        if self.fixed.is_none() {
            self.calibrating = true;
            self.frozen = false;
        }
    }

    /// Ends calibration (or QAT) and freezes the range.
    pub fn freeze(&mut self) {
        self.calibrating = false;
        self.frozen = true;
    }

    /// Lets the range track an EMA again in train mode (QAT fine-tuning from a calibrated model).
    pub fn unfreeze(&mut self) {
        if self.fixed.is_none() {
            self.frozen = false;
        }
    }

    /// Whether the range is frozen.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Quantization parameters of the current range; `[0, 1]` if no batch has been seen yet (use
    /// [`try_qparams`](Self::try_qparams) to get an error instead).
    pub fn qparams(&self) -> QParams {
        self.try_qparams().unwrap_or(QParams {
            scale: 1.0 / ((1i32 << self.bits) - 1) as f32,
            zero_point: 0,
        })
    }

    /// Quantization parameters of the current range, or an error if none was observed.
    pub fn try_qparams(&self) -> Result<QParams> {
        if let Some(qp) = self.fixed {
            return Ok(qp);
        }
        if self.method != ActMethod::Ste {
            if !self.initialized {
                return Err(Error::Quant(lowbit_runtime::QuantError::InvalidQParams {
                    tensor: "activation".into(),
                    reason: "learned quantizer not initialized (train first)".into(),
                }));
            }
            return Ok(QParams::new(
                self.learned_scale(self.learned[0]),
                self.learned_zero_point(),
            )?);
        }
        match self.range {
            Some((lo, hi)) => act_qparams(lo, hi, self.bits),
            None => Err(Error::Quant(lowbit_runtime::QuantError::InvalidQParams {
                tensor: "activation".into(),
                reason: "no range observed (run calibration or training first)".into(),
            })),
        }
    }

    /// Fraction of elements clipped to the code range in the last quantizing forward.
    pub fn clipped_fraction(&self) -> f32 {
        self.clipped_fraction
    }

    /// Fake-quantizes `x` (each element `qparams::fake_quantize(x, qp, 0, 2^bits - 1)`); `train` updates the EMA
    /// range unless frozen. In eval mode before any range was observed, the batch's own range is used (and not
    /// stored).
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        if self.bypassed {
            self.inside.clear();
            self.clipped_fraction = 0.0;
            return x.clone();
        }
        if self.calibrating {
            if let Some((blo, bhi)) = batch_range(&x.data) {
                self.range = Some(match self.range {
                    Some((lo, hi)) => (lo.min(blo), hi.max(bhi)),
                    None => (blo, bhi),
                });
            }
            self.inside.clear();
            self.inside.resize(x.len(), true);
            self.clipped_fraction = 0.0;
            return x.clone();
        }
        if self.method != ActMethod::Ste && self.fixed.is_none() {
            return self.forward_learned(x, train);
        }
        // The batch range is only needed to update the EMA or when no range exists yet (never for the input).
        let batch = if self.fixed.is_none() && ((train && !self.frozen) || self.range.is_none()) {
            batch_range(&x.data)
        } else {
            None
        };
        if train && !self.frozen && self.fixed.is_none() {
            if let Some((blo, bhi)) = batch {
                let m = self.momentum;
                self.range = Some(match self.range {
                    Some((lo, hi)) => (m * lo + (1.0 - m) * blo, m * hi + (1.0 - m) * bhi),
                    None => (blo, bhi),
                });
            }
        }
        let qp = match (self.fixed, self.range, batch) {
            (Some(qp), _, _) => qp,
            (None, Some((lo, hi)), _) | (None, None, Some((lo, hi))) => {
                act_qparams(lo, hi, self.bits).unwrap_or_else(|_| self.qparams())
            }
            (None, None, None) => self.qparams(),
        };
        let qmax = (1i32 << self.bits) - 1;
        // Each element is `qparams::fake_quantize(v, qp, 0, qmax)`; the mask is `v` inside
        // `[dequantize(0), dequantize(qmax)]` (see `quant::kernels` for why the vector form is exact).
        let mut data = vec![0.0; x.len()];
        self.inside.resize(x.len(), false);
        let clipped = kernels::act_fake_quant_ste(
            &x.data,
            qp.scale,
            qp.zero_point,
            qmax,
            &mut data,
            &mut self.inside,
        );
        self.clipped_fraction = if x.is_empty() {
            0.0
        } else {
            clipped as f32 / x.len() as f32
        };
        Tensor::new(data, x.shape.clone())
    }

    /// LSQ / PACT forward: codes `qparams::quantize(x, QParams(scale, zp), 0, 2^b - 1)` (`zp` 0, or `2^(b-1)`
    /// for signed LSQ).
    fn forward_learned(&mut self, x: &Tensor, train: bool) -> Tensor {
        let value = if self.initialized {
            self.learned[0]
        } else {
            let v = self.initial_value(&x.data);
            if train {
                self.learned[0] = v;
                self.initialized = true;
            }
            v
        };
        let qmax = self.qmax();
        let scale = self.learned_scale(value);
        let zp = self.learned_zero_point();
        let qp = QParams {
            scale,
            zero_point: zp,
        };
        let alpha = pact::effective_alpha(value);
        // Elements: `qparams::fake_quantize(v, qp, 0, qmax)`. Mask: PACT `0 <= v < alpha`, LSQ
        // `-zp < v / scale < qmax - zp`. Clipped = above the range (unsigned values at or below 0 are ReLU's
        // zeros, not clipping; signed LSQ counts below too): PACT `v >= alpha`, LSQ `v / scale >= qmax - zp`.
        let mut data = vec![0.0; x.len()];
        self.inside.resize(x.len(), false);
        let clipped = match self.method {
            ActMethod::Pact => kernels::act_fake_quant_pact(
                &x.data,
                qp.scale,
                qmax,
                alpha,
                &mut data,
                &mut self.inside,
            ),
            _ => kernels::act_fake_quant_lsq(
                &x.data,
                qp.scale,
                zp,
                qmax - zp,
                &mut data,
                &mut self.inside,
            ),
        };
        self.clipped_fraction = if x.is_empty() {
            0.0
        } else {
            clipped as f32 / x.len() as f32
        };
        if train {
            self.last_input.clear();
            self.last_input.extend_from_slice(&x.data);
            self.features = x.row_len();
        }
        Tensor::new(data, x.shape.clone())
    }

    /// Straight-through gradient: passes where the last forward's input lay inside the representable range
    /// `[dequantize(0), dequantize(2^bits - 1)]`, zero where it was clipped. Without a matching forward the
    /// gradient passes unchanged.
    ///
    /// Learned quantizers also set the scalar's gradient (overwriting): LSQ `g * sum dL/dy * dy/ds` with
    /// `g = 1/sqrt(N Qp)`, N the features per sample (Esser et al. 2020, eq. 3); PACT the sum of `dL/dy`
    /// where `x >= alpha`, plus `l2 * alpha` (Choi et al. 2018).
    pub fn backward(&mut self, grad_out: &Tensor) -> Tensor {
        if self.bypassed {
            self.grad_learned[0] = 0.0;
            return grad_out.clone();
        }
        if self.inside.len() != grad_out.len() {
            return grad_out.clone();
        }
        if self.method != ActMethod::Ste
            && self.fixed.is_none()
            && self.last_input.len() == grad_out.len()
        {
            let v = self.learned[0];
            self.grad_learned[0] = match self.method {
                ActMethod::Pact => {
                    pact::alpha_gradient(&self.last_input, &grad_out.data, v, self.pact_l2)
                }
                _ => {
                    let s = lsq::effective_step(v);
                    let qn = self.learned_zero_point();
                    let qp = self.qmax() - qn;
                    let sum =
                        kernels::lsq_act_step_grad(&self.last_input, &grad_out.data, s, qn, qp);
                    (sum * f64::from(lsq::grad_scale(self.features, qp))) as f32
                }
            };
        }
        let data = grad_out
            .data
            .iter()
            .zip(&self.inside)
            .map(|(&g, &i)| if i { g } else { 0.0 })
            .collect();
        Tensor::new(data, grad_out.shape.clone())
    }
}

impl Stateful for ActQuantizer {
    /// The learned scalar (`learned`: LSQ step or PACT alpha) and whether it was initialized, the observed range
    /// (EMA or calibration min/max), and the frozen, calibrating and bypassed (quantization delay) flags.
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        v.value("learned", StateValue::F32(&mut self.learned))?;
        v.value("initialized", StateValue::Flag(&mut self.initialized))?;
        v.optional_pair("range", &mut self.range)?;
        v.value("frozen", StateValue::Flag(&mut self.frozen))?;
        v.value("calibrating", StateValue::Flag(&mut self.calibrating))?;
        v.value("bypassed", StateValue::Flag(&mut self.bypassed))
    }
}

/// Min and max of the finite elements; `None` if there are none.
fn batch_range(x: &[f32]) -> Option<(f32, f32)> {
    // Calibration scans every activation of every batch: split large tensors over the threads (min and max do
    // not depend on the split).
    const CHUNK: usize = 1 << 15;
    if x.len() <= CHUNK {
        return kernels::finite_range(x);
    }
    x.par_chunks(CHUNK).map(kernels::finite_range).reduce(
        || None,
        |a, b| match (a, b) {
            (Some((l1, h1)), Some((l2, h2))) => Some((l1.min(l2), h1.max(h2))),
            (a, None) => a,
            (None, b) => b,
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn batch_range_of_a_tensor_split_over_threads_is_the_whole_range() {
        let n = (1 << 15) * 3 + 17;
        let mut x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 10007) as f32 * 0.01 - 30.0)
            .collect();
        x[5] = f32::NAN;
        x[n - 1] = f32::INFINITY;
        x[(1 << 15) + 3] = -1e6;
        x[n - 2] = 1e6;
        assert_eq!(super::batch_range(&x), Some((-1e6, 1e6)));
        let none = vec![f32::NAN; n];
        assert_eq!(super::batch_range(&none), None);
    }
}
