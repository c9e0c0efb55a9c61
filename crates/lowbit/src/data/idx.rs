//! IDX files (the MNIST / Fashion-MNIST container), raw or gzip-compressed.
//!
//! Layout: a 4-byte big-endian magic `0x0000_08DD` (0x08 = unsigned byte elements, DD = number of dimensions),
//! then DD big-endian u32 dimensions, then exactly `product(dims)` bytes. Images have 3 dimensions (count, rows,
//! cols), labels 1 (count). Gzip is detected by its `1f 8b` magic, not by the file name.
//!
//! Untrusted input: every size is capped before anything is allocated, arithmetic is checked, and a payload must
//! hold exactly the bytes the header announces (fewer is "truncated", more is "trailing data").
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::{Error, Result};
use flate2::read::GzDecoder;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Most items (images or labels) one IDX file may hold; EMNIST ByClass, the largest common set, has 814,255.
pub const MAX_ITEMS: usize = 10_000_000;
/// Largest image side accepted, in pixels.
pub const MAX_SIDE: usize = 256;
/// Largest payload accepted, in bytes (1 GiB; EMNIST ByClass training images are 0.64 GB).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 30;
/// Magic of an image file: unsigned bytes, 3 dimensions.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of a label file: unsigned bytes, 1 dimension.
pub const LABELS_MAGIC: u32 = 0x0000_0801;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const UNSIGNED_BYTE: u8 = 0x08;

/// Images read from an IDX file: `count` images of `rows x cols` raw pixels, row-major, image after image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// `count * rows * cols` pixels.
    pub pixels: Vec<u8>,
}

fn data_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads an image file (raw or gzip).
pub fn read_idx_images(path: &Path) -> Result<IdxImages> {
    with_file(path, |r, gz| parse_images(r, path, gz))
}

/// Reads a label file (raw or gzip).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    with_file(path, |r, gz| parse_labels(r, path, gz))
}

/// Parses an image file held in memory (raw or gzip); `name` is only used in error messages.
pub fn parse_idx_images(bytes: &[u8], name: &Path) -> Result<IdxImages> {
    let gz = bytes.starts_with(&GZIP_MAGIC);
    parse_images(bytes, name, gz)
}

/// Parses a label file held in memory (raw or gzip); `name` is only used in error messages.
pub fn parse_idx_labels(bytes: &[u8], name: &Path) -> Result<Vec<u8>> {
    let gz = bytes.starts_with(&GZIP_MAGIC);
    parse_labels(bytes, name, gz)
}

/// Writes an IDX file of unsigned bytes with the given dimensions (magic `0x0000_08` followed by `dims.len()`),
/// gzip-compressed when `gzip` is set. Writes to a temporary file in the same directory, then renames.
///
/// No validation beyond what the format can express, so tests can also write files the reader must reject;
/// `data.len()` must equal the product of `dims` for the result to be readable.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8], gzip: bool) -> Result<()> {
    let ndim = u8::try_from(dims.len())
        .map_err(|_| data_err(path, format!("{} dimensions cannot be written", dims.len())))?;
    let mut header = vec![0, 0, UNSIGNED_BYTE, ndim];
    for &d in dims {
        let d = u32::try_from(d)
            .map_err(|_| data_err(path, format!("dimension {d} does not fit in 32 bits")))?;
        header.extend_from_slice(&d.to_be_bytes());
    }
    let tmp = temp_path(path);
    let io = |e| Error::Io {
        path: tmp.clone(),
        source: e,
    };
    let file = File::create(&tmp).map_err(io)?;
    let written = if gzip {
        let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::best());
        enc.write_all(&header)
            .and_then(|()| enc.write_all(data))
            .and_then(|()| enc.finish())
            .and_then(|f| f.sync_all())
    } else {
        let mut w = std::io::BufWriter::new(file);
        w.write_all(&header)
            .and_then(|()| w.write_all(data))
            .and_then(|()| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all())
    };
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Opens `path`, sniffs the gzip magic and hands a reader of the file's bytes to `f`.
fn with_file<T>(path: &Path, f: impl FnOnce(&mut dyn Read, bool) -> Result<T>) -> Result<T> {
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let file = File::open(path).map_err(io)?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let gz = reader.fill_buf().map_err(io)?.starts_with(&GZIP_MAGIC);
    f(&mut reader, gz)
}

fn parse_images(r: impl Read, path: &Path, gz: bool) -> Result<IdxImages> {
    let (dims, pixels) = parse(r, path, gz, IMAGES_MAGIC)?;
    match *dims.as_slice() {
        [count, rows, cols] => Ok(IdxImages {
            count,
            rows,
            cols,
            pixels,
        }),
        _ => Err(data_err(path, "internal: wrong dimension count")),
    }
}

fn parse_labels(r: impl Read, path: &Path, gz: bool) -> Result<Vec<u8>> {
    let (_, labels) = parse(r, path, gz, LABELS_MAGIC)?;
    Ok(labels)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn parse(r: impl Read, path: &Path, gz: bool, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let kind = if magic == IMAGES_MAGIC {
        "image"
    } else {
        "label"
    };
    let expected_dims = (magic & 0xff) as usize;
    let mut r: Box<dyn Read + '_> = if gz {
        Box::new(GzDecoder::new(r))
    } else {
        Box::new(r)
    };
    // Gzip decoding failures are malformed data; plain read failures are genuine I/O errors.
    let read_err = |e: std::io::Error| {
        if gz {
            data_err(path, format!("corrupt or truncated gzip data: {e}"))
        } else {
            Error::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    };

    let mut head = [0u8; 4];
    let got = read_full(&mut r, &mut head).map_err(read_err)?;
    if got < head.len() {
        return Err(data_err(
            path,
            format!("truncated header: needs 4 bytes of magic, has {got}"),
        ));
    }
    let found = u32::from_be_bytes(head);
    if found != magic {
        let [z0, z1, dtype, ndim] = head;
        let reason = if z0 != 0 || z1 != 0 {
            format!("bad magic {found:#010x}: not an IDX {kind} file (expected {magic:#010x})")
        } else if dtype != UNSIGNED_BYTE {
            format!(
                "unsupported IDX element type {dtype:#04x}: only 0x08 (unsigned byte) is supported"
            )
        } else {
            format!(
                "has {ndim} dimensions, an IDX {kind} file has {expected_dims} (magic {found:#010x}, \
                 expected {magic:#010x})"
            )
        };
        return Err(data_err(path, reason));
    }

    let mut raw_dims = [0u8; 12];
    let dim_bytes = raw_dims.get_mut(..4 * expected_dims).unwrap_or_default();
    let got = read_full(&mut r, dim_bytes).map_err(read_err)?;
    if got < dim_bytes.len() {
        return Err(data_err(
            path,
            format!(
                "truncated header: needs {} bytes, has {}",
                4 + dim_bytes.len(),
                4 + got
            ),
        ));
    }
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b.copy_from_slice(c);
            u32::from_be_bytes(b) as usize
        })
        .collect();
    let count = dims.first().copied().unwrap_or(0);
    if count == 0 {
        return Err(data_err(path, format!("holds no {kind}s (count is 0)")));
    }
    if count > MAX_ITEMS {
        return Err(data_err(
            path,
            format!("{count} {kind}s exceeds the limit of {MAX_ITEMS}"),
        ));
    }
    if let [_, rows, cols] = *dims.as_slice() {
        if rows == 0 || cols == 0 || rows > MAX_SIDE || cols > MAX_SIDE {
            return Err(data_err(
                path,
                format!("image size {rows}x{cols} is outside 1x1..{MAX_SIDE}x{MAX_SIDE}"),
            ));
        }
    }
    let needed = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&b| b <= MAX_PAYLOAD_BYTES)
        .ok_or_else(|| {
            data_err(
                path,
                format!("payload of {dims:?} bytes exceeds the limit of {MAX_PAYLOAD_BYTES} bytes"),
            )
        })?;

    let mut payload = Vec::with_capacity(needed);
    // One byte more than needed, so trailing data is detected; reaching the end also makes the gzip decoder
    // check its CRC.
    r.take(needed as u64 + 1)
        .read_to_end(&mut payload)
        .map_err(read_err)?;
    let shape = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x");
    if payload.len() < needed {
        return Err(data_err(
            path,
            format!(
                "truncated payload: header says {shape} = {needed} bytes, only {} available",
                payload.len()
            ),
        ));
    }
    if payload.len() > needed {
        return Err(data_err(
            path,
            format!("trailing data after the {needed}-byte payload ({shape})"),
        ));
    }
    Ok((dims, payload))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn raw(dims: &[u32], magic: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    fn reason(e: Error) -> String {
        match e {
            Error::Data { reason, .. } => reason,
            other => panic!("expected Error::Data, got {other:?}"),
        }
    }

    #[test]
    fn parses_raw_images_from_memory() {
        let bytes = raw(&[2, 1, 3], IMAGES_MAGIC, &[1, 2, 3, 4, 5, 6]);
        let im = parse_idx_images(&bytes, Path::new("x")).unwrap();
        assert_eq!((im.count, im.rows, im.cols), (2, 1, 3));
        assert_eq!(im.pixels, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn rejects_trailing_bytes() {
        let bytes = raw(&[2], LABELS_MAGIC, &[1, 2, 3]);
        let r = reason(parse_idx_labels(&bytes, Path::new("x")).unwrap_err());
        assert!(r.contains("trailing"), "{r}");
    }

    #[test]
    fn rejects_oversized_headers_before_allocating() {
        let bytes = raw(&[u32::MAX], LABELS_MAGIC, &[]);
        assert!(reason(parse_idx_labels(&bytes, Path::new("x")).unwrap_err()).contains("limit"));
        let bytes = raw(&[10, 257, 28], IMAGES_MAGIC, &[]);
        assert!(reason(parse_idx_images(&bytes, Path::new("x")).unwrap_err()).contains("257x28"));
        // 10M images of 256x256 would be 655 GB: caught by the payload cap, not by an allocation failure.
        let bytes = raw(&[10_000_000, 256, 256], IMAGES_MAGIC, &[]);
        assert!(reason(parse_idx_images(&bytes, Path::new("x")).unwrap_err()).contains("limit"));
    }

    #[test]
    fn rejects_zero_count_and_other_element_types() {
        let bytes = raw(&[0], LABELS_MAGIC, &[]);
        assert!(
            reason(parse_idx_labels(&bytes, Path::new("x")).unwrap_err()).contains("count is 0")
        );
        let bytes = raw(&[1], 0x0000_0d01, &[0, 0, 0, 0]);
        assert!(reason(parse_idx_labels(&bytes, Path::new("x")).unwrap_err()).contains("0x0d"));
    }
}
