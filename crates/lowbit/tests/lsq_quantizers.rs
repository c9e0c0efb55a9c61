//! LSQ and PACT quantizers: gradients (hand-computed and finite differences), normative codes, learned
//! parameters reaching the optimizer, per-layer overrides.
use lowbit::nn::{softmax_cross_entropy, Layer, Model};
use lowbit::optim::{Optimizer, OptimizerKind};
use lowbit::quant::{
    lsq, prepare_qat, ActMethod, ActQuantizer, LayerQuant, LayerSelector, LsqInit, QuantConfig,
    WeightMethod, WeightQuantKind, WeightQuantizer,
};
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;
use lowbit::Error;
use lowbit_runtime::qparams::{self, QParams};

/// f32 arithmetic on values of order 1: a few ulps.
const TOL: f32 = 1e-5;

fn lsq_cfg(weight_bits: u32, act_bits: u32, act: ActMethod) -> QuantConfig {
    QuantConfig {
        weight_bits,
        act_bits,
        weight_quantizer: WeightMethod::Lsq,
        act_quantizer: act,
        ..QuantConfig::default()
    }
}

fn assert_close(got: f32, want: f32, what: &str) {
    assert!(
        (got - want).abs() <= TOL * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

#[test]
fn lsq_step_derivative_matches_eq3_on_hand_computed_points() {
    // 2 bits: Qn = Qp = 1, s = 0.5.
    assert_close(
        lsq::step_derivative(0.3, 0.5, 1, 1),
        -0.6 + 1.0,
        "inside, rounds up",
    );
    assert_close(
        lsq::step_derivative(-0.2, 0.5, 1, 1),
        0.4,
        "inside, rounds to 0",
    );
    assert_close(lsq::step_derivative(0.6, 0.5, 1, 1), 1.0, "above: Qp");
    assert_close(lsq::step_derivative(-1.0, 0.5, 1, 1), -1.0, "below: -Qn");
    // 4 bits: Qp = 7, s = 0.1; v/s = 3.4 -> -3.4 + 3.
    assert_close(lsq::step_derivative(0.34, 0.1, 7, 7), -0.4, "4-bit inside");
    // Unsigned activations: Qn = 0, anything <= 0 has derivative 0.
    assert_eq!(lsq::step_derivative(-3.0, 0.1, 0, 15), 0.0);
    assert_close(lsq::grad_scale(4, 1), 0.5, "g = 1/sqrt(4 * 1)");
    assert_close(
        lsq::grad_scale(100, 7),
        1.0 / 700f32.sqrt(),
        "g = 1/sqrt(700)",
    );
    // Init: 2 mean|v| / sqrt(Qp).
    assert_close(lsq::init_step(&[1.0, -3.0], 4, 9.0), 2.0, "2 * 2 / 2");
    assert_eq!(
        lsq::init_step(&[0.0, 0.0], 4, 9.0),
        9.0,
        "all zeros falls back"
    );
}

#[test]
fn lsq_step_derivative_is_the_true_derivative_plus_the_ste_term_by_finite_differences() {
    // v_q(s) = round(clamp(v/s)) s is differentiable in s away from code changes: its derivative is round(v/s)
    // inside and +-Q outside. LSQ's eq. 3 adds the straight-through term -v/s inside only.
    let (qn, qp) = (7, 7);
    let vq = |v: f32, s: f32| lsq::code(v, s, qn, qp) as f64 * f64::from(s);
    let h = 1e-4f32;
    for &(v, s) in &[
        (0.34f32, 0.1f32),
        (-0.52, 0.1),
        (0.03, 0.1),
        (0.9, 0.1),
        (-2.0, 0.1),
    ] {
        // Divide by the f32 step actually taken, not 2h.
        let span = f64::from(s + h) - f64::from(s - h);
        let fd = ((vq(v, s + h) - vq(v, s - h)) / span) as f32;
        let r = v / s;
        let ste = if lsq::inside(v, s, qn, qp) { -r } else { 0.0 };
        assert_close(
            fd + ste,
            lsq::step_derivative(v, s, qn, qp),
            &format!("v={v} s={s}"),
        );
    }
}

#[test]
fn lsq_value_gradient_is_one_inside_and_zero_outside_by_wide_finite_differences() {
    // A difference over many steps averages the staircase: slope ~1 inside (error <= s / (2 delta)), exactly 0
    // beyond the clipping point.
    let (s, qp) = (0.01f32, 127);
    let vq = |v: f32| lsq::code(v, s, qp, qp) as f32 * s;
    let delta = 0.2f32;
    for v in [0.3f32, -0.4, 0.0] {
        let fd = (vq(v + delta) - vq(v - delta)) / (2.0 * delta);
        assert!((fd - 1.0).abs() <= s / delta, "v={v}: slope {fd}");
        assert!(lsq::inside(v + 0.001, s, qp, qp));
    }
    for v in [1.6f32, -2.0] {
        let fd = (vq(v + 0.1) - vq(v - 0.1)) / 0.2;
        assert_eq!(fd, 0.0, "v={v}");
        assert!(!lsq::inside(v, s, qp, qp));
    }
}

#[test]
fn lsq_weight_quantizer_forward_and_backward_match_a_hand_computed_case() {
    let mut q = WeightQuantizer::new(WeightQuantKind::Lsq, 2, false).unwrap();
    q.set_steps(vec![0.5]).unwrap();
    let w = [0.3f32, -0.2, 0.6, -1.0];
    let mut out = [0.0f32; 4];
    q.forward(&w, 1, 4, &mut out);
    assert_eq!(out, [0.5, 0.0, 0.5, -0.5]);
    assert_eq!(q.quantize(&w, 1, 4).codes, vec![1, 0, 1, -1]);
    assert_eq!(q.clipped_fraction(), 0.5);
    let mut grad_w = [0.0f32; 4];
    q.backward(&w, &[1.0, 1.0, 1.0, 1.0], &mut grad_w);
    assert_eq!(grad_w, [1.0, 1.0, 0.0, 0.0], "STE passes inside only");
    // dvq/ds = [0.4, 0.4, 1, -1], sum 0.8, g = 1/sqrt(4 * 1) = 0.5.
    let p = q.params_mut();
    assert_eq!(p.len(), 1);
    assert_close(p[0].grad[0], 0.4, "dL/ds");
}

#[test]
fn lsq_weight_step_gradient_agrees_with_finite_differences_of_the_loss() {
    // L(s) = sum c_i w_q_i(s). dL/ds by differences equals sum c_i round(w/s) inside + c_i (+-Qp) outside;
    // LSQ's gradient is g * (that - sum_inside c_i w_i / s).
    let mut rng = Rng::new(11);
    let (rows, cols) = (3, 50);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.normal() * 0.2).collect();
    let c: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
    let mut q = WeightQuantizer::new(WeightQuantKind::Lsq, 3, true).unwrap();
    let mut out = vec![0.0f32; w.len()];
    q.forward(&w, rows, cols, &mut out);
    let steps = q.steps().to_vec();
    assert_eq!(steps.len(), rows);
    let mut gw = vec![0.0f32; w.len()];
    q.backward(&w, &c, &mut gw);
    let grads = q.params_mut()[0].grad.to_vec();
    let qp = 3;
    for r in 0..rows {
        let (wr, cr) = (&w[r * cols..(r + 1) * cols], &c[r * cols..(r + 1) * cols]);
        let loss = |s: f32| -> f64 {
            wr.iter()
                .zip(cr)
                .map(|(&x, &ci)| f64::from(ci) * lsq::code(x, s, qp, qp) as f64 * f64::from(s))
                .sum()
        };
        let s = steps[r];
        let h = s * 1e-4;
        let fd = (loss(s + h) - loss(s - h)) / (f64::from(s + h) - f64::from(s - h));
        let ste: f64 = wr
            .iter()
            .zip(cr)
            .filter(|(&x, _)| lsq::inside(x, s, qp, qp))
            .map(|(&x, &ci)| -f64::from(ci) * f64::from(x / s))
            .sum();
        let want = ((fd + ste) * f64::from(lsq::grad_scale(cols, qp))) as f32;
        assert!(
            (grads[r] - want).abs() <= 1e-3 * want.abs().max(1.0),
            "row {r}: LSQ {} vs finite differences {want}",
            grads[r]
        );
    }
}

#[test]
fn lsq_weight_codes_are_qparams_codes_within_range_for_every_width() {
    let mut rng = Rng::new(3);
    let (rows, cols) = (5, 37);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
    for bits in 2..=8u32 {
        for per_channel in [false, true] {
            let mut q = WeightQuantizer::new(WeightQuantKind::Lsq, bits, per_channel).unwrap();
            let mut out = vec![0.0; w.len()];
            q.forward(&w, rows, cols, &mut out);
            let wc = q.quantize(&w, rows, cols);
            let (lo, hi) = qparams::weight_code_range(bits).unwrap();
            assert_eq!(wc.bits, bits);
            assert_eq!(wc.scales.len(), if per_channel { rows } else { 1 });
            for (i, (&x, &code)) in w.iter().zip(&wc.codes).enumerate() {
                let qp = QParams::new(wc.scale_of_row(i / cols), 0).unwrap();
                let want = qparams::quantize(x, qp, lo, hi);
                assert_eq!(
                    code as i32, want,
                    "bits {bits} index {i} x {x} scale {}",
                    qp.scale
                );
                assert_eq!(
                    out[i],
                    qparams::dequantize(want, qp),
                    "fake-quant == dequant(quant)"
                );
            }
        }
    }
}

#[test]
fn lsq_activation_quantizer_matches_a_hand_computed_case() {
    let mut a = ActQuantizer::from_config(&lsq_cfg(4, 2, ActMethod::Lsq), 2).unwrap();
    a.set_range(0.0, 1.5).unwrap(); // step 1.5 / 3 = 0.5
    let x = Tensor::new(vec![0.3, -0.2, 0.6, 2.0], vec![1, 4]);
    let y = a.forward(&x, true);
    assert_eq!(y.data, vec![0.5, 0.0, 0.5, 1.5]);
    let g = a.backward(&Tensor::new(vec![1.0, 2.0, 3.0, 4.0], vec![1, 4]));
    assert_eq!(g.data, vec![1.0, 0.0, 3.0, 0.0]);
    // dvq/ds = [0.4, 0 (below: -Qn = 0), -0.2, 3 (above: Qp)]; sum g*d = 0.4 - 0.6 + 12 = 11.8; N = 4, Qp = 3.
    let p = a.params_mut();
    assert_eq!(p[0].name, "act_step");
    assert_close(p[0].grad[0], 11.8 / 12f32.sqrt(), "dL/ds");
    assert_eq!(a.try_qparams().unwrap(), QParams::new(0.5, 0).unwrap());
}

#[test]
fn lsq_activation_step_is_initialized_from_the_first_training_batch() {
    let mut a = ActQuantizer::from_config(&lsq_cfg(4, 4, ActMethod::Lsq), 4).unwrap();
    assert!(a.try_qparams().is_err(), "no step before data");
    let x = Tensor::new(vec![1.0, 3.0, 0.0, 4.0], vec![2, 2]);
    a.forward(&x, true);
    // 2 * mean|x| / sqrt(15) = 4 / sqrt(15)
    assert_close(a.learned_value().unwrap(), 4.0 / 15f32.sqrt(), "init step");
}

/// `sum (v - s * code)^2` in f64, as `lsq::mse_step` measures it.
fn squared_error(v: &[f32], s: f32, qn: i32, qp: i32) -> f64 {
    v.iter()
        .map(|&x| {
            let d = f64::from(x) - f64::from(lsq::code(x, s, qn, qp) as f32 * s);
            d * d
        })
        .sum()
}

fn gaussian(n: usize, sigma: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| sigma * rng.normal()).collect()
}

#[test]
fn mse_step_is_within_a_percent_of_a_fine_brute_force_search_and_beats_the_paper_rule() {
    // Weights (symmetric codes), a ReLU output (unsigned) and a signed activation (zero point 2^(b-1)).
    let relu: Vec<f32> = gaussian(20_000, 1.0, 2)
        .into_iter()
        .map(|x| x.max(0.0))
        .collect();
    let cases = [
        (gaussian(4_608, 0.05, 1), 7, 7),
        (gaussian(4_608, 0.05, 1), 1, 1),
        (relu.clone(), 0, 15),
        (relu, 0, 3),
        (gaussian(20_000, 2.0, 3), 8, 7),
    ];
    for (v, qn, qp) in cases {
        let s = lsq::mse_step(&v, qn, qp, 1.0);
        let err = squared_error(&v, s, qn, qp);
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let best = (1..=10_000)
            .map(|k| squared_error(&v, max * k as f32 / 10_000.0 / qp as f32, qn, qp))
            .fold(f64::INFINITY, f64::min);
        assert!(err <= best * 1.01, "qn {qn} qp {qp}: {err} vs {best}");
        let paper = lsq::init_step(&v, qp, 1.0);
        assert!(
            err < squared_error(&v, paper, qn, qp),
            "qn {qn} qp {qp}: not better than 2 mean|v| / sqrt(Qp)"
        );
    }
    // The ratio the doc of `mse_step` quotes: Gaussian weights at 4 bits.
    let w = gaussian(100_000, 1.0, 4);
    let ratio = lsq::init_step(&w, 7, 1.0) / lsq::mse_step(&w, 7, 7, 1.0);
    assert!((1.5..1.9).contains(&ratio), "paper / mse step = {ratio}");
}

#[test]
fn mse_step_falls_back_when_nothing_is_representable_and_ignores_non_finite_values() {
    assert_eq!(lsq::mse_step(&[0.0; 8], 7, 7, 0.25), 0.25);
    assert_eq!(lsq::mse_step(&[], 7, 7, 0.25), 0.25);
    // Unsigned codes cannot represent negatives: every step is as bad, so the fallback stays.
    assert_eq!(lsq::mse_step(&[-1.0, -2.0], 0, 15, 0.25), 0.25);
    let v = [0.5, 1.0, -0.75, 0.25];
    let mut with_bad = v.to_vec();
    with_bad.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
    assert_eq!(
        lsq::mse_step(&with_bad, 7, 7, 1.0),
        lsq::mse_step(&v, 7, 7, 1.0)
    );
    // Exactly representable values: the step that represents them all without error is found.
    assert_eq!(lsq::mse_step(&[0.0, 0.5, 1.0, 1.5], 0, 3, 1.0), 0.5);
}

#[test]
fn mse_initialization_reaches_weight_and_activation_steps() {
    let cfg = QuantConfig {
        lsq_init: LsqInit::Mse,
        per_channel: true,
        ..lsq_cfg(4, 4, ActMethod::Lsq)
    };
    let mut a = ActQuantizer::from_config(&cfg, 4).unwrap();
    let x = gaussian(512, 1.0, 5);
    a.forward(&Tensor::new(x.clone(), vec![4, 128]), true);
    assert_eq!(
        a.learned_value().unwrap(),
        lsq::mse_step(&x, 0, 15, 1.0 / 15.0)
    );
    let mut signed = ActQuantizer::from_config(&cfg, 4).unwrap();
    signed.set_signed(true);
    signed.forward(&Tensor::new(x.clone(), vec![4, 128]), true);
    assert_eq!(
        signed.learned_value().unwrap(),
        lsq::mse_step(&x, 8, 7, 1.0 / 7.0)
    );
    let (rows, cols) = (3, 50);
    let w = gaussian(rows * cols, 0.1, 6);
    let mut q = WeightQuantizer::from_config(&cfg).unwrap();
    q.ensure_init(&w, rows, cols);
    let want: Vec<f32> = w
        .chunks(cols)
        .map(|g| lsq::mse_step(g, 7, 7, 1.0))
        .collect();
    assert_eq!(q.steps(), want.as_slice());
    // The default keeps the paper's rule.
    let mut p = WeightQuantizer::from_config(&lsq_cfg(4, 4, ActMethod::Lsq)).unwrap();
    p.ensure_init(&w, rows, cols);
    assert_eq!(p.steps()[0], lsq::init_step(&w[..cols], 7, 1.0));
}

#[test]
fn pact_alpha_gradient_and_codes_match_a_hand_computed_case() {
    let cfg = QuantConfig {
        pact_alpha_init: Some(1.0),
        pact_l2: 0.1,
        ..lsq_cfg(4, 2, ActMethod::Pact)
    };
    let mut a = ActQuantizer::from_config(&cfg, 2).unwrap();
    let x = Tensor::new(vec![0.2, 0.5, 1.0, 3.0, -1.0], vec![1, 5]);
    let y = a.forward(&x, true);
    let third = qparams::dequantize(1, QParams::new(1.0 / 3.0, 0).unwrap());
    let two_thirds = qparams::dequantize(2, QParams::new(1.0 / 3.0, 0).unwrap());
    let one = qparams::dequantize(3, QParams::new(1.0 / 3.0, 0).unwrap());
    assert_eq!(y.data, vec![third, two_thirds, one, one, 0.0]);
    let g = a.backward(&Tensor::new(vec![1.0, 2.0, 3.0, 4.0, 5.0], vec![1, 5]));
    assert_eq!(g.data, vec![1.0, 2.0, 0.0, 0.0, 0.0]);
    let p = a.params_mut();
    assert_eq!(p[0].name, "pact_alpha");
    // x >= alpha at 1.0 and 3.0: 3 + 4, plus l2 * alpha = 0.1.
    assert_close(p[0].grad[0], 7.1, "dL/dalpha");
}

#[test]
fn pact_output_above_alpha_moves_with_alpha_at_slope_one_by_finite_differences() {
    let out = |alpha: f32, x: f32| {
        let cfg = QuantConfig {
            pact_alpha_init: Some(alpha),
            ..lsq_cfg(4, 4, ActMethod::Pact)
        };
        let mut a = ActQuantizer::from_config(&cfg, 4).unwrap();
        a.forward(&Tensor::new(vec![x], vec![1, 1]), true).data[0]
    };
    let h = 1e-3;
    let fd = (out(2.0 + h, 5.0) - out(2.0 - h, 5.0)) / (2.0 * h);
    assert!((fd - 1.0).abs() < 1e-2, "slope {fd}");
    let below = (out(2.0 + h, -1.0) - out(2.0 - h, -1.0)) / (2.0 * h);
    assert_eq!(below, 0.0);
}

fn kinds_and_names(m: &mut Model) -> Vec<&'static str> {
    m.params_mut().iter().map(|p| p.name).collect()
}

#[test]
fn learned_parameters_reach_the_optimizer_and_change_after_an_adam_step() {
    for act in [ActMethod::Lsq, ActMethod::Pact] {
        let mut m = Model::from_spec("mlp:784-16-10", 1).unwrap();
        prepare_qat(&mut m, &lsq_cfg(4, 4, act)).unwrap();
        let names = kinds_and_names(&mut m);
        let act_name = if act == ActMethod::Lsq {
            "act_step"
        } else {
            "pact_alpha"
        };
        assert_eq!(
            names,
            vec![
                "weight",
                "bias",
                "weight_step",
                act_name,
                "weight",
                "bias",
                "weight_step"
            ],
            "{act:?}"
        );
        let mut rng = Rng::new(2);
        let x = Tensor::new((0..8 * 784).map(|_| rng.uniform()).collect(), vec![8, 784]);
        let labels: Vec<u8> = (0..8).map(|i| (i % 10) as u8).collect();
        let before = m.snapshot();
        let logits = m.forward(&x, true).unwrap();
        let out = softmax_cross_entropy(&logits, &labels).unwrap();
        m.backward(&out.grad).unwrap();
        // The snapshot was taken before the first forward; the activation scalar was initialized since.
        let initialized = m.snapshot();
        let mut opt = Optimizer::new(OptimizerKind::adam(), 1e-2).unwrap();
        opt.step(&mut m.params_mut()).unwrap();
        let after = m.snapshot();
        assert_eq!(before.len(), after.len());
        for (i, (b, a)) in initialized.iter().zip(&after).enumerate() {
            assert_ne!(b, a, "{act:?}: parameter {i} ({}) did not move", names[i]);
        }
    }
}

#[test]
fn conv_weight_steps_reach_the_optimizer_and_change_after_an_adam_step() {
    let mut m = Model::from_spec("cnn:c4-p-10", 1).unwrap();
    prepare_qat(&mut m, &lsq_cfg(2, 2, ActMethod::Lsq)).unwrap();
    let names = kinds_and_names(&mut m);
    assert_eq!(
        names.iter().filter(|&&n| n == "weight_step").count(),
        2,
        "one learned step set per conv and dense layer: {names:?}"
    );
    let step_index = names.iter().position(|&n| n == "weight_step").unwrap();
    let mut rng = Rng::new(3);
    let x = Tensor::new(
        (0..8 * 784).map(|_| rng.uniform()).collect(),
        vec![8, 1, 28, 28],
    );
    let labels: Vec<u8> = (0..8).map(|i| (i % 10) as u8).collect();
    let logits = m.forward(&x, true).unwrap();
    let out = softmax_cross_entropy(&logits, &labels).unwrap();
    m.backward(&out.grad).unwrap();
    let before = m.snapshot();
    let mut opt = Optimizer::new(OptimizerKind::adam(), 1e-2).unwrap();
    opt.step(&mut m.params_mut()).unwrap();
    let after = m.snapshot();
    assert_ne!(
        before[step_index], after[step_index],
        "the conv's LSQ step did not move"
    );
}

#[test]
fn per_layer_overrides_set_widths_and_bad_selectors_name_the_key() {
    let cfg = QuantConfig {
        layers: vec![
            LayerQuant {
                layer: LayerSelector::Name("first".into()),
                weight_bits: Some(8),
                act_bits: Some(8),
                calibration: None,
                weight_calibration: None,
            },
            LayerQuant {
                layer: LayerSelector::Index(-1),
                weight_bits: Some(8),
                act_bits: None,
                calibration: None,
                weight_calibration: None,
            },
        ],
        ..lsq_cfg(2, 2, ActMethod::Lsq)
    };
    let mut m = Model::from_spec("mlp:784-32-16-10", 1).unwrap();
    prepare_qat(&mut m, &cfg).unwrap();
    let mut wbits = Vec::new();
    let mut abits = Vec::new();
    for l in m.layers() {
        match l {
            Layer::Dense(d) => wbits.push(d.weight_quant.as_ref().unwrap().bits()),
            Layer::ActQuant(q) if !q.is_input() => {
                abits.push(q.bits());
                assert_eq!(q.method(), ActMethod::Lsq);
            }
            _ => {}
        }
    }
    assert_eq!(wbits, vec![8, 2, 8]);
    assert_eq!(abits, vec![8, 2]);
    let bad = QuantConfig {
        layers: vec![LayerQuant {
            layer: LayerSelector::Index(3),
            weight_bits: Some(8),
            act_bits: None,
            calibration: None,
            weight_calibration: None,
        }],
        ..lsq_cfg(2, 2, ActMethod::Lsq)
    };
    let mut m = Model::from_spec("mlp:784-32-16-10", 1).unwrap();
    match prepare_qat(&mut m, &bad) {
        Err(Error::InvalidOption { option, .. }) => assert_eq!(option, "layers[0].layer"),
        other => panic!("expected InvalidOption, got {other:?}"),
    }
}

#[test]
fn lsq_config_validation_names_the_option() {
    let opt = |c: QuantConfig| match c.validate() {
        Err(Error::InvalidOption { option, .. }) => option,
        other => panic!("expected InvalidOption, got {other:?}"),
    };
    assert_eq!(opt(lsq_cfg(1, 4, ActMethod::Ste)), "--weight-bits");
    assert_eq!(
        opt(QuantConfig {
            quant_step: Some(2.0),
            ..lsq_cfg(4, 4, ActMethod::Ste)
        }),
        "--weight-quantizer"
    );
    assert_eq!(
        opt(QuantConfig {
            method: lowbit::quant::Method::Ptq,
            ..lsq_cfg(4, 4, ActMethod::Lsq)
        }),
        "--weight-quantizer"
    );
    assert_eq!(
        opt(QuantConfig {
            pact_alpha_init: Some(-1.0),
            ..lsq_cfg(4, 4, ActMethod::Pact)
        }),
        "--pact-alpha"
    );
    assert_eq!(
        opt(QuantConfig {
            pact_l2: f32::NAN,
            ..lsq_cfg(4, 4, ActMethod::Pact)
        }),
        "--pact-l2"
    );
    assert!(lsq_cfg(2, 2, ActMethod::Pact).validate().is_ok());
    let ste = QuantConfig {
        lsq_init: LsqInit::Mse,
        ..QuantConfig::default()
    };
    assert_eq!(opt(ste), "--lsq-init");
    assert!(QuantConfig {
        lsq_init: LsqInit::Mse,
        ..lsq_cfg(4, 4, ActMethod::Ste)
    }
    .validate()
    .is_ok());
}
