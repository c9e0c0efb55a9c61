//! `lowbit import`: an ONNX file made by torch.onnx.export becomes a float model that PTQ, QAT fine-tuning, eval,
//! inspect and sweep take; bad files fail with one line naming the file and write nothing.
use std::path::{Path, PathBuf};
use tempfile::TempDir;

mod common;
use common::{run_err, run_ok};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../lowbit/tests/fixtures/onnx/{name}.onnx"))
}

fn import(dir: &Path, name: &str) -> String {
    let src = fixture(name);
    let out = format!("{name}.f32");
    let stdout = run_ok(dir, &["import", src.to_str().unwrap(), "--out", &out]);
    assert!(dir.join(&out).exists(), "{stdout}");
    stdout
}

#[test]
fn an_imported_mlp_and_lenet_quantize_with_ptq_on_builtin_data_and_evaluate() {
    let dir = TempDir::new().unwrap();
    for name in ["mlp", "lenet"] {
        let said = import(dir.path(), name);
        assert!(said.contains("input 1x28x28, 10 classes"), "{said}");
        let f32_file = format!("{name}.f32");
        let lbq = format!("{name}.lbq");
        let table = run_ok(
            dir.path(),
            &[
                "train",
                "--method",
                "ptq",
                "--weight-bits",
                "8",
                "--init",
                &f32_file,
                "--out",
                &lbq,
            ],
        );
        // Measured on the integer engine, which agrees with the independent simulation on every image.
        assert!(
            table.contains("(engine)") && table.contains("0 differing predictions"),
            "{table}"
        );
        let eval = run_ok(dir.path(), &["eval", &lbq]);
        assert!(eval.contains("test accuracy"), "{eval}");
        let inspect = run_ok(dir.path(), &["inspect", &f32_file]);
        assert!(inspect.contains(&format!("onnx:{name}.onnx")), "{inspect}");
    }
}

#[test]
fn an_imported_mlp_fine_tunes_with_qat_and_sweeps() {
    let dir = TempDir::new().unwrap();
    import(dir.path(), "mlp");
    let table = run_ok(
        dir.path(),
        &[
            "train",
            "--init",
            "mlp.f32",
            "--weight-bits",
            "4",
            "--epochs",
            "1",
            "--out",
            "q.lbq",
        ],
    );
    assert!(table.contains("model written to q.lbq"), "{table}");
    let sweep = run_ok(dir.path(), &["sweep", "mlp.f32", "--bits", "4,8"]);
    assert!(
        sweep.contains("PTQ W4A8") && sweep.contains("PTQ W8A8"),
        "{sweep}"
    );
}

#[test]
fn an_unsupported_op_fails_naming_file_op_node_and_opset_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    // Same-length byte surgery: every "Relu" (the op type and the node names) becomes "Erfx".
    let bytes = std::fs::read(fixture("mlp")).unwrap();
    let mut edited = bytes.clone();
    for i in 0..edited.len().saturating_sub(3) {
        if &edited[i..i + 4] == b"Relu" {
            edited[i..i + 4].copy_from_slice(b"Erfx");
        }
    }
    std::fs::write(dir.path().join("bad.onnx"), edited).unwrap();
    run_err(
        dir.path(),
        &["import", "bad.onnx", "--out", "bad.f32"],
        &["bad.onnx", "op Erfx", "/net/net.2/Erfx", "opset 11"],
    );
    assert!(!dir.path().join("bad.f32").exists());
}

#[test]
fn a_truncated_file_fails_with_one_line_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let bytes = std::fs::read(fixture("lenet")).unwrap();
    std::fs::write(dir.path().join("cut.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    run_err(
        dir.path(),
        &["import", "cut.onnx", "--out", "cut.f32"],
        &["cut.onnx", "not a valid ONNX model"],
    );
    assert!(!dir.path().join("cut.f32").exists());
    run_err(
        dir.path(),
        &["import", "missing.onnx", "--out", "m.f32"],
        &["missing.onnx"],
    );
    assert!(!dir.path().join("m.f32").exists());
}

#[test]
fn every_command_that_takes_a_float_model_takes_the_onnx_file_itself() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let mlp = fixture("mlp");
    let m = mlp.to_str().unwrap();
    let inspect = run_ok(d, &["inspect", m]);
    assert!(
        inspect.contains("ONNX, imported in memory") && inspect.contains("onnx:mlp.onnx"),
        "{inspect}"
    );
    let eval = run_ok(d, &["eval", m]);
    assert!(eval.contains("[float]"), "{eval}");
    // The in-memory import is the same model as the imported file: same accuracy to the image.
    run_ok(d, &["import", m, "--out", "mlp.f32"]);
    let line = |s: &str| {
        s.lines()
            .next()
            .unwrap()
            .split(": ")
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(line(&eval), line(&run_ok(d, &["eval", "mlp.f32"])));
    // A 28x28 gray picture (PGM) for predict.
    let mut pgm = b"P5\n28 28\n255\n".to_vec();
    pgm.extend((0..784).map(|i| (i % 251) as u8));
    std::fs::write(d.join("x.pgm"), pgm).unwrap();
    let p = run_ok(d, &["predict", m, "x.pgm"]);
    assert!(p.contains("x.pgm: ") && p.contains("(class "), "{p}");
    let qat = run_ok(
        d,
        &[
            "train",
            "--init",
            m,
            "--weight-bits",
            "4",
            "--epochs",
            "1",
            "--out",
            "qat.lbq",
        ],
    );
    assert!(qat.contains("QAT W4A8 from f32"), "{qat}");
    let ptq = run_ok(
        d,
        &[
            "train",
            "--method",
            "ptq",
            "--init",
            m,
            "--weight-bits",
            "8",
            "--out",
            "ptq.lbq",
        ],
    );
    assert!(ptq.contains("(engine)"), "{ptq}");
    let sweep = run_ok(d, &["sweep", m, "--bits", "8"]);
    assert!(sweep.contains("PTQ W8A8"), "{sweep}");
    let sens = run_ok(
        d,
        &[
            "sensitivity",
            m,
            "--bits",
            "4",
            "--no-activations",
            "--samples",
            "200",
            "--hessian-iters",
            "0",
        ],
    );
    assert!(sens.contains("net.1") || sens.contains("Gemm"), "{sens}");
    let mixed = run_ok(
        d,
        &[
            "mixed",
            m,
            "--bits",
            "4",
            "--budget-bits",
            "6",
            "--samples",
            "200",
            "--out",
            "mixed.lbq",
        ],
    );
    assert!(d.join("mixed.lbq").exists(), "{mixed}");
    // bench times a quantized model against its float twin: the .lbq that quantize made from the ONNX file.
    run_ok(d, &["quantize", m, "--out", "q.lbq"]);
    let bench = run_ok(d, &["bench", "q.lbq", "--batch", "1", "--seconds", "0.05"]);
    assert!(bench.contains("speed-up"), "{bench}");
    // --engine-only times the engine alone: no f32 column, and the process holds no float model.
    let alone = run_ok(
        d,
        &[
            "bench",
            "q.lbq",
            "--batch",
            "1,3",
            "--seconds",
            "0.05",
            "--engine-only",
        ],
    );
    assert!(
        alone.contains("int samples/s")
            && alone.contains("the engine alone")
            && !alone.contains("f32")
            && alone.lines().filter(|l| l.starts_with("3 ")).count() == 1,
        "{alone}"
    );
    run_err(
        d,
        &["bench", m],
        &["mlp.onnx", "bench needs a quantized .lbq model"],
    );
}
