//! `lowbit import`: an ONNX classifier to a lowbit float model file.
use crate::NormArgs;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `lowbit import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// ONNX model file (NCHW float input, or NHWC read through a transpose as Keras/tf2onnx export it; logits
    /// out; a trailing softmax is dropped).
    pub model: PathBuf,
    /// The preprocessing the model expects, stored in the float file so that eval, predict, quantize and the
    /// engine apply it. Each flag overrides the model's `lowbit.input_scale`, `lowbit.mean` or `lowbit.std`
    /// metadata (docs: `lowbit::onnx`).
    #[command(flatten)]
    pub norm: NormArgs,
    /// Float model file to write (`.f32`), for train --init, eval, inspect, sweep...
    #[arg(long)]
    pub out: PathBuf,
}

/// Imports `a.model` and writes it to `a.out` (atomically; nothing is written when the import fails).
pub fn import(a: &ImportArgs) -> anyhow::Result<()> {
    let model = lowbit::onnx::import_with(&a.model, &crate::commands::preprocessing(&a.norm))?;
    let provenance = lowbit::onnx::provenance(&a.model);
    lowbit::modelfile::save_float(&model, &provenance, &a.out)?;
    let [c, h, w] = model.input_shape;
    let name = a.model.file_name().map_or_else(
        || a.model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    println!(
        "imported {name}: {} nodes, {} parameters, input {c}x{h}x{w}, {} classes -> {}",
        model.nodes.len(),
        model.param_count(),
        model.classes,
        a.out.display()
    );
    if let Some(n) = &model.normalization {
        println!(
            "input preprocessing: (pixel / 255 - mean) / std per channel, mean {:?}, std {:?}",
            n.mean, n.std
        );
    }
    Ok(())
}
