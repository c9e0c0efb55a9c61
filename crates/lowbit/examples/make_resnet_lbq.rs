//! Builds the speed-benchmark model of issue 11: `resnet:20` (option A) for 3x32x32 inputs and 10 classes,
//! quantized W8A8 per-channel by post-training quantization, saved as a `.lbq` file for `lowbit bench`.
//!
//! The weights are the seeded initialisation (speed does not depend on training); batch norms get statistics
//! from a few forward passes in training mode, and activation ranges are calibrated, on the embedded
//! Fashion-MNIST sample centred in 32x32 and repeated over 3 channels (what `lowbit bench` feeds the model).
//!
//! `cargo run --release -p lowbit --example make_resnet_lbq [OUT.lbq] [SEED]`
//! (default `bench/results/resnet20-32x32x3-w8a8.lbq`, seed 0), then
//! `lowbit bench bench/results/resnet20-32x32x3-w8a8.lbq --batch 64,1`.
use lowbit::data::{self, pixels_to_f32, DataSource, Dataset};
use lowbit::nn::Model;
use lowbit::quant::{self, Method, QuantConfig};
use lowbit::tensor::Tensor;
use lowbit_runtime::format;
use lowbit_runtime::model::Provenance;
use std::path::PathBuf;

const INPUT: [usize; 3] = [3, 32, 32];

/// Images `start..start + n` of `data` fitted to [`INPUT`], as an f32 batch in [0, 1].
fn batch(data: &Dataset, start: usize, n: usize) -> Tensor {
    let mut pixels = Vec::new();
    for i in start..start + n {
        data.fitted_image(i % data.n, INPUT, &mut pixels);
    }
    let mut x = Vec::with_capacity(pixels.len());
    pixels_to_f32(&pixels, &mut x);
    Tensor::new(x, vec![n, INPUT[0], INPUT[1], INPUT[2]])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "bench/results/resnet20-32x32x3-w8a8.lbq".into()),
    );
    let seed: u64 = args.next().map_or(Ok(0), |s| s.parse())?;
    let split = data::load(&DataSource::Builtin)?;
    let mut model = Model::from_spec_for("resnet:20", seed, INPUT, 10)?;
    for i in 0..4 {
        model.forward(&batch(&split.train, i * 64, 64), true)?;
    }
    let calibration: Vec<Tensor> = (0..4)
        .map(|i| batch(&split.train, 256 + i * 128, 128))
        .collect();
    let cfg = QuantConfig {
        weight_bits: 8,
        act_bits: 8,
        per_channel: true,
        method: Method::Ptq,
        ..QuantConfig::default()
    };
    let prepared = quant::ptq(&model, &cfg, &calibration)?;
    let qmodel = quant::convert(&prepared, Provenance::default())?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    format::save(&qmodel, &out)?;
    let macs = lowbit_runtime::engine::Engine::new(&qmodel)?
        .graph_info()
        .macs_per_sample;
    println!(
        "{}: resnet:20 W8A8 per-channel for {}x{}x{}, {} nodes, {} MACs per sample, {} bytes",
        out.display(),
        INPUT[0],
        INPUT[1],
        INPUT[2],
        qmodel.nodes.len(),
        macs,
        std::fs::metadata(&out)?.len()
    );
    Ok(())
}
