//! The `lowbit` command-line tool: train, quantize, evaluate, inspect, predict and benchmark models.
mod commands;
mod export;
mod import;
mod mixed;
mod plot;
mod quantize;
mod sensitivity;
mod sweep;
mod ui;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// lowbit: quantization-optimized neural networks, from data to an integer-only deployed model.
#[derive(Parser, Debug)]
#[command(name = "lowbit", version, about, long_about = None)]
struct Cli {
    /// Print no progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model in f32, or quantized (QAT from scratch or fine-tuned, or PTQ after f32 training).
    Train(Box<TrainArgs>),
    /// Evaluate a model file (.lbq quantized: on the integer engine; float: in f32) on a test set.
    Eval(EvalArgs),
    /// Show a model file's layers, bit widths, scales, ranges and sizes.
    Inspect {
        /// Model file (.lbq, float, or ONNX imported in memory).
        model: PathBuf,
    },
    /// The main job: f32 baseline, PTQ W8A8/W4A8, QAT W4A8/ternary/binary and the fixed step k=2, one table.
    Demo(DemoArgs),
    /// Classify images (PNG or PGM, grayscale, model input size) or one image of an IDX file.
    Predict(PredictArgs),
    /// Samples/s and latency of the f32 model and the integer engine side by side (best of 5 windows, and the
    /// mean over all of them).
    Bench(BenchArgs),
    /// How many bits, which step: quantize a float model at several weight bit widths and fixed steps, measure
    /// each on the integer engine, and print the table, the Pareto front and the smallest model within
    /// --max-drop (with --plot: the picture).
    Sweep(Box<sweep::SweepArgs>),
    /// What each bit costs, layer by layer: accuracy and loss on the integer engine with one layer's weights (or
    /// activations) at fewer bits, and the Hessian-trace estimate that predicts it.
    Sensitivity(Box<sensitivity::SensitivityArgs>),
    /// Automatic mixed precision: per-layer weight bits for --budget-bits, --budget-bytes or --max-drop, chosen
    /// exactly over each layer's measured cost, measured on the integer engine beside the uniform allocations.
    Mixed(Box<mixed::MixedArgs>),
    /// Import an ONNX classifier (Conv, Gemm/MatMul, BatchNorm, pooling, Add, Concat... opset 11 or later) as a
    /// float model file that train --init, eval, inspect, sweep, sensitivity and mixed take.
    Import(import::ImportArgs),
    /// One call from a float model (ONNX or lowbit) to a deployable .lbq: import, PTQ calibrated on training
    /// samples (the quantization flags of `train --method ptq`), accuracy measured on the integer engine against
    /// the float model, the same report and tables.
    Quantize(Box<quantize::QuantizeArgs>),
    /// Export a model as ONNX: a quantized .lbq as standard QDQ (runs in ONNX Runtime, tract...), a float model
    /// as f32.
    Export(export::ExportArgs),
}

/// Data source: `builtin` (embedded Fashion-MNIST sample), `fashion-mnist` (Debian package), or a path whose
/// content says what it is.
#[derive(Args, Debug, Clone)]
struct DataArg {
    /// `builtin`, `fashion-mnist`, or a path: a directory of MNIST-format IDX files
    /// (train-images-idx3-ubyte[.gz] and friends); an image folder (train/ and test/ or val/, one subfolder of
    /// PNG/JPEG images per class, classes sorted by name; RGB if any image is in colour, gray images then
    /// replicated to 3 channels, alpha dropped); a directory with x_train.npy, y_train.npy, x_test.npy, y_test.npy
    /// or an .npz holding them (x uint8, or float32 in [0, 1]; y integer); CIFAR-10 (data_batch_*.bin,
    /// test_batch.bin) or CIFAR-100 (train.bin, test.bin) binaries.
    #[arg(long, default_value = "builtin")]
    data: String,
    /// Image folders: resize every image (bilinear, aspect ratio kept) so that it covers HxW, i.e. its shorter
    /// side fits, then center-crop it to HxW. Without it all images must have the same size.
    #[arg(long, value_name = "HxW", value_parser = parse_image_size)]
    image_size: Option<(usize, usize)>,
    /// NumPy data: where the channel axis of 4-D image arrays is (auto: the one of axes 1 and 3 that is 1, 3 or
    /// 4 wide).
    #[arg(long, value_name = "auto|nchw|nhwc", default_value = "auto")]
    layout: lowbit::data::NpyLayout,
    /// CIFAR-100: use the 20 coarse labels instead of the 100 fine ones.
    #[arg(long)]
    coarse_labels: bool,
}

fn parse_image_size(s: &str) -> Result<(usize, usize), String> {
    lowbit::data::folder::parse_image_size(s).map_err(|e| e.to_string())
}

/// Per-channel input normalisation: `x = (pixel / 255 * input_scale - mean[c]) / std[c]`, stored in the model so
/// that `eval`, `predict` and the engine apply it.
#[derive(Args, Debug, Clone, Default)]
struct NormArgs {
    /// Per-channel means after scaling pixels to [0, --input-scale], comma-separated (one value, or one per
    /// channel).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    mean: Vec<f32>,
    /// Per-channel standard deviations (positive), comma-separated, as many as --mean.
    #[arg(long, value_delimiter = ',')]
    std: Vec<f32>,
    /// Pixels are scaled to [0, S] before --mean/--std (default 1: [0, 1]; 255 for models fed raw pixel values).
    #[arg(long, value_name = "S")]
    input_scale: Option<f32>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum OptimizerArg {
    Adam,
    Sgd,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum MethodArg {
    /// Quantization-aware training (fake-quant forward, straight-through estimator backward).
    Qat,
    /// Post-training quantization: train in f32, then round weights and calibrate activation ranges.
    Ptq,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum QuantizerArg {
    Ste,
    Lsq,
    Pact,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum WeightQuantizerArg {
    Ste,
    Lsq,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ActQuantizerArg {
    Ste,
    Lsq,
    Pact,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum BnFoldArg {
    /// Fold batch norms with their running statistics before QAT and train the folded conv.
    Running,
    /// Train conv + batch norm on batch statistics with the folded weights quantized (default).
    Batch,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LsqInitArg {
    /// The LSQ paper's 2 mean|v| / sqrt(Qp) (default).
    Lsq,
    /// The step with the least squared quantization error on the weights and the first batch's activations.
    Mse,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ScheduleArg {
    Constant,
    Step,
    Cosine,
    /// One-cycle (PyTorch's OneCycleLR, cosine): up from lr/25 to --lr over --pct-start of the steps, then down to
    /// lr/250000.
    Onecycle,
}

#[derive(Args, Debug, Clone)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArg,
    #[command(flatten)]
    norm: NormArgs,
    /// Model spec, e.g. `mlp:784-64-10` (any number of hidden layers).
    #[arg(long, default_value = "mlp:784-64-10")]
    model: String,
    /// Training epochs.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adam)]
    optimizer: OptimizerArg,
    /// Learning rate.
    #[arg(long, default_value_t = 0.001, allow_negative_numbers = true)]
    lr: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    momentum: f32,
    /// Random seed (same seed, same model, bit for bit).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    quant: quantize::QuantArgs,
    /// Quantization method.
    #[arg(long, value_enum, default_value_t = MethodArg::Qat)]
    method: MethodArg,
    /// Fixed-step weights w_q = round(w*K)/K (scale 1/K; the stored bit width is the smallest that fits).
    #[arg(long, value_name = "K", allow_negative_numbers = true)]
    quant_step: Option<f32>,
    /// Start from this float model file or ONNX model (QAT fine-tuning, or PTQ without retraining); for ONNX,
    /// --input-scale/--mean/--std set its preprocessing.
    #[arg(long, value_name = "MODEL")]
    init: Option<PathBuf>,
    /// Do not train the f32 baseline with the same seed (saves time; the report then has no difference).
    #[arg(long)]
    no_baseline: bool,
    /// Hold out this fraction (0..1) of each class of the training set, drawn with --seed, and report validation accuracy per epoch.
    #[arg(long, value_name = "FRACTION")]
    validation_split: Option<f32>,
    /// Quantizer method for weights and activations: `lsq` learns step sizes for both; `pact` learns the
    /// activation clipping level (weights keep `ste`). The two flags below override it.
    #[arg(long, value_enum)]
    quantizer: Option<QuantizerArg>,
    /// Weight quantizer: `ste` (min-max / ternary / binary rules, straight-through) or `lsq` (learned step).
    #[arg(long, value_enum)]
    weight_quantizer: Option<WeightQuantizerArg>,
    /// Activation quantizer: `ste` (EMA min-max range), `lsq` (learned step) or `pact` (learned clip).
    #[arg(long, value_enum)]
    act_quantizer: Option<ActQuantizerArg>,
    /// PACT initial clipping level (default: the first batch's maximum).
    #[arg(long)]
    pact_alpha: Option<f32>,
    /// L2 penalty on PACT's alpha.
    #[arg(long)]
    pact_l2: Option<f32>,
    /// QAT batch-norm folding: `batch` (default) trains on batch statistics with the folded weights quantized;
    /// `running` folds with running statistics before training (PTQ always does).
    #[arg(long, value_enum)]
    bn_fold: Option<BnFoldArg>,
    /// With `--bn-fold batch`: freeze the batch-norm statistics after this many training steps.
    #[arg(long, value_name = "STEPS")]
    bn_freeze_steps: Option<usize>,
    /// How LSQ steps start: `lsq` (the paper's 2 mean|v| / sqrt(Qp), default) or `mse` (least squared
    /// quantization error on each weight tensor or channel, and on each activation's first batch; better for a
    /// short fine-tuning at 2-4 bits, where the steps do not travel far from where they start).
    #[arg(long, value_enum)]
    lsq_init: Option<LsqInitArg>,
    /// Learning-rate schedule.
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
    /// Step schedule: epochs between decays.
    #[arg(long, default_value_t = 1)]
    lr_step_every: usize,
    /// Step schedule: decay factor.
    #[arg(long, default_value_t = 0.1)]
    lr_gamma: f32,
    /// Cosine schedule: final learning rate.
    #[arg(long, default_value_t = 0.0)]
    min_lr: f32,
    /// One-cycle schedule: fraction of the steps spent rising to --lr.
    #[arg(long, default_value_t = 0.3)]
    pct_start: f32,
    /// Linear learning-rate warm-up over this many steps.
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Clip gradients to this global L2 norm.
    #[arg(long)]
    clip_grad_norm: Option<f32>,
    /// Stop as diverged when a batch loss exceeds this (default 1e4; a NaN/Inf loss always stops).
    #[arg(long)]
    max_loss: Option<f32>,
    /// Learning-rate multiplier of the LSQ step sizes (default 0.1: Adam cancels LSQ's gradient scaling).
    #[arg(long)]
    quant_lr_scale: Option<f32>,
    /// QAT quantization delay: train the float model (quantizers bypassed) for this many epochs of the
    /// --epochs budget (fractions allowed, e.g. 0.5), then switch quantization on with the quantizers (LSQ
    /// steps, PACT alphas, ranges) initialized from the weights and data at that point. Default 0.
    #[arg(long, value_name = "EPOCHS")]
    quant_delay_epochs: Option<f32>,
    /// QAT knowledge distillation: weight in (0, 1] of the soft targets of the float model training starts
    /// from (--init, or the f32 baseline), the labels getting the rest (Hinton et al. 2015). Costs one float
    /// forward per step.
    #[arg(long, value_name = "ALPHA")]
    distill: Option<f32>,
    /// Distillation softmax temperature (default 1).
    #[arg(long, value_name = "T")]
    distill_temperature: Option<f32>,
    /// Read model, data, training and quantization settings from a TOML or JSON file; flags typed on the
    /// command line override it (example: docs/examples/lenet5-mixed.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write training checkpoints into DIR (created if missing; it must hold none yet): at every epoch end, and
    /// every --checkpoint-every steps. A killed run continues with --resume DIR.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Also checkpoint every N optimizer steps (with --checkpoint-dir or --resume).
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<usize>,
    /// Continue the run checkpointed in DIR, and keep checkpointing there. Pass the settings the run was
    /// started with (a checkpoint of other settings, another model or another lowbit version is refused). The
    /// final model is bit-identical to an uninterrupted run's on the same machine and thread count
    /// (docs/CHECKPOINTS.md).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Write the model here (.lbq when quantized, float file otherwise); atomic.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write a JSON report here (schema: docs/REPORT.md).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Draw the training curves here: per-step loss and accuracy (smoothed) with per-epoch markers; .svg or
    /// .png by the extension.
    #[arg(long, value_parser = plot::parse_plot_path)]
    plot: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct EvalArgs {
    /// Model file (.lbq, float, or ONNX imported in memory with its `lowbit.*` metadata preprocessing).
    model: PathBuf,
    #[command(flatten)]
    data: DataArg,
    /// Write a JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the predicted class of every test image here, one index per line in test-set order (from the
    /// integer engine for a .lbq model), e.g. to compare with another runtime.
    #[arg(long, value_name = "FILE")]
    predictions: Option<PathBuf>,
    /// Float models: write every test image's f32 logits here as a NumPy `.npy` array `[images, classes]`, e.g.
    /// to compare them with another runtime's.
    #[arg(long, value_name = "FILE.npy")]
    logits: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct DemoArgs {
    #[command(flatten)]
    data: DataArg,
    /// Epochs per run.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write a JSON report of every run here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Draw accuracy against model size (with the f32 line and the Pareto front) here; .svg or .png by the
    /// extension.
    #[arg(long, value_parser = plot::parse_plot_path)]
    plot: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct PredictArgs {
    /// Model file (.lbq, float, or ONNX imported in memory).
    model: PathBuf,
    /// Image files (PNG or PGM).
    files: Vec<PathBuf>,
    /// Read the image from this IDX images file instead.
    #[arg(long)]
    idx: Option<PathBuf>,
    /// Index of the image within --idx.
    #[arg(long, default_value_t = 0)]
    index: usize,
}

#[derive(Args, Debug, Clone)]
struct BenchArgs {
    /// Model file (.lbq).
    model: PathBuf,
    /// Batch sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,256")]
    batch: Vec<usize>,
    /// Seconds to spend per measurement (split into 5 windows).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Time the integer engine alone: no f32 model is built or timed, so neither its windows nor its memory share
    /// the process (as the peer scripts time each runtime in a process of its own).
    #[arg(long)]
    engine_only: bool,
}

/// `--calibration`, with the library's message for a bad value.
fn parse_calibrator(s: &str) -> Result<lowbit::quant::Calibrator, String> {
    s.parse().map_err(|e: lowbit::Error| reason_of(e))
}

/// `--weight-calibration`, with the library's message for a bad value.
fn parse_weight_calibration(s: &str) -> Result<lowbit::quant::WeightCalibration, String> {
    s.parse().map_err(|e: lowbit::Error| reason_of(e))
}

/// The reason of an option error (clap names the option itself).
fn reason_of(e: lowbit::Error) -> String {
    match e {
        lowbit::Error::InvalidOption { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// The ids of the flags the user typed for `command` (not those left at their defaults).
fn explicit_of(matches: &clap::ArgMatches, command: &str) -> Vec<String> {
    matches
        .subcommand_matches(command)
        .map(|m| {
            m.ids()
                .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                .map(|id| id.as_str().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn main() -> ExitCode {
    // `lowbit inspect m.lbq | head`: when the reader goes away, stop like every Unix tool (killed by SIGPIPE)
    // instead of panicking in println!. Files are written atomically, so nothing half-written is left behind.
    #[cfg(unix)]
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Usage errors are one line too (clap's own text adds a usage block); help and version still print in full.
    let usage_error = |e: clap::Error| {
        // Its first paragraph, joined: "required arguments were not provided:" lists them on the next lines.
        let text = e.to_string();
        let first: Vec<&str> = text
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .map(str::trim)
            .collect();
        let first = if first.is_empty() {
            "error: invalid arguments".to_string()
        } else {
            first.join(" ")
        };
        eprintln!("{first} (see --help)");
        ExitCode::from(2)
    };
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => return usage_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // The train flags the user typed: they override a --config file; defaults do not.
    let explicit = explicit_of(&matches, "train");
    // A bad LOWBIT_ISA stops every command before any kernel runs (the library alone would fall back to the
    // reference tier): one line naming the value and what is wrong.
    if let Err(e) = lowbit_runtime::isa::check_env() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Train(a) => commands::train(&a, &explicit, cli.quiet),
        Command::Eval(a) => commands::eval(&a, cli.quiet),
        Command::Inspect { model } => commands::inspect(&model),
        Command::Demo(a) => commands::demo(&a, cli.quiet),
        Command::Predict(a) => commands::predict(&a),
        Command::Bench(a) => commands::bench(&a),
        Command::Sweep(a) => sweep::sweep(&a, cli.quiet),
        Command::Sensitivity(a) => sensitivity::sensitivity(&a, cli.quiet),
        Command::Mixed(a) => mixed::mixed(&a, cli.quiet),
        Command::Import(a) => import::import(&a),
        Command::Quantize(a) => {
            quantize::quantize(&a, &explicit_of(&matches, "quantize"), cli.quiet)
        }
        Command::Export(a) => export::export(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined, so the file and the problem are both named. Library errors
            // already print their source (`{path}: {source}`), so a cause whose text is already there is skipped.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let text = cause.to_string();
                if !msg.contains(&text) {
                    msg = format!("{msg}: {text}");
                }
            }
            let msg = msg.replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
