//! Fuzzes the CIFAR-10/100 binary reader for every label kind: any input must give `Ok` or `Err`, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lowbit::data::cifar::{parse_cifar, CifarKind, CIFAR_IMAGE_BYTES};

fuzz_target!(|data: &[u8]| {
    for kind in [CifarKind::Cifar10, CifarKind::Cifar100Fine, CifarKind::Cifar100Coarse] {
        if let Ok(r) = parse_cifar(data, kind) {
            assert_eq!(r.pixels.len(), r.labels.len() * CIFAR_IMAGE_BYTES);
            assert_eq!(r.labels.len() * kind.record_bytes(), data.len());
            assert!(r.labels.iter().all(|&l| usize::from(l) < kind.classes()));
        }
    }
});
