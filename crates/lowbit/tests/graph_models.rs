//! Graph models end to end: resnet and mobilenet specs build for any input, train (forward and backward through
//! residual adds and depthwise convolutions), quantize (PTQ at 8, 4 and 2 bits) and run on the integer engine
//! node for node equal to the independent simulation; float files round-trip them.
mod common;

use common::{batch, engine_equals_simulation};
use lowbit::data::{load, DataSource, Dataset};
use lowbit::modelfile::{float_from_bytes, float_to_bytes};
use lowbit::nn::Model;
use lowbit::quant::{convert, ptq, QuantConfig};
use lowbit::runtime::model::Provenance;
use lowbit::tensor::Tensor;
use std::path::Path;

#[test]
fn resnet20_and_mobilenet_have_the_expected_size_and_shapes() {
    let r = Model::from_spec("resnet:20", 0).unwrap();
    // He et al.'s ResNet-20: 0.27M parameters (option A adds none).
    let params = r.param_count();
    assert!((268_000..=275_000).contains(&params), "{params}");
    let b = Model::from_spec("resnet:20:b", 0).unwrap();
    assert!(b.param_count() > params, "option B adds 1x1 convs");
    for spec in ["resnet:20", "resnet:20:b", "mobilenet"] {
        for (shape, classes) in [([1, 28, 28], 10), ([3, 32, 32], 7), ([3, 17, 23], 4)] {
            let mut m = Model::from_spec_for(spec, 1, shape, classes).unwrap();
            let x = Tensor::zeros(&[2, shape[0], shape[1], shape[2]]);
            let y = m.forward(&x, false).unwrap();
            assert_eq!(y.shape, vec![2, classes], "{spec} {shape:?}");
        }
    }
    assert!(Model::from_spec("resnet:21", 0).is_err());
    assert!(Model::from_spec("resnet:20:c", 0).is_err());
    assert!(Model::from_spec("mobilenet:t4c24n2", 0).is_err());
    assert!(Model::from_spec("mobilenet:t1c8n1s1-h32", 0).is_ok());
}

#[test]
fn a_training_step_through_residual_and_depthwise_graphs_gives_finite_gradients() {
    let split = load(&DataSource::Builtin).unwrap();
    for spec in ["resnet:8", "resnet:8:b", "mobilenet:t1c8n1s1-t2c16n2s2-h32"] {
        let mut m = Model::from_spec(spec, 3).unwrap();
        let x = batch(&split.train, 0, 8);
        let logits = m.forward(&x, true).unwrap();
        let labels: Vec<u8> = split.train.labels[..8].to_vec();
        let out = lowbit::nn::softmax_cross_entropy(&logits, &labels).unwrap();
        m.backward(&out.grad).unwrap();
        let params = m.params_mut();
        assert!(!params.is_empty());
        for p in params {
            assert!(p.grad.iter().all(|g| g.is_finite()), "{spec} {}", p.name);
        }
    }
}

#[test]
fn graph_models_round_trip_through_float_files() {
    for spec in ["resnet:8", "resnet:8:b", "mobilenet:t1c8n1s1-t2c16n2s2-h32"] {
        let mut m = Model::from_spec(spec, 5).unwrap();
        // Non-trivial batch-norm statistics.
        let split = load(&DataSource::Builtin).unwrap();
        m.forward(&batch(&split.train, 0, 16), true).unwrap();
        let bytes = float_to_bytes(&m, &Provenance::default()).unwrap();
        let (mut back, _) = float_from_bytes(&bytes, Path::new("m.lbf")).unwrap();
        assert_eq!(back.nodes.len(), m.nodes.len());
        let x = batch(&split.test, 0, 4);
        assert_eq!(
            back.forward(&x, false).unwrap().data,
            m.forward(&x, false).unwrap().data,
            "{spec}"
        );
        assert_eq!(
            float_to_bytes(&back, &Provenance::default()).unwrap(),
            bytes
        );
    }
}

#[test]
fn ptq_graph_models_run_on_the_engine_node_for_node_equal_to_the_simulation() {
    let split = load(&DataSource::Builtin).unwrap();
    let calib: Vec<Tensor> = (0..2).map(|i| batch(&split.train, i * 100, 100)).collect();
    let test = Dataset {
        images: split.test.images[..200 * split.test.image_len()].to_vec(),
        labels: split.test.labels[..200].to_vec(),
        n: 200,
        ..split.test.clone()
    };
    for spec in ["resnet:8", "resnet:8:b", "mobilenet:t1c8n1s1-t2c16n2s2-h32"] {
        let mut m = Model::from_spec(spec, 2).unwrap();
        for i in 0..3 {
            m.forward(&batch(&split.train, i * 32, 32), true).unwrap();
        }
        let float_pred = m.predict(&batch(&test, 0, 200)).unwrap();
        for bits in [8, 4, 2] {
            let cfg = QuantConfig {
                weight_bits: bits,
                ..QuantConfig::default()
            };
            let q = ptq(&m, &cfg, &calib).unwrap();
            let qm = convert(&q, Provenance::default()).unwrap();
            let pred = engine_equals_simulation(&qm, &test);
            if bits == 8 {
                // Guards against a trivially equal pair (everything saturated): at 8 bits the engine follows the
                // float model it quantizes.
                let same = pred.iter().zip(&float_pred).filter(|(a, b)| a == b).count();
                assert!(same >= 180, "{spec}: W8A8 agrees with f32 on {same}/200");
            }
        }
    }
}

#[test]
fn a_hand_built_graph_with_every_op_runs_on_the_engine_node_for_node_equal_to_the_simulation() {
    use lowbit::runtime::engine::Engine;
    use lowbit::runtime::testutil::{random_graph, LayerOpts, Rng};
    for (seed, (weight_bits, act_bits, per_channel)) in [
        (8, 8, true),
        (4, 8, false),
        (2, 4, true),
        (1, 8, true),
        (3, 5, false),
    ]
    .into_iter()
    .enumerate()
    {
        let o = LayerOpts {
            weight_bits,
            act_bits,
            per_channel,
        };
        let qm = random_graph(seed as u64, o);
        let engine = Engine::new(&qm).unwrap();
        let batch = 64;
        let x = Rng(seed as u64 + 100).bytes(batch * engine.input_features());
        let trace = engine.run_traced(&x, batch).unwrap();
        let sim = lowbit::quant::simulate(&qm, &x, batch).unwrap();
        assert_eq!(trace.codes.len(), sim.codes.len());
        for (i, (e, s)) in trace.codes.iter().zip(&sim.codes).enumerate() {
            assert_eq!(e, s, "{o:?}: node {}", qm.nodes[i].name);
        }
        assert_eq!(trace.accumulators, sim.final_acc, "{o:?}");
        // Not a degenerate graph: the codes after the table differ between samples.
        let lut = &trace.codes[7];
        let per = lut.len() / batch;
        assert!(lut.chunks(per).any(|c| c != &lut[..per]), "{o:?}");
    }
}

#[test]
fn planned_engine_runs_with_fusions_equal_the_traced_unfused_run_and_the_simulation() {
    // `run` takes the planned steps (conv + add fused, the channel-pair-plane kernels, the batch split), the
    // trace the unfused ones: the logits must be the same numbers, at every batch size and input shape.
    let split = load(&DataSource::Builtin).unwrap();
    let calib: Vec<Tensor> = (0..2).map(|i| batch(&split.train, i * 100, 100)).collect();
    for spec in ["resnet:8", "resnet:8:b", "mobilenet:t1c8n1s1-t2c16n2s2-h32"] {
        let mut m = Model::from_spec(spec, 4).unwrap();
        for i in 0..3 {
            m.forward(&batch(&split.train, i * 32, 32), true).unwrap();
        }
        for bits in [8, 4] {
            let cfg = QuantConfig {
                weight_bits: bits,
                ..QuantConfig::default()
            };
            let qm = convert(&ptq(&m, &cfg, &calib).unwrap(), Provenance::default()).unwrap();
            let engine = lowbit::runtime::engine::Engine::new(&qm).unwrap();
            // The same plan with 3x3 convolutions kept off Winograd (on AVX2, int8 ResNet convolutions with 16 or
            // more input channels take it by default).
            let direct = lowbit::runtime::engine::Engine::with_options(
                &qm,
                lowbit::runtime::engine::EngineOptions {
                    direct_3x3: true,
                    ..Default::default()
                },
            )
            .unwrap();
            let winograd = |e: &lowbit::runtime::engine::Engine| {
                e.kernel_paths().iter().any(|p| p.contains("winograd"))
            };
            assert!(!winograd(&direct), "{spec} W{bits}");
            // The AVX-512 VNNI tier takes its channel-quad planes instead (4 times the products per multiply).
            let isa = lowbit::runtime::kernels::selected_isa();
            if bits == 8 && spec.starts_with("resnet") {
                let paths = engine.kernel_paths();
                match isa {
                    lowbit::runtime::kernels::Isa::Avx2 => {
                        assert!(winograd(&engine), "{spec} W{bits}: {paths:?}")
                    }
                    lowbit::runtime::kernels::Isa::Avx512Vnni => assert!(
                        paths
                            .iter()
                            .filter(|p| p.starts_with("conv"))
                            .all(|p| p.contains("quad")),
                        "{spec} W{bits}: {paths:?}"
                    ),
                    _ => {}
                }
            }
            let per = split.test.image_len();
            for n in [1, 7, 40] {
                let input = &split.test.images[..n * per];
                let traced = engine.run_traced(input, n).unwrap();
                let sim = lowbit::quant::simulate(&qm, input, n).unwrap();
                assert_eq!(traced.logits, sim.logits, "{spec} W{bits} batch {n}: trace");
                assert_eq!(
                    engine.run(input, n).unwrap(),
                    sim.logits,
                    "{spec} W{bits} batch {n}: planned run"
                );
                assert_eq!(
                    direct.run(input, n).unwrap(),
                    sim.logits,
                    "{spec} W{bits} batch {n}: planned run without Winograd"
                );
            }
        }
    }
}
