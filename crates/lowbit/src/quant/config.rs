//! The quantizer spec chosen by the user (`--weight-bits`, `--act-bits`, `--quant-step`, ...).
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How a quantized model is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// Quantization-aware training: fake-quantized forward, straight-through gradients to float shadow weights.
    Qat,
    /// Post-training quantization: round trained float weights, calibrate activation ranges.
    Ptq,
}

/// Which rule turns float weights into codes (derived from [`QuantConfig`] by [`QuantConfig::weight_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum WeightQuantKind {
    /// Symmetric min-max: `scale = max|w| / qmax`, codes `quantize(w)` (bits 3..=8).
    MinMax,
    /// Fixed step `w_q = round(w * k) / k`: scale `1/k`; the stored bit width is the smallest holding the codes.
    FixedStep {
        /// Steps per unit (`--quant-step`).
        k: f32,
    },
    /// Ternary weight networks (Li et al. 2016): codes {-1, 0, +1} times a per-row or per-tensor alpha.
    Ternary,
    /// Binary sign weights with a per-output-channel alpha = mean |w| (Rastegari et al. 2016, XNOR-Net eq. 4).
    Binary,
}

/// Quantization spec of a model. `weight_bits` 2 means ternary and 1 binary; a `quant_step` overrides the bit
/// width (the bit width is then derived from the codes that occur).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantConfig {
    /// Weight bit width, 1..=8 (`--weight-bits`).
    pub weight_bits: u32,
    /// Activation bit width, 1..=8 (`--act-bits`).
    pub act_bits: u32,
    /// One weight scale per output channel instead of one per tensor.
    pub per_channel: bool,
    /// QAT or PTQ.
    pub method: Method,
    /// Fixed weight step `k` (`--quant-step`): `w_q = round(w * k) / k`.
    pub quant_step: Option<f32>,
    /// EMA momentum of the activation range trackers in QAT: `r <- m * r + (1 - m) * batch`.
    pub ema_momentum: f32,
    /// Training samples used to calibrate activation ranges in PTQ.
    pub calibration_samples: usize,
    /// Keep the first and the last Dense layer at 8-bit min-max weights (off for the MLP reference).
    pub keep_first_last_8bit: bool,
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self {
            weight_bits: 8,
            act_bits: 8,
            per_channel: true,
            method: Method::Qat,
            quant_step: None,
            ema_momentum: 0.99,
            calibration_samples: 2000,
            keep_first_last_8bit: false,
        }
    }
}

impl QuantConfig {
    /// Checks every field, naming the command-line option at fault.
    pub fn validate(&self) -> Result<()> {
        if !(1..=8).contains(&self.weight_bits) {
            return Err(Error::option(
                "--weight-bits",
                format!("must be 1..=8, got {}", self.weight_bits),
            ));
        }
        if !(1..=8).contains(&self.act_bits) {
            return Err(Error::option(
                "--act-bits",
                format!("must be 1..=8, got {}", self.act_bits),
            ));
        }
        if let Some(k) = self.quant_step {
            if !k.is_finite() || k <= 0.0 {
                return Err(Error::option(
                    "--quant-step",
                    format!("must be finite and > 0, got {k}"),
                ));
            }
            // 1/k must be a normal f32 to be a valid scale.
            if !(1.0 / k).is_normal() {
                return Err(Error::option(
                    "--quant-step",
                    format!("1/{k} is not a usable scale"),
                ));
            }
        }
        if !self.ema_momentum.is_finite() || !(0.0..1.0).contains(&self.ema_momentum) {
            return Err(Error::option(
                "--ema-momentum",
                format!("must be in [0, 1), got {}", self.ema_momentum),
            ));
        }
        if self.calibration_samples == 0 {
            return Err(Error::option("--calibration-samples", "must be > 0"));
        }
        Ok(())
    }

    /// The weight rule this spec selects: fixed step if `quant_step` is set, else binary (1 bit), ternary
    /// (2 bits) or symmetric min-max.
    pub fn weight_kind(&self) -> WeightQuantKind {
        match (self.quant_step, self.weight_bits) {
            (Some(k), _) => WeightQuantKind::FixedStep { k },
            (None, 1) => WeightQuantKind::Binary,
            (None, 2) => WeightQuantKind::Ternary,
            (None, _) => WeightQuantKind::MinMax,
        }
    }
}
