//! Fuzzes the ONNX importer (`lowbit::onnx::import_bytes`: protobuf decoding, constant folding, the op table):
//! any input must give `Ok` or `Err`, never a panic or abort.
#![no_main]
use libfuzzer_sys::fuzz_target;
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

fuzz_target!(|data: &[u8]| {
    if let Ok(mut model) = lowbit::onnx::import_bytes(data, "onnx:fuzz.onnx") {
        // An imported model must be a valid float model: it writes to a float file that reads back...
        let provenance = Provenance::default();
        let bytes = lowbit::modelfile::float_to_bytes(&model, &provenance)
            .expect("imported model must serialize");
        lowbit::modelfile::float_from_bytes(&bytes, Path::new("fuzz.f32"))
            .expect("written imported model must read back");
        // ... and evaluates (when small enough to run here) to one row of logits.
        let elems = activation_elems(&model).expect("imported model must have shapes");
        if elems <= 1 << 20 {
            let [c, h, w] = model.input_shape;
            let y = model
                .forward(&Tensor::zeros(&[1, c, h, w]), false)
                .expect("imported model must run");
            assert_eq!(y.shape, vec![1, model.classes]);
        }
    }
});
