//! Properties of the weight and activation quantizers and the quantizer config.
use lowbit::quant::{
    act_qparams, ActQuantizer, Method, QuantConfig, WeightQuantKind, WeightQuantizer, INPUT_SCALE,
};
use lowbit::tensor::Tensor;
use lowbit::Error;
use lowbit_runtime::qparams::{self, weight_code_range, QParams};
use proptest::prelude::*;

fn option_of(e: Error) -> String {
    match e {
        Error::InvalidOption { option, .. } => option,
        other => panic!("expected InvalidOption, got {other:?}"),
    }
}

#[test]
fn config_rejects_out_of_range_bits_and_bad_steps_naming_the_option() {
    let ok = QuantConfig::default();
    assert!(ok.validate().is_ok());
    for bits in [0, 9, 32] {
        let c = QuantConfig {
            weight_bits: bits,
            ..ok.clone()
        };
        assert_eq!(option_of(c.validate().unwrap_err()), "--weight-bits");
        let c = QuantConfig {
            act_bits: bits,
            ..ok.clone()
        };
        assert_eq!(option_of(c.validate().unwrap_err()), "--act-bits");
    }
    for k in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let c = QuantConfig {
            quant_step: Some(k),
            ..ok.clone()
        };
        assert_eq!(
            option_of(c.validate().unwrap_err()),
            "--quant-step",
            "k = {k}"
        );
    }
    let c = QuantConfig {
        ema_momentum: 1.0,
        ..ok.clone()
    };
    assert_eq!(option_of(c.validate().unwrap_err()), "--ema-momentum");
}

#[test]
fn config_selects_binary_ternary_min_max_and_fixed_step() {
    let c = |weight_bits, quant_step| QuantConfig {
        weight_bits,
        quant_step,
        method: Method::Ptq,
        ..QuantConfig::default()
    };
    assert_eq!(c(1, None).weight_kind(), WeightQuantKind::Binary);
    assert_eq!(c(2, None).weight_kind(), WeightQuantKind::Ternary);
    assert_eq!(c(4, None).weight_kind(), WeightQuantKind::MinMax);
    assert_eq!(
        c(4, Some(8.0)).weight_kind(),
        WeightQuantKind::FixedStep { k: 8.0 }
    );
    let json = serde_json::to_string(&c(4, Some(8.0))).unwrap();
    let back: QuantConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c(4, Some(8.0)));
}

fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..6, 1usize..20).prop_flat_map(|(r, c)| {
        (
            Just(r),
            Just(c),
            prop::collection::vec(
                prop_oneof![Just(0.0f32), -3.0f32..3.0, -1e-3f32..1e-3],
                r * c,
            ),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn min_max_codes_are_in_range_idempotent_and_within_half_a_step(
        (rows, cols, w) in matrix(), bits in 2u32..=8, per_channel: bool
    ) {
        let q = WeightQuantizer::new(WeightQuantKind::MinMax, bits, per_channel).unwrap();
        let wc = q.quantize(&w, rows, cols);
        let (lo, hi) = weight_code_range(bits).unwrap();
        prop_assert_eq!(wc.scales.len(), if per_channel { rows } else { 1 });
        for &c in &wc.codes {
            prop_assert!((lo..=hi).contains(&(c as i32)), "code {} outside [{}, {}]", c, lo, hi);
        }
        let fake = q.fake_quantize(&w, rows, cols);
        for (i, (&x, &f)) in w.iter().zip(&fake).enumerate() {
            let s = wc.scale_of_row(i / cols);
            // Half a step, plus f32 rounding of x / s and of code * s (a few ulps of |x|).
            prop_assert!((x - f).abs() <= s * 0.5 * (1.0 + 1e-5) + x.abs() * 1e-6,
                "i={} x={} fake={} scale={}", i, x, f, s);
        }
        // Each per-channel scale covers its row's max: max|row| / scale <= qmax (up to f32 rounding).
        for r in 0..rows {
            let m = w[r * cols..(r + 1) * cols].iter().fold(0f32, |a, x| a.max(x.abs()));
            prop_assert!(m <= wc.scale_of_row(r) * hi as f32 * (1.0 + 1e-6));
        }
        let again = q.quantize(&fake, rows, cols);
        prop_assert_eq!(&again.codes, &wc.codes);
    }

    #[test]
    fn ternary_and_binary_codes_are_idempotent((rows, cols, w) in matrix(), per_channel: bool) {
        for kind in [WeightQuantKind::Ternary, WeightQuantKind::Binary] {
            let q = WeightQuantizer::new(kind, 8, per_channel).unwrap();
            let wc = q.quantize(&w, rows, cols);
            let allowed: &[i8] = if kind == WeightQuantKind::Binary { &[-1, 1] } else { &[-1, 0, 1] };
            prop_assert!(wc.codes.iter().all(|c| allowed.contains(c)), "{:?}: {:?}", kind, wc.codes);
            prop_assert!(wc.scales.iter().all(|s| s.is_normal() && *s > 0.0));
            let fake = q.fake_quantize(&w, rows, cols);
            prop_assert_eq!(&q.quantize(&fake, rows, cols).codes, &wc.codes, "{:?}", kind);
        }
    }

    #[test]
    fn weight_forward_is_code_times_scale_bit_for_bit((rows, cols, w) in matrix(), bits in 2u32..=8) {
        let mut q = WeightQuantizer::new(WeightQuantKind::MinMax, bits, true).unwrap();
        let mut out = vec![0.0; w.len()];
        q.forward(&w, rows, cols, &mut out);
        let (codes, scales) = q.quantize_codes(&w, rows, cols);
        for i in 0..w.len() {
            let qp = QParams::new(scales[i / cols], 0).unwrap();
            let (lo, hi) = weight_code_range(bits).unwrap();
            prop_assert_eq!(out[i].to_bits(), qparams::fake_quantize(w[i], qp, lo, hi).to_bits());
            prop_assert_eq!(out[i].to_bits(), qparams::dequantize(codes[i] as i32, qp).to_bits());
        }
    }

    #[test]
    fn act_fake_quant_equals_dequantize_of_quantize_bit_for_bit(
        x in prop::collection::vec(-5.0f32..20.0, 1..64), bits in 1u32..=8
    ) {
        let mut a = ActQuantizer::new(bits, 0.9).unwrap();
        let t = Tensor::new(x.clone(), vec![1, x.len()]);
        let y = a.forward(&t, true);
        let qp = a.qparams();
        let qmax = (1 << bits) - 1;
        for (&v, &f) in x.iter().zip(&y.data) {
            let q = qparams::quantize(v, qp, 0, qmax);
            prop_assert_eq!(f.to_bits(), qparams::dequantize(q, qp).to_bits());
        }
        // Zero is exactly representable.
        prop_assert_eq!(qparams::fake_quantize(0.0, qp, 0, qmax), 0.0);
    }
}

#[test]
fn fixed_step_picks_the_smallest_width_holding_the_codes() {
    let q = WeightQuantizer::new(WeightQuantKind::FixedStep { k: 4.0 }, 8, true).unwrap();
    let cases: &[(&[f32], u32)] = &[
        (&[0.0, 0.25, -0.25], 2),
        (&[0.0, 0.25, -0.5, 0.75], 3),
        (&[1.0, -1.75], 4),
        (&[0.25, -0.25], 1), // only +-1 codes, no zero: binary holds them
        (&[31.75, 0.0], 8),  // code 127
    ];
    for &(w, bits) in cases {
        let wc = q.quantize(w, 1, w.len());
        assert_eq!(wc.bits, bits, "{w:?}");
        assert_eq!(wc.scales, vec![0.25]);
        assert_eq!(wc.clipped, 0);
        let (lo, hi) = weight_code_range(bits).unwrap();
        assert!(wc.codes.iter().all(|&c| (lo..=hi).contains(&(c as i32))));
    }
    let wc = q.quantize(&[0.26, -0.24, 2.0], 1, 3);
    assert_eq!(wc.codes, vec![1, -1, 8]);
}

#[test]
fn fixed_step_clips_past_127_and_blocks_those_gradients() {
    let mut q = WeightQuantizer::new(WeightQuantKind::FixedStep { k: 4.0 }, 8, true).unwrap();
    let w = [40.0, -0.5, -50.0, 1.0];
    let mut out = [0.0; 4];
    q.forward(&w, 2, 2, &mut out);
    assert_eq!(out, [127.0 * 0.25, -0.5, -127.0 * 0.25, 1.0]);
    assert_eq!(q.bits(), 8);
    assert_eq!(q.clipped_fraction(), 0.5);
    let mut g = [0.0; 4];
    q.backward(&w, &[1.0, 2.0, 3.0, 4.0], &mut g);
    assert_eq!(g, [0.0, 2.0, 0.0, 4.0]);
    // A fixed-step bias lands on the 1/k grid.
    assert_eq!(q.quantize_bias(&[0.3, -0.1]), vec![0.25, 0.0]);
}

#[test]
fn min_max_passes_every_gradient_and_accumulates() {
    let mut q = WeightQuantizer::new(WeightQuantKind::MinMax, 4, true).unwrap();
    let w = [0.3, -1.0, 0.7, 0.01];
    let mut out = [0.0; 4];
    q.forward(&w, 2, 2, &mut out);
    let mut g = [1.0; 4];
    q.backward(&w, &[0.5, -0.5, 2.0, 3.0], &mut g);
    assert_eq!(g, [1.5, 0.5, 3.0, 4.0]);
    assert_eq!(q.clipped_fraction(), 0.0);
}

#[test]
fn ternary_follows_the_twn_threshold_rule() {
    let q = WeightQuantizer::new(WeightQuantKind::Ternary, 2, true).unwrap();
    // mean|w| = 0.375, delta = 0.2625: codes 0, -1, 1, 0; alpha = mean(0.9, 0.5) = 0.7.
    let wc = q.quantize(&[0.1, -0.9, 0.5, 0.0], 1, 4);
    assert_eq!(wc.codes, vec![0, -1, 1, 0]);
    assert_eq!(wc.bits, 2);
    assert!((wc.scales[0] - 0.7).abs() < 1e-6, "{:?}", wc.scales);
    // An all-zero row gets zero codes and a usable scale.
    let wc = q.quantize(&[0.0, 0.0, 1.0, -1.0], 2, 2);
    assert_eq!(wc.codes, vec![0, 0, 1, -1]);
    assert!(wc.scales.iter().all(|s| s.is_normal()));
}

#[test]
fn binary_codes_are_signs_with_per_row_mean_abs_scale() {
    // Per-channel even when asked per tensor: binary always has one alpha per output row.
    let q = WeightQuantizer::new(WeightQuantKind::Binary, 1, false).unwrap();
    let wc = q.quantize(&[0.5, -1.5, 0.0, 2.0, -2.0, -1.0], 2, 3);
    assert_eq!(wc.codes, vec![1, -1, 1, 1, -1, -1]);
    assert_eq!(wc.bits, 1);
    assert_eq!(wc.scales.len(), 2);
    assert!((wc.scales[0] - 2.0 / 3.0).abs() < 1e-6);
    assert!((wc.scales[1] - 5.0 / 3.0).abs() < 1e-6);
}

#[test]
fn min_max_guards_all_zero_rows_with_a_usable_scale() {
    let q = WeightQuantizer::new(WeightQuantKind::MinMax, 8, true).unwrap();
    let wc = q.quantize(&[0.0, 0.0, 0.5, -0.125], 2, 2);
    assert_eq!(wc.codes, vec![0, 0, 127, -32]);
    assert!(wc.scales.iter().all(|s| s.is_normal()));
    let wc = q.quantize(&[0.0; 4], 2, 2);
    assert_eq!(wc.codes, vec![0; 4]);
    assert!(wc.scales.iter().all(|s| s.is_normal()));
}

#[test]
fn act_range_is_an_ema_initialized_by_the_first_batch() {
    let mut a = ActQuantizer::new(8, 0.9).unwrap();
    assert!(a.try_qparams().is_err());
    let t = |v: &[f32]| Tensor::new(v.to_vec(), vec![1, v.len()]);
    a.forward(&t(&[-1.0, 0.5, 3.0]), true);
    assert_eq!(a.range(), Some((-1.0, 3.0)));
    a.forward(&t(&[0.0, 5.0]), true);
    let (lo, hi) = a.range().unwrap();
    assert_eq!(lo, -0.9);
    assert_eq!(hi, 0.9f32 * 3.0 + (1.0 - 0.9f32) * 5.0);
    // Eval mode leaves the range alone.
    a.forward(&t(&[-100.0, 100.0]), false);
    assert_eq!(a.range(), Some((lo, hi)));
    // Frozen: train mode leaves it alone too.
    a.freeze();
    a.forward(&t(&[-100.0, 100.0]), true);
    assert_eq!(a.range(), Some((lo, hi)));
}

#[test]
fn calibration_tracks_the_running_min_max_and_passes_data_through() {
    let mut a = ActQuantizer::new(4, 0.99).unwrap();
    a.start_calibration();
    let x = Tensor::new(vec![0.1, 2.0], vec![1, 2]);
    assert_eq!(a.forward(&x, false), x);
    a.forward(&Tensor::new(vec![-0.5, 1.0], vec![1, 2]), false);
    a.freeze();
    assert_eq!(a.range(), Some((-0.5, 2.0)));
    let qp = a.qparams();
    assert_eq!(qp, act_qparams(-0.5, 2.0, 4).unwrap());
    assert_eq!(qp.scale, 2.5 / 15.0);
    assert_eq!(qp.zero_point, 3);
}

#[test]
fn act_qparams_always_include_zero() {
    let qp = act_qparams(0.5, 2.0, 8).unwrap();
    assert_eq!(qp.zero_point, 0);
    assert_eq!(qp.scale, 2.0 / 255.0);
    let qp = act_qparams(-3.0, -1.0, 8).unwrap();
    assert_eq!(qp.zero_point, 255);
    assert!(act_qparams(f32::NAN, 1.0, 8).is_err());
    assert!(act_qparams(0.0, 1.0, 9).is_err());
    // All-zero activations still get a valid scale.
    assert!(act_qparams(0.0, 0.0, 8).unwrap().scale.is_normal());
}

/// The STE claims d fake(x) / dx = 1 inside the range and 0 outside. A central difference over many steps
/// (h = 10 scales) must match it: inside, |fake(x) - x| <= s/2 bounds the slope error by s / (2h) = 0.05.
#[test]
fn act_ste_matches_finite_differences_inside_and_outside_the_range() {
    let mut a = ActQuantizer::new(8, 0.9).unwrap();
    a.set_range(0.0, 2.55).unwrap();
    let qp = a.qparams();
    let h = 10.0 * qp.scale;
    let xs: Vec<f32> = (0..40).map(|i| -1.0 + i as f32 * 0.1).collect();
    let y = a.forward(&Tensor::new(xs.clone(), vec![1, xs.len()]), false);
    assert_eq!(y.len(), xs.len());
    let g = a.backward(&Tensor::new(vec![1.0; xs.len()], vec![1, xs.len()]));
    let fake = |v: f32| qparams::fake_quantize(v, qp, 0, 255);
    for (&x, &ste) in xs.iter().zip(&g.data) {
        if x - h < 0.0 && x + h > 0.0 || x - h < 2.55 && x + h > 2.55 {
            continue; // the difference straddles a clip point
        }
        let fd = (fake(x + h) - fake(x - h)) / (2.0 * h);
        assert!((fd - ste).abs() <= 0.05 + 1e-4, "x={x}: fd={fd}, ste={ste}");
    }
    assert!(a.clipped_fraction() > 0.0);
}

#[test]
fn input_quantizer_recovers_every_pixel_code() {
    let mut a = ActQuantizer::input();
    let qp = a.qparams();
    assert_eq!(qp.scale, INPUT_SCALE);
    assert_eq!(qp.zero_point, 0);
    let x: Vec<f32> = (0..=255).map(|p| p as f32 / 255.0).collect();
    let y = a.forward(&Tensor::new(x.clone(), vec![1, 256]), true);
    for p in 0..=255i32 {
        assert_eq!(qparams::quantize(x[p as usize], qp, 0, 255), p);
        // p/255 and p * (1/255) can differ by an ulp in f32: the input quantizer's output is the value the
        // integer engine implies for pixel p.
        assert_eq!(
            y.data[p as usize].to_bits(),
            qparams::dequantize(p, qp).to_bits()
        );
    }
    assert_eq!(a.qparams(), qp, "the input quantizer never learns");
}
