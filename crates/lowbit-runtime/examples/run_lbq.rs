//! Load a `.lbq` model, run a batch on the integer engine and read the logits: all a deployed application needs.
//!
//! `cargo run --release -p lowbit-runtime --example run_lbq -- MODEL.lbq`
use lowbit_runtime::engine::{argmax_rows, Engine};
use lowbit_runtime::format;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = PathBuf::from(std::env::args().nth(1).ok_or("usage: run_lbq MODEL.lbq")?);
    // The reader validates the whole file: a corrupt or foreign file is an error, never a panic.
    let model = format::load(&path)?;
    // Build the engine once and share it: it is Send + Sync, calls may come from any thread.
    let engine = Engine::new(&model)?;

    // Raw u8 inputs, `input_features()` per sample (28 x 28 pixels, 0..=255, for the MNIST-style models).
    let batch = 4;
    let pixels: Vec<u8> = (0..batch * engine.input_features())
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    let logits = engine.run(&pixels, batch)?; // f32, [batch, classes], row-major
    let classes = argmax_rows(&logits, engine.classes());
    for (i, row) in logits.chunks(engine.classes()).enumerate() {
        println!("sample {i}: class {}, logits {row:.2?}", classes[i]);
    }
    Ok(())
}
