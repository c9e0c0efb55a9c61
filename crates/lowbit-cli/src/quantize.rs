//! `lowbit quantize`: the one-call path from a float model (ONNX, imported in memory, or a lowbit float file) to a
//! deployable `.lbq`, and the quantization flags it shares with `train`.
//!
//! It is `train --method ptq --init MODEL` without the training flags: the same [`QuantArgs`] (flattened into both
//! commands), the same settings merge ([`apply_quant_args`]), the same pipeline run, report and tables
//! ([`crate::commands::print_run`]).
use crate::commands::{load_data, load_float_model_with, print_run, Bars};
use crate::{parse_calibrator, parse_weight_calibration, DataArg, NormArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use lowbit::config_file::{FileConfig, MethodName, QuantSection};
use lowbit::pipeline::{self, RunConfig};
use std::path::PathBuf;

/// The quantization flags of `train` and `quantize` (PTQ's whole vocabulary; `train` adds the QAT ones).
#[derive(Args, Debug, Clone, Default)]
pub struct QuantArgs {
    /// Weight bit width 1..=8 (2 = ternary, 1 = binary). train: omit (and omit --quant-step) to train in f32;
    /// quantize: default 8.
    #[arg(long)]
    pub weight_bits: Option<u32>,
    /// Activation bit width 1..=8 (default 8 when quantizing).
    #[arg(long)]
    pub act_bits: Option<u32>,
    /// One weight scale per output channel instead of one per layer.
    #[arg(long)]
    pub per_channel: bool,
    /// Per-layer bit widths (mixed precision): `LAYER:WBITS[:ABITS]`, comma separated; LAYER is a weight-layer
    /// index (negative from the end), `first` or `last`. Example: `first:8:8,last:8`.
    #[arg(long, value_delimiter = ',')]
    pub layer_bits: Vec<String>,
    /// Keep the first and the last weight layer at 8 bits (min-max weights), with the first layer's output and
    /// the last layer's input quantized at 8 bits: the usual setting of 2- to 4-bit networks.
    #[arg(long)]
    pub first_last_8bit: bool,
    /// Bits of the activations that only feed a residual add (the branch before its sum, a 1x1 shortcut, an
    /// added linear bottleneck), 2..=8; default: --act-bits. With --add-bits 8, --act-bits counts the inputs
    /// of weight layers only, as in the LSQ and PACT papers.
    #[arg(long, value_name = "BITS")]
    pub add_bits: Option<u32>,
    /// Training samples used to calibrate activation ranges (PTQ).
    #[arg(long, default_value_t = 2000)]
    pub calibration_samples: usize,
    /// PTQ activation calibrator: `minmax` (observed range), `percentile:P` (e.g. percentile:99.99), `mse`
    /// (least squared quantization error) or `entropy` (TensorRT's KL divergence, 2048-bin histograms).
    /// Per layer: `calibration` in a config file's [[quantization.layers]].
    #[arg(long, value_name = "CALIBRATOR", value_parser = parse_calibrator)]
    pub calibration: Option<lowbit::quant::Calibrator>,
    /// PTQ weight scales: `minmax` (max |w|) or `mse` (clipping ratio with least squared error, per channel
    /// with --per-channel); min-max weights only (3..=8 bits).
    #[arg(long, value_name = "RULE", value_parser = parse_weight_calibration)]
    pub weight_calibration: Option<lowbit::quant::WeightCalibration>,
    /// PTQ empirical bias correction: each layer's bias absorbs the mean shift quantization causes in its
    /// outputs on the calibration samples (Nagel et al. 2019), layer after layer.
    #[arg(long)]
    pub bias_correction: bool,
    /// PTQ AdaRound (Nagel et al. 2020): learn per weight whether to round up or down so that each layer's
    /// output on the calibration samples stays close to the float model's; min-max or ternary weights.
    #[arg(long)]
    pub adaround: bool,
    /// AdaRound Adam iterations per layer (default 1000).
    #[arg(long, value_name = "N")]
    pub adaround_iters: Option<usize>,
    /// AdaRound time budget in seconds for all layers: each layer runs as many iterations (at most
    /// --adaround-iters) as fit its share (the result then depends on the machine's speed).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub adaround_seconds: Option<f64>,
}

/// The flag ids of [`QuantArgs`] with their spellings, for "needs --weight-bits" messages.
pub const QUANT_FLAGS: [(&str, &str); 12] = [
    ("act_bits", "--act-bits"),
    ("layer_bits", "--layer-bits"),
    ("first_last_8bit", "--first-last-8bit"),
    ("add_bits", "--add-bits"),
    ("per_channel", "--per-channel"),
    ("calibration", "--calibration"),
    ("weight_calibration", "--weight-calibration"),
    ("bias_correction", "--bias-correction"),
    ("adaround", "--adaround"),
    ("adaround_iters", "--adaround-iters"),
    ("adaround_seconds", "--adaround-seconds"),
    ("calibration_samples", "--calibration-samples"),
];

/// Overlays the flags of `a` on `q` (a config file's section or an empty one): a flag typed on the command line
/// (`typed(id)`) wins; a flag left at its default fills only what `q` leaves open.
pub fn apply_quant_args(
    q: &mut QuantSection,
    a: &QuantArgs,
    typed: &dyn Fn(&str) -> bool,
) -> Result<()> {
    if let Some(b) = a.weight_bits {
        q.weight_bits = Some(b);
    }
    if let Some(b) = a.act_bits {
        q.act_bits = Some(b);
    }
    if typed("per_channel") || q.per_channel.is_none() {
        q.per_channel = Some(a.per_channel);
    }
    if let Some(c) = a.calibration {
        q.calibration = Some(c);
    }
    if let Some(c) = a.weight_calibration {
        q.weight_calibration = Some(c);
    }
    if a.bias_correction {
        q.bias_correction = Some(true);
    }
    if a.first_last_8bit {
        q.keep_first_last_8bit = Some(true);
    }
    if let Some(b) = a.add_bits {
        q.add_bits = Some(b);
    }
    if a.adaround {
        q.adaround = Some(true);
    }
    if let Some(n) = a.adaround_iters {
        q.adaround_iters = Some(n);
    }
    if let Some(s) = a.adaround_seconds {
        q.adaround_seconds = Some(s);
    }
    if (q.adaround_iters.is_some() || q.adaround_seconds.is_some()) && q.adaround != Some(true) {
        let flag = if q.adaround_iters.is_some() {
            "--adaround-iters"
        } else {
            "--adaround-seconds"
        };
        bail!("invalid {flag}: it sets up AdaRound, which needs --adaround");
    }
    if typed("calibration_samples") || q.calibration_samples.is_none() {
        q.calibration_samples = Some(a.calibration_samples);
    }
    if !a.layer_bits.is_empty() {
        q.layers = a
            .layer_bits
            .iter()
            .map(|s| crate::commands::parse_layer_bits(s))
            .collect::<Result<_>>()?;
    }
    Ok(())
}

/// Arguments of `lowbit quantize`.
#[derive(Args, Debug, Clone)]
pub struct QuantizeArgs {
    /// Float model: an ONNX file (`.onnx`; imported in memory, as `lowbit import` would) or a lowbit float file.
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArg,
    /// ONNX inputs: the preprocessing the model expects (over its `lowbit.*` metadata). Float files carry their
    /// own; flags that differ from it are refused.
    #[command(flatten)]
    pub norm: NormArgs,
    #[command(flatten)]
    pub quant: QuantArgs,
    /// Random seed (calibration samples, AdaRound): same seed, same model, bit for bit.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The quantized model to write (.lbq); atomic, nothing written on failure.
    #[arg(long)]
    pub out: PathBuf,
    /// Write a JSON report here (schema: docs/REPORT.md).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Also write the quantized model as standard QDQ ONNX (as `lowbit export MODEL.lbq --onnx` does).
    #[arg(long, value_name = "OUT.onnx")]
    pub onnx: Option<PathBuf>,
    /// QDQ weight storage of --onnx (see `lowbit export --help`).
    #[arg(long, value_enum, default_value_t = crate::export::WeightTypeArg::Uint8, requires = "onnx")]
    pub weight_type: crate::export::WeightTypeArg,
}

/// `lowbit quantize`.
pub fn quantize(a: &QuantizeArgs, explicit: &[String], quiet: bool) -> Result<()> {
    let typed = |id: &str| explicit.iter().any(|e| e == id);
    let model = load_float_model_with(&a.model, &a.norm)?;
    let mut q = QuantSection {
        method: Some(MethodName::Ptq),
        weight_bits: Some(8),
        ..QuantSection::default()
    };
    apply_quant_args(&mut q, &a.quant, &typed)?;
    let mut fc = FileConfig {
        data: Some(a.data.data.clone()),
        quantization: Some(q),
        ..FileConfig::default()
    };
    fc.training.seed = Some(a.seed);
    let (tcfg, qcfg) = (fc.train_config()?, fc.quant_config()?);
    let split = load_data(&a.data.data, &a.data, model.normalization.clone())?;
    let cfg = RunConfig {
        data: a.data.data.clone(),
        model: model.spec.clone(),
        train: tcfg,
        quant: qcfg,
        init: Some(a.model.display().to_string()),
        baseline: true,
    };
    let mut bars = Bars::new(quiet);
    let mut out = pipeline::run(&cfg, &split, Some(&model), None, &mut |e| bars.handle(e))
        .with_context(|| a.model.display().to_string())?;
    let Some(qm) = &out.quant_model else {
        bail!("internal error: a PTQ run returned no quantized model");
    };
    // The ONNX form is built before anything is written, so a model that cannot be exported leaves no .lbq.
    let onnx = match &a.onnx {
        Some(path) => {
            let proto =
                lowbit::onnx::export::quant_model(qm, a.weight_type.into()).map_err(|source| {
                    lowbit::Error::OnnxExport {
                        path: path.clone(),
                        source,
                    }
                })?;
            Some((path, lowbit::onnx::export::to_bytes(&proto)))
        }
        None => None,
    };
    lowbit_runtime::format::save(qm, &a.out).with_context(|| a.out.display().to_string())?;
    out.report.file_bytes = std::fs::metadata(&a.out).ok().map(|m| m.len());
    if let Some((path, bytes)) = &onnx {
        lowbit::modelfile::write_atomic(path, bytes)?;
    }
    println!(
        "{} of {} on {} ({} calibration samples of {} train / {} test), measured on the integer engine against \
         the float model",
        out.report.run,
        a.model.display(),
        a.data.data,
        cfg.quant.as_ref().map_or(0, |q| q.calibration_samples.min(split.train.n)),
        split.train.n,
        split.test.n
    );
    print_run(&out.report, Some(&a.out), a.report.as_deref())?;
    if let Some((path, bytes)) = &onnx {
        println!(
            "ONNX (QDQ, opset {}, {} bytes) written to {}",
            lowbit::onnx::export::OPSET,
            bytes.len(),
            path.display()
        );
    }
    Ok(())
}
