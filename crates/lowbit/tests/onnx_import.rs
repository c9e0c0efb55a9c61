//! ONNX import: the fixtures of `tests/fixtures/onnx/` (made by `bench/peers/make_onnx_fixtures.py` with
//! torch.onnx.export, the `keras_*` ones by `bench/peers/make_keras_fixture.py` with tf2onnx, each with ONNX
//! Runtime's outputs for one input batch) give ONNX Runtime's outputs, and bad files give typed errors.
use lowbit::modelfile::{float_from_bytes, float_to_bytes};
use lowbit::nn::Layer;
use lowbit::onnx::proto::{tensor_proto::DataLocation, ModelProto};
use lowbit::onnx::{import_bytes, OnnxError};
use lowbit::tensor::Tensor;
use lowbit_runtime::model::Provenance;
use prost::Message;
use std::path::{Path, PathBuf};

/// Largest difference allowed between lowbit's and ONNX Runtime's outputs, relative to the largest absolute
/// output: the acceptance bound. Both sum the same f32 products in different orders; over the longest
/// dot products here (K = 784) the reordering error is a few ulps of the partial sums, ~1e-6 relative, so 1e-4
/// leaves two orders of magnitude while any real mistake (a transposed weight, a lost bias, a wrong pad) moves
/// outputs by percent.
const RELATIVE_TOLERANCE: f32 = 1e-4;

const FIXTURES: [&str; 9] = [
    "mlp",
    "lenet",
    "resnet_a",
    "resnet_b_unfolded",
    "dwsep",
    "edge_ops",
    "nhwc_keras",
    "keras_cnn",
    "keras_color",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx")
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

struct Fixture {
    bytes: Vec<u8>,
    input: Tensor,
    expected: Vec<f32>,
    output: String,
    opset: i64,
}

fn fixture(name: &str) -> Fixture {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir().join(format!("{name}.json"))).unwrap())
            .unwrap();
    let shape: Vec<usize> = meta["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let mut input = read_f32(&dir().join(format!("{name}.input.f32")));
    let mut shape = shape;
    // An NHWC fixture's batch, as lowbit's (NCHW) model reads it: the input transposes fold at import.
    if meta["layout"] == "nhwc" {
        let [n, h, w, c] = shape[..] else {
            panic!("{name}: NHWC input of shape {shape:?}")
        };
        input = nhwc_to_nchw(&input, [n, h, w, c]);
        shape = vec![n, c, h, w];
    }
    Fixture {
        bytes: std::fs::read(dir().join(format!("{name}.onnx"))).unwrap(),
        input: Tensor::new(input, shape),
        expected: read_f32(&dir().join(format!("{name}.output.f32"))),
        output: meta["output"].as_str().unwrap().to_string(),
        opset: meta["opset"].as_i64().unwrap(),
    }
}

fn nhwc_to_nchw(x: &[f32], [n, h, w, c]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for b in 0..n {
        for y in 0..h {
            for xx in 0..w {
                for ch in 0..c {
                    out[((b * c + ch) * h + y) * w + xx] = x[((b * h + y) * w + xx) * c + ch];
                }
            }
        }
    }
    out
}

/// What ONNX Runtime computed from the logits: the logits, or the trailing op the importer dropped.
fn as_exported(logits: &Tensor, output: &str) -> Vec<f32> {
    let c = logits.row_len();
    let mut out = Vec::new();
    for row in logits.data.chunks(c) {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|v| (v - m).exp()).sum();
        match output {
            "logits" => out.extend_from_slice(row),
            "softmax" => out.extend(row.iter().map(|v| (v - m).exp() / sum)),
            "log_softmax" => out.extend(row.iter().map(|v| v - m - sum.ln())),
            other => panic!("unknown fixture output {other}"),
        }
    }
    out
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: output length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= RELATIVE_TOLERANCE * scale,
            "{name}: output {i}: lowbit {g}, ONNX Runtime {w} (largest |output| {scale})"
        );
    }
}

#[test]
fn every_fixture_gives_onnx_runtimes_outputs() {
    for name in FIXTURES {
        let f = fixture(name);
        let mut model = import_bytes(&f.bytes, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let logits = model.forward(&f.input, false).unwrap();
        assert_close(name, &as_exported(&logits, &f.output), &f.expected);
    }
}

#[test]
fn imported_models_round_trip_through_the_float_file() {
    for name in FIXTURES {
        let f = fixture(name);
        let mut model = import_bytes(&f.bytes, name).unwrap();
        let bytes = float_to_bytes(&model, &Provenance::default()).unwrap();
        let (mut back, _) = float_from_bytes(&bytes, Path::new("x.f32")).unwrap();
        let a = model.forward(&f.input, false).unwrap();
        let b = back.forward(&f.input, false).unwrap();
        assert_eq!(a.data, b.data, "{name}");
    }
}

#[test]
fn an_nhwc_input_and_a_transpose_pair_fold_away() {
    let f = fixture("nhwc_keras");
    let model = import_bytes(&f.bytes, "nhwc_keras").unwrap();
    assert_eq!(model.input_shape, [3, 12, 12]);
    // Conv, Relu, Conv, Relu, GlobalAveragePool, Flatten, Gemm: no node for any of the three transposes.
    assert_eq!(
        model.nodes.len(),
        7,
        "{:?}",
        model.nodes.iter().map(|n| &n.name).collect::<Vec<_>>()
    );
}

#[test]
fn a_transpose_that_is_not_undone_is_refused_naming_its_node() {
    // Drop the transpose back to NCHW: the conv then reads the NHWC view.
    let mut m = decoded("nhwc_keras");
    let g = m.graph.as_mut().unwrap();
    let back = g.node.iter().position(|n| n.name() == "/to_nchw").unwrap();
    g.node.remove(back);
    for n in &mut g.node {
        for i in &mut n.input {
            if i == "to_nchw" {
                *i = "to_nhwc".into();
            }
        }
    }
    match import_proto(&m).unwrap_err() {
        OnnxError::UnsupportedOp {
            op, node, detail, ..
        } => {
            assert_eq!((op.as_str(), node.as_str()), ("Conv", "/c2/Conv"));
            assert!(detail.contains("transposed"), "{detail}");
        }
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
}

#[test]
fn metadata_preprocessing_gives_onnx_runtimes_logits_from_pixels() {
    // The fixture's batch is (pixel - 127.5) / 127.5 of integer pixels, and its metadata says so
    // (lowbit.input_scale 255, lowbit.mean and lowbit.std 127.5): lowbit's stored normalisation, applied to the
    // pixels by the one pixel-to-input function of the float path, must give ONNX Runtime's logits.
    let f = fixture("nhwc_keras");
    let mut model = import_bytes(&f.bytes, "nhwc_keras").unwrap();
    let norm = model.normalization.clone().expect("metadata normalisation");
    let pixels: Vec<u8> = f
        .input
        .data
        .iter()
        .map(|&x| {
            let p = x * 127.5 + 127.5;
            assert!((p - p.round()).abs() < 1e-3, "{p} is not an integer pixel");
            p.round() as u8
        })
        .collect();
    let mut x = Vec::new();
    lowbit::data::pixels_to_input(&pixels, model.input_shape, Some(&norm), &mut x);
    let input = Tensor::new(x, f.input.shape.clone());
    let logits = model.forward(&input, false).unwrap();
    assert_close("nhwc_keras from pixels", &logits.data, &f.expected);
    // Flags override the metadata part by part: a different mean changes the stored normalisation.
    let flags = lowbit::onnx::Preprocessing {
        mean: Some(vec![100.0]),
        ..Default::default()
    };
    let m = lowbit::onnx::import_bytes_with_options(&f.bytes, "x", None, &flags).unwrap();
    let n = m.normalization.unwrap();
    assert!(
        (n.mean[0] - 100.0 / 255.0).abs() < 1e-7 && (n.std[0] - 0.5).abs() < 1e-7,
        "{n:?}"
    );
    // Preprocessing that does not fit the model's three channels is refused.
    let flags = lowbit::onnx::Preprocessing {
        mean: Some(vec![0.1, 0.2]),
        std: Some(vec![1.0, 1.0]),
        ..Default::default()
    };
    assert!(matches!(
        lowbit::onnx::import_bytes_with_options(&f.bytes, "x", None, &flags).unwrap_err(),
        OnnxError::Preprocessing(_)
    ));
}

#[test]
fn bad_metadata_is_refused_naming_the_key() {
    use lowbit::onnx::proto::StringStringEntryProto as Entry;
    let mut m = decoded("mlp");
    m.metadata_props.push(Entry {
        key: Some("lowbit.std".into()),
        value: Some("wide".into()),
    });
    match import_proto(&m).unwrap_err() {
        OnnxError::Metadata { key, .. } => assert_eq!(key, "lowbit.std"),
        other => panic!("expected Metadata, got {other:?}"),
    }
}

#[test]
fn unfolded_batch_norm_is_imported_as_a_batch_norm_layer() {
    let f = fixture("resnet_b_unfolded");
    let model = import_bytes(&f.bytes, "resnet_b").unwrap();
    let bns = model
        .layers()
        .filter(|l| matches!(l, Layer::BatchNorm2d(_)))
        .count();
    assert_eq!(
        bns, 6,
        "stem, two per block, one on the projection shortcut"
    );
}

#[test]
fn fixtures_cover_opset_11_and_a_newer_opset() {
    let opsets: Vec<i64> = FIXTURES.iter().map(|n| fixture(n).opset).collect();
    assert!(opsets.contains(&11), "{opsets:?}");
    assert!(opsets.iter().any(|&o| o > 13), "{opsets:?}");
}

fn decoded(name: &str) -> ModelProto {
    ModelProto::decode(&fixture(name).bytes[..]).unwrap()
}

fn import_proto(m: &ModelProto) -> Result<lowbit::nn::Model, OnnxError> {
    import_bytes(&m.encode_to_vec(), "edited")
}

#[test]
fn an_unsupported_op_is_named_with_its_node_and_the_opset() {
    let mut m = decoded("mlp");
    let g = m.graph.as_mut().unwrap();
    let node = g.node.iter_mut().find(|n| n.op_type() == "Relu").unwrap();
    node.op_type = Some("Erf".into());
    let relu_name = node.name().to_string();
    let err = import_proto(&m).unwrap_err();
    match &err {
        OnnxError::UnsupportedOp {
            op, node, opset, ..
        } => {
            assert_eq!(
                (op.as_str(), node.as_str(), *opset),
                ("Erf", relu_name.as_str(), 11)
            );
        }
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        !msg.contains('\n') && msg.contains("Erf") && msg.contains(&relu_name),
        "{msg}"
    );
}

#[test]
fn a_missing_initializer_is_named() {
    let mut m = decoded("mlp");
    let g = m.graph.as_mut().unwrap();
    let gone = g.initializer.remove(0).name().to_string();
    match import_proto(&m).unwrap_err() {
        OnnxError::MissingValue { name, .. } => assert_eq!(name, gone),
        other => panic!("expected MissingValue, got {other:?}"),
    }
}

#[test]
fn external_data_is_refused_naming_the_tensor() {
    let mut m = decoded("mlp");
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    t.data_location = Some(DataLocation::External as i32);
    let want = t.name().to_string();
    match import_proto(&m).unwrap_err() {
        OnnxError::ExternalData { name } => assert_eq!(name, want),
        other => panic!("expected ExternalData, got {other:?}"),
    }
}

#[test]
fn an_old_opset_is_refused() {
    let mut m = decoded("mlp");
    m.opset_import[0].version = Some(9);
    assert_eq!(
        import_proto(&m).unwrap_err(),
        OnnxError::UnsupportedOpset { found: 9, min: 11 }
    );
}

#[test]
fn an_initializer_of_the_wrong_length_is_a_bad_tensor() {
    let mut m = decoded("mlp");
    let t = &mut m.graph.as_mut().unwrap().initializer[0];
    let raw = t.raw_data.as_mut().unwrap();
    raw.truncate(raw.len() - 4);
    assert!(matches!(
        import_proto(&m).unwrap_err(),
        OnnxError::BadTensor { .. }
    ));
}

#[test]
fn a_weight_computed_at_run_time_is_refused() {
    let mut m = decoded("mlp");
    let g = m.graph.as_mut().unwrap();
    let input = g.input[0].name().to_string();
    let gemm = g.node.iter_mut().find(|n| n.op_type() == "Gemm").unwrap();
    gemm.input[1] = input;
    assert!(matches!(
        import_proto(&m).unwrap_err(),
        OnnxError::NotConstant { .. }
    ));
}

#[test]
fn gemm_alpha_beta_and_trans_b_scale_and_lay_out_the_weights() {
    let base = import_bytes(&fixture("mlp").bytes, "mlp").unwrap();
    let mut m = decoded("mlp");
    let g = m.graph.as_mut().unwrap();
    let gemm = g.node.iter_mut().find(|n| n.op_type() == "Gemm").unwrap();
    for a in &mut gemm.attribute {
        match a.name() {
            "alpha" => a.f = Some(0.5),
            "beta" => a.f = Some(2.0),
            _ => {}
        }
    }
    let edited = import_proto(&m).unwrap();
    let dense =
        |model: &lowbit::nn::Model| match model.layers().find(|l| matches!(l, Layer::Dense(_))) {
            Some(Layer::Dense(d)) => d.clone(),
            _ => panic!("no dense layer"),
        };
    let (a, b) = (dense(&base), dense(&edited));
    assert!(a.weight.iter().zip(&b.weight).all(|(x, y)| *y == 0.5 * x));
    assert!(a.bias.iter().zip(&b.bias).all(|(x, y)| *y == 2.0 * x));
}

#[test]
fn every_truncation_of_a_file_is_an_error_not_a_panic() {
    let bytes = fixture("dwsep").bytes;
    for len in (0..bytes.len()).step_by(7) {
        assert!(
            import_bytes(&bytes[..len], "cut").is_err(),
            "a file cut at {len} of {} bytes imported",
            bytes.len()
        );
    }
}

#[test]
fn corrupt_bytes_give_errors_not_panics() {
    let bytes = fixture("resnet_a").bytes;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state % b.len() as u64) as usize;
            b[i] ^= (state >> 32) as u8 | 1;
        }
        let _ = import_bytes(&b, "corrupt");
    }
    assert!(matches!(
        import_bytes(b"not a protobuf at all \xff\xff", "junk"),
        Err(OnnxError::Decode(_))
    ));
}

#[test]
fn a_graph_that_is_not_a_one_input_one_output_classifier_is_refused() {
    let mut m = decoded("mlp");
    let g = m.graph.as_mut().unwrap();
    let extra = g.output[0].clone();
    g.output.push(extra);
    assert!(matches!(import_proto(&m).unwrap_err(), OnnxError::Graph(_)));
    let mut m = decoded("mlp");
    let g = m.graph.as_mut().unwrap();
    let extra = g.input[0].clone();
    g.input.push(lowbit::onnx::proto::ValueInfoProto {
        name: Some("second".into()),
        ..extra
    });
    assert!(matches!(import_proto(&m).unwrap_err(), OnnxError::Graph(_)));
}

/// The MLP fixture with every initializer moved to `weights.bin` beside the model (as `onnx.save(...,
/// save_as_external_data=True)` lays them out), `location` rewritten by `place`.
fn with_external_data(dir: &Path, place: impl Fn(&str) -> String) -> PathBuf {
    use lowbit::onnx::proto::StringStringEntryProto as Entry;
    let mut m = decoded("mlp");
    let mut blob = Vec::new();
    for t in &mut m.graph.as_mut().unwrap().initializer {
        let raw = t.raw_data.take().unwrap();
        let entry = |k: &str, v: String| Entry {
            key: Some(k.into()),
            value: Some(v),
        };
        t.external_data = vec![
            entry("location", place("weights.bin")),
            entry("offset", blob.len().to_string()),
            entry("length", raw.len().to_string()),
        ];
        t.data_location = Some(DataLocation::External as i32);
        blob.extend_from_slice(&raw);
    }
    std::fs::write(dir.join("weights.bin"), blob).unwrap();
    let path = dir.join("mlp_external.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    path
}

#[test]
fn external_data_beside_the_file_gives_the_same_model() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = with_external_data(dir.path(), |l| l.to_string());
    let f = fixture("mlp");
    let mut inline = import_bytes(&f.bytes, "mlp").unwrap();
    let mut external = lowbit::onnx::import(&path).unwrap();
    let a = inline.forward(&f.input, false).unwrap();
    let b = external.forward(&f.input, false).unwrap();
    assert_eq!(a.data, b.data);
}

#[test]
fn external_data_outside_the_directory_or_missing_is_refused() {
    for (place, what) in [("../weights.bin", "outside"), ("gone.bin", "missing")] {
        let dir = tempfile::TempDir::new().unwrap();
        let path = with_external_data(dir.path(), |_| place.to_string());
        match lowbit::onnx::import(&path).unwrap_err() {
            lowbit::error::Error::Onnx {
                source: OnnxError::ExternalFile { location, .. },
                ..
            } => assert_eq!(location, place, "{what}"),
            other => panic!("{what}: expected ExternalFile, got {other:?}"),
        }
    }
}

/// `name`'s initializer `k`-th input of the first node of type `op`, its first value replaced by `v`.
fn with_first_value(name: &str, op: &str, k: usize, v: f32) -> ModelProto {
    let mut m = decoded(name);
    let g = m.graph.as_mut().unwrap();
    let input = g.node.iter().find(|n| n.op_type() == op).unwrap().input[k].clone();
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name() == input)
        .unwrap();
    match t.raw_data.as_mut() {
        Some(raw) => raw[..4].copy_from_slice(&v.to_le_bytes()),
        None => t.float_data[0] = v,
    }
    m
}

#[test]
fn values_the_float_file_would_refuse_are_bad_tensors() {
    // Found by the import_onnx fuzz target: a negative running variance was imported, and the float file then
    // refused to read the model it had written.
    for (m, what) in [
        (
            with_first_value("resnet_b_unfolded", "BatchNormalization", 4, -1.0),
            "negative variance",
        ),
        (
            with_first_value("resnet_b_unfolded", "Conv", 1, f32::NAN),
            "NaN or Inf",
        ),
        (
            with_first_value("mlp", "Gemm", 2, f32::INFINITY),
            "NaN or Inf",
        ),
    ] {
        match import_proto(&m).unwrap_err() {
            OnnxError::BadTensor { reason, .. } => assert!(reason.contains(what), "{reason}"),
            other => panic!("expected BadTensor ({what}), got {other:?}"),
        }
    }
}

#[test]
fn a_keras_flatten_of_nhwc_takes_the_dense_weight_rows_in_nhwc_order() {
    // tf2onnx: the one-channel NHWC input reaches the first conv through a Reshape, the batch norm is a Mul and
    // an Add after it, and Flatten transposes back to NHWC before its Reshape. All of it folds: Conv, Relu,
    // MaxPool, Conv, Relu, Flatten, Dense.
    let f = fixture("keras_cnn");
    let model = import_bytes(&f.bytes, "keras_cnn").unwrap();
    assert_eq!(model.input_shape, [1, 28, 28]);
    let kinds: Vec<&str> = model.layers().map(|l| l.kind()).collect();
    assert_eq!(kinds.len(), 7, "{kinds:?}");
    // The Dense weight is the MatMul's [288, 10] with its rows taken from NHWC order ((y * 6 + x) * 8 + c) to
    // lowbit's NCHW flattening ((c * 6 + y) * 6 + x), values untouched.
    let m = decoded("keras_cnn");
    let g = m.graph.as_ref().unwrap();
    let matmul = g.node.iter().find(|n| n.op_type() == "MatMul").unwrap();
    let w = g
        .initializer
        .iter()
        .find(|t| t.name() == matmul.input[1])
        .unwrap();
    let onnx_w: Vec<f32> = w
        .raw_data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let Some(Layer::Dense(d)) = model.layers().find(|l| matches!(l, Layer::Dense(_))) else {
        panic!("no dense layer")
    };
    assert_eq!((d.in_features, d.out_features), (288, 10));
    for o in 0..10 {
        for c in 0..8 {
            for y in 0..6 {
                for x in 0..6 {
                    let ours = d.weight[o * 288 + (c * 6 + y) * 6 + x];
                    let theirs = onnx_w[((y * 6 + x) * 8 + c) * 10 + o];
                    assert_eq!(ours.to_bits(), theirs.to_bits(), "o {o} c {c} y {y} x {x}");
                }
            }
        }
    }
}

/// `keras_cnn` with its batch norm (Mul, Add) moved from the first conv's output to after the max pooling, where
/// it cannot fold into a conv; `bn` replaces the pair by an ONNX BatchNormalization of the same scale and shift.
fn keras_bn_after_pool(bn: bool) -> ModelProto {
    use lowbit::onnx::proto::{AttributeProto, NodeProto, TensorProto};
    let mut m = decoded("keras_cnn");
    let g = m.graph.as_mut().unwrap();
    let at = |g: &lowbit::onnx::proto::GraphProto, op: &str| {
        g.node.iter().position(|n| n.op_type() == op).unwrap()
    };
    let mul = g.node.remove(at(g, "Mul"));
    let add = g.node.remove(at(g, "Add"));
    let conv_out = g.node[at(g, "Conv")].output[0].clone();
    let relu = at(g, "Relu");
    g.node[relu].input[0] = conv_out;
    let pool = at(g, "MaxPool");
    let pool_out = g.node[pool].output[0].clone();
    let conv2 = g.node.iter().rposition(|n| n.op_type() == "Conv").unwrap();
    g.node[conv2].input[0] = add.output[0].clone();
    let scale_name = mul.input[1].clone();
    let shift_name = add.input[1].clone();
    let mut nodes = if bn {
        let c = 6i64;
        let vec_of = |g: &lowbit::onnx::proto::GraphProto, name: &str, out: &str| {
            let mut t: TensorProto = g
                .initializer
                .iter()
                .find(|t| t.name() == name)
                .unwrap()
                .clone();
            t.dims = vec![c];
            t.name = Some(out.into());
            t
        };
        let (s, b) = (
            vec_of(g, &scale_name, "bn_s"),
            vec_of(g, &shift_name, "bn_b"),
        );
        let raw = |v: f32| {
            std::iter::repeat_n(v.to_le_bytes(), 6)
                .flatten()
                .collect::<Vec<u8>>()
        };
        let mean = TensorProto {
            name: Some("bn_mean".into()),
            raw_data: Some(raw(0.0)),
            ..s.clone()
        };
        let var = TensorProto {
            name: Some("bn_var".into()),
            raw_data: Some(raw(1.0)),
            ..s.clone()
        };
        g.initializer.extend([s, b, mean, var]);
        vec![NodeProto {
            name: Some("bn".into()),
            op_type: Some("BatchNormalization".into()),
            input: ["", "bn_s", "bn_b", "bn_mean", "bn_var"]
                .map(String::from)
                .to_vec(),
            output: vec![add.output[0].clone()],
            attribute: vec![AttributeProto {
                name: Some("epsilon".into()),
                f: Some(1e-5),
                r#type: Some(1),
                ..Default::default()
            }],
            ..Default::default()
        }]
    } else {
        vec![mul, add]
    };
    nodes[0].input[0] = pool_out;
    let after = at(g, "MaxPool") + 1;
    for (i, n) in nodes.into_iter().enumerate() {
        g.node.insert(after + i, n);
    }
    m
}

#[test]
fn a_mul_and_add_per_channel_that_cannot_fold_into_a_conv_become_a_batch_norm() {
    let f = fixture("keras_cnn");
    let mut as_mul_add = import_proto(&keras_bn_after_pool(false)).unwrap();
    let mut as_bn = import_proto(&keras_bn_after_pool(true)).unwrap();
    let kinds: Vec<&str> = as_mul_add.layers().map(|l| l.kind()).collect();
    assert_eq!(
        kinds.iter().filter(|k| k.contains("batch")).count(),
        1,
        "{kinds:?}"
    );
    let a = as_mul_add.forward(&f.input, false).unwrap();
    let b = as_bn.forward(&f.input, false).unwrap();
    let unmoved = import_bytes(&f.bytes, "keras_cnn")
        .unwrap()
        .forward(&f.input, false)
        .unwrap();
    assert_close("Mul and Add as a batch norm", &a.data, &b.data);
    // Moving the batch norm past Relu and MaxPool changes the function: the test would see a dropped one.
    assert!(a
        .data
        .iter()
        .zip(&unmoved.data)
        .any(|(x, y)| (x - y).abs() > 1e-2));
}

#[test]
fn a_flattened_nhwc_value_read_by_anything_but_a_dense_layer_is_refused() {
    let mut m = decoded("keras_cnn");
    let g = m.graph.as_mut().unwrap();
    let matmul = g.node.iter().position(|n| n.op_type() == "MatMul").unwrap();
    let flat = g.node[matmul].input[0].clone();
    g.node[matmul].input[0] = "relu_of_flat".into();
    g.node.insert(
        matmul,
        lowbit::onnx::proto::NodeProto {
            name: Some("relu_of_flat".into()),
            op_type: Some("Relu".into()),
            input: vec![flat],
            output: vec!["relu_of_flat".into()],
            ..Default::default()
        },
    );
    match import_proto(&m).unwrap_err() {
        OnnxError::UnsupportedOp {
            op, node, detail, ..
        } => {
            assert_eq!((op.as_str(), node.as_str()), ("Relu", "relu_of_flat"));
            assert!(detail.contains("flattened"), "{detail}");
        }
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
}
