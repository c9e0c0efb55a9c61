//! The quantizer spec chosen by the user (`--weight-bits`, `--act-bits`, `--quant-step`, ...).
use super::calibrate::{Calibrator, WeightCalibration};
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
    /// Learned step size (LSQ, Esser et al. 2020): symmetric codes in [`lowbit_runtime::qparams::weight_code_range`]
    /// (2 bits: {-1, 0, 1}), one learned step per tensor or per output channel (bits 2..=8).
    Lsq,
}

/// Which weight quantizer family QAT uses (`--weight-quantizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightMethod {
    /// Fixed rules with straight-through gradients: min-max, ternary (2 bits), binary (1 bit), fixed step.
    #[default]
    Ste,
    /// Learned step size (LSQ): the step of each tensor / channel is trained with the weights.
    Lsq,
}

/// Which activation quantizer QAT uses (`--act-quantizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActMethod {
    /// EMA-tracked min-max range with straight-through gradients.
    #[default]
    Ste,
    /// Learned step size (LSQ), codes `[0, 2^b - 1]`, zero point 0; step initialized from the first batch.
    Lsq,
    /// PACT learned clipping level alpha, codes `[0, 2^b - 1]` on `[0, alpha]`, zero point 0.
    Pact,
}

/// How QAT treats a `BatchNorm2d` that follows a `Conv2d` (`--bn-fold`). PTQ always folds with running
/// statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BnFold {
    /// Fold with the running statistics at preparation and train the plain folded convolution (statistics
    /// frozen from the start; Krishnamoorthi 2018, sec. 3.2, with the freeze at step 0).
    Running,
    /// Train a [`super::ConvBn2d`]: weights quantized as folded with the running variance, outputs
    /// normalised with batch statistics (Jacob et al. 2018, sec. 3.2); the engine runs the folded convolution.
    BatchStats {
        /// Switch to the running statistics after this many training steps (`--bn-freeze-steps`); `None`
        /// never freezes.
        freeze_after_steps: Option<usize>,
    },
}

impl Default for BnFold {
    /// Batch statistics, never frozen.
    fn default() -> Self {
        BnFold::BatchStats {
            freeze_after_steps: None,
        }
    }
}

/// Which weight layer a [`LayerQuant`] override applies to: an index among the weight layers (Dense, Conv2d)
/// in model order, negative counting from the end (`-1` is the last), or the names `first` / `last`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerSelector {
    /// 0-based index; negative from the end.
    Index(i64),
    /// `first` or `last`.
    Name(String),
}

impl LayerSelector {
    /// The 0-based weight-layer index this selects among `n` weight layers, if it exists.
    pub fn resolve(&self, n: usize) -> Option<usize> {
        let n = n as i64;
        let i = match self {
            LayerSelector::Index(i) if *i < 0 => n + i,
            LayerSelector::Index(i) => *i,
            LayerSelector::Name(s) if s == "first" => 0,
            LayerSelector::Name(s) if s == "last" => n - 1,
            LayerSelector::Name(_) => return None,
        };
        (0..n).contains(&i).then_some(i as usize)
    }
}

impl std::fmt::Display for LayerSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerSelector::Index(i) => write!(f, "{i}"),
            LayerSelector::Name(s) => write!(f, "{s}"),
        }
    }
}

/// A per-layer override (mixed precision, PTQ calibrators), applied after
/// [`QuantConfig::keep_first_last_8bit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerQuant {
    /// The weight layer.
    pub layer: LayerSelector,
    /// Weight bits of that layer (same rules as `weight_bits`).
    #[serde(default)]
    pub weight_bits: Option<u32>,
    /// Bits of the activation quantizer on that layer's output (ignored for the last layer, whose output is
    /// float logits).
    #[serde(default)]
    pub act_bits: Option<u32>,
    /// PTQ: calibrator of the activation quantizer on that layer's output (as `act_bits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibrator>,
    /// PTQ: how that layer's min-max weight scales are chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_calibration: Option<WeightCalibration>,
}

/// How LSQ steps (weights and activations) start (`--lsq-init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LsqInit {
    /// The paper's `2 mean|v| / sqrt(Qp)` (Esser et al. 2020, section 2.1).
    #[default]
    Lsq,
    /// The step with the least squared quantization error on the values seen ([`super::lsq::mse_step`]):
    /// each weight tensor (or channel), and each activation's first quantized training batch.
    Mse,
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
    /// Bits of the activation quantizers on values that only feed residual `Add`s (a branch before its sum,
    /// a 1x1 shortcut conv, a linear bottleneck that is added), `--add-bits`; `None`: `act_bits`. As in LSQ and
    /// PACT, where "activation bits" are those of the inputs of weight layers, and the add is kept wider.
    #[serde(default)]
    pub add_bits: Option<u32>,
    /// Weight quantizer family (`--weight-quantizer`); `Ste` is the fixed-rule behaviour.
    #[serde(default)]
    pub weight_quantizer: WeightMethod,
    /// Activation quantizer (`--act-quantizer`); `Ste` is the EMA min-max behaviour.
    #[serde(default)]
    pub act_quantizer: ActMethod,
    /// PACT: initial alpha (`--pact-alpha`); `None` takes the maximum of the first training batch.
    #[serde(default)]
    pub pact_alpha_init: Option<f32>,
    /// PACT: L2 coefficient on alpha (`--pact-l2`), 0 disables.
    #[serde(default)]
    pub pact_l2: f32,
    /// LSQ: how the steps start (`--lsq-init`).
    #[serde(default)]
    pub lsq_init: LsqInit,
    /// Per-layer bit-width overrides (mixed precision).
    #[serde(default)]
    pub layers: Vec<LayerQuant>,
    /// Batch-norm folding in QAT (`--bn-fold`); ignored by PTQ, which folds with running statistics.
    #[serde(default)]
    pub bn_fold: BnFold,
    /// PTQ: how activation ranges are chosen from the calibration samples (`--calibration`).
    #[serde(default)]
    pub calibration: Calibrator,
    /// PTQ: how min-max weight scales are chosen (`--weight-calibration`).
    #[serde(default)]
    pub weight_calibration: WeightCalibration,
    /// PTQ: empirical bias correction (`--bias-correction`, see [`super::ptq()`]).
    #[serde(default)]
    pub bias_correction: bool,
    /// PTQ: learned rounding of the weights (`--adaround`, see [`super::adaround`]).
    #[serde(default)]
    pub adaround: bool,
    /// AdaRound iterations per layer (`--adaround-iters`).
    #[serde(default = "default_adaround_iters")]
    pub adaround_iters: usize,
    /// AdaRound time budget for all layers, in seconds (`--adaround-seconds`); `None`: no limit.
    #[serde(default)]
    pub adaround_seconds: Option<f64>,
}

fn default_adaround_iters() -> usize {
    super::adaround::DEFAULT_ITERS
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
            add_bits: None,
            weight_quantizer: WeightMethod::Ste,
            act_quantizer: ActMethod::Ste,
            pact_alpha_init: None,
            pact_l2: 0.0,
            lsq_init: LsqInit::Lsq,
            layers: Vec::new(),
            bn_fold: BnFold::default(),
            calibration: Calibrator::MinMax,
            weight_calibration: WeightCalibration::MinMax,
            bias_correction: false,
            adaround: false,
            adaround_iters: default_adaround_iters(),
            adaround_seconds: None,
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
        if let Some(b) = self.add_bits {
            if !(2..=8).contains(&b) {
                return Err(Error::option(
                    "--add-bits",
                    format!("must be 2..=8 (the residual operands are signed), got {b}"),
                ));
            }
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
        let learned =
            self.weight_quantizer != WeightMethod::Ste || self.act_quantizer != ActMethod::Ste;
        if learned && self.method == Method::Ptq {
            return Err(Error::option(
                "--weight-quantizer",
                "learned quantizers (lsq, pact) are trained: they need --method qat",
            ));
        }
        if self.weight_quantizer == WeightMethod::Lsq {
            if self.quant_step.is_some() {
                return Err(Error::option(
                    "--weight-quantizer",
                    "lsq learns its step: it cannot be combined with --quant-step",
                ));
            }
            check_lsq_weight_bits("--weight-bits", self.weight_bits)?;
        }
        if let Some(a) = self.pact_alpha_init {
            if !(a.is_finite() && a > 0.0) {
                return Err(Error::option(
                    "--pact-alpha",
                    format!("must be finite and > 0, got {a}"),
                ));
            }
        }
        if !(self.pact_l2.is_finite() && self.pact_l2 >= 0.0) {
            return Err(Error::option(
                "--pact-l2",
                format!("must be finite and >= 0, got {}", self.pact_l2),
            ));
        }
        if self.lsq_init != LsqInit::Lsq
            && self.weight_quantizer != WeightMethod::Lsq
            && self.act_quantizer != ActMethod::Lsq
        {
            return Err(Error::option(
                "--lsq-init",
                "sets how LSQ steps start: it needs an lsq quantizer (--quantizer lsq)",
            ));
        }
        if self.method != Method::Ptq && self.calibration != Calibrator::MinMax {
            return Err(Error::option(
                "--calibration",
                format!(
                    "{} calibrates PTQ ranges: it needs --method ptq (QAT tracks its ranges while training)",
                    self.calibration
                ),
            ));
        }
        if self.bias_correction && self.method != Method::Ptq {
            return Err(Error::option(
                "--bias-correction",
                "corrects PTQ biases on calibration samples: it needs --method ptq",
            ));
        }
        if self.adaround {
            if self.method != Method::Ptq {
                return Err(Error::option(
                    "--adaround",
                    "learns PTQ rounding on calibration samples: it needs --method ptq",
                ));
            }
            if matches!(
                self.weight_kind(),
                WeightQuantKind::FixedStep { .. } | WeightQuantKind::Binary | WeightQuantKind::Lsq
            ) {
                return Err(Error::option(
                    "--adaround",
                    "learned rounding needs min-max (3..=8 bits) or ternary (2 bits) weights, not \
                     --quant-step or binary",
                ));
            }
        }
        if !(1..=1_000_000).contains(&self.adaround_iters) {
            return Err(Error::option(
                "--adaround-iters",
                format!("must be 1..=1000000, got {}", self.adaround_iters),
            ));
        }
        if let Some(s) = self.adaround_seconds {
            if !(s.is_finite() && s > 0.0) {
                return Err(Error::option(
                    "--adaround-seconds",
                    format!("must be finite and > 0, got {s}"),
                ));
            }
        }
        if self.weight_calibration == WeightCalibration::Mse {
            if self.method != Method::Ptq {
                return Err(Error::option(
                    "--weight-calibration",
                    "mse chooses PTQ weight scales: it needs --method ptq",
                ));
            }
            check_clippable("--weight-calibration", self.weight_kind(), self.weight_bits)?;
        }
        for (i, l) in self.layers.iter().enumerate() {
            let key = format!("layers[{i}]");
            if self.method != Method::Ptq
                && (l.calibration.is_some() || l.weight_calibration.is_some())
            {
                let what = if l.calibration.is_some() {
                    "calibration"
                } else {
                    "weight_calibration"
                };
                return Err(Error::option(
                    format!("{key}.{what}"),
                    "calibrators choose PTQ ranges: they need method = \"ptq\"",
                ));
            }
            if l.weight_calibration == Some(WeightCalibration::Mse) {
                let bits = l.weight_bits.unwrap_or(self.weight_bits);
                check_clippable(
                    &format!("{key}.weight_calibration"),
                    self.with_weight_bits(bits).weight_kind(),
                    bits,
                )?;
            }
            if let LayerSelector::Name(n) = &l.layer {
                if n != "first" && n != "last" {
                    return Err(Error::option(
                        format!("{key}.layer"),
                        format!("unknown layer name {n:?} (use an index, first or last)"),
                    ));
                }
            }
            if let Some(b) = l.weight_bits {
                if !(1..=8).contains(&b) {
                    return Err(Error::option(
                        format!("{key}.weight_bits"),
                        format!("must be 1..=8, got {b}"),
                    ));
                }
                if self.weight_quantizer == WeightMethod::Lsq {
                    check_lsq_weight_bits(&format!("{key}.weight_bits"), b)?;
                }
            }
            if let Some(b) = l.act_bits {
                if !(1..=8).contains(&b) {
                    return Err(Error::option(
                        format!("{key}.act_bits"),
                        format!("must be 1..=8, got {b}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A copy with weight bits `bits` and no per-layer overrides: the spec of one overridden layer.
    pub fn with_weight_bits(&self, bits: u32) -> QuantConfig {
        QuantConfig {
            weight_bits: bits,
            layers: Vec::new(),
            ..self.clone()
        }
    }

    /// The override for weight layer `index` of `n` (the last matching entry wins), if any.
    pub fn layer_override(&self, index: usize, n: usize) -> Option<&LayerQuant> {
        self.layers
            .iter()
            .rev()
            .find(|l| l.layer.resolve(n) == Some(index))
    }

    /// The weight rule this spec selects: fixed step if `quant_step` is set, else LSQ if asked for, else binary
    /// (1 bit), ternary (2 bits) or symmetric min-max.
    pub fn weight_kind(&self) -> WeightQuantKind {
        match (self.quant_step, self.weight_bits) {
            (Some(k), _) => WeightQuantKind::FixedStep { k },
            (None, _) if self.weight_quantizer == WeightMethod::Lsq => WeightQuantKind::Lsq,
            (None, 1) => WeightQuantKind::Binary,
            (None, 2) => WeightQuantKind::Ternary,
            (None, _) => WeightQuantKind::MinMax,
        }
    }
}

/// MSE weight clipping needs a min-max rule: a clipping range to shrink.
fn check_clippable(key: &str, kind: WeightQuantKind, bits: u32) -> Result<()> {
    if kind != WeightQuantKind::MinMax {
        return Err(Error::option(
            key,
            format!(
                "mse clips min-max weights (3..=8 bits, no --quant-step); {bits}-bit weights here are {}",
                match kind {
                    WeightQuantKind::FixedStep { .. } => "fixed step",
                    WeightQuantKind::Ternary => "ternary",
                    WeightQuantKind::Binary => "binary",
                    WeightQuantKind::Lsq => "lsq",
                    WeightQuantKind::MinMax => "min-max",
                }
            ),
        ));
    }
    Ok(())
}

fn check_lsq_weight_bits(key: &str, bits: u32) -> Result<()> {
    if !(2..=8).contains(&bits) {
        return Err(Error::option(
            key,
            format!("lsq weights need 2..=8 bits (1 bit has no zero code), got {bits}"),
        ));
    }
    Ok(())
}
