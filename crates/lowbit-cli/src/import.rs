//! `lowbit import`: an ONNX classifier to a lowbit float model file.
use clap::Args;
use lowbit_runtime::model::Provenance;
use std::path::PathBuf;

/// Arguments of `lowbit import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// ONNX model file (NCHW float input, logits out; a trailing softmax is dropped).
    pub model: PathBuf,
    /// Float model file to write (`.f32`), for train --init, eval, inspect, sweep...
    #[arg(long)]
    pub out: PathBuf,
}

/// Imports `a.model` and writes it to `a.out` (atomically; nothing is written when the import fails).
pub fn import(a: &ImportArgs) -> anyhow::Result<()> {
    let model = lowbit::onnx::import(&a.model)?;
    let name = a.model.file_name().map_or_else(
        || a.model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let provenance = Provenance {
        dataset: String::new(),
        seed: 0,
        test_accuracy: None,
        recipe: format!("imported from ONNX {name}"),
    };
    lowbit::modelfile::save_float(&model, &provenance, &a.out)?;
    let [c, h, w] = model.input_shape;
    println!(
        "imported {name}: {} nodes, {} parameters, input {c}x{h}x{w}, {} classes -> {}",
        model.nodes.len(),
        model.param_count(),
        model.classes,
        a.out.display()
    );
    Ok(())
}
