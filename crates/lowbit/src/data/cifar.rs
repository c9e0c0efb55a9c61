//! CIFAR-10 and CIFAR-100 in their binary versions (Krizhevsky 2009, "Learning Multiple Layers of Features from
//! Tiny Images"; the `cifar-10-batches-bin` and `cifar-100-binary` archives).
//!
//! A file is a sequence of records: the label byte(s), then 3072 pixel bytes, the red, green and blue 32x32 planes
//! row-major (CHW, the layout [`super::Dataset`] holds). CIFAR-10 records have one label byte (0..10);
//! CIFAR-100 records two, the coarse label (0..20) then the fine one (0..100). Training data is
//! `data_batch_1.bin` .. `data_batch_5.bin` (CIFAR-10) or `train.bin` (CIFAR-100); test data `test_batch.bin` or
//! `test.bin`. A file must hold a whole, non-zero number of records.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::error::{DataError, Error, Result};
use std::path::{Path, PathBuf};

/// Pixel bytes per image (3 x 32 x 32).
pub const CIFAR_IMAGE_BYTES: usize = 3 * 32 * 32;
/// Most records one file may hold (the real files hold 10,000 or 50,000).
pub const MAX_CIFAR_RECORDS: usize = 1_000_000;
/// CIFAR-10's class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which CIFAR, and for CIFAR-100 which label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    /// One label byte, 10 classes.
    Cifar10,
    /// Two label bytes; the 100 fine classes.
    Cifar100Fine,
    /// Two label bytes; the 20 coarse superclasses.
    Cifar100Coarse,
}

impl CifarKind {
    /// Label bytes per record.
    pub fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            _ => 2,
        }
    }

    /// Number of classes of the label used.
    pub fn classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100Fine => 100,
            CifarKind::Cifar100Coarse => 20,
        }
    }

    /// Bytes per record.
    pub fn record_bytes(self) -> usize {
        self.label_bytes() + CIFAR_IMAGE_BYTES
    }
}

/// Records of one file: `labels.len()` images of 3x32x32 pixels (CHW) and their labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CifarRecords {
    /// Pixels, image after image.
    pub pixels: Vec<u8>,
    /// Labels of the kind's label byte.
    pub labels: Vec<u8>,
}

/// Parses a CIFAR binary file held in memory.
pub fn parse_cifar(bytes: &[u8], kind: CifarKind) -> Result<CifarRecords, DataError> {
    let record = kind.record_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        let whole = bytes.len() / record;
        return Err(DataError::Truncated {
            section: format!("record {whole} ({record}-byte records)"),
            needed: ((whole + 1) * record) as u64,
            available: bytes.len() as u64,
        });
    }
    let n = bytes.len() / record;
    if n > MAX_CIFAR_RECORDS {
        return Err(DataError::LimitExceeded {
            what: "records".into(),
            value: n as u64,
            max: MAX_CIFAR_RECORDS as u64,
        });
    }
    let mut pixels = Vec::with_capacity(n * CIFAR_IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (index, r) in bytes.chunks_exact(record).enumerate() {
        let (label_bytes, image) = r.split_at(kind.label_bytes());
        let label = match (kind, label_bytes) {
            (CifarKind::Cifar10, &[l]) | (CifarKind::Cifar100Coarse, &[l, _]) => l,
            (CifarKind::Cifar100Fine, &[coarse, fine]) => {
                // The coarse byte is checked too: a file whose coarse labels are wrong is not CIFAR-100.
                if usize::from(coarse) >= CifarKind::Cifar100Coarse.classes() {
                    return Err(DataError::LabelOutOfRange {
                        index,
                        label: i64::from(coarse),
                        classes: CifarKind::Cifar100Coarse.classes(),
                    });
                }
                fine
            }
            _ => 0,
        };
        if usize::from(label) >= kind.classes() {
            return Err(DataError::LabelOutOfRange {
                index,
                label: i64::from(label),
                classes: kind.classes(),
            });
        }
        labels.push(label);
        pixels.extend_from_slice(image);
    }
    Ok(CifarRecords { pixels, labels })
}

/// Reads a CIFAR binary file, capping its size before reading.
pub fn read_cifar(path: &Path, kind: CifarKind) -> Result<CifarRecords> {
    let err = |source| Error::DataFile {
        path: path.to_path_buf(),
        source,
    };
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let cap = (MAX_CIFAR_RECORDS * kind.record_bytes()) as u64;
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > cap {
        return Err(err(DataError::LimitExceeded {
            what: "file size".into(),
            value: len,
            max: cap,
        }));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    parse_cifar(&bytes, kind).map_err(err)
}

/// The CIFAR files of `dir` (or of its `cifar-10-batches-bin` / `cifar-100-binary` subfolder): the kind found
/// (CIFAR-10 when `data_batch_*.bin` exist, else CIFAR-100 when `train.bin` does), the training files in batch
/// order and the test file. `None` when `dir` holds neither.
pub fn find_cifar(dir: &Path) -> Option<(bool, Vec<PathBuf>, PathBuf)> {
    for d in [
        dir.to_path_buf(),
        dir.join("cifar-10-batches-bin"),
        dir.join("cifar-100-binary"),
    ] {
        let mut batches: Vec<(u32, PathBuf)> = std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let k = name.strip_prefix("data_batch_")?.strip_suffix(".bin")?;
                Some((k.parse().ok()?, e.path()))
            })
            .collect();
        batches.sort();
        if !batches.is_empty() {
            let train = batches.into_iter().map(|(_, p)| p).collect();
            return Some((true, train, d.join("test_batch.bin")));
        }
        if d.join("train.bin").is_file() {
            return Some((false, vec![d.join("train.bin")], d.join("test.bin")));
        }
    }
    None
}

/// CIFAR-100 class names from `fine_label_names.txt` / `coarse_label_names.txt` beside the data (one per line),
/// when present with the right count; empty otherwise.
pub fn cifar100_names(dir: &Path, kind: CifarKind) -> Vec<String> {
    let file = match kind {
        CifarKind::Cifar100Coarse => "coarse_label_names.txt",
        _ => "fine_label_names.txt",
    };
    let text = std::fs::metadata(dir.join(file))
        .ok()
        .filter(|m| m.len() < 1 << 16)
        .and_then(|_| std::fs::read_to_string(dir.join(file)).ok())
        .unwrap_or_default();
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() == kind.classes() {
        names
    } else {
        Vec::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels_and_planes_of_both_kinds() {
        let mut ten = vec![7u8];
        ten.extend((0..CIFAR_IMAGE_BYTES).map(|i| (i % 251) as u8));
        let r = parse_cifar(&ten, CifarKind::Cifar10).unwrap();
        assert_eq!(r.labels, vec![7]);
        assert_eq!(&r.pixels[..], &ten[1..]);
        let mut hundred = vec![19u8, 99];
        hundred.extend(std::iter::repeat_n(5u8, CIFAR_IMAGE_BYTES));
        assert_eq!(
            parse_cifar(&hundred, CifarKind::Cifar100Fine)
                .unwrap()
                .labels,
            vec![99]
        );
        assert_eq!(
            parse_cifar(&hundred, CifarKind::Cifar100Coarse)
                .unwrap()
                .labels,
            vec![19]
        );
        // A CIFAR-100 record read as CIFAR-10 leaves a partial record.
        assert!(matches!(
            parse_cifar(&hundred, CifarKind::Cifar10),
            Err(DataError::Truncated { .. })
        ));
    }
}
