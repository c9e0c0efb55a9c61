//! Per-channel input normalisation, stored with a model so every consumer applies the same preprocessing.
//!
//! A pixel `p` (u8) of channel `c` means `x = (p / 255 - mean[c]) / std[c]` (f32, in that order: divide, subtract,
//! divide). A float model reads `x`; a quantized model reads the code `quantize(x, input.qparams, 0, 255)`, so the
//! integer engine stays integer-only and a deployed application turns pixels into codes with
//! [`Normalization::codes`], one table lookup per pixel. Without normalisation the code is the pixel itself.
use crate::qparams::{self, QParams};
use crate::QuantError;
use serde::{Deserialize, Serialize};

/// Most channels a normalisation may name (one mean and std each).
pub const MAX_NORM_CHANNELS: usize = 64;

/// Per-channel mean and standard deviation, applied after scaling pixels to [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Mean per channel (or one value for every channel).
    pub mean: Vec<f32>,
    /// Standard deviation per channel (or one value for every channel), each finite and positive.
    pub std: Vec<f32>,
}

fn invalid(reason: String) -> QuantError {
    QuantError::InvalidQParams {
        tensor: "input normalisation".into(),
        reason,
    }
}

impl Normalization {
    /// Validated: 1 to [`MAX_NORM_CHANNELS`] values each, the same number of means and stds, all finite, stds
    /// positive.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Result<Self, QuantError> {
        let n = Self { mean, std };
        n.check()?;
        Ok(n)
    }

    /// The checks of [`Normalization::new`], for values read from a file.
    pub fn check(&self) -> Result<(), QuantError> {
        let (m, s) = (self.mean.len(), self.std.len());
        if m == 0 || m > MAX_NORM_CHANNELS || m != s {
            return Err(invalid(format!(
                "{m} means and {s} stds: need the same number, 1 to {MAX_NORM_CHANNELS}"
            )));
        }
        if let Some(v) = self.mean.iter().find(|v| !v.is_finite()) {
            return Err(invalid(format!("mean {v} is not finite")));
        }
        if let Some(v) = self.std.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(invalid(format!("std {v} is not finite and positive")));
        }
        Ok(())
    }

    /// Checks that this normalisation fits an input of `channels` channels: one value, or one per channel.
    pub fn check_channels(&self, channels: usize) -> Result<(), QuantError> {
        self.check()?;
        if self.mean.len() != 1 && self.mean.len() != channels {
            return Err(invalid(format!(
                "{} values for an input of {channels} channels: give 1 or {channels}",
                self.mean.len()
            )));
        }
        Ok(())
    }

    /// Mean and std of channel `c` (the single value when one is given).
    fn stats(&self, c: usize) -> (f32, f32) {
        let i = if self.mean.len() == 1 { 0 } else { c };
        (
            self.mean.get(i).copied().unwrap_or(0.0),
            self.std.get(i).copied().unwrap_or(1.0),
        )
    }

    /// The float value of pixel `p` in channel `c`: `(p / 255 - mean[c]) / std[c]`.
    pub fn value(&self, c: usize, p: u8) -> f32 {
        let (m, s) = self.stats(c);
        (f32::from(p) / 255.0 - m) / s
    }

    /// The smallest and largest value any pixel of `channels` channels can take.
    pub fn range(&self, channels: usize) -> (f32, f32) {
        (0..channels.max(1))
            .flat_map(|c| [self.value(c, 0), self.value(c, 255)])
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    }

    /// Writes the input codes of `pixels` (NCHW samples of `channels` planes of `plane` pixels) to `out`:
    /// `quantize(value(c, p), qp, 0, 255)`, the one quantize function of [`qparams`].
    pub fn codes(
        &self,
        qp: QParams,
        channels: usize,
        plane: usize,
        pixels: &[u8],
        out: &mut Vec<u8>,
    ) {
        let tables: Vec<[u8; 256]> = (0..channels)
            .map(|c| {
                let mut t = [0u8; 256];
                for (p, code) in t.iter_mut().enumerate() {
                    *code = qparams::quantize(self.value(c, p as u8), qp, 0, 255) as u8;
                }
                t
            })
            .collect();
        out.clear();
        out.reserve(pixels.len());
        let plane = plane.max(1);
        for (i, chunk) in pixels.chunks(plane).enumerate() {
            let t = &tables[i % channels.max(1)];
            out.extend(chunk.iter().map(|&p| t[usize::from(p)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_mismatched_lengths_zero_std_and_non_finite_values() {
        assert!(Normalization::new(vec![0.5], vec![0.2]).is_ok());
        for (m, s) in [
            (vec![], vec![]),
            (vec![0.5, 0.5], vec![0.2]),
            (vec![0.5], vec![0.0]),
            (vec![0.5], vec![-1.0]),
            (vec![f32::NAN], vec![1.0]),
            (vec![0.5], vec![f32::INFINITY]),
        ] {
            assert!(Normalization::new(m, s).is_err());
        }
        let n = Normalization::new(vec![0.1, 0.2, 0.3], vec![1.0; 3]).unwrap();
        assert!(n.check_channels(3).is_ok());
        assert!(n.check_channels(1).is_err());
    }

    #[test]
    fn codes_quantize_each_channel_with_its_own_statistics() {
        let n = Normalization::new(vec![0.0, 1.0], vec![1.0, 0.5]).unwrap();
        assert_eq!(n.range(2), (-2.0, 1.0));
        let qp = QParams::new(3.0 / 255.0, 170).unwrap();
        let mut out = Vec::new();
        // Two planes of two pixels: channel 0 then channel 1.
        n.codes(qp, 2, 2, &[0, 255, 0, 255], &mut out);
        assert_eq!(out, vec![170, 255, 0, 170]);
    }
}
