//! `lowbit train --checkpoint-dir / --resume`: a run SIGKILLed at seeded random steps, during a checkpoint save,
//! or at random moments, resumes to the model file (and report) an uninterrupted run writes, byte for byte; a
//! checkpoint that cannot be resumed gives one error line naming the file and the problem, and overwrites
//! nothing.
//!
//! The kills at chosen steps use the `LOWBIT_TEST_PAUSE` hook (`lowbit::checkpoint`): the process stops after
//! that optimizer step (or inside the N-th save, between writing the new file and renaming it) and prints one
//! line, and the test SIGKILLs it there. Runs are two epochs of small models on the builtin sample.
use lowbit::rng::Rng;
use lowbit_runtime::testutil::{st_header, st_with_header};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;
use tempfile::TempDir;

fn lowbit(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lowbit"));
    c.current_dir(dir).arg("--quiet").args(args);
    c
}

fn output(dir: &Path, args: &[&str]) -> Output {
    lowbit(dir, args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run lowbit {args:?}: {e}"))
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn run_ok(dir: &Path, args: &[&str]) {
    let out = output(dir, args);
    assert!(
        out.status.success(),
        "lowbit {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs until the `LOWBIT_TEST_PAUSE=pause` hook stops it, then SIGKILLs it.
fn run_killed_at(dir: &Path, args: &[&str], pause: &str) {
    let mut child = lowbit(dir, args)
        .env("LOWBIT_TEST_PAUSE", pause)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lowbit");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) if line.contains("paused by LOWBIT_TEST_PAUSE") => break,
            Ok(line) => seen.push(line),
            Err(e) => {
                let _ = child.kill();
                panic!("lowbit {args:?} did not reach pause {pause} ({e}); stderr: {seen:?}");
            }
        }
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(9), "{args:?} at {pause}: {status}");
}

/// The report without its wall times.
fn report_without_seconds(path: &Path) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                o.remove("seconds");
                o.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::from_slice(&std::fs::read(path).expect("report")).expect("JSON");
    strip(&mut v);
    v
}

/// The uninterrupted run (`args` plus `--out ref.OUT --report ref.json`, no checkpoints) and the interrupted
/// one (`--out run.OUT --report run.json --checkpoint-dir ck --checkpoint-every every`, killed at each of
/// `pauses` in turn, each time resumed), then the final resume; asserts both wrote the same model file, byte for
/// byte, and the same report but for wall times.
fn assert_resumes_to_the_uninterrupted_model(
    args: &[&str],
    every: &str,
    ext: &str,
    pauses: &[String],
) {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let (ref_out, run_out) = (format!("ref.{ext}"), format!("run.{ext}"));
    let with = |extra: &[&str]| -> Vec<String> {
        args.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let reference = with(&["--out", &ref_out, "--report", "ref.json"]);
    run_ok(d, &as_strs(&reference));
    let run = [
        "--out",
        &run_out,
        "--report",
        "run.json",
        "--checkpoint-every",
        every,
    ];
    let first = with(&[&run[..], &["--checkpoint-dir", "ck"]].concat());
    let again = with(&[&run[..], &["--resume", "ck"]].concat());
    for (i, pause) in pauses.iter().enumerate() {
        let a = if i == 0 { &first } else { &again };
        run_killed_at(d, &as_strs(a), pause);
        assert!(!d.join(&run_out).exists(), "a killed run wrote its model");
    }
    run_ok(d, &as_strs(&again));
    let (a, b) = (
        std::fs::read(d.join(&ref_out)).unwrap(),
        std::fs::read(d.join(&run_out)).unwrap(),
    );
    assert!(
        a == b,
        "{args:?} killed at {pauses:?}: the resumed model differs from the uninterrupted one ({} vs {} bytes)",
        b.len(),
        a.len()
    );
    assert_eq!(
        report_without_seconds(&d.join("run.json")),
        report_without_seconds(&d.join("ref.json")),
        "{args:?} killed at {pauses:?}: reports differ"
    );
}

/// `n` distinct sorted steps in `1..=max`, drawn from `seed`.
fn random_steps(seed: u64, n: usize, max: usize) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut steps = Vec::new();
    while steps.len() < n {
        let s = 1 + rng.below(max);
        if !steps.contains(&s) {
            steps.push(s);
        }
    }
    steps.sort_unstable();
    steps
}

/// A 784-32-10 MLP with dropout (its mask stream is state too), 10% held out for validation: 4500 training
/// samples, 141 steps per epoch.
const F32_ARGS: &[&str] = &[
    "train",
    "--model",
    "cnn:f32-d0.25-10",
    "--epochs",
    "2",
    "--validation-split",
    "0.1",
];

#[test]
fn f32_run_killed_at_random_steps_resumes_to_the_same_model_file() {
    let seed = 14;
    // Three random steps of the 282, and the first epoch's last step (its checkpoint is the epoch end's).
    let mut steps = random_steps(seed, 3, 282);
    steps.push(141);
    steps.sort_unstable();
    steps.dedup();
    eprintln!("seed {seed}: killing at steps {steps:?}");
    let pauses: Vec<String> = steps.iter().map(|s| format!("step:{s}")).collect();
    assert_resumes_to_the_uninterrupted_model(F32_ARGS, "25", "f32", &pauses);
}

#[test]
fn lsq_qat_run_killed_in_both_phases_resumes_to_the_same_lbq_file() {
    // W4A4 LSQ with a half-epoch quantization delay: the f32 baseline phase, then QAT (157 steps per epoch),
    // killed once in the baseline, once before and once after the delay ends (step 79), and once at random.
    let args = &[
        "train",
        "--epochs",
        "2",
        "--weight-bits",
        "4",
        "--act-bits",
        "4",
        "--quantizer",
        "lsq",
        "--quant-delay-epochs",
        "0.5",
    ];
    let seed = 41;
    let f32_step = random_steps(seed, 1, 314)[0];
    let qat = random_steps(seed + 1, 1, 314)[0];
    let mut qat_steps = vec![61, 95, qat];
    qat_steps.sort_unstable();
    qat_steps.dedup();
    eprintln!("seed {seed}: killing at f32 step {f32_step}, QAT steps {qat_steps:?}");
    let mut pauses = vec![format!("step:f32:{f32_step}")];
    pauses.extend(qat_steps.iter().map(|s| format!("step:qat:{s}")));
    assert_resumes_to_the_uninterrupted_model(args, "30", "lbq", &pauses);
}

#[test]
fn distilled_qat_killed_after_its_teacher_was_trained_resumes_to_the_same_lbq_file() {
    // The teacher is the f32 baseline trained in the same run: the resumed QAT phase must distil from the
    // same model, which it gets back from the finished f32 phase.
    let args = &[
        "train",
        "--epochs",
        "2",
        "--weight-bits",
        "4",
        "--act-bits",
        "4",
        "--quantizer",
        "lsq",
        "--distill",
        "0.7",
        "--distill-temperature",
        "2",
    ];
    let pauses = ["step:qat:100".to_string(), "step:qat:200".to_string()];
    assert_resumes_to_the_uninterrupted_model(args, "30", "lbq", &pauses);
}

#[test]
fn conv_batchnorm_qat_killed_while_the_statistics_freeze_resumes_exactly() {
    // ConvBn2d trained on batch statistics until step 80 (its step counter and frozen flag are state), W4A8,
    // one epoch of 157 steps.
    let args = &[
        "train",
        "--model",
        "cnn:c4.bn-p-f16-10",
        "--epochs",
        "1",
        "--weight-bits",
        "4",
        "--bn-freeze-steps",
        "80",
        "--no-baseline",
    ];
    let pauses = ["step:qat:50".to_string(), "step:qat:120".to_string()];
    assert_resumes_to_the_uninterrupted_model(args, "30", "lbq", &pauses);
}

#[test]
fn kill_during_a_save_leaves_the_previous_checkpoint_loadable() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let args: Vec<&str> = F32_ARGS
        .iter()
        .copied()
        .chain(["--out", "run.f32", "--checkpoint-every", "25"])
        .collect();
    let reference: Vec<&str> = F32_ARGS
        .iter()
        .copied()
        .chain(["--out", "ref.f32"])
        .collect();
    run_ok(d, &reference);
    let first: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--checkpoint-dir", "ck"])
        .collect();
    // Saves 1 and 2 are at steps 25 and 50; the third is stopped with the new file written, not yet renamed.
    run_killed_at(d, &first, "save:3");
    let ck = d.join("ck");
    assert!(ck.join(".f32.ckpt.tmp").exists(), "no half-done save left");
    let meta = lowbit_runtime::format::read_file_metadata(&ck.join("f32.ckpt")).unwrap();
    let loop_state: serde_json::Value = serde_json::from_str(&meta["loop"]).unwrap();
    assert_eq!(loop_state["global_step"], 50, "not the previous checkpoint");
    let again: Vec<&str> = args.iter().copied().chain(["--resume", "ck"]).collect();
    // Killed inside the first save of the resumed run too, which overwrites the stale temp file.
    run_killed_at(d, &again, "save:1");
    run_ok(d, &again);
    assert!(!ck.join(".f32.ckpt.tmp").exists(), "stale temp file left");
    assert_eq!(
        std::fs::read(d.join("run.f32")).unwrap(),
        std::fs::read(d.join("ref.f32")).unwrap()
    );
}

#[test]
fn killed_at_random_moments_always_resumes_to_the_same_model_file() {
    // Plain SIGKILLs after seeded random delays, wherever they land: in a step, in a save, in the fsync, at
    // start-up before any checkpoint (then the run starts over).
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let base = ["train", "--epochs", "2", "--no-baseline"];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    run_ok(d, &with(&["--out", "ref.f32"]));
    let mut rng = Rng::new(7);
    for _ in 0..4 {
        let resume = d.join("ck").join("f32.ckpt").exists();
        let args = with(if resume {
            &[
                "--out",
                "run.f32",
                "--checkpoint-every",
                "5",
                "--resume",
                "ck",
            ]
        } else {
            &[
                "--out",
                "run.f32",
                "--checkpoint-every",
                "5",
                "--checkpoint-dir",
                "ck",
            ]
        });
        let mut child = lowbit(d, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50 + rng.below(400) as u64));
        let _ = child.kill();
        let _ = child.wait();
        if d.join("run.f32").exists() {
            break;
        }
    }
    let resume = d.join("ck").join("f32.ckpt").exists();
    run_ok(
        d,
        &with(if resume {
            &["--out", "run.f32", "--resume", "ck"]
        } else {
            &["--out", "run.f32", "--checkpoint-dir", "ck"]
        }),
    );
    assert_eq!(
        std::fs::read(d.join("run.f32")).unwrap(),
        std::fs::read(d.join("ref.f32")).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoints that cannot be resumed.

/// A directory holding the checkpoint of a finished one-epoch f32 run of `ERR_ARGS` (made once).
fn finished_checkpoint() -> &'static Path {
    static DIR: OnceLock<TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = TempDir::new().unwrap();
        let mut args = ERR_ARGS.to_vec();
        args.extend(["--checkpoint-dir", "ck"]);
        run_ok(dir.path(), &args);
        dir
    })
    .path()
}

const ERR_ARGS: &[&str] = &["train", "--epochs", "1", "--no-baseline"];

/// A fresh directory with `ck/f32.ckpt` holding `bytes`.
fn dir_with_checkpoint(bytes: &[u8]) -> TempDir {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir(dir.path().join("ck")).unwrap();
    std::fs::write(dir.path().join("ck/f32.ckpt"), bytes).unwrap();
    dir
}

fn good_checkpoint() -> Vec<u8> {
    std::fs::read(finished_checkpoint().join("ck/f32.ckpt")).unwrap()
}

/// Resumes `ERR_ARGS` (plus `extra`) from `ck` in `dir` with `--out out.f32`; asserts one error line holding
/// every fragment and the checkpoint's path, no model written and the checkpoint untouched.
fn assert_resume_refused(dir: &Path, extra: &[&str], fragments: &[&str]) {
    let before = std::fs::read(dir.join("ck/f32.ckpt")).ok();
    let mut args = ERR_ARGS.to_vec();
    args.extend(extra);
    args.extend(["--out", "out.f32", "--resume", "ck"]);
    let out = output(dir, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {lines:#?}");
    assert!(lines[0].starts_with("error: "), "{:?}", lines[0]);
    for f in fragments {
        assert!(
            lines[0].contains(f),
            "{:?} does not mention {f:?}",
            lines[0]
        );
    }
    assert!(!dir.join("out.f32").exists(), "{args:?} wrote a model");
    assert_eq!(
        std::fs::read(dir.join("ck/f32.ckpt")).ok(),
        before,
        "checkpoint changed"
    );
}

/// `bytes` with its `__metadata__` entry `key` set to `value` (the data section unchanged).
fn with_metadata(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let (mut header, start) = st_header(bytes).expect("header");
    header["__metadata__"][key] = value.into();
    st_with_header(&header, &bytes[start..])
}

#[test]
fn a_finished_checkpoint_resumes_without_training() {
    let dir = dir_with_checkpoint(&good_checkpoint());
    let mut args = ERR_ARGS.to_vec();
    args.extend(["--out", "out.f32", "--resume", "ck"]);
    run_ok(dir.path(), &args);
    let mut reference = ERR_ARGS.to_vec();
    reference.extend(["--out", "ref.f32"]);
    run_ok(dir.path(), &reference);
    assert_eq!(
        std::fs::read(dir.path().join("out.f32")).unwrap(),
        std::fs::read(dir.path().join("ref.f32")).unwrap()
    );
}

#[test]
fn resume_with_another_model_is_refused() {
    let dir = dir_with_checkpoint(&good_checkpoint());
    // The model is the first setting that differs (its spec), named with both values.
    assert_resume_refused(
        dir.path(),
        &["--model", "mlp:784-32-10"],
        &["f32.ckpt", "model", "mlp:784-64-10", "mlp:784-32-10"],
    );
}

#[test]
fn resume_with_other_settings_names_the_setting() {
    let dir = dir_with_checkpoint(&good_checkpoint());
    assert_resume_refused(dir.path(), &["--lr", "0.01"], &["f32.ckpt", "train.lr"]);
}

#[test]
fn checkpoint_of_another_lowbit_version_is_refused() {
    let dir = dir_with_checkpoint(&with_metadata(
        &good_checkpoint(),
        "lowbit_version",
        "0.0.1",
    ));
    assert_resume_refused(dir.path(), &[], &["f32.ckpt", "lowbit 0.0.1"]);
}

#[test]
fn checkpoint_of_an_unknown_format_version_is_refused() {
    let dir = dir_with_checkpoint(&with_metadata(&good_checkpoint(), "format_version", "2"));
    assert_resume_refused(dir.path(), &[], &["f32.ckpt", "format version 2"]);
}

#[test]
fn corrupt_checkpoint_is_refused() {
    let mut bytes = good_checkpoint();
    let n = bytes.len();
    bytes[n - 100] ^= 0x40; // a weight's bits in the data section
    let dir = dir_with_checkpoint(&bytes);
    assert_resume_refused(dir.path(), &[], &["f32.ckpt", "corrupt", "checksum"]);
}

#[test]
fn truncated_checkpoint_is_refused() {
    let bytes = good_checkpoint();
    for keep in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        let dir = dir_with_checkpoint(&bytes[..keep]);
        assert_resume_refused(dir.path(), &[], &["f32.ckpt", "truncated"]);
    }
}

#[test]
fn a_file_that_is_not_a_checkpoint_is_refused() {
    let dir = TempDir::new().unwrap();
    let mut args = ERR_ARGS.to_vec();
    args.extend(["--out", "model.f32"]);
    run_ok(dir.path(), &args);
    std::fs::create_dir(dir.path().join("ck")).unwrap();
    std::fs::copy(dir.path().join("model.f32"), dir.path().join("ck/f32.ckpt")).unwrap();
    assert_resume_refused(
        dir.path(),
        &[],
        &["f32.ckpt", "not a lowbit checkpoint", "lowbit.f32"],
    );
}

#[test]
fn resume_from_a_directory_without_checkpoints_is_refused() {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir(dir.path().join("ck")).unwrap();
    assert_resume_refused(
        dir.path(),
        &[],
        &["ck", "no checkpoint to resume", "f32.ckpt"],
    );
}

#[test]
fn a_new_run_does_not_overwrite_checkpoints_it_did_not_write() {
    let dir = dir_with_checkpoint(&good_checkpoint());
    let mut args = ERR_ARGS.to_vec();
    args.extend(["--out", "out.f32", "--checkpoint-dir", "ck"]);
    let out = output(dir.path(), &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("already holds a checkpoint (f32.ckpt)") && err.contains("--resume"),
        "{err}"
    );
    assert!(!dir.path().join("out.f32").exists());
    assert_eq!(
        std::fs::read(dir.path().join("ck/f32.ckpt")).unwrap(),
        good_checkpoint()
    );
}

#[test]
fn checkpoint_flags_that_do_not_fit_together_are_refused() {
    let dir = TempDir::new().unwrap();
    for (extra, fragment) in [
        (
            &["--checkpoint-every", "10"][..],
            "--checkpoint-every: needs --checkpoint-dir",
        ),
        (
            &["--checkpoint-dir", "a", "--checkpoint-every", "0"][..],
            "--checkpoint-every: must be at least 1",
        ),
        (
            &["--checkpoint-dir", "a", "--resume", "b"][..],
            "--checkpoint-dir",
        ),
    ] {
        let mut args = ERR_ARGS.to_vec();
        args.extend(extra);
        let out = output(dir.path(), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(fragment), "{args:?}: {err}");
    }
}
