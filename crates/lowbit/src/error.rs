//! The library's typed error.
use std::path::PathBuf;
use thiserror::Error;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in lowbit's library, each variant naming the file or option at fault.
#[derive(Debug, Error)]
pub enum Error {
    /// I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A data file that is malformed (bad magic, wrong dimensions, truncated, count mismatch, bad labels).
    #[error("{path}: {reason}")]
    Data {
        /// The file (or directory).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A data source that does not exist.
    #[error("{0}")]
    MissingData(String),
    /// An option value out of range or unparseable.
    #[error("invalid {option}: {reason}")]
    InvalidOption {
        /// The option name, as the user typed it (e.g. `--weight-bits`).
        option: String,
        /// What is wrong.
        reason: String,
    },
    /// Shapes that do not fit.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Training produced a non-finite loss or gradient, or a loss above the limit; the model keeps its last good
    /// weights.
    #[error("training diverged at epoch {epoch}, step {step}: {what} (last good weights kept)")]
    Diverged {
        /// Epoch (1-based).
        epoch: usize,
        /// Step within the epoch (1-based).
        step: usize,
        /// What became non-finite.
        what: String,
    },
    /// A model file problem (ours or the runtime's).
    #[error("{path}: {source}")]
    ModelFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: lowbit_runtime::FormatError,
    },
    /// A trained model whose quantizers cannot be expressed in integers (e.g. degenerate ranges).
    #[error("cannot convert the model to integers: {0}")]
    Conversion(String),
    /// Quantization parameter problem.
    #[error(transparent)]
    Quant(#[from] lowbit_runtime::QuantError),
}

impl Error {
    /// Shorthand for [`Error::InvalidOption`].
    pub fn option(option: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidOption {
            option: option.into(),
            reason: reason.into(),
        }
    }
}
