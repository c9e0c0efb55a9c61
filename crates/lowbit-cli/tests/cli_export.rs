//! `lowbit export` (a .lbq as QDQ ONNX, a float model as f32 ONNX) and `lowbit eval --predictions`; bad input
//! fails with one line naming the file and writes nothing.
use lowbit::onnx::proto::ModelProto;
use prost::Message;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

mod common;
use common::{lowbit, run_err, run_ok};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../lowbit/tests/fixtures/onnx/{name}.onnx"))
}

/// `mlp.f32` (the imported PyTorch MLP fixture) and `mlp.lbq` (its PTQ W8A8 per-channel) in `dir`.
fn models(dir: &Path) {
    let src = fixture("mlp");
    run_ok(dir, &["import", src.to_str().unwrap(), "--out", "mlp.f32"]);
    run_ok(
        dir,
        &[
            "train",
            "--method",
            "ptq",
            "--weight-bits",
            "8",
            "--per-channel",
            "--init",
            "mlp.f32",
            "--out",
            "mlp.lbq",
        ],
    );
}

fn read_onnx(path: &Path) -> ModelProto {
    ModelProto::decode(&std::fs::read(path).unwrap()[..]).unwrap()
}

fn ops(m: &ModelProto) -> Vec<String> {
    m.graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type().to_string())
        .collect()
}

#[test]
fn a_lbq_exports_as_qdq_and_a_float_model_as_f32_that_imports_again() {
    let dir = TempDir::new().unwrap();
    models(dir.path());
    let said = run_ok(dir.path(), &["export", "mlp.lbq", "--onnx", "q.onnx"]);
    assert!(
        said.contains("as QDQ ONNX") && said.contains("q.onnx"),
        "{said}"
    );
    let q = read_onnx(&dir.path().join("q.onnx"));
    let q_ops = ops(&q);
    assert!(
        q_ops.contains(&"QuantizeLinear".to_string()) && q_ops.contains(&"Gemm".to_string()),
        "{q_ops:?}"
    );
    assert!(
        q.doc_string().contains("ONNX Runtime"),
        "{}",
        q.doc_string()
    );

    for flag in ["--onnx", "--onnx-f32"] {
        let said = run_ok(dir.path(), &["export", "mlp.f32", flag, "f.onnx"]);
        assert!(said.contains("as F32 ONNX"), "{said}");
        let f = read_onnx(&dir.path().join("f.onnx"));
        assert!(!ops(&f).contains(&"QuantizeLinear".to_string()));
        // The f32 export imports again, and evaluates to the same accuracy as the model it came from.
        run_ok(dir.path(), &["import", "f.onnx", "--out", "again.f32"]);
        let a = run_ok(dir.path(), &["eval", "mlp.f32"]);
        let b = run_ok(dir.path(), &["eval", "again.f32"]);
        let acc = |s: &str| {
            s.lines()
                .next()
                .unwrap()
                .split(": ")
                .nth(1)
                .unwrap()
                .to_string()
        };
        assert_eq!(acc(&a), acc(&b), "{a}\n{b}");
    }
}

#[test]
fn eval_predictions_lists_one_class_per_test_image_matching_the_reported_accuracy() {
    let dir = TempDir::new().unwrap();
    models(dir.path());
    let test = lowbit::data::load(&lowbit::data::DataSource::Builtin)
        .unwrap()
        .test;
    for model in ["mlp.lbq", "mlp.f32"] {
        let said = run_ok(dir.path(), &["eval", model, "--predictions", "p.txt"]);
        let text = std::fs::read_to_string(dir.path().join("p.txt")).unwrap();
        let pred: Vec<usize> = text.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(pred.len(), test.n);
        assert!(pred.iter().all(|&p| p < test.classes));
        let correct = pred
            .iter()
            .zip(&test.labels)
            .filter(|(p, l)| **p == **l as usize)
            .count();
        assert!(
            said.contains(&format!("({correct} / {})", test.n)),
            "{model}: {correct} correct in the file; eval said {said}"
        );
    }
}

#[test]
fn eval_logits_writes_the_float_models_logits_whose_argmax_are_its_predictions() {
    let dir = TempDir::new().unwrap();
    models(dir.path());
    run_ok(
        dir.path(),
        &[
            "eval",
            "mlp.f32",
            "--predictions",
            "p.txt",
            "--logits",
            "l.npy",
        ],
    );
    let pred: Vec<usize> = std::fs::read_to_string(dir.path().join("p.txt"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let npy = lowbit::data::npy::read_npy(&dir.path().join("l.npy")).unwrap();
    assert_eq!(npy.shape, [pred.len(), 10]);
    let logits: Vec<f32> = npy
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let argmax: Vec<usize> = logits
        .chunks(10)
        .map(|r| (0..10).fold(0, |best, i| if r[i] > r[best] { i } else { best }))
        .collect();
    assert_eq!(argmax, pred);
    // A .lbq's logits are integers: refused, naming the file, nothing written.
    run_err(
        dir.path(),
        &["eval", "mlp.lbq", "--logits", "q.npy"],
        &["mlp.lbq", "--logits"],
    );
    assert!(!dir.path().join("q.npy").exists());
}

#[test]
fn onnx_f32_of_a_quantized_model_is_refused_naming_the_file_and_writing_nothing() {
    let dir = TempDir::new().unwrap();
    models(dir.path());
    run_err(
        dir.path(),
        &["export", "mlp.lbq", "--onnx-f32", "out.onnx"],
        &["mlp.lbq", "--onnx"],
    );
    assert!(!dir.path().join("out.onnx").exists());
}

#[test]
fn a_missing_or_corrupt_model_and_an_unwritable_output_are_one_line_errors() {
    let dir = TempDir::new().unwrap();
    run_err(
        dir.path(),
        &["export", "none.lbq", "--onnx", "out.onnx"],
        &["none.lbq"],
    );
    std::fs::write(dir.path().join("junk.lbq"), b"not a model").unwrap();
    run_err(
        dir.path(),
        &["export", "junk.lbq", "--onnx", "out.onnx"],
        &["junk.lbq"],
    );
    assert!(!dir.path().join("out.onnx").exists());
    models(dir.path());
    run_err(
        dir.path(),
        &["export", "mlp.lbq", "--onnx", "no/such/dir/out.onnx"],
        &["out.onnx"],
    );
}

#[test]
fn export_needs_exactly_one_output_flag() {
    let dir = TempDir::new().unwrap();
    for args in [
        &["export", "m.lbq"][..],
        &[
            "export",
            "m.lbq",
            "--onnx",
            "a.onnx",
            "--onnx-f32",
            "b.onnx",
        ][..],
    ] {
        let out = lowbit(dir.path(), args);
        assert!(!out.status.success(), "{args:?}");
    }
}
