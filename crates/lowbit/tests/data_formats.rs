//! The readers beside IDX: image folders, NumPy `.npy` / `.npz`, CIFAR-10/100 binaries, and the per-channel
//! normalisation they carry into models. Every file is made here, in a temp dir; errors are matched by variant.
use image::{GrayImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use lowbit::data::cifar::{parse_cifar, CifarKind, CIFAR_IMAGE_BYTES};
use lowbit::data::npy::{npy_bytes, parse_npy};
use lowbit::data::{load_with, DataOptions, DataSource, NpyLayout};
use lowbit::error::DataError;
use lowbit::Error;
use lowbit_runtime::preprocess::Normalization;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

fn source(p: &Path) -> DataSource {
    DataSource::Dir(p.to_path_buf())
}

fn load(p: &Path, opts: &DataOptions) -> lowbit::Result<lowbit::data::Split> {
    load_with(&source(p), opts)
}

/// The typed reason of a data-file error, with the file it names.
fn data_error(r: lowbit::Result<lowbit::data::Split>) -> (PathBuf, DataError) {
    match r {
        Err(Error::DataFile { path, source }) => (path, source),
        other => panic!("expected a data file error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Image folders

/// Pixel `(x, y)` of colour image `k`: distinct per position and image, so layout mistakes show.
fn rgb_image(w: u32, h: u32, k: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 7 + y) as u8 ^ k,
            (y * 11 + x * 3) as u8,
            k.wrapping_mul(37),
        ])
    })
}

fn gray_image(w: u32, h: u32, k: u8) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 5 + y * 9) as u8 ^ k]))
}

fn mkdir(p: &Path) -> &Path {
    std::fs::create_dir_all(p).unwrap();
    p
}

#[test]
fn rgb_folder_of_odd_sized_png_and_jpeg_reads_as_chw_with_sorted_classes() {
    let t = TempDir::new().unwrap();
    for split in ["train", "test"] {
        for (c, class) in ["cat", "ant"].iter().enumerate() {
            let d = t.path().join(split).join(class);
            mkdir(&d);
            rgb_image(17, 13, c as u8).save(d.join("a.png")).unwrap();
            rgb_image(17, 13, 9).save(d.join("b.JPG")).unwrap();
            std::fs::write(d.join("notes.txt"), "ignored").unwrap();
        }
    }
    let s = load(t.path(), &DataOptions::default()).unwrap();
    assert_eq!(s.train.shape(), [3, 13, 17]);
    assert_eq!((s.train.n, s.test.n, s.train.classes), (4, 4, 2));
    // Classes sorted by name: "ant" is label 0, whose first file is a.png made with k = 1.
    assert_eq!(s.train.class_names(), vec!["ant", "cat"]);
    assert_eq!(s.train.labels, vec![0, 0, 1, 1]);
    let img = rgb_image(17, 13, 1);
    let got = s.train.image(0);
    for (x, y) in [(0, 0), (16, 12), (5, 7)] {
        let px = img.get_pixel(x, y).0;
        for c in 0..3 {
            assert_eq!(
                got[c * 13 * 17 + (y * 17 + x) as usize],
                px[c],
                "pixel ({x}, {y}) channel {c}"
            );
        }
    }
}

#[test]
fn gray_folder_stays_one_channel_and_val_stands_for_test() {
    let t = TempDir::new().unwrap();
    for split in ["train", "val"] {
        for class in ["0", "1", "2"] {
            let d = t.path().join(split).join(class);
            mkdir(&d);
            gray_image(13, 17, 3).save(d.join("x.png")).unwrap();
        }
    }
    let s = load(t.path(), &DataOptions::default()).unwrap();
    assert_eq!(s.train.shape(), [1, 17, 13]);
    assert_eq!(s.test.image(0), gray_image(13, 17, 3).as_raw().as_slice());
}

#[test]
fn mixed_modes_make_an_rgb_set_with_gray_replicated_and_alpha_dropped() {
    let t = TempDir::new().unwrap();
    let d = t.path().join("train/a");
    mkdir(&d);
    gray_image(5, 4, 1).save(d.join("1.png")).unwrap();
    RgbaImage::from_pixel(5, 4, Rgba([10, 20, 30, 0]))
        .save(d.join("2.png"))
        .unwrap();
    let e = t.path().join("test/a");
    mkdir(&e);
    gray_image(5, 4, 2).save(e.join("1.png")).unwrap();
    let s = load(t.path(), &DataOptions::default()).unwrap();
    assert_eq!(s.train.shape(), [3, 4, 5]);
    let g = gray_image(5, 4, 1).into_raw();
    assert_eq!(
        s.train.image(0),
        [g.clone(), g.clone(), g].concat().as_slice()
    );
    let rgba = s.train.image(1);
    assert_eq!((rgba[0], rgba[20], rgba[40]), (10, 20, 30));
    // The test split has only gray images, yet follows the set's channel count.
    assert_eq!(s.test.channels, 3);
}

#[test]
fn image_size_resizes_the_shorter_side_and_crops_the_center() {
    let t = TempDir::new().unwrap();
    for (split, w, h) in [("train", 40, 20), ("test", 13, 17)] {
        let d = t.path().join(split).join("c");
        mkdir(&d);
        // Left half black, right half white: after covering 8x8 and cropping the center, both halves remain.
        GrayImage::from_fn(w, h, |x, _| image::Luma([if x < w / 2 { 0 } else { 255 }]))
            .save(d.join("x.png"))
            .unwrap();
    }
    let opts = DataOptions {
        image_size: Some((8, 8)),
        ..DataOptions::default()
    };
    let s = load(t.path(), &opts).unwrap();
    assert_eq!(s.train.shape(), [1, 8, 8]);
    let row = &s.train.image(0)[..8];
    assert_eq!((row[0], row[7]), (0, 255), "{row:?}");
    // Without --image-size, differing sizes are an error naming the odd file.
    let (path, e) = data_error(load(t.path(), &DataOptions::default()));
    assert!(matches!(e, DataError::Mismatch(_)), "{e:?}");
    assert!(path.ends_with("test/c/x.png"), "{path:?}");
}

#[test]
fn class_folders_that_differ_between_splits_are_rejected() {
    let t = TempDir::new().unwrap();
    for (split, classes) in [("train", ["a", "b"]), ("test", ["a", "c"])] {
        for c in classes {
            let d = t.path().join(split).join(c);
            mkdir(&d);
            gray_image(4, 4, 0).save(d.join("x.png")).unwrap();
        }
    }
    let (path, e) = data_error(load(t.path(), &DataOptions::default()));
    assert!(path.ends_with("test"));
    match e {
        DataError::Mismatch(m) => assert!(m.contains("[b]") && m.contains("[c]"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_and_foreign_images_and_empty_class_folders_are_typed_errors() {
    let t = TempDir::new().unwrap();
    let d = t.path().join("train/a");
    mkdir(&d);
    mkdir(&t.path().join("test/a"));
    gray_image(6, 6, 0)
        .save(t.path().join("test/a/x.png"))
        .unwrap();
    let mut png = Vec::new();
    rgb_image(9, 9, 0)
        .write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
        .unwrap();
    std::fs::write(d.join("x.png"), &png[..png.len() / 2]).unwrap();
    let (path, e) = data_error(load(t.path(), &DataOptions::default()));
    assert!(path.ends_with("train/a/x.png"));
    assert!(matches!(e, DataError::Image(_)), "{e:?}");
    std::fs::write(d.join("x.png"), b"GIF89a not an image we read").unwrap();
    let (_, e) = data_error(load(t.path(), &DataOptions::default()));
    assert!(matches!(e, DataError::Unsupported { .. }), "{e:?}");
    std::fs::remove_file(d.join("x.png")).unwrap();
    let (path, e) = data_error(load(t.path(), &DataOptions::default()));
    assert!(path.ends_with("train/a"));
    assert!(matches!(e, DataError::Missing(_)), "{e:?}");
}

#[test]
fn image_size_on_a_non_folder_source_is_an_option_error() {
    let opts = DataOptions {
        image_size: Some((8, 8)),
        ..DataOptions::default()
    };
    assert!(matches!(
        load_with(&DataSource::Builtin, &opts),
        Err(Error::InvalidOption { .. })
    ));
}

// ---------------------------------------------------------------------------------------------------------------
// NumPy

fn write_npy_dir(dir: &Path, x: (&str, &[usize], &[u8]), y: (&str, &[usize], &[u8])) {
    for split in ["train", "test"] {
        std::fs::write(dir.join(format!("x_{split}.npy")), npy_bytes(x.0, x.1, x.2)).unwrap();
        std::fs::write(dir.join(format!("y_{split}.npy")), npy_bytes(y.0, y.1, y.2)).unwrap();
    }
}

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn npy_nhwc_colour_images_become_chw_and_int64_labels_bytes() {
    let t = TempDir::new().unwrap();
    // Two 13x17 RGB images in NHWC: value = (pixel index * 3 + channel) mod 256.
    let (h, w) = (13, 17);
    let x: Vec<u8> = (0..2 * h * w * 3).map(|i| (i % 251) as u8).collect();
    write_npy_dir(
        t.path(),
        ("|u1", &[2, h, w, 3], &x),
        ("<i8", &[2], &i64_bytes(&[4, 1])),
    );
    let s = load(t.path(), &DataOptions::default()).unwrap();
    assert_eq!(s.train.shape(), [3, h, w]);
    assert_eq!((s.train.labels.clone(), s.train.classes), (vec![4, 1], 5));
    let img = s.train.image(1);
    for (pix, c) in [(0, 0), (5, 2), (h * w - 1, 1)] {
        assert_eq!(
            img[c * h * w + pix],
            x[h * w * 3 + pix * 3 + c],
            "pixel {pix} channel {c}"
        );
    }
}

#[test]
fn npy_layout_is_detected_or_must_be_stated() {
    let t = TempDir::new().unwrap();
    // (N, 3, 5, 3): axis 1 and axis 3 could both be channels.
    let x = vec![7u8; 45];
    write_npy_dir(t.path(), ("|u1", &[1, 3, 5, 3], &x), ("|u1", &[1], &[0]));
    let (_, e) = data_error(load(t.path(), &DataOptions::default()));
    assert!(matches!(e, DataError::Unsupported { .. }), "{e:?}");
    let opts = DataOptions {
        layout: NpyLayout::Nchw,
        ..DataOptions::default()
    };
    assert_eq!(load(t.path(), &opts).unwrap().train.shape(), [3, 5, 3]);
    let opts = DataOptions {
        layout: NpyLayout::Nhwc,
        ..DataOptions::default()
    };
    assert_eq!(load(t.path(), &opts).unwrap().train.shape(), [3, 3, 5]);
}

#[test]
fn npy_float_pixels_in_unit_range_round_to_bytes_and_others_are_rejected() {
    let t = TempDir::new().unwrap();
    let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    write_npy_dir(
        t.path(),
        ("<f4", &[1, 2, 2], &f(&[0.0, 0.5, 1.0, 0.1])),
        ("<i4", &[1, 1], &3i32.to_le_bytes()),
    );
    let s = load(t.path(), &DataOptions::default()).unwrap();
    assert_eq!(s.train.image(0), &[0, 128, 255, 26]);
    write_npy_dir(
        t.path(),
        ("<f4", &[1, 2, 2], &f(&[0.0, 1.5, 1.0, 0.1])),
        ("<i4", &[1], &3i32.to_le_bytes()),
    );
    let (path, e) = data_error(load(t.path(), &DataOptions::default()));
    assert!(path.ends_with("x_train.npy"));
    assert_eq!(
        e,
        DataError::PixelOutOfRange {
            index: 1,
            value: 1.5
        }
    );
}

#[test]
fn npy_labels_out_of_range_or_miscounted_are_rejected_naming_the_label_file() {
    let t = TempDir::new().unwrap();
    write_npy_dir(
        t.path(),
        ("|u1", &[2, 2, 2], &[0; 8]),
        ("<i8", &[2], &i64_bytes(&[0, -1])),
    );
    let (path, e) = data_error(load(t.path(), &DataOptions::default()));
    assert!(path.ends_with("y_train.npy"));
    assert_eq!(
        e,
        DataError::LabelOutOfRange {
            index: 1,
            label: -1,
            classes: 256
        }
    );
    write_npy_dir(
        t.path(),
        ("|u1", &[2, 2, 2], &[0; 8]),
        ("<i8", &[2], &i64_bytes(&[0, 256])),
    );
    let (_, e) = data_error(load(t.path(), &DataOptions::default()));
    assert!(
        matches!(e, DataError::LabelOutOfRange { label: 256, .. }),
        "{e:?}"
    );
    write_npy_dir(
        t.path(),
        ("|u1", &[2, 2, 2], &[0; 8]),
        ("|u1", &[3], &[0, 1, 2]),
    );
    let (_, e) = data_error(load(t.path(), &DataOptions::default()));
    assert!(matches!(e, DataError::Mismatch(_)), "{e:?}");
}

#[test]
fn npy_wrong_magic_version_and_trailing_bytes_are_typed() {
    let good = npy_bytes("|u1", &[2, 3], &[1, 2, 3, 4, 5, 6]);
    let mut bad = good.clone();
    bad[1] = b'X';
    assert!(matches!(parse_npy(&bad), Err(DataError::BadMagic { .. })));
    let mut v = good.clone();
    v[6] = 9;
    assert!(matches!(parse_npy(&v), Err(DataError::Unsupported { .. })));
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(
        parse_npy(&long),
        Err(DataError::TrailingData { extra: 1, .. })
    ));
    let mut fortran = npy_bytes("|u1", &[2, 3], &[0; 6]);
    let at = fortran.windows(5).position(|w| w == b"False").unwrap();
    fortran.splice(at..at + 5, b"True ".iter().copied());
    assert!(matches!(
        parse_npy(&fortran),
        Err(DataError::Unsupported { .. })
    ));
    let mut huge = npy_bytes("<f4", &[1 << 20, 1 << 20], &[]);
    assert!(matches!(
        parse_npy(&huge),
        Err(DataError::LimitExceeded { .. })
    ));
    huge.truncate(9);
    assert!(matches!(parse_npy(&huge), Err(DataError::Truncated { .. })));
}

#[test]
fn npy_truncated_at_every_offset_is_an_error_never_a_panic() {
    let good = npy_bytes("<i2", &[3, 1], &[1, 0, 2, 0, 3, 0]);
    assert!(parse_npy(&good).is_ok());
    for cut in 0..good.len() {
        let e = parse_npy(&good[..cut]).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Truncated { .. }
                    | DataError::BadMagic { .. }
                    | DataError::Malformed { .. }
            ),
            "cut at {cut}: {e:?}"
        );
    }
}

fn write_npz(path: &Path, entries: &[(&str, Vec<u8>)], method: zip::CompressionMethod) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in entries {
        z.start_file(format!("{name}.npy"), opts).unwrap();
        std::io::Write::write_all(&mut z, bytes).unwrap();
    }
    z.finish().unwrap();
}

#[test]
fn npz_archives_stored_or_deflated_read_like_a_directory() {
    let t = TempDir::new().unwrap();
    let x = npy_bytes("|u1", &[3, 4, 5], &(0..60).collect::<Vec<u8>>());
    let y = npy_bytes("|u1", &[3], &[0, 1, 2]);
    for method in [
        zip::CompressionMethod::Stored,
        zip::CompressionMethod::Deflated,
    ] {
        let p = t.path().join(format!("{method:?}.npz"));
        let entries: Vec<(&str, Vec<u8>)> = ["x_train", "y_train", "x_test", "y_test"]
            .into_iter()
            .zip([x.clone(), y.clone(), x.clone(), y.clone()])
            .collect();
        write_npz(&p, &entries, method);
        let s = load(&p, &DataOptions::default()).unwrap();
        assert_eq!(
            (s.train.shape(), s.test.n, s.train.classes),
            ([1, 4, 5], 3, 3)
        );
        assert_eq!(s.test.image(2), &(40..60).collect::<Vec<u8>>()[..]);
    }
    let p = t.path().join("partial.npz");
    write_npz(&p, &[("x_train", x)], zip::CompressionMethod::Stored);
    let (path, e) = data_error(load(&p, &DataOptions::default()));
    assert_eq!(path, p);
    assert!(matches!(e, DataError::Missing(_)), "{e:?}");
    let p = t.path().join("not-a-zip.npz");
    std::fs::write(&p, b"hello").unwrap();
    assert!(matches!(
        data_error(load(&p, &DataOptions::default())).1,
        DataError::BadMagic { .. }
    ));
}

// ---------------------------------------------------------------------------------------------------------------
// CIFAR

fn cifar_records(labels: &[&[u8]]) -> Vec<u8> {
    labels
        .iter()
        .enumerate()
        .flat_map(|(k, l)| {
            let mut r = l.to_vec();
            r.extend((0..CIFAR_IMAGE_BYTES).map(|i| (i * 3 + k) as u8));
            r
        })
        .collect()
}

#[test]
fn cifar10_batches_are_read_in_order_with_class_names() {
    let t = TempDir::new().unwrap();
    let d = t.path().join("cifar-10-batches-bin");
    mkdir(&d);
    std::fs::write(d.join("data_batch_2.bin"), cifar_records(&[&[2]])).unwrap();
    std::fs::write(d.join("data_batch_1.bin"), cifar_records(&[&[1], &[9]])).unwrap();
    std::fs::write(d.join("test_batch.bin"), cifar_records(&[&[0]])).unwrap();
    let s = load(t.path(), &DataOptions::default()).unwrap();
    assert_eq!((s.train.shape(), s.train.classes), ([3, 32, 32], 10));
    assert_eq!(s.train.labels, vec![1, 9, 2]);
    assert_eq!(s.train.image(1)[..3], [1, 4, 7]);
    assert_eq!(s.test.class_names()[9], "truck");
    std::fs::write(d.join("test_batch.bin"), cifar_records(&[&[10]])).unwrap();
    let (path, e) = data_error(load(t.path(), &DataOptions::default()));
    assert!(path.ends_with("test_batch.bin"));
    assert_eq!(
        e,
        DataError::LabelOutOfRange {
            index: 0,
            label: 10,
            classes: 10
        }
    );
    std::fs::write(d.join("test_batch.bin"), &cifar_records(&[&[1]])[..100]).unwrap();
    assert!(matches!(
        data_error(load(t.path(), &DataOptions::default())).1,
        DataError::Truncated { .. }
    ));
}

#[test]
fn cifar100_reads_fine_labels_or_coarse_on_request() {
    let t = TempDir::new().unwrap();
    std::fs::write(
        t.path().join("train.bin"),
        cifar_records(&[&[3, 77], &[19, 5]]),
    )
    .unwrap();
    std::fs::write(t.path().join("test.bin"), cifar_records(&[&[0, 99]])).unwrap();
    let s = load(t.path(), &DataOptions::default()).unwrap();
    assert_eq!(
        (s.train.labels.clone(), s.train.classes),
        (vec![77, 5], 100)
    );
    let coarse = DataOptions {
        coarse_labels: true,
        ..DataOptions::default()
    };
    let s = load(t.path(), &coarse).unwrap();
    assert_eq!((s.train.labels.clone(), s.train.classes), (vec![3, 19], 20));
    assert!(matches!(
        parse_cifar(&cifar_records(&[&[20, 1]]), CifarKind::Cifar100Fine),
        Err(DataError::LabelOutOfRange {
            label: 20,
            classes: 20,
            ..
        })
    ));
}

#[test]
fn cifar_truncated_at_every_record_offset_is_an_error() {
    let good = cifar_records(&[&[1], &[2]]);
    for cut in (0..good.len()).step_by(97) {
        assert!(
            matches!(
                parse_cifar(&good[..cut], CifarKind::Cifar10),
                Err(DataError::Truncated { .. })
            ),
            "cut at {cut}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Normalisation

#[test]
fn normalisation_reaches_the_samples_and_must_fit_the_channels() {
    let t = TempDir::new().unwrap();
    write_npy_dir(
        t.path(),
        ("|u1", &[1, 1, 2, 2], &[0, 51, 255, 102]),
        ("|u1", &[1], &[0]),
    );
    let norm = Normalization::new(vec![0.2], vec![0.5]).unwrap();
    let opts = DataOptions {
        normalization: Some(norm),
        ..DataOptions::default()
    };
    let s = load(t.path(), &opts).unwrap();
    let batcher = lowbit::data::Batcher::new(&s.train, 1, 0).unwrap();
    let (x, _) = batcher.batch(&[0]);
    assert_eq!(x.data, vec![-0.4, 0.0, 1.6, (102.0f32 / 255.0 - 0.2) / 0.5]);
    let three = DataOptions {
        normalization: Some(Normalization::new(vec![0.1, 0.2, 0.3], vec![1.0; 3]).unwrap()),
        ..DataOptions::default()
    };
    assert!(matches!(
        load(t.path(), &three),
        Err(Error::InvalidOption { .. })
    ));
}

#[test]
fn normalised_input_codes_are_what_the_input_fake_quantizer_computes() {
    use lowbit::quant::ActQuantizer;
    use lowbit_runtime::qparams::{dequantize, fake_quantize};
    let n = Normalization::new(vec![0.49, 0.48, 0.45], vec![0.25, 0.24, 0.26]).unwrap();
    let q = ActQuantizer::normalized_input(&n, 3).unwrap();
    let qp = q.qparams();
    let pixels: Vec<u8> = (0..=255u8).chain(0..=255).chain(0..=255).collect();
    let mut codes = Vec::new();
    n.codes(qp, 3, 256, &pixels, &mut codes);
    for (i, (&p, &code)) in pixels.iter().zip(&codes).enumerate() {
        let c = i / 256;
        assert_eq!(
            fake_quantize(n.value(c, p), qp, 0, 255),
            dequantize(i32::from(code), qp),
            "channel {c} pixel {p}"
        );
    }
    assert!(ActQuantizer::normalized_input(&n, 1).is_err());
}

/// `n` NHWC colour images of 13x17 whose dominant channel is the label (0, 1 or 2), with seeded noise.
fn colour_classes(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = lowbit::rng::Rng::new(seed);
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let mut x = Vec::with_capacity(n * 13 * 17 * 3);
    for &l in &labels {
        for _ in 0..13 * 17 {
            for c in 0..3u8 {
                let base = if c == l { 160 } else { 60 };
                x.push((base + rng.below(80)) as u8);
            }
        }
    }
    (x, labels)
}

#[test]
fn a_cnn_trained_on_normalised_colour_data_keeps_its_normalisation_through_both_model_files() {
    use lowbit::pipeline::{self, RunConfig};
    use lowbit::quant::{Method, QuantConfig};
    use lowbit::train::TrainConfig;
    let t = TempDir::new().unwrap();
    for (split, n, seed) in [("train", 120, 1), ("test", 30, 2)] {
        let (x, y) = colour_classes(n, seed);
        std::fs::write(
            t.path().join(format!("x_{split}.npy")),
            npy_bytes("|u1", &[n, 13, 17, 3], &x),
        )
        .unwrap();
        std::fs::write(
            t.path().join(format!("y_{split}.npy")),
            npy_bytes("|u1", &[n], &y),
        )
        .unwrap();
    }
    // Distinct statistics per channel: equal ones would be absorbed by the input scale and zero point alone.
    let norm = Normalization::new(vec![0.5, 0.4, 0.3], vec![0.25, 0.2, 0.3]).unwrap();
    let opts = DataOptions {
        normalization: Some(norm.clone()),
        ..DataOptions::default()
    };
    let split = load(t.path(), &opts).unwrap();
    let cfg = RunConfig {
        data: t.path().display().to_string(),
        model: "cnn:c4-p-c8-g-3".into(),
        train: TrainConfig {
            epochs: 6,
            batch_size: 16,
            lr: 0.01,
            seed: 5,
            validation_fraction: None,
            ..TrainConfig::default()
        },
        quant: Some(QuantConfig {
            weight_bits: 8,
            method: Method::Ptq,
            ..QuantConfig::default()
        }),
        init: None,
        baseline: false,
    };
    let out = pipeline::run(&cfg, &split, None, None, &mut |_| {}).unwrap();
    let qm = out.quant_model.unwrap();
    assert_eq!(qm.normalization.as_ref(), Some(&norm));
    assert_eq!(out.float_model.normalization.as_ref(), Some(&norm));
    assert_eq!(out.report.engine_simulation_mismatches, Some(0));
    // Colour alone separates the classes: measured 100% (engine and fake-quant) here; 80% leaves room for other seeds and tiers.
    assert!(
        out.report.test_accuracy >= 0.8,
        "accuracy {}",
        out.report.test_accuracy
    );
    let back = lowbit_runtime::format::from_bytes(&lowbit_runtime::format::to_bytes(&qm).unwrap())
        .unwrap();
    assert_eq!(back, qm);
    // A float model for the data carries the normalisation into the float file.
    let fresh = pipeline::model_for(&cfg.model, 1, &split).unwrap();
    let bytes = lowbit::modelfile::float_to_bytes(&fresh, &Default::default()).unwrap();
    let (fm, _) = lowbit::modelfile::float_from_bytes(&bytes, Path::new("m.f32")).unwrap();
    assert_eq!(fm.normalization, Some(norm));
}
