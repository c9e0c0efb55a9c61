//! `lowbit export`: a model file as ONNX (a quantized `.lbq` as QDQ, a float model as f32), and the
//! per-image predictions file of `lowbit eval --predictions`.
use anyhow::{bail, Result};
use clap::Args;
use lowbit::modelfile::AnyModel;
use lowbit::onnx::export::WeightType;
use std::path::{Path, PathBuf};

/// Arguments of `lowbit export`.
#[derive(Args, Debug)]
#[command(
    group = clap::ArgGroup::new("out").required(true).args(["onnx", "onnx_f32"]),
    after_help = format!(
        "The ONNX input is `input` [N, C, H, W] float32: pixels / 255, then (x - mean) / std when the model \
         carries a normalisation (stated in the file's metadata). The output is `logits` [N, classes]. \
         Exports are checked with {}.",
        lowbit::onnx::export::CHECKED_WITH
    )
)]
pub struct ExportArgs {
    /// Model file: a quantized .lbq (exported as QDQ) or a float model (exported as f32).
    pub model: PathBuf,
    /// ONNX file to write, in the model's own form: a .lbq as standard QDQ (opset 13: QuantizeLinear /
    /// DequantizeLinear around Conv, Gemm, Add...; per-channel int8 weights, int32 bias, sub-8-bit codes in
    /// int8/uint8 containers with their true ranges), a float model as plain f32 ONNX.
    #[arg(long, value_name = "OUT.onnx")]
    pub onnx: Option<PathBuf>,
    /// ONNX file to write as plain f32; MODEL must be a float model (the same file --onnx writes for one).
    #[arg(long = "onnx-f32", value_name = "OUT.onnx")]
    pub onnx_f32: Option<PathBuf>,
    /// QDQ weight storage: `uint8` (code + 128, zero point 128; ONNX Runtime's x86 AVX2 kernels then stay exact)
    /// or `int8` (the codes, zero point 0: symmetric, for runtimes that require it; ONNX Runtime on AVX2 without
    /// VNNI saturates 16-bit pair sums with it and can predict differently). Same real weights either way.
    #[arg(long, value_enum, default_value_t = WeightTypeArg::Uint8)]
    pub weight_type: WeightTypeArg,
}

/// `--weight-type`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightTypeArg {
    /// uint8, zero point 128.
    Uint8,
    /// int8, zero point 0.
    Int8,
}

impl From<WeightTypeArg> for WeightType {
    fn from(w: WeightTypeArg) -> Self {
        match w {
            WeightTypeArg::Uint8 => WeightType::Uint8,
            WeightTypeArg::Int8 => WeightType::Int8,
        }
    }
}

/// Loads `a.model` and writes its ONNX form (atomically; nothing is written on error).
pub fn export(a: &ExportArgs) -> Result<()> {
    let model = lowbit::modelfile::load_any(&a.model)?;
    let out = match (&a.onnx, &a.onnx_f32) {
        (Some(p), None) => p,
        (None, Some(p)) => {
            if matches!(model, AnyModel::Quant(_)) {
                bail!(
                    "{}: a quantized model has no f32 form to export; use --onnx for its QDQ form",
                    a.model.display()
                );
            }
            p
        }
        // clap's group makes exactly one of them present.
        _ => bail!("give one of --onnx and --onnx-f32"),
    };
    let s = lowbit::onnx::export::export(&model, a.weight_type.into(), out)?;
    println!(
        "exported {} as {} ONNX (opset {}, {} nodes, {} initializers, {} bytes) -> {}",
        a.model.display(),
        s.form.to_uppercase(),
        lowbit::onnx::export::OPSET,
        s.nodes,
        s.initializers,
        s.bytes,
        out.display()
    );
    Ok(())
}

/// Writes one predicted class per line (atomically).
pub fn write_predictions(path: &Path, predictions: &[usize]) -> Result<()> {
    let mut text = String::with_capacity(predictions.len() * 2);
    for p in predictions {
        text.push_str(&p.to_string());
        text.push('\n');
    }
    lowbit::modelfile::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Writes `[images, logits.len() / images]` little-endian f32 logits as a `.npy` file (atomically).
pub fn write_logits(path: &Path, logits: &[f32], images: usize) -> Result<()> {
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape = [images, logits.len() / images.max(1)];
    let npy = lowbit::data::npy::npy_bytes("<f4", &shape, &bytes);
    lowbit::modelfile::write_atomic(path, &npy)?;
    Ok(())
}
