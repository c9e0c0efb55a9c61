//! `LOWBIT_ISA` in real runs: `lowbit` as a child process with the variable set. Every report records the tier of
//! every kernel family and each obeys the cap; `lowbit bench` prints the tiers and the engine's prepared kernels
//! are of its tier; a value naming no tier of this build stops every command with one error line.
//!
//! Runs are tiny (one QAT epoch on the builtin sample, about a second each).
use lowbit::kernel_tiers::Family;
use lowbit_runtime::isa::{self, CpuFeatures, Isa};
use std::path::Path;
use std::process::{Command, Output};

fn lowbit(dir: &Path, isa_value: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lowbit"));
    cmd.current_dir(dir).arg("--quiet").args(args);
    match isa_value {
        Some(v) => cmd.env("LOWBIT_ISA", v),
        None => cmd.env_remove("LOWBIT_ISA"),
    };
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run lowbit {args:?}: {e}"))
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Trains a W4A8 QAT model for one epoch (engine, training GEMM, fake-quant and optimizer all run) and returns
/// the report's `kernel_tiers` and `engine_isa`.
fn train(dir: &Path, isa_value: Option<&str>) -> (serde_json::Value, serde_json::Value) {
    let args = [
        "train",
        "--epochs",
        "1",
        "--weight-bits",
        "4",
        "--no-baseline",
        "--out",
        "m.lbq",
        "--report",
        "r.json",
    ];
    ok(
        lowbit(dir, isa_value, &args),
        &format!("train under {isa_value:?}"),
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("r.json")).unwrap()).unwrap();
    (report["kernel_tiers"].clone(), report["engine_isa"].clone())
}

#[test]
fn every_kernel_family_obeys_lowbit_isa_in_train_and_bench() {
    let dir = tempfile::tempdir().unwrap();
    let cpu = CpuFeatures::detect();
    let mut checked = 0;
    for value in [None, Some("reference"), Some("avx2"), Some("avx512vnni")] {
        let Ok(selected) = isa::select(value, &cpu) else {
            continue; // not in this build: the error test below covers it
        };
        let (tiers, engine_isa) = train(dir.path(), value);
        for family in Family::ALL {
            let want = family.tier_within(selected, &cpu);
            assert_eq!(
                tiers[family.name()],
                want.name(),
                "{} under LOWBIT_ISA={value:?}: {tiers}",
                family.name()
            );
            assert!(want.rank() <= selected.rank());
        }
        assert_eq!(
            engine_isa,
            Family::Engine.tier_within(selected, &cpu).name()
        );
        if value == Some("reference") {
            assert!(
                Family::ALL.iter().all(|f| tiers[f.name()] == "reference"),
                "{tiers}"
            );
        }

        // The engine's prepared kernels are of the tier bench reports (the model was just trained under it).
        let out = ok(
            lowbit(
                dir.path(),
                value,
                &["bench", "m.lbq", "--batch", "1", "--seconds", "0.05"],
            ),
            "bench",
        );
        let engine = Family::Engine.tier_within(selected, &cpu).name();
        let tiers_line = out
            .lines()
            .find(|l| l.starts_with("kernel tiers:"))
            .unwrap_or_else(|| panic!("bench printed no tiers:\n{out}"));
        assert!(
            tiers_line.contains(&format!("engine {engine},")),
            "{tiers_line}"
        );
        let paths: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("  dense") || l.starts_with("  conv"))
            .collect();
        assert!(!paths.is_empty(), "bench printed no kernel paths:\n{out}");
        for p in paths {
            assert!(
                p.split(": ").nth(1).is_some_and(|k| k.starts_with(engine)),
                "LOWBIT_ISA={value:?}: {p} is not on {engine}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 2, "the unset and reference runs always apply");
    if cfg!(target_arch = "x86_64") && Isa::Avx2.is_available() {
        // The best tier of this build the CPU runs: AVX-512 VNNI only in a build with its feature.
        let best = match Isa::Avx512Vnni.is_available() {
            true => Isa::Avx512Vnni,
            false => Isa::Avx2,
        };
        assert_eq!(
            isa::select(None, &cpu),
            Ok(best),
            "SIMD by default on this CPU"
        );
    }
}

#[test]
fn a_lowbit_isa_value_naming_no_tier_of_this_build_stops_every_command_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = vec!["sse9", "neon-dotprod"];
    bad.extend(
        Isa::ALL
            .into_iter()
            .filter(|t| !t.in_build())
            .map(Isa::name),
    );
    for value in bad {
        for args in [
            &["train", "--epochs", "1"][..],
            &["bench", "missing.lbq"][..],
        ] {
            let out = lowbit(dir.path(), Some(value), args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{value} {args:?}: {err}");
            let lines: Vec<&str> = err.lines().collect();
            assert_eq!(lines.len(), 1, "{value} {args:?}: {err}");
            assert!(
                lines[0].starts_with("error: LOWBIT_ISA") && lines[0].contains(value),
                "{value} {args:?}: {}",
                lines[0]
            );
        }
    }
}
