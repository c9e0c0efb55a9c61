//! Fuzzes the `.lbq` reader: any input must give `Ok` or `Err`, never a panic, abort or huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lowbit_runtime::format::read_metadata(data);
    if let Ok(model) = lowbit_runtime::format::from_bytes(data) {
        // A model the reader accepts must run and write back.
        let engine = lowbit_runtime::engine::Engine::new(&model)
            .expect("accepted model must build an engine");
        let _ = engine.run(&vec![0u8; engine.input_features()], 1);
        let _ = lowbit_runtime::format::to_bytes(&model).expect("accepted model must serialize");
    }
});
