//! Float model files keep every layer's state: a CNN with batch norm round-trips to the same outputs, and the same
//! model always gives the same bytes.
use lowbit::modelfile::{float_from_bytes, float_to_bytes};
use lowbit::nn::{Layer, Model};
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;
use lowbit_runtime::model::Provenance;
use std::path::Path;

/// A conv + batch-norm model whose every value differs from a fresh `from_spec` build (other seed, trained-looking
/// running statistics), so a layer the file forgot shows up as a different output.
fn distinct_model(spec: &str) -> Model {
    let mut m = Model::from_spec(spec, 7).unwrap();
    let mut rng = Rng::new(99);
    for layer in m.layers_mut() {
        if let Layer::BatchNorm2d(b) = layer {
            b.running_mean = rng.uniform_vec(b.channels, -0.5, 0.5);
            b.running_var = rng.uniform_vec(b.channels, 0.5, 2.0);
            b.gamma = rng.uniform_vec(b.channels, 0.5, 1.5);
            b.beta = rng.uniform_vec(b.channels, -0.2, 0.2);
        }
    }
    m
}

#[test]
fn a_cnn_with_batch_norm_round_trips_to_identical_outputs() {
    for spec in ["lenet5", "cnn:c4.bn-p-c8-g-10"] {
        let mut model = distinct_model(spec);
        let bytes = float_to_bytes(&model, &Provenance::default()).unwrap();
        let (mut loaded, _) = float_from_bytes(&bytes, Path::new("mem.lbf")).unwrap();
        let mut rng = Rng::new(5);
        let x = Tensor::new(rng.uniform_vec(3 * 28 * 28, 0.0, 1.0), vec![3, 1, 28, 28]);
        let want = model.forward(&x, false).unwrap();
        let got = loaded.forward(&x, false).unwrap();
        assert_eq!(want.data, got.data, "{spec}");
        // A fresh model of the same spec differs, so the comparison above can fail.
        let fresh = Model::from_spec(spec, 0)
            .unwrap()
            .forward(&x, false)
            .unwrap();
        assert_ne!(fresh.data, want.data, "{spec}");
    }
}

#[test]
fn the_same_model_gives_the_same_bytes() {
    let model = distinct_model("lenet5");
    let a = float_to_bytes(&model, &Provenance::default()).unwrap();
    let b = float_to_bytes(&model.clone(), &Provenance::default()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_missing_conv_tensor_is_an_error_naming_it() {
    let model = distinct_model("lenet5");
    let bytes = float_to_bytes(&model, &Provenance::default()).unwrap();
    // Rename layer 0's weight so the reader cannot find it (same length keeps the header valid; a name no other
    // tensor has, so the safetensors header stays consistent).
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let at = text.find("layers.0.weight").unwrap();
    let mut broken = bytes.clone();
    broken[at + "layers.0.weigh".len()] = b'X';
    let err = float_from_bytes(&broken, Path::new("m.lbf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("layers.0.weight"), "{err}");
}

/// The float file of `spec` with its `model` JSON edited.
fn edited_graph(spec: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let bytes = float_to_bytes(&distinct_model(spec), &Provenance::default()).unwrap();
    let (mut header, data) = lowbit_runtime::testutil::st_header(&bytes).unwrap();
    let meta = header["__metadata__"]["model"]
        .as_str()
        .unwrap()
        .to_string();
    let mut model: serde_json::Value = serde_json::from_str(&meta).unwrap();
    edit(&mut model);
    header["__metadata__"]["model"] = serde_json::Value::String(model.to_string());
    lowbit_runtime::testutil::st_with_header(&header, &bytes[data..])
}

/// The error reading `bytes`, as one line.
fn read_error(bytes: &[u8]) -> String {
    let e = float_from_bytes(bytes, Path::new("g.f32"))
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(e.starts_with("g.f32"), "names the file: {e}");
    e
}

#[test]
fn graph_files_with_cycles_dangling_inputs_bad_shapes_or_unknown_ops_name_the_node() {
    // Node 3 reads node 5: a forward reference (a cycle in a sorted file).
    let e = read_error(&edited_graph("resnet:8", |m| {
        m["nodes"][3]["inputs"] = serde_json::json!([m["nodes"][5]["name"].clone()])
    }));
    assert!(e.contains("s1.b0") || e.contains("node"), "{e}");
    assert!(e.contains("earlier node"), "{e}");
    let e = read_error(&edited_graph("resnet:8", |m| {
        m["nodes"][2]["inputs"] = serde_json::json!(["nowhere"])
    }));
    assert!(e.contains("nowhere") && e.contains("node"), "{e}");
    // A conv whose input has other channels than it declares.
    let e = read_error(&edited_graph("resnet:8", |m| {
        m["nodes"][0]["op"]["in_channels"] = serde_json::json!(3)
    }));
    assert!(e.contains("stem.conv") && e.contains("in_channels"), "{e}");
    let e = read_error(&edited_graph("resnet:8", |m| {
        m["nodes"][1]["op"] = serde_json::json!({"kind": "fft"})
    }));
    assert!(e.contains("fft") || e.contains("unknown variant"), "{e}");
    let e = read_error(&edited_graph("resnet:8", |m| {
        m["nodes"][0]["op"]["out_channels"] = serde_json::json!(1u64 << 40)
    }));
    assert!(e.contains("stem.conv"), "{e}");
    // Absurd padding that would make a huge activation, refused before anything is allocated.
    let e = read_error(&edited_graph("resnet:8", |m| {
        let i = m["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .position(|n| n["op"]["kind"] == "pad")
            .unwrap();
        m["nodes"][i]["op"]["rows"] = serde_json::json!([1 << 19, 1 << 19])
    }));
    assert!(e.contains("short.pad"), "{e}");
    let e = read_error(&edited_graph("resnet:8", |m| {
        m["nodes"][4]["name"] = m["nodes"][3]["name"].clone();
    }));
    assert!(e.contains("duplicate") || e.contains("earlier node"), "{e}");
}
