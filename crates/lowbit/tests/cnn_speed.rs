//! CNN training-speed measurement (ignored by default; run in release):
//! `cargo test --release -p lowbit --test cnn_speed -- --ignored --nocapture`
use lowbit::data::{load, DataSource};
use lowbit::nn::Model;
use lowbit::quant::{prepare_qat, QuantConfig};
use lowbit::train::{evaluate_float, train, TrainConfig};

fn epoch(qat: bool) {
    let split = match load(&DataSource::FashionMnist) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let mut model = Model::from_spec("lenet5", 0).expect("valid spec");
    if qat {
        prepare_qat(&mut model, &QuantConfig::default()).expect("prepares");
    }
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 64,
        ..TrainConfig::default()
    };
    let stats = train(&mut model, &split.train, &cfg, &mut |_| {}).expect("trains");
    let (acc, _) = evaluate_float(&mut model, &split.test, 256).expect("evaluates");
    for s in &stats {
        println!(
            "lenet5 {}: epoch {} {:.3} s, loss {:.4}, train acc {:.4}, test acc {acc:.4}",
            if qat { "QAT" } else { "f32" },
            s.epoch,
            s.seconds,
            s.train_loss,
            s.train_accuracy
        );
    }
}

#[test]
#[ignore = "timing on the installed Fashion-MNIST; run explicitly in release mode"]
fn lenet5_f32_epoch_on_fashion_mnist_at_batch_64() {
    epoch(false);
}

#[test]
#[ignore = "timing on the installed Fashion-MNIST; run explicitly in release mode"]
fn lenet5_qat_epoch_on_fashion_mnist_at_batch_64() {
    epoch(true);
}

#[test]
#[ignore = "timing of each lenet5 layer; run explicitly in release mode"]
fn lenet5_layer_times_at_batch_64() {
    use lowbit::tensor::Tensor;
    use std::time::Instant;
    let mut model = Model::from_spec("lenet5", 0).expect("valid spec");
    let x = Tensor::new(
        (0..64 * 784).map(|i| (i % 255) as f32 / 255.0).collect(),
        vec![64, 1, 28, 28],
    );
    let reps = 50;
    let mut fwd = vec![0.0f64; model.layers.len()];
    let mut bwd = vec![0.0f64; model.layers.len()];
    for _ in 0..reps {
        let mut h = x.clone();
        let mut outs = Vec::new();
        for (i, l) in model.layers.iter_mut().enumerate() {
            let t = Instant::now();
            h = l.forward(&h, true).expect("forward");
            fwd[i] += t.elapsed().as_secs_f64();
            outs.push(h.shape.clone());
        }
        let mut g = Tensor::new(vec![0.01; h.len()], h.shape.clone());
        for (i, l) in model.layers.iter_mut().enumerate().rev() {
            let t = Instant::now();
            g = l.backward(&g).expect("backward");
            bwd[i] += t.elapsed().as_secs_f64();
        }
    }
    for (i, l) in model.layers.iter().enumerate() {
        println!(
            "{i:2} {:10} fwd {:8.1} us  bwd {:8.1} us",
            l.kind(),
            fwd[i] * 1e6 / reps as f64,
            bwd[i] * 1e6 / reps as f64
        );
    }
}
