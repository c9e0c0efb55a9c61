//! Where data comes from: the embedded sample, the installed Fashion-MNIST package, or a path: a directory of IDX
//! files, an image folder, a directory of NumPy arrays or an `.npz` archive, or CIFAR-10/100 binaries; the
//! path's content says which ([`DataFormat::detect`]).

use super::cifar::{cifar100_names, find_cifar, read_cifar, CifarKind, CIFAR10_CLASSES};
use super::dataset::{Dataset, Split};
use super::folder::{is_image_folder, read_image_folder};
use super::idx::{parse_idx_images, parse_idx_labels, read_idx_images, read_idx_labels, IdxImages};
use super::npy::{npy_images, npy_labels, read_npy, read_npz, NpyArray, NpyLayout};
use crate::error::DataError;
use crate::{Error, Result};
use lowbit_runtime::preprocess::Normalization;
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

/// The names of the four arrays of a NumPy data source (`NAME.npy` files in a directory, or entries of an `.npz`).
pub const NPY_ARRAY_NAMES: [&str; 4] = ["x_train", "y_train", "x_test", "y_test"];
/// Most classes of a source whose labels are bytes (image folders, NumPy, CIFAR-100).
pub const MAX_BYTE_CLASSES: usize = 256;

/// What a path holds, told by its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// The four IDX files of [`IDX_FILE_NAMES`].
    Idx,
    /// `train/` and `test/` (or `val/`) with one folder per class ([`super::folder`]).
    ImageFolder,
    /// `x_train.npy`, `y_train.npy`, `x_test.npy`, `y_test.npy` in a directory.
    NpyDir,
    /// An `.npz` archive holding those four arrays.
    Npz,
    /// CIFAR-10 binaries (`data_batch_*.bin`, `test_batch.bin`).
    Cifar10,
    /// CIFAR-100 binaries (`train.bin`, `test.bin`).
    Cifar100,
}

impl DataFormat {
    /// The format of `path`: an `.npz` file; or a directory that is an image folder, holds `x_train.npy`, holds
    /// CIFAR binaries (itself or its `cifar-10-batches-bin` / `cifar-100-binary` subfolder), in that order;
    /// IDX otherwise (whose loader names the files it misses).
    pub fn detect(path: &Path) -> DataFormat {
        if path.is_file() {
            return DataFormat::Npz;
        }
        if is_image_folder(path) {
            DataFormat::ImageFolder
        } else if path.join("x_train.npy").is_file() {
            DataFormat::NpyDir
        } else if let Some((ten, _, _)) = find_cifar(path) {
            if ten {
                DataFormat::Cifar10
            } else {
                DataFormat::Cifar100
            }
        } else {
            DataFormat::Idx
        }
    }
}

/// How to read the sources that need more than a path, and the normalisation to attach.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataOptions {
    /// Resize and center-crop image-folder images to `(rows, cols)` ([`super::folder`]); image folders only.
    pub image_size: Option<(usize, usize)>,
    /// Channel axis of 4-D NumPy image arrays; NumPy sources only.
    pub layout: NpyLayout,
    /// CIFAR-100: train on the 20 coarse labels instead of the 100 fine ones.
    pub coarse_labels: bool,
    /// Per-channel normalisation, set on both splits (checked against their channel count).
    pub normalization: Option<Normalization>,
}

/// Loads a source's train and test sets with default [`DataOptions`].
///
/// Class count rule: `builtin` and `fashion-mnist` have 10 classes and reject other labels. A directory has
/// `max(10, largest label + 1)` classes, the largest label taken over train and test together, and labels must
/// be below [`MAX_CLASSES`]. Train and test must have the same image size.
pub fn load(source: &DataSource) -> Result<Split> {
    load_with(source, &DataOptions::default())
}

/// Loads a source's train and test sets; see [`load`] for IDX directories and [`DataFormat::detect`] for what a
/// path may hold. NumPy sources have `largest label + 1` classes (labels below [`MAX_BYTE_CLASSES`]); CIFAR
/// 10, 100 or 20 (coarse); an image folder one per class folder.
pub fn load_with(source: &DataSource, opts: &DataOptions) -> Result<Split> {
    let format = match source {
        DataSource::Dir(p) if p.exists() => Some(DataFormat::detect(p)),
        _ => None,
    };
    let check = |applies: bool, option: &str, what: &str| {
        if applies {
            Ok(())
        } else {
            Err(Error::option(
                option,
                format!("applies to {what} only, and --data {source} is not one"),
            ))
        }
    };
    if opts.image_size.is_some() {
        check(
            format == Some(DataFormat::ImageFolder),
            "--image-size",
            "image folders",
        )?;
    }
    if opts.layout != NpyLayout::Auto {
        check(
            matches!(format, Some(DataFormat::NpyDir | DataFormat::Npz)),
            "--layout",
            "NumPy data",
        )?;
    }
    if opts.coarse_labels {
        check(
            format == Some(DataFormat::Cifar100),
            "--coarse-labels",
            "CIFAR-100",
        )?;
    }
    let mut split = match (source, format) {
        (DataSource::Dir(p), Some(f)) if f != DataFormat::Idx => load_path(p, f, opts)?,
        _ => load_builtin_or_idx(source)?,
    };
    if let Some(n) = &opts.normalization {
        n.check_channels(split.train.channels).map_err(|e| {
            Error::option(
                "--mean/--std",
                format!("{e} ({} has {} channels)", source, split.train.channels),
            )
        })?;
        split.train.normalization = Some(n.clone());
        split.test.normalization = Some(n.clone());
    }
    Ok(split)
}

fn load_builtin_or_idx(source: &DataSource) -> Result<Split> {
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

fn data_file(path: &Path, source: DataError) -> Error {
    Error::DataFile {
        path: path.to_path_buf(),
        source,
    }
}

/// An image folder, a NumPy directory or archive, or CIFAR binaries.
fn load_path(path: &Path, format: DataFormat, opts: &DataOptions) -> Result<Split> {
    let name = path.display().to_string();
    match format {
        DataFormat::ImageFolder => {
            let f = read_image_folder(path, opts.image_size)?;
            let classes = f.classes.len();
            let mut train = Dataset::with_channels(f.train.0, f.train.1, f.shape, classes, &name)?;
            let mut test = Dataset::with_channels(f.test.0, f.test.1, f.shape, classes, &name)?;
            train.names = f.classes.clone();
            test.names = f.classes;
            Ok(Split { train, test })
        }
        DataFormat::NpyDir | DataFormat::Npz => {
            let (arrays, paths): (Vec<NpyArray>, Vec<PathBuf>) = if format == DataFormat::Npz {
                let arrays = read_npz(path, &NPY_ARRAY_NAMES)?;
                (arrays, vec![path.to_path_buf(); 4])
            } else {
                let paths: Vec<PathBuf> = NPY_ARRAY_NAMES
                    .iter()
                    .map(|n| path.join(format!("{n}.npy")))
                    .collect();
                let arrays = paths.iter().map(|p| read_npy(p)).collect::<Result<_>>()?;
                (arrays, paths)
            };
            let [xt, yt, xe, ye] = arrays.as_slice() else {
                return Err(data_file(
                    path,
                    DataError::Missing("four arrays expected".into()),
                ));
            };
            let mut sets = Vec::with_capacity(2);
            for ((x, y), (xp, yp)) in [(xt, yt), (xe, ye)]
                .into_iter()
                .zip([(&paths[0], &paths[1]), (&paths[2], &paths[3])])
            {
                let images = npy_images(x, opts.layout).map_err(|e| data_file(xp, e))?;
                let labels = npy_labels(y, MAX_BYTE_CLASSES).map_err(|e| data_file(yp, e))?;
                if labels.len() != images.count {
                    return Err(data_file(
                        yp,
                        DataError::Mismatch(format!(
                            "{} labels for {} images",
                            labels.len(),
                            images.count
                        )),
                    ));
                }
                sets.push((images, labels, xp));
            }
            let [(ti, tl, _), (ei, el, ep)] = <[_; 2]>::try_from(sets)
                .map_err(|_| data_file(path, DataError::Missing("two splits expected".into())))?;
            if ti.shape != ei.shape {
                return Err(data_file(
                    ep,
                    DataError::Mismatch(format!(
                        "test images are {:?} (CHW), training images {:?}",
                        ei.shape, ti.shape
                    )),
                ));
            }
            let classes = tl
                .iter()
                .chain(&el)
                .map(|&l| usize::from(l) + 1)
                .max()
                .unwrap_or(1);
            Ok(Split {
                train: Dataset::with_channels(ti.pixels, tl, ti.shape, classes, &name)?,
                test: Dataset::with_channels(ei.pixels, el, ei.shape, classes, &name)?,
            })
        }
        DataFormat::Cifar10 | DataFormat::Cifar100 => {
            let Some((ten, train_files, test_file)) = find_cifar(path) else {
                return Err(data_file(path, DataError::Missing("no CIFAR files".into())));
            };
            let kind = match (ten, opts.coarse_labels) {
                (true, _) => CifarKind::Cifar10,
                (false, false) => CifarKind::Cifar100Fine,
                (false, true) => CifarKind::Cifar100Coarse,
            };
            if !test_file.is_file() {
                return Err(data_file(
                    &test_file,
                    DataError::Missing("missing: CIFAR test data".into()),
                ));
            }
            let (mut pixels, mut labels) = (Vec::new(), Vec::new());
            for f in &train_files {
                let r = read_cifar(f, kind)?;
                pixels.extend_from_slice(&r.pixels);
                labels.extend_from_slice(&r.labels);
            }
            let test = read_cifar(&test_file, kind)?;
            let shape = [3, 32, 32];
            let classes = kind.classes();
            let mut train = Dataset::with_channels(pixels, labels, shape, classes, &name)?;
            let mut test = Dataset::with_channels(test.pixels, test.labels, shape, classes, &name)?;
            let names = match kind {
                CifarKind::Cifar10 => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
                _ => cifar100_names(test_file.parent().unwrap_or(path), kind),
            };
            train.names = names.clone();
            test.names = names;
            Ok(Split { train, test })
        }
        DataFormat::Idx => load_builtin_or_idx(&DataSource::Dir(path.to_path_buf())),
    }
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
