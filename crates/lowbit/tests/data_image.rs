//! Single images for prediction: PGM and PNG, every colour type the reader converts.

use lowbit::data::read_image;
use lowbit::Error;
use std::path::Path;

fn write_png(
    path: &Path,
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(data).unwrap();
}

/// A 28x28 gradient: pixel (r, c) = 9 * r + c.
fn gradient() -> Vec<u8> {
    (0..28 * 28)
        .map(|k| (9 * (k / 28) + k % 28) as u8)
        .collect()
}

#[test]
fn binary_and_text_pgm_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let g = gradient();
    let mut p5 = b"P5\n# made by a test\n28 28\n255\n".to_vec();
    p5.extend_from_slice(&g);
    let path = dir.path().join("a.pgm");
    std::fs::write(&path, &p5).unwrap();
    assert_eq!(read_image(&path, 28, 28).unwrap(), g);
    let text: Vec<String> = g.iter().map(|v| v.to_string()).collect();
    let p2 = format!("P2\n28 28\n255\n{}\n", text.join(" "));
    std::fs::write(&path, p2).unwrap();
    assert_eq!(read_image(&path, 28, 28).unwrap(), g);
}

#[test]
fn gray_png_8_and_16_bit_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let g = gradient();
    let path = dir.path().join("g.png");
    write_png(
        &path,
        28,
        28,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &g,
    );
    assert_eq!(read_image(&path, 28, 28).unwrap(), g);
    // 16-bit big-endian samples v * 257 reduce to v.
    let wide: Vec<u8> = g
        .iter()
        .flat_map(|&v| (u16::from(v) * 257).to_be_bytes())
        .collect();
    write_png(
        &path,
        28,
        28,
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        &wide,
    );
    assert_eq!(read_image(&path, 28, 28).unwrap(), g);
}

#[test]
fn colour_png_converts_by_luminance_and_ignores_alpha() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.png");
    // Pure red, green, blue, white, then black for the rest.
    let colours: [[u8; 3]; 4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]];
    let mut rgb = vec![0u8; 28 * 28 * 3];
    let mut rgba = vec![0u8; 28 * 28 * 4];
    for (i, c) in colours.iter().enumerate() {
        rgb[3 * i..3 * i + 3].copy_from_slice(c);
        rgba[4 * i..4 * i + 3].copy_from_slice(c);
    }
    for px in rgba.chunks_mut(4) {
        px[3] = 7; // nearly transparent: must not change the gray value
    }
    // BT.601: round(0.299 * 255) = 76, round(0.587 * 255) = 150, round(0.114 * 255) = 29.
    let expected_head = [76u8, 150, 29, 255, 0];
    write_png(
        &path,
        28,
        28,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        &rgb,
    );
    assert_eq!(read_image(&path, 28, 28).unwrap()[..5], expected_head);
    write_png(
        &path,
        28,
        28,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &rgba,
    );
    assert_eq!(read_image(&path, 28, 28).unwrap()[..5], expected_head);
}

#[test]
fn wrong_size_is_rejected_with_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.png");
    write_png(
        &path,
        20,
        28,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[0; 20 * 28],
    );
    match read_image(&path, 28, 28) {
        Err(e @ Error::Data { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("20x28") && msg.contains("28x28") && msg.contains("small.png"),
                "{msg}"
            );
        }
        other => panic!("expected Error::Data, got {other:?}"),
    }
    // The expected size is the caller's: the same file is fine for a 28-row, 20-column model.
    assert!(read_image(&path, 28, 20).is_ok());
}

#[test]
fn truncated_png_and_unknown_formats_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.png");
    write_png(
        &path,
        28,
        28,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &gradient(),
    );
    let bytes = std::fs::read(&path).unwrap();
    for cut in 0..bytes.len() {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let r = read_image(&path, 28, 28);
        assert!(matches!(r, Err(Error::Data { .. })), "cut at {cut}: {r:?}");
    }
    std::fs::write(&path, b"BM not a bitmap we read").unwrap();
    assert!(matches!(read_image(&path, 28, 28), Err(Error::Data { .. })));
    assert!(matches!(
        read_image(&dir.path().join("missing.pgm"), 28, 28),
        Err(Error::Io { .. })
    ));
}
