//! NumPy arrays: `.npy` files and `.npz` archives of them (NumPy's `save` / `savez` / `savez_compressed`).
//!
//! An `.npy` file is the magic `\x93NUMPY`, a major and minor version byte (1.0, 2.0 or 3.0), the header length
//! (u16 little-endian in version 1, u32 in 2 and 3), the header (a Python dict literal:
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (60000, 28, 28), }` padded with spaces and a newline), then
//! exactly `product(shape) * itemsize` bytes in C order. The header parser is ours: it accepts the three keys,
//! single- or double-quoted strings, `True` / `False`, and tuples of non-negative integers, nothing else.
//!
//! Images (`x`) are `uint8` (pixels as they are) or `float32` in [0, 1] (stored as `round(x * 255)`), shaped
//! `(N, H, W)` (grayscale), `(N, C, H, W)` or `(N, H, W, C)`: the layout is detected from which axis is 1, 3 or
//! 4 channels wide, or stated ([`NpyLayout`]) when both or neither are. Labels (`y`) are any integer type shaped
//! `(N,)` or `(N, 1)`.
//!
//! Untrusted input: the header is capped, sizes use checked arithmetic and are capped before any allocation, and
//! the payload must hold exactly the announced bytes. Nothing here panics (the lints below fence it).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::error::{DataError, Error, Result};
use std::io::Read;
use std::path::Path;

/// The `.npy` magic.
pub const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Longest `.npy` header accepted, in bytes (NumPy writes well under 200).
pub const MAX_NPY_HEADER_BYTES: usize = 1 << 16;
/// Most dimensions of an array.
pub const MAX_NPY_DIMS: usize = 8;
/// Largest array payload accepted, in bytes (1 GiB).
pub const MAX_NPY_PAYLOAD_BYTES: u64 = 1 << 30;
/// Most channels of an image array.
pub const MAX_NPY_CHANNELS: usize = 64;
/// Largest image side, in pixels.
pub const MAX_NPY_SIDE: usize = 4096;

/// Element types read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    /// `u1`.
    U8,
    /// `i1`.
    I8,
    /// `<u2`.
    U16,
    /// `<i2`.
    I16,
    /// `<u4`.
    U32,
    /// `<i4`.
    I32,
    /// `<u8`.
    U64,
    /// `<i8`.
    I64,
    /// `<f4`.
    F32,
}

impl NpyDtype {
    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            NpyDtype::U8 | NpyDtype::I8 => 1,
            NpyDtype::U16 | NpyDtype::I16 => 2,
            NpyDtype::U32 | NpyDtype::I32 | NpyDtype::F32 => 4,
            NpyDtype::U64 | NpyDtype::I64 => 8,
        }
    }

    /// From a `descr` string: little-endian (`<`), not-applicable (`|`) or native-as-little (`=`) byte order.
    fn parse(descr: &str) -> Result<Self, DataError> {
        let unsupported = || DataError::Unsupported {
            what: "dtype".into(),
            found: format!(
                "{:?} (supported: uint8, float32 and little-endian integers)",
                descr.chars().take(16).collect::<String>()
            ),
        };
        let (order, code) = match descr.as_bytes().first() {
            Some(b'<' | b'|' | b'=') => (true, descr.get(1..).unwrap_or("")),
            Some(b'>') => (false, descr.get(1..).unwrap_or("")),
            _ => (true, descr),
        };
        let dtype = match code {
            "u1" | "B" => NpyDtype::U8,
            "i1" | "b" => NpyDtype::I8,
            "u2" => NpyDtype::U16,
            "i2" => NpyDtype::I16,
            "u4" => NpyDtype::U32,
            "i4" => NpyDtype::I32,
            "u8" => NpyDtype::U64,
            "i8" => NpyDtype::I64,
            "f4" => NpyDtype::F32,
            _ => return Err(unsupported()),
        };
        // Big-endian is only harmless for single bytes.
        if !order && dtype.size_bytes() > 1 {
            return Err(unsupported());
        }
        Ok(dtype)
    }
}

/// One array: its dtype, shape and raw little-endian bytes (C order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyArray {
    /// Element type.
    pub dtype: NpyDtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// `product(shape) * dtype.size_bytes()` bytes.
    pub data: Vec<u8>,
}

/// Where the channel axis of a 4-D image array is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NpyLayout {
    /// Detected: the axis (1 or 3) that is 1, 3 or 4 wide, when exactly one is.
    #[default]
    Auto,
    /// `(N, C, H, W)`.
    Nchw,
    /// `(N, H, W, C)`.
    Nhwc,
}

impl std::str::FromStr for NpyLayout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(NpyLayout::Auto),
            "nchw" => Ok(NpyLayout::Nchw),
            "nhwc" => Ok(NpyLayout::Nhwc),
            _ => Err(Error::option(
                "--layout",
                format!("{s:?}: expected auto, nchw or nhwc"),
            )),
        }
    }
}

fn malformed(reason: impl Into<String>) -> DataError {
    DataError::Malformed {
        section: "NPY header".into(),
        reason: reason.into(),
    }
}

/// A value of the header dict.
#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// A cursor over the header text.
struct Cursor<'a> {
    text: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn skip_ws(&mut self) {
        while self.text.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.text.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), DataError> {
        match self.peek() {
            Some(found) if found == c => {
                self.pos += 1;
                Ok(())
            }
            found => Err(malformed(format!(
                "expected {:?} at byte {}, found {}",
                char::from(c),
                self.pos,
                found.map_or("the end".into(), |f| format!("{:?}", char::from(f)))
            ))),
        }
    }

    fn string(&mut self) -> Result<String, DataError> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(malformed(format!("expected a string at byte {}", self.pos))),
        };
        self.pos += 1;
        let start = self.pos;
        while let Some(&c) = self.text.get(self.pos) {
            if c == quote {
                let s = self.text.get(start..self.pos).unwrap_or_default();
                self.pos += 1;
                return std::str::from_utf8(s)
                    .map(str::to_string)
                    .map_err(|_| malformed("string is not UTF-8"));
            }
            if c == b'\\' {
                return Err(malformed("escapes in strings are not supported"));
            }
            self.pos += 1;
        }
        Err(malformed("unterminated string"))
    }

    fn word(&mut self) -> &[u8] {
        self.skip_ws();
        let start = self.pos;
        while self
            .text
            .get(self.pos)
            .is_some_and(u8::is_ascii_alphanumeric)
        {
            self.pos += 1;
        }
        self.text.get(start..self.pos).unwrap_or_default()
    }

    fn value(&mut self) -> Result<Value, DataError> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(Value::Str(self.string()?)),
            Some(b'(') => {
                self.pos += 1;
                let mut dims = Vec::new();
                loop {
                    if self.peek() == Some(b')') {
                        self.pos += 1;
                        return Ok(Value::Tuple(dims));
                    }
                    if dims.len() >= MAX_NPY_DIMS {
                        return Err(malformed(format!("more than {MAX_NPY_DIMS} dimensions")));
                    }
                    let w = self.word();
                    // At most 12 digits: every dimension we accept is far smaller, and no overflow is possible.
                    let d = std::str::from_utf8(w)
                        .ok()
                        .filter(|t| {
                            !t.is_empty() && t.len() <= 12 && t.bytes().all(|b| b.is_ascii_digit())
                        })
                        .and_then(|t| t.parse::<usize>().ok())
                        .ok_or_else(|| {
                            malformed(format!(
                                "dimension {:?} is not a non-negative integer",
                                String::from_utf8_lossy(w)
                            ))
                        })?;
                    dims.push(d);
                    // Python writes `(5,)` for one dimension; a comma may end any tuple.
                    if self.peek() == Some(b',') {
                        self.pos += 1;
                    } else if self.peek() != Some(b')') {
                        return Err(malformed("expected ',' or ')' in the shape"));
                    }
                }
            }
            _ => match self.word() {
                b"True" => Ok(Value::Bool(true)),
                b"False" => Ok(Value::Bool(false)),
                w => Err(malformed(format!(
                    "unexpected value {:?}",
                    String::from_utf8_lossy(w)
                        .chars()
                        .take(16)
                        .collect::<String>()
                ))),
            },
        }
    }
}

/// The three header fields.
struct Header {
    dtype: NpyDtype,
    fortran_order: bool,
    shape: Vec<usize>,
}

fn parse_header(text: &[u8]) -> Result<Header, DataError> {
    let mut c = Cursor { text, pos: 0 };
    c.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        if c.peek() == Some(b'}') {
            c.pos += 1;
            break;
        }
        let key = c.string()?;
        c.expect(b':')?;
        let value = c.value()?;
        let slot_taken = match (key.as_str(), value) {
            ("descr", Value::Str(s)) => descr.replace(s).is_some(),
            ("fortran_order", Value::Bool(b)) => fortran.replace(b).is_some(),
            ("shape", Value::Tuple(t)) => shape.replace(t).is_some(),
            (k @ ("descr" | "fortran_order" | "shape"), v) => {
                return Err(malformed(format!("key {k:?} has the wrong type ({v:?})")))
            }
            (k, _) => {
                return Err(malformed(format!(
                    "unknown key {:?}",
                    k.chars().take(32).collect::<String>()
                )))
            }
        };
        if slot_taken {
            return Err(malformed(format!("duplicate key {key:?}")));
        }
        match c.peek() {
            Some(b',') => c.pos += 1,
            Some(b'}') => {}
            _ => return Err(malformed("expected ',' or '}' after a value")),
        }
    }
    // NumPy pads the header with spaces and ends it with a newline; nothing else may follow.
    if text
        .get(c.pos..)
        .unwrap_or_default()
        .iter()
        .any(|b| !b.is_ascii_whitespace())
    {
        return Err(malformed("text after the closing '}'"));
    }
    let (Some(descr), Some(fortran_order), Some(shape)) = (descr, fortran, shape) else {
        return Err(malformed(
            "needs the keys 'descr', 'fortran_order' and 'shape'",
        ));
    };
    Ok(Header {
        dtype: NpyDtype::parse(&descr)?,
        fortran_order,
        shape,
    })
}

/// Parses a whole `.npy` file held in memory.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray, DataError> {
    let truncated = |section: &str, needed: usize, available: usize| DataError::Truncated {
        section: section.into(),
        needed: needed as u64,
        available: available as u64,
    };
    let magic = bytes.get(..6).unwrap_or(bytes);
    if magic != NPY_MAGIC {
        return Err(DataError::BadMagic {
            format: "NumPy .npy".into(),
            found: magic.escape_ascii().to_string(),
        });
    }
    let (header_len, start) = match bytes.get(6..8) {
        Some([1, 0]) => match bytes.get(8..10) {
            Some(&[a, b]) => (usize::from(u16::from_le_bytes([a, b])), 10),
            _ => return Err(truncated("header length", 10, bytes.len())),
        },
        Some([2 | 3, 0]) => match bytes.get(8..12) {
            Some(&[a, b, c, d]) => (u32::from_le_bytes([a, b, c, d]) as usize, 12),
            _ => return Err(truncated("header length", 12, bytes.len())),
        },
        Some(&[major, minor]) => {
            return Err(DataError::Unsupported {
                what: "NPY version".into(),
                found: format!("{major}.{minor} (supported: 1.0, 2.0, 3.0)"),
            })
        }
        _ => return Err(truncated("version", 8, bytes.len())),
    };
    if header_len > MAX_NPY_HEADER_BYTES {
        return Err(DataError::LimitExceeded {
            what: "NPY header length".into(),
            value: header_len as u64,
            max: MAX_NPY_HEADER_BYTES as u64,
        });
    }
    let end = start + header_len;
    let header = bytes
        .get(start..end)
        .ok_or_else(|| truncated("NPY header", end, bytes.len()))?;
    let header = parse_header(header)?;
    if header.fortran_order {
        return Err(DataError::Unsupported {
            what: "array order".into(),
            found: "Fortran order (save the array in C order: np.ascontiguousarray)".into(),
        });
    }
    let payload_bytes = header
        .shape
        .iter()
        .try_fold(header.dtype.size_bytes() as u64, |acc, &d| {
            acc.checked_mul(d as u64)
        })
        .filter(|&b| b <= MAX_NPY_PAYLOAD_BYTES)
        .ok_or_else(|| DataError::LimitExceeded {
            what: format!("array of shape {:?}", header.shape),
            value: u64::MAX,
            max: MAX_NPY_PAYLOAD_BYTES,
        })?;
    let payload = bytes.get(end..).unwrap_or_default();
    let need = payload_bytes as usize;
    match payload.len().cmp(&need) {
        std::cmp::Ordering::Less => Err(truncated("array data", need, payload.len())),
        std::cmp::Ordering::Greater => Err(DataError::TrailingData {
            section: "array data".into(),
            extra: (payload.len() - need) as u64,
        }),
        std::cmp::Ordering::Equal => Ok(NpyArray {
            dtype: header.dtype,
            shape: header.shape,
            data: payload.to_vec(),
        }),
    }
}

/// Images of an array: `[channels, rows, cols]` and `n * channels * rows * cols` pixels in CHW order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyImages {
    /// Number of images.
    pub count: usize,
    /// `[channels, rows, cols]`.
    pub shape: [usize; 3],
    /// Pixels, image after image, CHW.
    pub pixels: Vec<u8>,
}

/// The images of an `x` array (see the module doc for the accepted dtypes, shapes and layouts).
pub fn npy_images(a: &NpyArray, layout: NpyLayout) -> Result<NpyImages, DataError> {
    let is_channels = |c: usize| matches!(c, 1 | 3 | 4);
    let (count, shape, nhwc) = match (a.shape.as_slice(), layout) {
        (&[n, h, w], _) => (n, [1, h, w], false),
        (&[n, c, h, w], NpyLayout::Nchw) => (n, [c, h, w], false),
        (&[n, h, w, c], NpyLayout::Nhwc) => (n, [c, h, w], true),
        (&[n, a1, a2, a3], NpyLayout::Auto) => match (is_channels(a1), is_channels(a3)) {
            (true, false) => (n, [a1, a2, a3], false),
            (false, true) => (n, [a3, a1, a2], true),
            _ => {
                return Err(DataError::Unsupported {
                    what: "image layout".into(),
                    found: format!(
                        "shape {:?} could be NCHW or NHWC: state it with --layout nchw or --layout nhwc",
                        a.shape
                    ),
                })
            }
        },
        _ => {
            return Err(DataError::Unsupported {
                what: "image array shape".into(),
                found: format!("{:?} (expected (N, H, W), (N, C, H, W) or (N, H, W, C))", a.shape),
            })
        }
    };
    let [c, h, w] = shape;
    if c == 0 || c > MAX_NPY_CHANNELS || h == 0 || w == 0 || h > MAX_NPY_SIDE || w > MAX_NPY_SIDE {
        return Err(DataError::Unsupported {
            what: "image size".into(),
            found: format!(
                "{c} channels of {h}x{w} (1 to {MAX_NPY_CHANNELS} channels, sides 1 to {MAX_NPY_SIDE})"
            ),
        });
    }
    let values: Vec<u8> = match a.dtype {
        NpyDtype::U8 => a.data.clone(),
        NpyDtype::F32 => {
            let mut v = Vec::with_capacity(a.data.len() / 4);
            for (index, b) in a.data.chunks_exact(4).enumerate() {
                let x = f32::from_le_bytes([
                    b.first().copied().unwrap_or(0),
                    b.get(1).copied().unwrap_or(0),
                    b.get(2).copied().unwrap_or(0),
                    b.get(3).copied().unwrap_or(0),
                ]);
                if !(0.0..=1.0).contains(&x) {
                    return Err(DataError::PixelOutOfRange { index, value: x });
                }
                v.push((x * 255.0).round() as u8);
            }
            v
        }
        other => {
            return Err(DataError::Unsupported {
                what: "image dtype".into(),
                found: format!("{other:?} (images are uint8 or float32 in [0, 1])"),
            })
        }
    };
    let pixels = if nhwc && c > 1 {
        // HWC -> CHW, image by image.
        let per = c * h * w;
        let mut out = vec![0u8; values.len()];
        for (src, dst) in values.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
            for (i, &v) in src.iter().enumerate() {
                let (pix, ch) = (i / c, i % c);
                if let Some(d) = dst.get_mut(ch * h * w + pix) {
                    *d = v;
                }
            }
        }
        out
    } else {
        values
    };
    Ok(NpyImages {
        count,
        shape,
        pixels,
    })
}

/// The labels of a `y` array: integers shaped `(N,)` or `(N, 1)`, each in `0..max_classes` (checked here,
/// with the index of the first that is not).
pub fn npy_labels(a: &NpyArray, max_classes: usize) -> Result<Vec<u8>, DataError> {
    let n = match a.shape.as_slice() {
        &[n] | &[n, 1] => n,
        _ => {
            return Err(DataError::Unsupported {
                what: "label array shape".into(),
                found: format!("{:?} (expected (N,) or (N, 1))", a.shape),
            })
        }
    };
    let size = a.dtype.size_bytes();
    let mut out = Vec::with_capacity(n);
    for (index, b) in a.data.chunks_exact(size).enumerate() {
        let mut raw = [0u8; 8];
        for (r, &v) in raw.iter_mut().zip(b) {
            *r = v;
        }
        let unsigned = u64::from_le_bytes(raw);
        let label: i64 = match a.dtype {
            NpyDtype::U8 | NpyDtype::U16 | NpyDtype::U32 => unsigned as i64,
            NpyDtype::U64 => i64::try_from(unsigned).unwrap_or(i64::MAX),
            // Sign-extend from the element's width.
            NpyDtype::I8 | NpyDtype::I16 | NpyDtype::I32 | NpyDtype::I64 => {
                let shift = 64 - 8 * size as u32;
                ((unsigned << shift) as i64) >> shift
            }
            NpyDtype::F32 => {
                return Err(DataError::Unsupported {
                    what: "label dtype".into(),
                    found: "float32 (labels are integers)".into(),
                })
            }
        };
        match u8::try_from(label) {
            Ok(l) if usize::from(l) < max_classes => out.push(l),
            _ => {
                return Err(DataError::LabelOutOfRange {
                    index,
                    label,
                    classes: max_classes,
                })
            }
        }
    }
    Ok(out)
}

fn file_err(path: &Path) -> impl Fn(DataError) -> Error + '_ {
    move |source| Error::DataFile {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a `.npy` file, capping its size before reading it.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let cap = MAX_NPY_PAYLOAD_BYTES + MAX_NPY_HEADER_BYTES as u64 + 12;
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > cap {
        return Err(file_err(path)(DataError::LimitExceeded {
            what: "file size".into(),
            value: len,
            max: cap,
        }));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    parse_npy(&bytes).map_err(file_err(path))
}

/// Reads the arrays `names` (each `NAME.npy` in the archive) of an `.npz` file, capping every entry's size before
/// reading it (the archive's declared sizes are not trusted: reading stops one byte past the cap).
pub fn read_npz(path: &Path, names: &[&str]) -> Result<Vec<NpyArray>> {
    let err = file_err(path);
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        err(DataError::BadMagic {
            format: "NumPy .npz (zip)".into(),
            found: e.to_string(),
        })
    })?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let entry = format!("{name}.npy");
        let mut f = zip.by_name(&entry).map_err(|e| {
            err(DataError::Missing(format!(
                "no array {name:?} ({entry}: {e}); an .npz data file holds x_train, y_train, x_test and y_test"
            )))
        })?;
        let cap = MAX_NPY_PAYLOAD_BYTES + MAX_NPY_HEADER_BYTES as u64 + 12;
        let mut bytes = Vec::new();
        (&mut f)
            .take(cap + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                err(DataError::Malformed {
                    section: entry.clone(),
                    reason: e.to_string(),
                })
            })?;
        if bytes.len() as u64 > cap {
            return Err(err(DataError::LimitExceeded {
                what: format!("{entry} size"),
                value: bytes.len() as u64,
                max: cap,
            }));
        }
        out.push(parse_npy(&bytes).map_err(|e| {
            err(match e {
                DataError::Malformed { section, reason } => DataError::Malformed {
                    section: format!("{entry}: {section}"),
                    reason,
                },
                other => other,
            })
        })?);
    }
    Ok(out)
}

/// Writes a `.npy` file (version 1.0) of `dtype` (`"|u1"`, `"<f4"`, `"<i8"`...) and `shape` holding `data`,
/// for tests and tools; no validation, so tests can also write files the reader must reject.
pub fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims.join("")),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // NumPy aligns the data to 64 bytes: pad with spaces, end with a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = NPY_MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_header_numpy_writes() {
        let b = npy_bytes("|u1", &[2, 1, 3], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(b.len() % 64, 6, "header padded to 64 bytes");
        let a = parse_npy(&b).unwrap();
        assert_eq!((a.dtype, a.shape.clone()), (NpyDtype::U8, vec![2, 1, 3]));
        let h = parse_header(b"{\"shape\": (5,), \"fortran_order\": False, \"descr\": \"<i8\"}")
            .unwrap();
        assert_eq!((h.dtype, h.shape), (NpyDtype::I64, vec![5]));
        assert_eq!(
            parse_header(b"{'descr':'<f4','fortran_order':False,'shape':()}")
                .unwrap()
                .shape,
            Vec::<usize>::new()
        );
    }

    #[test]
    fn header_errors_are_typed() {
        for text in [
            &b"{'descr': '<f4', 'fortran_order': False}"[..],
            b"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}",
            b"{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}",
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}",
            b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk",
            b"{'descr': '<f4",
        ] {
            assert!(
                matches!(parse_header(text), Err(DataError::Malformed { .. })),
                "{text:?}"
            );
        }
        assert!(matches!(
            parse_header(b"{'descr': '>f4', 'fortran_order': False, 'shape': (1,)}"),
            Err(DataError::Unsupported { .. })
        ));
    }
}
