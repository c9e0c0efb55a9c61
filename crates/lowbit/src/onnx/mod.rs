//! ONNX import: an `.onnx` classifier (NCHW float input, logits out) becomes a float [`Model`] that every lowbit
//! command (train with `--init`, PTQ, eval, inspect, sweep...) takes like one of its own.
//!
//! The protobuf is decoded by `prost` types generated from the official `onnx.proto` ([`proto`], committed;
//! `scripts/gen_onnx_proto.sh` regenerates it). [`import`] walks the graph once in its (topological) order: values
//! computed from constants only (initializers, `Constant` nodes, and the `Shape`/`Gather`/`Unsqueeze`/`Concat`/
//! `Cast`/`ConstantOfShape`/`Slice`/`Transpose`/`Reshape` chains that exporters emit to compute a `Reshape` target
//! or `Pad` amounts) are folded in `fold`, with the batch dimension kept as a symbol; every other node becomes
//! lowbit layers, one table row per op in [`import`]. NHWC graphs (Keras through tf2onnx) hold transposed views
//! of lowbit's NCHW values; their layout ops fold away (transposes undone later, tf2onnx's `Reshape` form of a
//! one-channel input's transpose, and a flatten of NHWC before `Dense`, whose weight rows are then reordered).
//! Anything else is refused with the op, the node and the opset named, before anything is written. Initializers
//! stored as external data are read from files beside the model (never outside its directory).
//!
//! [`export`] goes the other way: a quantized model as standard QDQ ONNX, a float model as f32 ONNX.
//!
//! This lives in the training crate, not in `lowbit-runtime`: a deployed app never reads ONNX.
use crate::error::{Error, Result};
use crate::nn::Model;
use std::path::Path;

pub mod export;
mod fold;
mod import;
mod preprocess;
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto;

pub use import::{
    import_bytes, import_bytes_with_external_data, import_bytes_with_options, MIN_OPSET,
};
pub use preprocess::{Preprocessing, META_INPUT_SCALE, META_MEAN, META_STD};

/// What is wrong with an ONNX file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OnnxError {
    /// The bytes are not a valid ONNX protobuf (truncated or corrupt).
    #[error("not a valid ONNX model (truncated or corrupt protobuf): {0}")]
    Decode(String),
    /// An op lowbit cannot import (yet), or an op with attributes it cannot express.
    #[error("node {node:?}: op {op} (opset {opset}) is not supported{}", detail_suffix(.detail))]
    UnsupportedOp {
        /// The ONNX op type.
        op: String,
        /// The node's name (or its first output when unnamed).
        node: String,
        /// The default-domain opset the model imports.
        opset: i64,
        /// Why, when the op itself is supported but not this use of it.
        detail: String,
    },
    /// A node reads a value no initializer, input, `Constant` or earlier node defines.
    #[error("node {node:?} ({op}): input {name:?} is not defined by any initializer, graph input or earlier node")]
    MissingValue {
        /// The node's name.
        node: String,
        /// The node's op type.
        op: String,
        /// The undefined value.
        name: String,
    },
    /// A weight must be a constant (initializer) but is computed at run time.
    #[error("node {node:?} ({op}): input {name:?} must be a constant (an initializer)")]
    NotConstant {
        /// The node's name.
        node: String,
        /// The node's op type.
        op: String,
        /// The input that is not constant.
        name: String,
    },
    /// A tensor stored outside the file (external data) when no directory to read it from is known.
    #[error("tensor {name:?} is stored as external data, and the model was given as bytes without its directory")]
    ExternalData {
        /// The tensor's name.
        name: String,
    },
    /// External data that cannot be read: a location outside the model's directory, a missing file, a range
    /// past its end.
    #[error("tensor {name:?}: external data {location:?}: {reason}")]
    ExternalFile {
        /// The tensor's name.
        name: String,
        /// The `location` the model gives.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor whose data does not match its type or dimensions, or of an unsupported element type.
    #[error("tensor {name:?}: {reason}")]
    BadTensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The model imports an opset lowbit does not support.
    #[error("opset {found} of the default domain is not supported (need {min} or later)")]
    UnsupportedOpset {
        /// The model's opset.
        found: i64,
        /// The oldest opset supported.
        min: i64,
    },
    /// A graph lowbit cannot express: input or output not of the classifier form, shapes that do not fit.
    #[error("{0}")]
    Graph(String),
    /// A `lowbit.*` key of the model's `metadata_props` whose value cannot be used.
    #[error("metadata {key:?}: {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Input preprocessing (flags or metadata) that is invalid or does not fit the model's input.
    #[error("input preprocessing: {0}")]
    Preprocessing(String),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// Reads and imports an ONNX file (size-capped like every model file); tensors stored as external data are read
/// from files beside it. The preprocessing is the model's metadata's ([`Preprocessing`]).
pub fn import(path: &Path) -> Result<Model> {
    import_with(path, &Preprocessing::default())
}

/// [`import`] with preprocessing given by the caller (command-line flags), which overrides the model's metadata
/// part by part.
pub fn import_with(path: &Path, preprocessing: &Preprocessing) -> Result<Model> {
    let bytes = crate::modelfile::read_file_capped(path)?;
    import_file_bytes(&bytes, path, preprocessing)
}

/// Imports the bytes read from `path` (external data beside it), errors naming the file.
pub(crate) fn import_file_bytes(
    bytes: &[u8],
    path: &Path,
    preprocessing: &Preprocessing,
) -> Result<Model> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    import_bytes_with_options(bytes, &spec_for(path), Some(dir), preprocessing).map_err(|source| {
        Error::Onnx {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The provenance of a model imported from `path`: no dataset, seed or accuracy; the recipe names the file.
pub fn provenance(path: &Path) -> lowbit_runtime::model::Provenance {
    lowbit_runtime::model::Provenance {
        dataset: String::new(),
        seed: 0,
        test_accuracy: None,
        recipe: format!("imported from ONNX {}", file_name(path)),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Whether `path` names an ONNX file: by its extension `.onnx` (any case). Protobuf has no magic number, so
/// content cannot say it reliably; [`crate::modelfile::load_any_with`] also takes other names whose content is
/// not a lowbit file but decodes as an ONNX model with a graph ([`looks_like_onnx`]).
pub fn has_onnx_extension(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Whether `bytes` decode as an ONNX `ModelProto` that declares an IR version, an opset and a graph with at least
/// one node: the fields every exporter writes and random or lowbit bytes almost never decode to.
pub fn looks_like_onnx(bytes: &[u8]) -> bool {
    use prost::Message;
    proto::ModelProto::decode(bytes).is_ok_and(|m| {
        m.ir_version() > 0
            && !m.opset_import.is_empty()
            && m.graph.as_ref().is_some_and(|g| !g.node.is_empty())
    })
}

/// The description an imported model carries as its spec: `onnx:FILE_NAME`.
fn spec_for(path: &Path) -> String {
    format!("onnx:{}", file_name(path))
}
