//! Batch-norm folding for QAT with batch statistics (`ConvBn2d`, Jacob et al. 2018 sec. 3.2; Krishnamoorthi
//! 2018 sec. 3.2): gradients against finite differences, inference equal to the folded convolution, training
//! equal to the unfolded conv + batch norm when nothing is quantized, conversion that the engine and the
//! simulation run identically, and the configuration plumbing.
//!
//! Gradient checks use the scheme and tolerances of `cnn_gradients.rs`: central differences with step H on the
//! objective `sum(y * r)` accumulated in f64, |fd - analytic| <= ATOL + RTOL |analytic|. The layer is smooth
//! (a linear conv, a division by f, a batch norm over N = 2*25 = 50 values per channel, or an affine map once
//! frozen), so the truncation error is O(H^2) = 1e-4 and f32 rounding of objectives of magnitude ~10 is
//! ~1e-4 after / 2H: ATOL = 5e-4. A missing `1/f`, a wrong `df/dgamma` or a gradient taken at `W` instead of
//! `W f` changes gradients by O(0.1..1).
mod common;

use common::grad::{dot, random_batch_norm, random_tensor_in as random_tensor, ATOL, H, RTOL};
use common::{accuracy, engine_equals_simulation};
use lowbit::config_file;
use lowbit::data::{load, DataSource, Dataset};
use lowbit::nn::{BatchNorm2d, Conv2d, Layer, Model};
use lowbit::quant::{
    convert, freeze_ranges, prepare_qat, BnFold, ConvBn2d, QuantConfig, WeightQuantKind,
    WeightQuantizer,
};
use lowbit::rng::Rng;
use lowbit::runtime::model::{Provenance, QOp};
use lowbit::tensor::Tensor;
use lowbit::train::{evaluate_float, train, TrainConfig};
use std::path::Path;

/// A conv + batch norm pair with a non-zero bias, gamma away from 0, and non-trivial running statistics.
fn conv_bn(seed: u64, ic: usize, oc: usize, padding: (usize, usize)) -> (Conv2d, BatchNorm2d) {
    let mut rng = Rng::new(seed);
    let mut conv = Conv2d::new(ic, oc, (3, 3), (1, 1), padding, &mut rng);
    for b in &mut conv.bias {
        *b = rng.uniform_range(-0.5, 0.5);
    }
    (conv, random_batch_norm(&mut rng, oc))
}

/// Checks dX and every parameter gradient (weight, bias, gamma, beta) of `layer` on `x` against central
/// differences; each perturbed forward starts from a clone of the unchanged layer (same running statistics).
fn check_gradients(what: &str, seed: u64, layer: &ConvBn2d, x: &Tensor) {
    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut l = layer.clone();
    let y = l.forward(x, true).unwrap();
    let r = random_tensor(&mut rng, &y.shape, -1.0, 1.0);
    let dx = l.backward(&r).unwrap();
    assert_eq!(dx.shape, x.shape, "{what}: dX shape");
    let params = l.params_mut();
    let names: Vec<&str> = params.iter().map(|p| p.name).collect();
    assert_eq!(names, ["weight", "bias", "gamma", "beta"], "{what}");
    let grads: Vec<Vec<f32>> = params.iter().map(|p| p.grad.to_vec()).collect();
    let objective = |l: &ConvBn2d, x: &Tensor| dot(&l.clone().forward(x, true).unwrap(), &r);
    let compare = |name: &str, i: usize, fd: f64, analytic: f32| {
        let analytic = f64::from(analytic);
        let err = (fd - analytic).abs();
        assert!(
            err <= ATOL + RTOL * analytic.abs(),
            "{what} {name}[{i}] (seed {seed}): finite difference {fd}, analytic {analytic}, error {err}"
        );
    };
    for (p, g) in grads.iter().enumerate() {
        let mut st = layer.clone();
        for (i, &gv) in g.iter().enumerate() {
            let old = st.params_mut()[p].value[i];
            st.params_mut()[p].value[i] = old + H;
            let plus = objective(&st, x);
            st.params_mut()[p].value[i] = old - H;
            let minus = objective(&st, x);
            st.params_mut()[p].value[i] = old;
            compare(names[p], i, (plus - minus) / (2.0 * f64::from(H)), gv);
        }
    }
    let mut xs = x.clone();
    for i in 0..x.len() {
        let old = xs.data[i];
        xs.data[i] = old + H;
        let plus = objective(layer, &xs);
        xs.data[i] = old - H;
        let minus = objective(layer, &xs);
        xs.data[i] = old;
        compare("dX", i, (plus - minus) / (2.0 * f64::from(H)), dx.data[i]);
    }
}

#[test]
fn convbn_gradients_match_finite_differences_with_batch_statistics() {
    for (seed, &(ic, oc, pad)) in [(2, 3, (1, 1)), (1, 2, (0, 0)), (3, 2, (1, 0))]
        .iter()
        .enumerate()
    {
        let seed = seed as u64;
        let (conv, bn) = conv_bn(seed, ic, oc, pad);
        let layer = ConvBn2d::new(conv, bn, None).unwrap();
        let mut rng = Rng::new(seed + 100);
        let x = random_tensor(&mut rng, &[2, ic, 5, 5], -1.0, 1.0);
        check_gradients("batch statistics", seed, &layer, &x);
    }
}

#[test]
fn convbn_gradients_match_finite_differences_for_grouped_and_depthwise_convs() {
    // (in, out, groups): two groups, depthwise, depthwise with a channel multiplier of 2.
    for (seed, &(ic, oc, groups)) in [(4, 6, 2), (3, 3, 3), (2, 4, 2)].iter().enumerate() {
        let seed = seed as u64;
        let (dense, bn) = conv_bn(seed + 30, ic, oc, (1, 1));
        let mut rng = Rng::new(seed + 300);
        let mut conv =
            Conv2d::new_grouped(ic, oc, (3, 3), (1, 1), (1, 1), groups, &mut rng).unwrap();
        conv.bias = dense.bias;
        for frozen in [None, Some(0)] {
            let layer = ConvBn2d::new(conv.clone(), bn.clone(), frozen).unwrap();
            let x = random_tensor(&mut rng, &[2, ic, 5, 5], -1.0, 1.0);
            check_gradients(
                &format!("groups {groups}, frozen {frozen:?}"),
                seed,
                &layer,
                &x,
            );
        }
    }
}

#[test]
fn convbn_gradients_match_finite_differences_with_frozen_statistics() {
    // Frozen: the layer is the folded conv, so gamma acts through f on both the weights and the bias, and the
    // conv bias no longer cancels (with batch statistics its gradient is zero).
    for seed in 0..3u64 {
        let (conv, bn) = conv_bn(seed + 10, 2, 3, (1, 1));
        let layer = ConvBn2d::new(conv, bn, Some(0)).unwrap();
        let mut rng = Rng::new(seed + 200);
        let x = random_tensor(&mut rng, &[2, 2, 5, 5], -1.0, 1.0);
        check_gradients("frozen statistics", seed, &layer, &x);
        let mut l = layer.clone();
        let y = l.forward(&x, true).unwrap();
        l.backward(&Tensor::new(vec![1.0; y.len()], y.shape))
            .unwrap();
        assert!(
            l.bn.frozen,
            "freeze_after_steps = 0 freezes at the first step"
        );
        assert!(
            l.conv.grad_bias.iter().all(|g| g.abs() > 1.0),
            "bias gradient flows"
        );
    }
}

/// The straight-through surrogate of a quantized `ConvBn2d`: `BN(conv(x, W f + delta) / f + b)` with the
/// quantization residual `delta = fq(W f0) - W f0` held constant, built from plain Conv2d and BatchNorm2d.
/// Its exact derivative is what STE backpropagation must give, including the path through `f` into gamma
/// (which cancels without quantization, so only a quantized check can see it).
fn ste_surrogate(layer: &ConvBn2d, delta: &[f32], x: &Tensor, r: &Tensor) -> f64 {
    let (conv, bn) = (&layer.conv, &layer.bn);
    let k = conv.k();
    let f: Vec<f64> = (0..conv.out_channels)
        .map(|c| f64::from(bn.gamma[c]) / (f64::from(bn.running_var[c]) + f64::from(bn.eps)).sqrt())
        .collect();
    let w: Vec<f32> = conv
        .weight
        .iter()
        .zip(delta)
        .enumerate()
        .map(|(i, (&w, &d))| (f64::from(w) * f[i / k]) as f32 + d)
        .collect();
    let mut plain = Conv2d::from_weights(
        conv.in_channels,
        conv.out_channels,
        conv.kernel,
        conv.stride,
        conv.padding,
        w,
        vec![0.0; conv.out_channels],
    );
    let y = plain.forward(x, false).unwrap();
    let p: usize = y.shape[2..].iter().product();
    let mut z = y.data.clone();
    for (i, v) in z.iter_mut().enumerate() {
        let c = (i / p) % conv.out_channels;
        *v = *v / f[c] as f32 + conv.bias[c];
    }
    let out = bn.clone().forward(&Tensor::new(z, y.shape), true).unwrap();
    dot(&out, r)
}

#[test]
fn quantized_gradients_match_the_straight_through_surrogate_including_gamma_through_the_fold() {
    for (seed, frozen) in [(0u64, false), (1, false), (2, true)] {
        let (mut conv, bn) = conv_bn(seed + 50, 2, 3, (1, 1));
        conv.weight_quant = Some(wq4());
        let mut layer = ConvBn2d::new(conv, bn, frozen.then_some(0)).unwrap();
        let mut rng = Rng::new(seed + 300);
        let x = random_tensor(&mut rng, &[2, 2, 5, 5], -1.0, 1.0);
        let mut l = layer.clone();
        let y = l.forward(&x, true).unwrap();
        let r = random_tensor(&mut rng, &y.shape, -1.0, 1.0);
        l.backward(&r).unwrap();
        // delta at the unperturbed point, from the quantizer's own codes.
        let k = layer.conv.k();
        let f0: Vec<f64> = (0..3)
            .map(|c| {
                f64::from(layer.bn.gamma[c])
                    / (f64::from(layer.bn.running_var[c]) + f64::from(layer.bn.eps)).sqrt()
            })
            .collect();
        let wf: Vec<f32> = layer
            .conv
            .weight
            .iter()
            .enumerate()
            .map(|(i, &w)| (f64::from(w) * f0[i / k]) as f32)
            .collect();
        let wq = wq4().quantize(&wf, 3, k).dequantize(k);
        let delta: Vec<f32> = wq.iter().zip(&wf).map(|(q, w)| q - w).collect();
        assert!(
            delta.iter().any(|d| d.abs() > 1e-3),
            "4-bit codes leave a residual"
        );
        if frozen {
            layer.bn.frozen = true;
        }
        let analytic_gamma = l.bn.grad_gamma.clone();
        let analytic_w = l.conv.grad_weight.clone();
        let fd = |layer: &mut ConvBn2d, get: &dyn Fn(&mut ConvBn2d) -> &mut f32| {
            let old = *get(layer);
            *get(layer) = old + H;
            let plus = ste_surrogate(layer, &delta, &x, &r);
            *get(layer) = old - H;
            let minus = ste_surrogate(layer, &delta, &x, &r);
            *get(layer) = old;
            (plus - minus) / (2.0 * f64::from(H))
        };
        let compare = |what: &str, fd: f64, analytic: f32| {
            let analytic = f64::from(analytic);
            let err = (fd - analytic).abs();
            assert!(
                err <= ATOL + RTOL * analytic.abs(),
                "{what} (seed {seed}, frozen {frozen}): surrogate {fd}, analytic {analytic}, error {err}"
            );
        };
        for (c, &g) in analytic_gamma.iter().enumerate() {
            let d = fd(&mut layer, &|l: &mut ConvBn2d| &mut l.bn.gamma[c]);
            compare(&format!("gamma[{c}]"), d, g);
        }
        for i in (0..analytic_w.len()).step_by(5) {
            let d = fd(&mut layer, &|l: &mut ConvBn2d| &mut l.conv.weight[i]);
            compare(&format!("weight[{i}]"), d, analytic_w[i]);
        }
    }
}

#[test]
fn without_quantization_training_equals_conv_then_batchnorm_and_tracks_the_same_statistics() {
    let (conv, bn) = conv_bn(7, 2, 4, (1, 1));
    let mut fused = ConvBn2d::new(conv.clone(), bn.clone(), None).unwrap();
    let (mut c, mut b) = (conv, bn);
    let mut rng = Rng::new(3);
    for step in 0..3 {
        let x = random_tensor(&mut rng, &[4, 2, 6, 6], -1.0, 1.0);
        let want = b.forward(&c.forward(&x, true).unwrap(), true).unwrap();
        let got = fused.forward(&x, true).unwrap();
        let scale = want.data.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (a, w)) in got.data.iter().zip(&want.data).enumerate() {
            // conv(x, W f) / f = conv(x, W) up to a few f32 roundings of values of magnitude ~3.
            assert!(
                (a - w).abs() <= 1e-5 * scale,
                "step {step} [{i}]: {a} vs {w}"
            );
        }
        for (m, w) in fused.bn.running_mean.iter().zip(&b.running_mean) {
            assert!((m - w).abs() <= 1e-6, "running mean {m} vs {w}");
        }
        for (v, w) in fused.bn.running_var.iter().zip(&b.running_var) {
            assert!((v - w).abs() <= 1e-5, "running var {v} vs {w}");
        }
    }
    assert_eq!(fused.steps, 3);
}

/// A 4-bit per-channel min-max quantizer (the folded weights' codes matter here, not just their values).
fn wq4() -> WeightQuantizer {
    WeightQuantizer::new(WeightQuantKind::MinMax, 4, true).unwrap()
}

#[test]
fn eval_forward_equals_the_folded_conv_bit_for_bit() {
    for quantized in [false, true] {
        let (mut conv, bn) = conv_bn(21, 3, 5, (1, 1));
        if quantized {
            conv.weight_quant = Some(wq4());
        }
        let mut layer = ConvBn2d::new(conv.clone(), bn.clone(), None).unwrap();
        let mut folded = Conv2d::from_weights(
            conv.in_channels,
            conv.out_channels,
            conv.kernel,
            conv.stride,
            conv.padding,
            conv.weight.clone(),
            conv.bias.clone(),
        );
        folded.fold_batchnorm(&bn).unwrap();
        folded.weight_quant = conv.weight_quant.clone();
        let mut rng = Rng::new(5);
        let x = random_tensor(&mut rng, &[3, 3, 7, 6], 0.0, 1.0);
        let want = folded.forward(&x, false).unwrap();
        let got = layer.forward(&x, false).unwrap();
        assert_eq!(got.shape, want.shape);
        for (i, (a, w)) in got.data.iter().zip(&want.data).enumerate() {
            assert_eq!(
                a.to_bits(),
                w.to_bits(),
                "quantized {quantized} [{i}]: {a} vs {w}"
            );
        }
        let via_method = layer.folded_conv().unwrap().forward(&x, false).unwrap();
        assert_eq!(via_method.data, want.data, "folded_conv()");
        // Once frozen, the training forward computes the same function (through the batch norm's affine map
        // rather than the folded bias: equal up to f32 rounding).
        let mut frozen = ConvBn2d::new(conv, bn, Some(0)).unwrap();
        let t = frozen.forward(&x, true).unwrap();
        let scale = want.data.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (a, w)) in t.data.iter().zip(&want.data).enumerate() {
            assert!(
                (a - w).abs() <= 1e-5 * scale,
                "frozen training [{i}]: {a} vs {w}"
            );
        }
    }
}

#[test]
fn quantized_training_forward_quantizes_the_weights_folded_with_the_running_variance() {
    // With batch statistics and 4-bit weights, the output is BN_batch(conv(x, fq(W f)) / f + b). Compare with
    // that computed from an explicit Conv2d holding fq(W f) (f from the running variance before the step).
    let (mut conv, bn) = conv_bn(31, 2, 3, (1, 1));
    conv.weight_quant = Some(wq4());
    let mut layer = ConvBn2d::new(conv.clone(), bn.clone(), None).unwrap();
    let k = conv.k();
    let f: Vec<f64> = (0..3)
        .map(|c| f64::from(bn.gamma[c]) / (f64::from(bn.running_var[c]) + 1e-5).sqrt())
        .collect();
    let wf: Vec<f32> = conv
        .weight
        .iter()
        .enumerate()
        .map(|(i, &w)| (f64::from(w) * f[i / k]) as f32)
        .collect();
    let codes = wq4().quantize(&wf, 3, k);
    let wq = codes.dequantize(k);
    let mut explicit = Conv2d::from_weights(2, 3, (3, 3), (1, 1), (1, 1), wq, vec![0.0; 3]);
    let mut rng = Rng::new(8);
    let x = random_tensor(&mut rng, &[4, 2, 5, 5], -1.0, 1.0);
    let y = explicit.forward(&x, false).unwrap();
    let mut z = y.data.clone();
    for (i, v) in z.iter_mut().enumerate() {
        let c = (i / 25) % 3;
        *v = *v / f[c] as f32 + conv.bias[c];
    }
    let mut bn_ref = bn.clone();
    let want = bn_ref.forward(&Tensor::new(z, y.shape), true).unwrap();
    let got = layer.forward(&x, true).unwrap();
    for (i, (a, w)) in got.data.iter().zip(&want.data).enumerate() {
        assert!((a - w).abs() <= 1e-4, "[{i}]: {a} vs {w}");
    }
    // The float layer would differ by the 4-bit error: the comparison above can fail.
    let mut float = ConvBn2d::new(
        Conv2d::from_weights(2, 3, (3, 3), (1, 1), (1, 1), conv.weight.clone(), conv.bias),
        bn,
        None,
    )
    .unwrap();
    let yf = float.forward(&x, true).unwrap();
    let diff = yf
        .data
        .iter()
        .zip(&got.data)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff > 1e-3,
        "4-bit weights should change the output ({diff})"
    );
}

#[test]
fn freezing_after_n_steps_stops_updating_the_running_statistics() {
    let (conv, bn) = conv_bn(41, 1, 2, (1, 1));
    let mut layer = ConvBn2d::new(conv, bn, Some(2)).unwrap();
    let mut rng = Rng::new(4);
    let mut means = Vec::new();
    for _ in 0..4 {
        let x = random_tensor(&mut rng, &[2, 1, 4, 4], 0.0, 1.0);
        layer.forward(&x, true).unwrap();
        means.push(layer.bn.running_mean.clone());
    }
    assert_ne!(means[0], means[1], "step 2 uses batch statistics");
    assert_eq!(means[1], means[2], "frozen from step 3 on");
    assert_eq!(means[2], means[3]);
    assert!(layer.bn.frozen);
}

fn builtin() -> lowbit::data::Split {
    load(&DataSource::Builtin).expect("the builtin sample is embedded")
}

/// QAT of `spec` on the builtin sample with `bn_fold`; returns the prepared, trained model (ranges frozen).
fn qat(spec: &str, cfg: &QuantConfig, epochs: usize, train_data: &Dataset) -> Model {
    let mut model = Model::from_spec(spec, 2).unwrap();
    prepare_qat(&mut model, cfg).unwrap();
    let tcfg = TrainConfig {
        epochs,
        batch_size: 64,
        ..TrainConfig::default()
    };
    train(&mut model, train_data, &tcfg, &mut |_| {}).unwrap();
    freeze_ranges(&mut model);
    model
}

#[test]
fn batch_statistics_qat_converts_to_what_the_engine_and_the_simulation_run() {
    let split = builtin();
    let cfg = QuantConfig {
        weight_bits: 4,
        ..QuantConfig::default()
    };
    assert_eq!(
        cfg.bn_fold,
        BnFold::BatchStats {
            freeze_after_steps: None
        },
        "batch statistics are the QAT default"
    );
    let model = qat("cnn:c6.bn-p-c8.bn-p-f16-10", &cfg, 1, &split.train);
    let convbn: Vec<&ConvBn2d> = model
        .layers()
        .filter_map(|l| match l {
            Layer::ConvBn2d(c) => Some(c.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(convbn.len(), 2, "both conv + bn pairs are merged");
    let steps = split.train.len().div_ceil(64);
    assert!(
        convbn.iter().all(|c| c.steps == steps),
        "one count per training step"
    );
    let qm = convert(&model, Provenance::default()).unwrap();
    // The stored codes are those of W * f with the running statistics: dequantized, within half a step of it.
    let qconvs: Vec<_> = qm
        .ops()
        .filter_map(|l| match l {
            QOp::Conv2d(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(qconvs.len(), 2);
    for (cb, qc) in convbn.iter().zip(&qconvs) {
        let k = cb.conv.k();
        for c in 0..cb.conv.out_channels {
            let f = f64::from(cb.bn.gamma[c])
                / (f64::from(cb.bn.running_var[c]) + f64::from(cb.bn.eps)).sqrt();
            let s = f64::from(qc.weight_scales[c]);
            for j in 0..k {
                let wf = f64::from(cb.conv.weight[c * k + j]) * f;
                let code = qc.weights.code(c, j);
                let deq = f64::from(code) * s;
                assert!(
                    (deq - wf).abs() <= 0.5 * s * (1.0 + 1e-5),
                    "channel {c} col {j}: code {code} * {s} vs W f = {wf}"
                );
            }
        }
    }
    let preds = engine_equals_simulation(&qm, &split.test);
    let engine_acc = accuracy(&preds, &split.test);
    let (fake_acc, _) = evaluate_float(&mut model.clone(), &split.test, 256).unwrap();
    // The engine runs what the inference forward (folded with running statistics) fake-quantizes: within 2
    // points on 1,000 images (a batch-statistics conversion, or the wrong bias, costs tens of points).
    assert!(
        (engine_acc - fake_acc).abs() <= 0.02,
        "engine {engine_acc} vs fake-quant {fake_acc}"
    );
    println!("engine {engine_acc}, fake-quant {fake_acc}");
    assert!(engine_acc > 0.5, "engine accuracy {engine_acc}");
}

#[test]
fn running_statistics_folding_still_removes_the_batch_norms_at_preparation() {
    let mut m = Model::from_spec("cnn:c4.bn-p-10", 0).unwrap();
    let cfg = QuantConfig {
        bn_fold: BnFold::Running,
        ..QuantConfig::default()
    };
    prepare_qat(&mut m, &cfg).unwrap();
    assert!(m
        .layers()
        .all(|l| !matches!(l, Layer::BatchNorm2d(_) | Layer::ConvBn2d(_))));
    let mut b = Model::from_spec("cnn:c4.bn-p-10", 0).unwrap();
    prepare_qat(&mut b, &QuantConfig::default()).unwrap();
    let kinds: Vec<&str> = b.layers().map(Layer::kind).collect();
    assert_eq!(
        kinds,
        [
            "act_quant",
            "conv_bn2d",
            "relu",
            "act_quant",
            "maxpool2d",
            "flatten",
            "dense"
        ]
    );
}

#[test]
fn config_files_select_the_folding_and_reject_a_freeze_point_for_running_statistics() {
    let parse = |text: &str| config_file::parse(text, Path::new("run.toml"));
    let q = |text: &str| {
        parse(text)
            .unwrap()
            .quant_config()
            .unwrap()
            .unwrap()
            .bn_fold
    };
    assert_eq!(q("[quantization]\n"), BnFold::default());
    assert_eq!(
        q("[quantization]\nbn_fold = \"running\"\n"),
        BnFold::Running
    );
    assert_eq!(
        q("[quantization]\nbn_fold = \"batch\"\nbn_freeze_steps = 300\n"),
        BnFold::BatchStats {
            freeze_after_steps: Some(300)
        }
    );
    assert_eq!(
        q("[quantization]\nbn_freeze_steps = 5\n"),
        BnFold::BatchStats {
            freeze_after_steps: Some(5)
        }
    );
    match parse("[quantization]\nbn_fold = \"running\"\nbn_freeze_steps = 5\n") {
        Err(lowbit::Error::Data { reason, .. }) => {
            assert!(reason.contains("quantization.bn_freeze_steps"), "{reason}")
        }
        other => panic!("expected a data error, got {other:?}"),
    }
    assert!(matches!(
        parse("[quantization]\nbn_fold = \"sometimes\"\n"),
        Err(lowbit::Error::Data { .. })
    ));
}

/// The comparison the issue asks for: W4A8 QAT of a small BN CNN on the builtin sample, running-statistics
/// folding at preparation vs batch statistics. Numbers are printed (run with `--nocapture`); only sanity is
/// asserted, as a margin between the two would be fragile on 1,000 test images.
#[test]
fn batch_statistics_folding_trains_at_least_as_well_as_running_statistics_folding() {
    let split = builtin();
    let spec = "cnn:c8.bn-p-c16.bn-p-f32-10";
    for fold in [
        BnFold::Running,
        BnFold::BatchStats {
            freeze_after_steps: None,
        },
    ] {
        let cfg = QuantConfig {
            weight_bits: 4,
            bn_fold: fold,
            ..QuantConfig::default()
        };
        let model = qat(spec, &cfg, 2, &split.train);
        let qm = convert(&model, Provenance::default()).unwrap();
        let preds = engine_equals_simulation(&qm, &split.test);
        let acc = accuracy(&preds, &split.test);
        println!("{spec} W4A8 QAT 2 epochs, bn_fold {fold:?}: engine test accuracy {acc:.4}");
        assert!(acc > 0.5, "{fold:?}: engine accuracy {acc}");
    }
}
