//! The recipes the CLI runs, as library calls: train in f32 or quantized (QAT / PTQ), convert, evaluate on the
//! integer engine, cross-check with the integer simulation, and build the report.
use crate::checkpoint::Checkpointing;
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::eval::{metrics, Metrics};
use crate::nn::Model;
use crate::quant::{self, ActMethod, Method, QuantConfig, WeightMethod};
use crate::report::{DatasetInfo, EpochRecord, Report};
use crate::tensor::Tensor;
use crate::train::{self, EpochStats, Progress, Samples, TrainConfig};
use lowbit_runtime::engine::{Engine, EngineOptions};
use lowbit_runtime::model::Provenance;
use lowbit_runtime::QuantModel;
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// Inference batch for evaluation passes.
pub const EVAL_BATCH: usize = 256;

impl Samples for Dataset {
    fn len(&self) -> usize {
        self.n
    }
    fn sample_shape(&self) -> [usize; 3] {
        self.shape()
    }
    fn write_sample(&self, index: usize, out: &mut [f32]) {
        let image = self.image(index);
        match &self.normalization {
            None => {
                for (o, &p) in out.iter_mut().zip(image) {
                    *o = f32::from(p) / 255.0;
                }
            }
            Some(n) => {
                let plane = (self.rows * self.cols).max(1);
                for (i, (o, &p)) in out.iter_mut().zip(image).enumerate() {
                    *o = n.value(i / plane, p);
                }
            }
        }
    }
    fn label(&self, index: usize) -> u8 {
        self.labels[index]
    }
}

/// Everything one run needs, fully resolved (serialized into the report's `config`).
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// Data source name.
    pub data: String,
    /// Model spec.
    pub model: String,
    /// Training hyper-parameters.
    pub train: TrainConfig,
    /// Quantization, or `None` for a plain f32 run.
    pub quant: Option<QuantConfig>,
    /// Float model to start from (QAT fine-tuning, or PTQ without retraining).
    pub init: Option<String>,
    /// Train an f32 baseline with the same seed for comparison.
    pub baseline: bool,
}

/// What the caller is told while a run goes on.
#[derive(Debug, Clone)]
pub enum Event {
    /// A training phase starts: its label and total steps.
    TrainingStarted {
        /// e.g. `f32 baseline`, `QAT W4A8`.
        label: String,
        /// Total optimizer steps.
        total_steps: usize,
    },
    /// One training step done.
    Step(Progress),
    /// One AdaRound iteration done (PTQ with `adaround`).
    AdaRound(quant::AdaRoundProgress),
    /// The phase finished.
    TrainingFinished,
    /// The phase stopped on a non-finite loss or gradient; `model` holds the last good weights (end of the last
    /// completed epoch, or the initial weights), so the caller can still save them.
    Diverged {
        /// The phase's label, as in [`Event::TrainingStarted`].
        label: String,
        /// The model with its last good weights.
        model: Box<Model>,
    },
}

/// A trained float model and its facts.
#[derive(Debug, Clone)]
pub struct FloatRun {
    /// The model.
    pub model: Model,
    /// Training history.
    pub epochs: Vec<EpochStats>,
    /// Test metrics in f32.
    pub metrics: Metrics,
    /// Wall time.
    pub seconds: f64,
}

/// Accuracy of a quantized model measured by the engine and cross-checked by the simulation.
#[derive(Debug, Clone)]
pub struct QuantEval {
    /// Metrics of the integer engine's predictions (the reported accuracy).
    pub metrics: Metrics,
    /// Accuracy of the library's independent integer simulation.
    pub simulated_accuracy: f64,
    /// Test images where engine and simulation predictions differ.
    pub mismatches: usize,
    /// Kernel tier that ran.
    pub isa: String,
    /// The engine's predicted class of each test image, in order.
    pub predictions: Vec<usize>,
}

/// Output of [`run`].
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The report.
    pub report: Report,
    /// The trained float model (f32 run), or the float shadow of the quantized model.
    pub float_model: Model,
    /// The quantized model, for quantized runs.
    pub quant_model: Option<QuantModel>,
}

/// Steps per epoch for the progress bar; 0 when the split is invalid ([`train::train`] reports why).
fn steps_per_epoch(data: &Dataset, cfg: &TrainConfig) -> usize {
    train::split_indices(data, cfg)
        .map_or(0, |(t, _)| t.len())
        .div_ceil(cfg.batch_size.max(1))
}

/// Names of the training phases a run checkpoints: the f32 model (or the baseline of a quantized run), and QAT.
pub const PHASES: [&str; 2] = ["f32", "qat"];

fn train_with_events(
    model: &mut Model,
    teacher: Option<&Model>,
    data: &Dataset,
    cfg: &TrainConfig,
    label: &str,
    checkpoints: Option<(&Checkpointing, &str)>,
    on_event: &mut dyn FnMut(Event),
) -> Result<Vec<EpochStats>> {
    on_event(Event::TrainingStarted {
        label: label.to_string(),
        total_steps: steps_per_epoch(data, cfg) * cfg.epochs,
    });
    let r = train::train_distilled(model, teacher, data, cfg, checkpoints, &mut |p| {
        on_event(Event::Step(p))
    });
    on_event(Event::TrainingFinished);
    if let Err(Error::Diverged { .. }) = &r {
        on_event(Event::Diverged {
            label: label.to_string(),
            model: Box::new(model.clone()),
        });
    }
    r
}

/// Trains a float model from `spec` (or continues from `init`) and measures its test metrics.
pub fn train_float(
    spec: &str,
    init: Option<&Model>,
    split: &Split,
    cfg: &TrainConfig,
    on_event: &mut dyn FnMut(Event),
) -> Result<FloatRun> {
    train_float_checkpointed(spec, init, split, cfg, None, on_event)
}

/// A fresh model of `spec` for the data of `split`: its image shape, class count and input normalisation.
pub fn model_for(spec: &str, seed: u64, split: &Split) -> Result<Model> {
    let d = &split.train;
    let mut m = Model::from_spec_for(spec, seed, d.shape(), d.classes.max(split.test.classes))?;
    if let Some(n) = &d.normalization {
        n.check_channels(d.channels)?;
    }
    m.normalization = d.normalization.clone();
    Ok(m)
}

/// [`train_float`] checkpointing as phase `f32`.
fn train_float_checkpointed(
    spec: &str,
    init: Option<&Model>,
    split: &Split,
    cfg: &TrainConfig,
    checkpoints: Option<&Checkpointing>,
    on_event: &mut dyn FnMut(Event),
) -> Result<FloatRun> {
    let t0 = Instant::now();
    let mut model = match init {
        Some(m) => m.clone(),
        None => model_for(spec, cfg.seed, split)?,
    };
    let checkpoints = checkpoints.map(|c| (c, PHASES[0]));
    // The baseline of a distilled QAT run is the teacher: it learns from the labels.
    let cfg = &TrainConfig {
        distill: None,
        ..cfg.clone()
    };
    let epochs = train_with_events(
        &mut model,
        None,
        &split.train,
        cfg,
        "f32",
        checkpoints,
        on_event,
    )?;
    let (_, pred) = train::evaluate_float(&mut model, &split.test, EVAL_BATCH)?;
    Ok(FloatRun {
        metrics: metrics(&pred, &split.test.labels, split.test.classes),
        model,
        epochs,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Runs a quantized model on the integer engine (with `options`) over `test`, and the independent simulation
/// alongside.
pub fn evaluate_quant(
    qm: &QuantModel,
    test: &Dataset,
    options: EngineOptions,
) -> Result<QuantEval> {
    let engine = Engine::with_options(qm, options)?;
    let per = test.image_len();
    if per != qm.input.features() {
        return Err(Error::Shape(format!(
            "model takes {} input features, data has {}x{}x{} images",
            qm.input.features(),
            test.channels,
            test.rows,
            test.cols
        )));
    }
    let starts: Vec<usize> = (0..test.n).step_by(EVAL_BATCH).collect();
    let codes = |start: usize| {
        let b = EVAL_BATCH.min(test.n - start);
        (
            qm.input_codes(&test.images[start * per..(start + b) * per]),
            b,
        )
    };
    let mut engine_pred = Vec::with_capacity(test.n);
    for &start in &starts {
        let (input, b) = codes(start);
        engine_pred.extend(engine.predict(&input, b)?);
    }
    // The simulation is scalar and single-threaded (it is the independent reference), so its batches run side
    // by side; each batch's predictions land in order.
    let sim_batches = starts
        .par_iter()
        .map(|&start| {
            let (input, b) = codes(start);
            let sim = quant::simulate_with(qm, &input, b, false)?;
            Ok(crate::eval::argmax_rows(&sim.logits, qm.classes))
        })
        .collect::<Result<Vec<_>>>()?;
    let sim_pred: Vec<usize> = sim_batches.into_iter().flatten().collect();
    let sim_metrics = metrics(&sim_pred, &test.labels, test.classes);
    let mismatches = engine_pred
        .iter()
        .zip(&sim_pred)
        .filter(|(a, b)| a != b)
        .count();
    Ok(QuantEval {
        metrics: metrics(&engine_pred, &test.labels, test.classes),
        simulated_accuracy: sim_metrics.accuracy,
        mismatches,
        isa: lowbit_runtime::kernels::active_isa().to_string(),
        predictions: engine_pred,
    })
}

/// Up to `n` samples as f32 batches, for calibration and diagnostics. Samples are spread evenly over the set
/// (not the first `n`), so a set stored sorted by class, like `builtin`, still gives every class.
pub fn sample_batches(data: &Dataset, n: usize, batch: usize) -> Vec<Tensor> {
    let n = n.min(data.n);
    let per = data.image_len();
    let pick = |i: usize| i * data.n / n.max(1);
    (0..n)
        .step_by(batch.max(1))
        .map(|s| {
            let b = batch.min(n - s);
            let mut x = vec![0.0f32; b * per];
            for i in 0..b {
                data.write_sample(pick(s + i), &mut x[i * per..(i + 1) * per]);
            }
            Tensor::new(x, vec![b, data.channels, data.rows, data.cols])
        })
        .collect()
}

fn epoch_records(epochs: &[EpochStats]) -> Vec<EpochRecord> {
    epochs
        .iter()
        .map(|e| EpochRecord {
            epoch: e.epoch,
            train_loss: f64::from(e.train_loss),
            train_accuracy: f64::from(e.train_accuracy),
            seconds: e.seconds,
            val_accuracy: e.val_accuracy.map(f64::from),
        })
        .collect()
}

fn dataset_info(split: &Split, data: &str) -> DatasetInfo {
    DatasetInfo {
        name: data.to_string(),
        train_samples: split.train.n,
        test_samples: split.test.n,
        classes: split.test.classes,
    }
}

/// A short label such as `QAT W4A8`, `PTQ W8A8`, `PTQ W4A8 act=entropy weights=mse`, `QAT k=2 (W3A8)`, `f32`
/// (calibrators are named when they are not min-max).
pub fn label(quant: Option<&QuantConfig>, weight_bits_stored: Option<u32>) -> String {
    match quant {
        None => "f32".into(),
        Some(q) => {
            let mut method = match q.method {
                Method::Qat => "QAT".to_string(),
                Method::Ptq => "PTQ".to_string(),
            };
            let learned = match (q.weight_quantizer, q.act_quantizer) {
                (WeightMethod::Lsq, ActMethod::Lsq) => " LSQ",
                (WeightMethod::Lsq, ActMethod::Pact) => " LSQ+PACT",
                (WeightMethod::Lsq, ActMethod::Ste) => " LSQ-weights",
                (WeightMethod::Ste, ActMethod::Lsq) => " LSQ-acts",
                (WeightMethod::Ste, ActMethod::Pact) => " PACT",
                (WeightMethod::Ste, ActMethod::Ste) => "",
            };
            method.push_str(learned);
            if !q.layers.is_empty() {
                method.push_str(" mixed");
            }
            let w = match (q.quant_step, weight_bits_stored) {
                (Some(k), Some(b)) => format!("k={k} (W{b}A{})", q.act_bits),
                (Some(k), None) => format!("k={k} A{}", q.act_bits),
                (None, _) => {
                    let name = match q.weight_bits {
                        _ if q.weight_quantizer == WeightMethod::Lsq => "",
                        2 => " ternary",
                        1 => " binary",
                        _ => "",
                    };
                    format!("W{}A{}{name}", q.weight_bits, q.act_bits)
                }
            };
            let mut out = format!("{method} {w}");
            if q.calibration != quant::Calibrator::MinMax {
                out.push_str(&format!(" act={}", q.calibration));
            }
            if q.weight_calibration != quant::WeightCalibration::MinMax {
                out.push_str(&format!(" weights={}", q.weight_calibration));
            }
            if q.adaround {
                out.push_str(" adaround");
            }
            if q.bias_correction {
                out.push_str(" bias-corrected");
            }
            out
        }
    }
}

/// Stored weight bit width of a quantized model (the widest layer).
pub fn stored_weight_bits(qm: &QuantModel) -> Option<u32> {
    qm.ops()
        .filter_map(|l| match l {
            lowbit_runtime::model::QOp::Dense(d) => Some(d.weights.bits),
            lowbit_runtime::model::QOp::Conv2d(c) => Some(c.weights.bits),
            _ => None,
        })
        .max()
}

/// Runs one recipe: f32 training, or quantization by QAT (from scratch or from `init`) or PTQ (of `init`, of
/// the given `baseline`, or of a freshly trained f32 model). `baseline` is a float run with the same seed, reused
/// across runs by the demo; when it is `None` and `cfg.baseline` is set, one is trained here.
pub fn run(
    cfg: &RunConfig,
    split: &Split,
    init: Option<&Model>,
    baseline: Option<&FloatRun>,
    on_event: &mut dyn FnMut(Event),
) -> Result<RunOutput> {
    run_with(cfg, split, init, baseline, None, on_event)
}

/// [`run`] (training its own baseline if it needs one) with each training phase checkpointed to, and with
/// `checkpoints.resume` resumed from, `checkpoints.dir` ([`PHASES`] name the files). The run's settings (`cfg`,
/// as JSON) replace `checkpoints.settings`: a checkpoint is resumed only by a run with the same settings. The
/// directory is checked ([`Checkpointing::prepare`]) before anything trains.
pub fn run_checkpointed(
    cfg: &RunConfig,
    split: &Split,
    init: Option<&Model>,
    checkpoints: &Checkpointing,
    on_event: &mut dyn FnMut(Event),
) -> Result<RunOutput> {
    let checkpoints = Checkpointing {
        settings: serde_json::to_string(cfg).map_err(|e| Error::Shape(e.to_string()))?,
        ..checkpoints.clone()
    };
    checkpoints.prepare(&PHASES)?;
    run_with(cfg, split, init, None, Some(&checkpoints), on_event)
}

fn run_with(
    cfg: &RunConfig,
    split: &Split,
    init: Option<&Model>,
    baseline: Option<&FloatRun>,
    checkpoints: Option<&Checkpointing>,
    on_event: &mut dyn FnMut(Event),
) -> Result<RunOutput> {
    let t0 = Instant::now();
    let config = serde_json::to_value(cfg).map_err(|e| Error::Shape(e.to_string()))?;
    let ptq = cfg.quant.as_ref().is_some_and(|q| q.method == Method::Ptq);
    if cfg.train.distill.is_some() && (cfg.quant.is_none() || ptq) {
        return Err(Error::option(
            "--distill",
            "distillation is for quantization-aware training (QAT with --weight-bits), from a float model",
        ));
    }
    let Some(qcfg) = &cfg.quant else {
        let fr =
            train_float_checkpointed(&cfg.model, init, split, &cfg.train, checkpoints, on_event)?;
        let fb = quant::float_bytes(&fr.model);
        let report = Report {
            lowbit_version: env!("CARGO_PKG_VERSION").into(),
            run: "f32".into(),
            config,
            dataset: dataset_info(split, &cfg.data),
            epochs: epoch_records(&fr.epochs),
            test_accuracy: fr.metrics.accuracy,
            accuracy_source: "float".into(),
            simulated_accuracy: None,
            engine_simulation_mismatches: None,
            fake_quant_accuracy: None,
            baseline_accuracy: Some(fr.metrics.accuracy),
            accuracy_delta_pp: Some(0.0),
            model_bytes: fb,
            float_bytes: fb,
            compression_ratio: 1.0,
            file_bytes: None,
            per_class_accuracy: fr.metrics.per_class_accuracy.clone(),
            class_names: split.test.class_names(),
            confusion_matrix: fr.metrics.confusion.clone(),
            layers: serde_json::Value::Array(vec![]),
            engine_isa: None,
            kernel_tiers: crate::kernel_tiers::KernelTiers::current(),
            seconds: t0.elapsed().as_secs_f64(),
        };
        return Ok(RunOutput {
            report,
            float_model: fr.model,
            quant_model: None,
        });
    };
    qcfg.validate()?;
    // The f32 reference: given by the caller; the init model itself (fine-tuning or PTQ of a file); or trained
    // here with the same seed.
    let owned_baseline;
    let baseline: Option<&FloatRun> = match (baseline, init) {
        (Some(b), _) => Some(b),
        (None, Some(m)) => {
            let t = Instant::now();
            let mut m = m.clone();
            let (_, pred) = train::evaluate_float(&mut m, &split.test, EVAL_BATCH)?;
            owned_baseline = FloatRun {
                metrics: metrics(&pred, &split.test.labels, split.test.classes),
                model: m,
                epochs: Vec::new(),
                seconds: t.elapsed().as_secs_f64(),
            };
            Some(&owned_baseline)
        }
        (None, None) if qcfg.method == Method::Ptq || cfg.baseline => {
            owned_baseline = train_float_checkpointed(
                &cfg.model,
                None,
                split,
                &cfg.train,
                checkpoints,
                on_event,
            )?;
            Some(&owned_baseline)
        }
        (None, None) => None,
    };
    let (mut model, epochs) = match qcfg.method {
        Method::Ptq => {
            let src: &Model = match (init, baseline) {
                (Some(m), _) => m,
                (None, Some(b)) => &b.model,
                (None, None) => {
                    return Err(Error::option("--method", "ptq needs a trained float model"))
                }
            };
            let calib = sample_batches(&split.train, qcfg.calibration_samples, EVAL_BATCH);
            let epochs = if init.is_some() {
                Vec::new()
            } else {
                baseline.map(|b| b.epochs.clone()).unwrap_or_default()
            };
            let q = quant::ptq_with_progress(src, qcfg, &calib, cfg.train.seed, &mut |p| {
                on_event(Event::AdaRound(p.clone()))
            })?;
            (q, epochs)
        }
        Method::Qat => {
            let mut m = match init {
                Some(m) => m.clone(),
                None => model_for(&cfg.model, cfg.train.seed, split)?,
            };
            quant::prepare_qat(&mut m, qcfg)?;
            let teacher = match (cfg.train.distill, init, baseline) {
                (None, _, _) => None,
                (Some(_), Some(t), _) => Some(t),
                (Some(_), None, Some(b)) => Some(&b.model),
                (Some(_), None, None) => {
                    return Err(Error::option(
                        "--distill",
                        "needs a float teacher: start from --init, or keep the f32 baseline",
                    ))
                }
            };
            let epochs = train_with_events(
                &mut m,
                teacher,
                &split.train,
                &cfg.train,
                &label(Some(qcfg), None),
                checkpoints.map(|c| (c, PHASES[1])),
                on_event,
            )?;
            quant::freeze_ranges(&mut m);
            (m, epochs)
        }
    };
    let suffix = if init.is_some() && qcfg.method == Method::Qat {
        " from f32"
    } else {
        ""
    };
    let provenance = Provenance {
        dataset: cfg.data.clone(),
        seed: cfg.train.seed,
        test_accuracy: None,
        recipe: label(Some(qcfg), None) + suffix,
    };
    let mut qm = quant::convert(&model, provenance)?;
    // Sources with their own class names (image folders, CIFAR) travel with the deployed model.
    if split.test.names.len() == qm.classes {
        qm.class_names = split.test.names.clone();
    }
    let qe = evaluate_quant(&qm, &split.test, EngineOptions::default())?;
    qm.provenance.test_accuracy = Some(qe.metrics.accuracy);
    qm.provenance.recipe = label(Some(qcfg), stored_weight_bits(&qm)) + suffix;
    let (fake_acc, _) = train::evaluate_float(&mut model, &split.test, EVAL_BATCH)?;
    let diag = sample_batches(&split.test, 2000, EVAL_BATCH);
    let layers = quant::layer_quant_stats(&model, &diag)?;
    let model_bytes = quant::model_bytes(&qm);
    let float_bytes = quant::float_bytes(&model);
    let baseline_accuracy = baseline.map(|b| b.metrics.accuracy);
    let report = Report {
        lowbit_version: env!("CARGO_PKG_VERSION").into(),
        run: qm.provenance.recipe.clone(),
        config,
        dataset: dataset_info(split, &cfg.data),
        epochs: epoch_records(&epochs),
        test_accuracy: qe.metrics.accuracy,
        accuracy_source: "engine".into(),
        simulated_accuracy: Some(qe.simulated_accuracy),
        engine_simulation_mismatches: Some(qe.mismatches),
        fake_quant_accuracy: Some(fake_acc),
        baseline_accuracy,
        accuracy_delta_pp: baseline_accuracy.map(|b| (qe.metrics.accuracy - b) * 100.0),
        model_bytes,
        float_bytes,
        compression_ratio: model_bytes as f64 / float_bytes.max(1) as f64,
        file_bytes: None,
        per_class_accuracy: qe.metrics.per_class_accuracy.clone(),
        class_names: split.test.class_names(),
        confusion_matrix: qe.metrics.confusion.clone(),
        layers: serde_json::to_value(&layers).unwrap_or_default(),
        engine_isa: Some(qe.isa.clone()),
        kernel_tiers: crate::kernel_tiers::KernelTiers::current(),
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok(RunOutput {
        report,
        float_model: model,
        quant_model: Some(qm),
    })
}

/// f32 bytes of the parameters of a quantized model (4 per weight and per bias), the denominator of its
/// compression ratio.
pub fn quant_float_bytes(qm: &QuantModel) -> usize {
    qm.ops()
        .map(|l| match l {
            lowbit_runtime::model::QOp::Dense(d) => {
                4 * (d.weights.rows * d.weights.cols + d.bias.len())
            }
            lowbit_runtime::model::QOp::Conv2d(c) => {
                4 * (c.weights.rows * c.weights.cols + c.bias.len())
            }
            _ => 0,
        })
        .sum()
}
