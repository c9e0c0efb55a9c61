//! IDX reading and directory loading: round trips, and one test per error.

use lowbit::data::{
    load, parse_idx_images, read_idx_images, read_idx_labels, write_idx, DataSource, IDX_FILE_NAMES,
};
use lowbit::Error;
use proptest::prelude::*;
use std::path::Path;

/// `n` images of 2x3 whose pixels encode (image, position), labels `i % classes`.
fn images(n: usize) -> Vec<u8> {
    (0..n * 6).map(|k| (k * 7 % 251) as u8).collect()
}

fn labels(n: usize, classes: usize) -> Vec<u8> {
    (0..n).map(|i| (i % classes) as u8).collect()
}

/// Writes the four files of a data directory with `train` and `test` images of 2x3.
fn write_dir(dir: &Path, train: usize, test: usize, gzip: bool) {
    let ext = if gzip { ".gz" } else { "" };
    let f = |name: &str| dir.join(format!("{name}{ext}"));
    write_idx(&f(IDX_FILE_NAMES[0]), &[train, 2, 3], &images(train), gzip).unwrap();
    write_idx(&f(IDX_FILE_NAMES[1]), &[train], &labels(train, 10), gzip).unwrap();
    write_idx(&f(IDX_FILE_NAMES[2]), &[test, 2, 3], &images(test), gzip).unwrap();
    write_idx(&f(IDX_FILE_NAMES[3]), &[test], &labels(test, 10), gzip).unwrap();
}

fn data_reason(r: Result<impl std::fmt::Debug, Error>) -> String {
    match r {
        Err(Error::Data { reason, .. }) => reason,
        other => panic!("expected Error::Data, got {other:?}"),
    }
}

#[test]
fn raw_and_gzip_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for gzip in [false, true] {
        let p = dir.path().join(format!("im{gzip}"));
        write_idx(&p, &[4, 2, 3], &images(4), gzip).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.starts_with(&[0x1f, 0x8b]), gzip);
        let im = read_idx_images(&p).unwrap();
        assert_eq!((im.count, im.rows, im.cols), (4, 2, 3));
        assert_eq!(im.pixels, images(4));
        let p = dir.path().join(format!("lab{gzip}"));
        write_idx(&p, &[5], &labels(5, 3), gzip).unwrap();
        assert_eq!(read_idx_labels(&p).unwrap(), labels(5, 3));
    }
}

#[test]
fn directory_loads_raw_gzip_and_dotted_names() {
    for gzip in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_dir(dir.path(), 12, 7, gzip);
        let split = load(&DataSource::Dir(dir.path().to_path_buf())).unwrap();
        assert_eq!((split.train.n, split.test.n), (12, 7));
        assert_eq!(
            (split.train.rows, split.train.cols, split.train.classes),
            (2, 3, 10)
        );
        assert_eq!(split.train.images, images(12));
        assert_eq!(split.test.labels, labels(7, 10));
        assert_eq!(split.train.name, dir.path().display().to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), 3, 2, false);
    let old = dir.path().join("t10k-images-idx3-ubyte");
    std::fs::rename(&old, dir.path().join("t10k-images.idx3-ubyte")).unwrap();
    let split = load(&DataSource::Dir(dir.path().to_path_buf())).unwrap();
    assert_eq!(split.test.n, 2);
}

#[test]
fn truncation_at_every_byte_offset_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for gzip in [false, true] {
        let full = dir.path().join("full");
        write_idx(&full, &[3, 2, 3], &images(3), gzip).unwrap();
        let bytes = std::fs::read(&full).unwrap();
        let cut_path = dir.path().join("cut");
        for cut in 0..bytes.len() {
            std::fs::write(&cut_path, &bytes[..cut]).unwrap();
            let r = read_idx_images(&cut_path);
            assert!(
                matches!(r, Err(Error::Data { .. })),
                "gzip={gzip} cut at {cut}: {r:?}"
            );
        }
        write_idx(&full, &[5], &labels(5, 3), gzip).unwrap();
        let bytes = std::fs::read(&full).unwrap();
        for cut in 0..bytes.len() {
            std::fs::write(&cut_path, &bytes[..cut]).unwrap();
            let r = read_idx_labels(&cut_path);
            assert!(
                matches!(r, Err(Error::Data { .. })),
                "gzip={gzip} cut at {cut}: {r:?}"
            );
        }
    }
}

#[test]
fn truncated_payload_says_needed_and_available_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("im");
    write_idx(&p, &[3, 2, 3], &images(3), false).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
    let reason = data_reason(read_idx_images(&p));
    assert!(
        reason.contains("18 bytes") && reason.contains("13 available"),
        "{reason}"
    );
}

#[test]
fn missing_file_is_an_io_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope-idx3-ubyte");
    match read_idx_images(&p) {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("nope-idx3-ubyte"), "{e}"),
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

#[test]
fn bad_magic_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("im");
    std::fs::write(&p, b"\x89PNG\r\n\x1a\n0000000000000000").unwrap();
    assert!(data_reason(read_idx_images(&p)).contains("bad magic"));
    // A label file where an image file is expected.
    write_idx(&p, &[4], &[0; 4], false).unwrap();
    assert!(data_reason(read_idx_images(&p)).contains("1 dimensions"));
    // Element type other than unsigned byte (0x0D = f32).
    std::fs::write(&p, [0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]).unwrap();
    assert!(data_reason(read_idx_labels(&p)).contains("element type"));
}

#[test]
fn wrong_dimension_count_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("im");
    write_idx(&p, &[2, 12], &[0; 24], true).unwrap();
    let reason = data_reason(read_idx_images(&p));
    assert!(
        reason.contains("has 2 dimensions") && reason.contains("has 3"),
        "{reason}"
    );
    write_idx(&p, &[2, 1], &[0; 2], false).unwrap();
    assert!(data_reason(read_idx_labels(&p)).contains("has 2 dimensions"));
}

#[test]
fn trailing_bytes_after_the_payload_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lab");
    write_idx(&p, &[3], &[0, 1, 2, 3], true).unwrap();
    assert!(data_reason(read_idx_labels(&p)).contains("trailing"));
}

#[test]
fn image_and_label_count_mismatch_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), 6, 4, false);
    write_idx(
        &dir.path().join(IDX_FILE_NAMES[1]),
        &[5],
        &labels(5, 10),
        false,
    )
    .unwrap();
    let reason = data_reason(load(&DataSource::Dir(dir.path().to_path_buf())));
    assert!(
        reason.contains("5 labels") && reason.contains("6 images"),
        "{reason}"
    );
}

#[test]
fn train_and_test_image_sizes_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), 6, 4, false);
    write_idx(
        &dir.path().join(IDX_FILE_NAMES[2]),
        &[4, 3, 2],
        &images(4),
        false,
    )
    .unwrap();
    assert!(data_reason(load(&DataSource::Dir(dir.path().to_path_buf()))).contains("3x2"));
}

#[test]
fn class_count_follows_the_largest_label_up_to_62() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), 6, 4, false);
    write_idx(
        &dir.path().join(IDX_FILE_NAMES[3]),
        &[4],
        &[0, 1, 2, 11],
        false,
    )
    .unwrap();
    let split = load(&DataSource::Dir(dir.path().to_path_buf())).unwrap();
    assert_eq!((split.train.classes, split.test.classes), (12, 12));
    assert_eq!(split.train.class_names().len(), 12);
    write_idx(
        &dir.path().join(IDX_FILE_NAMES[3]),
        &[4],
        &[0, 1, 62, 3],
        false,
    )
    .unwrap();
    let reason = data_reason(load(&DataSource::Dir(dir.path().to_path_buf())));
    assert!(reason.contains("label 62 at index 2"), "{reason}");
}

#[test]
fn missing_files_are_listed_with_the_expected_names() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), 3, 2, true);
    std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let reason = data_reason(load(&DataSource::Dir(dir.path().to_path_buf())));
    assert!(
        reason.starts_with("missing t10k-labels-idx1-ubyte (raw or .gz)"),
        "{reason}"
    );
    for name in IDX_FILE_NAMES {
        assert!(reason.contains(name), "{reason}");
    }
}

#[test]
fn missing_directory_is_reported_as_missing_data() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("no-such-dir");
    let source: DataSource = gone.to_str().unwrap().parse().unwrap();
    match load(&source) {
        Err(e @ Error::MissingData(_)) => assert!(e.to_string().contains("no-such-dir"), "{e}"),
        other => panic!("expected Error::MissingData, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random byte mutations of a valid file (raw or gzip) never panic, and whatever parses is self-consistent.
    #[test]
    fn mutated_files_never_panic(
        gzip in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("im");
        write_idx(&p, &[3, 2, 3], &images(3), gzip).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(im) = parse_idx_images(&bytes, &p) {
            prop_assert_eq!(im.pixels.len(), im.count * im.rows * im.cols);
        }
    }
}
