//! CNN training-speed measurement (ignored by default; run in release):
//! `cargo test --release -p lowbit --test cnn_speed -- --ignored --nocapture`
use lowbit::data::{load, DataSource};
use lowbit::nn::Model;
use lowbit::quant::{prepare_qat, ActMethod, QuantConfig, WeightMethod};
use lowbit::train::{evaluate_float, train, TrainConfig};

fn epoch(qat: Option<QuantConfig>) {
    let split = match load(&DataSource::FashionMnist) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let mut model = Model::from_spec("lenet5", 0).expect("valid spec");
    let name = match &qat {
        None => "f32".to_string(),
        Some(q) => format!(
            "QAT W{}A{} {:?}/{:?}",
            q.weight_bits, q.act_bits, q.weight_quantizer, q.act_quantizer
        ),
    };
    if let Some(q) = &qat {
        prepare_qat(&mut model, q).expect("prepares");
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
            name, s.epoch, s.seconds, s.train_loss, s.train_accuracy
        );
    }
}

#[test]
#[ignore = "timing on the installed Fashion-MNIST; run explicitly in release mode"]
fn lenet5_f32_epoch_on_fashion_mnist_at_batch_64() {
    epoch(None);
}

#[test]
#[ignore = "timing on the installed Fashion-MNIST; run explicitly in release mode"]
fn lenet5_qat_epoch_on_fashion_mnist_at_batch_64() {
    epoch(Some(QuantConfig::default()));
}

#[test]
#[ignore = "timing on the installed Fashion-MNIST; run explicitly in release mode"]
fn lenet5_lsq_w4a4_epoch_on_fashion_mnist_at_batch_64() {
    epoch(Some(QuantConfig {
        weight_bits: 4,
        act_bits: 4,
        weight_quantizer: WeightMethod::Lsq,
        act_quantizer: ActMethod::Lsq,
        ..QuantConfig::default()
    }));
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
    let n = model.nodes.len();
    // Mean and minimum per layer: on a shared machine the minimum is the better estimate of the work itself.
    let (mut fwd, mut bwd) = (vec![0.0f64; n], vec![0.0f64; n]);
    let (mut fwd_min, mut bwd_min) = (vec![f64::MAX; n], vec![f64::MAX; n]);
    let mut total_min = f64::MAX;
    for _ in 0..reps {
        let start = Instant::now();
        let mut h = x.clone();
        for (i, l) in model.layers_mut().enumerate() {
            let t = Instant::now();
            h = l.forward(&h, true).expect("forward");
            let e = t.elapsed().as_secs_f64();
            fwd[i] += e;
            fwd_min[i] = fwd_min[i].min(e);
        }
        let mut g = Tensor::new(vec![0.01; h.len()], h.shape.clone());
        for (i, l) in model.layers_mut().enumerate().rev() {
            let t = Instant::now();
            g = l.backward(&g).expect("backward");
            let e = t.elapsed().as_secs_f64();
            bwd[i] += e;
            bwd_min[i] = bwd_min[i].min(e);
        }
        total_min = total_min.min(start.elapsed().as_secs_f64());
    }
    for (i, l) in model.layers().enumerate() {
        println!(
            "{i:2} {:10} fwd {:8.1} us (min {:8.1})  bwd {:8.1} us (min {:8.1})",
            l.kind(),
            fwd[i] * 1e6 / reps as f64,
            fwd_min[i] * 1e6,
            bwd[i] * 1e6 / reps as f64,
            bwd_min[i] * 1e6
        );
    }
    println!(
        "fastest whole step {:.1} us (x 938 steps = {:.2} s per epoch)",
        total_min * 1e6,
        total_min * 938.0
    );
}
