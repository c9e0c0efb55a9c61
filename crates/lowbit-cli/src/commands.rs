//! The subcommands. Each returns `anyhow::Result` with context naming the file or option at fault.
//!
//! (Over 800 lines for now: train, eval, inspect, demo, predict and bench share the data, model-loading, progress
//! and report helpers defined here; the newer commands (sweep, sensitivity, mixed, import) already live in their
//! own files and call those helpers. Moving the six older commands out the same way is the planned split.)
use crate::ui::{bar, Table};
use crate::{
    ActQuantizerArg, BenchArgs, BnFoldArg, DataArg, DemoArgs, EvalArgs, LsqInitArg, MethodArg,
    NormArgs, OptimizerArg, PredictArgs, QuantizerArg, ScheduleArg, TrainArgs, WeightQuantizerArg,
};
use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use lowbit::checkpoint::Checkpointing;
use lowbit::config_file::{self, BnFoldName, FileConfig, MethodName, OptimizerName, QuantSection};
use lowbit::data::{self, DataOptions, DataSource, Split};
use lowbit::eval::{argmax_rows, metrics, Metrics};
use lowbit::modelfile::{self, AnyModel};
use lowbit::nn::Model;
use lowbit::onnx::Preprocessing;
use lowbit::optim::OptimizerKind;
use lowbit::optim::Schedule;
use lowbit::pipeline::{self, Event, FloatRun, RunConfig};
use lowbit::quant::{
    ActMethod, LayerQuant, LayerSelector, LsqInit, Method, QuantConfig, WeightMethod,
};
use lowbit::report::{DatasetInfo, Report};
use lowbit::train::{self, TrainConfig};
use lowbit_runtime::engine::{Engine, EngineOptions};
use lowbit_runtime::model::Provenance;
use lowbit_runtime::preprocess::Normalization;

/// The engine options of `eval` and `bench`, which run batch after batch in a process of their own: the helper
/// threads may spin between batches (the library's default is off, for host processes that do other work).
const CLI_ENGINE: EngineOptions = EngineOptions {
    allow_spinning: true,
    direct_3x3: false,
};
use std::path::Path;
use std::time::Instant;

/// Loads `--data` (named `spec`, which a config file may have set) with the data flags and a normalisation.
pub(crate) fn load_data(
    spec: &str,
    a: &DataArg,
    normalization: Option<Normalization>,
) -> Result<Split> {
    let source: DataSource = spec.parse()?;
    let opts = DataOptions {
        image_size: a.image_size,
        layout: a.layout,
        coarse_labels: a.coarse_labels,
        normalization,
    };
    Ok(data::load_with(&source, &opts)?)
}

/// `--input-scale`, `--mean` and `--std` as given (each part optional, so that an ONNX model's metadata fills
/// the others).
pub(crate) fn preprocessing(n: &NormArgs) -> Preprocessing {
    Preprocessing {
        input_scale: n.input_scale,
        mean: (!n.mean.is_empty()).then(|| n.mean.clone()),
        std: (!n.std.is_empty()).then(|| n.std.clone()),
    }
}

/// `--input-scale` / `--mean` / `--std` as a normalisation (`None` when none is given).
fn normalization(n: &NormArgs) -> Result<Option<Normalization>> {
    preprocessing(n)
        .normalization()
        .map_err(|e| anyhow!("invalid --mean/--std/--input-scale: {e} (give --mean and --std with one value or one per channel each)"))
}

/// The normalisation a model was trained with, for data it is evaluated on.
fn model_normalization(model: &AnyModel) -> Option<Normalization> {
    match model {
        AnyModel::Quant(qm) => qm.normalization.clone(),
        AnyModel::Float(m, _) => m.normalization.clone(),
    }
}

/// Progress-bar driver for pipeline events.
pub(crate) struct Bars {
    quiet: bool,
    current: Option<ProgressBar>,
    /// The phase label and last good model of a phase that diverged, kept so `train --out` can still save it.
    diverged: Option<(String, Box<Model>)>,
    /// Every training phase's per-step record, for `--plot`.
    phases: Vec<crate::plot::Phase>,
}

impl Bars {
    pub(crate) fn new(quiet: bool) -> Self {
        Self {
            quiet,
            current: None,
            diverged: None,
            phases: Vec::new(),
        }
    }

    pub(crate) fn handle(&mut self, e: Event) {
        match e {
            Event::TrainingStarted { label, total_steps } => {
                self.current = Some(bar(total_steps as u64, &label, self.quiet));
                self.phases.push(crate::plot::Phase {
                    label,
                    ..Default::default()
                });
            }
            Event::Step(p) => {
                if let Some(phase) = self.phases.last_mut() {
                    phase.steps_per_epoch = p.steps;
                    phase.batch_loss.push(p.batch_loss);
                    phase.batch_accuracy.push(p.batch_accuracy);
                    if p.step == p.steps {
                        phase.epoch_loss.push(f64::from(p.loss));
                        phase.epoch_accuracy.push(f64::from(p.accuracy));
                    }
                }
                if let Some(b) = &self.current {
                    // A position, not an increment: a resumed run starts part way.
                    b.set_position(((p.epoch - 1) * p.steps + p.step) as u64);
                    if p.step == p.steps || p.step % 50 == 0 {
                        b.set_message(format!(
                            "epoch {}/{} loss {:.3} acc {:.1}%",
                            p.epoch,
                            p.epochs,
                            p.loss,
                            p.accuracy * 100.0
                        ));
                    }
                }
            }
            Event::AdaRound(p) => {
                // One bar over every layer; with a time budget the later layers' lengths are estimates.
                let b = self.current.get_or_insert_with(|| {
                    bar((p.layers * p.iters) as u64, "AdaRound", self.quiet)
                });
                b.set_length((p.layers * p.iters) as u64);
                b.set_position((p.layer * p.iters + p.iter) as u64);
                if p.iter == 1 || p.iter == p.iters || p.iter % 50 == 0 {
                    b.set_message(format!(
                        "AdaRound {} {}/{} loss {:.4}",
                        p.name,
                        p.layer + 1,
                        p.layers,
                        p.loss
                    ));
                }
                if p.layer + 1 == p.layers && p.iter == p.iters {
                    b.finish_and_clear();
                    self.current = None;
                }
            }
            Event::TrainingFinished => {
                if let Some(b) = self.current.take() {
                    b.finish_and_clear();
                }
            }
            Event::Diverged { label, model } => self.diverged = Some((label, model)),
        }
    }
}

pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    modelfile::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Writes the JSON report of a command that analyses a model file: the version, the model, its spec and the
/// data, then the command's own `fields` (an object).
pub(crate) fn write_model_report(
    path: &Path,
    model: &Path,
    spec: &str,
    data: &str,
    fields: serde_json::Value,
) -> Result<()> {
    let mut v = serde_json::json!({
        "lowbit_version": env!("CARGO_PKG_VERSION"),
        "model": model.display().to_string(),
        "spec": spec,
        "data": data,
    });
    if let (Some(o), serde_json::Value::Object(extra)) = (v.as_object_mut(), fields) {
        o.extend(extra);
    }
    write_json(path, &v)?;
    println!("report written to {}", path.display());
    Ok(())
}

pub(crate) fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// Parses one `--layer-bits` item, `LAYER:WBITS[:ABITS]`.
pub(crate) fn parse_layer_bits(item: &str) -> Result<LayerQuant> {
    let bad = || {
        anyhow!("invalid --layer-bits: `{item}` is not LAYER:WBITS[:ABITS] (e.g. first:8:8, -1:8, 2:4:4)")
    };
    let mut parts = item.split(':');
    let layer = match parts.next().map(str::trim) {
        Some(n @ ("first" | "last")) => LayerSelector::Name(n.to_string()),
        Some(i) => LayerSelector::Index(i.parse().map_err(|_| bad())?),
        None => return Err(bad()),
    };
    let weight_bits = Some(
        parts
            .next()
            .ok_or_else(bad)?
            .trim()
            .parse()
            .map_err(|_| bad())?,
    );
    let act_bits = match parts.next() {
        Some(b) => Some(b.trim().parse().map_err(|_| bad())?),
        None => None,
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(LayerQuant {
        layer,
        weight_bits,
        act_bits,
        calibration: None,
        weight_calibration: None,
    })
}

/// The run's settings: a `--config` file (if any) overlaid with the flags the user typed; without a file, the
/// flags with their defaults. Validation names the flag at fault.
fn resolve_settings(
    a: &TrainArgs,
    explicit: &[String],
) -> Result<(FileConfig, TrainConfig, Option<QuantConfig>)> {
    let mut fc = match &a.config {
        Some(p) => config_file::load(p)?,
        None => FileConfig::default(),
    };
    let typed = |id: &str| explicit.iter().any(|e| e == id);
    // A flag with a default applies when typed, or when the file leaves the setting open.
    macro_rules! take {
        ($slot:expr, $id:literal, $value:expr) => {
            if typed($id) || $slot.is_none() {
                $slot = Some($value);
            }
        };
    }
    take!(fc.model, "model", a.model.clone());
    take!(fc.data, "data", a.data.data.clone());
    let t = &mut fc.training;
    take!(t.epochs, "epochs", a.epochs);
    take!(t.batch_size, "batch_size", a.batch_size);
    take!(t.lr, "lr", a.lr);
    take!(t.seed, "seed", a.seed);
    if typed("optimizer") || (t.optimizer.is_none() && t.momentum.is_none()) {
        t.optimizer = Some(match a.optimizer {
            OptimizerArg::Adam => OptimizerName::Adam,
            OptimizerArg::Sgd => OptimizerName::Sgd,
        });
    }
    if t.optimizer == Some(OptimizerName::Sgd) && (typed("momentum") || t.momentum.is_none()) {
        t.momentum = Some(a.momentum);
    }
    if let Some(v) = a.validation_split {
        t.validation_split = Some(v);
    }
    if let Some(s) = a.schedule {
        t.schedule = Some(match s {
            ScheduleArg::Constant => Schedule::Constant,
            ScheduleArg::Step => Schedule::Step {
                every_epochs: a.lr_step_every,
                gamma: a.lr_gamma,
            },
            ScheduleArg::Cosine => Schedule::Cosine { min_lr: a.min_lr },
            ScheduleArg::Onecycle => Schedule::OneCycle {
                pct_start: a.pct_start,
                div_factor: 25.0,
                final_div_factor: 1e4,
            },
        });
    }
    if let Some(w) = a.warmup_steps {
        t.warmup_steps = Some(w);
    }
    if let Some(m) = a.max_loss {
        t.max_loss = Some(m);
    }
    if let Some(s) = a.quant_lr_scale {
        t.quant_lr_scale = Some(s);
    }
    if let Some(d) = a.quant_delay_epochs {
        t.quant_delay_epochs = Some(d);
    }
    if let Some(d) = a.distill {
        t.distill = Some(d);
    }
    if let Some(d) = a.distill_temperature {
        t.distill_temperature = Some(d);
    }
    if let Some(c) = a.clip_grad_norm {
        t.clip_grad_norm = Some(c);
    }
    let wants_quant = a.quant.weight_bits.is_some() || a.quant_step.is_some();
    if fc.quantization.is_none() && !wants_quant {
        let train_only = [
            ("quantizer", "--quantizer"),
            ("weight_quantizer", "--weight-quantizer"),
            ("act_quantizer", "--act-quantizer"),
            ("bn_fold", "--bn-fold"),
            ("bn_freeze_steps", "--bn-freeze-steps"),
            ("lsq_init", "--lsq-init"),
        ];
        // --calibration-samples alone was always accepted (it has a default and means nothing without PTQ).
        let shared = crate::quantize::QUANT_FLAGS
            .into_iter()
            .filter(|(id, _)| *id != "calibration_samples");
        for (id, flag) in train_only.into_iter().chain(shared) {
            if typed(id) {
                bail!(
                    "invalid {flag}: quantization needs --weight-bits or --quant-step \
                     (or a config file with [quantization])"
                );
            }
        }
        if a.method == MethodArg::Ptq {
            bail!("invalid --method: ptq needs --weight-bits or --quant-step");
        }
    } else {
        let q = fc.quantization.get_or_insert_with(QuantSection::default);
        crate::quantize::apply_quant_args(q, &a.quant, &typed)?;
        if typed("method") || q.method.is_none() {
            q.method = Some(match a.method {
                MethodArg::Qat => MethodName::Qat,
                MethodArg::Ptq => MethodName::Ptq,
            });
        }
        if let Some(k) = a.quant_step {
            q.quant_step = Some(k);
        }
        match a.quantizer {
            Some(QuantizerArg::Ste) => {
                q.weight_quantizer = Some(WeightMethod::Ste);
                q.act_quantizer = Some(ActMethod::Ste);
            }
            Some(QuantizerArg::Lsq) => {
                q.weight_quantizer = Some(WeightMethod::Lsq);
                q.act_quantizer = Some(ActMethod::Lsq);
            }
            Some(QuantizerArg::Pact) => q.act_quantizer = Some(ActMethod::Pact),
            None => {}
        }
        if let Some(w) = a.weight_quantizer {
            q.weight_quantizer = Some(match w {
                WeightQuantizerArg::Ste => WeightMethod::Ste,
                WeightQuantizerArg::Lsq => WeightMethod::Lsq,
            });
        }
        if let Some(w) = a.act_quantizer {
            q.act_quantizer = Some(match w {
                ActQuantizerArg::Ste => ActMethod::Ste,
                ActQuantizerArg::Lsq => ActMethod::Lsq,
                ActQuantizerArg::Pact => ActMethod::Pact,
            });
        }
        if let Some(v) = a.pact_alpha {
            q.pact_alpha = Some(v);
        }
        if let Some(v) = a.pact_l2 {
            q.pact_l2 = Some(v);
        }
        if let Some(b) = a.bn_fold {
            q.bn_fold = Some(match b {
                BnFoldArg::Running => BnFoldName::Running,
                BnFoldArg::Batch => BnFoldName::Batch,
            });
        }
        if let Some(n) = a.bn_freeze_steps {
            q.bn_freeze_steps = Some(n);
        }
        if let Some(i) = a.lsq_init {
            q.lsq_init = Some(match i {
                LsqInitArg::Lsq => LsqInit::Lsq,
                LsqInitArg::Mse => LsqInit::Mse,
            });
        }
    }
    let tcfg = fc.train_config()?;
    let qcfg = fc.quant_config()?;
    Ok((fc, tcfg, qcfg))
}

/// A float model file or an ONNX model (imported in memory with the model's metadata preprocessing).
pub(crate) fn load_float_model(path: &Path) -> Result<Model> {
    load_float_model_with(path, &NormArgs::default())
}

/// [`load_float_model`] with `--input-scale` / `--mean` / `--std` for an ONNX import (a float file without a
/// normalisation takes them; one with its own refuses different ones).
pub(crate) fn load_float_model_with(path: &Path, norm: &NormArgs) -> Result<Model> {
    match modelfile::load_any_with(path, &preprocessing(norm))? {
        AnyModel::Float(m, _) => Ok(*m),
        AnyModel::Quant(_) => bail!(
            "{}: is a quantized .lbq model; a float model is needed here (train without --weight-bits)",
            path.display()
        ),
    }
}

/// The end of a `train` or `quantize` run: the summary and per-layer tables, where the model went, and the JSON
/// report written to `report`.
pub(crate) fn print_run(r: &Report, model: Option<&Path>, report: Option<&Path>) -> Result<()> {
    print_report_summary(r);
    if let Some(path) = model {
        println!("model written to {}", path.display());
    }
    if let Some(path) = report {
        write_json(path, r)?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

fn print_report_summary(r: &Report) {
    let mut t = Table::new(&["", "value"]);
    t.row(vec![
        "test accuracy".into(),
        format!("{} ({})", pct(r.test_accuracy), r.accuracy_source),
    ]);
    if let Some(s) = r.simulated_accuracy {
        t.row(vec!["simulated accuracy".into(), pct(s)]);
    }
    if let Some(m) = r.engine_simulation_mismatches {
        t.row(vec![
            "engine vs simulation".into(),
            format!("{m} differing predictions"),
        ]);
    }
    if let Some(f) = r.fake_quant_accuracy {
        t.row(vec!["fake-quant graph".into(), pct(f)]);
    }
    if let Some(b) = r.baseline_accuracy {
        t.row(vec!["f32 baseline".into(), pct(b)]);
    }
    if let Some(d) = r.accuracy_delta_pp {
        t.row(vec!["difference".into(), format!("{d:+.2} pp")]);
    }
    t.row(vec![
        "model bytes".into(),
        format!(
            "{} (f32 {}, ratio {:.3})",
            r.model_bytes, r.float_bytes, r.compression_ratio
        ),
    ]);
    t.row(vec!["seconds".into(), format!("{:.1}", r.seconds)]);
    print!("{}", t.render());
    if let serde_json::Value::Array(layers) = &r.layers {
        if !layers.is_empty() {
            // PTQ runs say which calibrator chose each layer's ranges.
            let text = |v: &serde_json::Value, k: &str| match v.get(k) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                _ => None,
            };
            let calibrated = layers.iter().any(|l| {
                text(l, "act_calibration").is_some() || text(l, "weight_calibration").is_some()
            });
            let mut head = vec![
                "layer",
                "w bits",
                "a bits",
                "w SQNR dB",
                "act SQNR dB",
                "w clipped",
                "act clipped",
            ];
            if calibrated {
                head.extend(["w calib", "a calib"]);
            }
            let mut lt = Table::new(&head);
            let num = |v: &serde_json::Value, k: &str| -> String {
                match v.get(k) {
                    Some(serde_json::Value::Number(n)) => {
                        let f = n.as_f64().unwrap_or(f64::NAN);
                        if k.contains("clipped") {
                            format!("{:.2}%", f * 100.0)
                        } else if k.contains("bits") {
                            format!("{f}")
                        } else {
                            format!("{f:.1}")
                        }
                    }
                    Some(serde_json::Value::Null) | None => "-".into(),
                    Some(other) => other.to_string(),
                }
            };
            for l in layers {
                let mut row = vec![
                    l.get("layer")
                        .and_then(|v| v.as_str())
                        .unwrap_or("?")
                        .to_string(),
                    num(l, "weight_bits"),
                    num(l, "act_bits"),
                    num(l, "weight_sqnr_db"),
                    num(l, "act_sqnr_db"),
                    num(l, "weight_clipped_fraction"),
                    num(l, "act_clipped_fraction"),
                ];
                if calibrated {
                    for k in ["weight_calibration", "act_calibration"] {
                        row.push(text(l, k).unwrap_or_else(|| "-".into()));
                    }
                }
                lt.row(row);
            }
            println!();
            print!("{}", lt.render());
        }
    }
}

/// Saves the last good weights of a diverged `train` run to `--out`; returns the clause the error line ends with.
///
/// An f32 run saves its float model; a QAT run converts its fake-quant model (ranges frozen as observed so far).
/// A quantized run whose f32 baseline diverged has no quantized weights to save.
fn save_diverged(cfg: &RunConfig, path: &Path, label: &str, mut model: Model) -> String {
    let prov = Provenance {
        dataset: cfg.data.clone(),
        seed: cfg.train.seed,
        test_accuracy: None,
        recipe: format!("{label} (diverged; last good weights)"),
    };
    let result: Result<()> = match &cfg.quant {
        None => modelfile::save_float(&model, &prov, path).map_err(Into::into),
        Some(q) if q.method == Method::Qat && label != "f32" => {
            lowbit::quant::freeze_ranges(&mut model);
            lowbit::quant::convert(&model, prov)
                .map_err(anyhow::Error::from)
                .and_then(|qm| lowbit_runtime::format::save(&qm, path).map_err(Into::into))
        }
        Some(_) => {
            return format!(
                "; the f32 baseline diverged, nothing written to {}",
                path.display()
            )
        }
    };
    match result {
        Ok(()) => format!("; last good weights written to {}", path.display()),
        Err(e) => format!(
            "; could not write last good weights to {}: {e}",
            path.display()
        ),
    }
}

/// The checkpointing `--checkpoint-dir`, `--checkpoint-every` and `--resume` ask for, if any.
fn checkpointing(a: &TrainArgs) -> Result<Option<Checkpointing>> {
    let dir = match (&a.resume, &a.checkpoint_dir) {
        (Some(r), Some(d)) if r != d => bail!(
            "invalid --checkpoint-dir: --resume {} keeps checkpointing in its own directory, not {}",
            r.display(),
            d.display()
        ),
        (Some(dir), _) | (None, Some(dir)) => dir,
        (None, None) if a.checkpoint_every.is_some() => {
            bail!("invalid --checkpoint-every: needs --checkpoint-dir or --resume")
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(Checkpointing::new(
        dir,
        a.checkpoint_every,
        a.resume.is_some(),
    )))
}

/// The data options and preprocessing of a run: a config file's `[input]` overlaid with the flags the user typed.
fn input_settings(
    a: &TrainArgs,
    fc: &FileConfig,
    explicit: &[String],
) -> Result<(DataArg, NormArgs)> {
    let typed = |id: &str| explicit.iter().any(|e| e == id);
    let (mut data, mut norm) = (a.data.clone(), a.norm.clone());
    let file = &fc.input;
    if !typed("image_size") {
        data.image_size = file.image_size()?.or(data.image_size);
    }
    if !typed("layout") {
        data.layout = file.layout()?.unwrap_or(data.layout);
    }
    if !typed("input_scale") {
        norm.input_scale = file.input_scale.or(norm.input_scale);
    }
    if !typed("mean") {
        norm.mean = file.mean.clone().unwrap_or(norm.mean);
    }
    if !typed("std") {
        norm.std = file.std.clone().unwrap_or(norm.std);
    }
    Ok((data, norm))
}

/// `lowbit train`.
pub fn train(a: &TrainArgs, explicit: &[String], quiet: bool) -> Result<()> {
    let (fc, tcfg, quant) = resolve_settings(a, explicit)?;
    let (data_args, norm_args) = input_settings(a, &fc, explicit)?;
    let checkpoints = checkpointing(a)?;
    let data_name = fc.data.clone().unwrap_or_else(|| a.data.data.clone());
    let model_spec = fc.model.clone().unwrap_or_else(|| a.model.clone());
    let init = a
        .init
        .as_deref()
        .map(|p| load_float_model_with(p, &norm_args).context("--init"))
        .transpose()?;
    // A model to fine-tune brings its normalisation; flags that say otherwise are a mistake.
    let norm = match (
        normalization(&norm_args)?,
        init.as_ref().and_then(|m| m.normalization.clone()),
    ) {
        (Some(flags), Some(model)) if flags != model => bail!(
            "invalid --mean/--std: the --init model was trained with mean {:?} and std {:?}",
            model.mean,
            model.std
        ),
        (flags, model) => flags.or(model),
    };
    let split = load_data(&data_name, &data_args, norm)?;
    let cfg = RunConfig {
        data: data_name.clone(),
        model: init.as_ref().map(|m| m.spec.clone()).unwrap_or(model_spec),
        train: tcfg,
        quant,
        init: a.init.as_ref().map(|p| p.display().to_string()),
        baseline: !a.no_baseline,
    };
    if let (Some(_), Some(_), Some(q)) = (&a.plot, &init, &cfg.quant) {
        if q.method == Method::Ptq {
            bail!("invalid --plot: PTQ of a given model (--init) trains nothing to draw");
        }
    }
    let mut bars = Bars::new(quiet);
    let on_event = &mut |e| bars.handle(e);
    let out = match &checkpoints {
        Some(c) => pipeline::run_checkpointed(&cfg, &split, init.as_ref(), c, on_event),
        None => pipeline::run(&cfg, &split, init.as_ref(), None, on_event),
    };
    let mut out = match out {
        Ok(o) => o,
        Err(e @ lowbit::Error::Diverged { .. }) => {
            bars.handle(Event::TrainingFinished);
            let saved = match (&a.out, bars.diverged.take()) {
                (Some(path), Some((label, model))) => save_diverged(&cfg, path, &label, *model),
                _ => String::new(),
            };
            return Err(anyhow!("{e}{saved}"));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(path) = &a.out {
        match &out.quant_model {
            Some(qm) => lowbit_runtime::format::save(qm, path)
                .with_context(|| format!("{}", path.display()))?,
            None => {
                let prov = Provenance {
                    dataset: data_name.clone(),
                    seed: cfg.train.seed,
                    test_accuracy: Some(out.report.test_accuracy),
                    recipe: "f32".into(),
                };
                modelfile::save_float(&out.float_model, &prov, path)?;
            }
        }
        out.report.file_bytes = std::fs::metadata(path).ok().map(|m| m.len());
    }
    let train_count = match lowbit::train::split_indices(&split.train, &cfg.train) {
        Ok((t, v)) if !v.is_empty() => format!("{} train + {} validation", t.len(), v.len()),
        _ => format!("{} train", split.train.n),
    };
    println!(
        "{} on {} ({train_count} / {} test)",
        out.report.run, data_name, split.test.n
    );
    for e in &out.report.epochs {
        let val = e
            .val_accuracy
            .map(|v| format!("  val acc {}", pct(v)))
            .unwrap_or_default();
        println!(
            "  epoch {:>2}  loss {:.4}  train acc {}{val}  {:.2}s",
            e.epoch,
            e.train_loss,
            pct(e.train_accuracy),
            e.seconds
        );
    }
    print_run(&out.report, a.out.as_deref(), a.report.as_deref())?;
    if let Some(path) = &a.plot {
        // Earlier phases of a quantized run are its f32 baseline.
        let last = bars.phases.len().saturating_sub(1);
        for phase in &mut bars.phases[..last] {
            if phase.label == "f32" {
                phase.label = "f32 baseline".into();
            }
        }
        let validation: Vec<f64> = out
            .report
            .epochs
            .iter()
            .filter_map(|e| e.val_accuracy)
            .collect();
        crate::plot::training_curves(
            path,
            &crate::plot::TrainingCurves {
                title: &format!(
                    "{} {} on {data_name}, seed {}",
                    out.report.run, cfg.model, cfg.train.seed
                ),
                phases: &bars.phases,
                validation: &validation,
            },
        )?;
        println!("plot written to {}", path.display());
    }
    Ok(())
}

fn print_metrics(m: &Metrics, names: &[String]) {
    let mut t = Table::new(&["class", "accuracy"]);
    for (c, acc) in m.per_class_accuracy.iter().enumerate() {
        t.row(vec![
            names.get(c).cloned().unwrap_or_else(|| c.to_string()),
            pct(*acc),
        ]);
    }
    print!("{}", t.render());
}

/// `lowbit eval`.
pub fn eval(a: &EvalArgs, _quiet: bool) -> Result<()> {
    let t0 = Instant::now();
    let model = modelfile::load_any(&a.model)?;
    if a.logits.is_some() && matches!(model, AnyModel::Quant(_)) {
        bail!(
            "{}: --logits is for float models (a .lbq's logits are integers: use --predictions)",
            a.model.display()
        );
    }
    let split = load_data(&a.data.data, &a.data, model_normalization(&model))?;
    let names = split.test.class_names();
    let (m, predictions, source, sim, mism, isa, model_bytes, float_bytes) = match &model {
        AnyModel::Quant(qm) => {
            let qe = pipeline::evaluate_quant(qm, &split.test, CLI_ENGINE)
                .with_context(|| a.model.display().to_string())?;
            let mb = lowbit::quant::model_bytes(qm);
            let fb = pipeline::quant_float_bytes(qm);
            (
                qe.metrics,
                qe.predictions,
                "engine",
                Some(qe.simulated_accuracy),
                Some(qe.mismatches),
                Some(qe.isa),
                mb,
                fb,
            )
        }
        AnyModel::Float(fm, _) => {
            let mut fm = (**fm).clone();
            let mut logits = Vec::new();
            let keep = a.logits.as_ref().map(|_| &mut logits);
            let (_, pred) = train::float_logits(&mut fm, &split.test, pipeline::EVAL_BATCH, keep)
                .with_context(|| a.model.display().to_string())?;
            if let Some(path) = &a.logits {
                crate::export::write_logits(path, &logits, split.test.n)?;
            }
            let fb = lowbit::quant::float_bytes(&fm);
            (
                metrics(&pred, &split.test.labels, split.test.classes),
                pred,
                "float",
                None,
                None,
                None,
                fb,
                fb,
            )
        }
    };
    println!(
        "{}: test accuracy {} ({} / {}) on {} [{}]",
        a.model.display(),
        pct(m.accuracy),
        m.correct,
        m.total,
        a.data.data,
        source
    );
    if let (Some(s), Some(mm)) = (sim, mism) {
        println!(
            "integer simulation: {} ({mm} differing predictions)",
            pct(s)
        );
    }
    print_metrics(&m, &names);
    if let Some(path) = &a.predictions {
        crate::export::write_predictions(path, &predictions)?;
    }
    if let Some(path) = &a.report {
        let r = Report {
            lowbit_version: env!("CARGO_PKG_VERSION").into(),
            run: "eval".into(),
            config: serde_json::json!({"model": a.model.display().to_string(), "data": a.data.data}),
            dataset: DatasetInfo {
                name: a.data.data.clone(),
                train_samples: split.train.n,
                test_samples: split.test.n,
                classes: split.test.classes,
            },
            epochs: vec![],
            test_accuracy: m.accuracy,
            accuracy_source: source.into(),
            simulated_accuracy: sim,
            engine_simulation_mismatches: mism,
            fake_quant_accuracy: None,
            baseline_accuracy: None,
            accuracy_delta_pp: None,
            model_bytes,
            float_bytes,
            compression_ratio: model_bytes as f64 / float_bytes.max(1) as f64,
            file_bytes: std::fs::metadata(&a.model).ok().map(|m| m.len()),
            per_class_accuracy: m.per_class_accuracy.clone(),
            class_names: names,
            confusion_matrix: m.confusion.clone(),
            layers: serde_json::Value::Array(vec![]),
            engine_isa: isa,
            kernel_tiers: lowbit::kernel_tiers::KernelTiers::current(),
            seconds: t0.elapsed().as_secs_f64(),
        };
        write_json(path, &r)?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

fn print_normalization(n: Option<&Normalization>) {
    if let Some(n) = n {
        println!(
            "input normalisation: (pixel / 255 - mean) / std per channel, mean {:?}, std {:?}",
            n.mean, n.std
        );
    }
}

/// `lowbit inspect`.
pub fn inspect(path: &Path) -> Result<()> {
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match modelfile::load_any(path)? {
        AnyModel::Quant(qm) => {
            // The file's own version (older versions still load), not the one this build writes.
            let version = lowbit_runtime::format::read_file_metadata(path)
                .ok()
                .and_then(|m| m.get("format_version").cloned())
                .unwrap_or_else(|| "?".into());
            println!(
                "{}: quantized model (lowbit.lbq v{version}), {file_bytes} bytes on disk",
                path.display(),
            );
            println!(
                "input {}x{}x{} u8, scale {:.6} zp {}; {} classes; recipe {}; dataset {}; seed {}; accuracy {}",
                qm.input.channels,
                qm.input.height,
                qm.input.width,
                qm.input.qparams.scale,
                qm.input.qparams.zero_point,
                qm.classes,
                qm.provenance.recipe,
                qm.provenance.dataset,
                qm.provenance.seed,
                qm.provenance.test_accuracy.map(pct).unwrap_or_else(|| "-".into())
            );
            print_normalization(qm.normalization.as_ref());
            let mut t = Table::new(&["#", "node", "reads", "op", "output", "w scales", "bytes"]);
            for (i, n) in lowbit::report::node_summaries(&qm)?.into_iter().enumerate() {
                t.row(vec![
                    i.to_string(),
                    n.name,
                    n.reads.join(", "),
                    n.op,
                    n.output,
                    n.weight_scales.unwrap_or_else(|| "-".into()),
                    n.bytes.to_string(),
                ]);
            }
            print!("{}", t.render());
            println!(
                "parameter bytes {} (f32 equivalent {}, ratio {:.3})",
                lowbit::quant::model_bytes(&qm),
                pipeline::quant_float_bytes(&qm),
                lowbit::quant::model_bytes(&qm) as f64
                    / pipeline::quant_float_bytes(&qm).max(1) as f64
            );
        }
        AnyModel::Float(mut m, prov) => {
            let format = if lowbit::onnx::has_onnx_extension(path) {
                "ONNX, imported in memory"
            } else {
                "lowbit.f32"
            };
            println!(
                "{}: float model ({format}), spec {}, {} parameters, {} bytes on disk; dataset {}; seed {}; accuracy {}",
                path.display(),
                m.spec,
                m.param_count(),
                file_bytes,
                prov.dataset,
                prov.seed,
                prov.test_accuracy.map(pct).unwrap_or_else(|| "-".into())
            );
            print_normalization(m.normalization.as_ref());
            let shapes = m.value_shapes()?;
            let value_name = |v: usize| match v {
                0 => "input".to_string(),
                v => m.nodes[v - 1].name.clone(),
            };
            let mut rows = Vec::with_capacity(m.nodes.len());
            for (i, n) in m.nodes.iter().enumerate() {
                let reads: Vec<String> = n.inputs.iter().map(|&v| value_name(v)).collect();
                let shape: Vec<String> = shapes[i + 1].iter().map(|d| d.to_string()).collect();
                rows.push(vec![
                    i.to_string(),
                    n.name.clone(),
                    reads.join(", "),
                    lowbit::modelfile::describe_layer(&n.layer),
                    shape.join("x"),
                ]);
            }
            let mut t = Table::new(&["#", "node", "reads", "layer", "output", "params"]);
            for (mut row, l) in rows.into_iter().zip(m.layers_mut()) {
                let params: usize = l.params_mut().iter().map(|p| p.value.len()).sum();
                row.push(params.to_string());
                t.row(row);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
}

/// `lowbit demo`: the reference pipeline's comparison table.
pub fn demo(a: &DemoArgs, quiet: bool) -> Result<()> {
    let t0 = Instant::now();
    let split = load_data(&a.data.data, &a.data, None)?;
    let tcfg = TrainConfig {
        epochs: a.epochs,
        batch_size: 32,
        optimizer: OptimizerKind::adam(),
        lr: 1e-3,
        seed: a.seed,
        validation_fraction: None,
        ..TrainConfig::default()
    };
    tcfg.validate()?;
    let spec = "mlp:784-64-10";
    println!(
        "lowbit demo: {spec} on {} ({} train / {} test), {} epochs, Adam 1e-3, batch 32, seed {}",
        a.data.data, split.train.n, split.test.n, a.epochs, a.seed
    );
    let mut bars = Bars::new(quiet);
    let baseline: FloatRun =
        pipeline::train_float(spec, None, &split, &tcfg, &mut |e| bars.handle(e))?;
    let q = |method: Method, w: u32, step: Option<f32>, per_channel: bool| QuantConfig {
        weight_bits: w,
        act_bits: 8,
        per_channel,
        method,
        quant_step: step,
        ..QuantConfig::default()
    };
    let recipes = [
        q(Method::Ptq, 8, None, true),
        q(Method::Ptq, 4, None, true),
        q(Method::Qat, 4, None, true),
        q(Method::Qat, 2, None, true),
        q(Method::Qat, 1, None, true),
        q(Method::Qat, 8, Some(2.0), false),
    ];
    let fb = lowbit::quant::float_bytes(&baseline.model);
    let mut table = Table::new(&[
        "method", "weights", "accuracy", "vs f32", "bytes", "ratio", "seconds",
    ]);
    table.row(vec![
        "f32".into(),
        "f32".into(),
        pct(baseline.metrics.accuracy),
        "-".into(),
        fb.to_string(),
        "1.000".into(),
        format!("{:.1}", baseline.seconds),
    ]);
    let mut reports = Vec::new();
    let mut methods = Vec::new();
    let mut mismatches = 0usize;
    let mut isa = String::new();
    for qc in recipes {
        let cfg = RunConfig {
            data: a.data.data.clone(),
            model: spec.into(),
            train: tcfg.clone(),
            quant: Some(qc.clone()),
            init: None,
            baseline: false,
        };
        // The fixed step k=2 zeroes every Glorot-initialised weight of the first layer (|w|*2 < 0.5), a dead
        // zone no straight-through gradient can leave; like the reference, it starts from the trained f32 model.
        let init = qc.quant_step.map(|_| &baseline.model);
        let out = pipeline::run(&cfg, &split, init, Some(&baseline), &mut |e| bars.handle(e))?;
        let r = &out.report;
        let bits = out
            .quant_model
            .as_ref()
            .and_then(pipeline::stored_weight_bits)
            .unwrap_or(qc.weight_bits);
        let weights = match (qc.quant_step, qc.weight_bits) {
            (Some(_), _) => format!("{bits}-bit grid"),
            (None, 2) => "ternary".into(),
            (None, 1) => "binary".into(),
            (None, b) => format!("int{b}"),
        };
        mismatches += r.engine_simulation_mismatches.unwrap_or(0);
        isa = r.engine_isa.clone().unwrap_or_default();
        table.row(vec![
            r.run.clone(),
            weights,
            pct(r.test_accuracy),
            r.accuracy_delta_pp
                .map(|d| format!("{d:+.2} pp"))
                .unwrap_or_default(),
            r.model_bytes.to_string(),
            format!("{:.3}", r.compression_ratio),
            format!("{:.1}", r.seconds),
        ]);
        reports.push(out.report);
        methods.push(qc.method);
    }
    println!();
    print!("{}", table.render());
    println!(
        "\nQuantized accuracies are measured by the integer engine ({isa}); the independent integer simulation \
         disagreed on {mismatches} of {} test predictions. Total {:.1}s.",
        split.test.n * reports.len(),
        t0.elapsed().as_secs_f64()
    );
    if let Some(path) = &a.plot {
        use crate::plot::{Marker, SizePoint};
        let mut points = vec![SizePoint {
            label: "f32".into(),
            bytes: fb,
            accuracy: baseline.metrics.accuracy,
            marker: Marker::Float,
        }];
        points.extend(reports.iter().zip(&methods).map(|(r, m)| SizePoint {
            label: r.run.clone(),
            bytes: r.model_bytes,
            accuracy: r.test_accuracy,
            marker: match m {
                Method::Ptq => Marker::Ptq,
                Method::Qat => Marker::Qat,
            },
        }));
        crate::plot::accuracy_vs_size(
            path,
            &crate::plot::AccuracyVsSize {
                title: &format!(
                    "{spec} on {}, {} epochs, seed {}: test accuracy (integer engine) vs size",
                    a.data.data, a.epochs, a.seed
                ),
                points: &points,
                test_samples: split.test.n,
                recommended: None,
            },
        )?;
        println!("plot written to {}", path.display());
    }
    if let Some(path) = &a.report {
        let v = serde_json::json!({
            "lowbit_version": env!("CARGO_PKG_VERSION"),
            "data": a.data.data,
            "seed": a.seed,
            "epochs": a.epochs,
            "baseline_accuracy": baseline.metrics.accuracy,
            "baseline_seconds": baseline.seconds,
            "float_bytes": fb,
            "runs": reports,
        });
        write_json(path, &v)?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|&v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// `lowbit predict`.
pub fn predict(a: &PredictArgs) -> Result<()> {
    let model = modelfile::load_any(&a.model)?;
    let (shape, names) = match &model {
        // Models written without class names fall back to their dataset's names.
        AnyModel::Quant(qm) if qm.class_names.is_empty() => (
            [qm.input.channels, qm.input.height, qm.input.width],
            data::class_names(&qm.provenance.dataset),
        ),
        AnyModel::Quant(qm) => (
            [qm.input.channels, qm.input.height, qm.input.width],
            qm.class_names.clone(),
        ),
        AnyModel::Float(m, p) => (m.input_shape, data::class_names(&p.dataset)),
    };
    let [channels, rows, cols] = shape;
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(idx) = &a.idx {
        let imgs = data::read_idx_images(idx)?;
        if channels != 1 || imgs.rows != rows || imgs.cols != cols {
            bail!(
                "{}: images are 1x{}x{}, the model takes {channels}x{rows}x{cols}",
                idx.display(),
                imgs.rows,
                imgs.cols
            );
        }
        if a.index >= imgs.count {
            bail!(
                "invalid --index: {} but {} holds {} images",
                a.index,
                idx.display(),
                imgs.count
            );
        }
        let per = rows * cols;
        inputs.push((
            format!("{}[{}]", idx.display(), a.index),
            imgs.pixels[a.index * per..(a.index + 1) * per].to_vec(),
        ));
    }
    for f in &a.files {
        // PGM (and the exact-size PNG path) for gray models; the `image` crate, resizing as --image-size does,
        // for colour models and JPEG.
        let head = std::fs::File::open(f)
            .and_then(|mut file| {
                let mut b = [0u8; 2];
                std::io::Read::read(&mut file, &mut b).map(|n| b[..n].to_vec())
            })
            .with_context(|| f.display().to_string())?;
        let px = if channels == 1 && (head.starts_with(b"P") || head.starts_with(&[0x89])) {
            data::read_image(f, rows, cols)?
        } else {
            data::folder::read_image_for(f, shape)?
        };
        inputs.push((f.display().to_string(), px));
    }
    if inputs.is_empty() {
        bail!("nothing to predict: give image files or --idx FILE --index I");
    }
    for (name, px) in inputs {
        let logits = match &model {
            AnyModel::Quant(qm) => Engine::new(qm)?.run(&qm.input_codes(&px), 1)?,
            AnyModel::Float(m, _) => {
                let mut m = (**m).clone();
                let mut x = Vec::with_capacity(px.len());
                data::pixels_to_input(&px, shape, m.normalization.as_ref(), &mut x);
                let t = lowbit::tensor::Tensor::new(x, vec![1, channels, rows, cols]);
                m.forward(&t, false)?.data
            }
        };
        let probs = softmax(&logits);
        let best = argmax_rows(&logits, logits.len())[0];
        let label = |c: usize| names.get(c).cloned().unwrap_or_else(|| c.to_string());
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&x, &y| probs[y].total_cmp(&probs[x]));
        let top: Vec<String> = order
            .iter()
            .take(3)
            .map(|&c| format!("{} {:.1}%", label(c), probs[c] * 100.0))
            .collect();
        println!(
            "{name}: {} (class {best}); top: {}",
            label(best),
            top.join(", ")
        );
    }
    Ok(())
}

/// Windows each `lowbit bench` measurement is split into. The best window is the figure the peer scripts report
/// too (their best of 5 repeats), so a stretch in which a shared machine descheduled us does not decide a
/// comparison; the mean over all windows is printed beside it.
const BENCH_WINDOWS: u32 = 5;

/// One `lowbit bench` measurement.
#[derive(Clone, Copy)]
struct Timing {
    /// Samples/s of the best window.
    best: f64,
    /// Seconds per batch in the best window.
    latency: f64,
    /// Samples/s over all windows.
    mean: f64,
}

/// Times each of `sides` (one batch per call) for about `seconds`, in [`BENCH_WINDOWS`] windows of at least 3
/// calls, alternating one window of each: with two sides (the f32 model and the engine) both see the same stretch
/// of a shared machine, so its drift does not land on one side of the ratio.
fn time_sides(
    batch: usize,
    seconds: f64,
    sides: &mut [&mut dyn FnMut() -> Result<()>],
) -> Result<Vec<Timing>> {
    for f in sides.iter_mut() {
        f()?;
    }
    let window = seconds / f64::from(BENCH_WINDOWS);
    let run = |f: &mut dyn FnMut() -> Result<()>, (best, calls, secs): &mut (f64, u64, f64)| {
        let t0 = Instant::now();
        let mut iters = 0u64;
        while t0.elapsed().as_secs_f64() < window || iters < 3 {
            f()?;
            iters += 1;
        }
        let el = t0.elapsed().as_secs_f64();
        *best = best.min(el / iters as f64);
        *calls += iters;
        *secs += el;
        Ok::<(), anyhow::Error>(())
    };
    let mut acc = vec![(f64::INFINITY, 0u64, 0.0f64); sides.len()];
    for _ in 0..BENCH_WINDOWS {
        for (f, a) in sides.iter_mut().zip(&mut acc) {
            run(*f, a)?;
        }
    }
    Ok(acc
        .into_iter()
        .map(|(latency, calls, secs)| Timing {
            best: batch as f64 / latency,
            latency,
            mean: (calls * batch as u64) as f64 / secs,
        })
        .collect())
}

/// Peak resident set of this process in KiB: the kernel's high-water mark `VmHWM` (Linux), which the peer scripts
/// read too (`getrusage`'s `ru_maxrss` would carry a parent's peak across `execve`).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `lowbit bench`.
pub fn bench(a: &BenchArgs) -> Result<()> {
    let qm = match modelfile::load_any(&a.model)? {
        AnyModel::Quant(q) => *q,
        AnyModel::Float(..) => bail!("{}: bench needs a quantized .lbq model", a.model.display()),
    };
    if a.batch.contains(&0) {
        bail!("invalid --batch: batch sizes must be at least 1");
    }
    if !(a.seconds.is_finite() && a.seconds > 0.0) {
        bail!("invalid --seconds: must be a positive number");
    }
    let engine = Engine::with_options(&qm, CLI_ENGINE)?;
    let mut float_model = match a.engine_only {
        true => None,
        false => Some(lowbit::quant::dequantize(&qm)?),
    };
    let split = data::load(&DataSource::Builtin)?;
    let per = qm.input.features();
    let mut t = Table::new(if a.engine_only {
        &["batch", "int samples/s", "int latency", "int mean/s"]
    } else {
        &[
            "batch",
            "f32 samples/s",
            "f32 latency",
            "int samples/s",
            "int latency",
            "speed-up",
            "f32 mean/s",
            "int mean/s",
            "mean speed-up",
        ]
    });
    for &b in &a.batch {
        // Sample images centred in the model's input and repeated over its channels (the images themselves when
        // the model takes 28x28x1), normalised and coded as the model says.
        let shape = [qm.input.channels, qm.input.height, qm.input.width];
        let mut pixels = Vec::with_capacity(b * per);
        for i in 0..b {
            split
                .test
                .fitted_image(i % split.test.n, shape, &mut pixels);
        }
        let input = qm.input_codes(&pixels).into_owned();
        let mut int = || {
            std::hint::black_box(engine.run(&input, b)?);
            Ok(())
        };
        let Some(float_model) = float_model.as_mut() else {
            let [i] = time_sides(b, a.seconds, &mut [&mut int])?[..] else {
                unreachable!("one side timed")
            };
            t.row(vec![
                b.to_string(),
                format!("{:.0}", i.best),
                format!("{:.2} us", i.latency * 1e6),
                format!("{:.0}", i.mean),
            ]);
            continue;
        };
        let mut x = Vec::with_capacity(pixels.len());
        data::pixels_to_input(&pixels, shape, qm.normalization.as_ref(), &mut x);
        let xt = lowbit::tensor::Tensor::new(x, vec![b, shape[0], shape[1], shape[2]]);
        let mut float = || {
            std::hint::black_box(float_model.forward(&xt, false)?);
            Ok(())
        };
        let [f, i] = time_sides(b, a.seconds, &mut [&mut float, &mut int])?[..] else {
            unreachable!("two sides timed")
        };
        t.row(vec![
            b.to_string(),
            format!("{:.0}", f.best),
            format!("{:.2} us", f.latency * 1e6),
            format!("{:.0}", i.best),
            format!("{:.2} us", i.latency * 1e6),
            format!("{:.2}x", i.best / f.best),
            format!("{:.0}", f.mean),
            format!("{:.0}", i.mean),
            format!("{:.2}x", i.mean / f.mean),
        ]);
    }
    println!(
        "{}: integer kernel {} ({} rayon threads)",
        a.model.display(),
        lowbit_runtime::kernels::active_isa(),
        rayon::current_num_threads()
    );
    println!(
        "kernel tiers: {} (LOWBIT_ISA={})",
        lowbit::kernel_tiers::KernelTiers::current(),
        std::env::var("LOWBIT_ISA").unwrap_or_else(|_| "unset".into())
    );
    for path in engine.kernel_paths() {
        println!("  {path}");
    }
    print!("{}", t.render());
    match peak_rss_kib() {
        Some(kib) => println!(
            "peak RSS: {:.1} MiB (this process: {})",
            kib as f64 / 1024.0,
            match a.engine_only {
                true => "engine, sample data, its buffers",
                false => "f32 model, engine, sample data, both sides' buffers",
            }
        ),
        None => println!("peak RSS: unavailable (no /proc/self/status)"),
    }
    println!(
        "samples/s and latency: best of {BENCH_WINDOWS} windows of {:.2} s each{} (the peer scripts' estimator); \
         mean: over all windows",
        a.seconds / f64::from(BENCH_WINDOWS),
        match a.engine_only {
            true => ", the engine alone",
            false => ", f32 and engine windows alternating",
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit::quant::{convert, ptq};
    use lowbit::tensor::Tensor;

    #[test]
    fn bench_float_twin_of_a_quantized_lenet_computes_the_engine_logits_up_to_activation_rounding(
    ) -> Result<()> {
        let split = data::load(&DataSource::Builtin)?;
        let n = 64;
        let pixels: Vec<u8> = (0..n).flat_map(|i| split.test.image(i).to_vec()).collect();
        let x = Tensor::new(
            pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
            vec![n, 1, 28, 28],
        );
        let cfg = QuantConfig {
            method: Method::Ptq,
            ..QuantConfig::default()
        };
        let prepared = ptq(
            &Model::from_spec("lenet5", 7)?,
            &cfg,
            std::slice::from_ref(&x),
        )?;
        let qm = convert(&prepared, Provenance::default())?;
        let want = Engine::new(&qm)?.run(&pixels, n)?;
        let got = lowbit::quant::dequantize(&qm)?.forward(&x, false)?;
        assert_eq!(got.data.len(), want.len());
        let err: f32 = got
            .data
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).powi(2))
            .sum();
        let norm: f32 = want.iter().map(|b| b * b).sum();
        // 8-bit activations on every layer leave a few percent of relative error; a wrong weight layout, a lost
        // ReLU or a bias off by a scale gives errors of order one.
        assert!(
            norm > 0.0 && (err / norm).sqrt() < 0.1,
            "relative error {}",
            (err / norm).sqrt()
        );
        Ok(())
    }
}
