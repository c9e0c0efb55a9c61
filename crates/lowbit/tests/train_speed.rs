//! Training-speed measurement (ignored by default; run in release):
//! `cargo test --release -p lowbit --test train_speed -- --ignored --nocapture`
use lowbit::data::{load, DataSource};
use lowbit::nn::Model;
use lowbit::rng::Rng;
use lowbit::train::{train, SliceSamples, TrainConfig};

#[test]
#[ignore = "timing measurement; run explicitly in release mode"]
fn one_epoch_of_60k_random_images_at_batch_32() {
    let n = 60_000;
    let mut rng = Rng::new(1);
    // Pixel-like values in [0, 1], random labels: the cost of a step does not depend on what is learned.
    let images: Vec<f32> = (0..n * 784).map(|_| rng.uniform()).collect();
    let labels: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
    let data = SliceSamples::new(&images, &labels, [1, 28, 28]).expect("shapes agree");
    let mut model = Model::from_spec("mlp:784-64-10", 0).expect("valid spec");
    let cfg = TrainConfig {
        epochs: 2,
        ..TrainConfig::default()
    };
    let stats = train(&mut model, &data, &cfg, &mut |_| {}).expect("trains");
    for s in &stats {
        println!(
            "epoch {}: {:.3} s ({:.1} us/step), loss {:.4}",
            s.epoch,
            s.seconds,
            s.seconds * 1e6 / 1875.0,
            s.train_loss
        );
    }
}

#[test]
#[ignore = "timing on the installed Fashion-MNIST; run explicitly in release mode"]
fn five_epochs_of_fashion_mnist_at_batch_32() {
    let split = match load(&DataSource::FashionMnist) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let mut model = Model::from_spec("mlp:784-64-10", 0).expect("valid spec");
    let stats = train(
        &mut model,
        &split.train,
        &TrainConfig::default(),
        &mut |_| {},
    )
    .expect("trains");
    let (acc, _) = lowbit::train::evaluate_float(&mut model, &split.test, 256).expect("evaluates");
    for s in &stats {
        println!(
            "epoch {}: {:.3} s, loss {:.4}, train acc {:.4}",
            s.epoch, s.seconds, s.train_loss, s.train_accuracy
        );
    }
    let total: f64 = stats.iter().map(|s| s.seconds).sum();
    println!(
        "5 epochs: {total:.2} s ({:.3} s/epoch), test accuracy {acc:.4}",
        total / 5.0
    );
}
