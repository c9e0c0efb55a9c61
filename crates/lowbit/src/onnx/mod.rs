//! ONNX import: an `.onnx` classifier (NCHW float input, logits out) becomes a float [`Model`] that every lowbit
//! command (train with `--init`, PTQ, eval, inspect, sweep...) takes like one of its own.
//!
//! The protobuf is decoded by `prost` types generated from the official `onnx.proto` ([`proto`], committed;
//! `scripts/gen_onnx_proto.sh` regenerates it). [`import`] walks the graph once in its (topological) order: values
//! computed from constants only (initializers, `Constant` nodes, and the `Shape`/`Gather`/`Unsqueeze`/`Concat`/
//! `Cast`/`ConstantOfShape`/`Slice`/`Transpose`/`Reshape` chains that exporters emit to compute a `Reshape` target
//! or `Pad` amounts) are folded in `fold`, with the batch dimension kept as a symbol; every other node becomes
//! lowbit layers, one table row per op in [`import`]. Anything else is refused with the op, the node and the opset
//! named, before anything is written. Initializers stored as external data are read from files beside the model
//! (never outside its directory).
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
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto;

pub use import::{import_bytes, import_bytes_with_external_data, MIN_OPSET};

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
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// Reads and imports an ONNX file (size-capped like every model file); tensors stored as external data are read
/// from files beside it.
pub fn import(path: &Path) -> Result<Model> {
    let bytes = crate::modelfile::read_file_capped(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    import_bytes_with_external_data(&bytes, &spec_for(path), dir).map_err(|source| Error::Onnx {
        path: path.to_path_buf(),
        source,
    })
}

/// The description an imported model carries as its spec: `onnx:FILE_NAME`.
fn spec_for(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    format!("onnx:{name}")
}
