//! The embedded sample: 500 training and 100 test images per class from Fashion-MNIST (MIT licence, Copyright
//! (c) 2017 Zalando SE), written by `scripts/make_builtin.py`; provenance in
//! `crates/lowbit/data/builtin/README.md` (inside the crate, so that `cargo package` ships it).

use super::dataset::Split;
use super::source::parse_split;
use crate::Result;
use std::path::Path;

const TRAIN_IMAGES: &[u8] = include_bytes!("../../data/builtin/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] = include_bytes!("../../data/builtin/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] = include_bytes!("../../data/builtin/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] = include_bytes!("../../data/builtin/t10k-labels-idx1-ubyte.gz");

/// Decodes the embedded sample; each call gunzips 4.7 MB, so load once and keep the [`Split`].
pub(super) fn load_builtin() -> Result<Split> {
    parse_split(
        [
            (
                TRAIN_IMAGES,
                Path::new("<builtin>/train-images-idx3-ubyte.gz"),
            ),
            (
                TRAIN_LABELS,
                Path::new("<builtin>/train-labels-idx1-ubyte.gz"),
            ),
            (
                TEST_IMAGES,
                Path::new("<builtin>/t10k-images-idx3-ubyte.gz"),
            ),
            (
                TEST_LABELS,
                Path::new("<builtin>/t10k-labels-idx1-ubyte.gz"),
            ),
        ],
        "builtin",
        10,
    )
}
