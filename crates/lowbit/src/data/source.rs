//! Where data comes from: the embedded sample, the installed Fashion-MNIST package, or a directory of IDX files.

use super::dataset::{Dataset, Split};
use super::idx::{parse_idx_images, parse_idx_labels, read_idx_images, read_idx_labels, IdxImages};
use crate::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where the Debian/Ubuntu package `dataset-fashion-mnist` installs its files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Environment variable that replaces [`FASHION_MNIST_DIR`].
pub const FASHION_MNIST_ENV: &str = "LOWBIT_FASHION_MNIST_DIR";
/// Most classes a directory may have: 62, EMNIST ByClass (digits, upper and lower case letters).
pub const MAX_CLASSES: usize = 62;

/// The four files of an IDX data directory (train images, train labels, test images, test labels); each may be
/// raw or end in `.gz`, and `-idx3-ubyte` may be spelled `.idx3-ubyte`.
pub const IDX_FILE_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// A data source, as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// The class-balanced Fashion-MNIST sample embedded in the library (5,000 train, 1,000 test).
    Builtin,
    /// The full Fashion-MNIST from `apt-get install dataset-fashion-mnist` (or `$LOWBIT_FASHION_MNIST_DIR`).
    FashionMnist,
    /// A directory holding the four IDX files named in [`IDX_FILE_NAMES`].
    Dir(PathBuf),
}

impl DataSource {
    /// The dataset name this source gives its [`Dataset`]s.
    pub fn name(&self) -> String {
        match self {
            DataSource::Builtin => "builtin".into(),
            DataSource::FashionMnist => "fashion-mnist".into(),
            DataSource::Dir(p) => p.display().to_string(),
        }
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for DataSource {
    type Err = Error;

    /// `builtin`, `fashion-mnist`, or any other text as a directory path (checked when loading).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "" => Err(Error::option(
                "data",
                "empty; use builtin, fashion-mnist or a directory of IDX files",
            )),
            "builtin" => Ok(DataSource::Builtin),
            "fashion-mnist" => Ok(DataSource::FashionMnist),
            dir => Ok(DataSource::Dir(PathBuf::from(dir))),
        }
    }
}

/// Loads a source's train and test sets.
///
/// Class count rule: `builtin` and `fashion-mnist` have 10 classes and reject other labels. A directory has
/// `max(10, largest label + 1)` classes, the largest label taken over train and test together, and labels must
/// be below [`MAX_CLASSES`]. Train and test must have the same image size.
pub fn load(source: &DataSource) -> Result<Split> {
    match source {
        DataSource::Builtin => super::builtin::load_builtin(),
        DataSource::FashionMnist => {
            let dir = std::env::var_os(FASHION_MNIST_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR));
            if !dir.is_dir() {
                return Err(Error::MissingData(format!(
                    "Fashion-MNIST not found in {}: install it with `apt-get install dataset-fashion-mnist` \
                     (or set {FASHION_MNIST_ENV} to a directory holding its IDX files)",
                    dir.display()
                )));
            }
            load_dir(&dir, "fashion-mnist", Some(10))
        }
        DataSource::Dir(dir) => {
            if !dir.is_dir() {
                return Err(Error::MissingData(format!(
                    "data directory {} does not exist (expected builtin, fashion-mnist, or a directory with {})",
                    dir.display(),
                    IDX_FILE_NAMES.join(", ")
                )));
            }
            load_dir(dir, &dir.display().to_string(), None)
        }
    }
}

/// Finds `stem` in `dir` as raw, `.gz`, or with its `-idxN-ubyte` suffix spelled `.idxN-ubyte`.
fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    let dotted = stem.replacen("-idx", ".idx", 1);
    let found = [stem, dotted.as_str()]
        .into_iter()
        .flat_map(|s| [s.to_string(), format!("{s}.gz")])
        .map(|name| dir.join(name))
        .find(|p| p.is_file());
    found
}

fn load_dir(dir: &Path, name: &str, fixed_classes: Option<usize>) -> Result<Split> {
    let mut paths = Vec::with_capacity(4);
    let mut missing = Vec::new();
    for stem in IDX_FILE_NAMES {
        match find_file(dir, stem) {
            Some(p) => paths.push(p),
            None => missing.push(stem),
        }
    }
    let [train_images, train_labels, test_images, test_labels] = paths.as_slice() else {
        return Err(Error::Data {
            path: dir.to_path_buf(),
            reason: format!(
                "missing {} (raw or .gz); an IDX data directory holds {}",
                missing.join(", "),
                IDX_FILE_NAMES.join(", ")
            ),
        });
    };
    let train = (
        read_idx_images(train_images)?,
        read_idx_labels(train_labels)?,
    );
    let test = (read_idx_images(test_images)?, read_idx_labels(test_labels)?);
    assemble(
        train,
        test,
        [train_images, train_labels, test_images, test_labels],
        name,
        fixed_classes,
    )
}

/// Checks counts, image sizes and labels, then builds the split. `paths` name the four files for messages.
pub(super) fn assemble(
    (train_images, train_labels): (IdxImages, Vec<u8>),
    (test_images, test_labels): (IdxImages, Vec<u8>),
    paths: [&Path; 4],
    name: &str,
    fixed_classes: Option<usize>,
) -> Result<Split> {
    let [train_images_path, train_labels_path, test_images_path, test_labels_path] = paths;
    for (images, labels, images_path, labels_path) in [
        (
            &train_images,
            &train_labels,
            train_images_path,
            train_labels_path,
        ),
        (
            &test_images,
            &test_labels,
            test_images_path,
            test_labels_path,
        ),
    ] {
        if images.count != labels.len() {
            return Err(Error::Data {
                path: labels_path.to_path_buf(),
                reason: format!(
                    "holds {} labels but {} holds {} images",
                    labels.len(),
                    images_path.display(),
                    images.count
                ),
            });
        }
    }
    if (train_images.rows, train_images.cols) != (test_images.rows, test_images.cols) {
        return Err(Error::Data {
            path: test_images_path.to_path_buf(),
            reason: format!(
                "images are {}x{} but the training images ({}) are {}x{}",
                test_images.rows,
                test_images.cols,
                train_images_path.display(),
                train_images.rows,
                train_images.cols
            ),
        });
    }
    let limit = fixed_classes.unwrap_or(MAX_CLASSES);
    for (labels, path) in [
        (&train_labels, train_labels_path),
        (&test_labels, test_labels_path),
    ] {
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| usize::from(l) >= limit)
        {
            return Err(Error::Data {
                path: path.to_path_buf(),
                reason: format!("label {l} at index {i} is out of range: this dataset has at most {limit} classes"),
            });
        }
    }
    let classes = fixed_classes.unwrap_or_else(|| {
        let max = train_labels
            .iter()
            .chain(&test_labels)
            .copied()
            .max()
            .unwrap_or(0);
        (usize::from(max) + 1).max(10)
    });
    let train = Dataset::new(
        train_images.pixels,
        train_labels,
        train_images.rows,
        train_images.cols,
        classes,
        name,
    )?;
    let test = Dataset::new(
        test_images.pixels,
        test_labels,
        test_images.rows,
        test_images.cols,
        classes,
        name,
    )?;
    Ok(Split { train, test })
}

/// Parses the four IDX files of a split held in memory (used for the embedded sample).
pub(super) fn parse_split(files: [(&[u8], &Path); 4], name: &str, classes: usize) -> Result<Split> {
    let [(ti, tip), (tl, tlp), (ei, eip), (el, elp)] = files;
    assemble(
        (parse_idx_images(ti, tip)?, parse_idx_labels(tl, tlp)?),
        (parse_idx_images(ei, eip)?, parse_idx_labels(el, elp)?),
        [tip, tlp, eip, elp],
        name,
        Some(classes),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_names_and_paths() {
        assert_eq!(
            "builtin".parse::<DataSource>().unwrap(),
            DataSource::Builtin
        );
        assert_eq!(
            "fashion-mnist".parse::<DataSource>().unwrap(),
            DataSource::FashionMnist
        );
        assert_eq!(
            "./my data".parse::<DataSource>().unwrap(),
            DataSource::Dir(PathBuf::from("./my data"))
        );
        assert!("".parse::<DataSource>().is_err());
        assert_eq!(DataSource::FashionMnist.to_string(), "fashion-mnist");
    }
}
