//! The preprocessing an imported model expects: pixels scaled to `[0, input_scale]`, then per-channel
//! `(x - mean[c]) / std[c]`, given on the command line or in the ONNX model's `metadata_props`.
//!
//! Metadata keys (values are decimal numbers; `mean` and `std` comma-separated, one value or one per channel):
//!
//! | key                 | meaning                                           | default |
//! |---------------------|---------------------------------------------------|---------|
//! | `lowbit.input_scale`| pixels are scaled to `[0, S]` (`1`: `[0, 1]`, `255`: raw pixel values) | `1` |
//! | `lowbit.mean`       | per-channel mean, in the scaled units             | `0`     |
//! | `lowbit.std`        | per-channel standard deviation, in the scaled units | `1`   |
//!
//! The three fold into the stored [`Normalization`] (which applies `(p / 255 - mean') / std'`) as
//! `mean' = mean / S` and `std' = std / S`, so models, `.lbq` files and the engine need no new field and older
//! files read unchanged; `inspect` shows the folded values.
use super::proto::StringStringEntryProto;
use super::OnnxError;
use lowbit_runtime::preprocess::Normalization;

/// Metadata key of the input scale.
pub const META_INPUT_SCALE: &str = "lowbit.input_scale";
/// Metadata key of the per-channel means.
pub const META_MEAN: &str = "lowbit.mean";
/// Metadata key of the per-channel standard deviations.
pub const META_STD: &str = "lowbit.std";

/// Input preprocessing, each part optional so that command-line flags can override a model's metadata part by
/// part ([`Preprocessing::or`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Preprocessing {
    /// Pixels are scaled to `[0, input_scale]` before normalisation (default 1).
    pub input_scale: Option<f32>,
    /// Per-channel means in the scaled units (one value, or one per channel).
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviations in the scaled units.
    pub std: Option<Vec<f32>>,
}

impl Preprocessing {
    /// The parts of `self` that are set, the rest from `fallback` (flags first, metadata second).
    pub fn or(self, fallback: Preprocessing) -> Preprocessing {
        Preprocessing {
            input_scale: self.input_scale.or(fallback.input_scale),
            mean: self.mean.or(fallback.mean),
            std: self.std.or(fallback.std),
        }
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self == &Preprocessing::default()
    }

    /// Reads the `lowbit.*` keys of an ONNX model's `metadata_props` (other keys are ignored).
    pub fn from_metadata(props: &[StringStringEntryProto]) -> Result<Self, OnnxError> {
        let mut p = Preprocessing::default();
        for e in props {
            let (key, value) = (e.key(), e.value());
            let bad = |reason: String| OnnxError::Metadata {
                key: key.to_string(),
                reason,
            };
            let numbers = || -> Result<Vec<f32>, OnnxError> {
                value
                    .split(',')
                    .map(|s| {
                        s.trim().parse::<f32>().map_err(|_| {
                            bad(format!(
                                "{value:?} is not a comma-separated list of numbers"
                            ))
                        })
                    })
                    .collect()
            };
            match key {
                META_INPUT_SCALE => match numbers()?[..] {
                    [s] => p.input_scale = Some(s),
                    _ => return Err(bad(format!("{value:?} is not one number"))),
                },
                META_MEAN => p.mean = Some(numbers()?),
                META_STD => p.std = Some(numbers()?),
                _ => {}
            }
        }
        Ok(p)
    }

    /// The normalisation to store in the model (`None` when the input is pixels / 255 unchanged), validated:
    /// a finite positive scale, means and stds given together (or neither) and valid per
    /// [`Normalization::new`].
    pub fn normalization(&self) -> Result<Option<Normalization>, String> {
        let scale = self.input_scale.unwrap_or(1.0);
        if !(scale.is_finite() && scale > 0.0) {
            return Err(format!("input scale {scale} is not finite and positive"));
        }
        let (mean, std) = match (&self.mean, &self.std) {
            (None, None) if scale == 1.0 => return Ok(None),
            (None, None) => (vec![0.0], vec![1.0]),
            (Some(m), Some(s)) => (m.clone(), s.clone()),
            _ => return Err("mean and std must be given together".into()),
        };
        // Validate the values as given, so a bad std is reported in the user's units.
        Normalization::new(mean.clone(), std.clone()).map_err(|e| e.to_string())?;
        Normalization::new(
            mean.iter().map(|m| m / scale).collect(),
            std.iter().map(|s| s / scale).collect(),
        )
        .map(Some)
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(k: &str, v: &str) -> StringStringEntryProto {
        StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v.into()),
        }
    }

    #[test]
    fn metadata_keys_are_read_and_other_keys_ignored() {
        let p = Preprocessing::from_metadata(&[
            entry(META_INPUT_SCALE, "255"),
            entry(META_MEAN, "123.5, 116, 103.5"),
            entry(META_STD, "58,57,57.5"),
            entry("producer_note", "whatever"),
        ])
        .unwrap();
        assert_eq!(p.input_scale, Some(255.0));
        assert_eq!(p.mean, Some(vec![123.5, 116.0, 103.5]));
        assert_eq!(p.std, Some(vec![58.0, 57.0, 57.5]));
    }

    #[test]
    fn a_metadata_value_that_is_not_numbers_names_its_key() {
        let e = Preprocessing::from_metadata(&[entry(META_MEAN, "0.5;0.5")]).unwrap_err();
        assert!(
            matches!(e, OnnxError::Metadata { ref key, .. } if key == META_MEAN),
            "{e}"
        );
        let e = Preprocessing::from_metadata(&[entry(META_INPUT_SCALE, "1,2")]).unwrap_err();
        assert!(
            matches!(e, OnnxError::Metadata { ref key, .. } if key == META_INPUT_SCALE),
            "{e}"
        );
    }

    #[test]
    fn flags_override_metadata_part_by_part() {
        let flags = Preprocessing {
            input_scale: Some(255.0),
            ..Default::default()
        };
        let meta = Preprocessing {
            input_scale: Some(1.0),
            mean: Some(vec![0.5]),
            std: Some(vec![0.25]),
        };
        let p = flags.or(meta);
        assert_eq!(p.input_scale, Some(255.0));
        assert_eq!(p.mean, Some(vec![0.5]));
    }

    #[test]
    fn the_input_scale_folds_into_mean_and_std() {
        let p = Preprocessing {
            input_scale: Some(255.0),
            mean: Some(vec![127.5]),
            std: Some(vec![127.5]),
        };
        let n = p.normalization().unwrap().unwrap();
        // (p/255*255 - 127.5) / 127.5 = 2p/255 - 1: -1 at pixel 0, 1 at pixel 255.
        assert_eq!(n.value(0, 0), -1.0);
        assert_eq!(n.value(0, 255), 1.0);
        let scale_only = Preprocessing {
            input_scale: Some(255.0),
            ..Default::default()
        };
        let n = scale_only.normalization().unwrap().unwrap();
        assert!(
            (n.value(0, 200) - 200.0).abs() < 1e-3,
            "{}",
            n.value(0, 200)
        );
        assert_eq!(Preprocessing::default().normalization(), Ok(None));
    }

    #[test]
    fn bad_preprocessing_is_refused() {
        for p in [
            Preprocessing {
                input_scale: Some(0.0),
                ..Default::default()
            },
            Preprocessing {
                input_scale: Some(f32::NAN),
                ..Default::default()
            },
            Preprocessing {
                mean: Some(vec![0.5]),
                ..Default::default()
            },
            Preprocessing {
                mean: Some(vec![0.5]),
                std: Some(vec![0.0]),
                ..Default::default()
            },
        ] {
            assert!(p.normalization().is_err(), "{p:?}");
        }
    }
}
