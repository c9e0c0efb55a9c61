//! Optimizers: Adam and SGD with momentum. State is kept per parameter tensor in the model's visit order
//! ([`crate::nn::Model::params_mut`]).
use crate::error::{Error, Result};
#[cfg(target_arch = "x86_64")]
use crate::kernel_tiers::Family;
use crate::nn::Param;
use crate::state::{StateValue, StateVisitor, Stateful};
#[cfg(target_arch = "x86_64")]
use lowbit_runtime::isa::Isa;

/// Which optimizer to build, with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum OptimizerKind {
    /// Adam (Kingma & Ba 2015) in Keras' formulation.
    Adam {
        /// Decay of the first-moment estimate (Keras default 0.9).
        beta1: f32,
        /// Decay of the second-moment estimate (Keras default 0.999).
        beta2: f32,
        /// Added to `sqrt(v)` in the denominator (Keras default 1e-7).
        eps: f32,
    },
    /// Stochastic gradient descent with (heavy-ball) momentum and optional L2 weight decay.
    Sgd {
        /// Momentum coefficient in [0, 1).
        momentum: f32,
        /// L2 coefficient added to the gradient as `weight_decay * w` (0 disables).
        weight_decay: f32,
    },
}

impl OptimizerKind {
    /// Adam with Keras' defaults (beta1 0.9, beta2 0.999, eps 1e-7).
    pub fn adam() -> Self {
        OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-7,
        }
    }

    /// SGD with the given momentum and no weight decay.
    pub fn sgd(momentum: f32) -> Self {
        OptimizerKind::Sgd {
            momentum,
            weight_decay: 0.0,
        }
    }

    /// Checks the hyper-parameters, naming the CLI flag at fault.
    pub fn validate(&self) -> Result<()> {
        let unit = |v: f32| v.is_finite() && (0.0..1.0).contains(&v);
        match *self {
            OptimizerKind::Adam { beta1, beta2, eps } => {
                if !unit(beta1) {
                    return Err(Error::option(
                        "--beta1",
                        format!("{beta1} is not in [0, 1)"),
                    ));
                }
                if !unit(beta2) {
                    return Err(Error::option(
                        "--beta2",
                        format!("{beta2} is not in [0, 1)"),
                    ));
                }
                if !(eps.is_finite() && eps > 0.0) {
                    return Err(Error::option(
                        "--eps",
                        format!("{eps} is not a positive number"),
                    ));
                }
            }
            OptimizerKind::Sgd {
                momentum,
                weight_decay,
            } => {
                if !unit(momentum) {
                    return Err(Error::option(
                        "--momentum",
                        format!("{momentum} is not in [0, 1)"),
                    ));
                }
                if !(weight_decay.is_finite() && weight_decay >= 0.0) {
                    return Err(Error::option(
                        "--weight-decay",
                        format!("{weight_decay} is not a non-negative number"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An optimizer with its state.
#[derive(Debug, Clone)]
pub struct Optimizer {
    kind: OptimizerKind,
    lr: f32,
    /// Steps taken (Adam's bias-correction exponent).
    step: u64,
    /// Adam: first moments; SGD: velocities. One buffer per parameter tensor, created on the first step.
    m: Vec<Vec<f32>>,
    /// Adam: second moments (unused by SGD).
    v: Vec<Vec<f32>>,
    /// Learning-rate multiplier of the learned quantizer step sizes (see [`Optimizer::set_quant_lr_scale`]).
    quant_lr_scale: f32,
}

/// Whether a parameter is a learned quantizer step size (LSQ), by its [`Param`] name.
fn is_quantizer_step(name: &str) -> bool {
    name == "weight_step" || name == "act_step"
}

impl Optimizer {
    /// A fresh optimizer; validates `lr` (flag `--lr`) and the hyper-parameters.
    pub fn new(kind: OptimizerKind, lr: f32) -> Result<Self> {
        kind.validate()?;
        check_lr(lr)?;
        Ok(Self {
            kind,
            lr,
            step: 0,
            m: Vec::new(),
            v: Vec::new(),
            quant_lr_scale: 1.0,
        })
    }

    /// Multiplies the learning rate of the LSQ step sizes (`weight_step`, `act_step`) by `scale` (finite, > 0;
    /// flag `--quant-lr-scale`). LSQ scales their gradients by `1/sqrt(N Qp)` for SGD (Esser et al. 2020); Adam
    /// divides that scale out again, so each step size moves by about `lr` per update, a large relative change
    /// for steps of 0.01-0.1, and a smaller rate for them is how LSQ is usually trained with Adam.
    pub fn set_quant_lr_scale(&mut self, scale: f32) -> Result<()> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::option(
                "--quant-lr-scale",
                format!("{scale} is not a positive finite number"),
            ));
        }
        self.quant_lr_scale = scale;
        Ok(())
    }

    /// Current learning rate.
    pub fn lr(&self) -> f32 {
        self.lr
    }

    /// Changes the learning rate (for schedules); state is kept.
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        check_lr(lr)?;
        self.lr = lr;
        Ok(())
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Applies one update to every parameter from its gradient. The parameter list must have the same
    /// tensors, in the same order and sizes, at every call.
    pub fn step(&mut self, params: &mut [Param<'_>]) -> Result<()> {
        if self.m.is_empty() {
            self.m = params.iter().map(|p| vec![0.0; p.value.len()]).collect();
            if matches!(self.kind, OptimizerKind::Adam { .. }) {
                self.v = self.m.clone();
            }
        }
        if self.m.len() != params.len()
            || params
                .iter()
                .zip(&self.m)
                .any(|(p, m)| p.value.len() != m.len() || p.grad.len() != m.len())
        {
            return Err(Error::Shape(
                "optimizer: parameter list changed between steps".into(),
            ));
        }
        self.step += 1;
        match self.kind {
            OptimizerKind::Adam { beta1, beta2, eps } => {
                // Keras: alpha = lr * sqrt(1 - beta2^t) / (1 - beta1^t); m += (g - m)(1 - beta1);
                // v += (g^2 - v)(1 - beta2); w -= alpha * m / (sqrt(v) + eps). Powers in f64 so late steps
                // stay accurate.
                let t = self.step as f64;
                let bc1 = 1.0 - f64::from(beta1).powf(t);
                let bc2 = 1.0 - f64::from(beta2).powf(t);
                let alpha = (f64::from(self.lr) * bc2.sqrt() / bc1) as f32;
                let hp = AdamStep {
                    alpha,
                    one_minus_beta1: 1.0 - beta1,
                    one_minus_beta2: 1.0 - beta2,
                    eps,
                };
                let quant_hp = AdamStep {
                    alpha: alpha * self.quant_lr_scale,
                    ..hp
                };
                for ((p, m), v) in params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
                    let hp = if is_quantizer_step(p.name) {
                        &quant_hp
                    } else {
                        &hp
                    };
                    adam_update(hp, p.value, p.grad, m, v);
                }
            }
            OptimizerKind::Sgd {
                momentum,
                weight_decay,
            } => {
                // Keras: velocity = momentum * velocity - lr * g; w += velocity.
                for (p, vel) in params.iter_mut().zip(&mut self.m) {
                    let lr = if is_quantizer_step(p.name) {
                        self.lr * self.quant_lr_scale
                    } else {
                        self.lr
                    };
                    for ((w, &g), u) in p.value.iter_mut().zip(p.grad.iter()).zip(vel.iter_mut()) {
                        let g = g + weight_decay * *w;
                        *u = momentum * *u - lr * g;
                        *w += *u;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Optimizer {
    /// Checks that the state (moments from a checkpoint) fits `params`: one buffer per tensor, of its length,
    /// or none yet. The hyper-parameters are configuration, not state: the caller compares those.
    pub fn check_params(&self, params: &[Param<'_>]) -> Result<()> {
        let adam = matches!(self.kind, OptimizerKind::Adam { .. });
        let expected_v = if adam { self.m.len() } else { 0 };
        if self.v.len() != expected_v {
            return Err(Error::Shape(format!(
                "optimizer state has {} second-moment tensors for {} first-moment ones",
                self.v.len(),
                self.m.len()
            )));
        }
        if self.m.is_empty() {
            return Ok(());
        }
        if self.m.len() != params.len() {
            return Err(Error::Shape(format!(
                "optimizer state has {} tensors, the model {} parameters",
                self.m.len(),
                params.len()
            )));
        }
        for (i, (p, m)) in params.iter().zip(&self.m).enumerate() {
            let n = p.value.len();
            if m.len() != n || self.v.get(i).is_some_and(|v| v.len() != n) {
                return Err(Error::Shape(format!(
                    "optimizer state of parameter {i} ({}) has {} values, the parameter {n}",
                    p.name,
                    m.len()
                )));
            }
        }
        Ok(())
    }
}

impl Stateful for Optimizer {
    /// Steps taken (`step`, Adam's bias-correction exponent), the current learning rate (`lr`) and the
    /// per-parameter moments (`m`: Adam's first moments or SGD's velocities, `v`: Adam's second moments), in
    /// parameter visit order. Check a loaded state with [`Optimizer::check_params`].
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        v.value(
            "step",
            StateValue::U64(std::slice::from_mut(&mut self.step)),
        )?;
        v.value("lr", StateValue::F32(std::slice::from_mut(&mut self.lr)))?;
        check_lr(self.lr)?;
        v.f32_list("m", &mut self.m)?;
        v.f32_list("v", &mut self.v)
    }
}

/// Learning-rate schedule over optimizer steps (`--schedule`), after an optional linear warmup
/// (`--warmup-steps`: step `t < W` uses `lr * (t + 1) / W`).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// The base learning rate throughout.
    #[default]
    Constant,
    /// `lr * gamma^floor(epoch / every_epochs)`, epochs counted from 0 (step decay).
    Step {
        /// Epochs between decays (>= 1).
        every_epochs: usize,
        /// Factor applied at each decay (finite, > 0).
        gamma: f32,
    },
    /// Cosine annealing (Loshchilov & Hutter 2017, without restarts) from `lr` down to `min_lr` over the
    /// steps after warmup: `min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2`, `t` counted from the end of
    /// warmup and `T` such that the run's last step has `t = T`.
    Cosine {
        /// Final learning rate (finite, >= 0 and <= lr).
        min_lr: f32,
    },
    /// One-cycle (Smith & Topin 2019), as PyTorch's `OneCycleLR` with cosine annealing: from `lr / div_factor`
    /// up to `lr` over the first `pct_start` of the run's steps, then down to `lr / (div_factor *
    /// final_div_factor)` at its last step, each phase `end + (start - end) (1 + cos(pi p)) / 2`. With it the base
    /// `--lr` is the peak; warmup steps, if any, come before it.
    #[serde(rename = "onecycle")]
    OneCycle {
        /// Fraction of the steps spent rising (0 < pct_start < 1; PyTorch's default 0.3).
        pct_start: f32,
        /// Peak over initial rate (PyTorch's default 25).
        div_factor: f32,
        /// Initial over final rate (PyTorch's default 1e4).
        final_div_factor: f32,
    },
}

impl Schedule {
    /// Checks the parameters, naming the CLI flag at fault.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Schedule::Constant => {}
            Schedule::Step {
                every_epochs,
                gamma,
            } => {
                if every_epochs == 0 {
                    return Err(Error::option("--lr-step-every", "must be at least 1"));
                }
                if !(gamma.is_finite() && gamma > 0.0) {
                    return Err(Error::option(
                        "--lr-gamma",
                        format!("{gamma} is not a positive finite number"),
                    ));
                }
            }
            Schedule::Cosine { min_lr } => {
                if !(min_lr.is_finite() && min_lr >= 0.0) {
                    return Err(Error::option(
                        "--min-lr",
                        format!("{min_lr} is not a finite number >= 0"),
                    ));
                }
            }
            Schedule::OneCycle {
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                if !(pct_start > 0.0 && pct_start < 1.0) {
                    return Err(Error::option(
                        "--pct-start",
                        format!("{pct_start} is not in (0, 1)"),
                    ));
                }
                for (flag, v) in [
                    ("--div-factor", div_factor),
                    ("--final-div-factor", final_div_factor),
                ] {
                    if !(v.is_finite() && v >= 1.0) {
                        return Err(Error::option(
                            flag,
                            format!("{v} is not a finite number >= 1"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Learning rate of optimizer step `step` (0-based) for base rate `lr`, `warmup_steps` of linear warmup,
    /// `steps_per_epoch` and `total_steps` in the run. Always > 0 for a valid schedule and `lr > 0`.
    pub fn lr_at(
        &self,
        lr: f32,
        step: usize,
        warmup_steps: usize,
        steps_per_epoch: usize,
        total_steps: usize,
    ) -> f32 {
        if step < warmup_steps {
            return (f64::from(lr) * (step + 1) as f64 / warmup_steps as f64) as f32;
        }
        let v = match *self {
            Schedule::Constant => f64::from(lr),
            Schedule::Step {
                every_epochs,
                gamma,
            } => {
                let epoch = step / steps_per_epoch.max(1);
                let decays = (epoch / every_epochs.max(1)) as i32;
                f64::from(lr) * f64::from(gamma).powi(decays)
            }
            Schedule::Cosine { min_lr } => {
                // The last step (total_steps - 1) reaches min_lr.
                let span = total_steps.saturating_sub(warmup_steps + 1).max(1) as f64;
                let t = ((step - warmup_steps) as f64 / span).min(1.0);
                let (hi, lo) = (f64::from(lr), f64::from(min_lr));
                lo + (hi - lo) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::OneCycle {
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                let cos = |start: f64, end: f64, p: f64| {
                    end + (start - end) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
                };
                let peak = f64::from(lr);
                let initial = peak / f64::from(div_factor);
                let last = initial / f64::from(final_div_factor);
                // PyTorch's phase ends: the rise ends at step pct * total - 1, the fall at total - 1.
                let total = total_steps.saturating_sub(warmup_steps) as f64;
                let up_end = f64::from(pct_start) * total - 1.0;
                let down_end = total - 1.0;
                let t = (step - warmup_steps) as f64;
                if t <= up_end {
                    cos(initial, peak, if up_end > 0.0 { t / up_end } else { 1.0 })
                } else {
                    let span = down_end - up_end;
                    let p = if span > 0.0 {
                        ((t - up_end) / span).min(1.0)
                    } else {
                        1.0
                    };
                    cos(peak, last, p)
                }
            }
        };
        // A learning rate of exactly 0 is rejected by `Optimizer::set_lr`; the floor only matters for a
        // cosine schedule ending at 0.
        (v as f32).max(f32::MIN_POSITIVE)
    }
}

/// Scales every gradient by `max_norm / ||g||` when the global L2 norm `||g||` over all of them exceeds
/// `max_norm` (Pascanu et al. 2013), and returns `||g||` before clipping (computed in f64).
pub fn clip_grad_norm(params: &mut [Param<'_>], max_norm: f32) -> f32 {
    let norm = params
        .iter()
        .map(|p| sum_squares(p.grad))
        .sum::<f64>()
        .sqrt();
    if norm.is_finite() && norm > f64::from(max_norm) {
        let k = (f64::from(max_norm) / norm) as f32;
        for p in params.iter_mut() {
            for g in p.grad.iter_mut() {
                *g *= k;
            }
        }
    }
    norm as f32
}

/// `sum x^2` of a slice, accumulated in 8 independent f32 lanes (so it vectorizes) and redone in f64 if that
/// overflows.
pub fn sum_squares(xs: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    for &v in tail {
        lanes[0] += v * v;
    }
    let s: f64 = lanes.iter().map(|&l| f64::from(l)).sum();
    if s.is_finite() {
        s
    } else {
        xs.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
    }
}

fn check_lr(lr: f32) -> Result<()> {
    if !(lr.is_finite() && lr > 0.0) {
        return Err(Error::option(
            "--lr",
            format!("{lr} is not a positive finite number"),
        ));
    }
    Ok(())
}

struct AdamStep {
    alpha: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    eps: f32,
}

/// The Adam update of one tensor. No FMA contraction happens in Rust, and vector sqrt/div are correctly
/// rounded, so the AVX2 build of this loop gives bit-identical results to the scalar one.
#[inline(always)]
fn adam_update_body(hp: &AdamStep, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let n = w.len().min(g.len()).min(m.len()).min(v.len());
    let (w, g, m, v) = (&mut w[..n], &g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = g[i];
        let mi = m[i] + (gi - m[i]) * hp.one_minus_beta1;
        let vi = v[i] + (gi * gi - v[i]) * hp.one_minus_beta2;
        m[i] = mi;
        v[i] = vi;
        w[i] -= hp.alpha * mi / (vi.sqrt() + hp.eps);
    }
}

/// [`adam_update_body`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(non_snake_case)] // XNNPACK-style kernel name: stem__isa
unsafe fn adam_update__avx2(hp: &AdamStep, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    adam_update_body(hp, w, g, m, v);
}

fn adam_update(hp: &AdamStep, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Family::Optimizer.tier() == Isa::Avx2 {
        // SAFETY: the optimizer's tier is avx2 only when the CPU has AVX2 (`kernel_tiers`); the body only indexes
        // within the slices.
        unsafe { adam_update__avx2(hp, w, g, m, v) };
        return;
    }
    adam_update_body(hp, w, g, m, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_adam_matches_scalar_bit_for_bit() {
        let hp = AdamStep {
            alpha: 1e-3,
            one_minus_beta1: 0.1,
            one_minus_beta2: 0.001,
            eps: 1e-7,
        };
        let mut rng = crate::rng::Rng::new(5);
        let n = 1003; // not a multiple of the vector width: exercises the tail
        let g: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let w0: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let (mut w1, mut m1, mut v1) = (w0.clone(), vec![0.01; n], vec![0.02; n]);
        let (mut w2, mut m2, mut v2) = (w0, vec![0.01; n], vec![0.02; n]);
        adam_update_body(&hp, &mut w1, &g, &mut m1, &mut v1);
        adam_update(&hp, &mut w2, &g, &mut m2, &mut v2);
        assert_eq!(w1, w2);
        assert_eq!(m1, m2);
        assert_eq!(v1, v2);
    }
}
