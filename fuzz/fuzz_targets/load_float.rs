//! Fuzzes the float model reader (`lowbit.f32`): any input must give `Ok` or `Err`, never a panic or abort.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

#[path = "common/float_model.rs"]
mod float_model;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.f32");
    if let Ok((mut model, provenance)) = lowbit::modelfile::float_from_bytes(data, path) {
        float_model::check_accepted(&mut model, &provenance);
    }
});
