//! tract-onnx, an independent Rust ONNX runtime, runs lowbit's exports on the builtin test sample (1,000
//! Fashion-MNIST images): models from lowbit's specs (MLP, LeNet-5, resnet:8 with option-A shortcuts, a small
//! MobileNet with depthwise convolutions and ReLU6), trained one epoch on half of the builtin training
//! sample.
//! - f32 export: tract's logits equal lowbit's within [`F32_LOGIT_TOLERANCE`] of each image's largest logit;
//! - QDQ export of PTQ W8A8 per-channel: tract's argmax agrees with lowbit's integer engine on at least 99.9% of
//!   the images ([`MAX_DIFFERING`]), and the count of differing images is printed (`--nocapture`).
use lowbit::data::{load, DataSource, Dataset};
use lowbit::nn::Model;
use lowbit::onnx::export;
use lowbit::quant::{convert, ptq, QuantConfig};
use lowbit::runtime::engine::{Engine, EngineOptions};
use lowbit::runtime::model::Provenance;
use lowbit::tensor::Tensor as LTensor;
use lowbit::train::{train, TrainConfig};
use prost::Message;
use tract_onnx::prelude::*;

/// The bound on f32 logits: 1e-4 of the image's largest |logit|. Both sides sum the same f32 products in
/// different orders; with K <= 1,600 terms per output the accumulated rounding is below K * 2^-24 ~ 1e-4 of the
/// terms' magnitude only in the worst case, and measured differences are around 1e-6.
const F32_LOGIT_TOLERANCE: f32 = 1e-4;

/// At most 1 of the 1,000 test images may differ (99.9% agreement, the bound).
const MAX_DIFFERING: usize = 1;

/// Training images used: every 2nd of the builtin 5,000.
const TRAIN_STRIDE: usize = 2;

/// Images per tract run.
const BATCH: usize = 250;

fn pixels(data: &Dataset, start: usize, n: usize) -> Vec<f32> {
    let per = data.image_len();
    data.images[start * per..(start + n) * per]
        .iter()
        .map(|&p| f32::from(p) / 255.0)
        .collect()
}

fn batch(data: &Dataset, start: usize, n: usize) -> LTensor {
    LTensor::new(
        pixels(data, start, n),
        vec![n, data.channels, data.rows, data.cols],
    )
}

/// Logits of the ONNX model `bytes` run by tract on every test image, `[n, classes]` row-major.
fn tract_logits(bytes: &[u8], test: &Dataset) -> Vec<f32> {
    let shape = [BATCH, test.channels, test.rows, test.cols];
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .expect("tract reads the export")
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .expect("tract optimises the export")
        .into_runnable()
        .unwrap();
    let mut out = Vec::with_capacity(test.n * test.classes);
    for start in (0..test.n).step_by(BATCH) {
        let x = Tensor::from_shape(&shape, &pixels(test, start, BATCH)).unwrap();
        let y = plan.run(tvec!(x.into())).expect("tract runs the export");
        out.extend(y[0].to_plain_array_view::<f32>().unwrap().iter().copied());
    }
    out
}

/// One epoch on every `TRAIN_STRIDE`-th training image (the builtin set is stored by class, so a stride keeps
/// every class): trained enough that logits are not near-ties, in seconds even for the graph models.
fn trained(spec: &str, train_set: &Dataset) -> Model {
    let per = train_set.image_len();
    let keep: Vec<usize> = (0..train_set.n).step_by(TRAIN_STRIDE).collect();
    let train_set = Dataset {
        images: keep
            .iter()
            .flat_map(|&i| train_set.images[i * per..(i + 1) * per].iter().copied())
            .collect(),
        labels: keep.iter().map(|&i| train_set.labels[i]).collect(),
        n: keep.len(),
        ..train_set.clone()
    };
    let train_set = &train_set;
    let mut m = Model::from_spec(spec, 1).unwrap();
    let cfg = TrainConfig {
        epochs: 1,
        ..TrainConfig::default()
    };
    train(&mut m, train_set, &cfg, &mut |_| {}).unwrap();
    m
}

fn check(spec: &str) {
    let split = load(&DataSource::Builtin).unwrap();
    let test = &split.test;
    assert_eq!(test.n % BATCH, 0);
    let t0 = std::time::Instant::now();
    let mut m = trained(spec, &split.train);
    let t_train = t0.elapsed().as_secs_f64();

    // f32: logits within tolerance.
    let bytes = export::float_model(&m, &Provenance::default())
        .unwrap()
        .encode_to_vec();
    let theirs = tract_logits(&bytes, test);
    let mut ours = Vec::with_capacity(theirs.len());
    for start in (0..test.n).step_by(BATCH) {
        ours.extend(m.forward(&batch(test, start, BATCH), false).unwrap().data);
    }
    let mut worst = 0f32;
    for (i, (a, b)) in ours
        .chunks(test.classes)
        .zip(theirs.chunks(test.classes))
        .enumerate()
    {
        let top = a
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / top;
        worst = worst.max(diff);
        assert!(
            diff <= F32_LOGIT_TOLERANCE,
            "{spec} f32: image {i}: lowbit {a:?} tract {b:?} (relative {diff})"
        );
    }

    // QDQ W8A8 per-channel: argmax agreement with the integer engine.
    let calib: Vec<LTensor> = (0..4).map(|i| batch(&split.train, i * 250, 250)).collect();
    let cfg = QuantConfig {
        per_channel: true,
        ..QuantConfig::default()
    };
    let qm = convert(&ptq(&m, &cfg, &calib).unwrap(), Provenance::default()).unwrap();
    // The engine's predictions (evaluate_quant would also run the slow integer simulation).
    let engine = Engine::with_options(&qm, EngineOptions::default()).unwrap();
    let engine_pred = engine.predict(&test.images, test.n).unwrap();
    let engine_correct = (0..test.n)
        .filter(|&i| engine_pred[i] == test.labels[i] as usize)
        .count();
    let bytes = export::quant_model(&qm, export::WeightType::default())
        .unwrap()
        .encode_to_vec();
    let theirs = lowbit::eval::argmax_rows(&tract_logits(&bytes, test), test.classes);
    let differ: Vec<usize> = (0..test.n)
        .filter(|&i| theirs[i] != engine_pred[i])
        .collect();
    let tract_correct = (0..test.n)
        .filter(|&i| theirs[i] == test.labels[i] as usize)
        .count();
    eprintln!(
        "{spec} (trained in {t_train:.1} s, checked in {:.1} s): f32 worst relative logit difference {worst:.2e}; QDQ W8A8: tract and the engine differ on {} of {} images {differ:?}; accuracy tract {:.1}%, engine {:.1}%",
        t0.elapsed().as_secs_f64() - t_train,
        differ.len(),
        test.n,
        100.0 * tract_correct as f64 / test.n as f64,
        100.0 * engine_correct as f64 / test.n as f64
    );
    assert!(
        differ.len() <= MAX_DIFFERING,
        "{spec}: {} images differ: {differ:?}",
        differ.len()
    );
}

#[test]
fn tract_runs_the_mlp_exports_like_lowbit() {
    check("mlp:784-64-10");
}

#[test]
fn tract_runs_the_lenet5_exports_like_lowbit() {
    check("lenet5");
}

#[test]
fn tract_runs_the_resnet8_exports_like_lowbit() {
    check("resnet:8");
}

#[test]
fn tract_runs_the_mobilenet_exports_like_lowbit() {
    check("mobilenet:t1c16n1s1-t4c24n2s2-h64");
}

/// Element-wise functions (LeakyReLU, Sigmoid): the f32 export as ONNX ops, the QDQ export as lowbit's 256-entry
/// table (`Cast` + `Gather`), untrained (the table path is exact, so agreement does not need trained margins).
#[test]
fn tract_runs_elementwise_tables_like_the_engine() {
    use lowbit::nn::{Conv2d, Dense, Flatten, Layer, MaxPool2d, UnaryOp};
    let split = load(&DataSource::Builtin).unwrap();
    let test = &split.test;
    for (k, u) in UnaryOp::examples().into_iter().enumerate() {
        let kind = u.op().kind();
        let mut rng = lowbit::rng::Rng::new(7 + k as u64);
        let layers = vec![
            Layer::Conv2d(Conv2d::new(1, 4, (3, 3), (1, 1), (1, 1), &mut rng)),
            Layer::Unary(u.clone()),
            Layer::MaxPool2d(MaxPool2d::new((2, 2), (2, 2))),
            Layer::Flatten(Flatten::new()),
            Layer::Dense(Dense::new(4 * 14 * 14, 10, &mut rng)),
        ];
        let mut m = Model::sequential("unary", [1, 28, 28], 10, layers);
        let bytes = export::float_model(&m, &Provenance::default())
            .unwrap()
            .encode_to_vec();
        let theirs = tract_logits(&bytes, test);
        let ours = m.forward(&batch(test, 0, test.n), false).unwrap().data;
        for (a, b) in ours.chunks(10).zip(theirs.chunks(10)) {
            let top = a
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()))
                .max(f32::MIN_POSITIVE);
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / top;
            assert!(diff <= F32_LOGIT_TOLERANCE, "{kind}: {a:?} vs {b:?}");
        }
        let calib = vec![batch(&split.train, 0, 250)];
        let qm = convert(
            &ptq(&m, &QuantConfig::default(), &calib).unwrap(),
            Provenance::default(),
        )
        .unwrap();
        assert!(
            qm.ops()
                .any(|o| matches!(o, lowbit::runtime::model::QOp::Lut(_))),
            "{kind}: no table"
        );
        let engine = Engine::with_options(&qm, EngineOptions::default()).unwrap();
        let engine_pred = engine.predict(&test.images, test.n).unwrap();
        let bytes = export::quant_model(&qm, export::WeightType::default())
            .unwrap()
            .encode_to_vec();
        let theirs = lowbit::eval::argmax_rows(&tract_logits(&bytes, test), test.classes);
        let differ = (0..test.n).filter(|&i| theirs[i] != engine_pred[i]).count();
        eprintln!(
            "{kind}: tract and the engine differ on {differ} of {} images",
            test.n
        );
        assert!(differ <= MAX_DIFFERING, "{kind}: {differ} images differ");
    }
}
