//! QAT preparation, PTQ calibration, conversion to the runtime model and the integer simulation.
use lowbit::nn::{Dense, Layer, Model, Relu};
use lowbit::quant::{
    convert, float_bytes, layer_quant_stats, model_bytes, prepare_qat, ptq, simulate, QuantConfig,
};
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;
use lowbit::Error;
use lowbit_runtime::model::{InputSpec, OutputStage, Provenance, QDense, QOp, QuantModel};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::{QParams, Requant};

/// A 6 -> 5 -> 3 MLP on 1x2x3 "images" with seeded weights and non-zero biases.
fn tiny_model(seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    let mut dense = |i: usize, o: usize| {
        let w = (0..i * o).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
        let b = (0..o).map(|_| rng.uniform_range(-0.2, 0.2)).collect();
        Dense::from_weights(i, o, w, b)
    };
    let layers = vec![
        Layer::Dense(dense(6, 5)),
        Layer::Relu(Relu::new()),
        Layer::Dense(dense(5, 3)),
    ];
    Model::sequential("test:6-5-3", [1, 2, 3], 3, layers)
}

fn pixels(seed: u64, batch: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..batch * 6).map(|_| rng.below(256) as u8).collect()
}

fn to_tensor(p: &[u8]) -> Tensor {
    Tensor::new(
        p.iter().map(|&v| v as f32 / 255.0).collect(),
        vec![p.len() / 6, 1, 2, 3],
    )
}

fn cfg(weight_bits: u32, act_bits: u32) -> QuantConfig {
    QuantConfig {
        weight_bits,
        act_bits,
        ..QuantConfig::default()
    }
}

#[test]
fn prepare_qat_inserts_input_and_hidden_quantizers_only() {
    let mut m = Model::from_spec("mlp:784-64-32-10", 1).unwrap();
    prepare_qat(&mut m, &cfg(4, 4)).unwrap();
    let kinds: Vec<_> = m.layers().map(|l| l.kind()).collect();
    assert_eq!(
        kinds,
        [
            "act_quant",
            "dense",
            "relu",
            "act_quant",
            "dense",
            "relu",
            "act_quant",
            "dense"
        ]
    );
    assert!(matches!(&m.nodes[0].layer, Layer::ActQuant(q) if q.is_input()));
    for l in m.layers() {
        if let Layer::Dense(d) = l {
            assert!(d.weight_quant.is_some());
        }
    }
    assert!(
        prepare_qat(&mut m, &cfg(4, 4)).is_err(),
        "preparing twice is an error"
    );
    let bad = QuantConfig {
        weight_bits: 0,
        ..cfg(4, 4)
    };
    assert!(matches!(
        prepare_qat(&mut Model::from_spec("mlp:784-10", 1).unwrap(), &bad),
        Err(Error::InvalidOption { .. })
    ));
}

#[test]
fn keep_first_last_8bit_sets_those_layers_to_eight_bits() {
    let mut m = Model::from_spec("mlp:784-16-16-10", 1).unwrap();
    let c = QuantConfig {
        keep_first_last_8bit: true,
        ..cfg(2, 4)
    };
    prepare_qat(&mut m, &c).unwrap();
    let x = Tensor::zeros(&[1, 784]);
    m.forward(&x, true).unwrap();
    let bits: Vec<u32> = m
        .layers()
        .filter_map(|l| match l {
            Layer::Dense(d) => d.weight_quant.as_ref().map(|q| q.bits()),
            Layer::ActQuant(q) if !q.is_input() => Some(100 + q.bits()),
            _ => None,
        })
        .collect();
    // dense 8, act 8 (first layer's output), dense 2, act 8 (last layer's input), dense 8
    assert_eq!(bits, vec![8, 108, 2, 108, 8]);
}

/// `add_bits` widens exactly the quantizers whose value only feeds residual `Add`s: each block's second conv
/// (both options), and option B's 1x1 shortcut convs; every other hidden quantizer keeps `act_bits`.
#[test]
fn add_bits_widens_the_values_that_only_feed_adds() {
    // (spec, add_bits, expected quantizers at 8 bits: resnet:8 has one block per stage, option B a 1x1
    // shortcut in stages 2 and 3)
    for (spec, add_bits, wide) in [
        ("resnet:8", Some(8), 3),
        ("resnet:8:b", Some(8), 5),
        ("resnet:8", None, 0),
    ] {
        let mut m = Model::from_spec(spec, 1).unwrap();
        let c = QuantConfig {
            add_bits,
            ..cfg(4, 2)
        };
        prepare_qat(&mut m, &c).unwrap();
        let consumers = m.consumers();
        let (mut eights, mut twos) = (0, 0);
        for (j, node) in m.nodes.iter().enumerate() {
            let Layer::ActQuant(q) = &node.layer else {
                continue;
            };
            if q.is_input() {
                continue;
            }
            let to_adds = consumers[j + 1]
                .iter()
                .all(|&k| matches!(m.nodes[k].layer, Layer::Add(_)));
            let expected = if to_adds && add_bits.is_some() { 8 } else { 2 };
            assert_eq!(q.bits(), expected, "{spec}: {}", node.name);
            if q.bits() == 8 {
                eights += 1;
            } else {
                twos += 1;
            }
        }
        assert_eq!(eights, wide, "{spec} {add_bits:?}");
        assert!(twos >= 6, "{spec}: {twos} quantizers at 2 bits");
    }
    for bad in [1, 9] {
        let mut m = Model::from_spec("resnet:8", 1).unwrap();
        let e = prepare_qat(
            &mut m,
            &QuantConfig {
                add_bits: Some(bad),
                ..cfg(4, 2)
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--add-bits"), "{e}");
    }
    // A model without residual Adds: the width would set nothing, which is an error rather than a silent no-op.
    for spec in ["mlp:784-16-10", "lenet5"] {
        let mut m = Model::from_spec(spec, 1).unwrap();
        let e = prepare_qat(
            &mut m,
            &QuantConfig {
                add_bits: Some(8),
                ..cfg(4, 2)
            },
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("--add-bits") && e.to_string().contains("residual Add"),
            "{spec}: {e}"
        );
    }
}

#[test]
fn converted_codes_equal_the_quantizer_codes_for_every_width() {
    for wbits in [1, 2, 3, 4, 8] {
        let model = tiny_model(3);
        let calib = vec![to_tensor(&pixels(4, 32))];
        let q = ptq(&model, &cfg(wbits, 8), &calib).unwrap();
        let qm = convert(&q, Provenance::default()).unwrap();
        let denses: Vec<&Dense> = q
            .layers()
            .filter_map(|l| match l {
                Layer::Dense(d) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(qm.nodes.len(), denses.len());
        for (ql, d) in qm.ops().zip(&denses) {
            let QOp::Dense(qd) = ql else {
                panic!("expected dense")
            };
            let wq = d.weight_quant.as_ref().unwrap();
            let (codes, scales) = wq.quantize_codes(&d.weight, d.out_features, d.in_features);
            assert_eq!(qd.weights.bits, wbits);
            assert_eq!(qd.weight_scales, scales);
            for r in 0..d.out_features {
                for c in 0..d.in_features {
                    assert_eq!(
                        qd.weights.code(r, c),
                        codes[r * d.in_features + c],
                        "bits {wbits} row {r} col {c}"
                    );
                }
                let s =
                    qd.input.scale as f64 * scales[if scales.len() == 1 { 0 } else { r }] as f64;
                assert_eq!(qd.bias[r], (d.bias[r] as f64 / s).round() as i32);
            }
        }
        assert!(matches!(
            &qm.nodes[0].op,
            QOp::Dense(QDense {
                output: OutputStage::Requantize { relu: true, .. },
                ..
            })
        ));
        assert!(matches!(
            &qm.nodes[1].op,
            QOp::Dense(QDense {
                output: OutputStage::Logits,
                ..
            })
        ));
        assert_eq!(qm.input.qparams, QParams::new(1.0 / 255.0, 0).unwrap());
    }
}

/// The integer hidden codes may differ from the fake-quant float model by one code: the float sum and the
/// fixed-point requantization round differently only when the exact value sits within float error of a half
/// step. Logits then differ by at most sum_k |w2[c][k]| * s_hidden (one code per input) plus f32 noise.
#[test]
fn simulation_tracks_the_fake_quant_model_within_one_code() {
    for (wbits, abits) in [(8, 8), (4, 4), (2, 3)] {
        let model = tiny_model(5);
        let calib = vec![to_tensor(&pixels(6, 64))];
        let mut q = ptq(&model, &cfg(wbits, abits), &calib).unwrap();
        let qm = convert(&q, Provenance::default()).unwrap();
        let px = pixels(7, 16);
        let sim = simulate(&qm, &px, 16).unwrap();
        assert_eq!(sim.codes.len(), 1);
        // Float fake-quant forward, layer by layer, keeping the hidden activation.
        let mut h = to_tensor(&px);
        let mut hidden = None;
        for l in q.layers_mut() {
            h = l.forward(&h, false).unwrap();
            if let Layer::ActQuant(a) = l {
                if !a.is_input() {
                    hidden = Some((h.clone(), a.qparams()));
                }
            }
        }
        let (hidden, hqp) = hidden.unwrap();
        for (i, (&code, &f)) in sim.codes[0].iter().zip(&hidden.data).enumerate() {
            let expect = (f / hqp.scale).round() as i32 + hqp.zero_point;
            assert!(
                (code as i32 - expect).abs() <= 1,
                "bits {wbits}/{abits} elem {i}: sim {code} float {expect}"
            );
        }
        let QOp::Dense(last) = &qm.nodes[1].op else {
            panic!()
        };
        for (i, (&a, &b)) in sim.logits.iter().zip(&h.data).enumerate() {
            let c = i % 3;
            let row_l1: f32 = (0..5)
                .map(|k| last.weights.code(c, k).unsigned_abs() as f32)
                .sum();
            let tol = row_l1 * last.weight_scales[c.min(last.weight_scales.len() - 1)] * hqp.scale
                + 1e-4 * (1.0 + b.abs());
            assert!(
                (a - b).abs() <= tol,
                "logit {i}: sim {a} float {b} tol {tol}"
            );
        }
    }
}

/// A hand-computed two-layer model: 8-bit then 4-bit weights, a rounding tie, a non-zero input zero point.
#[test]
fn simulate_matches_a_hand_computed_model() {
    let qp = |s: f32, z: i32| QParams::new(s, z).unwrap();
    let l1 = QDense {
        in_features: 2,
        out_features: 2,
        weights: PackedWeights::pack(8, 2, 2, &[1, 2, -1, 3]).unwrap(),
        weight_scales: vec![0.5],
        bias: vec![1, -2],
        input: qp(0.5, 0),
        output: OutputStage::Requantize {
            qparams: qp(0.25, 1),
            bits: 8,
            relu: true,
            requant: vec![Requant::from_real(0.5).unwrap()],
            max_code: None,
        },
    };
    let l2 = QDense {
        in_features: 2,
        out_features: 1,
        weights: PackedWeights::pack(4, 1, 2, &[2, -1]).unwrap(),
        weight_scales: vec![0.5],
        bias: vec![3],
        input: qp(0.25, 1),
        output: OutputStage::Logits,
    };
    let qm = QuantModel::chain(
        InputSpec {
            channels: 1,
            height: 1,
            width: 2,
            qparams: qp(0.5, 0),
        },
        vec![QOp::Dense(l1), QOp::Dense(l2)],
        1,
    );
    // x = [3, 4]: acc = [1 + 3 + 8, -2 - 3 + 12] = [12, 7]; * 0.5 = [6, 3.5 -> 4 (half up)]; + zp 1 = [7, 5].
    // Layer 2: acc = 3 + (7 - 1) * 2 + (5 - 1) * -1 = 11; logits = 11 * (0.25 * 0.5) = 1.375.
    // x = [0, 0]: acc = [1, -2] -> [0.5 -> 1, -1] + 1 = [2, 0 -> clamped to zp 1 by the ReLU];
    // layer 2: 3 + (2 - 1) * 2 + 0 = 5 -> 0.625.
    let sim = simulate(&qm, &[3, 4, 0, 0], 2).unwrap();
    assert_eq!(sim.codes, vec![vec![7, 5, 2, 1]]);
    assert_eq!(sim.final_acc, vec![11, 5]);
    assert_eq!(sim.logits, vec![1.375, 0.625]);
    assert!(matches!(simulate(&qm, &[1, 2, 3], 2), Err(Error::Shape(_))));
}

#[test]
fn convert_rejects_a_model_that_was_not_prepared() {
    let m = tiny_model(1);
    assert!(matches!(
        convert(&m, Provenance::default()),
        Err(Error::Shape(_))
    ));
}

#[test]
fn model_bytes_counts_packed_codes_biases_and_scales() {
    let model = tiny_model(9);
    let calib = vec![to_tensor(&pixels(2, 8))];
    let c = QuantConfig {
        per_channel: true,
        ..cfg(4, 8)
    };
    let qm = convert(&ptq(&model, &c, &calib).unwrap(), Provenance::default()).unwrap();
    // input qparams 8; layer 1: 5 rows x 3 bytes (6 nibbles) + 5 biases * 4 + 5 scales * 4 + input qparams 8
    // + output qparams 8 + 5 requants * 8; layer 2: 3 rows x 3 bytes + 3 * 4 + 3 * 4 + 8.
    let expected = 8 + (15 + 20 + 20 + 8 + 8 + 40) + (9 + 12 + 12 + 8);
    assert_eq!(model_bytes(&qm), expected);
    assert_eq!(float_bytes(&model), 4 * (30 + 5 + 15 + 3));
}

#[test]
fn layer_stats_rank_two_bit_weights_below_eight_bit() {
    let model = tiny_model(11);
    let calib = vec![to_tensor(&pixels(12, 64))];
    let test = vec![to_tensor(&pixels(13, 64))];
    let s8 = layer_quant_stats(&ptq(&model, &cfg(8, 8), &calib).unwrap(), &test).unwrap();
    let s2 = layer_quant_stats(&ptq(&model, &cfg(2, 8), &calib).unwrap(), &test).unwrap();
    assert_eq!(s8.len(), 2);
    assert_eq!(s8[0].act_bits, Some(8));
    assert_eq!(s8[1].act_bits, None);
    // 8-bit min-max: ~6 dB per bit minus the range's crest factor; 30 dB is a loose floor.
    assert!(s8[0].weight_sqnr_db > 30.0, "{s8:?}");
    assert!(s8[0].act_sqnr_db > 20.0, "{s8:?}");
    assert!(s2[0].weight_sqnr_db < s8[0].weight_sqnr_db - 10.0, "{s2:?}");
    assert!(s2[1].act_sqnr_db < s8[1].act_sqnr_db, "{s2:?} vs {s8:?}");
    assert!(serde_json::to_string(&s8).is_ok());
}

#[test]
fn layer_stats_cover_the_adds_and_the_pooling_of_a_residual_graph() {
    // resnet:8 (option A) on 3x8x8 random images: 8 weight layers (7 convolutions, the dense head), an Add per
    // block and the global average pool.
    let model = Model::from_spec_for("resnet:8", 4, [3, 8, 8], 5).unwrap();
    let mut rng = Rng::new(5);
    let mut images = |n: usize| {
        let x = (0..n * 192).map(|_| rng.uniform_range(0.0, 1.0)).collect();
        Tensor::new(x, vec![n, 3, 8, 8])
    };
    let calib = vec![images(32)];
    let test = vec![images(16)];
    let stats = layer_quant_stats(&ptq(&model, &cfg(4, 8), &calib).unwrap(), &test).unwrap();
    let weighted: Vec<_> = stats.iter().filter(|s| s.weight_bits.is_some()).collect();
    let others: Vec<&str> = stats
        .iter()
        .filter(|s| s.weight_bits.is_none())
        .map(|s| s.layer.as_str())
        .collect();
    assert_eq!(weighted.len(), 8, "{stats:?}");
    assert_eq!(
        others,
        [
            "s1.b0.add add",
            "s2.b0.add add",
            "s3.b0.add add",
            "pool global_avg_pool2d"
        ],
        "{stats:?}"
    );
    for s in stats.iter().filter(|s| s.weight_bits.is_none()) {
        // Requantized to 8 bits, with an output that has lost something to the 4-bit weights before it.
        assert_eq!(s.act_bits, Some(8), "{s:?}");
        assert!(s.act_sqnr_db.is_finite() && s.act_sqnr_db > 0.0, "{s:?}");
        assert!(
            s.weight_sqnr_db.is_nan() && s.weight_clipped_fraction.is_nan(),
            "{s:?}"
        );
        assert!((0.0..=1.0).contains(&s.act_clipped_fraction), "{s:?}");
    }
    // Rows in node order: each Add after the convolution that feeds it.
    let at = |name: &str| {
        stats
            .iter()
            .position(|s| s.layer.starts_with(name))
            .unwrap()
    };
    assert!(at("s1.b0.2.conv") < at("s1.b0.add") && at("s1.b0.add") < at("s2.b0.1.conv"));
    let json = serde_json::to_value(&stats).unwrap();
    assert!(json[at("pool")]["weight_bits"].is_null());
    assert!(json[at("pool")]["weight_sqnr_db"].is_null());
    // The report reads back: null figures as NaN.
    let back: Vec<lowbit::quant::LayerQuantStats> = serde_json::from_value(json).unwrap();
    assert_eq!(back.len(), stats.len());
    assert!(back[at("pool")].weight_sqnr_db.is_nan() && back[at("pool")].weight_bits.is_none());
    assert_eq!(back[0].act_sqnr_db, stats[0].act_sqnr_db);
}

#[test]
fn qat_training_step_moves_shadow_weights_through_the_ste() {
    let mut m = tiny_model(21);
    prepare_qat(&mut m, &cfg(4, 4)).unwrap();
    let x = to_tensor(&pixels(22, 8));
    let logits = m.forward(&x, true).unwrap();
    m.backward(&Tensor::new(vec![1.0; logits.len()], logits.shape.clone()))
        .unwrap();
    for l in m.layers() {
        if let Layer::Dense(d) = l {
            assert!(d.grad_weight.iter().any(|&g| g != 0.0));
        }
    }
}

#[test]
fn engine_equals_the_simulation_layer_by_layer() {
    for (wbits, abits, per_channel) in [(8, 8, true), (4, 4, false), (2, 3, true), (1, 8, true)] {
        let c = QuantConfig {
            per_channel,
            ..cfg(wbits, abits)
        };
        let q = ptq(&tiny_model(31), &c, &[to_tensor(&pixels(32, 64))]).unwrap();
        let qm = convert(&q, Provenance::default()).unwrap();
        let px = pixels(33, 40);
        let sim = simulate(&qm, &px, 40).unwrap();
        let engine = lowbit_runtime::engine::Engine::new(&qm).unwrap();
        let trace = engine.run_traced(&px, 40).unwrap();
        assert_eq!(trace.codes, sim.codes, "codes, bits {wbits}/{abits}");
        assert_eq!(
            trace.accumulators, sim.final_acc,
            "acc, bits {wbits}/{abits}"
        );
        assert_eq!(trace.logits, sim.logits, "logits, bits {wbits}/{abits}");
    }
}
