//! QAT quantization delay (`TrainConfig::quant_delay_epochs`, `--quant-delay-epochs`): float training first,
//! then quantization switches on with every quantizer initialized from the weights and data at the switch.
//!
//! Several tests freeze the learned quantizer parameters after the switch with a vanishing learning-rate
//! multiplier (`quant_lr_scale = 1e-30`: Adam moves a step of ~1e-2 by ~1e-33, which rounds to no change), so
//! the values after training are the values the switch initialized.
use lowbit::config_file::parse;
use lowbit::nn::{Layer, Model};
use lowbit::quant::{
    self, ActMethod, ActQuantizer, QuantConfig, WeightMethod, WeightQuantKind, WeightQuantizer,
};
use lowbit::tensor::Tensor;
use lowbit::train::{train, EpochStats, SliceSamples, TrainConfig};
use lowbit::Error;
use std::path::Path;

const SPEC: &str = "cnn:c4-p-p-f16-10";
const SAMPLES: usize = 32;
const BATCH: usize = 8;
/// Steps per epoch of the test data.
const STEPS: usize = SAMPLES / BATCH;

/// `SAMPLES` copies of one seeded random 28x28 image with labels 0..9 in turn. One image everywhere makes every
/// batch hold the same pixels whatever the shuffle, so a test can rebuild the batch the switch saw.
fn data() -> (Vec<f32>, Vec<u8>, Vec<f32>) {
    let mut rng = lowbit::rng::Rng::new(11);
    let image: Vec<f32> = (0..28 * 28).map(|_| rng.uniform()).collect();
    let images = image.repeat(SAMPLES);
    let labels = (0..SAMPLES).map(|i| (i % 10) as u8).collect();
    (images, labels, image)
}

fn lsq_config(bits: u32) -> QuantConfig {
    QuantConfig {
        weight_bits: bits,
        act_bits: bits,
        weight_quantizer: WeightMethod::Lsq,
        act_quantizer: ActMethod::Lsq,
        ..QuantConfig::default()
    }
}

fn float_model() -> Model {
    Model::from_spec(SPEC, 7).unwrap()
}

fn prepared(model: &Model, qcfg: &QuantConfig) -> Model {
    let mut m = model.clone();
    quant::prepare_qat(&mut m, qcfg).unwrap();
    m
}

fn cfg(epochs: usize, delay: f32) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: BATCH,
        lr: 1e-2,
        seed: 3,
        quant_delay_epochs: delay,
        ..TrainConfig::default()
    }
}

fn run(model: &mut Model, c: &TrainConfig) -> lowbit::Result<Vec<EpochStats>> {
    let (x, y, _) = data();
    let samples = SliceSamples::new(&x, &y, [1, 28, 28]).unwrap();
    train(model, &samples, c, &mut |_| {})
}

/// (weights, rows) of every weight layer, in model order.
fn weight_layers(m: &Model) -> Vec<(Vec<f32>, usize)> {
    m.layers()
        .filter_map(|l| match l {
            Layer::Conv2d(c) => Some((c.weight.clone(), c.out_channels)),
            Layer::Dense(d) => Some((d.weight.clone(), d.out_features)),
            _ => None,
        })
        .collect()
}

fn weight_quantizers(m: &Model) -> Vec<&WeightQuantizer> {
    m.layers()
        .filter_map(|l| match l {
            Layer::Conv2d(c) => c.weight_quant.as_ref(),
            Layer::Dense(d) => d.weight_quant.as_ref(),
            _ => None,
        })
        .collect()
}

fn act_quantizers(m: &Model) -> Vec<&ActQuantizer> {
    m.layers()
        .filter_map(|l| match l {
            Layer::ActQuant(q) if !q.is_input() => Some(q),
            _ => None,
        })
        .collect()
}

/// The LSQ weight steps a fresh `bits`-bit quantizer initializes from `layers`.
fn fresh_weight_steps(layers: &[(Vec<f32>, usize)], bits: u32, per_channel: bool) -> Vec<Vec<f32>> {
    layers
        .iter()
        .map(|(w, rows)| {
            let mut q = WeightQuantizer::new(WeightQuantKind::Lsq, bits, per_channel).unwrap();
            q.ensure_init(w, *rows, w.len() / rows);
            q.steps().to_vec()
        })
        .collect()
}

/// Trains `m` two epochs with `delay` epochs of quantization delay and the quantizers' learning rate scaled to
/// nothing, and returns the bits of each weight quantizer's steps.
fn steps_after_frozen_run(m: &mut Model, delay: f32) -> Vec<Vec<u32>> {
    let c = TrainConfig {
        quant_lr_scale: 1e-30,
        ..cfg(2, delay)
    };
    run(m, &c).unwrap();
    weight_quantizers(m)
        .iter()
        .map(|q| bits_of(q.steps()))
        .collect()
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn quantizers_are_initialized_from_the_weights_and_data_at_the_switch() {
    let qcfg = lsq_config(2);
    let init = float_model();
    // The float model after the delay: one epoch of plain f32 training with the same seed and data.
    let mut float = init.clone();
    run(&mut float, &cfg(1, 0.0)).unwrap();
    // QAT with the first epoch of two as the delay, quantizer parameters frozen after the switch.
    let mut qat = prepared(&init, &qcfg);
    let got = steps_after_frozen_run(&mut qat, 1.0);
    let want: Vec<Vec<u32>> = fresh_weight_steps(&weight_layers(&float), 2, qcfg.per_channel)
        .iter()
        .map(|s| bits_of(s))
        .collect();
    assert_eq!(
        got, want,
        "LSQ weight steps must be a fresh init from the weights float training reached at the switch"
    );
    let step0 = fresh_weight_steps(&weight_layers(&init), 2, true);
    assert_ne!(
        bits_of(&step0[0]),
        want[0],
        "the test needs weights that moved during the delay"
    );
    // Activation steps: a freshly prepared copy of the switch-time float model, one training forward on the
    // first batch after the switch (every batch holds the same image).
    let mut fresh = prepared(&float, &qcfg);
    let (_, _, image) = data();
    let batch = Tensor::new(image.repeat(BATCH), vec![BATCH, 1, 28, 28]);
    fresh.forward(&batch, true).unwrap();
    let want_act: Vec<u32> = act_quantizers(&fresh)
        .iter()
        .map(|q| q.learned_value().unwrap().to_bits())
        .collect();
    let got_act: Vec<u32> = act_quantizers(&qat)
        .iter()
        .map(|q| q.learned_value().unwrap().to_bits())
        .collect();
    assert!(!want_act.is_empty());
    assert_eq!(
        got_act, want_act,
        "LSQ activation steps must be a fresh init from the first batch after the switch"
    );
}

#[test]
fn quantizer_parameters_get_no_gradient_before_the_switch_and_do_after() {
    let mut m = prepared(&float_model(), &lsq_config(2));
    let stats = run(&mut m, &cfg(2, 1.0)).unwrap();
    let quantizer_grads = |e: &EpochStats| -> Vec<f32> {
        e.layers
            .iter()
            .flat_map(|l| &l.grad_norms)
            .filter(|g| g.name == "weight_step" || g.name == "act_step")
            .map(|g| g.mean_l2)
            .collect()
    };
    let (before, after) = (quantizer_grads(&stats[0]), quantizer_grads(&stats[1]));
    // 3 weight layers and 2 hidden activation quantizers.
    assert_eq!((before.len(), after.len()), (5, 5));
    assert!(
        before.iter().all(|&g| g == 0.0),
        "during the delay: {before:?}"
    );
    assert!(
        after.iter().all(|&g| g > 0.0),
        "after the switch: {after:?}"
    );
    let zeros = |e: &EpochStats| -> Vec<f32> {
        e.layers
            .iter()
            .filter_map(|l| l.weight_zero_fraction)
            .collect()
    };
    assert!(
        zeros(&stats[0]).iter().all(|&z| z == 0.0),
        "no weight is quantized to 0 during the delay"
    );
    assert!(
        zeros(&stats[1]).iter().any(|&z| z > 0.0),
        "2-bit weights have a dead zone once quantizing"
    );
}

#[test]
fn a_fractional_delay_switches_inside_an_epoch() {
    // Delay 0.5 of 4 steps: steps 0 and 1 float, 2 and 3 quantized, so the first epoch already quantizes (a
    // delay rounded up to the whole epoch would show no dead zone and no activation-step gradient).
    let mut m = prepared(&float_model(), &lsq_config(2));
    let stats = run(&mut m, &cfg(2, 0.5)).unwrap();
    let zeros: Vec<f32> = stats[0]
        .layers
        .iter()
        .filter_map(|l| l.weight_zero_fraction)
        .collect();
    assert_eq!(zeros.len(), 3);
    assert!(
        zeros.iter().all(|&z| z > 0.0),
        "2-bit weights quantize some to 0 in the first epoch's last steps: {zeros:?}"
    );
    let act_grads: Vec<f32> = stats[0]
        .layers
        .iter()
        .flat_map(|l| &l.grad_norms)
        .filter(|g| g.name == "act_step")
        .map(|g| g.mean_l2)
        .collect();
    assert!(act_grads.iter().any(|&g| g > 0.0), "{act_grads:?}");
}

#[test]
fn a_bypassed_model_computes_the_float_forward_and_backward() {
    // The loop-level consequence (the weights at the switch are those of float training) is checked through
    // the steps in `quantizers_are_initialized_from_the_weights_and_data_at_the_switch`.
    let init = float_model();
    let mut q = prepared(&init, &lsq_config(2));
    quant::bypass_quantizers(&mut q);
    let (_, _, image) = data();
    let batch = Tensor::new(image.repeat(BATCH), vec![BATCH, 1, 28, 28]);
    let mut f = init.clone();
    let yf = f.forward(&batch, true).unwrap();
    let yq = q.forward(&batch, true).unwrap();
    assert_eq!(bits_of(&yf.data), bits_of(&yq.data), "bypassed forward");
    let grad = Tensor::new(
        (0..yf.len()).map(|i| (i as f32 * 0.37).sin()).collect(),
        yf.shape.clone(),
    );
    f.backward(&grad).unwrap();
    q.backward(&grad).unwrap();
    let grads = |m: &mut Model| -> Vec<(String, Vec<u32>)> {
        m.params_mut()
            .iter()
            .map(|p| (p.name.to_string(), bits_of(p.grad)))
            .collect()
    };
    let (gf, gq) = (grads(&mut f), grads(&mut q));
    let (steps, rest): (Vec<_>, Vec<_>) = gq.into_iter().partition(|(n, _)| n.ends_with("_step"));
    let plain = |v: Vec<(String, Vec<u32>)>| -> Vec<Vec<u32>> {
        // -0.0 and 0.0 are the same gradient.
        v.into_iter()
            .map(|(_, g)| {
                g.into_iter()
                    .map(|b| if b == 0x8000_0000 { 0 } else { b })
                    .collect()
            })
            .collect()
    };
    assert_eq!(plain(rest), plain(gf), "bypassed backward");
    assert_eq!(steps.len(), 5);
    assert!(
        steps.iter().all(|(_, g)| g.iter().all(|&b| b == 0)),
        "quantizer parameters get exactly zero gradient while bypassed"
    );
}

#[test]
fn a_zero_delay_keeps_the_quantizers_initialized_at_step_zero() {
    // Without a delay nothing is reset: the weight steps (frozen by the tiny multiplier) are those the initial
    // weights gave, as before the delay existed.
    let init = float_model();
    let mut m = prepared(&init, &lsq_config(2));
    let got = steps_after_frozen_run(&mut m, 0.0);
    let want: Vec<Vec<u32>> = fresh_weight_steps(&weight_layers(&init), 2, true)
        .iter()
        .map(|s| bits_of(s))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_delay_does_not_change_float_training() {
    // A model without quantizers has nothing to bypass or switch on: the run is the undelayed one.
    let mut a = float_model();
    let mut b = float_model();
    run(&mut a, &cfg(2, 0.0)).unwrap();
    run(&mut b, &cfg(2, 1.0)).unwrap();
    assert_eq!(
        a.snapshot().iter().map(|p| bits_of(p)).collect::<Vec<_>>(),
        b.snapshot().iter().map(|p| bits_of(p)).collect::<Vec<_>>()
    );
}

#[test]
fn out_of_range_delays_are_rejected_naming_the_flag() {
    for bad in [-0.5, f32::NAN, f32::INFINITY, 2.0, 3.0] {
        let err = cfg(2, bad).validate().unwrap_err();
        assert!(
            matches!(&err, Error::InvalidOption { option, .. } if option == "--quant-delay-epochs"),
            "delay {bad}: {err}"
        );
    }
    assert!(cfg(2, 0.0).validate().is_ok());
    assert!(cfg(2, 1.99).validate().is_ok());
    // 0.9 of a 4-step epoch rounds to 4 steps: all of a 1-epoch run, so nothing would be quantized.
    let mut m = prepared(&float_model(), &lsq_config(2));
    let err = run(&mut m, &cfg(1, 0.9)).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidOption { option, .. } if option == "--quant-delay-epochs"),
        "{err}"
    );
    assert_eq!(STEPS, 4);
}

#[test]
fn a_run_stopped_during_the_delay_leaves_the_quantizers_switched_on() {
    let mut m = prepared(&float_model(), &lsq_config(2));
    let err = run(
        &mut m,
        &TrainConfig {
            max_loss: 1e-6,
            ..cfg(2, 1.0)
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::Diverged { .. }), "{err}");
    assert!(weight_quantizers(&m).iter().all(|q| !q.is_bypassed()));
    let acts: Vec<&ActQuantizer> = m
        .layers()
        .filter_map(|l| match l {
            Layer::ActQuant(q) => Some(q),
            _ => None,
        })
        .collect();
    assert_eq!(acts.len(), 3);
    assert!(acts.iter().all(|q| !q.is_bypassed()));
}

#[test]
fn start_quantizing_resets_learned_and_tracked_state() {
    let mut w = WeightQuantizer::new(WeightQuantKind::Lsq, 4, true).unwrap();
    let weights: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.1).collect();
    w.set_steps(vec![0.5, 0.5, 0.5]).unwrap();
    w.set_bypassed(true);
    let mut out = vec![0.0; 12];
    w.forward(&weights, 3, 4, &mut out);
    assert_eq!(out, weights, "bypassed forward is the identity");
    w.set_bypassed(false);
    w.reset();
    assert!(w.steps().is_empty());
    w.forward(&weights, 3, 4, &mut out);
    let mut fresh = WeightQuantizer::new(WeightQuantKind::Lsq, 4, true).unwrap();
    fresh.ensure_init(&weights, 3, 4);
    assert_eq!(w.steps(), fresh.steps());
    assert_ne!(w.steps(), &[0.5, 0.5, 0.5]);

    let x = Tensor::new((0..16).map(|i| i as f32 * 0.25).collect(), vec![2, 8]);
    for method in [ActMethod::Ste, ActMethod::Lsq, ActMethod::Pact] {
        let qcfg = QuantConfig {
            act_quantizer: method,
            ..QuantConfig::default()
        };
        let mut a = ActQuantizer::from_config(&qcfg, 2).unwrap();
        a.set_bypassed(true);
        assert_eq!(a.forward(&x, true).data, x.data, "{method:?} bypassed");
        assert_eq!(
            (a.range(), a.learned_value()),
            (None, None),
            "{method:?}: a bypassed forward observes nothing"
        );
        a.set_bypassed(false);
        a.forward(&Tensor::new(vec![9.0; 16], vec![2, 8]), true);
        let seen = (a.range(), a.learned_value());
        a.reset();
        a.forward(&x, true);
        let mut b = ActQuantizer::from_config(&qcfg, 2).unwrap();
        b.forward(&x, true);
        assert_eq!(
            (a.range(), a.learned_value()),
            (b.range(), b.learned_value())
        );
        assert_ne!((a.range(), a.learned_value()), seen, "{method:?}");
    }
}

#[test]
fn the_config_file_sets_the_delay_and_names_its_key_when_out_of_range() {
    let f = parse(
        "[training]\nepochs = 4\nquant_delay_epochs = 0.5\n",
        Path::new("run.toml"),
    )
    .unwrap();
    assert_eq!(f.train_config().unwrap().quant_delay_epochs, 0.5);
    let err = parse(
        "[training]\nepochs = 4\nquant_delay_epochs = 4.0\n",
        Path::new("run.toml"),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("training.quant_delay_epochs"), "{msg}");
}
