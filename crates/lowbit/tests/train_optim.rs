//! Optimizer updates against hand-computed values.
use lowbit::nn::Param;
use lowbit::optim::{Optimizer, OptimizerKind};
use lowbit::Error;

fn param<'a>(value: &'a mut [f32], grad: &'a mut [f32]) -> Param<'a> {
    Param {
        name: "w",
        value,
        grad,
    }
}

#[test]
fn adam_matches_two_hand_computed_keras_steps() {
    let mut opt = Optimizer::new(OptimizerKind::adam(), 0.1).unwrap();
    let mut w = [1.0f32, -2.0];
    // Step 1, g = (0.5, -0.2): m = 0.1 g, v = 0.001 g^2, alpha = 0.1 * sqrt(0.001) / 0.1 = sqrt(0.001);
    // update = alpha * m / (sqrt(v) + eps) = sqrt(0.001) * 0.1 g / (sqrt(0.001) |g| + 1e-7) ~ 0.1 * sign(g).
    let mut g = [0.5f32, -0.2];
    opt.step(&mut [param(&mut w, &mut g)]).unwrap();
    let expect1 = |g: f64, w: f64| {
        let alpha = 0.001f64.sqrt();
        w - alpha * 0.1 * g / ((0.001 * g * g).sqrt() + 1e-7)
    };
    let w1 = [expect1(0.5, 1.0), expect1(-0.2, -2.0)];
    for i in 0..2 {
        assert!(
            (f64::from(w[i]) - w1[i]).abs() < 1e-6,
            "step 1 [{i}]: {} vs {}",
            w[i],
            w1[i]
        );
    }
    // Step 2, g = (0.5, 0.4).
    let mut g2 = [0.5f32, 0.4];
    opt.step(&mut [param(&mut w, &mut g2)]).unwrap();
    for (i, (g1, gg)) in [(0.5f64, 0.5f64), (-0.2, 0.4)].into_iter().enumerate() {
        let m = 0.9 * (0.1 * g1) + 0.1 * gg;
        let v = 0.999 * (0.001 * g1 * g1) + 0.001 * gg * gg;
        let alpha = 0.1 * (1.0 - 0.999f64.powi(2)).sqrt() / (1.0 - 0.9f64.powi(2));
        let expect = w1[i] - alpha * m / (v.sqrt() + 1e-7);
        assert!(
            (f64::from(w[i]) - expect).abs() < 1e-6,
            "step 2 [{i}]: {} vs {expect}",
            w[i]
        );
    }
    assert_eq!(opt.steps(), 2);
}

#[test]
fn sgd_momentum_and_weight_decay_match_hand_computed_steps() {
    let kind = OptimizerKind::Sgd {
        momentum: 0.9,
        weight_decay: 0.01,
    };
    let mut opt = Optimizer::new(kind, 0.5).unwrap();
    let mut w = [2.0f32];
    let mut g = [1.0f32];
    opt.step(&mut [param(&mut w, &mut g)]).unwrap();
    // g' = 1 + 0.01 * 2 = 1.02; u = -0.5 * 1.02 = -0.51; w = 1.49
    assert!((w[0] - 1.49).abs() < 1e-6, "{}", w[0]);
    opt.step(&mut [param(&mut w, &mut g)]).unwrap();
    // g' = 1 + 0.0149 = 1.0149; u = 0.9 * -0.51 - 0.5 * 1.0149 = -0.96645; w = 0.52355
    assert!((w[0] - 0.52355).abs() < 1e-6, "{}", w[0]);
}

#[test]
fn set_lr_changes_the_step_size() {
    let mut opt = Optimizer::new(OptimizerKind::sgd(0.0), 1.0).unwrap();
    opt.set_lr(0.25).unwrap();
    let (mut w, mut g) = ([0.0f32], [2.0f32]);
    opt.step(&mut [param(&mut w, &mut g)]).unwrap();
    assert_eq!(w[0], -0.5);
    assert_eq!(opt.lr(), 0.25);
}

#[test]
fn rejects_bad_hyper_parameters_naming_the_flag() {
    let flag = |r: lowbit::Result<Optimizer>| match r {
        Err(Error::InvalidOption { option, .. }) => option,
        other => panic!("expected InvalidOption, got {other:?}"),
    };
    for lr in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert_eq!(flag(Optimizer::new(OptimizerKind::adam(), lr)), "--lr");
    }
    assert_eq!(
        flag(Optimizer::new(OptimizerKind::sgd(1.0), 0.1)),
        "--momentum"
    );
    let bad = OptimizerKind::Sgd {
        momentum: 0.0,
        weight_decay: -1.0,
    };
    assert_eq!(flag(Optimizer::new(bad, 0.1)), "--weight-decay");
    let bad = OptimizerKind::Adam {
        beta1: 0.9,
        beta2: 1.5,
        eps: 1e-7,
    };
    assert_eq!(flag(Optimizer::new(bad, 0.1)), "--beta2");
    let mut ok = Optimizer::new(OptimizerKind::adam(), 0.1).unwrap();
    assert!(matches!(
        ok.set_lr(f32::NAN),
        Err(Error::InvalidOption { .. })
    ));
}

#[test]
fn rejects_a_parameter_list_that_changes_between_steps() {
    let mut opt = Optimizer::new(OptimizerKind::adam(), 0.1).unwrap();
    let (mut w, mut g) = ([0.0f32; 3], [1.0f32; 3]);
    opt.step(&mut [param(&mut w, &mut g)]).unwrap();
    let (mut w2, mut g2) = ([0.0f32; 2], [1.0f32; 2]);
    assert!(matches!(
        opt.step(&mut [param(&mut w2, &mut g2)]),
        Err(Error::Shape(_))
    ));
}

#[test]
fn lsq_step_sizes_move_at_the_scaled_learning_rate_and_other_parameters_do_not() {
    // Adam's first update is lr * g / (|g| + eps'): about lr whatever the gradient's size.
    for kind in [OptimizerKind::adam(), OptimizerKind::sgd(0.0)] {
        let mut opt = Optimizer::new(kind, 1e-2).unwrap();
        opt.set_quant_lr_scale(0.1).unwrap();
        let (mut w, mut gw) = (vec![1.0f32], vec![1.0f32]);
        let (mut ws, mut gws) = (vec![1.0f32], vec![1.0f32]);
        let (mut a, mut ga) = (vec![1.0f32], vec![1.0f32]);
        let mut params = vec![
            Param {
                name: "weight",
                value: &mut w,
                grad: &mut gw,
            },
            Param {
                name: "weight_step",
                value: &mut ws,
                grad: &mut gws,
            },
            Param {
                name: "act_step",
                value: &mut a,
                grad: &mut ga,
            },
        ];
        opt.step(&mut params).unwrap();
        let moved = |v: f32| 1.0 - v;
        assert!(
            (moved(w[0]) - 1e-2).abs() < 1e-4,
            "{kind:?} weight moved {}",
            moved(w[0])
        );
        assert!(
            (moved(ws[0]) - 1e-3).abs() < 1e-5,
            "{kind:?} weight_step moved {}",
            moved(ws[0])
        );
        assert!(
            (moved(a[0]) - 1e-3).abs() < 1e-5,
            "{kind:?} act_step moved {}",
            moved(a[0])
        );
    }
    let mut opt = Optimizer::new(OptimizerKind::adam(), 1e-3).unwrap();
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        match opt.set_quant_lr_scale(bad) {
            Err(Error::InvalidOption { option, .. }) => assert_eq!(option, "--quant-lr-scale"),
            other => panic!("expected InvalidOption for {bad}, got {other:?}"),
        }
    }
}

#[test]
fn one_cycle_follows_pytorchs_one_cycle_lr() {
    // torch.optim.lr_scheduler.OneCycleLR(max_lr=2e-3, total_steps=100), defaults pct_start 0.3, div_factor 25,
    // final_div_factor 1e4, anneal_strategy "cos": phase ends at steps 29 and 99.
    let s = lowbit::optim::Schedule::OneCycle {
        pct_start: 0.3,
        div_factor: 25.0,
        final_div_factor: 1e4,
    };
    s.validate().unwrap();
    let lr = |step| s.lr_at(2e-3, step, 0, 10, 100);
    let close = |a: f32, b: f64| ((a as f64) - b).abs() <= 1e-6 * b.abs().max(1e-12);
    assert!(close(lr(0), 8e-5), "{}", lr(0));
    assert!(close(lr(29), 2e-3), "{}", lr(29));
    // Rising: 8e-5 + (2e-3 - 8e-5) (1 - cos(pi t / 29)) / 2.
    let up = |t: f64| 8e-5 + (2e-3 - 8e-5) * 0.5 * (1.0 - (std::f64::consts::PI * t / 29.0).cos());
    assert!(close(lr(14), up(14.0)), "{}", lr(14));
    assert!(close(lr(64), (2e-3 + 8e-9) / 2.0), "{}", lr(64));
    assert!(close(lr(99), 8e-9), "{}", lr(99));
    assert!((30..99).all(|t| lr(t) > lr(t + 1)), "falls monotonically");
    for bad in [0.0, 1.0, f32::NAN] {
        let b = lowbit::optim::Schedule::OneCycle {
            pct_start: bad,
            div_factor: 25.0,
            final_div_factor: 1e4,
        };
        assert!(b.validate().is_err(), "{bad}");
    }
}
