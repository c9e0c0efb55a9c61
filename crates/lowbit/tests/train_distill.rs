//! Knowledge distillation: the loss and its gradient (hand-checked and by finite differences), the training
//! loop with a teacher, and the configuration errors.
use lowbit::nn::{distillation_loss, softmax_cross_entropy, Dense, Layer, Model, Relu};
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;
use lowbit::train::{train, train_distilled, Distill, SliceSamples, TrainConfig};
use lowbit::Error;

fn random_logits(rows: usize, classes: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    Tensor::new(
        (0..rows * classes).map(|_| 3.0 * rng.normal()).collect(),
        vec![rows, classes],
    )
}

#[test]
fn distillation_gradient_agrees_with_finite_differences_of_the_loss() {
    let (rows, classes) = (4, 5);
    let z = random_logits(rows, classes, 1);
    let t = random_logits(rows, classes, 2);
    let labels = [0u8, 3, 4, 1];
    for (alpha, temp) in [(0.5f32, 1.0f32), (1.0, 2.0), (0.3, 4.0)] {
        let out = distillation_loss(&z, &labels, &t, alpha, temp).unwrap();
        let loss_at =
            |z: &Tensor| f64::from(distillation_loss(z, &labels, &t, alpha, temp).unwrap().loss);
        let h = 1e-2f32;
        for i in 0..z.len() {
            let mut plus = z.clone();
            plus.data[i] += h;
            let mut minus = z.clone();
            minus.data[i] -= h;
            let fd = (loss_at(&plus) - loss_at(&minus)) / f64::from(2.0 * h);
            let g = f64::from(out.grad.data[i]);
            assert!(
                (fd - g).abs() <= 2e-3 * g.abs().max(0.05),
                "alpha {alpha} T {temp} logit {i}: analytic {g}, finite difference {fd}"
            );
        }
    }
}

#[test]
fn distillation_reduces_to_cross_entropy_and_to_zero_on_the_teacher_itself() {
    let z = random_logits(3, 4, 3);
    let labels = [1u8, 0, 3];
    let ce = softmax_cross_entropy(&z, &labels).unwrap();
    // A vanishing soft weight is cross-entropy; the soft term of a student equal to its teacher is 0.
    let tiny = distillation_loss(&z, &labels, &z, 1e-9, 1.0).unwrap();
    assert!((tiny.loss - ce.loss).abs() < 1e-6);
    let soft_only = distillation_loss(&z, &labels, &z, 1.0, 3.0).unwrap();
    assert!(soft_only.loss.abs() < 1e-6, "{}", soft_only.loss);
    assert!(soft_only.grad.data.iter().all(|g| g.abs() < 1e-7));
    assert_eq!(soft_only.correct, ce.correct);
    // Hand-checked: one row, two classes, teacher (0, 0), student (ln 3, 0), alpha 1, T 1:
    // KL((1/2, 1/2) || (3/4, 1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3); gradient (3/4 - 1/2, 1/4 - 1/2).
    let s = Tensor::new(vec![3f32.ln(), 0.0], vec![1, 2]);
    let t = Tensor::new(vec![0.0, 0.0], vec![1, 2]);
    let out = distillation_loss(&s, &[0], &t, 1.0, 1.0).unwrap();
    assert!((out.loss - 0.5 * (4f32 / 3.0).ln()).abs() < 1e-6);
    assert!((out.grad.data[0] - 0.25).abs() < 1e-6 && (out.grad.data[1] + 0.25).abs() < 1e-6);
    let wrong = Tensor::new(vec![0.0; 3], vec![1, 3]);
    assert!(matches!(
        distillation_loss(&s, &[0], &wrong, 1.0, 1.0),
        Err(Error::Shape(_))
    ));
}

const DIM: usize = 6;

fn blobs(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let mut x = Vec::with_capacity(n * DIM);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % 3;
        x.extend((0..DIM).map(|d| if d % 3 == c { 2.0 } else { 0.0 } + 0.7 * rng.normal()));
        y.push(c as u8);
    }
    (x, y)
}

fn model(seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    Model::sequential(
        "test:6-12-3",
        [1, 1, DIM],
        3,
        vec![
            Layer::Dense(Dense::new(DIM, 12, &mut rng)),
            Layer::Relu(Relu::new()),
            Layer::Dense(Dense::new(12, 3, &mut rng)),
        ],
    )
}

#[test]
fn a_student_trained_on_soft_targets_alone_moves_towards_its_teacher() {
    let (x, y) = blobs(600, 1);
    let data = SliceSamples::new(&x, &y, [1, 1, DIM]).unwrap();
    let plain = TrainConfig {
        epochs: 3,
        batch_size: 20,
        lr: 1e-2,
        seed: 1,
        ..TrainConfig::default()
    };
    let mut teacher = model(2);
    train(&mut teacher, &data, &plain, &mut |_| {}).unwrap();
    // Soft targets only (alpha 1): the student learns the teacher's outputs, labels unused.
    let distilled = TrainConfig {
        distill: Some(Distill {
            alpha: 1.0,
            temperature: 2.0,
        }),
        ..plain.clone()
    };
    let gap = |student: &mut Model, teacher: &mut Model| {
        let xs = Tensor::new(x.clone(), vec![600, DIM]);
        let a = student.forward(&xs, false).unwrap();
        let b = teacher.forward(&xs, false).unwrap();
        let (pa, pb) = (soft_rows(&a), soft_rows(&b));
        pa.iter().zip(&pb).map(|(p, q)| (p - q).abs()).sum::<f32>() / 600.0
    };
    let mut student = model(3);
    let before = gap(&mut student, &mut teacher.clone());
    let distil = |m: &mut Model| {
        train_distilled(m, Some(&teacher), &data, &distilled, None, &mut |_| {}).unwrap()
    };
    let stats = distil(&mut student);
    let after = gap(&mut student, &mut teacher.clone());
    assert!(after < before / 4.0, "mean |p_s - p_t| {before} -> {after}");
    assert!(stats.last().unwrap().train_loss < stats[0].train_loss);
    // The same run is bit-identical (the teacher's forward has no randomness).
    let mut again = model(3);
    distil(&mut again);
    assert_eq!(again.snapshot(), student.snapshot());
}

fn soft_rows(z: &Tensor) -> Vec<f32> {
    z.data
        .chunks_exact(z.row_len())
        .flat_map(|r| {
            let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let e: Vec<f32> = r.iter().map(|v| (v - m).exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

#[test]
fn distillation_settings_and_a_missing_teacher_are_errors_naming_the_option() {
    let (x, y) = blobs(30, 4);
    let data = SliceSamples::new(&x, &y, [1, 1, DIM]).unwrap();
    let with = |alpha, temperature| TrainConfig {
        epochs: 1,
        distill: Some(Distill { alpha, temperature }),
        ..TrainConfig::default()
    };
    let option = |r: lowbit::Result<_>| match r {
        Err(Error::InvalidOption { option, .. }) => option,
        other => panic!("expected InvalidOption, got {other:?}"),
    };
    for (alpha, temp, flag) in [
        (0.0, 1.0, "--distill"),
        (1.5, 1.0, "--distill"),
        (f32::NAN, 1.0, "--distill"),
        (0.5, 0.0, "--distill-temperature"),
        (0.5, f32::INFINITY, "--distill-temperature"),
    ] {
        assert_eq!(option(with(alpha, temp).validate().map(|_| ())), flag);
    }
    let teacher = model(1);
    let mut m = model(2);
    assert_eq!(
        option(train(&mut m, &data, &with(0.5, 1.0), &mut |_| {}).map(|_| ())),
        "--distill"
    );
    let plain = TrainConfig {
        epochs: 1,
        ..TrainConfig::default()
    };
    assert_eq!(
        option(
            train_distilled(&mut m, Some(&teacher), &data, &plain, None, &mut |_| {}).map(|_| ())
        ),
        "--distill"
    );
}
