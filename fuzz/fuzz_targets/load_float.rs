//! Fuzzes the float model reader (`lowbit.f32`): any input must give `Ok` or `Err`, never a panic or abort.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.f32");
    if let Ok((model, provenance)) = lowbit::modelfile::float_from_bytes(data, path) {
        // A model the reader accepts must write back to bytes that read again.
        let bytes = lowbit::modelfile::float_to_bytes(&model, &provenance)
            .expect("accepted float model must serialize");
        lowbit::modelfile::float_from_bytes(&bytes, path)
            .expect("written float model must read back");
    }
});
