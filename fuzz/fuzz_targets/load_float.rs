//! Fuzzes the float model reader (`lowbit.f32`): any input must give `Ok` or `Err`, never a panic or abort.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lowbit::nn::Model;
use lowbit::tensor::Tensor;
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

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.f32");
    if let Ok((mut model, provenance)) = lowbit::modelfile::float_from_bytes(data, path) {
        // A model the reader accepts must write back to bytes that read again.
        let bytes = lowbit::modelfile::float_to_bytes(&model, &provenance)
            .expect("accepted float model must serialize");
        lowbit::modelfile::float_from_bytes(&bytes, path)
            .expect("written float model must read back");
        // ... and evaluate (when small enough to run here) to one row of logits.
        let elems = activation_elems(&model).expect("accepted float model must have shapes");
        if elems <= 1 << 20 {
            let [c, h, w] = model.input_shape;
            let y = model
                .forward(&Tensor::zeros(&[1, c, h, w]), false)
                .expect("accepted float model must run");
            assert_eq!(y.shape, vec![1, model.classes]);
        }
    }
});
