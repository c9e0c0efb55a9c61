//! Quantize from code: train a 784-64-10 MLP through 4-bit weight / 8-bit activation quantizers (QAT) on the
//! embedded Fashion-MNIST sample, convert it to an integer-only model, save it as a `.lbq` file, then load the
//! file and measure its accuracy on the integer engine.
//!
//! `cargo run --release -p lowbit --example quantize`
use lowbit::data::{self, DataSource};
use lowbit::nn::Model;
use lowbit::quant::{self, QuantConfig};
use lowbit::train::{self, TrainConfig};
use lowbit_runtime::engine::{argmax_rows, Engine};
use lowbit_runtime::format;
use lowbit_runtime::model::Provenance;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 5,000 training and 1,000 test images, 28x28, embedded in the library: no download.
    let split = data::load(&DataSource::Builtin)?;

    // Insert fake quantizers (W4A8, per-channel weight scales), then train through them.
    let mut model = Model::from_spec("mlp:784-64-10", 1)?;
    let qcfg = QuantConfig {
        weight_bits: 4,
        act_bits: 8,
        ..QuantConfig::default()
    };
    quant::prepare_qat(&mut model, &qcfg)?;
    let tcfg = TrainConfig {
        epochs: 2,
        ..TrainConfig::default()
    };
    train::train(&mut model, &split.train, &tcfg, &mut |_progress| {})?;
    quant::freeze_ranges(&mut model);

    // Integer-only model: packed 4-bit weights, int32 biases, fixed-point requantization.
    let qmodel = quant::convert(&model, Provenance::default())?;
    let path = std::env::temp_dir().join(format!("lowbit-quantize-{}.lbq", std::process::id()));
    format::save(&qmodel, &path)?; // written to a temporary file, then renamed

    // What a deployed application does (lowbit-runtime only): load, run a batch, read the logits.
    let engine = Engine::new(&format::load(&path)?)?;
    let test = &split.test;
    let logits = engine.run(&test.images, test.n)?; // f32, [n, classes]
    let predicted = argmax_rows(&logits, engine.classes());
    let correct = predicted
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| **p == usize::from(**l))
        .count();
    println!(
        "{}: {} bytes, integer-engine accuracy {:.1}% on {} test images",
        path.display(),
        std::fs::metadata(&path)?.len(),
        100.0 * correct as f64 / test.n as f64,
        test.n
    );
    std::fs::remove_file(&path)?;
    Ok(())
}
