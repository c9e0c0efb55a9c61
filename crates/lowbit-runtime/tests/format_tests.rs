//! `.lbq` reader and writer: round trips, one test per error variant, truncation at every offset, random
//! mutation, atomic save.
use lowbit_runtime::format::{self, from_bytes, is_lbq, read_metadata, to_bytes};
use lowbit_runtime::model::{QOp, QuantModel};
use lowbit_runtime::testutil::{random_mlp, random_model, st_header, st_with_header, LayerOpts};
use lowbit_runtime::{FormatError, QuantError};
use proptest::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::{SafeTensors, View};
use std::collections::HashMap;
use std::path::PathBuf;

fn small_model() -> QuantModel {
    random_mlp(
        7,
        LayerOpts {
            weight_bits: 4,
            act_bits: 8,
            per_channel: true,
        },
    )
}

fn small_file() -> Vec<u8> {
    to_bytes(&small_model()).unwrap()
}

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// Re-serializes a valid file after editing its metadata and tensors.
fn rebuild(bytes: &[u8], edit: impl FnOnce(&mut HashMap<String, String>, &mut Tensors)) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut meta = read_metadata(bytes).unwrap();
    let mut tensors: Tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                View::dtype(&v),
                View::shape(&v).to_vec(),
                View::data(&v).to_vec(),
            )
        })
        .collect();
    edit(&mut meta, &mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, &Some(meta)).unwrap()
}

/// Re-serializes a valid file after editing its `model` JSON.
fn edit_model(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    rebuild(bytes, |meta, _| {
        let mut v: serde_json::Value = serde_json::from_str(&meta["model"]).unwrap();
        edit(&mut v);
        meta.insert("model".into(), v.to_string());
    })
}

#[test]
fn write_then_read_round_trips_exactly() {
    for seed in 0..40u64 {
        let m = random_model(seed);
        let bytes = to_bytes(&m).unwrap();
        assert!(is_lbq(&bytes));
        let back = from_bytes(&bytes).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(back, m, "seed {seed}");
        // Writing is deterministic: the same model gives the same bytes.
        assert_eq!(to_bytes(&back).unwrap(), bytes, "seed {seed}");
    }
}

#[test]
fn metadata_tells_a_quantized_file_from_a_float_one() {
    let bytes = small_file();
    let meta = read_metadata(&bytes).unwrap();
    assert_eq!(meta["format"], "lowbit.lbq");
    assert_eq!(meta["format_version"], "3");
    let float = rebuild(&bytes, |m, _| {
        m.insert("format".into(), "lowbit.f32".into());
    });
    assert!(!is_lbq(&float));
    assert_eq!(read_metadata(&float).unwrap()["format"], "lowbit.f32");
    assert!(!is_lbq(b"garbage"));
}

#[test]
fn rejects_a_file_that_is_not_safetensors_as_bad_magic() {
    let mut junk = b"PK\x03\x04 this is a zip file, not a model".to_vec();
    junk.extend([0u8; 64]);
    assert!(matches!(
        from_bytes(&junk),
        Err(FormatError::BadMagic { .. })
    ));
}

#[test]
fn rejects_another_format_name_as_bad_magic() {
    let f32_file = rebuild(&small_file(), |m, _| {
        m.insert("format".into(), "lowbit.f32".into());
    });
    assert!(matches!(
        from_bytes(&f32_file),
        Err(FormatError::BadMagic { .. })
    ));
    let no_meta = rebuild(&small_file(), |m, _| m.clear());
    assert!(matches!(
        from_bytes(&no_meta),
        Err(FormatError::BadMagic { .. })
    ));
}

#[test]
fn rejects_a_newer_version() {
    let v4 = rebuild(&small_file(), |m, _| {
        m.insert("format_version".into(), "4".into());
    });
    match from_bytes(&v4) {
        Err(FormatError::UnsupportedVersion { found: 4, max: 3 }) => {}
        other => panic!("{other:?}"),
    }
}

fn as_version_1(bytes: &[u8]) -> Vec<u8> {
    lowbit_runtime::testutil::lbq_as_version_1(bytes).unwrap()
}

fn as_version_2(bytes: &[u8]) -> Vec<u8> {
    lowbit_runtime::testutil::lbq_as_version_2(bytes).unwrap()
}

#[test]
fn version_2_files_still_read_to_the_same_model() {
    for seed in 0..10u64 {
        let m = random_model(seed);
        let v2 = as_version_2(&to_bytes(&m).unwrap());
        assert_eq!(read_metadata(&v2).unwrap()["format_version"], "2");
        assert_eq!(from_bytes(&v2).unwrap(), m, "seed {seed}");
    }
}

#[test]
fn version_1_files_still_read_to_the_same_model() {
    for seed in 0..10u64 {
        let m = random_model(seed);
        let v1 = as_version_1(&to_bytes(&m).unwrap());
        assert_eq!(read_metadata(&v1).unwrap()["format_version"], "1");
        assert_eq!(from_bytes(&v1).unwrap(), m, "seed {seed}");
    }
}

#[test]
fn per_channel_arrays_must_sit_where_the_version_puts_them() {
    let v2 = as_version_2(&small_file());
    // Version 2 with the arrays (also) in the JSON.
    let both = edit_model(&v2, |v| {
        v["layers"][0]["weight_scales"] = serde_json::json!([0.5])
    });
    assert!(matches!(from_bytes(&both), Err(FormatError::Malformed(_))));
    // Version 2 without the tensor.
    let missing = rebuild(&v2, |_, t| t.retain(|x| x.0 != "layers.0.requant"));
    assert!(matches!(
        from_bytes(&missing),
        Err(FormatError::Malformed(_))
    ));
    // Version 1 with a tensor left over, and version 1 without the JSON array.
    let v1 = as_version_1(&v2);
    let extra = rebuild(&v1, |_, t| {
        t.push((
            "layers.0.weight_scales".into(),
            Dtype::F32,
            vec![1],
            1f32.to_le_bytes().to_vec(),
        ))
    });
    assert!(matches!(from_bytes(&extra), Err(FormatError::Malformed(_))));
    let bare = edit_model(&v1, |v| {
        v["layers"][1]
            .as_object_mut()
            .unwrap()
            .remove("weight_scales");
    });
    assert!(matches!(from_bytes(&bare), Err(FormatError::Malformed(_))));
    // The layout of one version under the other's label.
    let v1_labelled_2 = rebuild(&v1, |m, _| {
        m.insert("format_version".into(), "2".into());
    });
    assert!(matches!(
        from_bytes(&v1_labelled_2),
        Err(FormatError::Malformed(_))
    ));
    let v2_labelled_1 = rebuild(&v2, |m, _| {
        m.insert("format_version".into(), "1".into());
    });
    assert!(matches!(
        from_bytes(&v2_labelled_1),
        Err(FormatError::Malformed(_))
    ));
    let no_scales = rebuild(&v2, |_, t| t.retain(|x| x.0 != "layers.1.weight_scales"));
    assert!(matches!(
        from_bytes(&no_scales),
        Err(FormatError::Malformed(_))
    ));
    // Lengths other than 1 or the layer's rows are refused by the reader itself, before the engine.
    let long = rebuild(&v2, |_, t| {
        let s = t
            .iter_mut()
            .find(|x| x.0 == "layers.1.weight_scales")
            .unwrap();
        s.2 = vec![s.2[0] + 1];
        s.3.extend(1f32.to_le_bytes());
    });
    assert!(matches!(from_bytes(&long), Err(FormatError::Malformed(_))));
    // Wrong dtype or shape of the per-channel tensors.
    let dtype = rebuild(&v2, |_, t| {
        t.iter_mut()
            .find(|x| x.0 == "layers.1.weight_scales")
            .unwrap()
            .1 = Dtype::I32;
    });
    assert!(matches!(from_bytes(&dtype), Err(FormatError::Malformed(_))));
    let shape = rebuild(&v2, |_, t| {
        let r = t.iter_mut().find(|x| x.0 == "layers.0.requant").unwrap();
        r.2 = vec![r.2[0] * 2];
    });
    assert!(matches!(from_bytes(&shape), Err(FormatError::Malformed(_))));
}

#[test]
fn mlp_files_at_4_and_1_bits_stay_within_the_size_targets() {
    // Issue 4: the .lbq file of the 784-64-10 W4A8 MLP at most 0.14x the f32 model's bytes (4 per parameter),
    // W1 at most 0.05x; with provenance and class names as the pipeline writes them.
    let f32_bytes = 4 * (784 * 64 + 64 + 64 * 10 + 10);
    for (bits, max) in [(4u32, 0.14), (1, 0.05)] {
        let mut m = lowbit_runtime::testutil::reference_mlp(1, bits);
        m.provenance.dataset = "/usr/share/datasets/fashion-mnist".into();
        m.provenance.recipe = format!("QAT W{bits}A8, per-channel, 5 epochs, Adam 1e-3");
        m.provenance.test_accuracy = Some(0.8615);
        // Fashion-MNIST's class names.
        m.class_names =
            "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
                .split(',')
                .map(String::from)
                .collect();
        let n = to_bytes(&m).unwrap().len();
        let ratio = n as f64 / f32_bytes as f64;
        assert!(
            ratio <= max,
            "W{bits}: {n} bytes = {ratio:.4}x the f32 model's {f32_bytes}"
        );
    }
}

#[test]
fn rejects_a_truncated_file() {
    let bytes = small_file();
    assert!(matches!(
        from_bytes(&bytes[..bytes.len() - 1]),
        Err(FormatError::Truncated { .. })
    ));
    assert!(matches!(
        from_bytes(&bytes[..5]),
        Err(FormatError::Truncated { .. })
    ));
    assert!(matches!(
        from_bytes(&bytes[..40]),
        Err(FormatError::Truncated { .. })
    ));
}

#[test]
fn truncation_at_every_byte_offset_is_an_error_not_a_panic() {
    let bytes = small_file();
    for cut in 0..bytes.len() {
        assert!(
            from_bytes(&bytes[..cut]).is_err(),
            "cut at {cut} was accepted"
        );
    }
    assert!(from_bytes(&bytes).is_ok());
}

#[test]
fn rejects_a_header_longer_than_the_limit() {
    let mut bytes = small_file();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        from_bytes(&bytes),
        Err(FormatError::LimitExceeded { .. })
    ));
}

#[test]
fn rejects_dimensions_above_the_limit_before_allocating() {
    let huge = edit_model(&small_file(), |v| {
        v["classes"] = serde_json::json!(1u64 << 40)
    });
    assert!(matches!(
        from_bytes(&huge),
        Err(FormatError::LimitExceeded { .. })
    ));
    let rows = edit_model(&small_file(), |v| {
        v["nodes"][0]["op"]["weights"]["rows"] = serde_json::json!(1u64 << 30)
    });
    assert!(matches!(
        from_bytes(&rows),
        Err(FormatError::LimitExceeded { .. })
    ));
}

#[test]
fn writer_rejects_a_nan_scale() {
    let mut m = small_model();
    if let QOp::Dense(d) = &mut m.nodes[1].op {
        d.weight_scales[0] = f32::NAN;
    }
    assert!(matches!(
        to_bytes(&m),
        Err(FormatError::Quant(QuantError::InvalidQParams { .. }))
    ));
}

#[test]
fn reader_rejects_nan_infinite_negative_and_zero_weight_scales() {
    for bad in [f32::NAN, f32::INFINITY, -0.5, 0.0, 1e-45] {
        let file = rebuild(&small_file(), |_, t| {
            let s = t
                .iter_mut()
                .find(|x| x.0 == "layers.1.weight_scales")
                .unwrap();
            s.3[..4].copy_from_slice(&bad.to_le_bytes());
        });
        assert!(
            matches!(
                from_bytes(&file),
                Err(FormatError::Quant(QuantError::InvalidQParams { .. }))
            ),
            "{bad}"
        );
    }
    // Version 1 kept them in JSON, which cannot spell NaN: an overflowing f32 and null are the hostile values.
    let v1 = as_version_1(&small_file());
    let inf = edit_model(&v1, |v| {
        v["layers"][1]["weight_scales"][0] = serde_json::json!(1e39)
    });
    assert!(matches!(
        from_bytes(&inf),
        Err(FormatError::Quant(QuantError::InvalidQParams { .. }))
    ));
    let null = edit_model(&v1, |v| {
        v["layers"][1]["weight_scales"][0] = serde_json::Value::Null
    });
    assert!(matches!(from_bytes(&null), Err(FormatError::Malformed(_))));
}

#[test]
fn reader_rejects_a_zero_scale() {
    let zero = edit_model(&small_file(), |v| {
        v["input"]["scale"] = serde_json::json!(0.0)
    });
    assert!(matches!(
        from_bytes(&zero),
        Err(FormatError::Quant(QuantError::InvalidQParams { .. }))
    ));
    let denormal = edit_model(&small_file(), |v| {
        v["nodes"][0]["op"]["input"]["scale"] = serde_json::json!(1e-45)
    });
    assert!(matches!(from_bytes(&denormal), Err(FormatError::Quant(_))));
}

#[test]
fn reader_rejects_a_zero_point_out_of_range() {
    let zp = edit_model(&small_file(), |v| {
        v["nodes"][0]["op"]["output"]["zero_point"] = serde_json::json!(300)
    });
    assert!(matches!(
        from_bytes(&zp),
        Err(FormatError::Quant(QuantError::InvalidQParams { .. }))
    ));
}

#[test]
fn reader_rejects_invalid_requant() {
    // Tensor `[channels, 2]`: multiplier, shift. A total shift of 31 + 40 is out of range, so is a multiplier
    // below 2^30.
    for (word, value) in [(1usize, 40i32), (0, 5)] {
        let rq = rebuild(&small_file(), |_, t| {
            let r = t.iter_mut().find(|x| x.0 == "layers.0.requant").unwrap();
            r.3[4 * word..4 * word + 4].copy_from_slice(&value.to_le_bytes());
        });
        assert!(matches!(
            from_bytes(&rq),
            Err(FormatError::Quant(QuantError::MultiplierOutOfRange { .. }))
        ));
    }
    let v1 = edit_model(&as_version_1(&small_file()), |v| {
        v["layers"][0]["output"]["requant"][0]["shift"] = serde_json::json!(40)
    });
    assert!(matches!(
        from_bytes(&v1),
        Err(FormatError::Quant(QuantError::MultiplierOutOfRange { .. }))
    ));
}

#[test]
fn reader_rejects_a_tensor_whose_shape_disagrees_with_the_metadata() {
    let cols = edit_model(&small_file(), |v| {
        v["nodes"][0]["op"]["weights"]["cols"] = serde_json::json!(17)
    });
    assert!(matches!(from_bytes(&cols), Err(FormatError::Malformed(_))));
    let bias = rebuild(&small_file(), |_, t| {
        let b = t.iter_mut().find(|x| x.0 == "layers.0.bias").unwrap();
        b.2 = vec![b.2[0] - 1];
        b.3.truncate(b.3.len() - 4);
    });
    assert!(matches!(from_bytes(&bias), Err(FormatError::Malformed(_))));
    let dtype = rebuild(&small_file(), |_, t| {
        let b = t.iter_mut().find(|x| x.0 == "layers.0.bias").unwrap();
        b.1 = Dtype::F32;
    });
    assert!(matches!(from_bytes(&dtype), Err(FormatError::Malformed(_))));
}

#[test]
fn reader_rejects_inconsistent_layer_shapes_as_quant_errors() {
    // Weights and tensor agree, but the layer no longer chains with the next one.
    let m = edit_model(&small_file(), |v| {
        v["nodes"][1]["op"]["in_features"] = serde_json::json!(9)
    });
    assert!(matches!(
        from_bytes(&m),
        Err(FormatError::Quant(QuantError::ShapeMismatch { .. }))
    ));
}

#[test]
fn reader_rejects_a_missing_or_extra_tensor() {
    let missing = rebuild(&small_file(), |_, t| t.retain(|x| x.0 != "layers.1.weight"));
    assert!(matches!(
        from_bytes(&missing),
        Err(FormatError::Malformed(_))
    ));
    let extra = rebuild(&small_file(), |_, t| {
        t.push(("layers.5.bias".into(), Dtype::I32, vec![1], vec![0; 4]))
    });
    assert!(matches!(from_bytes(&extra), Err(FormatError::Malformed(_))));
}

#[test]
fn reader_rejects_a_data_offset_near_u64_max_without_overflow() {
    let bytes = small_file();
    let (mut header, data) = st_header(&bytes).unwrap();
    header["layers.0.bias"]["data_offsets"][1] = serde_json::json!(u64::MAX);
    let out = st_with_header(&header, &bytes[data..]);
    // Truncated: the sum saturates instead of wrapping to a small value that would pass the length check (and
    // panic in a build with overflow checks).
    assert!(matches!(
        from_bytes(&out),
        Err(FormatError::Truncated { .. })
    ));
}

#[test]
fn reader_rejects_extra_fields_on_logits_and_non_canonical_versions() {
    let extra = edit_model(&small_file(), |v| {
        v["nodes"][1]["op"]["output"]["requant"] = serde_json::json!([])
    });
    assert!(matches!(from_bytes(&extra), Err(FormatError::Malformed(_))));
    for spelled in ["+3", "03", " 3", "3.0"] {
        let v = rebuild(&small_file(), |m, _| {
            m.insert("format_version".into(), spelled.into());
        });
        assert!(
            matches!(from_bytes(&v), Err(FormatError::Malformed(_))),
            "{spelled:?}"
        );
    }
}

#[test]
fn reader_rejects_duplicate_tensor_names() {
    let bytes = small_file();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let v: serde_json::Value = serde_json::from_str(header).unwrap();
    let entry = format!("\"layers.0.bias\":{},", v["layers.0.bias"]);
    let dup = format!("{{{entry}{}", &header[1..]);
    let mut out = (dup.len() as u64).to_le_bytes().to_vec();
    out.extend(dup.as_bytes());
    out.extend(&bytes[8 + n..]);
    // safetensors alone would accept this file (the last duplicate wins).
    assert!(SafeTensors::deserialize(&out).is_ok());
    assert!(matches!(from_bytes(&out), Err(FormatError::Malformed(_))));
}

#[test]
fn reader_rejects_unknown_fields_and_bad_json() {
    let unknown = edit_model(&small_file(), |v| v["surprise"] = serde_json::json!(1));
    assert!(matches!(
        from_bytes(&unknown),
        Err(FormatError::Malformed(_))
    ));
    let bad = rebuild(&small_file(), |m, _| {
        m.insert("model".into(), "{not json".into());
    });
    assert!(matches!(from_bytes(&bad), Err(FormatError::Malformed(_))));
}

#[test]
fn reader_rejects_weight_codes_outside_their_range() {
    // 4-bit codes live in [-7, 7]; the nibble 0x8 is -8.
    let bad = rebuild(&small_file(), |_, t| {
        let w = t.iter_mut().find(|x| x.0 == "layers.0.weight").unwrap();
        w.3[0] = 0x88;
    });
    assert!(matches!(from_bytes(&bad), Err(FormatError::Quant(_))));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Flipped bits, overwritten bytes and changed lengths never make the reader panic.
    #[test]
    fn mutated_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<bool>()), 1..8),
        new_len in proptest::option::of(any::<prop::sample::Index>()),
        append in proptest::collection::vec(any::<u8>(), 0..4),
    ) {
        let mut bytes = small_file();
        for (at, val, flip) in edits {
            let i = at.index(bytes.len());
            if flip { bytes[i] ^= 1 << (val % 8) } else { bytes[i] = val }
        }
        if let Some(l) = new_len {
            bytes.truncate(l.index(bytes.len() + 1));
        }
        bytes.extend(append);
        let _ = from_bytes(&bytes);
        let _ = read_metadata(&bytes);
    }

    /// Edits confined to the header (where the structure lives) never panic either.
    #[test]
    fn mutated_headers_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0x20u8..0x7f), 1..6),
    ) {
        let mut bytes = small_file();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for (at, val) in edits {
            let i = 8 + at.index(n);
            bytes[i] = val;
        }
        let _ = from_bytes(&bytes);
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("lbq-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn save_then_load_round_trips_and_leaves_no_temp_file() {
    let dir = scratch_dir("save");
    let path = dir.join("model.lbq");
    let m = small_model();
    format::save(&m, &path).unwrap();
    assert_eq!(format::load(&path).unwrap(), m);
    // Overwrite with another model.
    let m2 = random_model(3);
    format::save(&m2, &path).unwrap();
    assert_eq!(format::load(&path).unwrap(), m2);
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("model.lbq")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn failed_save_keeps_the_old_file_and_leaves_no_temp_file() {
    let dir = scratch_dir("clobber");
    let path = dir.join("model.lbq");
    format::save(&small_model(), &path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let mut bad = small_model();
    bad.input.qparams.scale = f32::NAN;
    assert!(format::save(&bad, &path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1);
    // A target directory that does not exist fails cleanly too.
    assert!(matches!(
        format::save(&small_model(), &dir.join("nope/m.lbq")),
        Err(FormatError::Io(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_of_a_missing_file_is_an_io_error() {
    assert!(matches!(
        format::load(std::path::Path::new("/nonexistent/x.lbq")),
        Err(FormatError::Io(_))
    ));
}

/// The node named `name` of a graph-reading error, if the error names one.
fn node_named(r: Result<lowbit_runtime::QuantModel, FormatError>) -> String {
    match r {
        Err(FormatError::Quant(QuantError::ShapeMismatch { context, .. })) => context,
        other => panic!("expected a shape error naming a node, got {other:?}"),
    }
}

#[test]
fn reader_rejects_cycles_and_forward_references_naming_the_node() {
    // layers.0 reading layers.1 (which reads layers.0): a cycle, seen as a reference to a later node.
    let cycle = edit_model(&small_file(), |v| {
        v["nodes"][0]["inputs"] = serde_json::json!(["layers.1"])
    });
    assert_eq!(node_named(from_bytes(&cycle)), "layers.0");
    let self_loop = edit_model(&small_file(), |v| {
        v["nodes"][1]["inputs"] = serde_json::json!(["layers.1"])
    });
    assert_eq!(node_named(from_bytes(&self_loop)), "layers.1");
}

#[test]
fn reader_rejects_a_dangling_input_naming_the_node() {
    let dangling = edit_model(&small_file(), |v| {
        v["nodes"][1]["inputs"] = serde_json::json!(["nowhere"])
    });
    assert_eq!(node_named(from_bytes(&dangling)), "layers.1");
}

#[test]
fn reader_rejects_duplicate_and_reserved_node_names() {
    let dup = edit_model(&small_file(), |v| {
        v["nodes"][1]["name"] = serde_json::json!("layers.0");
        v["nodes"][1]["inputs"] = serde_json::json!(["input"]);
    });
    assert_eq!(node_named(from_bytes(&dup)), "layers.0");
    let reserved = edit_model(&small_file(), |v| {
        v["nodes"][0]["name"] = serde_json::json!("input")
    });
    assert!(matches!(
        from_bytes(&reserved),
        Err(FormatError::Malformed(_))
    ));
    let long = edit_model(&small_file(), |v| {
        v["nodes"][0]["name"] = serde_json::json!("x".repeat(300))
    });
    assert!(matches!(from_bytes(&long), Err(FormatError::Malformed(_))));
}

#[test]
fn reader_rejects_the_wrong_number_of_inputs_naming_the_node() {
    let two = edit_model(&small_file(), |v| {
        v["nodes"][1]["inputs"] = serde_json::json!(["layers.0", "layers.0"])
    });
    assert_eq!(node_named(from_bytes(&two)), "layers.1");
    let many = edit_model(&small_file(), |v| {
        v["nodes"][1]["inputs"] = serde_json::json!(vec!["layers.0"; 100])
    });
    assert!(matches!(
        from_bytes(&many),
        Err(FormatError::LimitExceeded { .. })
    ));
}

#[test]
fn reader_rejects_an_unknown_op_and_a_chain_layout_under_version_3() {
    let unknown = edit_model(&small_file(), |v| {
        v["nodes"][0]["op"]["kind"] = serde_json::json!("fft")
    });
    assert!(matches!(
        from_bytes(&unknown),
        Err(FormatError::Malformed(_))
    ));
    let chain = rebuild(&as_version_2(&small_file()), |m, _| {
        m.insert("format_version".into(), "3".into());
    });
    assert!(matches!(from_bytes(&chain), Err(FormatError::Malformed(_))));
}
