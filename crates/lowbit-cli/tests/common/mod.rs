//! Running the `lowbit` binary from integration tests and checking how it failed.
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::process::{Command, Output};

/// Runs `lowbit --quiet ARGS` in `dir`.
pub fn lowbit(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .current_dir(dir)
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run lowbit {args:?}: {e}"))
}

/// The run's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the run failed cleanly: non-zero exit, one `error:` line holding every fragment, no panic.
pub fn assert_clean_error(out: &Output, args: &[&str], fragments: &[&str]) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "lowbit {args:?} succeeded; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "lowbit {args:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "lowbit {args:?}: expected one stderr line, got {lines:#?}"
    );
    assert!(
        lines[0].starts_with("error: "),
        "lowbit {args:?}: {:?}",
        lines[0]
    );
    for f in fragments {
        assert!(
            lines[0].contains(f),
            "lowbit {args:?}: {:?} does not mention {f:?}",
            lines[0]
        );
    }
}

/// Runs lowbit and asserts it failed cleanly naming every fragment.
pub fn run_err(dir: &Path, args: &[&str], fragments: &[&str]) {
    let out = lowbit(dir, args);
    assert_clean_error(&out, args, fragments);
}

/// Runs lowbit, asserts success and returns stdout.
pub fn run_ok(dir: &Path, args: &[&str]) -> String {
    let out = lowbit(dir, args);
    assert!(
        out.status.success(),
        "lowbit {args:?} failed: {}",
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
