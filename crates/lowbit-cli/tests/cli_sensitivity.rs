//! `lowbit sensitivity`: every weight layer measured on the engine at every bit width, a positive Hessian trace
//! per layer, and bad options refused before any work.
use serde_json::Value;
use tempfile::TempDir;

mod common;
use common::{run_err, run_ok};

#[test]
fn sensitivity_covers_every_weight_layer_and_bit_width_with_engine_measurements() {
    let dir = TempDir::new().unwrap();
    run_ok(
        dir.path(),
        &[
            "train", "--model", "lenet5", "--epochs", "1", "--out", "m.f32",
        ],
    );
    let table = run_ok(
        dir.path(),
        &[
            "sensitivity",
            "m.f32",
            "--bits",
            "2,4",
            "--samples",
            "300",
            "--hessian-samples",
            "64",
            "--hessian-iters",
            "4",
            "--report",
            "s.json",
            "--plot",
            "s.png",
        ],
    );
    // LeNet has no residual Add for --add-bits to set: an error, not a silent no-op.
    run_err(
        dir.path(),
        &[
            "sensitivity",
            "m.f32",
            "--bits",
            "2",
            "--samples",
            "100",
            "--add-bits",
            "8",
        ],
        &["--add-bits", "residual Add"],
    );
    let png = std::fs::read(dir.path().join("s.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.json")).unwrap()).unwrap();
    let s = &r["sensitivity"];
    assert_eq!(s["samples"], 300);
    // By default the measurements never touch the test set.
    assert_eq!(s["measured_on"], "train");
    assert!(
        table.contains("300 training images not used for calibration"),
        "{table}"
    );
    let layers = s["layers"].as_array().unwrap();
    // LeNet-5: two convolutions and three fully connected layers.
    assert_eq!(layers.len(), 5, "{table}");
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l["index"], i);
        assert!(l["hessian_trace"].as_f64().unwrap() > 0.0, "{l}");
        let costs = l["costs"].as_array().unwrap();
        assert_eq!(costs.len(), 2);
        let (two, four) = (&costs[0], &costs[1]);
        assert_eq!(
            (two["bits"].as_u64(), four["bits"].as_u64()),
            (Some(2), Some(4))
        );
        // Fewer bits, a larger weight perturbation; the prediction scales with it.
        let p2 = two["weight_perturbation"].as_f64().unwrap();
        let p4 = four["weight_perturbation"].as_f64().unwrap();
        assert!(p2 > p4 && p4 > 0.0, "{l}");
        assert!(two["predicted"].as_f64().unwrap() > four["predicted"].as_f64().unwrap());
        // The last layer's output is float logits: no activation measurement.
        assert_eq!(two["act_drop_pp"].is_null(), i == 4, "{l}");
        assert!(table.contains(l["name"].as_str().unwrap()));
    }
    let spearman = s["spearman"].as_array().unwrap();
    assert_eq!(spearman.len(), 2);
    // The pooled coefficient ranks all 10 (layer, width) pairs at once.
    let pairs = |key: &str| -> Vec<f64> {
        layers
            .iter()
            .flat_map(|l| l["costs"].as_array().unwrap())
            .map(|c| c[key].as_f64().unwrap())
            .collect()
    };
    let pooled = lowbit::sensitivity::spearman(&pairs("predicted"), &pairs("weight_loss_delta"));
    assert_eq!(s["spearman_pooled"].as_f64(), pooled, "{s}");
    // The Gauss-Newton estimate: a positive loss increase in nats for every pair, ranked the same way.
    assert!(pairs("predicted_gn").iter().all(|&g| g > 0.0), "{s}");
    let pooled_gn =
        lowbit::sensitivity::spearman(&pairs("predicted_gn"), &pairs("weight_loss_delta"));
    // JSON numbers parse back to within an ulp or so.
    assert!(
        (s["spearman_gn_pooled"].as_f64().unwrap() - pooled_gn.unwrap()).abs() < 1e-12,
        "{s}"
    );
    assert_eq!(s["spearman_gn"].as_array().unwrap().len(), 2);
    assert!(
        table.contains("gn vs measured loss over every layer"),
        "{table}"
    );
    assert!(
        table.contains("over every layer and bit width (10 pairs)"),
        "{table}"
    );
}

#[test]
fn bad_sensitivity_options_fail_with_one_line_before_loading_anything() {
    let dir = TempDir::new().unwrap();
    for (args, fragment) in [
        (
            vec!["sensitivity", "none.f32", "--bits", "9"],
            "--weight-bits",
        ),
        (
            vec!["sensitivity", "none.f32", "--base-bits", "0"],
            "--weight-bits",
        ),
        (
            vec!["sensitivity", "none.f32", "--samples", "0"],
            "--samples",
        ),
        (
            vec!["sensitivity", "none.f32", "--measure-on", "validation"],
            "--measure-on",
        ),
        (
            vec!["sensitivity", "none.f32", "--hessian-samples", "0"],
            "--hessian-samples",
        ),
        (
            vec!["sensitivity", "none.f32", "--plot", "s.jpg"],
            ".svg or .png",
        ),
        (
            vec!["sensitivity", "none.f32", "--add-bits", "9"],
            "--add-bits",
        ),
    ] {
        run_err(dir.path(), &args, &[fragment]);
    }
    run_err(dir.path(), &["sensitivity", "none.f32"], &["none.f32"]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
