//! The full Fashion-MNIST from the Debian package. CI installs the package first; elsewhere set
//! LOWBIT_SKIP_FULL_DATA=1 to skip.

use lowbit::data::{load, DataSource, FASHION_MNIST_DIR};

#[test]
fn full_fashion_mnist_loads_60000_train_and_10000_test_images() {
    if !std::path::Path::new(FASHION_MNIST_DIR).is_dir() {
        if std::env::var("LOWBIT_SKIP_FULL_DATA").as_deref() == Ok("1") {
            eprintln!("skipped: {FASHION_MNIST_DIR} absent and LOWBIT_SKIP_FULL_DATA=1");
            return;
        }
        panic!(
            "{FASHION_MNIST_DIR} is missing: run `apt-get install dataset-fashion-mnist` \
             (or set LOWBIT_SKIP_FULL_DATA=1 to skip this test)"
        );
    }
    let split = load(&DataSource::FashionMnist).unwrap();
    assert_eq!((split.train.n, split.test.n), (60_000, 10_000));
    assert_eq!(
        (split.train.rows, split.train.cols, split.train.classes),
        (28, 28, 10)
    );
    assert_eq!(split.train.class_counts(), vec![6000; 10]);
    assert_eq!(split.test.class_counts(), vec![1000; 10]);
    assert_eq!(split.train.name, "fashion-mnist");
}
