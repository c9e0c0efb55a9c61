//! Image folders as torchvision's `ImageFolder` lays them out: `DIR/train/CLASS/*.png|jpg|jpeg` and
//! `DIR/test/CLASS/...` (or `DIR/val/...`), decoded by the `image` crate (PNG and JPEG only).
//!
//! Rules, stated once:
//! - Classes are the subfolders of `train/`, sorted by name (byte order, as torchvision sorts them); label `i` is
//!   the `i`-th. The test split must have exactly the same class folders, or loading fails: a model's labels
//!   would otherwise mean different classes in the two splits. Hidden entries (`.name`) are skipped, and files
//!   whose extension is not `.png`, `.jpg` or `.jpeg` (any case) are ignored; a class folder without images is an
//!   error.
//! - Channels: the dataset is RGB when any image of either split is in a colour mode, grayscale otherwise. In an
//!   RGB dataset a grayscale image is replicated to three channels; alpha is dropped (not composited); 16-bit
//!   samples are reduced to 8 bits by the `image` crate.
//! - Size: without `--image-size` every image must have the size of the first training image. With
//!   `--image-size HxW` each image is resized (bilinear, keeping its aspect ratio) so that it covers HxW, which
//!   makes its shorter side (relative to the target) exactly fit, then center-cropped to HxW (torchvision's
//!   `Resize` then `CenterCrop`).
use crate::error::{DataError, Error, Result};
use image::{imageops, DynamicImage, ImageFormat, ImageReader};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Most classes (labels are bytes).
pub const MAX_FOLDER_CLASSES: usize = 256;
/// Largest image file read, in bytes.
pub const MAX_FOLDER_IMAGE_BYTES: u64 = 64 << 20;
/// Largest decoded image side, in pixels (checked from the header, before decoding).
pub const MAX_DECODED_SIDE: u32 = 16384;
/// Largest side of the images the dataset holds (after `--image-size`), in pixels.
pub const MAX_FOLDER_SIDE: usize = 1024;
/// Most pixel bytes one split may hold (1 GiB).
pub const MAX_FOLDER_BYTES: usize = 1 << 30;
/// File extensions read, lower case.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Target size `(rows, cols)` from `HxW` (or a single `N` for NxN).
pub fn parse_image_size(text: &str) -> Result<(usize, usize)> {
    let bad = || {
        Error::option(
            "--image-size",
            format!("{text:?}: expected HxW (e.g. 32x32) or N, sides 1 to {MAX_FOLDER_SIDE}"),
        )
    };
    let t = text.trim().to_ascii_lowercase();
    let (h, w) = match t.split_once('x') {
        Some((h, w)) => (h.trim().parse().ok(), w.trim().parse().ok()),
        None => (t.parse().ok(), t.parse().ok()),
    };
    match (h, w) {
        (Some(h), Some(w))
            if (1..=MAX_FOLDER_SIDE).contains(&h) && (1..=MAX_FOLDER_SIDE).contains(&w) =>
        {
            Ok((h, w))
        }
        _ => Err(bad()),
    }
}

/// Whether `dir` is laid out as an image folder: it has `train/` and `test/` or `val/`.
pub fn is_image_folder(dir: &Path) -> bool {
    dir.join("train").is_dir() && test_dir(dir).is_some()
}

fn test_dir(dir: &Path) -> Option<PathBuf> {
    ["test", "val"]
        .into_iter()
        .map(|s| dir.join(s))
        .find(|p| p.is_dir())
}

fn err(path: &Path, source: DataError) -> Error {
    Error::DataFile {
        path: path.to_path_buf(),
        source,
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Visible entries of `dir`, sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            out.push((name, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Class folders of a split, sorted, with their image files, sorted.
fn scan_split(dir: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let mut classes = Vec::new();
    for (name, path) in sorted_entries(dir)? {
        if !path.is_dir() {
            continue;
        }
        let files: Vec<PathBuf> = sorted_entries(&path)?
            .into_iter()
            .filter(|(n, p)| {
                let ext = n.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
                p.is_file() && ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
            })
            .map(|(_, p)| p)
            .collect();
        if files.is_empty() {
            return Err(err(
                &path,
                DataError::Missing("class folder holds no .png, .jpg or .jpeg files".into()),
            ));
        }
        classes.push((name, files));
    }
    if classes.is_empty() {
        return Err(err(
            dir,
            DataError::Missing("no class folders (expected one subfolder per class)".into()),
        ));
    }
    if classes.len() > MAX_FOLDER_CLASSES {
        return Err(err(
            dir,
            DataError::LimitExceeded {
                what: "class folders".into(),
                value: classes.len() as u64,
                max: MAX_FOLDER_CLASSES as u64,
            },
        ));
    }
    Ok(classes)
}

/// One decoded image at the dataset's size: CHW pixels with 1 or 3 channels.
struct Decoded {
    colour: bool,
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
}

/// Decodes one image file (PNG or JPEG, by content) and brings it to `size` when given.
fn decode(path: &Path, size: Option<(usize, usize)>) -> Result<Decoded> {
    let len = std::fs::metadata(path).map_err(io(path))?.len();
    if len > MAX_FOLDER_IMAGE_BYTES {
        return Err(err(
            path,
            DataError::LimitExceeded {
                what: "image file size".into(),
                value: len,
                max: MAX_FOLDER_IMAGE_BYTES,
            },
        ));
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    let image = decode_bytes(&bytes).map_err(|e| err(path, e))?;
    let colour = image.color().has_color();
    let image = match size {
        Some(s) => resize_and_crop(image, s),
        None => image,
    };
    let (cols, rows) = (image.width() as usize, image.height() as usize);
    let pixels = if colour {
        let rgb = image.to_rgb8();
        let plane = rows * cols;
        let mut out = vec![0u8; 3 * plane];
        for (i, px) in rgb.pixels().enumerate() {
            for (c, &v) in px.0.iter().enumerate() {
                out[c * plane + i] = v;
            }
        }
        out
    } else {
        image.to_luma8().into_raw()
    };
    Ok(Decoded {
        colour,
        rows,
        cols,
        pixels,
    })
}

/// Reads one PNG or JPEG image for a model taking `[channels, rows, cols]` (1 or 3 channels): resized and
/// center-cropped as `--image-size` does (a no-op at the model's size), then made gray (the `image` crate's
/// luma) or RGB. Returns CHW pixels.
pub fn read_image_for(path: &Path, [channels, rows, cols]: [usize; 3]) -> Result<Vec<u8>> {
    if channels != 1 && channels != 3 {
        return Err(err(
            path,
            DataError::Unsupported {
                what: "model input".into(),
                found: format!("{channels} channels (images give 1 or 3)"),
            },
        ));
    }
    let d = decode(path, Some((rows, cols)))?;
    Ok(match (channels, d.colour) {
        (1, true) => {
            // Back to an image to take the decoder's luma of the resized colour pixels.
            let plane = rows * cols;
            let rgb: Vec<u8> = (0..plane)
                .flat_map(|i| [d.pixels[i], d.pixels[plane + i], d.pixels[2 * plane + i]])
                .collect();
            image::RgbImage::from_raw(cols as u32, rows as u32, rgb)
                .map(|img| DynamicImage::ImageRgb8(img).to_luma8().into_raw())
                .unwrap_or_default()
        }
        (3, false) => d.pixels.repeat(3),
        _ => d.pixels,
    })
}

/// Decodes PNG or JPEG bytes, rejecting other formats and images larger than [`MAX_DECODED_SIDE`] before they
/// are decoded.
pub fn decode_bytes(bytes: &[u8]) -> std::result::Result<DynamicImage, DataError> {
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DataError::Image(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
        _ => {
            return Err(DataError::Unsupported {
                what: "image format".into(),
                found: format!(
                    "file starting {:?} (PNG and JPEG are read)",
                    bytes.get(..8).unwrap_or(bytes).escape_ascii().to_string()
                ),
            })
        }
    }
    let mut reader = reader;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODED_SIDE);
    limits.max_image_height = Some(MAX_DECODED_SIDE);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    reader.decode().map_err(|e| DataError::Image(e.to_string()))
}

/// Resizes `image` (bilinear) so that it covers `rows x cols` with its aspect ratio kept, then crops the center.
fn resize_and_crop(image: DynamicImage, (rows, cols): (usize, usize)) -> DynamicImage {
    let (w0, h0) = (image.width() as f64, image.height() as f64);
    let scale = (rows as f64 / h0).max(cols as f64 / w0);
    let w = ((w0 * scale).round() as u32).max(cols as u32);
    let h = ((h0 * scale).round() as u32).max(rows as u32);
    let image = if (w, h) == (image.width(), image.height()) {
        image
    } else {
        image.resize_exact(w, h, imageops::FilterType::Triangle)
    };
    let x = (w - cols as u32) / 2;
    let y = (h - rows as u32) / 2;
    image.crop_imm(x, y, cols as u32, rows as u32)
}

/// The images of one split, in class then file order, with their labels.
struct SplitImages {
    images: Vec<(PathBuf, Decoded)>,
    labels: Vec<u8>,
}

fn load_split(
    classes: &[(String, Vec<PathBuf>)],
    size: Option<(usize, usize)>,
) -> Result<SplitImages> {
    let files: Vec<(usize, &PathBuf)> = classes
        .iter()
        .enumerate()
        .flat_map(|(label, (_, files))| files.iter().map(move |f| (label, f)))
        .collect();
    // Decoded in parallel, collected in order: the dataset does not depend on the thread count.
    let decoded: Vec<Result<(PathBuf, Decoded)>> = files
        .par_iter()
        .map(|&(_, f)| decode(f, size).map(|d| (f.clone(), d)))
        .collect();
    let mut images = Vec::with_capacity(decoded.len());
    let mut bytes = 0usize;
    for d in decoded {
        let (path, d) = d?;
        bytes = bytes.saturating_add(3 * d.pixels.len());
        if bytes > MAX_FOLDER_BYTES {
            return Err(err(
                &path,
                DataError::LimitExceeded {
                    what: "pixel bytes of the split".into(),
                    value: bytes as u64,
                    max: MAX_FOLDER_BYTES as u64,
                },
            ));
        }
        images.push((path, d));
    }
    let labels = files.iter().map(|&(l, _)| l as u8).collect();
    Ok(SplitImages { images, labels })
}

/// An image folder's two splits: `(train, test)` each as `(pixels CHW, labels)`, the image shape
/// `[channels, rows, cols]` and the class names.
pub struct FolderData {
    /// Training pixels and labels.
    pub train: (Vec<u8>, Vec<u8>),
    /// Test pixels and labels.
    pub test: (Vec<u8>, Vec<u8>),
    /// `[channels, rows, cols]`.
    pub shape: [usize; 3],
    /// Class names, in label order.
    pub classes: Vec<String>,
}

/// Reads an image folder (see the module doc for every rule).
pub fn read_image_folder(dir: &Path, size: Option<(usize, usize)>) -> Result<FolderData> {
    let train_dir = dir.join("train");
    let test_dir = test_dir(dir).ok_or_else(|| {
        err(
            dir,
            DataError::Missing("no test/ or val/ folder beside train/".into()),
        )
    })?;
    let train_classes = scan_split(&train_dir)?;
    let test_classes = scan_split(&test_dir)?;
    let names: Vec<String> = train_classes.iter().map(|(n, _)| n.clone()).collect();
    let test_names: Vec<String> = test_classes.iter().map(|(n, _)| n.clone()).collect();
    if names != test_names {
        let only = |a: &[String], b: &[String]| {
            a.iter()
                .filter(|n| !b.contains(n))
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(err(
            &test_dir,
            DataError::Mismatch(format!(
                "class folders differ from {}: only in train: [{}]; only here: [{}]",
                train_dir.display(),
                only(&names, &test_names),
                only(&test_names, &names)
            )),
        ));
    }
    let train = load_split(&train_classes, size)?;
    let test = load_split(&test_classes, size)?;
    let (rows, cols) = match (size, train.images.first()) {
        (Some(s), _) => s,
        (None, Some((_, d))) => (d.rows, d.cols),
        (None, None) => (0, 0),
    };
    let colour = train
        .images
        .iter()
        .chain(&test.images)
        .any(|(_, d)| d.colour);
    let channels = if colour { 3 } else { 1 };
    let pack = |s: SplitImages| -> Result<(Vec<u8>, Vec<u8>)> {
        let mut pixels = Vec::with_capacity(s.images.len() * channels * rows * cols);
        for (path, d) in s.images {
            if (d.rows, d.cols) != (rows, cols) {
                return Err(err(
                    &path,
                    DataError::Mismatch(format!(
                        "image is {}x{} (HxW) but the first training image is {rows}x{cols}: give --image-size \
                         HxW to resize and center-crop every image",
                        d.rows, d.cols
                    )),
                ));
            }
            if channels == 3 && !d.colour {
                for _ in 0..3 {
                    pixels.extend_from_slice(&d.pixels);
                }
            } else {
                pixels.extend_from_slice(&d.pixels);
            }
        }
        Ok((pixels, s.labels))
    };
    Ok(FolderData {
        train: pack(train)?,
        test: pack(test)?,
        shape: [channels, rows, cols],
        classes: names,
    })
}
