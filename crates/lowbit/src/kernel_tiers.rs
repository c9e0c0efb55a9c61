//! The kernel tier each of lowbit's kernel families runs, all from the one selection of
//! [`lowbit_runtime::isa`] (CPU features, capped by `LOWBIT_ISA`, read once per process).
//!
//! Families: the integer engine ([`lowbit_runtime::kernels`]), the trainer's f32 GEMMs and their helpers
//! ([`crate::nn::kernels`], the im2col / col2im copies and the 2 x 2 max pool), fake-quant (`quant::kernels`, and
//! the integer simulation's sums) and the optimizer ([`crate::optim`]). Each runs the best tier it implements within the selection
//! ([`lowbit_runtime::isa::best_within`]): under `LOWBIT_ISA=reference` every family runs its portable code.
use lowbit_runtime::isa::{self, CpuFeatures, Isa};
use serde::Serialize;
use std::sync::OnceLock;

/// A family of kernels that dispatches on the selected tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// The integer engine's GEMMs, convolutions, requantization and pooling.
    Engine,
    /// The trainer's f32 products (dense and conv forward / backward), im2col, col2im and max pool.
    TrainGemm,
    /// QAT fake-quantization and its gradients, calibration's range scans and the integer simulation's sums.
    FakeQuant,
    /// The optimizer's update (Adam).
    Optimizer,
}

/// Tiers of the training-side families: the portable code and one AVX2 (+FMA) build.
const TRAINING_TIERS: [Isa; 2] = [Isa::Reference, Isa::Avx2];

impl Family {
    /// Every family.
    pub const ALL: [Family; 4] = [
        Family::Engine,
        Family::TrainGemm,
        Family::FakeQuant,
        Family::Optimizer,
    ];

    /// Stable name, as in reports.
    pub fn name(self) -> &'static str {
        match self {
            Family::Engine => "engine",
            Family::TrainGemm => "train_gemm",
            Family::FakeQuant => "fake_quant",
            Family::Optimizer => "optimizer",
        }
    }

    /// The tiers the family has kernels for (in builds that contain them).
    pub fn implemented(self) -> &'static [Isa] {
        match self {
            Family::Engine => &Isa::ALL,
            Family::TrainGemm | Family::FakeQuant | Family::Optimizer => &TRAINING_TIERS,
        }
    }

    /// The tier the family runs under the selection `selected` on a CPU with `cpu`'s features (pure).
    pub fn tier_within(self, selected: Isa, cpu: &CpuFeatures) -> Isa {
        isa::best_within(selected, self.implemented(), cpu)
    }

    /// The tier the family runs in this process, decided once.
    pub fn tier(self) -> Isa {
        static TIERS: OnceLock<[Isa; 4]> = OnceLock::new();
        let tiers = TIERS.get_or_init(|| Family::ALL.map(|f| isa::tier_for(f.implemented())));
        tiers[self as usize]
    }
}

/// The tier of every family, as recorded in reports and printed by `lowbit bench`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelTiers {
    /// [`Family::Engine`].
    pub engine: &'static str,
    /// [`Family::TrainGemm`].
    pub train_gemm: &'static str,
    /// [`Family::FakeQuant`].
    pub fake_quant: &'static str,
    /// [`Family::Optimizer`].
    pub optimizer: &'static str,
}

impl KernelTiers {
    /// The tiers of this process.
    pub fn current() -> Self {
        Self {
            engine: Family::Engine.tier().name(),
            train_gemm: Family::TrainGemm.tier().name(),
            fake_quant: Family::FakeQuant.tier().name(),
            optimizer: Family::Optimizer.tier().name(),
        }
    }
}

impl std::fmt::Display for KernelTiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "engine {}, training GEMM {}, fake-quant {}, optimizer {}",
            self.engine, self.train_gemm, self.fake_quant, self.optimizer
        )
    }
}
