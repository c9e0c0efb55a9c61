//! `lowbit mixed`: the allocation meets its budget, is written as a config that `train --config` reruns to the
//! same engine accuracy, and impossible or malformed budgets fail with one line before any work.
use serde_json::Value;
use tempfile::TempDir;

mod common;
use common::{run_err, run_ok};

fn train_lenet(dir: &std::path::Path) {
    run_ok(
        dir,
        &[
            "train", "--model", "lenet5", "--epochs", "1", "--out", "m.f32",
        ],
    );
}

#[test]
fn a_bit_budget_is_met_and_the_written_config_reproduces_the_measured_accuracy() {
    let dir = TempDir::new().unwrap();
    train_lenet(dir.path());
    let out = run_ok(
        dir.path(),
        &[
            "mixed",
            "m.f32",
            "--budget-bits",
            "3",
            "--bits",
            "2,3,4",
            "--samples",
            "300",
            "--refine",
            "1",
            "--out-config",
            "a.toml",
            "--report",
            "r.json",
            "--out",
            "m.lbq",
        ],
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    let bits: Vec<u64> = r["allocation"]["bits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    assert_eq!(bits.len(), 5, "{out}");
    // 3 bits are measured but never chosen: they take the 4-bit containers, whose size the uniform rows show.
    assert!(bits.iter().all(|b| [2, 4, 8].contains(b)), "{bits:?}");
    assert!(out.contains("Not candidates: 3-bit"), "{out}");
    let layer0 = &r["sensitivity"]["layers"][0]["costs"];
    assert!(
        layer0.as_array().unwrap().iter().any(|c| c["bits"] == 3),
        "{layer0}"
    );
    let (u3, u4) = (&r["uniform"][1], &r["uniform"][2]);
    assert_eq!((&u3["bits"], &u4["bits"]), (&3.into(), &4.into()));
    assert!(u3["weight_bytes"].as_u64().unwrap() > 0, "{u3}");
    assert_eq!(u3["weight_bytes"], u4["weight_bytes"]);
    assert_eq!(u3["model_bytes"], u4["model_bytes"]);
    let weights: u64 = r["sensitivity"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["weights"].as_u64().unwrap())
        .sum();
    let bytes = r["allocation"]["bytes"].as_u64().unwrap();
    assert!(
        bytes * 8 <= 3 * weights,
        "{bytes} bytes for {weights} weights"
    );
    // Refinement starts from the exact solve and keeps the allocation of least measured loss.
    let rounds = r["refine"]["rounds"].as_array().unwrap();
    assert!(!rounds.is_empty() && rounds.len() <= 2, "{out}");
    assert_eq!(rounds[0]["bits"], r["solved"]["bits"], "{out}");
    let least = rounds
        .iter()
        .min_by(|a, b| {
            a["loss"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["loss"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(least["bits"], r["allocation"]["bits"], "{out}");
    assert!(
        out.contains("Refinement on 300 training images not used for calibration"),
        "{out}"
    );
    assert_eq!(r["sensitivity"]["measured_on"], "train");
    // Never worse than the uniform allocation it could have been (2 bits everywhere fits any 3-bit budget).
    let uniform2 = r["uniform"][0]["accuracy"].as_f64().unwrap();
    let measured = r["measured_accuracy"].as_f64().unwrap();
    assert_eq!(r["uniform"][0]["bits"], 2);
    assert!(
        measured >= uniform2,
        "mixed {measured} < uniform W2 {uniform2}"
    );
    // The measured drop is the test set's, from the uniform W8 row; the predicted one is the measured images'.
    let uniform8 = r["uniform"].as_array().unwrap().last().unwrap();
    assert_eq!(uniform8["bits"], 8);
    let drop = (uniform8["accuracy"].as_f64().unwrap() - measured) * 100.0;
    assert!(
        (r["measured_drop_pp"].as_f64().unwrap() - drop).abs() < 1e-9,
        "{out}"
    );
    assert!(out.contains("Drop from uniform W8A8: predicted"), "{out}");
    // The f32 figure beside the rows is the whole test set's, as theirs, though the sensitivity saw 300 images.
    run_ok(dir.path(), &["eval", "m.f32", "--report", "e.json"]);
    let e: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("e.json")).unwrap()).unwrap();
    assert_eq!(r["float_accuracy"], e["test_accuracy"], "{out}");
    // The config file reruns to the same engine accuracy.
    let rerun = run_ok(
        dir.path(),
        &[
            "train", "--config", "a.toml", "--init", "m.f32", "--report", "t.json",
        ],
    );
    let t: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("t.json")).unwrap()).unwrap();
    assert_eq!(t["test_accuracy"], r["measured_accuracy"], "{rerun}");
    assert!(dir.path().join("m.lbq").exists());
}

#[test]
fn impossible_and_malformed_budgets_fail_with_one_line_and_write_nothing() {
    let dir = TempDir::new().unwrap();
    for (args, fragment) in [
        (vec!["mixed", "none.f32"], "exactly one"),
        (
            vec!["mixed", "none.f32", "--budget-bits", "3", "--max-drop", "1"],
            "exactly one",
        ),
        (
            vec!["mixed", "none.f32", "--budget-bits", "0"],
            "--budget-bits",
        ),
        (
            vec!["mixed", "none.f32", "--budget-bits", "9"],
            "--budget-bits",
        ),
        (
            vec!["mixed", "none.f32", "--max-drop", "-0.5"],
            "--max-drop",
        ),
        (
            vec!["mixed", "none.f32", "--max-drop", "1", "--refine", "1"],
            "--refine",
        ),
        (
            vec!["mixed", "none.f32", "--max-drop", "1", "--bits", "12"],
            "--weight-bits",
        ),
        (
            vec!["mixed", "none.f32", "--max-drop", "1", "--add-bits", "9"],
            "--add-bits",
        ),
        (
            vec![
                "mixed",
                "none.f32",
                "--max-drop",
                "1",
                "--out-config",
                "a.yaml",
            ],
            "--out-config",
        ),
    ] {
        run_err(dir.path(), &args, &[fragment]);
    }
    train_lenet(dir.path());
    // 1 bit per weight is below what 2-bit layers can store.
    run_err(
        dir.path(),
        &[
            "mixed",
            "m.f32",
            "--budget-bits",
            "1",
            "--bits",
            "2,4",
            "--samples",
            "100",
            "--out-config",
            "a.toml",
        ],
        &["--budget", "smallest needs"],
    );
    // LeNet has no residual Add for --add-bits to set.
    run_err(
        dir.path(),
        &[
            "mixed",
            "m.f32",
            "--budget-bits",
            "3",
            "--add-bits",
            "8",
            "--samples",
            "100",
            "--out-config",
            "a.toml",
        ],
        &["--add-bits", "residual Add"],
    );
    assert!(!dir.path().join("a.toml").exists());
}

/// `--add-bits` reaches the measurements and the written config: rerunning the config gives the same engine
/// accuracy as `mixed` measured, with the add operands at their own width.
#[test]
fn add_bits_is_measured_and_written_into_the_config() {
    let dir = TempDir::new().unwrap();
    run_ok(
        dir.path(),
        &[
            "train",
            "--model",
            "resnet:8",
            "--epochs",
            "1",
            "--no-baseline",
            "--out",
            "r.f32",
        ],
    );
    run_ok(
        dir.path(),
        &[
            "mixed",
            "r.f32",
            "--budget-bits",
            "3",
            "--bits",
            "2",
            "--act-bits",
            "4",
            "--add-bits",
            "8",
            "--samples",
            "100",
            "--out-config",
            "a.toml",
            "--report",
            "r.json",
        ],
    );
    let config = std::fs::read_to_string(dir.path().join("a.toml")).unwrap();
    assert!(config.contains("add_bits = 8"), "{config}");
    let rerun = run_ok(
        dir.path(),
        &[
            "train", "--config", "a.toml", "--init", "r.f32", "--report", "t.json",
        ],
    );
    let read = |f: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(f)).unwrap()).unwrap()
    };
    assert_eq!(
        read("t.json")["test_accuracy"],
        read("r.json")["measured_accuracy"],
        "{rerun}"
    );
}

/// `--first-last-8bit` keeps the first and last weight layers at 8 bits, and the activations next to them (the
/// first layer's output, the last layer's input) at 8 bits, while LSQ trains the rest at 2.
#[test]
fn first_last_8bit_keeps_the_edges_at_eight_bits_and_the_middle_at_the_requested_width() {
    let dir = TempDir::new().unwrap();
    run_ok(
        dir.path(),
        &[
            "train",
            "--model",
            "lenet5",
            "--epochs",
            "1",
            "--no-baseline",
            "--weight-bits",
            "2",
            "--act-bits",
            "2",
            "--quantizer",
            "lsq",
            "--first-last-8bit",
            "--report",
            "r.json",
        ],
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    let bits = |key: &str| -> Vec<Option<u64>> {
        r["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l[key].as_u64())
            .collect()
    };
    // LeNet-5's weight layers: conv, conv, dense, dense, dense; the logits have no activation quantizer.
    assert_eq!(
        bits("weight_bits"),
        [Some(8), Some(2), Some(2), Some(2), Some(8)]
    );
    assert_eq!(bits("act_bits"), [Some(8), Some(2), Some(2), Some(8), None]);
    assert_eq!(r["config"]["quant"]["keep_first_last_8bit"], true);
    run_err(
        dir.path(),
        &["train", "--first-last-8bit"],
        &["--first-last-8bit", "--weight-bits"],
    );
}

/// `--cost hessian` and `--cost gn` allocate over the estimates the report carries without measuring a layer
/// (no one-layer PTQ runs, only the estimate asked for): the solved cost is the sum of the chosen layers'
/// estimates, and the budget holds.
#[test]
fn estimated_costs_allocate_over_the_reported_estimates() {
    let dir = TempDir::new().unwrap();
    train_lenet(dir.path());
    for (cost, key, other) in [
        ("hessian", "predicted", "predicted_gn"),
        ("gn", "predicted_gn", "predicted"),
    ] {
        let report = format!("{cost}.json");
        let out = run_ok(
            dir.path(),
            &[
                "mixed",
                "m.f32",
                "--budget-bits",
                "3",
                "--bits",
                "2,4",
                "--samples",
                "200",
                "--cost",
                cost,
                "--report",
                &report,
            ],
        );
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(&report)).unwrap())
                .unwrap();
        let layers = r["sensitivity"]["layers"].as_array().unwrap();
        let mut sum = 0.0;
        for (l, b) in layers
            .iter()
            .zip(r["allocation"]["bits"].as_array().unwrap())
        {
            if b.as_u64() != Some(8) {
                let c = l["costs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["bits"] == *b)
                    .unwrap();
                let v = c[key].as_f64().unwrap();
                assert!(v > 0.0, "{cost}: {c}");
                sum += v;
            }
        }
        for c in layers.iter().flat_map(|l| l["costs"].as_array().unwrap()) {
            assert!(c["weight_drop_pp"].is_null(), "{cost}: measured {c}");
            assert!(c["weight_loss_delta"].is_null(), "{cost}: measured {c}");
            assert!(c[other].is_null(), "{cost}: {other} computed {c}");
        }
        assert!(r["predicted_drop_pp"].is_null(), "{cost}");
        assert!(
            out.contains("Predicted loss increase over all-8-bit"),
            "{out}"
        );
        assert!(r["measured_accuracy"].as_f64().unwrap() > 0.5, "{out}");
        let solved = r["allocation"]["cost"].as_f64().unwrap();
        assert!(
            (solved - sum).abs() <= 1e-9 * sum.max(1.0),
            "{cost}: {solved} vs {sum}\n{out}"
        );
        let weights: u64 = layers.iter().map(|l| l["weights"].as_u64().unwrap()).sum();
        assert!(
            r["allocation"]["bytes"].as_u64().unwrap() * 8 <= 3 * weights,
            "{out}"
        );
        // Something was lowered: 3 bits on average cannot keep every layer at 8.
        assert!(sum > 0.0, "{out}");
    }
    // An accuracy budget sums measured drops: an estimated cost cannot serve it.
    run_err(
        dir.path(),
        &["mixed", "m.f32", "--max-drop", "1", "--cost", "gn"],
        &["--max-drop", "--cost"],
    );
}
