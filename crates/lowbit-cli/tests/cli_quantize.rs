//! `lowbit quantize`: one call from an ONNX or float model to a `.lbq` measured on the integer engine, the same
//! model `train --method ptq --init` makes, and one-line errors that write nothing for bad models.
use prost::Message;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

mod common;
use common::{run_err, run_ok};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../lowbit/tests/fixtures/onnx/{name}.onnx"))
}

fn report(dir: &Path, name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
}

/// The PTQ flags both commands take, beyond the defaults.
const PTQ_FLAGS: [&str; 9] = [
    "--weight-bits",
    "4",
    "--per-channel",
    "--calibration",
    "percentile:99.9",
    "--bias-correction",
    "--calibration-samples",
    "300",
    "--layer-bits=first:8",
];

#[test]
fn quantize_writes_the_same_model_as_train_ptq_from_the_same_float_model() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    run_ok(
        d,
        &[
            "train",
            "--model",
            "mlp:784-32-10",
            "--epochs",
            "1",
            "--out",
            "m.f32",
        ],
    );
    let mut q = vec!["quantize", "m.f32", "--seed", "3", "--out", "q.lbq"];
    q.extend(PTQ_FLAGS);
    q.extend(["--report", "q.json"]);
    let said = run_ok(d, &q);
    let mut t = vec![
        "train", "--method", "ptq", "--init", "m.f32", "--seed", "3", "--out", "t.lbq",
    ];
    t.extend(PTQ_FLAGS);
    run_ok(d, &t);
    assert_eq!(
        std::fs::read(d.join("q.lbq")).unwrap(),
        std::fs::read(d.join("t.lbq")).unwrap(),
        "quantize and train --method ptq --init must write the same bytes"
    );
    // The same report and tables: the summary, then one row per layer with its calibrator.
    for part in [
        "test accuracy",
        "(engine)",
        "0 differing predictions",
        "f32 baseline",
        "percentile:99.9",
        "model written to q.lbq",
    ] {
        assert!(said.contains(part), "{part:?} missing from {said}");
    }
    let r = report(d, "q.json");
    assert_eq!(r["accuracy_source"], "engine");
    assert_eq!(r["engine_simulation_mismatches"], 0);
    // A trained 784-32-10 MLP at W4 (first layer 8) per channel loses a few points at most; a broken path (wrong
    // calibration data, lost normalisation) drops to chance (10%).
    let drop = -r["accuracy_delta_pp"].as_f64().unwrap();
    assert!(drop < 5.0, "drop {drop} pp");
    assert_eq!(
        r["file_bytes"].as_u64(),
        Some(std::fs::metadata(d.join("q.lbq")).unwrap().len())
    );

    // --onnx writes the QDQ file `lowbit export` writes for the same .lbq, beside a byte-identical .lbq.
    let mut o = vec!["quantize", "m.f32", "--seed", "3", "--out", "o.lbq"];
    o.extend(PTQ_FLAGS);
    o.extend(["--onnx", "o.onnx", "--weight-type", "int8"]);
    let said = run_ok(d, &o);
    assert!(said.contains("written to o.onnx"), "{said}");
    run_ok(
        d,
        &[
            "export",
            "q.lbq",
            "--onnx",
            "e.onnx",
            "--weight-type",
            "int8",
        ],
    );
    let read = |f: &str| std::fs::read(d.join(f)).unwrap();
    assert_eq!(read("o.lbq"), read("q.lbq"));
    assert_eq!(read("o.onnx"), read("e.onnx"));
    run_ok(d, &["export", "q.lbq", "--onnx", "u.onnx"]);
    assert_ne!(
        read("o.onnx"),
        read("u.onnx"),
        "--weight-type must reach the export"
    );
}

#[test]
fn quantize_of_an_onnx_model_is_measured_on_the_engine_and_eval_agrees() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let model = fixture("lenet");
    let said = run_ok(
        d,
        &[
            "quantize",
            model.to_str().unwrap(),
            "--out",
            "q.lbq",
            "--report",
            "q.json",
        ],
    );
    assert!(said.contains("PTQ W8A8"), "{said}");
    let r = report(d, "q.json");
    let acc = r["test_accuracy"].as_f64().unwrap();
    assert_eq!(r["accuracy_source"], "engine");
    assert!(r["baseline_accuracy"].is_number(), "{r}");
    let eval = run_ok(d, &["eval", "q.lbq"]);
    assert!(
        eval.contains(&format!("test accuracy {:.2}%", acc * 100.0)),
        "{eval} vs {acc}"
    );
    let inspect = run_ok(d, &["inspect", "q.lbq"]);
    assert!(inspect.contains("PTQ W8A8"), "{inspect}");
}

/// A directory of NumPy arrays of `n` random NHWC 12x12 RGB images per split, labels 0..10.
fn rgb_npy(dir: &Path, n: usize) -> PathBuf {
    let d = dir.join("rgb");
    std::fs::create_dir_all(&d).unwrap();
    let mut state = 7u32;
    let mut next = || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 24) as u8
    };
    for split in ["train", "test"] {
        let x: Vec<u8> = (0..n * 12 * 12 * 3).map(|_| next()).collect();
        let y: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        std::fs::write(
            d.join(format!("x_{split}.npy")),
            lowbit::data::npy::npy_bytes("|u1", &[n, 12, 12, 3], &x),
        )
        .unwrap();
        std::fs::write(
            d.join(format!("y_{split}.npy")),
            lowbit::data::npy::npy_bytes("|u1", &[n], &y),
        )
        .unwrap();
    }
    d
}

#[test]
fn onnx_preprocessing_comes_from_metadata_or_flags_and_is_stored_in_the_model() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    rgb_npy(d, 40);
    let model = fixture("nhwc_keras");
    let m = model.to_str().unwrap();
    // The fixture's metadata: pixels scaled to [0, 255], mean and std 127.5, i.e. (p/255 - 0.5) / 0.5.
    run_ok(d, &["quantize", m, "--data", "rgb", "--out", "meta.lbq"]);
    let inspect = run_ok(d, &["inspect", "meta.lbq"]);
    assert!(inspect.contains("mean [0.5], std [0.5]"), "{inspect}");
    // Flags win, part by part: --mean 0 --std 255 with the metadata's scale 255 is pixels / 255 * 255 / 255.
    run_ok(
        d,
        &[
            "quantize",
            m,
            "--data",
            "rgb",
            "--mean",
            "0",
            "--std",
            "255",
            "--out",
            "flags.lbq",
        ],
    );
    let inspect = run_ok(d, &["inspect", "flags.lbq"]);
    assert!(inspect.contains("mean [0.0], std [1.0]"), "{inspect}");
    // import stores the same normalisation in the float file, which eval then applies.
    let said = run_ok(d, &["import", m, "--out", "n.f32"]);
    assert!(said.contains("mean [0.5], std [0.5]"), "{said}");
    let eval = run_ok(d, &["eval", "n.f32", "--data", "rgb"]);
    assert!(eval.contains("test accuracy"), "{eval}");
}

/// The MLP fixture edited by `edit`, written to `dir/name`.
fn edited(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut lowbit::onnx::proto::ModelProto),
) -> String {
    let bytes = std::fs::read(fixture("mlp")).unwrap();
    let mut m = lowbit::onnx::proto::ModelProto::decode(bytes.as_slice()).unwrap();
    edit(&mut m);
    std::fs::write(dir.join(name), m.encode_to_vec()).unwrap();
    name.to_string()
}

/// Every bad model, and the fragments its one-line error must hold.
fn bad_models(d: &Path) -> Vec<(String, Vec<&'static str>)> {
    let bytes = std::fs::read(fixture("lenet")).unwrap();
    std::fs::write(d.join("cut.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(d.join("junk.onnx"), b"\xff\xff\xff\xff not protobuf").unwrap();
    let unsupported = edited(d, "erf.onnx", |m| {
        let g = m.graph.as_mut().unwrap();
        let relu = g.node.iter_mut().find(|n| n.op_type() == "Relu").unwrap();
        relu.op_type = Some("Erf".into());
    });
    // The spatial dimensions as symbols: nothing in the graph resolves them.
    let dynamic = edited(d, "dynamic.onnx", |m| {
        use lowbit::onnx::proto::tensor_shape_proto::dimension::Value;
        let g = m.graph.as_mut().unwrap();
        let ty = g.input[0].r#type.as_mut().unwrap();
        let Some(lowbit::onnx::proto::type_proto::Value::TensorType(t)) = ty.value.as_mut() else {
            panic!("tensor input")
        };
        for (k, dim) in t.shape.as_mut().unwrap().dim.iter_mut().enumerate().skip(2) {
            dim.value = Some(Value::DimParam(format!("side{k}")));
        }
    });
    let external = edited(d, "external.onnx", |m| {
        use lowbit::onnx::proto::StringStringEntryProto as Entry;
        let t = &mut m.graph.as_mut().unwrap().initializer[0];
        let len = t.raw_data.take().unwrap().len();
        t.external_data = vec![
            Entry {
                key: Some("location".into()),
                value: Some("weights.bin".into()),
            },
            Entry {
                key: Some("length".into()),
                value: Some(len.to_string()),
            },
        ];
        t.data_location = Some(1);
    });
    vec![
        (
            "cut.onnx".into(),
            vec!["cut.onnx", "not a valid ONNX model"],
        ),
        (
            "junk.onnx".into(),
            vec!["junk.onnx", "not a valid ONNX model"],
        ),
        (
            unsupported,
            vec!["erf.onnx", "op Erf", "/net/net.2/Relu", "opset 11"],
        ),
        (
            dynamic,
            vec!["dynamic.onnx", "graph input \"input\"", "known C, H and W"],
        ),
        (external, vec!["external.onnx", "weights.bin"]),
        ("missing.onnx".into(), vec!["missing.onnx"]),
    ]
}

#[test]
fn bad_onnx_models_fail_with_one_line_and_write_nothing_in_every_command() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    for (model, fragments) in bad_models(d) {
        let m = model.as_str();
        for args in [
            vec!["quantize", m, "--out", "out.lbq"],
            vec!["import", m, "--out", "out.f32"],
            vec![
                "train",
                "--init",
                m,
                "--weight-bits",
                "4",
                "--epochs",
                "1",
                "--out",
                "out.lbq",
            ],
            vec!["eval", m],
            vec!["inspect", m],
            vec!["sweep", m, "--bits", "4"],
        ] {
            run_err(d, &args, &fragments);
        }
        assert!(
            !d.join("out.lbq").exists() && !d.join("out.f32").exists(),
            "{m}"
        );
    }
}

#[test]
fn quantize_refuses_bad_options_before_writing() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let m = fixture("mlp");
    let m = m.to_str().unwrap();
    run_err(
        d,
        &["quantize", m, "--adaround-iters", "5", "--out", "q.lbq"],
        &["--adaround-iters", "--adaround"],
    );
    run_err(
        d,
        &["quantize", m, "--weight-bits", "9", "--out", "q.lbq"],
        &["--weight-bits"],
    );
    run_err(
        d,
        &["quantize", m, "--mean", "0.5", "--out", "q.lbq"],
        &["mlp.onnx", "mean and std"],
    );
    run_err(
        d,
        &["quantize", m, "--input-scale", "0", "--out", "q.lbq"],
        &["mlp.onnx", "input scale"],
    );
    run_err(
        d,
        &["quantize", m, "--weight-type", "int8", "--out", "q.lbq"],
        &["--onnx"],
    );
    // A 1-channel model on RGB data.
    rgb_npy(d, 10);
    run_err(
        d,
        &["quantize", m, "--data", "rgb", "--out", "q.lbq"],
        &["mlp.onnx"],
    );
    assert!(!d.join("q.lbq").exists());
}
