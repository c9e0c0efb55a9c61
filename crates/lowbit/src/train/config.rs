//! Training hyper-parameters ([`TrainConfig`]) and their validation, naming the CLI flag at fault.
use crate::error::{Error, Result};
use crate::optim::{OptimizerKind, Schedule};

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainConfig {
    /// Passes over the training set (`--epochs`, >= 1).
    pub epochs: usize,
    /// Samples per step (`--batch-size`, >= 1); the last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// Optimizer and its hyper-parameters (SGD carries its momentum and weight decay).
    pub optimizer: OptimizerKind,
    /// Learning rate (`--lr`, finite, > 0).
    pub lr: f32,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
    /// Fraction of the samples held out for validation (`--validation-split`, in (0, 1)): that fraction of
    /// each class, drawn by a shuffle seeded from `seed` (see [`super::split_indices`]). Not Keras' tail split,
    /// which on class-sorted data validates on classes it never trains.
    pub validation_fraction: Option<f32>,
    /// Learning-rate schedule (`--schedule`); `Constant` keeps `lr`.
    pub schedule: Schedule,
    /// Steps of linear learning-rate warmup before the schedule (`--warmup-steps`; 0 disables).
    pub warmup_steps: usize,
    /// Clip the global L2 norm of all gradients to this value before each update (`--clip-grad-norm`).
    pub clip_grad_norm: Option<f32>,
    /// A batch loss above this stops training as diverged, like a non-finite one (`--max-loss`, finite, > 0).
    /// Adam's bounded steps let an exploding run (e.g. lr 10) grow its logits to huge but finite values, whose
    /// loss (1e9 and more) is the divergence NaN detection would never see; 1e4 is over 4000 times the loss of
    /// guessing uniformly among 10 classes.
    pub max_loss: f32,
    /// Learning-rate multiplier of the LSQ step sizes (`--quant-lr-scale`, finite, > 0; see
    /// [`crate::optim::Optimizer::set_quant_lr_scale`]). Measured on LeNet-5 W4A4, 3 seeds: 0.1 keeps 0.6 pp
    /// more accuracy than 1.
    pub quant_lr_scale: f32,
    /// QAT quantization delay, in epochs of the `epochs` budget (`--quant-delay-epochs`, finite, in
    /// `[0, epochs)`, fractions allowed; 0 disables). The first `round(delay * steps per epoch)` steps train
    /// the float model (every quantizer bypassed, see [`crate::quant::bypass_quantizers`]); then quantization
    /// switches on, each quantizer initialized from the weights and the batch at the switch
    /// ([`crate::quant::start_quantizing`]). No effect on a model without quantizers. Measured on LeNet-5 LSQ
    /// W2A2, Fashion-MNIST, 5 epochs, 3 seeds: delays of 0.5 and 1 epoch did not help (85.1-85.6% vs 85.7%).
    pub quant_delay_epochs: f32,
    /// Knowledge distillation from a float teacher (`--distill`); `None` trains on the labels alone. Only
    /// [`super::train_distilled`] has a teacher: [`super::train()`] refuses a config that asks for one.
    pub distill: Option<Distill>,
}

/// Knowledge-distillation weights (see [`crate::nn::distillation_loss`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Distill {
    /// Weight of the teacher's soft targets, in `(0, 1]` (`--distill`); the labels get `1 - alpha`.
    pub alpha: f32,
    /// Softmax temperature, finite and > 0 (`--distill-temperature`, default 1).
    pub temperature: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 32,
            optimizer: OptimizerKind::adam(),
            lr: 1e-3,
            seed: 0,
            validation_fraction: None,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            clip_grad_norm: None,
            max_loss: 1e4,
            quant_lr_scale: 0.1,
            quant_delay_epochs: 0.0,
            distill: None,
        }
    }
}

impl TrainConfig {
    /// Checks every field, naming the CLI flag at fault.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::option("--epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::option("--batch-size", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::option(
                "--lr",
                format!("{} is not a positive finite number", self.lr),
            ));
        }
        if let Some(f) = self.validation_fraction {
            if !(f.is_finite() && f > 0.0 && f < 1.0) {
                return Err(Error::option(
                    "--validation-split",
                    format!("{f} is not in (0, 1)"),
                ));
            }
        }
        if !(self.quant_lr_scale.is_finite() && self.quant_lr_scale > 0.0) {
            return Err(Error::option(
                "--quant-lr-scale",
                format!("{} is not a positive finite number", self.quant_lr_scale),
            ));
        }
        let delay = self.quant_delay_epochs;
        if !(delay.is_finite() && delay >= 0.0 && f64::from(delay) < self.epochs as f64) {
            return Err(Error::option(
                "--quant-delay-epochs",
                format!(
                    "{delay} is not in [0, {}) (the delay is part of the --epochs budget)",
                    self.epochs
                ),
            ));
        }
        if !(self.max_loss.is_finite() && self.max_loss > 0.0) {
            return Err(Error::option(
                "--max-loss",
                format!("{} is not a positive finite number", self.max_loss),
            ));
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::option(
                    "--clip-grad-norm",
                    format!("{c} is not a positive finite number"),
                ));
            }
        }
        if let Some(d) = self.distill {
            if !(d.alpha.is_finite() && d.alpha > 0.0 && d.alpha <= 1.0) {
                return Err(Error::option(
                    "--distill",
                    format!("{} is not in (0, 1]", d.alpha),
                ));
            }
            if !(d.temperature.is_finite() && d.temperature > 0.0) {
                return Err(Error::option(
                    "--distill-temperature",
                    format!("{} is not a positive finite number", d.temperature),
                ));
            }
        }
        self.schedule.validate()?;
        self.optimizer.validate()
    }
}
