//! A single grayscale image for prediction: PGM (P2 text or P5 binary, maxval <= 255) or PNG (any colour type
//! and bit depth, reduced to 8-bit gray). The format is recognised by its magic bytes, not the file name.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Largest image file read, in bytes; a 28x28 image is well under 10 KB in any of the formats.
pub const MAX_IMAGE_FILE_BYTES: u64 = 16 << 20;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

fn data_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads `path` as an 8-bit grayscale image of exactly `rows x cols` pixels, row-major.
///
/// PGM values are rescaled to 0..=255 when maxval is below 255 (`round(v * 255 / maxval)`). PNG colour is
/// converted to gray by BT.601 luminance `(299 R + 587 G + 114 B + 500) / 1000`; 16-bit samples keep their high
/// byte; alpha is ignored. The image is not inverted: models trained on (Fashion-)MNIST expect a light object
/// on a dark background.
pub fn read_image(path: &Path, rows: usize, cols: usize) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_IMAGE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(data_err(
            path,
            format!("image file is larger than {MAX_IMAGE_FILE_BYTES} bytes"),
        ));
    }
    decode_image(&bytes, path, rows, cols)
}

/// [`read_image`] on bytes in memory; `path` is only used in error messages.
pub fn decode_image(bytes: &[u8], path: &Path, rows: usize, cols: usize) -> Result<Vec<u8>> {
    if bytes.starts_with(&PNG_SIGNATURE) {
        decode_png(bytes, path, rows, cols)
    } else if bytes.starts_with(b"P5") || bytes.starts_with(b"P2") {
        decode_pgm(bytes, path, rows, cols)
    } else {
        Err(data_err(
            path,
            "unsupported image format: expected PGM (P2 or P5) or PNG",
        ))
    }
}

fn check_size(path: &Path, width: usize, height: usize, rows: usize, cols: usize) -> Result<()> {
    if (height, width) != (rows, cols) {
        return Err(data_err(
            path,
            format!("image is {width}x{height} (width x height); the model expects {cols}x{rows}"),
        ));
    }
    Ok(())
}

/// Splits PGM header tokens, skipping whitespace and `#` comments; returns the token and the offset after it.
fn next_token(bytes: &[u8], mut pos: usize) -> Option<(&[u8], usize)> {
    loop {
        match bytes.get(pos)? {
            b'#' => {
                while bytes.get(pos).is_some_and(|&b| b != b'\n' && b != b'\r') {
                    pos += 1;
                }
            }
            b if b.is_ascii_whitespace() => pos += 1,
            _ => break,
        }
    }
    let start = pos;
    while bytes
        .get(pos)
        .is_some_and(|b| !b.is_ascii_whitespace() && *b != b'#')
    {
        pos += 1;
    }
    Some((bytes.get(start..pos)?, pos))
}

fn parse_number(path: &Path, what: &str, token: Option<(&[u8], usize)>) -> Result<(usize, usize)> {
    let (text, pos) = token.ok_or_else(|| data_err(path, format!("PGM ends before its {what}")))?;
    let value = std::str::from_utf8(text)
        .ok()
        .filter(|t| t.len() <= 9)
        .and_then(|t| t.parse::<usize>().ok())
        .ok_or_else(|| {
            data_err(
                path,
                format!(
                    "PGM {what} {:?} is not a number",
                    String::from_utf8_lossy(text)
                ),
            )
        })?;
    Ok((value, pos))
}

fn decode_pgm(bytes: &[u8], path: &Path, rows: usize, cols: usize) -> Result<Vec<u8>> {
    let binary = bytes.starts_with(b"P5");
    let (width, pos) = parse_number(path, "width", next_token(bytes, 2))?;
    let (height, pos) = parse_number(path, "height", next_token(bytes, pos))?;
    let (maxval, pos) = parse_number(path, "maxval", next_token(bytes, pos))?;
    check_size(path, width, height, rows, cols)?;
    if maxval == 0 || maxval > 255 {
        return Err(data_err(
            path,
            format!("PGM maxval {maxval} is unsupported: must be 1..=255 (8-bit)"),
        ));
    }
    let n = width * height;
    let scale = |v: usize| ((v * 255 + maxval / 2) / maxval) as u8;
    let mut out = Vec::with_capacity(n);
    if binary {
        // Exactly one whitespace byte separates maxval from the raster.
        let raster = bytes.get(pos + 1..).unwrap_or_default();
        if raster.len() < n {
            return Err(data_err(
                path,
                format!(
                    "truncated PGM raster: needs {n} bytes, {} available",
                    raster.len()
                ),
            ));
        }
        for &v in raster.iter().take(n) {
            if usize::from(v) > maxval {
                return Err(data_err(
                    path,
                    format!("PGM value {v} exceeds maxval {maxval}"),
                ));
            }
            out.push(scale(usize::from(v)));
        }
    } else {
        let mut pos = pos;
        for k in 0..n {
            let (v, next) = parse_number(path, &format!("pixel {k}"), next_token(bytes, pos))?;
            if v > maxval {
                return Err(data_err(
                    path,
                    format!("PGM value {v} exceeds maxval {maxval}"),
                ));
            }
            out.push(scale(v));
            pos = next;
        }
    }
    Ok(out)
}

fn decode_png(bytes: &[u8], path: &Path, rows: usize, cols: usize) -> Result<Vec<u8>> {
    let png_err = |e: png::DecodingError| data_err(path, format!("invalid PNG: {e}"));
    let mut decoder = png::Decoder::new(bytes);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    decoder.set_limits(png::Limits { bytes: 64 << 20 });
    let mut reader = decoder.read_info().map_err(png_err)?;
    let (width, height) = {
        let info = reader.info();
        (info.width as usize, info.height as usize)
    };
    // Checked before the frame buffer is allocated.
    check_size(path, width, height, rows, cols)?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).map_err(png_err)?;
    // Read on to IEND so a cut-off file is rejected even when its pixel data happens to be complete.
    reader.finish().map_err(png_err)?;
    let (color, depth) = reader.output_color_type();
    if depth != png::BitDepth::Eight {
        return Err(data_err(
            path,
            format!("unsupported PNG bit depth {depth:?} after conversion"),
        ));
    }
    let channels = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(data_err(path, "palette PNG was not expanded"));
        }
    };
    let line = frame.line_size;
    let mut out = Vec::with_capacity(width * height);
    for r in 0..height {
        let row = buf
            .get(r * line..r * line + width * channels)
            .ok_or_else(|| data_err(path, "PNG frame is smaller than its header says"))?;
        for px in row.chunks_exact(channels) {
            let gray = match *px {
                [g] | [g, _] => g,
                [r, g, b] | [r, g, b, _] => {
                    ((299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b) + 500) / 1000)
                        as u8
                }
                _ => 0,
            };
            out.push(gray);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn pgm_comments_and_maxval_rescaling() {
        let text = b"P2\n# a comment\n2 1 # trailing\n15\n0 15\n";
        assert_eq!(
            decode_image(text, Path::new("t"), 1, 2).unwrap(),
            vec![0, 255]
        );
        let mut bin = b"P5 2 2 255\n".to_vec();
        bin.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            decode_image(&bin, Path::new("t"), 2, 2).unwrap(),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn pgm_errors_never_panic_on_any_truncation() {
        let mut bin = b"P5\n3 2\n255\n".to_vec();
        bin.extend_from_slice(&[9, 8, 7, 6, 5, 4]);
        let text = b"P2 3 2 255 9 8 7 6 5 4".to_vec();
        for file in [bin, text] {
            assert!(decode_image(&file, Path::new("t"), 2, 3).is_ok());
            for cut in 0..file.len() {
                let r = decode_image(&file[..cut], Path::new("t"), 2, 3);
                // A P2 file cut inside its last number still parses as a smaller (valid) value.
                if cut + 1 != file.len() || file[1] == b'5' {
                    assert!(matches!(r, Err(Error::Data { .. })), "cut at {cut}: {r:?}");
                }
            }
        }
    }

    #[test]
    fn pgm_rejects_wrong_size_big_maxval_and_value_above_maxval() {
        let e = |b: &[u8]| decode_image(b, Path::new("t"), 1, 2).unwrap_err();
        assert!(e(b"P2 3 1 255 0 0 0").to_string().contains("3x1"));
        assert!(e(b"P2 2 1 65535 0 0").to_string().contains("maxval"));
        assert!(e(b"P2 2 1 10 0 11").to_string().contains("exceeds"));
        assert!(e(b"GIF89a").to_string().contains("unsupported"));
    }
}
