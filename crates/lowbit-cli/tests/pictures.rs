//! `train --plot` and `demo --plot` from the command line: the extension picks SVG or PNG, an unknown one fails
//! before any work, and the pictures hold what the run did (every phase, every method).
use std::path::Path;
use tempfile::TempDir;

mod common;
use common::{run_err, run_ok};

fn png_size(path: &Path) -> (u32, u32) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let info = reader.info();
    (info.width, info.height)
}

/// Polylines of an SVG with more than `min_points` points (series lines, not axes or legend keys).
fn long_lines(svg: &str, min_points: usize) -> usize {
    svg.split("<polyline")
        .skip(1)
        .filter(|el| {
            let points = el.split("points=\"").nth(1).unwrap_or("");
            let points = &points[..points.find('"').unwrap_or(0)];
            points.split_whitespace().count() > min_points
        })
        .count()
}

#[test]
fn an_unknown_plot_extension_fails_before_any_training() {
    let dir = TempDir::new().unwrap();
    let args = [
        "train", "--epochs", "1", "--out", "m.f32", "--plot", "c.jpg",
    ];
    run_err(dir.path(), &args, &["c.jpg", ".svg or .png"]);
    assert!(!dir.path().join("m.f32").exists());
    run_err(
        dir.path(),
        &["demo", "--epochs", "1", "--plot", "s"],
        &["--plot", ".svg or .png"],
    );
}

#[test]
fn plotting_a_ptq_of_a_given_model_fails_before_the_work() {
    let dir = TempDir::new().unwrap();
    run_ok(
        dir.path(),
        &["train", "--epochs", "1", "--no-baseline", "--out", "f.f32"],
    );
    let args = [
        "train",
        "--init",
        "f.f32",
        "--method",
        "ptq",
        "--weight-bits",
        "8",
        "--out",
        "m.lbq",
        "--plot",
        "c.svg",
    ];
    run_err(dir.path(), &args, &["--plot", "trains nothing"]);
    assert!(!dir.path().join("m.lbq").exists());
}

#[test]
fn one_epoch_training_curves_show_every_step_in_svg_and_png() {
    let dir = TempDir::new().unwrap();
    let out = run_ok(
        dir.path(),
        &[
            "train",
            "--epochs",
            "1",
            "--validation-split",
            "0.1",
            "--plot",
            "c.svg",
        ],
    );
    assert!(out.contains("plot written to c.svg"), "{out}");
    let svg = std::fs::read_to_string(dir.path().join("c.svg")).unwrap();
    // 4,500 training samples in batches of 32: 141 steps; raw loss, smoothed loss, smoothed accuracy.
    assert_eq!(long_lines(&svg, 140), 3);
    for label in [
        "f32: smoothed (14-step EMA)",
        "f32: validation accuracy, epoch end",
    ] {
        assert!(svg.contains(label), "no {label:?}");
    }
    run_ok(dir.path(), &["train", "--epochs", "1", "--plot", "c.PNG"]);
    assert_eq!(png_size(&dir.path().join("c.PNG")), (1100, 460));
}

#[test]
fn a_qat_run_draws_its_f32_baseline_and_its_own_phase() {
    let dir = TempDir::new().unwrap();
    run_ok(
        dir.path(),
        &[
            "train",
            "--epochs",
            "1",
            "--weight-bits",
            "4",
            "--plot",
            "q.svg",
        ],
    );
    let svg = std::fs::read_to_string(dir.path().join("q.svg")).unwrap();
    for label in ["f32 baseline: batch loss", "QAT W4A8: batch loss"] {
        assert!(svg.contains(label), "no {label:?}");
    }
}

#[test]
fn the_demo_picture_has_a_legend_row_for_every_method_in_its_table() {
    let dir = TempDir::new().unwrap();
    let table = run_ok(dir.path(), &["demo", "--epochs", "1", "--plot", "s.svg"]);
    let svg = std::fs::read_to_string(dir.path().join("s.svg")).unwrap();
    let methods: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("method"))
        .skip(2)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split("  ").next().unwrap_or("").trim())
        .collect();
    assert_eq!(methods.len(), 7, "{table}");
    for m in methods {
        assert!(svg.contains(&format!("{m}: ")), "no legend row for {m:?}");
    }
    for label in [
        "f32 accuracy (",
        "Pareto front",
        "95% interval (1000 test images)",
    ] {
        assert!(svg.contains(label), "no {label:?}");
    }
    run_ok(dir.path(), &["demo", "--epochs", "1", "--plot", "s.png"]);
    assert_eq!(png_size(&dir.path().join("s.png")), (1100, 560));
}
