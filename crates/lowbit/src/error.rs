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
    /// A data file (NumPy, CIFAR, image folder) that cannot be used, by typed reason.
    #[error("{path}: {source}")]
    DataFile {
        /// The file (or directory).
        path: PathBuf,
        /// What is wrong.
        source: DataError,
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
    /// A training checkpoint that cannot be written, found or resumed.
    #[error("{path}: {source}")]
    Checkpoint {
        /// The checkpoint file (or directory).
        path: PathBuf,
        /// What is wrong.
        source: CheckpointError,
    },
    /// A model that cannot be exported to ONNX (nothing is written).
    #[error("{path}: {source}")]
    OnnxExport {
        /// The ONNX file that was to be written.
        path: PathBuf,
        /// What is wrong.
        source: crate::onnx::export::ExportError,
    },
    /// An ONNX file that cannot be imported.
    #[error("{path}: {source}")]
    Onnx {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: crate::onnx::OnnxError,
    },
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

/// Why a data file cannot be used (see [`crate::data`]); the file is named by [`Error::DataFile`].
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DataError {
    /// The file does not start with its format's magic bytes.
    #[error("not a {format} file (found {found})")]
    BadMagic {
        /// The format expected.
        format: String,
        /// What the file starts with, escaped.
        found: String,
    },
    /// The file ends before a part it announces.
    #[error("truncated {section}: needs {needed} bytes, {available} available")]
    Truncated {
        /// The part cut off.
        section: String,
        /// Bytes the part needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// More bytes than the header announces.
    #[error("{extra} bytes of trailing data after the {section}")]
    TrailingData {
        /// The last part read.
        section: String,
        /// Bytes left over.
        extra: u64,
    },
    /// A size above what the reader accepts (checked before allocating).
    #[error("{what} is {value}, above the limit of {max}")]
    LimitExceeded {
        /// What is too large.
        what: String,
        /// Its value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A header that does not parse.
    #[error("malformed {section}: {reason}")]
    Malformed {
        /// The part that is malformed.
        section: String,
        /// What is wrong.
        reason: String,
    },
    /// A valid file of a kind the reader does not take (a dtype, a layout, an image mode).
    #[error("unsupported {what}: {found}")]
    Unsupported {
        /// What is unsupported.
        what: String,
        /// The value found, and what would be accepted.
        found: String,
    },
    /// A label outside `0..classes`.
    #[error("label {label} at index {index} is out of range: this dataset has {classes} classes")]
    LabelOutOfRange {
        /// Index of the sample.
        index: usize,
        /// The label.
        label: i64,
        /// Number of classes.
        classes: usize,
    },
    /// A float pixel outside [0, 1] (or not finite).
    #[error("pixel value {value} at element {index} is not in [0, 1]")]
    PixelOutOfRange {
        /// Flat element index.
        index: usize,
        /// The value.
        value: f32,
    },
    /// Parts that must agree do not (counts, shapes, class folders of the two splits).
    #[error("{0}")]
    Mismatch(String),
    /// A required file or folder is missing, or a folder holds no images.
    #[error("{0}")]
    Missing(String),
    /// An image the decoder rejects.
    #[error("cannot decode image: {0}")]
    Image(String),
}

/// Why a checkpoint cannot be resumed (see [`crate::checkpoint`]); the file is named by [`Error::Checkpoint`].
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// `--resume` found no checkpoint in the directory.
    #[error("no checkpoint to resume (expected {expected})")]
    NotFound {
        /// The file names looked for.
        expected: String,
    },
    /// A run that does not resume would overwrite checkpoints already in the directory.
    #[error("already holds a checkpoint ({file}); continue it with --resume, or choose another directory")]
    AlreadyExists {
        /// The checkpoint found.
        file: String,
    },
    /// Not a lowbit checkpoint (another file, or a header that does not parse).
    #[error("not a lowbit checkpoint ({found})")]
    NotACheckpoint {
        /// What was found instead.
        found: String,
    },
    /// A checkpoint format this build does not read.
    #[error(
        "checkpoint format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedFormat {
        /// Version in the file.
        found: String,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// Written by another lowbit version, whose training arithmetic may differ.
    #[error(
        "written by lowbit {written_by}, this is lowbit {this}: resume with the version that wrote it, or start over"
    )]
    OtherVersion {
        /// `lowbit_version` in the file.
        written_by: String,
        /// This build's version.
        this: String,
    },
    /// A cut file (`FormatError::Truncated`: lowbit's own writes are atomic, so a cut copy) or a size above a
    /// hard limit (`FormatError::LimitExceeded`, checked before allocating).
    #[error(transparent)]
    Container(#[from] lowbit_runtime::FormatError),
    /// The stored checksum does not match the content: the file was damaged after it was written.
    #[error("corrupt: checksum {computed:016x} does not match the stored {stored:016x}")]
    ChecksumMismatch {
        /// Checksum in the header.
        stored: u64,
        /// Checksum of the content read.
        computed: u64,
    },
    /// Structurally wrong content (bad JSON, wrong dtype, non-finite values, trailing bytes).
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// Written by a run with other settings (a resumed run must use the settings it was started with).
    #[error("written by a run with {setting} = {checkpoint}, this run has {this_run} (resume with the same settings)")]
    OtherSettings {
        /// Dotted path of the first setting that differs (e.g. `train.lr`).
        setting: String,
        /// Its value in the checkpoint.
        checkpoint: String,
        /// Its value in this run.
        this_run: String,
    },
    /// Written while training on other data.
    #[error("written by a run on other data ({checkpoint}), this run's data is {this_run}")]
    OtherData {
        /// The checkpoint's data description (sample count, fingerprint).
        checkpoint: String,
        /// This run's.
        this_run: String,
    },
    /// The stored state does not fit the model being resumed (missing, extra or resized tensors).
    #[error("does not fit the model: {0}")]
    OtherModel(String),
}
