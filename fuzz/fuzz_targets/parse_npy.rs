//! Fuzzes the NPY reader (header parser, payload checks) and the conversions to images and labels: any input must
//! give `Ok` or `Err`, never a panic, abort or huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lowbit::data::npy::{npy_images, npy_labels, parse_npy, NpyLayout};

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = parse_npy(data) {
        let elems: usize = a.shape.iter().product();
        assert_eq!(a.data.len(), elems * a.dtype.size_bytes());
        for layout in [NpyLayout::Auto, NpyLayout::Nchw, NpyLayout::Nhwc] {
            if let Ok(im) = npy_images(&a, layout) {
                assert_eq!(im.pixels.len(), im.count * im.shape.iter().product::<usize>());
            }
        }
        if let Ok(labels) = npy_labels(&a, 256) {
            assert_eq!(labels.len(), a.shape.first().copied().unwrap_or(0));
        }
    }
});
