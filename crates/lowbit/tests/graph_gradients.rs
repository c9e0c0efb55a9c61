//! Finite-difference checks of whole graphs: gradients of values read by several nodes are summed, residual adds
//! and channel concats route them, and the input gradient flows through both branches.
mod common;

use common::grad::{central_difference, check, random_tensor};
use lowbit::nn::softmax_cross_entropy;
use lowbit::nn::{
    Add, AxisSlice, Clip, Concat, Conv2d, Dense, Flatten, Layer, Model, Node, Pad, Slice,
};
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;

fn node(name: &str, inputs: &[usize], layer: Layer) -> Node {
    Node {
        name: name.into(),
        inputs: inputs.to_vec(),
        layer,
    }
}

/// input [2,5,5] -> conv a (3 ch) -> clip r; conv b reads r (3 ch); add(b, r); a side branch slices and pads r;
/// concat(add, side) -> flatten -> dense. The input and `r` each feed two nodes.
fn residual_graph(seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    let nodes = vec![
        node(
            "a",
            &[0],
            Layer::Conv2d(Conv2d::new(2, 3, (3, 3), (1, 1), (1, 1), &mut rng)),
        ),
        // A clip far outside the values: identity with gradient 1, so no kink spoils the finite differences
        // (ReLU's own gradient is checked layer by layer elsewhere).
        node("r", &[1], Layer::Clip(Clip::new(-50.0, 50.0).unwrap())),
        node(
            "b",
            &[2],
            Layer::Conv2d(Conv2d::new(3, 3, (3, 3), (1, 1), (1, 1), &mut rng)),
        ),
        node("sum", &[3, 2], Layer::Add(Add::new())),
        node(
            "side.slice",
            &[2],
            Layer::Slice(Slice::new(
                AxisSlice::all(),
                AxisSlice::all(),
                AxisSlice::all(),
            )),
        ),
        node("side.pad", &[5], Layer::Pad(Pad::channels(1, 0))),
        node("cat", &[4, 6], Layer::Concat(Concat::new())),
        node(
            "skip",
            &[0],
            Layer::Conv2d(Conv2d::new(2, 7, (1, 1), (1, 1), (0, 0), &mut rng)),
        ),
        node("join", &[7, 8], Layer::Add(Add::new())),
        node("flat", &[9], Layer::Flatten(Flatten::new())),
        node(
            "fc",
            &[10],
            Layer::Dense(Dense::new(7 * 5 * 5, 4, &mut rng)),
        ),
    ];
    Model {
        nodes,
        input_shape: [2, 5, 5],
        classes: 4,
        spec: "test residual graph".into(),
        normalization: None,
    }
}

#[test]
fn gradients_of_a_residual_graph_match_finite_differences() {
    for seed in 0..3u64 {
        let mut model = residual_graph(seed);
        model.check_structure().unwrap();
        let mut rng = Rng::new(100 + seed);
        let x = random_tensor(&mut rng, &[2, 2, 5, 5]);
        let labels = [1u8, 3];
        let logits = model.forward(&x, true).unwrap();
        let out = softmax_cross_entropy(&logits, &labels).unwrap();
        let dx = model.backward_with_input_grad(&out.grad).unwrap();
        let analytic: Vec<Vec<f32>> = model.params_mut().iter().map(|p| p.grad.to_vec()).collect();
        assert_eq!(analytic.len(), 8, "4 convs/dense x (weight, bias)");
        let loss = |m: &mut Model, x: &Tensor| {
            let logits = m.forward(x, false).unwrap();
            f64::from(softmax_cross_entropy(&logits, &labels).unwrap().loss)
        };
        for (p, grads) in analytic.iter().enumerate() {
            for (i, &g) in grads.iter().enumerate().step_by(3) {
                let mut st = (model.clone(), x.clone());
                let fd = central_difference(
                    &mut st,
                    i,
                    |s| s.0.params_mut().remove(p).value,
                    |s| loss(&mut s.0, &s.1),
                );
                check(&format!("param {p}"), seed, i, fd, g);
            }
        }
        let mut st = (model.clone(), x.clone());
        for i in 0..x.len() {
            let fd = central_difference(&mut st, i, |s| &mut s.1.data, |s| loss(&mut s.0, &s.1));
            check("graph dX", seed, i, fd, dx.data[i]);
        }
    }
}

#[test]
fn structure_errors_name_the_node() {
    let mut m = residual_graph(0);
    m.nodes[3].inputs = vec![3, 5]; // reads a later value
    let e = m.check_structure().unwrap_err().to_string();
    assert!(e.contains("node sum") && e.contains("input 5"), "{e}");
    let mut m = residual_graph(0);
    m.nodes[6].name = "a".into();
    assert!(m
        .check_structure()
        .unwrap_err()
        .to_string()
        .contains("duplicate"));
    let mut m = residual_graph(0);
    m.nodes[3].inputs = vec![3];
    let e = m.check_structure().unwrap_err().to_string();
    assert!(e.contains("node sum") && e.contains("1 inputs"), "{e}");
    let mut m = residual_graph(0);
    m.nodes[6].inputs = vec![4]; // side.pad now unread
    let e = m.check_structure().unwrap_err().to_string();
    assert!(e.contains("side.pad") && e.contains("never read"), "{e}");
}
