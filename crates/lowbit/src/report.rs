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

/// One node of a quantized graph as `inspect` and reports show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeSummary {
    /// Node name.
    pub name: String,
    /// Names of the values it reads (`input` for the network input).
    pub reads: Vec<String>,
    /// The op in one line (kind, geometry, weight bits and granularity, output stage).
    pub op: String,
    /// Its output value: shape and quantization (`16x14x14 u8 s=1.2e-2 zp=0`, or `10 logits`).
    pub output: String,
    /// Weight scales (`min..max (count)`), for weighted nodes.
    pub weight_scales: Option<String>,
    /// Parameter bytes it stores (see [`crate::quant::model_bytes`]).
    pub bytes: usize,
}

/// Every node of `qm`, in order, described from the runtime's own op definitions and the graph check.
pub fn node_summaries(qm: &lowbit_runtime::QuantModel) -> crate::Result<Vec<NodeSummary>> {
    use lowbit_runtime::model::QOp;
    use lowbit_runtime::ops::ValueQuant;
    let info = lowbit_runtime::graph::check(qm)?;
    let name_of = |v: usize| match v.checked_sub(1).and_then(|i| qm.nodes.get(i)) {
        Some(n) => n.name.clone(),
        None => "input".to_string(),
    };
    Ok(qm
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let v = info.values[i + 1];
            let s = v.shape;
            let output = match v.quant {
                ValueQuant::Codes { qparams, bits } => format!(
                    "{}x{}x{} u{bits} s={:.3e} zp={}",
                    s.channels, s.height, s.width, qparams.scale, qparams.zero_point
                ),
                ValueQuant::Logits => format!("{} logits", s.channels * s.height * s.width),
            };
            let weight_scales = match &n.op {
                QOp::Dense(d) => Some(scale_range(&d.weight_scales)),
                QOp::Conv2d(c) => Some(scale_range(&c.weight_scales)),
                _ => None,
            };
            NodeSummary {
                name: n.name.clone(),
                reads: n.inputs.iter().map(|&v| name_of(v)).collect(),
                op: n.op.describe(),
                output,
                weight_scales,
                bytes: crate::quant::convert::node_bytes(&n.op),
            }
        })
        .collect())
}

/// `min..max (count)` of a list of scales, or the one scale.
fn scale_range(s: &[f32]) -> String {
    let lo = s.iter().cloned().fold(f32::INFINITY, f32::min);
    let hi = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if s.len() == 1 {
        format!("{lo:.4e}")
    } else {
        format!("{lo:.3e}..{hi:.3e} ({})", s.len())
    }
}
