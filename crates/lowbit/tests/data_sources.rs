//! The embedded sample and the installed Fashion-MNIST package.

use lowbit::data::{
    class_names, load, write_idx, DataSource, FASHION_MNIST_DIR, FASHION_MNIST_ENV, IDX_FILE_NAMES,
};
use lowbit::Error;

#[test]
fn builtin_has_500_per_class_train_and_100_per_class_test_of_28x28() {
    let split = load(&DataSource::Builtin).unwrap();
    for (set, n, per_class) in [(&split.train, 5000, 500), (&split.test, 1000, 100)] {
        assert_eq!((set.n, set.rows, set.cols, set.classes), (n, 28, 28, 10));
        assert_eq!(set.images.len(), n * 784);
        assert_eq!(set.class_counts(), vec![per_class; 10]);
        assert_eq!(set.name, "builtin");
        // Real images, not padding: Fashion-MNIST's mean pixel is about 73.
        let mean = set.images.iter().map(|&p| p as f64).sum::<f64>() / set.images.len() as f64;
        assert!((55.0..95.0).contains(&mean), "mean pixel {mean}");
    }
    assert_ne!(split.train.image(0), split.train.image(1));
    assert_eq!(split.train.class_names(), class_names("builtin"));
    assert_eq!(class_names("builtin")[0], "T-shirt/top");
}

#[test]
fn builtin_images_are_all_in_the_full_dataset_when_installed() {
    // Provenance check: every builtin test image is a Fashion-MNIST test image with the same label.
    if !std::path::Path::new(FASHION_MNIST_DIR).is_dir() {
        eprintln!("skipped: {FASHION_MNIST_DIR} absent (data_full checks the install)");
        return;
    }
    let full = load(&DataSource::Dir(FASHION_MNIST_DIR.into()))
        .unwrap()
        .test;
    let index: std::collections::HashMap<&[u8], u8> = (0..full.n)
        .map(|i| (full.image(i), full.labels[i]))
        .collect();
    let builtin = load(&DataSource::Builtin).unwrap().test;
    for i in 0..builtin.n {
        assert_eq!(
            index.get(builtin.image(i)),
            Some(&builtin.labels[i]),
            "builtin test image {i}"
        );
    }
}

#[test]
fn fashion_mnist_honours_the_directory_override_and_names_the_package_when_absent() {
    // The only test in this binary that touches the environment, so no other test races with it.
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("absent");
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    for (k, name) in IDX_FILE_NAMES.iter().enumerate() {
        let n = if k < 2 { 4 } else { 3 };
        if k % 2 == 0 {
            write_idx(&small.join(name), &[n, 28, 28], &vec![9; n * 784], true).unwrap();
        } else {
            write_idx(&small.join(name), &[n], &vec![2; n], true).unwrap();
        }
    }
    std::env::set_var(FASHION_MNIST_ENV, &small);
    let found = load(&DataSource::FashionMnist);
    std::env::set_var(FASHION_MNIST_ENV, &gone);
    let r = load(&DataSource::FashionMnist);
    std::env::remove_var(FASHION_MNIST_ENV);
    let found = found.unwrap();
    assert_eq!((found.train.n, found.test.n), (4, 3));
    assert_eq!(found.train.name, "fashion-mnist");
    match r {
        Err(e @ Error::MissingData(_)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("apt-get install dataset-fashion-mnist"),
                "{msg}"
            );
            assert!(msg.contains("absent"), "{msg}");
        }
        other => panic!("expected Error::MissingData, got {other:?}"),
    }
}
