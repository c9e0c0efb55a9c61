//! Float model files and a loader that tells float from quantized files.
//!
//! A float model is a safetensors file whose `__metadata__` has `format = "lowbit.f32"`, `format_version = "2"`,
//! `model` (JSON: the spec string it was built from, the input shape, the class count and the graph: `nodes`,
//! each with a `name`, the names of the values it reads, `"input"` or earlier nodes, and its `op` with its
//! attributes) and `provenance` (JSON). Every node with state has F32 tensors `{name}.weight` and `{name}.bias`
//! (dense: weight `[out, in]`; conv: flat, in the layer's `[out, in/groups, kh, kw]` order) or, for batch norm,
//! `{name}.gamma`, `.beta`, `.running_mean` and `.running_var`. So any graph round-trips, whatever spec (if any)
//! built it.
//!
//! Version 1 stored only the `spec` and the tensors `layers.{i}.*` of the spec's layer list; it is still read.
//! Readers bound every size from the metadata before allocating, check each tensor's dtype and element count
//! against its node, and refuse NaN and Inf. Quantized models use the `.lbq` format of
//! [`lowbit_runtime::format`].
use crate::error::{Error, Result};
use crate::nn::{Layer, Model};

mod graph_file;
use lowbit_runtime::model::Provenance;
use lowbit_runtime::{FormatError, QuantModel};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::path::Path;

/// `format` metadata value of float model files.
pub const FLOAT_FORMAT: &str = "lowbit.f32";
/// Current float format version.
pub const FLOAT_FORMAT_VERSION: u32 = 2;
/// Largest model file read, in bytes (checked before reading it whole).
pub const MAX_MODEL_FILE_BYTES: u64 = 1 << 30;

/// A model file's content: float or quantized.
#[derive(Debug, Clone)]
pub enum AnyModel {
    /// A float model with its provenance.
    Float(Box<Model>, Provenance),
    /// A quantized, deployable model.
    Quant(Box<QuantModel>),
}

fn model_err(path: &Path, source: FormatError) -> Error {
    Error::ModelFile {
        path: path.to_path_buf(),
        source,
    }
}

fn malformed(path: &Path, msg: impl Into<String>) -> Error {
    model_err(path, FormatError::Malformed(msg.into()))
}

/// The values a float file stores for one layer, by tensor name suffix: weights and biases of dense and conv
/// layers, and a batch norm's scale, shift and running statistics (which evaluation uses). Other layers store
/// nothing.
fn float_state(layer: &mut Layer) -> Vec<(&'static str, &mut Vec<f32>)> {
    match layer {
        Layer::Dense(d) => vec![("weight", &mut d.weight), ("bias", &mut d.bias)],
        Layer::Conv2d(c) => vec![("weight", &mut c.weight), ("bias", &mut c.bias)],
        Layer::BatchNorm2d(b) => vec![
            ("gamma", &mut b.gamma),
            ("beta", &mut b.beta),
            ("running_mean", &mut b.running_mean),
            ("running_var", &mut b.running_var),
        ],
        _ => Vec::new(),
    }
}

/// The value rules of the float file, for models built elsewhere (the ONNX importer) that must be storable:
/// every stored tensor finite, batch-norm variances non-negative and `eps` finite and positive. The error names the
/// node and the tensor.
pub(crate) fn check_float_values(model: &mut Model) -> std::result::Result<(), (String, String)> {
    for node in &mut model.nodes {
        if let Layer::BatchNorm2d(b) = &node.layer {
            if !(b.eps.is_finite() && b.eps > 0.0) {
                return Err((
                    node.name.clone(),
                    format!("batch-norm epsilon {} is not finite and positive", b.eps),
                ));
            }
            if b.running_var.iter().any(|&v| v < 0.0) {
                return Err((
                    node.name.clone(),
                    "running_var holds a negative variance".into(),
                ));
            }
        }
        for (suffix, values) in float_state(&mut node.layer) {
            if values.iter().any(|v| !v.is_finite()) {
                return Err((format!("{}.{suffix}", node.name), "holds NaN or Inf".into()));
            }
        }
    }
    Ok(())
}

/// Serializes a float model to bytes (deterministic: the same model gives the same bytes). Only float layers can
/// be stored: a model prepared for quantization is saved as its float shadow by the caller, or as `.lbq`.
pub fn float_to_bytes(model: &Model, provenance: &Provenance) -> Result<Vec<u8>> {
    model.check_structure()?;
    let mut model = model.clone();
    let names: Vec<String> = model.nodes.iter().map(|n| n.name.clone()).collect();
    let value_name = |v: usize| match v.checked_sub(1) {
        Some(i) => names[i].clone(),
        None => graph_file::INPUT.to_string(),
    };
    let mut nodes = Vec::with_capacity(model.nodes.len());
    let mut tensors: Vec<lowbit_runtime::format::Tensor> = Vec::new();
    for node in &mut model.nodes {
        if node.name == graph_file::INPUT {
            return Err(Error::Shape(format!(
                "node name {:?} is reserved for the model input",
                node.name
            )));
        }
        let op = graph_file::LayerMeta::of(&node.layer).ok_or_else(|| {
            Error::Shape(format!(
                "node {} ({}) is not a float layer: save the quantized model instead",
                node.name,
                node.layer.kind()
            ))
        })?;
        // Dense weights keep their `[out, in]` shape (the format's first readers check it); the rest is flat.
        let dense_shape = match &node.layer {
            Layer::Dense(d) => Some(vec![d.out_features, d.in_features]),
            _ => None,
        };
        for (param, v) in float_state(&mut node.layer) {
            let shape = match (&dense_shape, param) {
                (Some(s), "weight") => s.clone(),
                _ => vec![v.len()],
            };
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            tensors.push((format!("{}.{param}", node.name), "F32", shape, bytes));
        }
        nodes.push(graph_file::NodeMeta {
            name: node.name.clone(),
            inputs: node.inputs.iter().map(|&v| value_name(v)).collect(),
            op,
        });
    }
    let graph = graph_file::GraphMeta {
        spec: model.spec.clone(),
        input_shape: model.input_shape,
        classes: model.classes,
        nodes,
        normalization: model.normalization.clone(),
    };
    let meta = [
        ("format", FLOAT_FORMAT.to_string()),
        ("format_version", FLOAT_FORMAT_VERSION.to_string()),
        (
            "model",
            serde_json::to_string(&graph).map_err(|e| Error::Shape(e.to_string()))?,
        ),
        (
            "provenance",
            serde_json::to_string(provenance).map_err(|e| Error::Shape(e.to_string()))?,
        ),
    ];
    lowbit_runtime::format::container_bytes(&meta, &tensors)
        .map_err(|e| Error::Shape(e.to_string()))
}

/// Writes a float model atomically (temp file in the same directory, then rename).
pub fn save_float(model: &Model, provenance: &Provenance, path: &Path) -> Result<()> {
    let bytes = float_to_bytes(model, provenance)?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` atomically ([`lowbit_runtime::format::write_atomic`]), naming the file in errors.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    lowbit_runtime::format::write_atomic(path, bytes).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a float model from bytes (`path` only names the file in errors).
pub fn float_from_bytes(bytes: &[u8], path: &Path) -> Result<(Model, Provenance)> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| malformed(path, e.to_string()))?;
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| malformed(path, e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    match meta.get("format").map(String::as_str) {
        Some(FLOAT_FORMAT) => {}
        other => {
            return Err(model_err(
                path,
                FormatError::BadMagic {
                    found: other.unwrap_or("no format key").to_string(),
                },
            ))
        }
    }
    let version: u32 = meta
        .get("format_version")
        .and_then(|v| v.parse().ok())
        .filter(|&v| v >= 1)
        .ok_or_else(|| malformed(path, "missing or bad format_version"))?;
    if version > FLOAT_FORMAT_VERSION {
        return Err(model_err(
            path,
            FormatError::UnsupportedVersion {
                found: version,
                max: FLOAT_FORMAT_VERSION,
            },
        ));
    }
    let provenance: Provenance = match meta.get("provenance") {
        Some(p) => {
            serde_json::from_str(p).map_err(|e| malformed(path, format!("provenance: {e}")))?
        }
        None => Provenance::default(),
    };
    let stored_elems: usize = st
        .tensors()
        .iter()
        .map(|(_, t)| t.shape().iter().product::<usize>())
        .sum();
    let model = if version >= 2 {
        let text = meta
            .get("model")
            .ok_or_else(|| malformed(path, "missing model"))?;
        graph_file::read(text, stored_elems, |name, len| {
            read_f32(&st, name, len, path)
        })
        .map_err(|e| match e {
            Error::ModelFile { .. } => e,
            other => malformed(path, other.to_string()),
        })?
    } else {
        let spec = meta
            .get("spec")
            .ok_or_else(|| malformed(path, "missing spec"))?;
        spec_model(&st, spec, stored_elems, path)?
    };
    if st.len() != count_state(&model) {
        return Err(malformed(
            path,
            format!(
                "{} tensors, the model has {}",
                st.len(),
                count_state(&model)
            ),
        ));
    }
    Ok((model, provenance))
}

/// The number of tensors a model's float state takes.
fn count_state(model: &Model) -> usize {
    let mut m = model.clone();
    m.layers_mut().map(|l| float_state(l).len()).sum()
}

/// A version-1 file: the model its spec builds, with the tensors `layers.{i}.*` of the spec's layer list.
fn spec_model(st: &SafeTensors, spec: &str, stored_elems: usize, path: &Path) -> Result<Model> {
    // Building the model allocates and initialises every weight the spec names, so a tiny file whose spec asks
    // for hundreds of millions of parameters would cost gigabytes and seconds before the tensor checks below
    // reject it (a 104-byte file took 0.9 GB and 6 s). Every parameter must be stored in the file: compare first.
    // Version 1 predates the graph specs (resnet, mobilenet): those are refused here, unbuilt.
    let needed = crate::nn::spec::chain_param_count(spec, crate::nn::spec::IMAGE_SHAPE, 10)
        .map_err(|e| malformed(path, format!("spec: {e}")))?;
    if needed > stored_elems {
        return Err(malformed(
            path,
            format!("spec {spec} has {needed} parameters, the file stores {stored_elems} values"),
        ));
    }
    let mut model = Model::from_spec(spec, 0).map_err(|e| malformed(path, format!("spec: {e}")))?;
    for (i, layer) in model.layers_mut().enumerate() {
        for (name, v) in float_state(layer) {
            *v = read_f32(st, &format!("layers.{i}.{name}"), v.len(), path)?;
        }
    }
    Ok(model)
}

/// Tensor `name` as `len` finite f32 values, in any shape holding exactly `len` of them.
fn read_f32(st: &SafeTensors, name: &str, len: usize, path: &Path) -> Result<Vec<f32>> {
    let t = st
        .tensor(name)
        .map_err(|_| malformed(path, format!("missing tensor {name}")))?;
    if t.dtype() != Dtype::F32 || t.shape().iter().product::<usize>() != len {
        return Err(malformed(
            path,
            format!(
                "tensor {name}: expected F32 with {len} values, found {:?} {:?}",
                t.dtype(),
                t.shape()
            ),
        ));
    }
    let v: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if v.iter().any(|x| !x.is_finite()) {
        return Err(malformed(path, format!("tensor {name} holds NaN or Inf")));
    }
    Ok(v)
}

/// One line naming a layer's kind and attributes as the float model file stores them (`conv2d 16->32 3x3 stride
/// 2x2 pad 1x1`), for `inspect`; layers a float file does not hold (quantizers) give their kind.
pub fn describe_layer(layer: &Layer) -> String {
    graph_file::LayerMeta::of(layer)
        .map(|m| m.describe())
        .unwrap_or_else(|| layer.kind().to_string())
}

/// Reads a file, capping its size before reading.
pub fn read_file_capped(path: &Path) -> Result<Vec<u8>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_MODEL_FILE_BYTES {
        return Err(model_err(
            path,
            FormatError::LimitExceeded {
                what: "file size".into(),
                value: len,
                max: MAX_MODEL_FILE_BYTES,
            },
        ));
    }
    std::fs::read(path).map_err(io)
}

/// Loads a float (`lowbit.f32`) or quantized (`lowbit.lbq`) model file, telling them apart by metadata, or an
/// ONNX model, imported in memory as a float model (see [`load_any_with`]).
pub fn load_any(path: &Path) -> Result<AnyModel> {
    load_any_with(path, &crate::onnx::Preprocessing::default())
}

/// [`load_any`], with the input preprocessing an ONNX import takes (command-line flags over the model's
/// metadata). A lowbit float file without a normalisation takes it (as `train --init` does); a file with its own
/// normalisation, or a quantized file, refuses one that differs ([`Error::InvalidOption`]).
///
/// A file is ONNX when its name ends in `.onnx`, or when it is not a lowbit (safetensors) file and decodes as an
/// ONNX model with an IR version, an opset and a graph ([`crate::onnx::looks_like_onnx`]): protobuf has no magic
/// number, so the extension decides where it can, and the content only for other names. A `.onnx` file that does
/// not decode is reported as a bad ONNX file.
pub fn load_any_with(path: &Path, preprocessing: &crate::onnx::Preprocessing) -> Result<AnyModel> {
    let bytes = read_file_capped(path)?;
    let header = SafeTensors::read_metadata(&bytes).ok();
    if crate::onnx::has_onnx_extension(path)
        || (header.is_none() && crate::onnx::looks_like_onnx(&bytes))
    {
        let model = crate::onnx::import_file_bytes(&bytes, path, preprocessing)?;
        let provenance = crate::onnx::provenance(path);
        return Ok(AnyModel::Float(Box::new(model), provenance));
    }
    let is_float = header
        .and_then(|(_, m)| m.metadata().clone())
        .and_then(|m| m.get("format").cloned())
        .is_some_and(|f| f == FLOAT_FORMAT);
    let mut model = if is_float {
        let (m, p) = float_from_bytes(&bytes, path)?;
        AnyModel::Float(Box::new(m), p)
    } else {
        let qm = lowbit_runtime::format::from_bytes(&bytes).map_err(|e| model_err(path, e))?;
        AnyModel::Quant(Box::new(qm))
    };
    if !preprocessing.is_empty() {
        let given = preprocessing
            .normalization()
            .map_err(|reason| Error::option("--mean/--std/--input-scale", reason))?;
        let own = match &mut model {
            AnyModel::Float(m, _) => {
                if let (None, Some(n)) = (&m.normalization, &given) {
                    n.check_channels(m.input_shape[0])?;
                    m.normalization = given.clone();
                }
                &m.normalization
            }
            AnyModel::Quant(q) => &q.normalization,
        };
        if &given != own {
            return Err(Error::option(
                "--mean/--std/--input-scale",
                format!(
                    "{} was trained with {} (the flags set preprocessing of ONNX imports only)",
                    path.display(),
                    own.as_ref().map_or("pixels / 255".into(), |n| format!(
                        "mean {:?} and std {:?} (after scaling pixels to [0, 1])",
                        n.mean, n.std
                    ))
                ),
            ));
        }
    }
    Ok(model)
}
