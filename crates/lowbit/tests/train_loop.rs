//! The training loop: convergence, determinism, divergence handling and configuration errors.
use std::cell::Cell;

use lowbit::nn::{Dense, Layer, Model, Relu};
use lowbit::optim::OptimizerKind;
use lowbit::rng::Rng;
use lowbit::train::{evaluate_float, split_indices, train, Samples, SliceSamples, TrainConfig};
use lowbit::Error;

const DIM: usize = 8;
const CLASSES: usize = 3;

/// Three Gaussian blobs in 8-d (std 0.5) with centres 3 apart: separable with > 99% Bayes accuracy.
fn blobs(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let centres: Vec<Vec<f32>> = (0..CLASSES)
        .map(|c| {
            (0..DIM)
                .map(|d| if d % CLASSES == c { 3.0 } else { 0.0 })
                .collect()
        })
        .collect();
    let mut x = Vec::with_capacity(n * DIM);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % CLASSES;
        x.extend(centres[c].iter().map(|&m| m + 0.5 * rng.normal()));
        y.push(c as u8);
    }
    (x, y)
}

fn small_model(seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    Model::sequential(
        "test:8-16-3",
        [1, 1, DIM],
        CLASSES,
        vec![
            Layer::Dense(Dense::new(DIM, 16, &mut rng)),
            Layer::Relu(Relu::new()),
            Layer::Dense(Dense::new(16, CLASSES, &mut rng)),
        ],
    )
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        lr: 1e-2,
        seed: 3,
        ..TrainConfig::default()
    }
}

#[test]
fn learns_a_separable_problem_to_over_95_percent() {
    let (x, y) = blobs(900, 1);
    let data = SliceSamples::new(&x, &y, [1, 1, DIM]).unwrap();
    let mut model = small_model(2);
    let mut calls = 0;
    let stats = train(&mut model, &data, &cfg(5), &mut |p| {
        calls += 1;
        assert!(p.step >= 1 && p.step <= p.steps && p.steps == 57);
    })
    .unwrap();
    assert_eq!(calls, 5 * 57);
    assert_eq!(stats.len(), 5);
    assert!(stats[4].train_loss < stats[0].train_loss);
    let (tx, ty) = blobs(300, 99);
    let test = SliceSamples::new(&tx, &ty, [1, 1, DIM]).unwrap();
    let (acc, pred) = evaluate_float(&mut model, &test, 64).unwrap();
    assert_eq!(pred.len(), 300);
    assert!(acc > 0.95, "test accuracy {acc}, stats {stats:?}");
}

#[test]
fn sgd_also_learns_and_validation_accuracy_is_reported() {
    let (x, y) = blobs(900, 4);
    let data = SliceSamples::new(&x, &y, [1, 1, DIM]).unwrap();
    let mut model = small_model(5);
    let c = TrainConfig {
        optimizer: OptimizerKind::sgd(0.9),
        validation_fraction: Some(0.2),
        ..cfg(4)
    };
    let stats = train(&mut model, &data, &c, &mut |_| {}).unwrap();
    let val = stats[3].val_accuracy.expect("validation requested");
    assert!(val > 0.95, "{stats:?}");
}

/// `blobs` reordered so that every class-0 sample comes first, then class 1, then class 2 (as the embedded
/// Fashion-MNIST sample is stored).
fn sorted_blobs(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let (x, y) = blobs(n, seed);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| y[i]);
    let xs = order
        .iter()
        .flat_map(|&i| x[i * DIM..(i + 1) * DIM].iter().copied())
        .collect();
    (xs, order.iter().map(|&i| y[i]).collect())
}

#[test]
fn validation_on_class_sorted_data_covers_every_class_and_tracks_test_accuracy() {
    // 0.34 of 600 class-sorted samples: a tail split would hold out all of class 2 (never trained, validation
    // accuracy about 2%); a stratified one holds out 68 of each class.
    let (x, y) = sorted_blobs(600, 21);
    let data = SliceSamples::new(&x, &y, [1, 1, DIM]).unwrap();
    let c = TrainConfig {
        validation_fraction: Some(0.34),
        ..cfg(3)
    };
    let (train_idx, val_idx) = split_indices(&data, &c).unwrap();
    let per_class = |idx: &[usize]| {
        let mut n = [0usize; CLASSES];
        idx.iter().for_each(|&i| n[usize::from(y[i])] += 1);
        n
    };
    assert_eq!(per_class(&val_idx), [68; CLASSES]);
    assert_eq!(per_class(&train_idx), [132; CLASSES]);
    let mut model = small_model(4);
    let stats = train(&mut model, &data, &c, &mut |_| {}).unwrap();
    let val = stats[2].val_accuracy.expect("validation requested");
    let (tx, ty) = blobs(300, 22);
    let test = SliceSamples::new(&tx, &ty, [1, 1, DIM]).unwrap();
    let (acc, pred) = evaluate_float(&mut model, &test, 64).unwrap();
    // Bayes accuracy is over 99%: both must be high, so they are within a few points of each other.
    assert!(val > 0.95 && acc > 0.95, "val {val}, test {acc}");
    for class in 0..CLASSES {
        let right = (0..300)
            .filter(|&i| usize::from(ty[i]) == class && pred[i] == class)
            .count();
        assert!(right > 90, "class {class}: {right} of 100 right");
    }
}

#[test]
fn validation_split_is_seeded_disjoint_and_reproducible() {
    let (x, y) = sorted_blobs(300, 5);
    let data = SliceSamples::new(&x, &y, [1, 1, DIM]).unwrap();
    let c = |seed| TrainConfig {
        seed,
        validation_fraction: Some(0.2),
        ..cfg(2)
    };
    let (t, v) = split_indices(&data, &c(1)).unwrap();
    let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..300).collect::<Vec<_>>());
    assert_eq!(split_indices(&data, &c(1)).unwrap().1, v);
    assert_ne!(split_indices(&data, &c(2)).unwrap().1, v);
    let run = |seed| {
        let mut m = small_model(8);
        let stats = train(&mut m, &data, &c(seed), &mut |_| {}).unwrap();
        (m.snapshot(), stats[1].val_accuracy)
    };
    assert_eq!(run(1), run(1));
}

#[test]
fn a_validation_fraction_that_rounds_to_no_sample_is_an_error() {
    let (x, y) = blobs(30, 1);
    let data = SliceSamples::new(&x, &y, [1, 1, DIM]).unwrap();
    let c = TrainConfig {
        validation_fraction: Some(0.04),
        ..cfg(1)
    };
    assert!(matches!(
        train(&mut small_model(1), &data, &c, &mut |_| {}),
        Err(Error::InvalidOption { option, .. }) if option == "--validation-split"
    ));
}

#[test]
fn same_seed_gives_bit_identical_weights_and_another_seed_does_not() {
    let (x, y) = blobs(300, 7);
    let data = SliceSamples::new(&x, &y, [1, 1, DIM]).unwrap();
    let run = |seed: u64| {
        let mut m = small_model(8);
        train(&mut m, &data, &TrainConfig { seed, ..cfg(2) }, &mut |_| {}).unwrap();
        m.snapshot()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn mlp_training_is_deterministic_on_image_sized_inputs() {
    // Exercises the full-size products (where a threaded or SIMD path would run) rather than the toy model.
    let n = 96;
    let mut rng = Rng::new(12);
    let x: Vec<f32> = (0..n * 784).map(|_| rng.uniform()).collect();
    let y: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
    let data = SliceSamples::new(&x, &y, [1, 28, 28]).unwrap();
    let run = || {
        let mut m = Model::from_spec("mlp:784-64-10", 1).unwrap();
        train(
            &mut m,
            &data,
            &TrainConfig {
                epochs: 2,
                ..TrainConfig::default()
            },
            &mut |_| {},
        )
        .unwrap();
        m.snapshot()
    };
    assert_eq!(run(), run());
}

/// Wraps samples and turns one of them into NaNs once `poison_after` samples have been read.
struct PoisonAfter<'a> {
    inner: SliceSamples<'a>,
    reads: Cell<usize>,
    poison_after: usize,
}

impl Samples for PoisonAfter<'_> {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn sample_shape(&self) -> [usize; 3] {
        self.inner.sample_shape()
    }
    fn write_sample(&self, index: usize, out: &mut [f32]) {
        self.inner.write_sample(index, out);
        self.reads.set(self.reads.get() + 1);
        if self.reads.get() > self.poison_after {
            out[0] = f32::NAN;
        }
    }
    fn label(&self, index: usize) -> u8 {
        self.inner.label(index)
    }
}

#[test]
fn nan_input_in_epoch_two_stops_with_diverged_and_restores_epoch_one_weights() {
    let (x, y) = blobs(96, 10);
    let data = SliceSamples::new(&x, &y, [1, 1, DIM]).unwrap();
    let mut reference = small_model(11);
    train(&mut reference, &data, &cfg(1), &mut |_| {}).unwrap();

    let poisoned = PoisonAfter {
        inner: data,
        reads: Cell::new(0),
        poison_after: 96 + 40,
    };
    let mut model = small_model(11);
    let err = train(&mut model, &poisoned, &cfg(3), &mut |_| {}).unwrap_err();
    match err {
        // Sample 137 overall is the 41st of epoch 2, i.e. in step 3 at batch size 16. ReLU propagates NaN, so
        // the loss itself is the first non-finite value.
        Error::Diverged { epoch, step, what } => {
            assert_eq!(
                (epoch, step, what.as_str()),
                (2, 3, "the loss is not finite")
            )
        }
        other => panic!("expected Diverged, got {other:?}"),
    }
    assert_eq!(model.snapshot(), reference.snapshot());
}

#[test]
fn huge_sgd_learning_rate_diverges_and_leaves_finite_weights() {
    let (x, y) = blobs(300, 12);
    let data = SliceSamples::new(&x, &y, [1, 1, DIM]).unwrap();
    let mut model = small_model(13);
    let c = TrainConfig {
        optimizer: OptimizerKind::sgd(0.9),
        lr: 1e6,
        ..cfg(50)
    };
    let err = train(&mut model, &data, &c, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::Diverged { .. }), "{err:?}");
    assert!(model.snapshot().iter().flatten().all(|v| v.is_finite()));
}

#[test]
fn a_loss_above_the_limit_stops_as_diverged_before_any_update() {
    let (x, y) = blobs(64, 14);
    let data = SliceSamples::new(&x, &y, [1, 1, DIM]).unwrap();
    let mut model = small_model(15);
    let initial = model.snapshot();
    let c = TrainConfig {
        max_loss: 1e-3,
        ..cfg(2)
    };
    match train(&mut model, &data, &c, &mut |_| {}).unwrap_err() {
        Error::Diverged { epoch, step, what } => {
            assert_eq!((epoch, step), (1, 1));
            assert!(what.contains("exceeds --max-loss"), "{what}");
        }
        other => panic!("expected Diverged, got {other:?}"),
    }
    assert_eq!(model.snapshot(), initial);
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let c = TrainConfig {
            max_loss: bad,
            ..cfg(1)
        };
        match train(&mut small_model(1), &data, &c, &mut |_| {}) {
            Err(Error::InvalidOption { option, .. }) => assert_eq!(option, "--max-loss"),
            other => panic!("expected InvalidOption for {bad}, got {other:?}"),
        }
    }
}

#[test]
fn rejects_invalid_configurations_naming_the_flag() {
    let (x, y) = blobs(30, 1);
    let data = SliceSamples::new(&x, &y, [1, 1, DIM]).unwrap();
    let flag = |c: TrainConfig| match train(&mut small_model(1), &data, &c, &mut |_| {}) {
        Err(Error::InvalidOption { option, .. }) => option,
        other => panic!("expected InvalidOption, got {other:?}"),
    };
    assert_eq!(
        flag(TrainConfig {
            batch_size: 0,
            ..cfg(1)
        }),
        "--batch-size"
    );
    assert_eq!(
        flag(TrainConfig {
            epochs: 0,
            ..cfg(1)
        }),
        "--epochs"
    );
    assert_eq!(flag(TrainConfig { lr: 0.0, ..cfg(1) }), "--lr");
    assert_eq!(
        flag(TrainConfig {
            lr: f32::NAN,
            ..cfg(1)
        }),
        "--lr"
    );
    assert_eq!(
        flag(TrainConfig {
            validation_fraction: Some(1.0),
            ..cfg(1)
        }),
        "--validation-split"
    );
    assert_eq!(
        flag(TrainConfig {
            validation_fraction: Some(0.9999),
            ..cfg(1)
        }),
        "--validation-split"
    );
}

#[test]
fn rejects_data_whose_sample_shape_differs_from_the_model() {
    let (x, y) = blobs(30, 1);
    let data = SliceSamples::new(&x, &y, [1, 2, DIM / 2]).unwrap();
    let r = train(&mut small_model(1), &data, &cfg(1), &mut |_| {});
    assert!(matches!(r, Err(Error::Shape(_))), "{r:?}");
    assert!(SliceSamples::new(&x, &y[..29], [1, 1, DIM]).is_err());
}
