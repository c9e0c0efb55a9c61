//! Kernel tiers and the one run-time selection that every kernel family of lowbit obeys: the engine's integer
//! kernels here, and the trainer's f32 GEMMs, fake-quant and optimizer in the `lowbit` crate.
//!
//! Tiers, by rank: `reference` (0, portable scalar, normative) -> `avx2` (1, x86_64 with AVX2, FMA and POPCNT,
//! which every AVX2 CPU from Haswell and Zen on has) -> `avx512vnni` (2, x86_64 with AVX-512 F/BW/VNNI);
//! `reference` -> `neon` (1, aarch64).
//!
//! **Verified tiers only by default.** A tier is verified once its conformance tests have run on a machine of this
//! project ([`Isa::is_verified`]; docs/KERNELS.md says where and how). The others are compiled only behind an
//! explicit cargo feature of `lowbit-runtime` (forwarded by `lowbit` and `lowbit-cli`): `unverified-neon`
//! (`avx512vnni` was verified on an Intel Xeon with AVX-512 VNNI and is in every x86_64 build). Without it the tier is not in the build ([`Isa::in_build`]) and can never be chosen.
//!
//! **Selection, once per process** ([`selected_isa`]): the best tier this build contains and this CPU runs,
//! capped by the `LOWBIT_ISA` environment variable:
//! - unset or empty: the best runnable tier;
//! - a tier name (`reference`, `avx2`, `avx512vnni`, `neon`; case-insensitive): a ceiling. The best runnable
//!   tier whose rank is at most the named one's runs, so one setting serves a mixed fleet (`avx512vnni` on a
//!   CPU without AVX-512 runs `avx2`);
//! - an unknown name, or a tier this build does not contain (the other architecture's, or an unverified tier
//!   without its feature): an [`IsaError`]. The `lowbit` CLI stops with it ([`check_env`]); a library host that
//!   does not call [`check_env`] gets the reference tier, the most restrictive choice, rather than a silently
//!   ignored cap.
//!
//! Each kernel family implements a subset of the tiers and runs the best one within the selected tier
//! ([`best_within`], e.g. the optimizer has `reference` and `avx2` only). [`select`] and [`best_within`] are pure
//! functions of the variable's value and the CPU's features, so the whole policy is testable on any machine.
use std::sync::OnceLock;
use thiserror::Error;

/// A kernel tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable scalar reference (normative).
    Reference,
    /// x86_64 AVX2 (with FMA and POPCNT): widen to i16 and `vpmaddwd`, `vpmaddubsw` on safe pairs; f32 FMA.
    Avx2,
    /// x86_64 AVX-512 VNNI: `vpdpbusd` for int8 convolutions (channel-quad planes) and unprepared int8 GEMMs;
    /// everything else runs the AVX2 kernels.
    Avx512Vnni,
    /// aarch64 NEON: widening multiply-accumulate. Unverified on hardware: compiled only with the
    /// `unverified-neon` feature.
    Neon,
}

/// The CPU features the tiers need, as detected (or as a test describes a CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    /// x86 AVX2.
    pub avx2: bool,
    /// x86 FMA3.
    pub fma: bool,
    /// x86 POPCNT.
    pub popcnt: bool,
    /// x86 AVX-512 Foundation.
    pub avx512f: bool,
    /// x86 AVX-512 Byte and Word.
    pub avx512bw: bool,
    /// x86 AVX-512 VNNI.
    pub avx512vnni: bool,
    /// aarch64 Advanced SIMD.
    pub neon: bool,
}

impl CpuFeatures {
    /// A CPU with every feature above (for tests: what would run if the hardware had it all).
    pub const ALL: CpuFeatures = CpuFeatures {
        avx2: true,
        fma: true,
        popcnt: true,
        avx512f: true,
        avx512bw: true,
        avx512vnni: true,
        neon: true,
    };

    /// Exactly what the `avx2` tier needs (AVX2, FMA, POPCNT: a Haswell- or Zen-class CPU such as this project's
    /// Zen3, no AVX-512).
    pub const AVX2_TIER: CpuFeatures = CpuFeatures {
        avx2: true,
        fma: true,
        popcnt: true,
        avx512f: false,
        avx512bw: false,
        avx512vnni: false,
        neon: false,
    };

    /// The running CPU's features, detected once.
    pub fn detect() -> CpuFeatures {
        static DETECTED: OnceLock<CpuFeatures> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[allow(unused_mut)]
            let mut f = CpuFeatures::default();
            #[cfg(target_arch = "x86_64")]
            {
                f.avx2 = is_x86_feature_detected!("avx2");
                f.fma = is_x86_feature_detected!("fma");
                f.popcnt = is_x86_feature_detected!("popcnt");
                f.avx512f = is_x86_feature_detected!("avx512f");
                f.avx512bw = is_x86_feature_detected!("avx512bw");
                f.avx512vnni = is_x86_feature_detected!("avx512vnni");
            }
            #[cfg(target_arch = "aarch64")]
            {
                f.neon = std::arch::is_aarch64_feature_detected!("neon");
            }
            f
        })
    }
}

impl Isa {
    /// Every tier, in rank order within each architecture.
    pub const ALL: [Isa; 4] = [Isa::Reference, Isa::Avx2, Isa::Avx512Vnni, Isa::Neon];

    /// Stable name, as accepted by `LOWBIT_ISA` and returned by [`active_isa`].
    pub fn name(self) -> &'static str {
        match self {
            Isa::Reference => "reference",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
        }
    }

    /// Parses a name (case-insensitive, surrounding blanks ignored; `ref`, `scalar`, `avx512` and `vnni` also
    /// accepted).
    pub fn from_name(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "reference" | "ref" | "scalar" => Some(Isa::Reference),
            "avx2" => Some(Isa::Avx2),
            "avx512vnni" | "avx512" | "vnni" => Some(Isa::Avx512Vnni),
            "neon" => Some(Isa::Neon),
            _ => None,
        }
    }

    /// Rank used by the `LOWBIT_ISA` ceiling: 0 reference, 1 avx2/neon, 2 avx512vnni.
    pub fn rank(self) -> u8 {
        match self {
            Isa::Reference => 0,
            Isa::Avx2 | Isa::Neon => 1,
            Isa::Avx512Vnni => 2,
        }
    }

    /// Whether the tier's conformance tests have run on a machine of this project (docs/KERNELS.md): only
    /// verified tiers are compiled without an `unverified-*` feature.
    pub fn is_verified(self) -> bool {
        matches!(self, Isa::Reference | Isa::Avx2 | Isa::Avx512Vnni)
    }

    /// Whether this build contains the tier's kernels (its target architecture, and for an unverified tier its
    /// cargo feature).
    pub fn in_build(self) -> bool {
        match self {
            Isa::Reference => true,
            Isa::Avx2 => cfg!(target_arch = "x86_64"),
            Isa::Avx512Vnni => cfg!(target_arch = "x86_64"),
            Isa::Neon => cfg!(all(target_arch = "aarch64", feature = "unverified-neon")),
        }
    }

    /// Why [`Isa::in_build`] is false (`None` when the tier is in the build).
    fn missing_reason(self) -> Option<&'static str> {
        if self.in_build() {
            return None;
        }
        Some(match self {
            Isa::Avx2 | Isa::Avx512Vnni if !cfg!(target_arch = "x86_64") => {
                "an x86_64 tier, and this is not an x86_64 build"
            }
            Isa::Neon if !cfg!(target_arch = "aarch64") => {
                "an aarch64 tier, and this is not an aarch64 build"
            }
            _ => "unverified tier: build with `--features unverified-neon` to compile it",
        })
    }

    /// Whether a CPU with `cpu`'s features can run the tier in this build.
    pub fn runs_on(self, cpu: &CpuFeatures) -> bool {
        self.in_build()
            && match self {
                Isa::Reference => true,
                Isa::Avx2 => cpu.avx2 && cpu.fma && cpu.popcnt,
                Isa::Avx512Vnni => {
                    Isa::Avx2.runs_on(cpu) && cpu.avx512f && cpu.avx512bw && cpu.avx512vnni
                }
                Isa::Neon => cpu.neon,
            }
    }

    /// Whether this CPU (and this build) can run the tier.
    pub fn is_available(self) -> bool {
        self.runs_on(&CpuFeatures::detect())
    }

    /// Available tiers, lowest rank first (always starts with [`Isa::Reference`]).
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The best available tier whose rank is at most `self`'s (never fails: the reference is always there).
    pub fn capped(self) -> Isa {
        best_within(self, &Isa::ALL, &CpuFeatures::detect())
    }
}

/// A `LOWBIT_ISA` value that names no tier of this build.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IsaError {
    /// Not the name of any tier.
    #[error(
        "LOWBIT_ISA={value:?} is not a kernel tier (expected reference, avx2, avx512vnni or neon)"
    )]
    Unknown {
        /// The variable's value.
        value: String,
    },
    /// A tier this build does not contain.
    #[error("LOWBIT_ISA={value}: this build has no {tier} kernels ({reason})")]
    NotInBuild {
        /// The variable's value.
        value: String,
        /// The tier it names.
        tier: &'static str,
        /// Why the tier is missing, and how to get it where that is possible.
        reason: &'static str,
    },
}

/// The best tier among `implemented` that runs on `cpu` with a rank at most `cap`'s; the reference when none
/// does. A kernel family that implements `implemented` runs this tier under the selection `cap`.
pub fn best_within(cap: Isa, implemented: &[Isa], cpu: &CpuFeatures) -> Isa {
    implemented
        .iter()
        .copied()
        .filter(|t| t.runs_on(cpu) && t.rank() <= cap.rank())
        .max_by_key(|t| t.rank())
        .unwrap_or(Isa::Reference)
}

/// The selected tier for a `LOWBIT_ISA` value (`None` when unset) on a CPU with `cpu`'s features: the policy of
/// the module docs, as a pure function.
///
/// # Errors
/// [`IsaError::Unknown`] for a value that names no tier, [`IsaError::NotInBuild`] for a tier this build lacks.
pub fn select(env_value: Option<&str>, cpu: &CpuFeatures) -> Result<Isa, IsaError> {
    let cap = match env_value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Isa::Avx512Vnni, // the highest rank: no ceiling
        Some(value) => {
            let tier = Isa::from_name(value).ok_or_else(|| IsaError::Unknown {
                value: value.to_string(),
            })?;
            if let Some(reason) = tier.missing_reason() {
                return Err(IsaError::NotInBuild {
                    value: value.to_string(),
                    tier: tier.name(),
                    reason,
                });
            }
            tier
        }
    };
    Ok(best_within(cap, &Isa::ALL, cpu))
}

fn from_env() -> &'static Result<Isa, IsaError> {
    static SELECTED: OnceLock<Result<Isa, IsaError>> = OnceLock::new();
    SELECTED.get_or_init(|| {
        let value = std::env::var_os("LOWBIT_ISA").map(|v| v.to_string_lossy().into_owned());
        select(value.as_deref(), &CpuFeatures::detect())
    })
}

/// The process's selection ([`select`] over `LOWBIT_ISA` and this CPU, read once), or why `LOWBIT_ISA` is
/// invalid. Hosts call this at start-up to report a bad value (the `lowbit` CLI exits with it).
///
/// # Errors
/// The [`IsaError`] of [`select`].
pub fn check_env() -> Result<Isa, IsaError> {
    from_env().clone()
}

/// The tier selected for this process: [`check_env`]'s, or [`Isa::Reference`] when `LOWBIT_ISA` is invalid.
pub fn selected_isa() -> Isa {
    from_env().as_ref().copied().unwrap_or(Isa::Reference)
}

/// Name of [`selected_isa`] ("reference", "avx2", "avx512vnni", "neon").
pub fn active_isa() -> &'static str {
    selected_isa().name()
}

/// The tier a kernel family implementing `implemented` runs in this process: [`best_within`] the selection.
pub fn tier_for(implemented: &[Isa]) -> Isa {
    best_within(selected_isa(), implemented, &CpuFeatures::detect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVX2_ONLY: CpuFeatures = CpuFeatures::AVX2_TIER;

    #[test]
    fn an_unset_or_empty_variable_selects_the_best_runnable_tier() {
        let best = if cfg!(target_arch = "x86_64") {
            Isa::Avx2
        } else {
            Isa::Reference
        };
        assert_eq!(select(None, &AVX2_ONLY), Ok(best));
        assert_eq!(select(Some("  "), &AVX2_ONLY), Ok(best));
        assert_eq!(
            select(None, &CpuFeatures::default()),
            Ok(Isa::Reference),
            "a CPU without the features runs the reference"
        );
    }

    #[test]
    fn avx2_needs_fma_and_popcnt_as_well() {
        for cpu in [
            CpuFeatures {
                fma: false,
                ..AVX2_ONLY
            },
            CpuFeatures {
                popcnt: false,
                ..AVX2_ONLY
            },
        ] {
            assert!(!Isa::Avx2.runs_on(&cpu), "{cpu:?}");
        }
    }

    #[test]
    fn an_unverified_tier_is_chosen_only_when_its_feature_is_built() {
        let got = select(None, &CpuFeatures::ALL).unwrap();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(got, Isa::Avx512Vnni);
        } else if cfg!(all(target_arch = "aarch64", feature = "unverified-neon")) {
            assert_eq!(got, Isa::Neon);
        } else {
            assert!(got.is_verified(), "{got:?} chosen without its feature");
        }
    }

    #[test]
    fn rejects_an_unknown_tier_name() {
        assert_eq!(
            select(Some("sse9"), &CpuFeatures::ALL),
            Err(IsaError::Unknown {
                value: "sse9".into()
            })
        );
        let msg = select(Some("sse9"), &CpuFeatures::ALL)
            .unwrap_err()
            .to_string();
        assert!(!msg.contains('\n') && msg.contains("LOWBIT_ISA"), "{msg}");
    }

    #[test]
    fn rejects_a_tier_this_build_does_not_contain() {
        for tier in Isa::ALL.into_iter().filter(|t| !t.in_build()) {
            match select(Some(tier.name()), &CpuFeatures::ALL) {
                Err(IsaError::NotInBuild { tier: t, .. }) => assert_eq!(t, tier.name()),
                other => panic!("{tier:?}: {other:?}"),
            }
        }
        if cfg!(target_arch = "x86_64") {
            assert!(!Isa::Neon.in_build());
        }
    }

    #[test]
    fn a_named_tier_is_a_ceiling_the_cpu_may_lower() {
        for tier in Isa::ALL.into_iter().filter(|t| t.in_build()) {
            for cpu in [CpuFeatures::ALL, AVX2_ONLY, CpuFeatures::default()] {
                let got = select(Some(&tier.name().to_uppercase()), &cpu).unwrap();
                assert!(
                    got.rank() <= tier.rank() && got.runs_on(&cpu),
                    "{tier:?} {cpu:?}"
                );
                if tier.runs_on(&cpu) {
                    assert_eq!(got, tier);
                }
            }
        }
    }

    #[test]
    fn a_family_runs_its_best_implemented_tier_within_the_selection() {
        let fam = [Isa::Reference, Isa::Avx2];
        assert_eq!(
            best_within(Isa::Reference, &fam, &CpuFeatures::ALL),
            Isa::Reference
        );
        let want = if cfg!(target_arch = "x86_64") {
            Isa::Avx2
        } else {
            Isa::Reference
        };
        assert_eq!(best_within(Isa::Avx512Vnni, &fam, &CpuFeatures::ALL), want);
        assert_eq!(
            best_within(Isa::Avx2, &fam, &CpuFeatures::default()),
            Isa::Reference
        );
    }
}
