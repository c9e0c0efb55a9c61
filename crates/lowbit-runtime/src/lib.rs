//! lowbit-runtime: what a deployed application embeds.
//!
//! Data flow inside this crate: [`qparams`] (the one normative quantize / requantize arithmetic) ->
//! [`pack`] (weight codes at their bit width) -> [`kernels`] (reference + SIMD, dispatched at run time to the
//! tier [`isa`] selects) -> [`model`] (the quantized graph) -> [`graph`] (its validation) -> [`ops`] (one
//! definition per op: inference, description, engine step) -> [`engine`] (plans and runs it integer-only, its
//! batches split over [`workers`]) -> [`format`](mod@format) (the `.lbq` file).
//!
//! This crate never depends on training code.
//!
//! Load a `.lbq` file, run a batch and read the logits (`examples/run_lbq.rs`, also in the README):
//!
//! ```no_run
#![doc = include_str!("../examples/run_lbq.rs")]
//! ```
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod engine;
pub mod error;
pub mod format;
pub mod graph;
pub mod isa;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod pack;
pub mod preprocess;
pub mod qparams;
/// Test helpers for this workspace (cargo feature `testutil`, off by default; not a stable API).
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod workers;

pub use error::{FormatError, QuantError};
pub use model::QuantModel;
pub use qparams::{QParams, Requant};
