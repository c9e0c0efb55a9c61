//! Fuzzes the ONNX importer (`lowbit::onnx::import_bytes`: protobuf decoding, metadata, constant folding, layout
//! transposes, the op table): any input must give `Ok` or `Err`, never a panic or abort, and an imported model
//! must be a valid float model.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lowbit_runtime::model::Provenance;

#[path = "common/float_model.rs"]
mod float_model;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut model) = lowbit::onnx::import_bytes(data, "onnx:fuzz.onnx") {
        float_model::check_accepted(&mut model, &Provenance::default());
    }
});
