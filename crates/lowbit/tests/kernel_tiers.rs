//! The one kernel-selection policy, as pure functions of (`LOWBIT_ISA` value, CPU features): every kernel family
//! (engine, training GEMM, fake-quant, optimizer) obeys the cap, and an unverified tier is chosen only in a build
//! that opted in. `lowbit-cli/tests/cli_isa.rs` checks the same in child processes with the variable set.
use lowbit::kernel_tiers::{Family, KernelTiers};
use lowbit_runtime::isa::{self, CpuFeatures, Isa, IsaError};

const VALUES: [Option<&str>; 13] = [
    None,
    Some(""),
    Some("reference"),
    Some(" Reference "),
    Some("ref"),
    Some("avx2"),
    Some("AVX2"),
    Some("avx512vnni"),
    Some("vnni"),
    Some("neon"),
    Some("sse9"),
    Some("neon-dotprod"),
    Some("avx2,fma"),
];

/// A CPU like this project's AMD Zen3: AVX2, FMA and POPCNT, no AVX-512.
const ZEN3: CpuFeatures = CpuFeatures::AVX2_TIER;

fn cpus() -> Vec<(&'static str, CpuFeatures)> {
    vec![
        ("no SIMD", CpuFeatures::default()),
        ("AVX2 without FMA", CpuFeatures { fma: false, ..ZEN3 }),
        ("AVX2 (Zen3)", ZEN3),
        (
            "AVX-512 VNNI without AVX2",
            CpuFeatures {
                avx512f: true,
                avx512bw: true,
                avx512vnni: true,
                ..CpuFeatures::default()
            },
        ),
        ("every feature", CpuFeatures::ALL),
        ("this machine", CpuFeatures::detect()),
    ]
}

#[test]
fn every_family_runs_its_best_tier_within_every_lowbit_isa_value_on_every_cpu() {
    for value in VALUES {
        for (cpu_name, cpu) in cpus() {
            let Ok(selected) = isa::select(value, &cpu) else {
                continue;
            };
            assert!(
                selected.runs_on(&cpu),
                "{value:?} on {cpu_name}: {selected:?}"
            );
            for family in Family::ALL {
                let got = family.tier_within(selected, &cpu);
                let ctx = format!("{} under LOWBIT_ISA={value:?} on {cpu_name}", family.name());
                assert!(family.implemented().contains(&got), "{ctx}: {got:?}");
                assert!(got.runs_on(&cpu), "{ctx}: {got:?} cannot run");
                assert!(
                    got.rank() <= selected.rank(),
                    "{ctx}: {got:?} above {selected:?}"
                );
                let better = family.implemented().iter().find(|t| {
                    t.runs_on(&cpu) && t.rank() <= selected.rank() && t.rank() > got.rank()
                });
                assert!(better.is_none(), "{ctx}: {got:?} chosen over {better:?}");
            }
        }
    }
}

#[test]
fn lowbit_isa_reference_puts_every_family_on_the_portable_code() {
    for value in ["reference", "REF", "scalar"] {
        for (cpu_name, cpu) in cpus() {
            let selected = isa::select(Some(value), &cpu).unwrap();
            for family in Family::ALL {
                assert_eq!(
                    family.tier_within(selected, &cpu),
                    Isa::Reference,
                    "{} under {value} on {cpu_name}",
                    family.name()
                );
            }
        }
    }
}

#[test]
fn an_avx2_cpu_runs_every_family_on_avx2_by_default() {
    if !cfg!(target_arch = "x86_64") {
        eprintln!("skipping: not an x86_64 build");
        return;
    }
    let selected = isa::select(None, &ZEN3).unwrap();
    for family in Family::ALL {
        assert_eq!(
            family.tier_within(selected, &ZEN3),
            Isa::Avx2,
            "{}",
            family.name()
        );
    }
}

#[test]
fn no_family_picks_an_unverified_tier_unless_the_build_opted_in() {
    let vnni_built = cfg!(target_arch = "x86_64");
    let neon_built = cfg!(all(target_arch = "aarch64", feature = "unverified-neon"));
    for value in VALUES {
        for (cpu_name, cpu) in cpus() {
            let Ok(selected) = isa::select(value, &cpu) else {
                continue;
            };
            for family in Family::ALL {
                let got = family.tier_within(selected, &cpu);
                let allowed = got.is_verified()
                    || (got == Isa::Avx512Vnni && vnni_built)
                    || (got == Isa::Neon && neon_built);
                assert!(
                    allowed,
                    "{} under LOWBIT_ISA={value:?} on {cpu_name}: unverified {got:?} without its feature",
                    family.name()
                );
            }
        }
    }
    // Asking for an unverified tier by name is an error in a build without it, never a silent pick.
    if !vnni_built {
        assert!(matches!(
            isa::select(Some("avx512vnni"), &CpuFeatures::ALL),
            Err(IsaError::NotInBuild {
                tier: "avx512vnni",
                ..
            })
        ));
    }
    if !neon_built {
        assert!(matches!(
            isa::select(Some("neon"), &CpuFeatures::ALL),
            Err(IsaError::NotInBuild { tier: "neon", .. })
        ));
    }
}

#[test]
fn names_that_are_no_tier_are_rejected_with_the_value_in_the_message() {
    for value in ["sse9", "neon-dotprod", "avx2,fma"] {
        let err = isa::select(Some(value), &CpuFeatures::ALL).unwrap_err();
        assert_eq!(
            err,
            IsaError::Unknown {
                value: value.to_string()
            }
        );
        let msg = err.to_string();
        assert!(msg.contains(value) && !msg.contains('\n'), "{msg}");
    }
}

#[test]
fn this_process_records_the_tiers_its_kernels_run() {
    let selected = lowbit_runtime::kernels::selected_isa();
    let cpu = CpuFeatures::detect();
    assert_eq!(Family::Engine.tier(), selected);
    for family in Family::ALL {
        assert_eq!(
            family.tier(),
            family.tier_within(selected, &cpu),
            "{}",
            family.name()
        );
    }
    assert_eq!(lowbit::nn::kernels::isa(), Family::TrainGemm.tier());
    let tiers = KernelTiers::current();
    assert_eq!(tiers.engine, lowbit_runtime::kernels::active_isa());
    let json = serde_json::to_value(&tiers).unwrap();
    for family in Family::ALL {
        assert_eq!(
            json[family.name()],
            family.tier().name(),
            "{}",
            family.name()
        );
    }
}
