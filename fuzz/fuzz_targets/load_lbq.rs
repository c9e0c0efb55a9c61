//! Fuzzes the `.lbq` reader: any input must give `Ok` or `Err`, never a panic, abort or huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lowbit_runtime::format::read_metadata(data);
    if let Ok(model) = lowbit_runtime::format::from_bytes(data) {
        // A model the reader accepts must run, write back, and read back to itself.
        let engine = lowbit_runtime::engine::Engine::new(&model)
            .expect("accepted model must build an engine");
        let input: Vec<u8> = (0..engine.input_features()).map(|i| i as u8).collect();
        let _ = engine.run(&input, 1);
        let bytes = lowbit_runtime::format::to_bytes(&model).expect("accepted model must serialize");
        let back = lowbit_runtime::format::from_bytes(&bytes).expect("written model must read back");
        assert!(back == model, "written model reads back to another model");
    }
});
