//! Every element-wise function of `nn::unary` (via `UnaryOp::examples`, so a new function is tested here without
//! touching this file): gradients against finite differences, float files, and the quantized table.
mod common;

use common::engine_equals_simulation;
use common::grad::{check_layer, random_tensor};
use lowbit::data::{load, DataSource, Dataset};
use lowbit::modelfile::{float_from_bytes, float_to_bytes};
use lowbit::nn::{Conv2d, Dense, Flatten, Layer, MaxPool2d, Model, UnaryOp};
use lowbit::quant::{convert, ptq, QuantConfig};
use lowbit::rng::Rng;
use lowbit::runtime::model::{Provenance, QOp};
use lowbit::runtime::qparams::{dequantize, quantize};
use lowbit::tensor::Tensor;
use std::path::Path;

/// input -> conv 1->4 -> the function -> max pool -> flatten -> dense.
fn model_with(u: &UnaryOp, seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    let layers = vec![
        Layer::Conv2d(Conv2d::new(1, 4, (3, 3), (1, 1), (1, 1), &mut rng)),
        Layer::Unary(u.clone()),
        Layer::MaxPool2d(MaxPool2d::new((2, 2), (2, 2))),
        Layer::Flatten(Flatten::new()),
        Layer::Dense(Dense::new(4 * 14 * 14, 10, &mut rng)),
    ];
    Model::sequential("unary test", [1, 28, 28], 10, layers)
}

fn batch(data: &Dataset, start: usize, n: usize) -> Tensor {
    let per = data.image_len();
    let x = data.images[start * per..(start + n) * per]
        .iter()
        .map(|&p| f32::from(p) / 255.0)
        .collect();
    Tensor::new(x, vec![n, 1, data.rows, data.cols])
}

#[test]
fn every_elementwise_function_has_finite_difference_gradients() {
    for u in UnaryOp::examples() {
        let mut rng = Rng::new(3);
        let x = random_tensor(&mut rng, &[3, 2, 4, 5]);
        check_layer(u.op().kind(), 3, Layer::Unary(u), &x, true);
    }
}

#[test]
fn every_elementwise_function_round_trips_through_float_files() {
    for u in UnaryOp::examples() {
        let mut m = model_with(&u, 1);
        let bytes = float_to_bytes(&m, &Provenance::default()).unwrap();
        let (mut back, _) = float_from_bytes(&bytes, Path::new("u.f32")).unwrap();
        let x = random_tensor(&mut Rng::new(2), &[2, 1, 28, 28]);
        assert_eq!(
            back.forward(&x, false).unwrap().data,
            m.forward(&x, false).unwrap().data,
            "{}",
            u.op().kind()
        );
    }
}

#[test]
fn every_elementwise_function_quantizes_to_its_exact_table_and_runs_on_the_engine() {
    let split = load(&DataSource::Builtin).unwrap();
    let calib = vec![batch(&split.train, 0, 200)];
    let test = Dataset {
        images: split.test.images[..300 * split.test.image_len()].to_vec(),
        labels: split.test.labels[..300].to_vec(),
        n: 300,
        ..split.test.clone()
    };
    for u in UnaryOp::examples() {
        let m = model_with(&u, 4);
        for bits in [8, 4] {
            let cfg = QuantConfig {
                act_bits: bits,
                ..QuantConfig::default()
            };
            let qm = convert(&ptq(&m, &cfg, &calib).unwrap(), Provenance::default()).unwrap();
            let lut = qm
                .ops()
                .find_map(|op| match op {
                    QOp::Lut(l) => Some(l.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{}: no table in the quantized model", u.op().kind()));
            let qmax = (1 << bits) - 1;
            for (q, &t) in lut.table.iter().enumerate() {
                let want = quantize(
                    u.apply(dequantize(q as i32, lut.input)),
                    lut.output,
                    0,
                    qmax,
                );
                assert_eq!(i32::from(t), want, "{} code {q}", u.op().kind());
            }
            engine_equals_simulation(&qm, &test);
        }
    }
}
