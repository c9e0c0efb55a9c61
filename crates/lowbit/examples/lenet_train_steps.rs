//! A short f32 LeNet-5 training run through the real loop ([`lowbit::train::train`]) on the first N Fashion-MNIST
//! training images (batch 64, Adam, seed 1), for profiling the training step: prints the epoch time and a hash
//! of the trained weights, so two builds can be checked for bit-identical results.
//!
//! `cargo run --release -p lowbit --example lenet_train_steps [N (default 6400)]`; under
//! `valgrind --tool=callgrind` a few hundred images give repeatable instruction counts per layer.
use lowbit::data::{load, DataSource};
use lowbit::nn::Model;
use lowbit::train::{train, TrainConfig};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(6400);
    let split = match load(&DataSource::FashionMnist) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Fashion-MNIST not available: {e}");
            std::process::exit(2);
        }
    };
    let indices: Vec<usize> = (0..n.min(split.train.len())).collect();
    let data = split.train.subset(&indices);
    let mut model = match Model::from_spec("lenet5", 1) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 64,
        seed: 1,
        ..TrainConfig::default()
    };
    let stats = match train(&mut model, &data, &cfg, &mut |_| {}) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    // FNV-1a over the bits of every parameter: equal hashes mean bit-identical weights.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for p in model.params_mut() {
        for v in p.value.iter() {
            for byte in v.to_bits().to_le_bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    for s in &stats {
        println!(
            "{} images: {:.3} s ({:.1} us/step), loss {:.6}, weights {hash:016x}, {} threads",
            data.len(),
            s.seconds,
            s.seconds * 1e6 / data.len().div_ceil(64) as f64,
            s.train_loss,
            rayon::current_num_threads()
        );
    }
}
