//! Format version 3 (graphs): a graph with every op kind round-trips and runs, and hostile node attributes
//! (sizes that overflow, zero groups, wrong table lengths) are typed errors naming the node, found before any
//! allocation they size.
use lowbit_runtime::engine::Engine;
use lowbit_runtime::format::{from_bytes, to_bytes};
use lowbit_runtime::model::{InputSpec, QAdd, QMaxPool2d, QNode, QOp, QPad, QuantModel};
use lowbit_runtime::qparams::QParams;
use lowbit_runtime::testutil::{
    edit_model_json, random_dense, random_graph, random_grouped_conv, LayerOpts, Rng,
};
use lowbit_runtime::{FormatError, QuantError};

fn opts(weight_bits: u32, act_bits: u32, per_channel: bool) -> LayerOpts {
    LayerOpts {
        weight_bits,
        act_bits,
        per_channel,
    }
}

fn graph_file() -> Vec<u8> {
    to_bytes(&random_graph(3, opts(8, 8, true))).unwrap()
}

/// `graph_file()` with node `node`'s op JSON edited.
fn edit_op(node: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    edit_model_json(&graph_file(), |m| {
        let nodes = m["nodes"].as_array_mut().unwrap();
        let n = nodes.iter_mut().find(|n| n["name"] == node).unwrap();
        edit(&mut n["op"]);
    })
    .unwrap()
}

/// The node (or tensor) an error names.
fn context(r: Result<lowbit_runtime::QuantModel, FormatError>) -> String {
    match r {
        Err(FormatError::Quant(QuantError::ShapeMismatch { context, .. })) => context,
        Err(FormatError::Quant(QuantError::InvalidQParams { tensor, .. })) => tensor,
        other => panic!("expected a graph error naming the node, got {other:?}"),
    }
}

#[test]
fn a_graph_with_every_op_round_trips_exactly_and_runs_at_every_bit_width() {
    for (seed, (wb, ab, pc)) in [
        (8, 8, true),
        (8, 8, false),
        (4, 8, true),
        (4, 4, false),
        (2, 2, true),
        (1, 8, true),
        (3, 5, false),
    ]
    .into_iter()
    .enumerate()
    {
        let m = random_graph(seed as u64, opts(wb, ab, pc));
        let bytes = to_bytes(&m).unwrap_or_else(|e| panic!("W{wb}A{ab}: {e}"));
        let back = from_bytes(&bytes).unwrap_or_else(|e| panic!("W{wb}A{ab}: {e}"));
        assert_eq!(back, m, "W{wb}A{ab}");
        assert_eq!(to_bytes(&back).unwrap(), bytes, "W{wb}A{ab}: deterministic");
        let engine = Engine::new(&back).unwrap();
        let mut rng = Rng(seed as u64);
        let x = rng.bytes(4 * engine.input_features());
        let logits = engine.run(&x, 4).unwrap();
        assert_eq!(logits.len(), 4 * 3);
        assert!(logits.iter().all(|v| v.is_finite()), "W{wb}A{ab}");
    }
}

fn input(channels: usize, height: usize, width: usize) -> InputSpec {
    InputSpec {
        channels,
        height,
        width,
        qparams: QParams {
            scale: 1.0 / 255.0,
            zero_point: 0,
        },
    }
}

/// A graph of `(name, inputs, op)` nodes.
fn graph(input: InputSpec, nodes: Vec<(&str, Vec<usize>, QOp)>, classes: usize) -> QuantModel {
    QuantModel {
        nodes: nodes
            .into_iter()
            .map(|(name, inputs, op)| QNode {
                name: name.into(),
                inputs,
                op,
            })
            .collect(),
        ..QuantModel::chain(input, Vec::new(), classes)
    }
}

fn is_limit(r: &Result<QuantModel, FormatError>) -> bool {
    matches!(r, Err(FormatError::LimitExceeded { .. }))
}

#[test]
fn a_conv_whose_stride_hides_huge_padded_planes_is_rejected_before_anything_allocates_them() {
    // Padding 2^19 with stride 209715 keeps the stem's 6x6 output, so every shape downstream still fits; the
    // kernels would pad the input to 3 planes of about 1.26M x 1.26M codes (4.7 TB) first.
    let bytes = edit_op("stem", |op| {
        op["padding"] = serde_json::json!([1 << 19, 1 << 19]);
        op["stride"] = serde_json::json!([209_715, 209_715]);
    });
    assert!(is_limit(&from_bytes(&bytes)), "{:?}", from_bytes(&bytes));
}

#[test]
fn a_grouped_conv_beyond_the_grouped_kernel_limits_fails_in_the_reader_as_in_the_engine() {
    // 2x1x1 -> grouped conv 2->2 (2 groups, stride 70000 rows: above the grouped kernel's 65536) -> flatten
    // -> dense 2->3. Before, the reader accepted it and Engine::new refused it.
    let o = opts(8, 8, true);
    let mut rng = Rng(1);
    let x = input(2, 1, 1);
    let geometry = ((1, 1), (1, 1), (0, 0));
    let (conv, qp) = random_grouped_conv(&mut rng, x.qparams, 2, 2, geometry, 2, o);
    let (fc, _) = random_dense(&mut rng, qp, 2, 3, true, o);
    let m = graph(
        x,
        vec![
            ("conv", vec![0], conv),
            ("flatten", vec![1], QOp::Flatten),
            ("fc", vec![2], fc),
        ],
        3,
    );
    let bytes = edit_model_json(&to_bytes(&m).unwrap(), |v| {
        v["nodes"][0]["op"]["stride"] = serde_json::json!([70_000, 1])
    })
    .unwrap();
    assert_eq!(context(from_bytes(&bytes)), "conv");
    let mut wide = m.clone();
    if let QOp::Conv2d(c) = &mut wide.nodes[0].op {
        c.stride = (70_000, 1);
    }
    assert!(Engine::new(&wide).is_err());
}

#[test]
fn many_large_values_alive_at_once_exceed_the_total_activation_limit() {
    // Input 1x1x1; five pads to 1x8192x8192 (2^26 codes each, the per-value limit), summed by four adds, max
    // pooled to 1x1x1, a dense to 3 logits: nine values of 2^26, more than 2^28 in all. Written with small pads,
    // then enlarged in the file (the writer checks the limits too).
    let o = opts(8, 8, true);
    let x = input(1, 1, 1);
    let qp_add = QParams {
        scale: 0.01,
        zero_point: 3,
    };
    let pad = QOp::Pad(QPad {
        channels: (0, 0),
        rows: (0, 1),
        cols: (0, 1),
    });
    let add = |a| {
        QOp::Add(QAdd {
            inputs: [a, x.qparams],
            output: qp_add,
            bits: 8,
            relu: false,
        })
    };
    let pool = QOp::MaxPool2d(QMaxPool2d {
        kernel: (2, 2),
        stride: (2, 2),
    });
    let (fc, _) = random_dense(&mut Rng(2), qp_add, 1, 3, true, o);
    let m = graph(
        x,
        vec![
            ("p1", vec![0], pad.clone()),
            ("p2", vec![0], pad.clone()),
            ("p3", vec![0], pad.clone()),
            ("p4", vec![0], pad.clone()),
            ("p5", vec![0], pad),
            ("a1", vec![1, 2], add(x.qparams)),
            ("a2", vec![6, 3], add(qp_add)),
            ("a3", vec![7, 4], add(qp_add)),
            ("a4", vec![8, 5], add(qp_add)),
            ("pool", vec![9], pool),
            ("flatten", vec![10], QOp::Flatten),
            ("fc", vec![11], fc),
        ],
        3,
    );
    let small = to_bytes(&m).unwrap();
    assert!(from_bytes(&small).is_ok());
    let big = edit_model_json(&small, |v| {
        for n in v["nodes"].as_array_mut().unwrap() {
            match n["op"]["kind"].as_str() {
                Some("pad") => {
                    n["op"]["rows"] = serde_json::json!([0, 8191]);
                    n["op"]["cols"] = serde_json::json!([0, 8191]);
                }
                Some("max_pool2d") => {
                    n["op"]["kernel"] = serde_json::json!([8192, 8192]);
                    n["op"]["stride"] = serde_json::json!([8192, 8192]);
                }
                _ => {}
            }
        }
    })
    .unwrap();
    assert!(is_limit(&from_bytes(&big)), "{:?}", from_bytes(&big));
}
