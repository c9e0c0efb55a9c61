//! LSQ activations on values that can be negative (a residual branch before its `Add`, a 1x1 shortcut, a linear
//! bottleneck): QAT centres their codes on zero point `2^(b-1)` instead of clipping the negative half to 0, the
//! step gradient follows Esser et al.'s eq. 3 with `Qn = 2^(b-1)`, and the trained model runs on the engine node
//! for node equal to the simulation.
mod common;

use common::{batch, engine_equals_simulation};
use lowbit::data::{load, DataSource, Dataset};
use lowbit::nn::{softmax_cross_entropy, Layer, Model};
use lowbit::optim::{Optimizer, OptimizerKind};
use lowbit::quant::{convert, prepare_qat, ActMethod, ActQuantizer, QuantConfig, WeightMethod};
use lowbit::runtime::model::Provenance;
use lowbit::tensor::Tensor;
use lowbit_runtime::qparams::QParams;

fn lsq_cfg(bits: u32, act: ActMethod) -> QuantConfig {
    QuantConfig {
        weight_bits: bits,
        act_bits: bits,
        per_channel: true,
        weight_quantizer: WeightMethod::Lsq,
        act_quantizer: act,
        ..QuantConfig::default()
    }
}

#[test]
fn a_signed_lsq_activation_centres_its_codes_and_its_step_gradient_counts_both_clips() {
    let mut a = ActQuantizer::from_config(&lsq_cfg(2, ActMethod::Lsq), 2).unwrap();
    a.set_signed(true);
    a.set_range(-1.0, 0.5).unwrap(); // step (0.5 + 1) / 3 = 0.5, codes -2..=1 about zero point 2
    assert_eq!(a.try_qparams().unwrap(), QParams::new(0.5, 2).unwrap());
    assert_eq!(a.range(), Some((-1.0, 0.5)));
    let x = Tensor::new(vec![0.3, -0.2, -0.6, 2.0, -3.0], vec![1, 5]);
    let y = a.forward(&x, true);
    // x / s = [0.6, -0.4, -1.2, 4, -6] -> [1, 0, -1, 1 (clipped), -2 (clipped)] steps.
    assert_eq!(y.data, vec![0.5, 0.0, -0.5, 0.5, -1.0]);
    assert!((a.clipped_fraction() - 0.4).abs() < 1e-6);
    let g = a.backward(&Tensor::new(vec![1.0, 2.0, 3.0, 4.0, 5.0], vec![1, 5]));
    assert_eq!(g.data, vec![1.0, 2.0, 3.0, 0.0, 0.0]);
    // dvq/ds = [-0.6 + 1, 0.4 + 0, 1.2 - 1, Qp = 1, -Qn = -2]; sum g * d = 0.4 + 0.8 + 0.6 + 4 - 10 = -4.2;
    // gradient scale 1 / sqrt(N Qp) with N = 5, Qp = 1.
    let p = a.params_mut();
    let want = -4.2 / 5f32.sqrt();
    assert!(
        (p[0].grad[0] - want).abs() < 1e-5,
        "{} vs {want}",
        p[0].grad[0]
    );
}

#[test]
fn a_signed_lsq_step_starts_from_the_mean_magnitude_over_the_positive_code_count() {
    let mut a = ActQuantizer::from_config(&lsq_cfg(4, ActMethod::Lsq), 4).unwrap();
    a.set_signed(true);
    a.forward(&Tensor::new(vec![1.0, 3.0, 0.0, -4.0], vec![2, 2]), true);
    // 2 * mean|x| / sqrt(Qp), Qp = 7 for signed 4-bit codes.
    let want = 4.0 / 7f32.sqrt();
    assert!((a.learned_value().unwrap() - want).abs() < 1e-6);
    assert_eq!(a.try_qparams().unwrap().zero_point, 8);
}

/// The producer's kind of each hidden activation quantizer's input, split by signedness.
fn points(m: &Model) -> (Vec<&'static str>, Vec<&'static str>, Vec<ActMethod>) {
    let (mut signed, mut unsigned, mut signed_methods) = (Vec::new(), Vec::new(), Vec::new());
    for node in &m.nodes {
        if let Layer::ActQuant(q) = &node.layer {
            if q.is_input() {
                continue;
            }
            let producer = m.nodes[node.inputs[0] - 1].layer.kind();
            if q.is_signed() {
                signed.push(producer);
                signed_methods.push(q.method());
            } else {
                unsigned.push(producer);
            }
        }
    }
    (signed, unsigned, signed_methods)
}

#[test]
fn qat_marks_exactly_the_quantization_points_that_can_be_negative() {
    // (spec, signed points): resnet:8 has one residual branch per block (3); option B adds the two 1x1 shortcut
    // convs; the MLP, LeNet-5 and a CNN quantize only ReLU outputs.
    for (spec, want) in [
        ("mlp:784-16-10", 0),
        ("lenet5", 0),
        ("cnn:c4-p-10", 0),
        ("resnet:8", 3),
        ("resnet:8:b", 5),
    ] {
        let mut m = Model::from_spec(spec, 1).unwrap();
        prepare_qat(&mut m, &lsq_cfg(4, ActMethod::Lsq)).unwrap();
        let (signed, unsigned, _) = points(&m);
        assert_eq!(signed.len(), want, "{spec}: {signed:?}");
        assert!(
            signed.iter().all(|k| k.starts_with("conv")),
            "{spec}: {signed:?}"
        );
        assert!(
            unsigned
                .iter()
                .all(|k| ["relu", "clip", "avgpool2d"].contains(k)),
            "{spec}: {unsigned:?}"
        );
    }
    // MobileNet's linear bottlenecks (projection convs without ReLU6) and the residual sums they feed (no
    // activation after them) are signed; its ReLU6 outputs are not.
    let mut m = Model::from_spec("mobilenet:t1c8n1s1-t2c16n2s2-h32", 1).unwrap();
    prepare_qat(&mut m, &lsq_cfg(4, ActMethod::Lsq)).unwrap();
    let (signed, unsigned, _) = points(&m);
    assert_eq!(
        signed,
        ["conv_bn2d", "conv_bn2d", "conv_bn2d", "add"],
        "{unsigned:?}"
    );
    assert!(
        unsigned.iter().all(|k| ["clip", "avgpool2d"].contains(k)),
        "{unsigned:?}"
    );
    // PACT has no signed form here: those points fall back to EMA min/max ranges, the others stay PACT.
    let mut m = Model::from_spec("resnet:8", 1).unwrap();
    prepare_qat(&mut m, &lsq_cfg(4, ActMethod::Pact)).unwrap();
    let (_, _, methods) = points(&m);
    assert_eq!(methods, vec![ActMethod::Ste; 3]);
    let pact = m
        .nodes
        .iter()
        .filter(|n| matches!(&n.layer, Layer::ActQuant(q) if q.method() == ActMethod::Pact))
        .count();
    assert!(pact > 0);
}

#[test]
fn lsq_qat_of_a_residual_net_keeps_negative_branches_and_runs_on_the_engine_as_simulated() {
    let split = load(&DataSource::Builtin).unwrap();
    let mut m = Model::from_spec("resnet:8", 4).unwrap();
    prepare_qat(&mut m, &lsq_cfg(4, ActMethod::Lsq)).unwrap();
    let mut opt = Optimizer::new(OptimizerKind::adam(), 1e-3).unwrap();
    for step in 0..6 {
        let x = batch(&split.train, step * 32, 32);
        let logits = m.forward(&x, true).unwrap();
        let out = softmax_cross_entropy(&logits, &split.train.labels[step * 32..(step + 1) * 32])
            .unwrap();
        m.backward(&out.grad).unwrap();
        opt.step(&mut m.params_mut()).unwrap();
    }
    let mut negative = 0;
    for node in &m.nodes {
        if let Layer::ActQuant(q) = &node.layer {
            if q.is_signed() {
                let (lo, hi) = q.range().unwrap();
                assert!(lo < 0.0 && hi > 0.0, "{}: [{lo}, {hi}]", node.name);
                assert_eq!(q.qparams().zero_point, 8, "{}", node.name);
                negative += 1;
            }
        }
    }
    assert_eq!(negative, 3);
    let n = 200;
    let test = Dataset {
        images: split.test.images[..n * split.test.image_len()].to_vec(),
        labels: split.test.labels[..n].to_vec(),
        n,
        ..split.test.clone()
    };
    let fake_quant = m.predict(&batch(&test, 0, n)).unwrap();
    let qm = convert(&m, Provenance::default()).unwrap();
    let engine = engine_equals_simulation(&qm, &test);
    // The fake-quant graph computes in f32 what the engine computes in integers: near-ties may differ.
    let same = engine
        .iter()
        .zip(&fake_quant)
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        same >= 194,
        "engine and fake-quant graph agree on {same}/{n}"
    );
}
