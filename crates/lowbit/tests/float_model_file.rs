//! Float model files keep every layer's state: a CNN with batch norm round-trips to the same outputs, and the same
//! model always gives the same bytes. Hostile files (specs or graphs that would allocate far more than the file
//! holds) are errors before anything big is allocated.
use lowbit::modelfile::{float_from_bytes, float_to_bytes};
use lowbit::nn::{Add, Conv2d, Dense, Flatten, Layer, MaxPool2d, Model, Node, Pad};
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;
use lowbit::Error;
use lowbit_runtime::format::container_bytes;
use lowbit_runtime::model::Provenance;
use lowbit_runtime::testutil::edit_model_json;
use lowbit_runtime::FormatError;
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

/// The reason of a malformed-file error.
fn malformed(r: lowbit::Result<(Model, Provenance)>) -> String {
    match r {
        Err(Error::ModelFile {
            source: FormatError::Malformed(m),
            ..
        }) => m,
        other => panic!("expected a malformed file, got {other:?}"),
    }
}

/// A version-1 float file: a spec and no tensors.
fn version_1_spec(spec: &str) -> Vec<u8> {
    let meta = [
        ("format", "lowbit.f32".to_string()),
        ("format_version", "1".to_string()),
        ("spec", spec.to_string()),
    ];
    container_bytes(&meta, &[]).unwrap()
}

#[test]
fn a_version_1_cnn_spec_is_checked_against_the_stored_values_before_it_is_built() {
    // 151 M parameters (604 MB, seconds to initialise) were built before the missing tensors were noticed.
    let m = malformed(float_from_bytes(
        &version_1_spec("cnn:c4096-c4096-10"),
        Path::new("bomb.f32"),
    ));
    assert!(m.contains("stores 0 values"), "{m}");
    // Beyond any file: over 2^28 parameters is a spec error.
    let m = malformed(float_from_bytes(
        &version_1_spec("cnn:c4096-c4096-c4096-c4096-c4096-10"),
        Path::new("bomb.f32"),
    ));
    assert!(m.contains("too many parameters"), "{m}");
}

#[test]
fn a_version_1_file_with_a_graph_spec_is_refused_unbuilt() {
    // Version 1 predates graph specs; `mobilenet:t8c4096n16s1` would have built 17 GB of weights.
    for spec in [
        "mobilenet:t1c4n1s1-h8",
        "resnet:8",
        "mobilenet:t8c4096n16s1",
    ] {
        let m = malformed(float_from_bytes(&version_1_spec(spec), Path::new("g.f32")));
        assert!(
            m.contains("not an mlp:, lenet5 or cnn: spec"),
            "{spec}: {m}"
        );
    }
}

/// A graph of `(name, inputs, layer)` nodes.
fn graph(input: [usize; 3], nodes: Vec<(&str, Vec<usize>, Layer)>, classes: usize) -> Model {
    Model {
        nodes: nodes
            .into_iter()
            .map(|(name, inputs, layer)| Node {
                name: name.into(),
                inputs,
                layer,
            })
            .collect(),
        input_shape: input,
        classes,
        spec: "test graph".into(),
        normalization: None,
    }
}

#[test]
fn a_conv_whose_stride_hides_huge_padded_planes_is_refused() {
    // 1x1x1 -> conv 2x2 stride 2 pad 1 (1x1 out) -> flatten -> dense 1->3. With padding 2^19 and stride 2^20 the
    // output stays 1x1 but the forward pass would first pad the input to 2^20 x 2^20 (4 TB of f32).
    let mut rng = Rng::new(1);
    let m = graph(
        [1, 1, 1],
        vec![
            (
                "conv",
                vec![0],
                Layer::Conv2d(Conv2d::new(1, 1, (2, 2), (2, 2), (1, 1), &mut rng)),
            ),
            ("flatten", vec![1], Layer::Flatten(Flatten::new())),
            ("fc", vec![2], Layer::Dense(Dense::new(1, 3, &mut rng))),
        ],
        3,
    );
    let bytes = float_to_bytes(&m, &Provenance::default()).unwrap();
    assert!(float_from_bytes(&bytes, Path::new("ok.f32")).is_ok());
    let hostile = edit_model_json(&bytes, |v| {
        v["nodes"][0]["op"]["padding"] = serde_json::json!([1 << 19, 1 << 19]);
        v["nodes"][0]["op"]["stride"] = serde_json::json!([1 << 20, 1 << 20]);
    })
    .unwrap();
    let m = malformed(float_from_bytes(&hostile, Path::new("pad.f32")));
    assert!(m.contains("conv") && m.contains("padded input"), "{m}");
    // A padding near usize::MAX is an error too, not an overflow.
    let wrap = edit_model_json(&bytes, |v| {
        v["nodes"][0]["op"]["padding"] = serde_json::json!([u64::MAX / 2 + 1, 1])
    })
    .unwrap();
    let m = malformed(float_from_bytes(&wrap, Path::new("wrap.f32")));
    assert!(m.contains("conv"), "{m}");
}

#[test]
fn many_large_values_alive_at_once_exceed_the_total_activation_limit() {
    // 1x1x1 padded five times to 1x8192x8192 (2^26 elements each, the per-value limit), summed by four adds:
    // nine values of 2^26 f32, 2.3 GB per sample for a forward pass.
    let pad = || Layer::Pad(Pad::new((0, 0), (0, 8191), (0, 8191)));
    let add = || Layer::Add(Add::new());
    let mut rng = Rng::new(2);
    let m = graph(
        [1, 1, 1],
        vec![
            ("p1", vec![0], pad()),
            ("p2", vec![0], pad()),
            ("p3", vec![0], pad()),
            ("p4", vec![0], pad()),
            ("p5", vec![0], pad()),
            ("a1", vec![1, 2], add()),
            ("a2", vec![6, 3], add()),
            ("a3", vec![7, 4], add()),
            ("a4", vec![8, 5], add()),
            (
                "pool",
                vec![9],
                Layer::MaxPool2d(MaxPool2d::new((8192, 8192), (8192, 8192))),
            ),
            ("flatten", vec![10], Layer::Flatten(Flatten::new())),
            ("fc", vec![11], Layer::Dense(Dense::new(1, 3, &mut rng))),
        ],
        3,
    );
    let bytes = float_to_bytes(&m, &Provenance::default()).unwrap();
    let m = malformed(float_from_bytes(&bytes, Path::new("wide.f32")));
    assert!(m.contains("elements per sample"), "{m}");
}

/// The float file of `spec` with its `model` JSON edited.
fn edited_graph(spec: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let bytes = float_to_bytes(&distinct_model(spec), &Provenance::default()).unwrap();
    edit_model_json(&bytes, edit).unwrap()
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
