//! `lowbit sweep`: the table, the JSON report and the picture agree with each other and with the engine, the
//! recommendation follows --max-drop, and bad options fail before any work with one line.
use serde_json::Value;
use tempfile::TempDir;

mod common;
use common::{run_err, run_ok};

/// A LeNet-5 trained for one epoch on the builtin sample, in `dir`.
fn trained(dir: &std::path::Path) {
    run_ok(
        dir,
        &[
            "train", "--model", "lenet5", "--epochs", "1", "--out", "m.f32",
        ],
    );
}

#[test]
fn a_ptq_sweep_reports_every_setting_measured_on_the_engine_with_front_and_recommendation() {
    let dir = TempDir::new().unwrap();
    trained(dir.path());
    let args = [
        "sweep",
        "m.f32",
        "--bits",
        "2,4,8",
        "--quant-step",
        "8",
        "--max-drop",
        "3",
        "--report",
        "s.json",
        "--plot",
        "s.svg",
    ];
    let table = run_ok(dir.path(), &args);
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.json")).unwrap()).unwrap();
    let s = &r["sweep"];
    let points = s["points"].as_array().unwrap();
    let labels: Vec<&str> = points
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels.len(), 4);
    assert!(labels[0].starts_with("PTQ W2A8"), "{labels:?}");
    assert!(labels[3].starts_with("PTQ k=8"), "{labels:?}");
    let f32_acc = s["float_accuracy"].as_f64().unwrap();
    for p in points {
        let rep = &p["report"];
        // Measured by the engine and cross-checked by the simulation, on every test image.
        assert_eq!(rep["accuracy_source"], "engine");
        assert_eq!(rep["engine_simulation_mismatches"], 0);
        assert_eq!(p["accuracy"], rep["test_accuracy"]);
        assert_eq!(p["bytes"], rep["model_bytes"]);
        let drop = (p["accuracy"].as_f64().unwrap() - f32_acc) * 100.0;
        assert!((p["delta_pp"].as_f64().unwrap() - drop).abs() < 1e-9);
        assert!(table.contains(p["label"].as_str().unwrap()), "{table}");
    }
    // More bits never store fewer bytes.
    let bytes: Vec<u64> = points[..3]
        .iter()
        .map(|p| p["bytes"].as_u64().unwrap())
        .collect();
    assert!(bytes[0] < bytes[1] && bytes[1] < bytes[2], "{bytes:?}");
    // The recommendation: the smallest point within 3 pp, and it is on the front.
    let within: Vec<usize> = (0..points.len())
        .filter(|&i| (f32_acc - points[i]["accuracy"].as_f64().unwrap()) * 100.0 <= 3.0 + 1e-9)
        .collect();
    let smallest = within
        .iter()
        .map(|&i| points[i]["bytes"].as_u64().unwrap())
        .min();
    match s["recommended"].as_u64() {
        Some(i) => {
            let i = i as usize;
            assert_eq!(Some(points[i]["bytes"].as_u64().unwrap()), smallest);
            assert!(s["pareto"].as_array().unwrap().contains(&Value::from(i)));
            assert!(table.contains("recommended"), "{table}");
            let svg = std::fs::read_to_string(dir.path().join("s.svg")).unwrap();
            assert!(svg.contains("recommended: smallest within 3 pp of f32"));
        }
        None => assert!(within.is_empty(), "{s}"),
    }
    for l in &labels {
        let svg = std::fs::read_to_string(dir.path().join("s.svg")).unwrap();
        assert!(svg.contains(&format!("{l}: ")), "no legend row for {l}");
    }
}

#[test]
fn mixed_points_meet_their_bit_budget_and_are_drawn_as_their_own_kind() {
    let dir = TempDir::new().unwrap();
    trained(dir.path());
    run_ok(
        dir.path(),
        &[
            "sweep",
            "m.f32",
            "--bits",
            "2,4",
            "--mixed-bits",
            "3",
            "--report",
            "s.json",
            "--plot",
            "s.svg",
        ],
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.json")).unwrap()).unwrap();
    let points = r["sweep"]["points"].as_array().unwrap();
    let mixed = &points[2];
    assert_eq!(mixed["setting"]["kind"], "mixed");
    assert_eq!(mixed["label"], "PTQ mixed 3 bits");
    assert_eq!(mixed["report"]["engine_simulation_mismatches"], 0);
    // Its weights fit 3 bits per weight: never more bytes than uniform 4 bits, never fewer than uniform 2.
    let bytes = |p: &Value| p["bytes"].as_u64().unwrap();
    assert!(
        bytes(&points[0]) <= bytes(mixed) && bytes(mixed) <= bytes(&points[1]),
        "{points:?}"
    );
    let svg = std::fs::read_to_string(dir.path().join("s.svg")).unwrap();
    assert!(svg.contains("PTQ mixed 3 bits: "));
    run_err(
        dir.path(),
        &["sweep", "m.f32", "--mixed-bits", "0"],
        &["--mixed-bits"],
    );
}

#[test]
fn bad_sweep_options_fail_with_one_line_before_loading_anything() {
    let dir = TempDir::new().unwrap();
    // The model file does not exist: option errors must come first.
    for (args, fragment) in [
        (vec!["sweep", "none.f32", "--bits", "9"], "--weight-bits"),
        (vec!["sweep", "none.f32", "--bits", "0"], "--weight-bits"),
        (vec!["sweep", "none.f32", "--max-drop", "-1"], "--max-drop"),
        (
            vec!["sweep", "none.f32", "--quant-step", "0"],
            "--quant-step",
        ),
        (vec!["sweep", "none.f32", "--act-bits", "12"], "--act-bits"),
        (vec!["sweep", "none.f32", "--add-bits", "1"], "--add-bits"),
        (
            vec!["sweep", "none.f32", "--method", "qat", "--epochs", "0"],
            "--epochs",
        ),
    ] {
        run_err(dir.path(), &args, &[fragment]);
    }
    run_err(dir.path(), &["sweep", "none.f32"], &["none.f32"]);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn a_sweep_refuses_a_quantized_model_naming_the_file() {
    let dir = TempDir::new().unwrap();
    run_ok(
        dir.path(),
        &[
            "train",
            "--epochs",
            "1",
            "--weight-bits",
            "8",
            "--no-baseline",
            "--out",
            "q.lbq",
        ],
    );
    run_err(dir.path(), &["sweep", "q.lbq"], &["q.lbq", "float model"]);
}
