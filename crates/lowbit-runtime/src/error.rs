//! Typed errors of the runtime.
use thiserror::Error;

/// Errors in quantization parameters or model structure.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum QuantError {
    /// A scale that is not finite and strictly positive, or a zero point outside the code range.
    #[error("invalid quantization parameters for {tensor}: {reason}")]
    InvalidQParams {
        /// Which tensor the parameters belong to.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A bit width outside 1..=8.
    #[error("bit width {bits} is out of range (1..=8)")]
    InvalidBitWidth {
        /// The rejected bit width.
        bits: u32,
    },
    /// A requantization multiplier that cannot be represented as a Q31 multiplier and shift.
    #[error("requantization multiplier {multiplier} is out of range")]
    MultiplierOutOfRange {
        /// The real multiplier.
        multiplier: f64,
    },
    /// Shapes that do not fit together.
    #[error("shape mismatch in {context}: {detail}")]
    ShapeMismatch {
        /// Where the mismatch was found.
        context: String,
        /// Expected versus found.
        detail: String,
    },
}

/// Errors reading or writing a `.lbq` model file. The file is untrusted: every malformed input maps to a variant.
#[derive(Debug, Error)]
pub enum FormatError {
    /// I/O failure.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Not a lowbit file.
    #[error("not a lowbit model file (bad magic: {found})")]
    BadMagic {
        /// What was found instead.
        found: String,
    },
    /// A newer format version than this reader understands.
    #[error("unsupported format version {found} (this build reads up to {max})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// Highest supported version.
        max: u32,
    },
    /// The file ends before a section is complete.
    #[error("truncated {section}: needs {needed} bytes, {available} available")]
    Truncated {
        /// Which section.
        section: String,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// A size or count above a hard limit (checked before allocating).
    #[error("{what} = {value} exceeds the limit {max}")]
    LimitExceeded {
        /// What was counted.
        what: String,
        /// The value in the file.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// Invalid quantization parameters or structure in the file.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// Anything else structurally wrong (missing tensor, bad JSON, wrong dtype...).
    #[error("malformed model file: {0}")]
    Malformed(String),
}
