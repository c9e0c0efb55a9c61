//! Mixed-precision refinement (issue 13, item 4): every allocation `refine` measures is re-measured the same,
//! stays within the byte budget, and the one kept is the best measured; from a poor start it finds a better one.
//! An accuracy budget is checked by measurement: what `check_max_drop` keeps measured within the limit.
use lowbit::allocate::{check_max_drop, frontier, refine, weight_bytes, Allocation, Choice};
use lowbit::data::{load, DataSource, Split};
use lowbit::nn::Model;
use lowbit::quant::{Method, QuantConfig};
use lowbit::sensitivity::{MeasureOn, Measurer};
use lowbit::train::TrainConfig;

/// The candidates of `mlp:784-64-32-10`'s three weight layers (`rows x cols`), costs left to `refine`.
fn choices() -> Vec<Vec<Choice>> {
    [(64, 784), (32, 64), (10, 32)]
        .iter()
        .map(|&(rows, cols)| {
            [8u32, 2, 3, 4]
                .iter()
                .map(|&bits| Choice {
                    bits,
                    bytes: weight_bytes(bits, rows, cols).unwrap(),
                    cost: 0.0,
                })
                .collect()
        })
        .collect()
}

/// `mlp:784-64-32-10` trained on the embedded sample, and W8A8 PTQ calibrated on 256 images.
fn trained_mlp() -> (Split, Model, QuantConfig) {
    let split = load(&DataSource::Builtin).unwrap();
    let mut model = Model::from_spec("mlp:784-64-32-10", 0).unwrap();
    lowbit::train::train(
        &mut model,
        &split.train,
        &TrainConfig::default(),
        &mut |_| {},
    )
    .unwrap();
    let base = QuantConfig {
        weight_bits: 8,
        act_bits: 8,
        method: Method::Ptq,
        calibration_samples: 256,
        ..QuantConfig::default()
    };
    (split, model, base)
}

/// 500 held-out training images, calibrated as `base` says.
fn measurer<'a>(model: &'a Model, split: &'a Split, base: &QuantConfig) -> Measurer<'a> {
    Measurer::new(
        model,
        split,
        base.calibration_samples,
        500,
        MeasureOn::Train,
    )
    .unwrap()
}

#[test]
fn refinement_from_an_all_ternary_start_spends_the_slack_where_it_measures_best() {
    let (split, model, base) = trained_mlp();
    let measurer = measurer(&model, &split, &base);
    let layers = choices();
    let start = Allocation::of_bits(&layers, &[2, 2, 2]);
    let budget = start.bytes + 2000;

    let none = refine(&measurer, &base, &layers, &start, budget, 0, &mut |_, _| {}).unwrap();
    assert_eq!(none.best, start);
    assert_eq!(none.rounds.len(), 1);
    let (acc0, loss0) = measurer.measure(&start.quant_config(&base)).unwrap();
    assert_eq!(
        (none.rounds[0].accuracy, none.rounds[0].loss),
        (acc0, loss0)
    );

    let mut calls = 0;
    let r = refine(&measurer, &base, &layers, &start, budget, 3, &mut |_, _| {
        calls += 1
    })
    .unwrap();
    // 9 alternative candidates per round.
    assert!(calls >= 9 && calls % 9 == 0, "{calls}");
    assert!(r.rounds.len() >= 2, "{:?}", r.rounds);
    assert_ne!(r.best.bits, start.bits);
    assert!(r.best.bytes <= budget);
    let best = r.rounds.iter().find(|m| m.bits == r.best.bits).unwrap();
    assert!(
        best.loss < loss0,
        "kept loss {} not below the start's {loss0}",
        best.loss
    );
    for m in &r.rounds {
        assert!(m.bytes <= budget, "{m:?}");
        assert!(best.loss <= m.loss, "kept {best:?} but measured {m:?}");
        let again = measurer
            .measure(&Allocation::of_bits(&layers, &m.bits).quant_config(&base))
            .unwrap();
        assert_eq!(again, (m.accuracy, m.loss), "{m:?} re-measured");
    }
    assert!(r.rounds[0].predicted_loss.is_none() && r.rounds[1].predicted_loss.is_some());

    let wrong = Allocation::of_bits(&layers[..2], &[2, 2]);
    assert!(refine(&measurer, &base, &layers, &wrong, budget, 1, &mut |_, _| {}).is_err());
}

#[test]
fn the_measurer_takes_held_out_training_images_or_test_images_and_says_when_none_are_left() {
    let split = load(&DataSource::Builtin).unwrap();
    let model = Model::from_spec("mlp:784-16-10", 0).unwrap();
    let train = Measurer::new(&model, &split, 2000, 100_000, MeasureOn::Train).unwrap();
    // Every training image but the 2,000 calibration ones.
    assert_eq!(train.samples(), split.train.n - 2000);
    assert_eq!(train.measured_on(), MeasureOn::Train);
    let test = Measurer::new(&model, &split, 2000, 100_000, MeasureOn::Test).unwrap();
    assert_eq!(test.samples(), split.test.n);
    let q = QuantConfig {
        method: Method::Ptq,
        calibration_samples: 2000,
        ..QuantConfig::default()
    };
    // Different images, different measurements of the same model.
    assert_ne!(train.measure(&q).unwrap(), test.measure(&q).unwrap());
    let err = Measurer::new(&model, &split, split.train.n, 100, MeasureOn::Train)
        .err()
        .expect("calibration takes every training image")
        .to_string();
    assert!(
        err.contains("--measure-on") && err.contains("none is left"),
        "{err}"
    );
    assert!(Measurer::new(&model, &split, split.train.n, 100, MeasureOn::Test).is_ok());
}

#[test]
fn an_accuracy_budget_keeps_the_smallest_allocation_measured_within_it() {
    let (split, model, base) = trained_mlp();
    let measurer = measurer(&model, &split, &base);
    let (base_accuracy, _) = measurer.measure(&base).unwrap();
    // Drop costs that predict nothing (as ties at zero on few images do) and a loss order that ranks the widths.
    let layers = choices();
    let order: Vec<Vec<Choice>> = layers
        .iter()
        .map(|c| {
            c.iter()
                .map(|ch| Choice {
                    cost: 1.0 / ch.bits as f64,
                    ..*ch
                })
                .collect()
        })
        .collect();
    let start = Allocation::of_bits(&layers, &[2, 2, 2]);
    let (acc2, _) = measurer.measure(&start.quant_config(&base)).unwrap();
    let drop2 = (base_accuracy - acc2) * 100.0;
    // All ternary loses several points on this MLP (the 0.5 pp limit below needs a start well outside it).
    assert!(drop2 > 1.0, "all ternary loses only {drop2} pp");

    // Within a limit the start meets, one measurement and the start kept.
    let c = check_max_drop(
        &measurer,
        &base,
        &layers,
        &order,
        &start,
        base_accuracy,
        drop2,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        (c.best.bits.as_slice(), c.measured.len(), c.all_eight),
        (&[2, 2, 2][..], 1, false)
    );

    // Tighter: a larger allocation of the loss frontier that measured within the limit, the smallest measured so.
    let limit = 0.5;
    let mut calls = 0;
    let c = check_max_drop(
        &measurer,
        &base,
        &layers,
        &order,
        &start,
        base_accuracy,
        limit,
        &mut |_, _| calls += 1,
    )
    .unwrap();
    assert_eq!(calls, c.measured.len());
    assert!(!c.all_eight && c.best.bytes > start.bytes, "{c:?}");
    assert!(frontier(&order)
        .unwrap()
        .iter()
        .any(|a| a.bits == c.best.bits));
    let kept = c.measured.iter().find(|m| m.bits == c.best.bits).unwrap();
    assert!(kept.drop_pp <= limit, "{c:?}");
    for m in &c.measured {
        if m.drop_pp <= limit {
            assert!(
                m.bytes >= kept.bytes,
                "{m:?} is smaller than the kept {kept:?}"
            );
        }
        let (acc, _) = measurer
            .measure(&Allocation::of_bits(&layers, &m.bits).quant_config(&base))
            .unwrap();
        assert_eq!(acc, m.accuracy, "{m:?} re-measured");
        // The same arithmetic on the same two accuracies.
        assert_eq!((base_accuracy - acc) * 100.0, m.drop_pp);
    }
    // Bisection: far fewer measurements than the frontier has allocations.
    assert!(
        c.measured.len() <= 2 + frontier(&order).unwrap().len().ilog2() as usize + 1,
        "{c:?}"
    );

    // A limit nothing meets keeps all 8 bits; candidates that differ are an error.
    let c = check_max_drop(
        &measurer,
        &base,
        &layers,
        &order,
        &start,
        base_accuracy,
        -1.0,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(c.all_eight && c.best.bits == [8, 8, 8], "{c:?}");
    assert!(check_max_drop(
        &measurer,
        &base,
        &layers,
        &order[..2],
        &start,
        base_accuracy,
        0.5,
        &mut |_, _| {}
    )
    .is_err());
}
