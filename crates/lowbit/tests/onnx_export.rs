//! ONNX export without another runtime: the f32 round trip (import -> export -> import, and lowbit's own specs
//! export -> import) keeps every weight bit for bit; the QDQ graph has the form the module doc promises; every
//! error variant; files are written atomically and not at all on error.
use lowbit::modelfile::AnyModel;
use lowbit::nn::{Layer, Model};
use lowbit::onnx::export::{self, ExportError, WeightType, OPSET};
use lowbit::onnx::import_bytes;
use lowbit::onnx::proto::ModelProto;
use lowbit::quant::{convert, ptq, QuantConfig};
use lowbit::rng::Rng;
use lowbit::runtime::model::Provenance;
use lowbit::tensor::Tensor;
use prost::Message;
use std::path::Path;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/onnx");

/// Every float the model holds (parameters, then batch-norm running statistics), as bits, in node order, with
/// the node's kind so a layer that changed kind is caught too.
fn weight_bits(m: &Model) -> Vec<(String, Vec<u32>)> {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut out = Vec::new();
    for l in m.layers() {
        match l {
            Layer::Dense(d) => {
                out.push(("dense.weight".into(), bits(&d.weight)));
                out.push(("dense.bias".into(), bits(&d.bias)));
            }
            Layer::Conv2d(c) => {
                out.push((format!("conv.weight/{}", c.groups()), bits(&c.weight)));
                out.push(("conv.bias".into(), bits(&c.bias)));
            }
            Layer::BatchNorm2d(b) => {
                for (n, v) in [
                    ("gamma", &b.gamma),
                    ("beta", &b.beta),
                    ("mean", &b.running_mean),
                    ("var", &b.running_var),
                ] {
                    out.push((format!("bn.{n}"), bits(v)));
                }
                out.push(("bn.eps".into(), vec![b.eps.to_bits()]));
            }
            _ => {}
        }
    }
    out
}

fn f32_bytes(m: &Model) -> Vec<u8> {
    export::float_model(m, &Provenance::default())
        .unwrap()
        .encode_to_vec()
}

/// Random inputs in [0, 1] (pixel-like) for a model.
fn inputs(m: &Model, n: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let per: usize = m.input_shape.iter().product();
    let x = (0..n * per).map(|_| rng.uniform()).collect();
    let [c, h, w] = m.input_shape;
    Tensor::new(x, vec![n, c, h, w])
}

#[test]
fn import_export_import_keeps_every_fixture_weight_bit_for_bit() {
    let mut names: Vec<_> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "onnx").then_some(p)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 5, "fixtures: {names:?}");
    for path in names {
        let first = lowbit::onnx::import(&path).unwrap();
        let again = import_bytes(&f32_bytes(&first), "again").unwrap();
        assert_eq!(
            weight_bits(&first),
            weight_bits(&again),
            "{}",
            path.display()
        );
        assert_eq!(first.input_shape, again.input_shape);
        assert_eq!(first.classes, again.classes);
        // Same function too (same weights, same ops): identical logits.
        let (mut a, mut b) = (first.clone(), again);
        let x = inputs(&a, 3, 7);
        assert_eq!(
            a.forward(&x, false).unwrap().data,
            b.forward(&x, false).unwrap().data,
            "{}",
            path.display()
        );
    }
}

#[test]
fn lowbit_specs_export_and_import_with_identical_weights_and_logits() {
    for spec in [
        "mlp:784-64-10",
        "lenet5",
        "resnet:8",
        "resnet:8:b",
        "mobilenet:t1c16n1s1-t4c24n2s2-h64",
    ] {
        let mut m = Model::from_spec(spec, 3).unwrap();
        // Batch-norm statistics that are not the identity.
        m.forward(&inputs(&m, 8, 1), true).unwrap();
        let mut back = import_bytes(&f32_bytes(&m), spec).unwrap();
        assert_eq!(weight_bits(&m), weight_bits(&back), "{spec}");
        let x = inputs(&m, 4, 2);
        assert_eq!(
            m.forward(&x, false).unwrap().data,
            back.forward(&x, false).unwrap().data,
            "{spec}"
        );
    }
}

fn quantized(spec: &str, bits: u32) -> lowbit::runtime::QuantModel {
    let mut m = Model::from_spec(spec, 5).unwrap();
    m.forward(&inputs(&m, 16, 3), true).unwrap();
    let cfg = QuantConfig {
        weight_bits: bits,
        per_channel: true,
        ..QuantConfig::default()
    };
    let calib = vec![inputs(&m, 32, 4)];
    convert(&ptq(&m, &cfg, &calib).unwrap(), Provenance::default()).unwrap()
}

fn ops(p: &ModelProto) -> Vec<String> {
    p.graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .map(|n| n.op_type().to_string())
        .collect()
}

#[test]
fn qdq_export_has_per_channel_weights_int32_bias_and_opset_13() {
    let qm = quantized("lenet5", 8);
    for wt in [WeightType::Int8, WeightType::Uint8] {
        qdq_form(&qm, wt);
    }
}

fn qdq_form(qm: &lowbit::runtime::QuantModel, wt: WeightType) {
    let p = export::quant_model(qm, wt).unwrap();
    assert_eq!(p.opset_import[0].version(), OPSET);
    let g = p.graph.as_ref().unwrap();
    assert_eq!(g.input[0].name(), "input");
    assert_eq!(g.output[0].name(), "logits");
    let ops = ops(&p);
    assert!(ops.iter().any(|o| o == "Conv") && ops.iter().any(|o| o == "Gemm"));
    assert!(ops.iter().any(|o| o == "QuantizeLinear"));
    let init = |name: &str| g.initializer.iter().find(|t| t.name() == name).unwrap();
    // The first conv: int8 codes, 6 per-channel scales, int32 bias with scale s_in * s_w[c].
    let conv = qm
        .nodes
        .iter()
        .find_map(|n| match &n.op {
            lowbit::runtime::model::QOp::Conv2d(c) => Some((n.name.clone(), c)),
            _ => None,
        })
        .unwrap();
    let (name, c) = conv;
    let w = init(&format!("{name}.weight_q"));
    let z = init(&format!("{name}.weight_zero_point"));
    assert_eq!(w.dims, vec![6, 1, 5, 5]);
    // Codes as stored, back to lowbit's signed codes: the packed weights exactly.
    let offset = match wt {
        WeightType::Int8 => 0,
        WeightType::Uint8 => 128,
    };
    assert_eq!(w.data_type(), if offset == 0 { 3 } else { 2 }, "{wt:?}");
    assert!(z.raw_data().iter().all(|&b| i16::from(b) == offset));
    let codes: Vec<i16> = w
        .raw_data()
        .iter()
        .map(|&b| {
            if offset == 0 {
                i16::from(b as i8)
            } else {
                i16::from(b) - 128
            }
        })
        .collect();
    let want: Vec<i16> = (0..6)
        .flat_map(|r| (0..25).map(move |k| (r, k)))
        .map(|(r, k)| i16::from(c.weights.code(r, k)))
        .collect();
    assert_eq!(codes, want, "{wt:?}");
    let s = init(&format!("{name}.weight_scale"));
    assert_eq!(s.dims, vec![6]);
    let b = init(&format!("{name}.bias_q"));
    assert_eq!(b.data_type(), 6, "int32");
    let bias: Vec<i32> = b
        .raw_data()
        .chunks(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(bias, c.bias);
    let bs = init(&format!("{name}.bias_scale"));
    let bs: Vec<f32> = bs
        .raw_data()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let want: Vec<f32> = c.weight_scales.iter().map(|s| c.input.scale * s).collect();
    assert_eq!(bs, want);
    let checked = p
        .metadata_props
        .iter()
        .find(|e| e.key() == "lowbit.checked_with")
        .unwrap();
    assert!(checked.value().contains("ONNX Runtime"));
    assert!(p.doc_string().contains("Checked with"));
}

#[test]
fn four_bit_weights_keep_their_range_and_activations_get_a_clip() {
    let qm = quantized("mlp:784-32-10", 4);
    let p = export::quant_model(&qm, WeightType::default()).unwrap();
    let g = p.graph.as_ref().unwrap();
    for t in g
        .initializer
        .iter()
        .filter(|t| t.name().ends_with(".weight_q"))
    {
        // uint8 storage: code + 128.
        let codes: Vec<i16> = t.raw_data().iter().map(|&b| i16::from(b) - 128).collect();
        assert!(codes.iter().all(|c| (-7..=7).contains(c)), "{}", t.name());
        assert!(codes.iter().any(|&c| c.abs() == 7), "{}", t.name());
    }
    // A4 activations: the hidden layer's requantization clips to codes [0, 15].
    let qm = {
        let mut m = Model::from_spec("mlp:784-32-10", 5).unwrap();
        let cfg = QuantConfig {
            weight_bits: 4,
            act_bits: 4,
            per_channel: true,
            ..QuantConfig::default()
        };
        m.forward(&inputs(&m, 4, 3), true).unwrap();
        convert(
            &ptq(&m, &cfg, &[inputs(&m, 32, 4)]).unwrap(),
            Provenance::default(),
        )
        .unwrap()
    };
    let p = export::quant_model(&qm, WeightType::default()).unwrap();
    assert!(ops(&p).iter().any(|o| o == "Clip"), "{:?}", ops(&p));
}

#[test]
fn graph_ops_of_resnet_and_mobilenet_are_exported() {
    for (spec, want) in [
        (
            "resnet:8",
            &["Add", "Pad", "Slice", "GlobalAveragePool"][..],
        ),
        ("mobilenet:t1c16n1s1-t4c24n2s2-h64", &["Add", "Conv"][..]),
    ] {
        let p = export::quant_model(&quantized(spec, 8), WeightType::default()).unwrap();
        let ops = ops(&p);
        for w in want {
            assert!(ops.iter().any(|o| o == w), "{spec}: no {w} in {ops:?}");
        }
        let depthwise = p
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .any(|n| n.attribute.iter().any(|a| a.name() == "group" && a.i() > 1));
        assert_eq!(depthwise, spec.starts_with("mobilenet"), "{spec}");
    }
}

#[test]
fn a_qat_float_model_is_refused_with_the_node_named() {
    let mut qat = Model::from_spec("mlp:784-16-10", 1).unwrap();
    lowbit::quant::prepare_qat(&mut qat, &QuantConfig::default()).unwrap();
    let err = export::float_model(&qat, &Provenance::default()).unwrap_err();
    assert!(matches!(err, ExportError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("cannot be exported"), "{err}");
}

#[test]
fn an_invalid_quantized_model_is_refused() {
    let mut qm = quantized("mlp:784-16-10", 8);
    qm.classes = 3;
    let err = export::quant_model(&qm, WeightType::default()).unwrap_err();
    assert!(matches!(err, ExportError::InvalidModel(_)), "{err}");
}

#[test]
fn export_writes_atomically_and_nothing_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let qm = quantized("mlp:784-16-10", 8);
    let s = export::export(
        &AnyModel::Quant(Box::new(qm.clone())),
        WeightType::default(),
        &out,
    )
    .unwrap();
    assert_eq!(s.form, "qdq");
    assert_eq!(std::fs::metadata(&out).unwrap().len() as usize, s.bytes);
    let mut qat = Model::from_spec("mlp:784-16-10", 1).unwrap();
    lowbit::quant::prepare_qat(&mut qat, &QuantConfig::default()).unwrap();
    let bad = dir.path().join("bad.onnx");
    let err = export::export(
        &AnyModel::Float(Box::new(qat), Provenance::default()),
        WeightType::default(),
        &bad,
    )
    .unwrap_err();
    assert!(err.to_string().contains("bad.onnx"), "{err}");
    assert!(!bad.exists());
    // Only the one file: no temporary left behind.
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1);
    assert!(Path::new(&out).exists());
}
