//! lowbit-runtime: what a deployed application embeds.
//!
//! Data flow inside this crate: [`qparams`] (the one normative quantize / requantize arithmetic) ->
//! [`pack`] (weight codes at their bit width) -> [`kernels`] (reference + SIMD, dispatched at run time to the
//! tier [`isa`] selects) ->
//! [`model`] (the quantized model) -> [`engine`] (runs it integer-only, its batches split over [`workers`]) ->
//! [`format`](mod@format) (the `.lbq` file).
//!
//! This crate never depends on training code.
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod engine;
pub mod error;
pub mod format;
pub mod isa;
pub mod kernels;
pub mod model;
pub mod pack;
pub mod qparams;
#[doc(hidden)]
pub mod testutil;
pub mod workers;

pub use error::{FormatError, QuantError};
pub use model::QuantModel;
pub use qparams::{QParams, Requant};
