//! Fuzzes the IDX parsers (images and labels, raw or gzip): any input must give `Ok` or `Err`, never a panic,
//! abort or huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz-idx");
    if let Ok(images) = lowbit::data::parse_idx_images(data, path) {
        assert_eq!(
            images.pixels.len(),
            images.count * images.rows * images.cols
        );
    }
    let _ = lowbit::data::parse_idx_labels(data, path);
});
