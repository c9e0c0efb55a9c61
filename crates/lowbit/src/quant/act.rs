//! Activation quantizer: unsigned asymmetric codes with a tracked range, fake-quantized with
//! [`qparams::fake_quantize`] exactly.
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use lowbit_runtime::qparams::{self, QParams};

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
        match self.fixed {
            Some(qp) => {
                let qmax = (1i32 << self.bits) - 1;
                Some((qparams::dequantize(0, qp), qparams::dequantize(qmax, qp)))
            }
            None => self.range,
        }
    }

    /// Sets the range directly (e.g. restored from a checkpoint), then freezes it.
    pub fn set_range(&mut self, lo: f32, hi: f32) -> Result<()> {
        act_qparams(lo, hi, self.bits)?;
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
        let batch = batch_range(&x.data);
        if self.calibrating {
            if let Some((blo, bhi)) = batch {
                self.range = Some(match self.range {
                    Some((lo, hi)) => (lo.min(blo), hi.max(bhi)),
                    None => (blo, bhi),
                });
            }
            self.inside = vec![true; x.len()];
            self.clipped_fraction = 0.0;
            return x.clone();
        }
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
        let lo = qparams::dequantize(0, qp);
        let hi = qparams::dequantize(qmax, qp);
        let mut data = Vec::with_capacity(x.len());
        let mut inside = Vec::with_capacity(x.len());
        for &v in &x.data {
            data.push(qparams::fake_quantize(v, qp, 0, qmax));
            inside.push(v >= lo && v <= hi);
        }
        let clipped = inside.iter().filter(|&&i| !i).count();
        self.clipped_fraction = if x.is_empty() {
            0.0
        } else {
            clipped as f32 / x.len() as f32
        };
        self.inside = inside;
        Tensor::new(data, x.shape.clone())
    }

    /// Straight-through gradient: passes where the last forward's input lay inside the representable range
    /// `[dequantize(0), dequantize(2^bits - 1)]`, zero where it was clipped. Without a matching forward the
    /// gradient passes unchanged.
    pub fn backward(&mut self, grad_out: &Tensor) -> Tensor {
        if self.inside.len() != grad_out.len() {
            return grad_out.clone();
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

/// Min and max of the finite elements; `None` if there are none.
fn batch_range(x: &[f32]) -> Option<(f32, f32)> {
    let mut it = x.iter().copied().filter(|v| v.is_finite());
    let first = it.next()?;
    Some(it.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v))))
}
