//! The `.lbq` deployable model file: a safetensors container (see `docs/FORMAT.md` for the byte layout).
//!
//! `__metadata__` holds `format = "lowbit.lbq"`, `format_version = "3"` and `model`, a JSON document with the
//! graph and its scalar parameters: the input, then `nodes`, each with a `name`, the names of the values it reads
//! (`"input"` or an earlier node) and its `op` (shapes, bit widths, activation scales and zero points), and the
//! provenance. Tensors, for every Dense and Conv2d node `N`: `N.weight` (U8 packed codes, shape
//! `[rows, row_bytes]`), `N.bias` (I32, `[rows]`), `N.weight_scales` (F32, `[1 or rows]`) and, when the node
//! requantizes, `N.requant` (I32, `[1 or rows, 2]`: multiplier, shift).
//!
//! Versions 1 and 2 held a chain, `layers` instead of `nodes`, read as nodes named `layers.{i}` (which are also
//! their tensors' prefixes); version 1 kept the per-channel scales and requantization in the JSON as text (about
//! 4.5 KB for the MLP, a sixth of a 4-bit model's file). Both are still read.
//!
//! The reader treats its input as untrusted: sizes are capped before anything is allocated, arithmetic is
//! checked, every field is validated, and the graph is finally checked by [`graph::check`], the validation the
//! engine runs. It never panics (this module denies `unwrap`, `expect` and slice indexing).
//!
//! (Over 800 lines on purpose: every check the reader makes on a hostile file, limits before allocation, sits in
//! this one module beside the writer it mirrors, so the fuzzed surface is one file to audit.)
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::error::FormatError;
use crate::graph;
use crate::model::{
    InputSpec, Normalization, OutputStage, Provenance, QAdd, QAvgPool2d, QConcat, QConv2d, QDense,
    QLut, QMaxPool2d, QNode, QOp, QPad, QSlice, QuantModel,
};
use crate::pack::{row_bytes, PackedWeights, Packing};
use crate::qparams::{QParams, Requant};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::{SafeTensorError, SafeTensors};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::Path;

/// Value of the `format` metadata key of a quantized model file.
pub const FORMAT_NAME: &str = "lowbit.lbq";
/// Format version this build writes and the highest it reads (it reads every version from 1).
pub const FORMAT_VERSION: u32 = 3;
/// Largest JSON header accepted (safetensors itself allows 100 MB).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;
/// Largest file [`load`] reads.
pub const MAX_FILE_BYTES: u64 = 1 << 31;
/// Most nodes (layers) in a model.
pub const MAX_LAYERS: usize = 1024;
/// Most inputs of one node.
pub const MAX_NODE_INPUTS: usize = 64;
/// Longest node name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// The name by which nodes refer to the network input (no node may take it).
pub const INPUT_NAME: &str = "input";
/// Largest single dimension or count (channels, features, rows, kernel size, classes, list lengths).
pub const MAX_DIM: usize = 1 << 20;
/// Largest tensor, in elements.
pub const MAX_TENSOR_ELEMS: usize = 1 << 28;
/// Largest per-sample buffer the engine may need for the model (activations, im2col scratch), in elements.
pub const MAX_SAMPLE_ELEMS: usize = 1 << 26;
/// Largest sum of every value's per-sample elements: each value is bounded by [`MAX_SAMPLE_ELEMS`], but a run
/// keeps many alive at once (a traced run all of them), so 1024 nodes could otherwise ask for 64 GB per sample.
pub const MAX_TOTAL_SAMPLE_ELEMS: usize = 1 << 28;

const META_KEY: &str = "__metadata__";

// ---------------------------------------------------------------------------------------------------------------
// Metadata JSON (the model without its arrays). Scales are written as f64 so they survive any JSON parser exactly:
// every f32 is an f64, and the nearest f32 of a one-ulp-off f64 is still the original. The per-channel arrays
// (`weight_scales`, `requant`) are tensors since version 2 and JSON fields in version 1, hence the options.

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QpMeta {
    scale: f64,
    zero_point: i32,
}

impl QpMeta {
    fn from_qp(qp: QParams) -> Self {
        Self {
            scale: qp.scale as f64,
            zero_point: qp.zero_point,
        }
    }
    fn to_qp(&self) -> QParams {
        // Deliberately unvalidated here: the engine reports invalid scales with the tensor name.
        QParams {
            scale: self.scale as f32,
            zero_point: self.zero_point,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputMeta {
    channels: usize,
    height: usize,
    width: usize,
    scale: f64,
    zero_point: i32,
    // Optional within version 3: written only for models trained on normalised inputs, so other files are
    // unchanged, and a reader that predates them rejects such a file (unknown field) rather than feeding it pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mean: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    std: Option<Vec<f32>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsMeta {
    bits: u32,
    packing: Packing,
    rows: usize,
    cols: usize,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
enum OutputMeta {
    #[serde(rename = "requantize")]
    Requantize {
        scale: f64,
        zero_point: i32,
        bits: u32,
        relu: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requant: Option<Vec<Requant>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_code: Option<i32>,
    },
    // A struct variant, so that `deny_unknown_fields` applies (a unit variant would accept any extra field).
    #[serde(rename = "logits")]
    Logits {},
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
enum LayerMeta {
    #[serde(rename = "dense")]
    Dense {
        in_features: usize,
        out_features: usize,
        weights: WeightsMeta,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight_scales: Option<Vec<f64>>,
        input: QpMeta,
        output: OutputMeta,
    },
    #[serde(rename = "conv2d")]
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        #[serde(default, skip_serializing_if = "is_one")]
        groups: Option<usize>,
        weights: WeightsMeta,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight_scales: Option<Vec<f64>>,
        input: QpMeta,
        output: OutputMeta,
    },
    #[serde(rename = "max_pool2d")]
    MaxPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
    },
    #[serde(rename = "avg_pool2d")]
    AvgPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        input: QpMeta,
        output: QpMeta,
        bits: u32,
    },
    #[serde(rename = "flatten")]
    Flatten,
    #[serde(rename = "add")]
    Add {
        inputs: [QpMeta; 2],
        output: QpMeta,
        bits: u32,
        relu: bool,
    },
    #[serde(rename = "concat")]
    Concat {
        inputs: Vec<QpMeta>,
        output: QpMeta,
        bits: u32,
    },
    #[serde(rename = "pad")]
    Pad {
        channels: [usize; 2],
        rows: [usize; 2],
        cols: [usize; 2],
    },
    #[serde(rename = "slice")]
    Slice {
        channels: [usize; 3],
        rows: [usize; 3],
        cols: [usize; 3],
    },
    #[serde(rename = "lut")]
    Lut {
        input: QpMeta,
        output: QpMeta,
        bits: u32,
    },
}

/// Groups are written only when not 1 (so files of full convolutions read as before).
fn is_one(g: &Option<usize>) -> bool {
    g.is_none_or(|g| g == 1)
}

/// The model JSON of versions 1 and 2: a chain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainMeta {
    input: InputMeta,
    classes: usize,
    class_names: Vec<String>,
    layers: Vec<LayerMeta>,
    provenance: Provenance,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeMeta {
    name: String,
    inputs: Vec<String>,
    op: LayerMeta,
}

/// The model JSON since version 3: a graph.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelMeta {
    input: InputMeta,
    classes: usize,
    class_names: Vec<String>,
    nodes: Vec<NodeMeta>,
    provenance: Provenance,
}

fn weights_meta(w: &PackedWeights) -> WeightsMeta {
    WeightsMeta {
        bits: w.bits,
        packing: w.packing,
        rows: w.rows,
        cols: w.cols,
    }
}

fn output_meta(o: &OutputStage) -> OutputMeta {
    match o {
        OutputStage::Logits => OutputMeta::Logits {},
        OutputStage::Requantize {
            qparams,
            bits,
            relu,
            max_code,
            ..
        } => OutputMeta::Requantize {
            scale: qparams.scale as f64,
            zero_point: qparams.zero_point,
            bits: *bits,
            relu: *relu,
            requant: None,
            max_code: *max_code,
        },
    }
}

fn output_stage(
    o: OutputMeta,
    t: &mut LayerTensors<'_, '_>,
    rows: usize,
) -> Result<OutputStage, FormatError> {
    Ok(match o {
        OutputMeta::Logits {} => OutputStage::Logits,
        OutputMeta::Requantize {
            scale,
            zero_point,
            bits,
            relu,
            requant,
            max_code,
        } => OutputStage::Requantize {
            qparams: QParams {
                scale: scale as f32,
                zero_point,
            },
            bits,
            relu,
            requant: t.requant(requant, rows)?,
            max_code,
        },
    })
}

fn pair(p: (usize, usize)) -> [usize; 2] {
    [p.0, p.1]
}

fn unpair(p: [usize; 2]) -> (usize, usize) {
    let [a, b] = p;
    (a, b)
}

fn layer_meta(op: &QOp) -> LayerMeta {
    match op {
        QOp::Dense(d) => LayerMeta::Dense {
            in_features: d.in_features,
            out_features: d.out_features,
            weights: weights_meta(&d.weights),
            weight_scales: None,
            input: QpMeta::from_qp(d.input),
            output: output_meta(&d.output),
        },
        QOp::Conv2d(c) => LayerMeta::Conv2d {
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            kernel: pair(c.kernel),
            stride: pair(c.stride),
            padding: pair(c.padding),
            groups: Some(c.groups),
            weights: weights_meta(&c.weights),
            weight_scales: None,
            input: QpMeta::from_qp(c.input),
            output: output_meta(&c.output),
        },
        QOp::MaxPool2d(p) => LayerMeta::MaxPool2d {
            kernel: pair(p.kernel),
            stride: pair(p.stride),
        },
        QOp::AvgPool2d(p) => LayerMeta::AvgPool2d {
            kernel: pair(p.kernel),
            stride: pair(p.stride),
            input: QpMeta::from_qp(p.input),
            output: QpMeta::from_qp(p.output),
            bits: p.bits,
        },
        QOp::Flatten => LayerMeta::Flatten,
        QOp::Add(a) => LayerMeta::Add {
            inputs: a.inputs.map(QpMeta::from_qp),
            output: QpMeta::from_qp(a.output),
            bits: a.bits,
            relu: a.relu,
        },
        QOp::Concat(c) => LayerMeta::Concat {
            inputs: c.inputs.iter().map(|&q| QpMeta::from_qp(q)).collect(),
            output: QpMeta::from_qp(c.output),
            bits: c.bits,
        },
        QOp::Pad(p) => LayerMeta::Pad {
            channels: pair(p.channels),
            rows: pair(p.rows),
            cols: pair(p.cols),
        },
        QOp::Slice(sl) => LayerMeta::Slice {
            channels: sl.channels,
            rows: sl.rows,
            cols: sl.cols,
        },
        QOp::Lut(l) => LayerMeta::Lut {
            input: QpMeta::from_qp(l.input),
            output: QpMeta::from_qp(l.output),
            bits: l.bits,
        },
    }
}

/// The name by which nodes refer to value `v`.
fn value_name(model: &QuantModel, v: usize) -> String {
    match v.checked_sub(1).and_then(|i| model.nodes.get(i)) {
        Some(n) => n.name.clone(),
        None => INPUT_NAME.to_string(),
    }
}

fn model_meta(model: &QuantModel) -> ModelMeta {
    let nodes = model
        .nodes
        .iter()
        .map(|n| NodeMeta {
            name: n.name.clone(),
            inputs: n.inputs.iter().map(|&v| value_name(model, v)).collect(),
            op: layer_meta(&n.op),
        })
        .collect();
    ModelMeta {
        input: InputMeta {
            channels: model.input.channels,
            height: model.input.height,
            width: model.input.width,
            scale: model.input.qparams.scale as f64,
            zero_point: model.input.qparams.zero_point,
            mean: model.normalization.as_ref().map(|n| n.mean.clone()),
            std: model.normalization.as_ref().map(|n| n.std.clone()),
        },
        classes: model.classes,
        class_names: model.class_names.clone(),
        nodes,
        provenance: model.provenance.clone(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Limits, checked on the metadata before any tensor is touched (and by the writer, so that everything written
// can be read back).

fn limit(what: &str, value: usize, max: usize) -> Result<(), FormatError> {
    if value > max {
        return Err(FormatError::LimitExceeded {
            what: what.to_string(),
            value: value as u64,
            max: max as u64,
        });
    }
    Ok(())
}

fn dims(what: &str, values: &[usize]) -> Result<(), FormatError> {
    values.iter().try_for_each(|&v| limit(what, v, MAX_DIM))
}

fn check_weights_limits(name: &str, w: &WeightsMeta) -> Result<usize, FormatError> {
    dims(&format!("{name}.weight dims"), &[w.rows, w.cols])?;
    let rb = row_bytes(w.packing, w.cols);
    let elems = w.rows.saturating_mul(rb);
    limit(&format!("{name}.weight elements"), elems, MAX_TENSOR_ELEMS)?;
    Ok(rb)
}

fn check_output_limits(name: &str, o: &OutputMeta) -> Result<(), FormatError> {
    if let OutputMeta::Requantize {
        requant: Some(requant),
        ..
    } = o
    {
        limit(&format!("{name}.requant length"), requant.len(), MAX_DIM)?;
    }
    Ok(())
}

/// The limits of one op's metadata (named `name` in errors).
fn check_layer_limits(name: &str, l: &LayerMeta) -> Result<(), FormatError> {
    let what = format!("{name} dims");
    match l {
        LayerMeta::Dense {
            in_features,
            out_features,
            weights,
            weight_scales,
            output,
            ..
        } => {
            dims(&what, &[*in_features, *out_features])?;
            dims(&what, &[weight_scales.as_ref().map_or(0, Vec::len)])?;
            check_weights_limits(name, weights)?;
            check_output_limits(name, output)?;
        }
        LayerMeta::Conv2d {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            groups,
            weights,
            weight_scales,
            output,
            ..
        } => {
            dims(&what, &[*in_channels, *out_channels])?;
            dims(&what, &[weight_scales.as_ref().map_or(0, Vec::len)])?;
            dims(&what, kernel)?;
            dims(&what, stride)?;
            dims(&what, padding)?;
            dims(&what, &[groups.unwrap_or(1)])?;
            check_weights_limits(name, weights)?;
            check_output_limits(name, output)?;
        }
        LayerMeta::MaxPool2d { kernel, stride } | LayerMeta::AvgPool2d { kernel, stride, .. } => {
            dims(&what, kernel)?;
            dims(&what, stride)?;
        }
        LayerMeta::Flatten | LayerMeta::Add { .. } | LayerMeta::Lut { .. } => {}
        LayerMeta::Concat { inputs, .. } => {
            limit(&format!("{name} inputs"), inputs.len(), MAX_NODE_INPUTS)?;
        }
        LayerMeta::Pad {
            channels,
            rows,
            cols,
        } => {
            dims(&what, channels)?;
            dims(&what, rows)?;
            dims(&what, cols)?;
        }
        LayerMeta::Slice {
            channels,
            rows,
            cols,
        } => {
            dims(&what, channels)?;
            dims(&what, rows)?;
            dims(&what, cols)?;
        }
    }
    Ok(())
}

/// The limits of the parts every version shares.
fn check_model_limits(
    input: &InputMeta,
    classes: usize,
    names: usize,
    ops: usize,
) -> Result<(), FormatError> {
    limit("layers", ops, MAX_LAYERS)?;
    dims("input dims", &[input.channels, input.height, input.width])?;
    dims("classes", &[classes, names])
}

fn check_limits(meta: &ModelMeta) -> Result<(), FormatError> {
    check_model_limits(
        &meta.input,
        meta.classes,
        meta.class_names.len(),
        meta.nodes.len(),
    )?;
    for (i, n) in meta.nodes.iter().enumerate() {
        if n.name.is_empty() || n.name.len() > MAX_NAME_BYTES || n.name == INPUT_NAME {
            return Err(FormatError::Malformed(format!(
                "nodes[{i}]: name {:?} must be 1 to {MAX_NAME_BYTES} bytes and not {INPUT_NAME:?}",
                n.name.chars().take(64).collect::<String>()
            )));
        }
        limit(
            &format!("{} inputs", n.name),
            n.inputs.len(),
            MAX_NODE_INPUTS,
        )?;
        check_layer_limits(&n.name, &n.op)?;
    }
    Ok(())
}

fn check_chain_limits(meta: &ChainMeta) -> Result<(), FormatError> {
    check_model_limits(
        &meta.input,
        meta.classes,
        meta.class_names.len(),
        meta.layers.len(),
    )?;
    for (i, l) in meta.layers.iter().enumerate() {
        check_layer_limits(&format!("layers.{i}"), l)?;
    }
    Ok(())
}

fn check_graph_limits(info: &graph::GraphInfo) -> Result<(), FormatError> {
    limit(
        "per-sample engine buffer elements",
        info.max_sample_elems,
        MAX_SAMPLE_ELEMS,
    )?;
    limit(
        "per-sample activation elements of all nodes",
        info.total_sample_elems,
        MAX_TOTAL_SAMPLE_ELEMS,
    )
}

// ---------------------------------------------------------------------------------------------------------------
// Writer.

/// Serializes `model` to `.lbq` bytes. The model is validated first (the same checks as the reader), so an
/// invalid model is never written.
pub fn to_bytes(model: &QuantModel) -> Result<Vec<u8>, FormatError> {
    let info = graph::check(model)?;
    if let Some(acc) = model.provenance.test_accuracy {
        if !acc.is_finite() {
            return Err(FormatError::Malformed(format!(
                "provenance.test_accuracy {acc} is not finite"
            )));
        }
    }
    let meta = model_meta(model);
    check_limits(&meta)?;
    check_graph_limits(&info)?;
    let model_json = serde_json::to_string(&meta)
        .map_err(|e| FormatError::Malformed(format!("model JSON: {e}")))?;

    let mut tensors: Vec<Tensor> = Vec::new();
    for node in &model.nodes {
        let i = &node.name;
        if let QOp::Lut(l) = &node.op {
            tensors.push((
                format!("{i}.table"),
                "U8",
                vec![l.table.len()],
                l.table.clone(),
            ));
            continue;
        }
        let (w, b, scales, output) = match &node.op {
            QOp::Dense(d) => (&d.weights, &d.bias, &d.weight_scales, &d.output),
            QOp::Conv2d(c) => (&c.weights, &c.bias, &c.weight_scales, &c.output),
            _ => continue,
        };
        let shape = vec![w.rows, row_bytes(w.packing, w.cols)];
        tensors.push((format!("{i}.weight"), "U8", shape, w.data.clone()));
        let bytes: Vec<u8> = b.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((format!("{i}.bias"), "I32", vec![b.len()], bytes));
        let bytes: Vec<u8> = scales.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((
            format!("{i}.weight_scales"),
            "F32",
            vec![scales.len()],
            bytes,
        ));
        if let OutputStage::Requantize { requant, .. } = output {
            let bytes: Vec<u8> = requant
                .iter()
                .flat_map(|r| [r.multiplier, r.shift])
                .flat_map(i32::to_le_bytes)
                .collect();
            tensors.push((format!("{i}.requant"), "I32", vec![requant.len(), 2], bytes));
        }
    }
    let meta = [
        ("format", FORMAT_NAME.to_string()),
        ("format_version", FORMAT_VERSION.to_string()),
        ("model", model_json),
    ];
    container_bytes(&meta, &tensors)
}

/// One tensor for [`container_bytes`]: name, safetensors dtype (`"U8"`, `"I32"`, `"F32"`...), shape, raw
/// little-endian bytes.
pub type Tensor = (String, &'static str, Vec<usize>, Vec<u8>);

/// A safetensors container with `meta` as its `__metadata__` and `tensors` stored in order. Written here rather
/// than by `safetensors::serialize` so that the bytes are a function of the inputs alone (that crate iterates a
/// HashMap for `__metadata__`): the same model gives the same file, byte for byte. Used for `.lbq` files and
/// lowbit's float model files.
pub fn container_bytes(
    meta: &[(&str, String)],
    tensors: &[Tensor],
) -> Result<Vec<u8>, FormatError> {
    let info: serde_json::Map<String, serde_json::Value> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone().into()))
        .collect();
    let mut header = serde_json::Map::new();
    header.insert(META_KEY.into(), serde_json::Value::Object(info));
    let mut offset = 0usize;
    for (name, dtype, shape, data) in tensors {
        let end = offset + data.len();
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| FormatError::Malformed(format!("header JSON: {e}")))?;
    // Pad with spaces so the data section starts 8-byte aligned, as safetensors writers do.
    while (header.len() % 8) != 0 {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// Writes `model` to `path` atomically (see [`write_atomic`]). Serialization happens first, so a model that
/// cannot be written leaves `path` untouched.
pub fn save(model: &QuantModel, path: &Path) -> Result<(), FormatError> {
    let bytes = to_bytes(model)?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// Writes `bytes` to `path` atomically: a new temporary file in the same directory, fsync, rename over `path`,
/// then fsync of the directory where the platform allows it. On any error `path` is untouched and the temporary
/// file is removed. The one atomic writer of lowbit (model files, reports, plots).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Persist the rename itself; not every platform can open a directory, so failure here is not an error.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Reader.

fn st_malformed(e: SafeTensorError) -> FormatError {
    FormatError::Malformed(format!("safetensors: {e}"))
}

fn json_malformed(what: &str, e: serde_json::Error) -> FormatError {
    FormatError::Malformed(format!("{what}: {e}"))
}

/// A JSON object whose keys must be unique (serde_json's maps silently keep the last duplicate).
struct UniqueMap<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object with unique keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    out.push((k, v));
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

/// Only the metadata part of the header, with its keys checked for duplicates.
#[derive(Deserialize)]
struct MetaOnly {
    #[serde(rename = "__metadata__")]
    metadata: Option<UniqueMap<String>>,
}

/// The parsed safetensors header: its metadata and the end offset of the data section.
pub struct Header {
    /// The `__metadata__` entries (empty if there are none).
    pub metadata: HashMap<String, String>,
    /// Bytes of the JSON header (after the 8 length bytes).
    pub header_len: u64,
    /// Bytes the tensors' `data_offsets` need after the header (the largest end offset).
    pub data_bytes: u64,
}

/// Parses a safetensors container's header without validating its tensors: a cut file is reported as
/// [`FormatError::Truncated`] (header) here, and the caller can compare `8 + header_len + data_bytes` with the
/// file length to report a cut data section the same way.
pub fn parse_header(bytes: &[u8]) -> Result<Header, FormatError> {
    let available = bytes.len() as u64;
    let len_bytes: [u8; 8] =
        bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or(FormatError::Truncated {
                section: "header length".into(),
                needed: 8,
                available,
            })?;
    // A safetensors header is a JSON object; anything else is not our file at all.
    match bytes.get(8) {
        Some(b'{') | None => {}
        Some(&b) => {
            return Err(FormatError::BadMagic {
                found: format!("header starting with byte 0x{b:02x}"),
            })
        }
    }
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(FormatError::LimitExceeded {
            what: "header bytes".into(),
            value: header_len,
            max: MAX_HEADER_BYTES,
        });
    }
    let end = 8 + header_len; // cannot overflow: header_len <= MAX_HEADER_BYTES
    let header = usize::try_from(end)
        .ok()
        .and_then(|e| bytes.get(8..e))
        .ok_or(FormatError::Truncated {
            section: "header".into(),
            needed: end,
            available,
        })?;
    let text = std::str::from_utf8(header)
        .map_err(|e| FormatError::Malformed(format!("header is not UTF-8: {e}")))?;
    let entries: UniqueMap<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| json_malformed("header JSON", e))?;
    let meta: MetaOnly =
        serde_json::from_str(text).map_err(|e| json_malformed("header __metadata__", e))?;
    let mut data_bytes = 0u64;
    for (name, v) in &entries.0 {
        if name == META_KEY {
            continue;
        }
        let end_offset = v
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(|e| e.as_u64())
            .ok_or_else(|| {
                FormatError::Malformed(format!("tensor {name:?} has no data_offsets"))
            })?;
        data_bytes = data_bytes.max(end_offset);
    }
    Ok(Header {
        metadata: meta
            .metadata
            .map(|m| m.0.into_iter().collect())
            .unwrap_or_default(),
        header_len,
        data_bytes,
    })
}

/// The `__metadata__` of a safetensors file (empty if it has none), reading only the header. Lets callers tell
/// a quantized (`format = "lowbit.lbq"`) file from a float (`"lowbit.f32"`) one.
pub fn read_metadata(bytes: &[u8]) -> Result<HashMap<String, String>, FormatError> {
    Ok(parse_header(bytes)?.metadata)
}

/// [`read_metadata`] of the file at `path`, reading only its header (at most `8 + MAX_HEADER_BYTES` bytes).
pub fn read_file_metadata(path: &Path) -> Result<HashMap<String, String>, FormatError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut head = Vec::new();
    (&mut f).take(8).read_to_end(&mut head)?;
    let len = head
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
        .min(MAX_HEADER_BYTES);
    // A longer header is reported by `parse_header` from the length bytes alone.
    f.take(len).read_to_end(&mut head)?;
    read_metadata(&head)
}

/// Whether `bytes` look like a `.lbq` file (a safetensors header with `format = "lowbit.lbq"`); does not
/// validate the model.
pub fn is_lbq(bytes: &[u8]) -> bool {
    read_metadata(bytes)
        .map(|m| m.get("format").map(String::as_str) == Some(FORMAT_NAME))
        .unwrap_or(false)
}

fn tensor<'a>(st: &'a SafeTensors<'a>, name: &str) -> Result<TensorView<'a>, FormatError> {
    st.tensor(name)
        .map_err(|_| FormatError::Malformed(format!("missing tensor {name:?}")))
}

/// Tensor `name`, which must have `dtype` and a shape `shape_ok` accepts (`want` describes it for the error).
fn typed<'a>(
    st: &'a SafeTensors<'a>,
    name: &str,
    dtype: Dtype,
    want: &str,
    shape_ok: impl Fn(&[usize]) -> bool,
) -> Result<TensorView<'a>, FormatError> {
    let t = tensor(st, name)?;
    if t.dtype() != dtype {
        return Err(FormatError::Malformed(format!(
            "{name} has dtype {:?}, expected {dtype:?}",
            t.dtype()
        )));
    }
    if !shape_ok(t.shape()) {
        return Err(FormatError::Malformed(format!(
            "{name} has shape {:?}, expected {want}",
            t.shape()
        )));
    }
    Ok(t)
}

/// The 4-byte little-endian words of a tensor's data (`I32` / `F32`; safetensors checked the length).
fn le_words(data: &[u8]) -> impl Iterator<Item = [u8; 4]> + '_ {
    data.chunks_exact(4)
        .filter_map(|c| <[u8; 4]>::try_from(c).ok())
}

/// Reads node `node`'s tensors (`{node}.weight`...) for the file's format version, recording every name it
/// expects.
struct LayerTensors<'a, 'e> {
    st: &'a SafeTensors<'a>,
    node: &'e str,
    version: u32,
    expected: &'e mut HashSet<String>,
}

impl<'a> LayerTensors<'a, '_> {
    fn name(&mut self, what: &str) -> String {
        let name = format!("{}.{what}", self.node);
        self.expected.insert(name.clone());
        name
    }

    fn weights(&mut self, w: &WeightsMeta) -> Result<PackedWeights, FormatError> {
        let name = self.name("weight");
        let rb = row_bytes(w.packing, w.cols);
        let want = format!("[{}, {rb}]", w.rows);
        let t = typed(self.st, &name, Dtype::U8, &want, |s| s == [w.rows, rb])?;
        Ok(PackedWeights {
            bits: w.bits,
            packing: w.packing,
            rows: w.rows,
            cols: w.cols,
            data: t.data().to_vec(),
        })
    }

    fn bias(&mut self, rows: usize) -> Result<Vec<i32>, FormatError> {
        let name = self.name("bias");
        let t = typed(self.st, &name, Dtype::I32, &format!("[{rows}]"), |s| {
            s == [rows]
        })?;
        Ok(le_words(t.data()).map(i32::from_le_bytes).collect())
    }

    /// A per-channel array: from the JSON in version 1, from tensor `what` afterwards (the engine checks lengths).
    fn per_channel<J, T>(
        &mut self,
        what: &str,
        json: Option<Vec<J>>,
        from_json: impl Fn(J) -> T,
        read: impl FnOnce(&'a SafeTensors<'a>, &str) -> Result<Vec<T>, FormatError>,
    ) -> Result<Vec<T>, FormatError> {
        let node = self.node;
        match (self.version, json) {
            (1, Some(v)) => Ok(v.into_iter().map(from_json).collect()),
            (1, None) => Err(FormatError::Malformed(format!(
                "{node}: format version 1 needs {what:?} in the model JSON"
            ))),
            (_, Some(_)) => Err(FormatError::Malformed(format!(
                "{node}: {what:?} is a tensor since format version 2, not a JSON field"
            ))),
            (_, None) => {
                let name = self.name(what);
                read(self.st, &name)
            }
        }
    }

    /// A table op's 256 codes, `[256]`.
    fn table(&mut self) -> Result<Vec<u8>, FormatError> {
        let name = self.name("table");
        let t = typed(self.st, &name, Dtype::U8, "[256]", |s| s == [256])?;
        Ok(t.data().to_vec())
    }

    /// Scales per output row, `[1]` (per-tensor) or `[rows]`.
    fn weight_scales(
        &mut self,
        json: Option<Vec<f64>>,
        rows: usize,
    ) -> Result<Vec<f32>, FormatError> {
        self.per_channel(
            "weight_scales",
            json,
            |x| x as f32,
            |st, name| {
                let want = format!("[1] or [{rows}]");
                let t = typed(st, name, Dtype::F32, &want, |s| s == [1] || s == [rows])?;
                Ok(le_words(t.data()).map(f32::from_le_bytes).collect())
            },
        )
    }

    /// Multiplier and shift per output row, `[1, 2]` (per-tensor) or `[rows, 2]`.
    fn requant(
        &mut self,
        json: Option<Vec<Requant>>,
        rows: usize,
    ) -> Result<Vec<Requant>, FormatError> {
        self.per_channel(
            "requant",
            json,
            |r| r,
            |st, name| {
                let want = format!("[1, 2] or [{rows}, 2]");
                let t = typed(st, name, Dtype::I32, &want, |s| {
                    s == [1, 2] || s == [rows, 2]
                })?;
                let mut words = le_words(t.data()).map(i32::from_le_bytes);
                Ok(std::iter::from_fn(|| {
                    Some(Requant {
                        multiplier: words.next()?,
                        shift: words.next()?,
                    })
                })
                .collect())
            },
        )
    }
}

/// Parses and fully validates a `.lbq` file held in memory.
pub fn from_bytes(bytes: &[u8]) -> Result<QuantModel, FormatError> {
    let header = parse_header(bytes)?;
    let format = header
        .metadata
        .get("format")
        .ok_or_else(|| FormatError::BadMagic {
            found: "no \"format\" metadata key".into(),
        })?;
    if format != FORMAT_NAME {
        return Err(FormatError::BadMagic {
            found: format!("format = {format:?}"),
        });
    }
    let version = header
        .metadata
        .get("format_version")
        .ok_or_else(|| FormatError::Malformed("no \"format_version\" metadata key".into()))?;
    // Canonical decimal only ("2", not "+2" or "02"), so that one version has one spelling.
    let version: u32 = version
        .parse()
        .ok()
        .filter(|v: &u32| v.to_string() == *version)
        .ok_or_else(|| {
            FormatError::Malformed(format!("format_version {version:?} is not an integer"))
        })?;
    if version == 0 || version > FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            max: FORMAT_VERSION,
        });
    }
    let available = bytes.len() as u64;
    // `data_bytes` comes from the file: a hostile end offset near u64::MAX must not wrap.
    let needed = (8 + header.header_len).saturating_add(header.data_bytes);
    if needed > available {
        return Err(FormatError::Truncated {
            section: "tensor data".into(),
            needed,
            available,
        });
    }
    let model_json = header
        .metadata
        .get("model")
        .ok_or_else(|| FormatError::Malformed("no \"model\" metadata key".into()))?;
    // Nodes with their op metadata and input value ids; versions 1 and 2 are chains.
    let (input, classes, class_names, provenance, nodes) = if version < 3 {
        let meta: ChainMeta =
            serde_json::from_str(model_json).map_err(|e| json_malformed("model JSON", e))?;
        check_chain_limits(&meta)?;
        let nodes: Vec<(String, Vec<usize>, LayerMeta)> = meta
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| (format!("layers.{i}"), vec![i], l))
            .collect();
        (
            meta.input,
            meta.classes,
            meta.class_names,
            meta.provenance,
            nodes,
        )
    } else {
        let meta: ModelMeta =
            serde_json::from_str(model_json).map_err(|e| json_malformed("model JSON", e))?;
        check_limits(&meta)?;
        // A node may only read the input or an earlier node: resolving names in order rejects cycles, unsorted
        // graphs and dangling references alike.
        let mut ids: HashMap<String, usize> = HashMap::new();
        ids.insert(INPUT_NAME.to_string(), 0);
        let mut nodes = Vec::with_capacity(meta.nodes.len());
        for (i, n) in meta.nodes.into_iter().enumerate() {
            let inputs = n
                .inputs
                .iter()
                .map(|v| {
                    ids.get(v).copied().ok_or_else(|| {
                        FormatError::Quant(crate::QuantError::ShapeMismatch {
                            context: n.name.clone(),
                            detail: format!(
                                "input {:?} is not the input or an earlier node (a cycle, an unsorted graph or a \
                                 dangling reference)",
                                v.chars().take(64).collect::<String>()
                            ),
                        })
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if ids.insert(n.name.clone(), i + 1).is_some() {
                return Err(FormatError::Quant(crate::QuantError::ShapeMismatch {
                    context: n.name,
                    detail: "duplicate node name".into(),
                }));
            }
            nodes.push((n.name, inputs, n.op));
        }
        (
            meta.input,
            meta.classes,
            meta.class_names,
            meta.provenance,
            nodes,
        )
    };

    let st = SafeTensors::deserialize(bytes).map_err(st_malformed)?;
    let mut expected: HashSet<String> = HashSet::new();
    let mut qnodes = Vec::with_capacity(nodes.len());
    for (name, inputs, l) in nodes {
        let mut t = LayerTensors {
            st: &st,
            node: &name,
            version,
            expected: &mut expected,
        };
        let op = op_from_meta(l, &mut t)?;
        qnodes.push(QNode { name, inputs, op });
    }
    if let Some(extra) = st
        .names()
        .into_iter()
        .find(|n| !expected.contains(n.as_str()))
    {
        return Err(FormatError::Malformed(format!(
            "unexpected tensor {extra:?}"
        )));
    }
    let normalization = match (input.mean, input.std) {
        (None, None) => None,
        (Some(mean), Some(std)) => {
            let n = Normalization { mean, std };
            n.check_channels(input.channels)?;
            Some(n)
        }
        _ => {
            return Err(FormatError::Malformed(
                "input has a mean without a std, or a std without a mean".into(),
            ))
        }
    };
    let model = QuantModel {
        input: InputSpec {
            channels: input.channels,
            height: input.height,
            width: input.width,
            qparams: QParams {
                scale: input.scale as f32,
                zero_point: input.zero_point,
            },
        },
        nodes: qnodes,
        classes,
        class_names,
        provenance,
        normalization,
    };
    let info = graph::check(&model)?;
    check_graph_limits(&info)?;
    Ok(model)
}

/// One op from its metadata and its tensors.
fn op_from_meta(l: LayerMeta, t: &mut LayerTensors<'_, '_>) -> Result<QOp, FormatError> {
    Ok(match l {
        LayerMeta::Dense {
            in_features,
            out_features,
            weights,
            weight_scales,
            input,
            output,
        } => QOp::Dense(QDense {
            in_features,
            out_features,
            bias: t.bias(weights.rows)?,
            weights: t.weights(&weights)?,
            weight_scales: t.weight_scales(weight_scales, weights.rows)?,
            input: input.to_qp(),
            output: output_stage(output, t, weights.rows)?,
        }),
        LayerMeta::Conv2d {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            groups,
            weights,
            weight_scales,
            input,
            output,
        } => QOp::Conv2d(QConv2d {
            in_channels,
            out_channels,
            kernel: unpair(kernel),
            stride: unpair(stride),
            padding: unpair(padding),
            groups: groups.unwrap_or(1),
            bias: t.bias(weights.rows)?,
            weights: t.weights(&weights)?,
            weight_scales: t.weight_scales(weight_scales, weights.rows)?,
            input: input.to_qp(),
            output: output_stage(output, t, weights.rows)?,
        }),
        LayerMeta::MaxPool2d { kernel, stride } => QOp::MaxPool2d(QMaxPool2d {
            kernel: unpair(kernel),
            stride: unpair(stride),
        }),
        LayerMeta::AvgPool2d {
            kernel,
            stride,
            input,
            output,
            bits,
        } => QOp::AvgPool2d(QAvgPool2d {
            kernel: unpair(kernel),
            stride: unpair(stride),
            input: input.to_qp(),
            output: output.to_qp(),
            bits,
        }),
        LayerMeta::Flatten => QOp::Flatten,
        LayerMeta::Add {
            inputs,
            output,
            bits,
            relu,
        } => QOp::Add(QAdd {
            inputs: [inputs[0].to_qp(), inputs[1].to_qp()],
            output: output.to_qp(),
            bits,
            relu,
        }),
        LayerMeta::Concat {
            inputs,
            output,
            bits,
        } => QOp::Concat(QConcat {
            inputs: inputs.iter().map(QpMeta::to_qp).collect(),
            output: output.to_qp(),
            bits,
        }),
        LayerMeta::Pad {
            channels,
            rows,
            cols,
        } => QOp::Pad(QPad {
            channels: unpair(channels),
            rows: unpair(rows),
            cols: unpair(cols),
        }),
        LayerMeta::Slice {
            channels,
            rows,
            cols,
        } => QOp::Slice(QSlice {
            channels,
            rows,
            cols,
        }),
        LayerMeta::Lut {
            input,
            output,
            bits,
        } => QOp::Lut(QLut {
            input: input.to_qp(),
            output: output.to_qp(),
            bits,
            table: t.table()?,
        }),
    })
}

/// Reads and validates a `.lbq` file (at most [`MAX_FILE_BYTES`]).
pub fn load(path: &Path) -> Result<QuantModel, FormatError> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_FILE_BYTES {
        return Err(FormatError::LimitExceeded {
            what: format!("{} bytes", path.display()),
            value: len,
            max: MAX_FILE_BYTES,
        });
    }
    let bytes = std::fs::read(path)?;
    from_bytes(&bytes)
}
