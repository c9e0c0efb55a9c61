//! Sweeps: one trained float model quantized at several settings (weight bit widths, fixed steps `k`), each
//! measured on the integer engine, with the accuracy-versus-size Pareto front and the smallest model within an
//! accuracy budget. The answer to "which step, how many bits" as one table and one picture (`lowbit sweep`).
use crate::allocate::{self, Budget, Cost};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::nn::Model;
use crate::pipeline::{self, Event, FloatRun, RunConfig};
use crate::quant::{self, QuantConfig};
use crate::report::Report;
use crate::sensitivity::{self, Sensitivity, SensitivityConfig};
use crate::train::TrainConfig;
use serde::Serialize;

/// One quantization setting of a sweep, applied over the sweep's base [`QuantConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Setting {
    /// Weights at this many bits (2: ternary, 1: binary, as `--weight-bits`).
    Bits(u32),
    /// Weights on the fixed grid `round(w * k) / k` (`--quant-step k`).
    Step(f32),
    /// Per-layer weight bits for this average of stored bits per weight ([`crate::allocate`], over the measured
    /// one-layer-at-a-time loss of the sweep's lower bit widths).
    Mixed(f64),
}

impl Setting {
    /// The base configuration with a uniform setting applied (a mixed one keeps the base: its per-layer bits
    /// come from the allocation).
    pub fn apply(&self, base: &QuantConfig) -> QuantConfig {
        let mut q = base.clone();
        match *self {
            Setting::Bits(b) => {
                q.weight_bits = b;
                q.quant_step = None;
            }
            Setting::Step(k) => q.quant_step = Some(k),
            Setting::Mixed(_) => {}
        }
        q
    }
}

/// One measured point of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    /// The setting.
    pub setting: Setting,
    /// The recipe label (`PTQ W4A8`, `PTQ k=4 (W5A8)`...).
    pub label: String,
    /// Test accuracy measured by the integer engine.
    pub accuracy: f64,
    /// Accuracy change from the float model, percentage points.
    pub delta_pp: f64,
    /// Stored parameter bytes of the deployed model.
    pub bytes: usize,
    /// The run's full report (per-layer diagnostics, engine/simulation cross-check).
    pub report: Report,
}

/// A finished sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    /// Accuracy of the float model.
    pub float_accuracy: f64,
    /// Parameter bytes of the float model.
    pub float_bytes: usize,
    /// Test images behind each accuracy.
    pub test_samples: usize,
    /// Every setting's result, in the order given.
    pub points: Vec<SweepPoint>,
    /// Indices into `points` of the Pareto front, smallest first.
    pub pareto: Vec<usize>,
    /// The accuracy budget, percentage points below the float model.
    pub max_drop_pp: f64,
    /// The smallest point within the budget (ties: the more accurate), if any.
    pub recommended: Option<usize>,
}

/// Indices of the `(bytes, accuracy)` points that no other point beats on both (smaller or equal and at least as
/// accurate, one strictly), ordered by size; equal points are all kept.
pub fn pareto_front(points: &[(usize, f64)]) -> Vec<usize> {
    let dominated = |&(bytes, acc): &(usize, f64)| {
        points
            .iter()
            .any(|&(b, a)| b <= bytes && a >= acc && (b < bytes || a > acc))
    };
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| !dominated(&points[i]))
        .collect();
    front.sort_by_key(|&i| points[i].0);
    front
}

/// The smallest point whose accuracy is at most `max_drop_pp` percentage points below `reference` (ties in size:
/// the more accurate; then the first).
pub fn recommend(points: &[(usize, f64)], reference: f64, max_drop_pp: f64) -> Option<usize> {
    (0..points.len())
        .filter(|&i| (reference - points[i].1) * 100.0 <= max_drop_pp + 1e-9)
        .min_by(|&i, &j| {
            points[i]
                .0
                .cmp(&points[j].0)
                .then(points[j].1.total_cmp(&points[i].1))
                .then(i.cmp(&j))
        })
}

/// What a sweep runs: the base quantization (method, activation bits, per-channel...), the settings over it,
/// QAT's fine-tuning schedule, and the accuracy budget for the recommendation.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Data source name (for the reports).
    pub data: String,
    /// Applied under every setting.
    pub base: QuantConfig,
    /// The settings, in the order they run and are reported.
    pub settings: Vec<Setting>,
    /// QAT fine-tuning from the float model (ignored by PTQ).
    pub train: TrainConfig,
    /// Percentage points of accuracy the recommended point may lose.
    pub max_drop_pp: f64,
}

impl SweepConfig {
    /// Checks the settings before anything runs, naming the option at fault.
    pub fn validate(&self) -> Result<()> {
        if self.settings.is_empty() {
            return Err(Error::option(
                "--bits/--quant-step",
                "give at least one setting",
            ));
        }
        if !self.max_drop_pp.is_finite() || self.max_drop_pp < 0.0 {
            return Err(Error::option("--max-drop", "must be a finite number >= 0"));
        }
        for s in &self.settings {
            s.apply(&self.base).validate()?;
            if let Setting::Mixed(b) = s {
                if !(b.is_finite() && *b > 0.0 && *b <= 8.0) {
                    return Err(Error::option(
                        "--mixed-bits",
                        format!("{b} is not in (0, 8]"),
                    ));
                }
            }
        }
        if self.base.method == quant::Method::Qat {
            self.train.validate()?;
        }
        Ok(())
    }
}

/// Quantizes `model` at every setting of `cfg` (PTQ of the model, or QAT fine-tuned from it), measuring each on
/// the integer engine over `split.test`. `on_point` is told each result as it lands (for progress).
pub fn run(
    model: &Model,
    split: &Split,
    cfg: &SweepConfig,
    on_event: &mut dyn FnMut(Event),
    on_point: &mut dyn FnMut(&SweepPoint),
) -> Result<Sweep> {
    cfg.validate()?;
    let mut float = model.clone();
    let (_, pred) = crate::train::evaluate_float(&mut float, &split.test, pipeline::EVAL_BATCH)?;
    let baseline = FloatRun {
        metrics: crate::eval::metrics(&pred, &split.test.labels, split.test.classes),
        model: float,
        epochs: Vec::new(),
        seconds: 0.0,
    };
    let float_accuracy = baseline.metrics.accuracy;
    let mut points = Vec::with_capacity(cfg.settings.len());
    let mut sens: Option<Sensitivity> = None;
    for &setting in &cfg.settings {
        let quant = match setting {
            Setting::Mixed(avg_bits) => {
                if sens.is_none() {
                    sens = Some(mixed_sensitivity(model, split, cfg)?);
                }
                let s = sens.as_ref().expect("computed above");
                let layers = allocate::layer_choices(s, Cost::MeasuredLoss)?;
                let weights: usize = s.layers.iter().map(|l| l.weights).sum();
                let budget = Budget::Bytes((avg_bits * weights as f64 / 8.0).floor() as u64);
                allocate::solve(&layers, budget)?.quant_config(&QuantConfig {
                    weight_bits: 8,
                    quant_step: None,
                    ..cfg.base.clone()
                })
            }
            _ => setting.apply(&cfg.base),
        };
        let run_cfg = RunConfig {
            data: cfg.data.clone(),
            model: model.spec.clone(),
            train: cfg.train.clone(),
            quant: Some(quant),
            init: None,
            baseline: false,
        };
        let out = pipeline::run(&run_cfg, split, Some(model), Some(&baseline), on_event)?;
        let r = out.report;
        let label = match setting {
            Setting::Mixed(b) => format!(
                "{} mixed {b} bits",
                r.run.split(" mixed").next().unwrap_or("")
            ),
            _ => r.run.clone(),
        };
        let point = SweepPoint {
            setting,
            label,
            accuracy: r.test_accuracy,
            delta_pp: (r.test_accuracy - float_accuracy) * 100.0,
            bytes: r.model_bytes,
            report: r,
        };
        on_point(&point);
        points.push(point);
    }
    let pairs: Vec<(usize, f64)> = points.iter().map(|p| (p.bytes, p.accuracy)).collect();
    Ok(Sweep {
        float_accuracy,
        float_bytes: quant::float_bytes(model),
        test_samples: split.test.n,
        pareto: pareto_front(&pairs),
        recommended: recommend(&pairs, float_accuracy, cfg.max_drop_pp),
        max_drop_pp: cfg.max_drop_pp,
        points,
    })
}

/// One-layer-at-a-time sensitivity (PTQ, every other layer at 8 bits) at the sweep's lower uniform widths
/// (2 to 7 bits; 2, 3 and 4 when it has none), for its mixed settings.
fn mixed_sensitivity(model: &Model, split: &Split, cfg: &SweepConfig) -> Result<Sensitivity> {
    let mut bits: Vec<u32> = cfg
        .settings
        .iter()
        .filter_map(|s| match s {
            Setting::Bits(b) if (2..8).contains(b) => Some(*b),
            _ => None,
        })
        .collect();
    if bits.is_empty() {
        bits = vec![2, 3, 4];
    }
    let scfg = SensitivityConfig {
        base: QuantConfig {
            weight_bits: 8,
            quant_step: None,
            method: quant::Method::Ptq,
            layers: Vec::new(),
            ..cfg.base.clone()
        },
        bits,
        activations: false,
        hessian_iters: 0,
        gauss_newton: false,
        ..SensitivityConfig::default()
    };
    sensitivity::analyse(model, split, &scfg, &mut |_, _| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pareto_front_keeps_only_points_nothing_beats_on_both_size_and_accuracy() {
        let p = [
            (100, 0.80),
            (50, 0.79),
            (50, 0.70),
            (200, 0.80),
            (25, 0.60),
            (75, 0.81),
        ];
        assert_eq!(pareto_front(&p), vec![4, 1, 5]);
        // Equal points both stay: neither beats the other strictly.
        assert_eq!(pareto_front(&[(10, 0.5), (10, 0.5)]), vec![0, 1]);
        assert!(pareto_front(&[]).is_empty());
    }

    #[test]
    fn the_recommendation_is_the_smallest_point_within_the_budget() {
        let p = [(100, 0.80), (50, 0.79), (25, 0.70), (50, 0.795)];
        // Budget 1 pp below 0.80: 50 bytes qualifies twice; the more accurate wins.
        assert_eq!(recommend(&p, 0.80, 1.0), Some(3));
        assert_eq!(recommend(&p, 0.80, 0.0), Some(0));
        assert_eq!(recommend(&p, 0.80, 10.0), Some(2));
        assert_eq!(recommend(&p, 0.90, 1.0), None);
        // A point above the reference always qualifies.
        assert_eq!(recommend(&[(9, 0.95)], 0.90, 0.0), Some(0));
    }

    #[test]
    fn settings_override_bits_or_step_and_keep_the_rest() {
        let base = QuantConfig {
            act_bits: 4,
            quant_step: Some(2.0),
            ..QuantConfig::default()
        };
        let q = Setting::Bits(3).apply(&base);
        assert_eq!((q.weight_bits, q.act_bits, q.quant_step), (3, 4, None));
        let q = Setting::Step(16.0).apply(&base);
        assert_eq!((q.weight_bits, q.quant_step), (8, Some(16.0)));
    }
}
