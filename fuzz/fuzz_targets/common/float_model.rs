//! The checks every fuzz target that yields a float model applies to it (included with `#[path]`).
use lowbit::nn::Model;
use lowbit::tensor::Tensor;
use lowbit_runtime::model::Provenance;
use std::path::Path;

/// Activation elements of one sample over every value, if the layers' own shape inference accepts the graph.
fn activation_elems(model: &Model) -> Option<usize> {
    let mut shapes = vec![model.input_shape.to_vec()];
    for node in &model.nodes {
        let inputs: Vec<&[usize]> = node.inputs.iter().map(|&v| shapes[v].as_slice()).collect();
        let shape = node.layer.output_shape(&inputs).ok()?;
        shapes.push(shape);
    }
    Some(shapes.iter().map(|s| s.iter().product::<usize>()).sum())
}

/// An accepted model must write to a float file that reads back, have shapes, and (when its activations fit
/// 2^20 elements) evaluate one sample to `classes` logits.
pub fn check_accepted(model: &mut Model, provenance: &Provenance) {
    let bytes = lowbit::modelfile::float_to_bytes(model, provenance)
        .expect("accepted float model must serialize");
    lowbit::modelfile::float_from_bytes(&bytes, Path::new("fuzz.f32"))
        .expect("written float model must read back");
    let elems = activation_elems(model).expect("accepted float model must have shapes");
    if elems <= 1 << 20 {
        let [c, h, w] = model.input_shape;
        let y = model
            .forward(&Tensor::zeros(&[1, c, h, w]), false)
            .expect("accepted float model must run");
        assert_eq!(y.shape, vec![1, model.classes]);
    }
}
