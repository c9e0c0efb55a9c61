//! In-memory labelled image sets.

use crate::rng::Rng;
use crate::{Error, Result};
use lowbit_runtime::preprocess::Normalization;
use std::path::PathBuf;

/// Labelled images held as raw bytes (0 = black, 255 = white), grayscale or with several channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `n * channels * rows * cols` raw pixels, image after image, each channel-major (CHW) and row-major.
    pub images: Vec<u8>,
    /// One label per image, each `< classes`.
    pub labels: Vec<u8>,
    /// Number of images.
    pub n: usize,
    /// Channels per image (1 for grayscale, 3 for RGB).
    pub channels: usize,
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// Number of classes; labels are `0..classes`.
    pub classes: usize,
    /// Source name (`builtin`, `fashion-mnist`, or a directory path); selects [`class_names`] when `names` is
    /// empty.
    pub name: String,
    /// Class names given by the source (an image folder's subfolders), in label order; empty when the source
    /// has none.
    pub names: Vec<String>,
    /// Normalisation applied when pixels become model inputs ([`super::pixels_to_input`]); `None`: `p / 255`.
    pub normalization: Option<Normalization>,
}

/// A training set and a test set with the same image size and classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Training images.
    pub train: Dataset,
    /// Held-out test images.
    pub test: Dataset,
}

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Class names for a dataset name: Fashion-MNIST's ten names for `builtin` and `fashion-mnist`, the digits
/// `"0"..="9"` for anything else. Always ten entries; [`Dataset::class_names`] covers sets with more classes.
pub fn class_names(name: &str) -> Vec<String> {
    match name {
        "builtin" | "fashion-mnist" => FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        _ => (0..10).map(|d| d.to_string()).collect(),
    }
}

/// Splits sample indices `0..labels.len()` into `(train, validation)`, holding out `fraction` of each label
/// (rounded to nearest) chosen by a shuffle seeded from `seed`; both lists ascending. Data sorted by class
/// (the embedded sample is) would lose whole classes to a tail split; this keeps every class on both sides.
/// Either list may be empty (a fraction near 0 or 1, or tiny classes): callers decide whether that is an error.
pub fn stratified_split(labels: &[u8], fraction: f32, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let classes = labels.iter().max().map_or(0, |&m| usize::from(m) + 1);
    let mut by_class = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[usize::from(l)].push(i);
    }
    let mut rng = Rng::new(seed);
    let mut train = Vec::with_capacity(labels.len());
    let mut val = Vec::new();
    for (class, mut idx) in by_class.into_iter().enumerate() {
        // A stream per class (empty ones too) so one class's size does not change another's draw.
        rng.fork(class as u64).shuffle(&mut idx);
        let k = (idx.len() as f64 * f64::from(fraction)).round() as usize;
        val.extend_from_slice(&idx[..k]);
        train.extend_from_slice(&idx[k..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

impl Dataset {
    /// Builds a dataset, checking that `images` holds `labels.len()` images of `rows x cols` and that every label
    /// is below `classes`. `name` is used in error messages.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u8>,
        rows: usize,
        cols: usize,
        classes: usize,
        name: impl Into<String>,
    ) -> Result<Self> {
        Self::with_channels(images, labels, [1, rows, cols], classes, name)
    }

    /// [`Dataset::new`] for images of `shape = [channels, rows, cols]` (CHW per image).
    pub fn with_channels(
        images: Vec<u8>,
        labels: Vec<u8>,
        shape: [usize; 3],
        classes: usize,
        name: impl Into<String>,
    ) -> Result<Self> {
        let [channels, rows, cols] = shape;
        let name = name.into();
        let err = |reason: String| Error::Data {
            path: PathBuf::from(&name),
            reason,
        };
        let n = labels.len();
        let expected = n
            .checked_mul(channels)
            .and_then(|v| v.checked_mul(rows))
            .and_then(|v| v.checked_mul(cols));
        if channels == 0 || expected != Some(images.len()) {
            return Err(err(format!(
                "{} pixel bytes do not hold {n} images of {channels}x{rows}x{cols}",
                images.len()
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| usize::from(l) >= classes)
        {
            return Err(err(format!(
                "label {l} of image {i} is not below the class count {classes}"
            )));
        }
        Ok(Self {
            images,
            labels,
            n,
            channels,
            rows,
            cols,
            classes,
            name,
            names: Vec::new(),
            normalization: None,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Pixels per image (`channels * rows * cols`).
    pub fn image_len(&self) -> usize {
        self.channels * self.rows * self.cols
    }

    /// Shape of one image, `[channels, rows, cols]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.rows, self.cols]
    }

    /// Raw pixels of image `i`. Panics if `i >= len()` (a caller bug, like slice indexing).
    pub fn image(&self, i: usize) -> &[u8] {
        let len = self.image_len();
        &self.images[i * len..(i + 1) * len]
    }

    /// Image `i` laid out for a model input of `[channels, height, width]`, appended to `out`: centred on a
    /// zero background (cropped symmetrically where the model input is smaller) and repeated in every channel.
    /// Lets a model built for another input shape (e.g. 3x32x32) be fed and benchmarked with these images.
    /// Panics if `i >= len()`.
    pub fn fitted_image(&self, i: usize, [channels, height, width]: [usize; 3], out: &mut Vec<u8>) {
        let src = self.image(i);
        let start = out.len();
        out.resize(start + height * width, 0);
        // Offsets of the image in the input (positive) or of the input in the image (negative), centred.
        let offset = |from: usize, to: usize| (to as isize - from as isize) / 2;
        let (dy, dx) = (offset(self.rows, height), offset(self.cols, width));
        for y in 0..height {
            let sy = y as isize - dy;
            if sy < 0 || sy >= self.rows as isize {
                continue;
            }
            for x in 0..width {
                let sx = x as isize - dx;
                if (0..self.cols as isize).contains(&sx) {
                    out[start + y * width + x] = src[sy as usize * self.cols + sx as usize];
                }
            }
        }
        for _ in 1..channels {
            out.extend_from_within(start..start + height * width);
        }
    }

    /// Label of image `i`. Panics if `i >= len()`.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// The images at `indices`, in that order (repeats allowed). Panics on an index `>= len()`.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            images,
            labels,
            n: indices.len(),
            channels: self.channels,
            rows: self.rows,
            cols: self.cols,
            classes: self.classes,
            name: self.name.clone(),
            names: self.names.clone(),
            normalization: self.normalization.clone(),
        }
    }

    /// Splits off a validation set holding `fraction` of each class (rounded to nearest), chosen by a seeded
    /// shuffle; returns `(train, validation)`, each in the original order and keeping this set's name.
    /// Errors if `fraction` is not in (0, 1) or either part would be empty.
    pub fn split_validation(&self, fraction: f32, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(Error::option(
                "validation fraction",
                format!("{fraction} is not strictly between 0 and 1"),
            ));
        }
        let (train, val) = stratified_split(&self.labels, fraction, seed);
        if train.is_empty() || val.is_empty() {
            return Err(Error::option(
                "validation fraction",
                format!(
                    "{fraction} of {} images leaves {} for training and {} for validation",
                    self.n,
                    train.len(),
                    val.len()
                ),
            ));
        }
        Ok((self.subset(&train), self.subset(&val)))
    }

    /// Number of images per class (`classes` entries).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            if let Some(c) = counts.get_mut(usize::from(l)) {
                *c += 1;
            }
        }
        counts
    }

    /// Class names: the source's own (`names`) when it has them; otherwise [`class_names`] of this set's name,
    /// extended with numerals when there are more than ten classes (EMNIST), truncated when fewer.
    pub fn class_names(&self) -> Vec<String> {
        if self.names.len() == self.classes {
            return self.names.clone();
        }
        let mut names = class_names(&self.name);
        names.extend((names.len()..self.classes).map(|c| c.to_string()));
        names.truncate(self.classes);
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, classes: usize) -> Dataset {
        let labels: Vec<u8> = (0..n).map(|i| (i % classes) as u8).collect();
        let images: Vec<u8> = (0..n * 4).map(|i| (i / 4) as u8).collect();
        Dataset::new(images, labels, 2, 2, classes, "toy").unwrap()
    }

    #[test]
    fn new_rejects_label_at_class_count_and_wrong_pixel_count() {
        assert!(matches!(
            Dataset::new(vec![0; 8], vec![0, 3], 2, 2, 3, "t"),
            Err(Error::Data { .. })
        ));
        assert!(matches!(
            Dataset::new(vec![0; 7], vec![0, 1], 2, 2, 3, "t"),
            Err(Error::Data { .. })
        ));
    }

    #[test]
    fn subset_copies_images_and_labels_in_the_given_order() {
        let d = toy(5, 3);
        let s = d.subset(&[4, 0, 4]);
        assert_eq!(s.n, 3);
        assert_eq!(s.labels, vec![1, 0, 1]);
        assert_eq!(s.image(0), &[4, 4, 4, 4]);
        assert_eq!(s.image(1), &[0, 0, 0, 0]);
    }

    #[test]
    fn fitted_image_centres_pads_crops_and_repeats_channels() {
        let d = Dataset::new(vec![1, 2, 3, 4], vec![0], 2, 2, 1, "t").unwrap();
        let mut out = vec![9];
        d.fitted_image(0, [2, 4, 3], &mut out);
        #[rustfmt::skip]
        let plane = [
            0, 0, 0,
            1, 2, 0,
            3, 4, 0,
            0, 0, 0,
        ];
        assert_eq!(out[0], 9, "appends");
        assert_eq!(&out[1..13], &plane);
        assert_eq!(&out[13..], &plane);
        let mut crop = Vec::new();
        d.fitted_image(0, [1, 1, 2], &mut crop);
        assert_eq!(crop, vec![1, 2]);
    }

    #[test]
    fn validation_split_is_stratified_disjoint_and_seeded() {
        let d = toy(100, 4);
        let (t, v) = d.split_validation(0.2, 9).unwrap();
        assert_eq!(v.class_counts(), vec![5, 5, 5, 5]);
        assert_eq!(t.class_counts(), vec![20, 20, 20, 20]);
        // Image i has pixel value i, so pixels identify the source index.
        let mut seen: Vec<u8> = t
            .images
            .iter()
            .step_by(4)
            .chain(v.images.iter().step_by(4))
            .copied()
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<u8>>());
        assert_eq!(d.split_validation(0.2, 9).unwrap().1, v);
        assert_ne!(d.split_validation(0.2, 10).unwrap().1, v);
    }

    #[test]
    fn validation_split_rejects_fractions_outside_the_open_interval() {
        let d = toy(10, 2);
        for f in [0.0, 1.0, -0.1, f32::NAN, 0.01] {
            assert!(
                matches!(d.split_validation(f, 1), Err(Error::InvalidOption { .. })),
                "{f}"
            );
        }
    }

    #[test]
    fn class_names_follow_the_dataset_name() {
        assert_eq!(class_names("builtin")[9], "Ankle boot");
        assert_eq!(class_names("fashion-mnist")[0], "T-shirt/top");
        assert_eq!(class_names("/data/mnist")[7], "7");
        let mut d = toy(4, 2);
        d.classes = 12;
        assert_eq!(d.class_names().len(), 12);
        assert_eq!(d.class_names()[11], "11");
    }
}
