//! Spearman's coefficient, the held-out picks and both Hessian estimates against exact per-sample sums.
use super::*;

#[test]
fn spearman_is_one_for_monotone_series_minus_one_reversed_and_handles_ties() {
    let a = [1.0, 2.0, 3.0, 4.0];
    assert!((spearman(&a, &[10.0, 20.0, 35.0, 90.0]).unwrap() - 1.0).abs() < 1e-12);
    assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
    // Ties take their average rank: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3).
    let r = spearman(&[1.0, 2.0, 2.0, 3.0], &a).unwrap();
    assert!((r - 0.948_683_298).abs() < 1e-6, "{r}");
    assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
    assert_eq!(spearman(&[1.0, 2.0], &[1.0, 2.0]), None);
}

/// `mlp:6-5-3`, two batches of 20 random inputs and its weight nodes: small enough for exact per-sample sums.
fn tiny(rng: &mut Rng) -> (Model, Batches, Vec<usize>) {
    let model = Model::from_spec_for("mlp:6-5-3", 3, [1, 1, 6], 3).unwrap();
    let batches = (0..2)
        .map(|_| {
            let x: Vec<f32> = (0..20 * 6).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
            let y: Vec<u8> = (0..20).map(|i| (i % 3) as u8).collect();
            (Tensor::new(x, vec![20, 6]), y)
        })
        .collect();
    let weight_nodes = (0..model.nodes.len())
        .filter(|&j| is_weight_layer(&model.nodes[j].layer))
        .collect();
    (model, batches, weight_nodes)
}

/// Calls `visit(p_ic, grads)` for every sample `i` of `batches` and class `c`, `grads[l]` the gradient of
/// CE(x_i, c) in weight layer `l`'s weights: the per-sample sums the exact Gauss-Newton quantities are made of.
fn per_class_gradients(
    model: &Model,
    batches: &Batches,
    weight_nodes: &[usize],
    mut visit: impl FnMut(f64, &[&[f32]]),
) {
    let mut m = model.clone();
    for (x, _) in batches {
        for i in 0..x.rows() {
            let xi = Tensor::new(x.data[i * 6..(i + 1) * 6].to_vec(), vec![1, 6]);
            let p = softmax_rows(&m.forward(&xi, true).unwrap());
            for (c, &pc) in p.iter().enumerate() {
                let out =
                    softmax_cross_entropy(&m.forward(&xi, true).unwrap(), &[c as u8]).unwrap();
                m.backward(&out.grad).unwrap();
                let grads: Vec<&[f32]> = weight_nodes
                    .iter()
                    .map(|&j| match &m.nodes[j].layer {
                        Layer::Dense(d) => d.grad_weight.as_slice(),
                        _ => panic!("dense"),
                    })
                    .collect();
                visit(pc, &grads);
            }
        }
    }
}

#[test]
fn the_hutchinson_traces_match_the_exact_gauss_newton_traces_from_per_sample_gradients() {
    let (model, batches, weight_nodes) = tiny(&mut Rng::new(11));
    let est = hutchinson(&model, &batches, &weight_nodes, 3000, 5).unwrap();
    // Exact: sum over samples i and labels c of p_ic ||d CE(x_i, c) / d W_l||^2, over the sample count.
    let mut exact = vec![0.0f64; weight_nodes.len()];
    per_class_gradients(&model, &batches, &weight_nodes, |pc, grads| {
        for (e, g) in exact.iter_mut().zip(grads) {
            *e += pc * g.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / 40.0;
        }
    });
    for (l, (&e, &x)) in est.iter().zip(&exact).enumerate() {
        assert!(x > 0.0);
        assert!(
            (e - x).abs() / x < 0.05,
            "layer {l}: estimate {e} exact {x}"
        );
    }
    // A different seed estimates the same quantity: the estimate is not an artefact of one draw.
    let other = hutchinson(&model, &batches, &weight_nodes, 3000, 6).unwrap();
    assert_ne!(other, est);
}

#[test]
fn the_gauss_newton_estimate_is_the_quadratic_form_of_the_per_sample_gradients() {
    let mut rng = Rng::new(12);
    let (model, batches, weight_nodes) = tiny(&mut rng);
    let mut probe = OutputProbe::new(&model, batches.clone()).unwrap();
    // Small steps in the first layer (ReLU patterns hold), any step in the last (the logits are linear in it).
    for (&j, scale) in weight_nodes.iter().zip([1e-3f32, 0.3]) {
        let Layer::Dense(d) = &model.nodes[j].layer else {
            panic!("dense")
        };
        let dw: Vec<f32> = d
            .weight
            .iter()
            .map(|_| rng.uniform_range(-scale, scale))
            .collect();
        let moved: Vec<f32> = d.weight.iter().zip(&dw).map(|(w, e)| w + e).collect();
        let est = probe.gauss_newton(j, &moved).unwrap();
        // Exact: 1/2 mean_i sum_c p_ic (g_ic . dW)^2, g_ic the gradient of CE(x_i, c) in the layer's weights.
        let l = weight_nodes.iter().position(|&k| k == j).unwrap();
        let mut exact = 0.0f64;
        per_class_gradients(&model, &batches, &weight_nodes, |pc, grads| {
            let dot: f64 = grads[l]
                .iter()
                .zip(&dw)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            exact += 0.5 * pc * dot * dot / 40.0;
        });
        assert!(exact > 0.0);
        assert!(
            (est - exact).abs() / exact < 0.02,
            "node {j}: estimate {est} exact {exact}"
        );
    }
    // The probe puts the float weights back: the unchanged model changes nothing.
    let Layer::Dense(d) = &model.nodes[weight_nodes[0]].layer else {
        panic!("dense")
    };
    assert_eq!(probe.gauss_newton(weight_nodes[0], &d.weight).unwrap(), 0.0);
    assert!(probe.gauss_newton(weight_nodes[0], &[]).is_err());
    let relu = (0..model.nodes.len())
        .find(|&j| !is_weight_layer(&model.nodes[j].layer))
        .unwrap();
    assert_eq!(probe.gauss_newton(relu, &[]).unwrap(), 0.0);
}

#[test]
fn spread_picks_evenly_and_never_more_than_there_are() {
    assert_eq!(spread(10, 4), vec![0, 2, 5, 7]);
    assert_eq!(spread(3, 100), vec![0, 1, 2]);
}

#[test]
fn held_out_images_are_distinct_spread_and_never_calibration_images() {
    // Fashion-MNIST's sizes: calibration takes every 30th image, the measurement the ones halfway between.
    let pick = held_out(60_000, 2000, 2000);
    assert_eq!(pick, (0..2000).map(|i| 30 * i + 15).collect::<Vec<_>>());
    for (total, n, calibration) in [
        (10, 4, 5),
        (10, 100, 5),
        (7, 3, 7),
        (7, 3, 0),
        (1000, 999, 1),
        (5, 5, 3),
    ] {
        let pick = held_out(total, n, calibration);
        let calib = spread(total, calibration);
        let free = total - calib.len();
        assert_eq!(pick.len(), n.min(free), "{total} {n} {calibration}");
        assert!(
            pick.windows(2).all(|w| w[0] < w[1]),
            "distinct and sorted: {pick:?}"
        );
        assert!(
            pick.iter().all(|i| *i < total && !calib.contains(i)),
            "{pick:?} vs {calib:?}"
        );
    }
    assert!(held_out(7, 3, 7).is_empty());
}

/// Without per-layer measurements (`measure: false`) `analyse` still gives the Gauss-Newton estimate, equal to
/// the one of a measured run, reports nothing measured for a layer, and counts only the base measurement; with
/// neither measurements nor an estimate it refuses to run.
#[test]
fn estimates_alone_match_a_measured_run_and_measure_no_layer() {
    let split = crate::data::load(&crate::data::DataSource::Builtin).unwrap();
    let mut model = Model::from_spec("mlp:784-32-10", 0).unwrap();
    let tc = crate::train::TrainConfig {
        epochs: 1,
        ..crate::train::TrainConfig::default()
    };
    crate::train::train(&mut model, &split.train, &tc, &mut |_| {}).unwrap();
    let cfg = SensitivityConfig {
        bits: vec![2, 4],
        activations: false,
        samples: 300,
        hessian_samples: 64,
        hessian_iters: 0,
        base: QuantConfig {
            method: quant::Method::Ptq,
            calibration_samples: 128,
            ..QuantConfig::default()
        },
        ..SensitivityConfig::default()
    };
    let mut totals = Vec::new();
    let measured = analyse(&model, &split, &cfg, &mut |_, t| totals.push(t)).unwrap();
    assert_eq!(totals.last(), Some(&(1 + 2 * 2)));
    let fast_cfg = SensitivityConfig {
        measure: false,
        ..cfg.clone()
    };
    let mut totals = Vec::new();
    let fast = analyse(&model, &split, &fast_cfg, &mut |_, t| totals.push(t)).unwrap();
    assert_eq!(totals, [1]);
    assert_eq!(fast.base_accuracy, measured.base_accuracy);
    for (f, m) in fast.layers.iter().zip(&measured.layers) {
        for (fc, mc) in f.costs.iter().zip(&m.costs) {
            assert!(fc.predicted_gn.is_some_and(|g| g > 0.0));
            assert_eq!(fc.predicted_gn, mc.predicted_gn);
            assert!(mc.weight_loss_delta.is_some() && mc.weight_drop_pp.is_some());
            assert_eq!((fc.weight_loss_delta, fc.weight_drop_pp), (None, None));
            assert_eq!(fc.predicted, None);
        }
    }
    assert!(fast.spearman_gn.iter().all(|(_, r)| r.is_none()));
    assert_eq!(fast.spearman_gn_pooled, None);

    // An allocation asks for the cost it minimises and no other; a predicted drop needs measured layers.
    use crate::allocate::{layer_choices, Allocation, Cost};
    for (sens, cost, missing) in [
        (&fast, Cost::MeasuredLoss, "not measured"),
        (&fast, Cost::MeasuredDrop, "not measured"),
        (&fast, Cost::Hessian, "HAWQ"),
        (&measured, Cost::Hessian, "HAWQ"),
    ] {
        let err = layer_choices(sens, cost).unwrap_err().to_string();
        assert!(err.contains("--cost") && err.contains(missing), "{err}");
    }
    let estimated = layer_choices(&fast, Cost::GaussNewton).unwrap();
    let measured_loss = layer_choices(&measured, Cost::MeasuredDrop).unwrap();
    for bits in [[8, 8], [2, 8], [4, 2]] {
        assert_eq!(
            Allocation::of_bits(&estimated, &bits).predicted_drop_pp(&fast),
            None
        );
        let drop = Allocation::of_bits(&measured_loss, &bits).predicted_drop_pp(&measured);
        let sum: f64 = bits
            .iter()
            .zip(&measured.layers)
            .filter_map(|(&b, l)| l.costs.iter().find(|c| c.bits == b))
            .map(|c| c.weight_drop_pp.unwrap())
            .sum();
        assert_eq!(drop, Some(sum));
    }
    let nothing = SensitivityConfig {
        gauss_newton: false,
        ..fast_cfg
    };
    let err = analyse(&model, &split, &nothing, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("nothing to do"), "{err}");
}
