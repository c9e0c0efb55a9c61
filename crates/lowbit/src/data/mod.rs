//! Data: IDX files (raw or gzip), the embedded Fashion-MNIST sample, the installed Fashion-MNIST package, any
//! directory of IDX files, image folders (PNG, JPEG), NumPy `.npy` / `.npz` arrays, CIFAR-10/100 binaries,
//! per-channel normalisation, seeded mini-batching, and single images (PGM, PNG) for prediction.
//!
//! ```no_run
//! use lowbit::data::{load, Batcher, DataSource};
//! let split = load(&"builtin".parse::<DataSource>()?)?;
//! let batcher = Batcher::new(&split.train, 64, 7)?;
//! for (x, y) in batcher.epoch(0) {
//!     assert_eq!(x.shape[1..], [1, 28, 28]);
//!     assert_eq!(x.shape[0], y.len());
//! }
//! # Ok::<(), lowbit::Error>(())
//! ```

mod batch;
mod builtin;
pub mod cifar;
mod dataset;
pub mod folder;
mod idx;
pub mod image;
pub mod npy;
mod source;

pub use batch::{pixels_to_f32, pixels_to_input, Batcher, Batches};
pub use dataset::{class_names, stratified_split, Dataset, Split, FASHION_MNIST_CLASSES};
pub use idx::{
    parse_idx_images, parse_idx_labels, read_idx_images, read_idx_labels, write_idx, IdxImages,
    IMAGES_MAGIC, LABELS_MAGIC, MAX_ITEMS, MAX_PAYLOAD_BYTES, MAX_SIDE,
};
pub use image::read_image;
pub use npy::NpyLayout;
pub use source::{
    load, load_with, DataFormat, DataOptions, DataSource, FASHION_MNIST_DIR, FASHION_MNIST_ENV,
    IDX_FILE_NAMES, MAX_BYTE_CLASSES, MAX_CLASSES, NPY_ARRAY_NAMES,
};
