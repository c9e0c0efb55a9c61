//! The JSON report written by `--report` (schema documented in docs/REPORT.md).
use serde::Serialize;

/// One training epoch as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (0..1) over the epoch's batches.
    pub train_accuracy: f64,
    /// Wall time of the epoch.
    pub seconds: f64,
    /// Accuracy on the held-out validation split, when one was requested.
    pub val_accuracy: Option<f64>,
}

/// Dataset facts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetInfo {
    /// Source name (`builtin`, `fashion-mnist`, or the directory).
    pub name: String,
    /// Training samples used.
    pub train_samples: usize,
    /// Test samples.
    pub test_samples: usize,
    /// Number of classes.
    pub classes: usize,
}

/// The report of one run (train, or eval of a file).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// lowbit version that wrote the report.
    pub lowbit_version: String,
    /// What ran: `train`, `eval`, or a demo row label.
    pub run: String,
    /// The fully resolved configuration.
    pub config: serde_json::Value,
    /// Data used.
    pub dataset: DatasetInfo,
    /// Per-epoch training statistics (empty for eval).
    pub epochs: Vec<EpochRecord>,
    /// Test accuracy, 0..1. For a quantized model it is measured by the integer engine.
    pub test_accuracy: f64,
    /// `"engine"` (integer engine) or `"float"` (f32 model).
    pub accuracy_source: String,
    /// Accuracy of the library's independent integer simulation (equals the engine's; present when quantized).
    pub simulated_accuracy: Option<f64>,
    /// Number of test images where engine and simulation predictions differ (0 expected).
    pub engine_simulation_mismatches: Option<usize>,
    /// Accuracy of the float fake-quant graph used during training (for information; present when quantized).
    pub fake_quant_accuracy: Option<f64>,
    /// f32 baseline accuracy with the same seed, when one was trained.
    pub baseline_accuracy: Option<f64>,
    /// `test_accuracy - baseline_accuracy` in percentage points.
    pub accuracy_delta_pp: Option<f64>,
    /// Parameter bytes of the model as stored (packed weights, int32 biases, scales).
    pub model_bytes: usize,
    /// Bytes of the same parameters in f32.
    pub float_bytes: usize,
    /// `model_bytes / float_bytes`.
    pub compression_ratio: f64,
    /// Size of the written model file, if one was written.
    pub file_bytes: Option<u64>,
    /// Per-class test accuracy.
    pub per_class_accuracy: Vec<f64>,
    /// Class names, index-aligned with `per_class_accuracy`.
    pub class_names: Vec<String>,
    /// `confusion_matrix[true][predicted]`.
    pub confusion_matrix: Vec<Vec<u32>>,
    /// Per-layer quantization diagnostics (SQNR in dB, clipped fractions); empty in f32.
    pub layers: serde_json::Value,
    /// Kernel tier the integer engine used (null when no quantized model ran).
    pub engine_isa: Option<String>,
    /// The tier every kernel family ran in this process (engine, training GEMM, fake-quant, optimizer), from the
    /// one selection capped by `LOWBIT_ISA`.
    pub kernel_tiers: crate::kernel_tiers::KernelTiers,
    /// Total wall time of the run.
    pub seconds: f64,
}
