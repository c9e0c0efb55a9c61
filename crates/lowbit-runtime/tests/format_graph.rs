//! Format version 3 (graphs): a graph with every op kind round-trips and runs, and hostile node attributes
//! (sizes that overflow, zero groups, wrong table lengths) are typed errors naming the node, found before any
//! allocation they size.
use lowbit_runtime::engine::Engine;
use lowbit_runtime::format::{from_bytes, to_bytes};
use lowbit_runtime::testutil::{edit_model_json, random_graph, LayerOpts, Rng};
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
