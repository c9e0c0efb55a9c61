//! Training the reference MLP on the embedded Fashion-MNIST sample (5,000 train / 1,000 test images).
use lowbit::data::{load, DataSource};
use lowbit::nn::Model;
use lowbit::train::{evaluate_float, train, TrainConfig};

#[test]
fn mlp_784_64_10_reaches_78_percent_on_the_builtin_sample_in_5_epochs() {
    let split = load(&DataSource::Builtin).unwrap();
    let mut model = Model::from_spec("mlp:784-64-10", 0).unwrap();
    let cfg = TrainConfig::default(); // 5 epochs, batch 32, Adam 1e-3, seed 0
    let stats = train(&mut model, &split.train, &cfg, &mut |_| {}).unwrap();
    assert!(stats[4].train_loss < stats[0].train_loss, "{stats:?}");
    let (acc, pred) = evaluate_float(&mut model, &split.test, 256).unwrap();
    assert_eq!(pred.len(), split.test.len());
    // Measured (AVX2 path, 2026-11-27): 0.834 with seed 0, 0.801-0.834 over seeds 0-4. The threshold is the lowest of those
    // minus 2 points (20 of 1,000 test images), so it absorbs summation-order changes (another ISA) but still
    // fails if training is broken (an untrained model scores ~0.10, a linear model ~0.75).
    assert!(acc >= 0.78, "test accuracy {acc}, stats {stats:?}");
}

#[test]
#[ignore = "measurement over seeds; run with --nocapture"]
fn builtin_accuracy_over_seeds() {
    let split = load(&DataSource::Builtin).unwrap();
    for seed in 0..5 {
        let mut model = Model::from_spec("mlp:784-64-10", seed).unwrap();
        let cfg = TrainConfig {
            seed,
            ..TrainConfig::default()
        };
        train(&mut model, &split.train, &cfg, &mut |_| {}).unwrap();
        let (acc, _) = evaluate_float(&mut model, &split.test, 256).unwrap();
        println!("seed {seed}: test accuracy {acc:.3}");
    }
}
