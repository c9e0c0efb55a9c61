//! Run configuration files: TOML (`.toml`) or JSON (`.json`) holding the model, the data, the training
//! hyper-parameters and the quantization spec, as the CLI flags would (see `docs/examples/lenet5-mixed.toml`).
//!
//! Every section and key is optional; missing keys take the library defaults ([`TrainConfig::default`],
//! [`QuantConfig::default`]). Unknown keys are errors. Every error names the file and the key at fault.
use crate::error::{Error, Result};
use crate::optim::{OptimizerKind, Schedule};
use crate::quant::{
    ActMethod, BnFold, Calibrator, LayerQuant, LsqInit, Method, QuantConfig, WeightCalibration,
    WeightMethod,
};
use crate::train::{Distill, TrainConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Largest configuration file read (a config is a few hundred bytes; this only guards against a wrong path).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A parsed configuration file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Model spec (`--model`), e.g. `mlp:784-64-10`.
    #[serde(default)]
    pub model: Option<String>,
    /// Data source (`--data`), e.g. `builtin`.
    #[serde(default)]
    pub data: Option<String>,
    /// Training hyper-parameters.
    #[serde(default)]
    pub training: TrainingSection,
    /// Quantization; absent for a plain f32 run.
    #[serde(default)]
    pub quantization: Option<QuantSection>,
    /// Input: how images are read and preprocessed.
    #[serde(default, skip_serializing_if = "InputSection::is_empty")]
    pub input: InputSection,
}

/// `[input]`: the data-source options and input preprocessing of the CLI flags of the same names.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    /// Image folders: resize and center-crop every image to `"HxW"` (`--image-size`).
    pub image_size: Option<String>,
    /// NumPy data: `"auto"`, `"nchw"` or `"nhwc"` (`--layout`).
    pub layout: Option<String>,
    /// Pixels scaled to `[0, input_scale]` before `mean` and `std` (`--input-scale`, default 1).
    pub input_scale: Option<f32>,
    /// Per-channel means in the scaled units (`--mean`).
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviations in the scaled units (`--std`).
    pub std: Option<Vec<f32>>,
}

impl InputSection {
    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self == &InputSection::default()
    }

    /// `image_size` parsed (`None` when unset).
    pub fn image_size(&self) -> Result<Option<(usize, usize)>> {
        self.image_size
            .as_deref()
            .map(crate::data::folder::parse_image_size)
            .transpose()
    }

    /// `layout` parsed (`None` when unset).
    pub fn layout(&self) -> Result<Option<crate::data::NpyLayout>> {
        self.layout.as_deref().map(str::parse).transpose()
    }

    /// `input_scale`, `mean` and `std` as preprocessing (for flags to override part by part).
    pub fn preprocessing(&self) -> crate::onnx::Preprocessing {
        crate::onnx::Preprocessing {
            input_scale: self.input_scale,
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }

    /// Every key checked, errors naming it.
    fn validate(&self, path: &Path) -> Result<()> {
        let key = |k: &str, e: Error| {
            let reason = match e {
                Error::InvalidOption { reason, .. } => reason,
                other => other.to_string(),
            };
            data_error(path, format!("key `input.{k}`: {reason}"))
        };
        self.image_size().map_err(|e| key("image_size", e))?;
        self.layout().map_err(|e| key("layout", e))?;
        self.preprocessing().normalization().map_err(|reason| {
            data_error(
                path,
                format!("keys `input.input_scale`/`mean`/`std`: {reason}"),
            )
        })?;
        Ok(())
    }
}

/// Optimizer named in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// Adam with Keras' defaults.
    Adam,
    /// SGD with `momentum` (and `weight_decay`).
    Sgd,
}

/// Quantization method named in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodName {
    /// Quantization-aware training.
    Qat,
    /// Post-training quantization.
    Ptq,
}

/// Batch-norm folding named in a file (`bn_fold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BnFoldName {
    /// Fold with running statistics at preparation ([`BnFold::Running`]).
    Running,
    /// Train on batch statistics ([`BnFold::BatchStats`]).
    Batch,
}

/// `[training]`: each key mirrors the CLI flag of the same name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    /// Epochs.
    pub epochs: Option<usize>,
    /// Batch size.
    pub batch_size: Option<usize>,
    /// `adam` or `sgd`.
    pub optimizer: Option<OptimizerName>,
    /// SGD momentum.
    pub momentum: Option<f32>,
    /// SGD weight decay.
    pub weight_decay: Option<f32>,
    /// Base learning rate.
    pub lr: Option<f32>,
    /// Seed.
    pub seed: Option<u64>,
    /// Validation fraction in (0, 1).
    pub validation_split: Option<f32>,
    /// Schedule, e.g. `{ kind = "cosine", min_lr = 1e-5 }` or `{ kind = "step", every_epochs = 5, gamma = 0.5 }`.
    pub schedule: Option<Schedule>,
    /// Linear warmup steps.
    pub warmup_steps: Option<usize>,
    /// Global gradient-norm clipping threshold.
    pub clip_grad_norm: Option<f32>,
    /// Batch loss above which training stops as diverged.
    pub max_loss: Option<f32>,
    /// Learning-rate multiplier of the LSQ step sizes.
    pub quant_lr_scale: Option<f32>,
    /// QAT quantization delay in epochs (fractions allowed): float training first, within `epochs`.
    pub quant_delay_epochs: Option<f32>,
    /// Knowledge distillation from the float model QAT starts from: weight of its soft targets in (0, 1].
    pub distill: Option<f32>,
    /// Distillation softmax temperature (default 1).
    pub distill_temperature: Option<f32>,
}

/// `[quantization]`: each key mirrors the CLI flag of the same name; `[[quantization.layers]]` entries are
/// per-layer overrides.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantSection {
    /// Weight bits.
    pub weight_bits: Option<u32>,
    /// Activation bits.
    pub act_bits: Option<u32>,
    /// Per-channel weight scales.
    pub per_channel: Option<bool>,
    /// `qat` or `ptq`.
    pub method: Option<MethodName>,
    /// Fixed weight step k.
    pub quant_step: Option<f32>,
    /// `ste` or `lsq`.
    pub weight_quantizer: Option<WeightMethod>,
    /// `ste`, `lsq` or `pact`.
    pub act_quantizer: Option<ActMethod>,
    /// PACT initial alpha.
    pub pact_alpha: Option<f32>,
    /// PACT L2 on alpha.
    pub pact_l2: Option<f32>,
    /// How LSQ steps start: `lsq` (the paper's rule) or `mse`.
    pub lsq_init: Option<LsqInit>,
    /// EMA momentum of the `ste` activation ranges.
    pub ema_momentum: Option<f32>,
    /// PTQ calibration samples.
    pub calibration_samples: Option<usize>,
    /// First and last weight layers at 8 bits.
    pub keep_first_last_8bit: Option<bool>,
    /// Bits of the values that only feed residual adds (default: `act_bits`).
    pub add_bits: Option<u32>,
    /// Batch-norm folding in QAT: `running` or `batch` (the default).
    pub bn_fold: Option<BnFoldName>,
    /// With `bn_fold = "batch"`: freeze the batch-norm statistics after this many training steps.
    pub bn_freeze_steps: Option<usize>,
    /// PTQ activation calibrator: `minmax`, `percentile:P`, `mse` or `entropy`.
    pub calibration: Option<Calibrator>,
    /// PTQ weight calibration: `minmax` or `mse`.
    pub weight_calibration: Option<WeightCalibration>,
    /// PTQ empirical bias correction.
    pub bias_correction: Option<bool>,
    /// PTQ AdaRound (learned weight rounding).
    pub adaround: Option<bool>,
    /// AdaRound iterations per layer.
    pub adaround_iters: Option<usize>,
    /// AdaRound time budget for all layers, in seconds.
    pub adaround_seconds: Option<f64>,
    /// Per-layer overrides.
    #[serde(default)]
    pub layers: Vec<LayerQuant>,
}

/// Reads and validates a configuration file: TOML for `.toml`, JSON for `.json`.
pub fn load(path: impl AsRef<Path>) -> Result<FileConfig> {
    let path = path.as_ref();
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(data_error(
            path,
            format!("{len} bytes is larger than a configuration file may be ({MAX_CONFIG_BYTES})"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse(&text, path)
}

/// Parses configuration text; the format comes from `path`'s extension, which also names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<FileConfig> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let cfg: FileConfig = match ext.as_deref() {
        Some("toml") => toml::from_str(text).map_err(|e| data_error(path, e.to_string()))?,
        Some("json") => serde_json::from_str(text).map_err(|e| data_error(path, e.to_string()))?,
        _ => {
            return Err(data_error(
                path,
                "unknown configuration format (the file name must end in .toml or .json)".into(),
            ))
        }
    };
    cfg.train_config()
        .and_then(|_| cfg.quant_config())
        .map_err(|e| name_key(e, path))?;
    cfg.input.validate(path)?;
    Ok(cfg)
}

impl FileConfig {
    /// The configuration as TOML text that [`load`] reads back to the same value (keys left unset are omitted).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self)
            .map_err(|e| Error::option("--config", format!("cannot write as TOML: {e}")))
    }

    /// The training configuration: [`TrainConfig::default`] overridden by `[training]`, validated.
    pub fn train_config(&self) -> Result<TrainConfig> {
        let t = &self.training;
        let d = TrainConfig::default();
        let optimizer = match t.optimizer {
            None if t.momentum.is_none() && t.weight_decay.is_none() => d.optimizer,
            None | Some(OptimizerName::Sgd) => OptimizerKind::Sgd {
                momentum: t.momentum.unwrap_or(0.0),
                weight_decay: t.weight_decay.unwrap_or(0.0),
            },
            Some(OptimizerName::Adam) => {
                if t.momentum.is_some() || t.weight_decay.is_some() {
                    return Err(Error::option(
                        "--momentum",
                        "momentum and weight_decay apply to optimizer = \"sgd\" only",
                    ));
                }
                OptimizerKind::adam()
            }
        };
        let c = TrainConfig {
            epochs: t.epochs.unwrap_or(d.epochs),
            batch_size: t.batch_size.unwrap_or(d.batch_size),
            optimizer,
            lr: t.lr.unwrap_or(d.lr),
            seed: t.seed.unwrap_or(d.seed),
            validation_fraction: t.validation_split,
            schedule: t.schedule.unwrap_or(d.schedule),
            warmup_steps: t.warmup_steps.unwrap_or(d.warmup_steps),
            clip_grad_norm: t.clip_grad_norm,
            max_loss: t.max_loss.unwrap_or(d.max_loss),
            quant_lr_scale: t.quant_lr_scale.unwrap_or(d.quant_lr_scale),
            quant_delay_epochs: t.quant_delay_epochs.unwrap_or(d.quant_delay_epochs),
            distill: match (t.distill, t.distill_temperature) {
                (Some(alpha), temperature) => Some(Distill {
                    alpha,
                    temperature: temperature.unwrap_or(1.0),
                }),
                (None, Some(_)) => {
                    return Err(Error::option(
                        "--distill-temperature",
                        "sets up distillation, which needs --distill",
                    ))
                }
                (None, None) => None,
            },
        };
        c.validate()?;
        Ok(c)
    }

    /// The quantization spec: [`QuantConfig::default`] overridden by `[quantization]`, validated; `None`
    /// without a `[quantization]` section.
    pub fn quant_config(&self) -> Result<Option<QuantConfig>> {
        let Some(q) = &self.quantization else {
            return Ok(None);
        };
        let d = QuantConfig::default();
        let c = QuantConfig {
            weight_bits: q.weight_bits.unwrap_or(d.weight_bits),
            act_bits: q.act_bits.unwrap_or(d.act_bits),
            per_channel: q.per_channel.unwrap_or(d.per_channel),
            method: match q.method {
                None => d.method,
                Some(MethodName::Qat) => Method::Qat,
                Some(MethodName::Ptq) => Method::Ptq,
            },
            quant_step: q.quant_step,
            ema_momentum: q.ema_momentum.unwrap_or(d.ema_momentum),
            calibration_samples: q.calibration_samples.unwrap_or(d.calibration_samples),
            keep_first_last_8bit: q.keep_first_last_8bit.unwrap_or(d.keep_first_last_8bit),
            add_bits: q.add_bits.or(d.add_bits),
            weight_quantizer: q.weight_quantizer.unwrap_or(d.weight_quantizer),
            act_quantizer: q.act_quantizer.unwrap_or(d.act_quantizer),
            pact_alpha_init: q.pact_alpha,
            pact_l2: q.pact_l2.unwrap_or(d.pact_l2),
            lsq_init: q.lsq_init.unwrap_or(d.lsq_init),
            layers: q.layers.clone(),
            calibration: q.calibration.unwrap_or(d.calibration),
            weight_calibration: q.weight_calibration.unwrap_or(d.weight_calibration),
            bias_correction: q.bias_correction.unwrap_or(d.bias_correction),
            adaround: q.adaround.unwrap_or(d.adaround),
            adaround_iters: q.adaround_iters.unwrap_or(d.adaround_iters),
            adaround_seconds: q.adaround_seconds,
            bn_fold: match (q.bn_fold, q.bn_freeze_steps) {
                (Some(BnFoldName::Running), Some(_)) => {
                    return Err(Error::option(
                        "--bn-freeze-steps",
                        "applies to batch-statistics folding only (bn_fold = \"batch\")",
                    ))
                }
                (Some(BnFoldName::Running), None) => BnFold::Running,
                (None, None) => d.bn_fold,
                (None | Some(BnFoldName::Batch), freeze) => BnFold::BatchStats {
                    freeze_after_steps: freeze,
                },
            },
        };
        c.validate()?;
        Ok(Some(c))
    }
}

fn data_error(path: &Path, reason: String) -> Error {
    Error::Data {
        path: PathBuf::from(path),
        reason,
    }
}

/// The file key a CLI flag corresponds to.
fn key_of(flag: &str) -> String {
    let section = match flag {
        "--epochs"
        | "--batch-size"
        | "--lr"
        | "--validation-split"
        | "--momentum"
        | "--weight-decay"
        | "--beta1"
        | "--beta2"
        | "--eps"
        | "--clip-grad-norm"
        | "--max-loss"
        | "--quant-lr-scale"
        | "--warmup-steps"
        | "--distill"
        | "--distill-temperature" => "training",
        "--quant-delay-epochs" => "training",
        "--schedule" | "--lr-step-every" | "--lr-gamma" | "--min-lr" | "--pct-start" => {
            "training.schedule"
        }
        _ if flag.starts_with("layers[") => return format!("quantization.{flag}"),
        _ => "quantization",
    };
    let key = match flag {
        "--lr-step-every" => "every_epochs",
        "--lr-gamma" => "gamma",
        "--pact-alpha" => "pact_alpha",
        "--first-last-8bit" => "keep_first_last_8bit",
        other => other.trim_start_matches("--"),
    };
    format!("{section}.{}", key.replace('-', "_"))
}

/// Rewrites a validation error to name the file and the key instead of the flag.
fn name_key(e: Error, path: &Path) -> Error {
    match e {
        Error::InvalidOption { option, reason } => {
            data_error(path, format!("key `{}`: {reason}", key_of(&option)))
        }
        other => other,
    }
}
