//! lowbit: quantization-optimized neural networks.
//!
//! Data flow, one module per stage: [`data`] (IDX files, the builtin sample, batching) -> [`nn`] (float layers,
//! loss, model specs) + [`optim`] -> [`quant`] (quantizer specs, fake-quant / STE, calibration, conversion to the
//! runtime model) -> [`train`] (the loop, f32 or QAT) -> [`eval`] (accuracy, confusion matrix, per-layer error,
//! reports); [`state`] and [`checkpoint`] save and resume a training run. The integer engine and the `.lbq`
//! file live in [`lowbit_runtime`].
//!
//! Quantize from code (`examples/quantize.rs`; run by the tests from the README):
//!
//! ```no_run
#![doc = include_str!("../examples/quantize.rs")]
//! ```
#![warn(missing_docs)]
// Unsafe code (the SIMD kernels) states its contract: `# Safety` on every `unsafe fn` (private ones too, see
// clippy.toml), `// SAFETY:` on every block, and no unsafe operation outside an explicit block.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod allocate;
pub mod checkpoint;
pub mod config_file;
pub mod data;
pub mod error;
pub mod eval;
pub mod kernel_tiers;
pub mod modelfile;
pub mod nn;
pub mod optim;
pub mod pipeline;
pub mod quant;
pub mod report;
pub mod rng;
pub mod sensitivity;
pub mod state;
pub mod sweep;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
pub use lowbit_runtime as runtime;

/// The README's Rust examples, compiled and run as this crate's doctests (`README.md` here links to the
/// repository's, so the packaged crate has it too).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
