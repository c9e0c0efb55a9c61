//! Mini-batches for training and evaluation: pixels scaled to [0, 1] as f32 (`x / 255`), then normalised per
//! channel when the dataset says so, NCHW.

use super::dataset::Dataset;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};
use lowbit_runtime::preprocess::Normalization;

/// `PIXEL_SCALE[v] == v as f32 / 255.0` exactly; a table lookup is faster than a division and, unlike multiplying
/// by `1.0 / 255.0`, rounds the same as the division.
static PIXEL_SCALE: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as f32 / 255.0;
        i += 1;
    }
    t
};

/// Scales raw pixels to [0, 1] (`x / 255`), appending to `out`.
pub fn pixels_to_f32(pixels: &[u8], out: &mut Vec<f32>) {
    out.extend(pixels.iter().map(|&p| PIXEL_SCALE[usize::from(p)]));
}

/// The model input of raw pixels (whole CHW images of `shape`), appended to `out`: `p / 255`, or
/// [`Normalization::value`] of each pixel's channel when `norm` is given. The one pixel-to-input function of the
/// float path (training, evaluation, prediction), so they all agree with the quantized model's input codes.
pub fn pixels_to_input(
    pixels: &[u8],
    shape: [usize; 3],
    norm: Option<&Normalization>,
    out: &mut Vec<f32>,
) {
    let Some(n) = norm else {
        return pixels_to_f32(pixels, out);
    };
    let [channels, rows, cols] = shape;
    let plane = (rows * cols).max(1);
    for (i, chunk) in pixels.chunks(plane).enumerate() {
        let c = i % channels.max(1);
        out.extend(chunk.iter().map(|&p| n.value(c, p)));
    }
}

/// Cuts a dataset into mini-batches: a seeded shuffled order per epoch, or the stored order for evaluation.
/// The last partial batch is kept.
#[derive(Debug, Clone)]
pub struct Batcher<'a> {
    data: &'a Dataset,
    batch_size: usize,
    seed: u64,
}

impl<'a> Batcher<'a> {
    /// A batcher over `data`; `batch_size` must be at least 1.
    pub fn new(data: &'a Dataset, batch_size: usize, seed: u64) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::option("batch size", "must be at least 1"));
        }
        Ok(Self {
            data,
            batch_size,
            seed,
        })
    }

    /// The dataset.
    pub fn data(&self) -> &'a Dataset {
        self.data
    }

    /// Images per full batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch, counting the last partial one.
    pub fn num_batches(&self) -> usize {
        self.data.len().div_ceil(self.batch_size)
    }

    /// The permutation of `0..len` used in `epoch`: the same for the same seed and epoch, different across epochs.
    pub fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        let stream = (epoch as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Rng::new(self.seed ^ stream).shuffle(&mut order);
        order
    }

    /// Shuffled batches of `epoch` as `([B, channels, rows, cols] tensor, labels)`; allocates per batch, see
    /// [`Batcher::fill_batch`] for the allocation-free form.
    pub fn epoch(&self, epoch: usize) -> Batches<'a> {
        Batches {
            batcher: self.clone(),
            order: self.epoch_order(epoch),
            next: 0,
        }
    }

    /// Batches in stored order (for evaluation).
    pub fn in_order(&self) -> Batches<'a> {
        Batches {
            batcher: self.clone(),
            order: (0..self.data.len()).collect(),
            next: 0,
        }
    }

    /// Overwrites `x` with the scaled pixels of the images at `idx` (`idx.len()` whole images, NCHW) and `y` with their labels. Reuses the buffers' capacity, so a loop that keeps them allocates only
    /// on its first batch. Panics on an index `>= len()`.
    pub fn fill_batch(&self, idx: &[usize], x: &mut Vec<f32>, y: &mut Vec<u8>) {
        x.clear();
        y.clear();
        x.reserve(idx.len() * self.data.image_len());
        y.reserve(idx.len());
        let norm = self.data.normalization.as_ref();
        for &i in idx {
            pixels_to_input(self.data.image(i), self.data.shape(), norm, x);
            y.push(self.data.label(i));
        }
    }

    /// The images at `idx` as a `[B, channels, rows, cols]` tensor plus labels.
    pub fn batch(&self, idx: &[usize]) -> (Tensor, Vec<u8>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        self.fill_batch(idx, &mut x, &mut y);
        let shape = vec![
            idx.len(),
            self.data.channels,
            self.data.rows,
            self.data.cols,
        ];
        (Tensor::new(x, shape), y)
    }
}

/// Iterator over one pass of mini-batches, from [`Batcher::epoch`] or [`Batcher::in_order`].
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    batcher: Batcher<'a>,
    order: Vec<usize>,
    next: usize,
}

impl Batches<'_> {
    /// The image indices of the whole pass, in batch order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

impl Iterator for Batches<'_> {
    type Item = (Tensor, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.next;
        let end = (start + self.batcher.batch_size).min(self.order.len());
        let idx = self.order.get(start..end).filter(|s| !s.is_empty())?;
        self.next = end;
        Some(self.batcher.batch(idx))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.order.len() - self.next).div_ceil(self.batcher.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        // Image i is filled with the value i, so a batch's pixels identify its indices.
        let images: Vec<u8> = (0..n * 6).map(|k| (k / 6) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
        Dataset::new(images, labels, 2, 3, 3, "toy").unwrap()
    }

    #[test]
    fn pixel_scaling_equals_division_by_255() {
        let mut out = Vec::new();
        pixels_to_f32(&(0..=255).collect::<Vec<u8>>(), &mut out);
        for (v, &x) in out.iter().enumerate() {
            assert_eq!(x, v as f32 / 255.0, "pixel {v}");
        }
        assert_eq!((out[0], out[255]), (0.0, 1.0));
    }

    #[test]
    fn every_index_appears_once_per_epoch_and_last_batch_is_partial() {
        let d = toy(23);
        let b = Batcher::new(&d, 5, 42).unwrap();
        assert_eq!(b.num_batches(), 5);
        for epoch in 0..3 {
            let batches: Vec<_> = b.epoch(epoch).collect();
            let sizes: Vec<usize> = batches.iter().map(|(x, _)| x.shape[0]).collect();
            assert_eq!(sizes, vec![5, 5, 5, 5, 3], "epoch {epoch}");
            let mut seen: Vec<usize> = batches
                .iter()
                .flat_map(|(x, y)| {
                    assert_eq!(&x.shape[1..], &[1, 2, 3]);
                    x.data.chunks(6).zip(y).map(|(img, &l)| {
                        let i = (img[0] * 255.0).round() as usize;
                        assert_eq!(l as usize, i % 3, "label travels with its image");
                        i
                    })
                })
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..23).collect::<Vec<_>>(), "epoch {epoch}");
        }
    }

    #[test]
    fn order_is_deterministic_for_a_seed_and_changes_with_epoch_and_seed() {
        let d = toy(50);
        let a = Batcher::new(&d, 8, 1).unwrap();
        let b = Batcher::new(&d, 8, 1).unwrap();
        assert_eq!(a.epoch_order(3), b.epoch_order(3));
        assert_ne!(a.epoch_order(3), a.epoch_order(4));
        assert_ne!(
            a.epoch_order(3),
            Batcher::new(&d, 8, 2).unwrap().epoch_order(3)
        );
        let xa: Vec<_> = a.epoch(2).collect();
        let xb: Vec<_> = b.epoch(2).collect();
        assert_eq!(xa, xb);
    }

    #[test]
    fn fill_batch_reuses_buffers_and_in_order_keeps_stored_order() {
        let d = toy(10);
        let b = Batcher::new(&d, 4, 0).unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        b.fill_batch(&[0, 1, 2, 3], &mut x, &mut y);
        let cap = x.capacity();
        let ptr = x.as_ptr();
        b.fill_batch(&[9, 8], &mut x, &mut y);
        assert_eq!((x.capacity(), x.as_ptr()), (cap, ptr));
        assert_eq!(x.len(), 12);
        assert_eq!(y, vec![0, 2]);
        assert_eq!(x[0], 9.0 / 255.0);
        let first: Vec<u8> = b.in_order().flat_map(|(_, y)| y).collect();
        assert_eq!(first, d.labels);
        assert!(Batcher::new(&d, 0, 0).is_err());
    }
}
