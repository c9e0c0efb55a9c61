//! Calibrators: how PTQ turns what it observed into a clipping range.
//!
//! Activations: a first pass over the calibration samples finds each quantization point's min and max (the
//! [`Calibrator::MinMax`] range, what PTQ always did); points with another calibrator then get a second pass
//! that fills a [`Histogram`] of [`HISTOGRAM_BINS`] bins per sign over that range, and the calibrator picks a
//! range from the histogram alone:
//!
//! - [`Calibrator::Percentile`]: the `P`-th percentile (one-sided data), or the `(100 - P) / 2` tails cut on
//!   each side (two-sided data), as ONNX Runtime's percentile calibrator;
//! - [`Calibrator::Mse`]: the range minimising the expected squared error of fake-quantization;
//! - [`Calibrator::Entropy`]: the range minimising the KL divergence between the clipped and the quantized
//!   histogram (TensorRT's entropy calibration, Migacz 2017, "8-bit Inference with TensorRT").
//!
//! Candidate ranges shrink both ends in proportion, `[alpha * lo, alpha * hi]` with `alpha = i / 2048`: each
//! candidate then ends on a bin edge on both sides, and a ReLU output (`lo = 0`) reduces to a threshold on
//! `hi`, which is the case every method here was designed for.
//!
//! Weights: [`mse_weight_clip`] searches the clipping ratio of a symmetric min-max scale (per tensor or per
//! output channel) that minimises the squared error of the weights as [`qparams::quantize`] rounds them, so
//! the error is measured with the deployed arithmetic, not estimated.
use crate::error::{Error, Result};
use lowbit_runtime::qparams::{self, QParams};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Bins per sign of an activation histogram (TensorRT's choice).
pub const HISTOGRAM_BINS: usize = 2048;

/// Clipping ratios [`mse_weight_clip`] tries: `1 - k / WEIGHT_CLIP_STEPS` for `k` in `0..WEIGHT_CLIP_CANDIDATES`
/// (1.00 down to 0.11); the optimum of a Gaussian at 2 bits (about 0.4 of its maximum over a few hundred
/// weights) lies well inside.
const WEIGHT_CLIP_STEPS: usize = 100;
const WEIGHT_CLIP_CANDIDATES: usize = 90;

/// How an activation range is chosen from the calibration samples (`--calibration`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Calibrator {
    /// The observed minimum and maximum (nothing clipped).
    #[default]
    MinMax,
    /// Clip at a percentile `P` in `(0, 100]` (`percentile:99.99`).
    Percentile(f64),
    /// Minimise the expected squared quantization error.
    Mse,
    /// Minimise the KL divergence between the clipped and quantized distributions (TensorRT).
    Entropy,
}

impl Calibrator {
    /// Whether this calibrator needs a histogram pass (everything but min-max).
    pub fn needs_histogram(&self) -> bool {
        *self != Calibrator::MinMax
    }

    /// The range `(lo, hi)` this calibrator picks for a `bits`-bit unsigned activation from `h`.
    pub fn range(&self, h: &Histogram, bits: u32) -> (f32, f32) {
        let alpha = match *self {
            Calibrator::MinMax => return (-h.neg_max, h.pos_max),
            Calibrator::Percentile(p) => return h.percentile_range(p),
            Calibrator::Mse => h.mse_alpha(bits),
            Calibrator::Entropy => h.entropy_alpha(bits),
        };
        (
            -(alpha * h.neg_max as f64) as f32,
            (alpha * h.pos_max as f64) as f32,
        )
    }
}

impl fmt::Display for Calibrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Calibrator::MinMax => write!(f, "minmax"),
            Calibrator::Percentile(p) => write!(f, "percentile:{p}"),
            Calibrator::Mse => write!(f, "mse"),
            Calibrator::Entropy => write!(f, "entropy"),
        }
    }
}

impl FromStr for Calibrator {
    type Err = Error;

    /// `minmax`, `percentile:P` (`0 < P <= 100`), `mse` or `entropy`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::option("--calibration", reason);
        match s.trim() {
            "minmax" => Ok(Calibrator::MinMax),
            "mse" => Ok(Calibrator::Mse),
            "entropy" => Ok(Calibrator::Entropy),
            other => {
                let Some(p) = other.strip_prefix("percentile:") else {
                    return Err(bad(format!(
                        "unknown calibrator `{other}` (use minmax, percentile:P, mse or entropy)"
                    )));
                };
                let p: f64 = p
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("`{p}` in `{other}` is not a number")))?;
                if !(p.is_finite() && p > 0.0 && p <= 100.0) {
                    return Err(bad(format!("the percentile must be in (0, 100], got {p}")));
                }
                Ok(Calibrator::Percentile(p))
            }
        }
    }
}

impl TryFrom<String> for Calibrator {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Calibrator> for String {
    fn from(c: Calibrator) -> String {
        c.to_string()
    }
}

/// How PTQ chooses a min-max weight scale (`--weight-calibration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightCalibration {
    /// `scale = max|w| / qmax`: nothing clipped.
    #[default]
    MinMax,
    /// `scale = c max|w| / qmax` with the ratio `c` that minimises the squared error ([`mse_weight_clip`]).
    Mse,
}

impl fmt::Display for WeightCalibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightCalibration::MinMax => "minmax",
            WeightCalibration::Mse => "mse",
        })
    }
}

impl FromStr for WeightCalibration {
    type Err = Error;

    /// `minmax` or `mse`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "minmax" => Ok(WeightCalibration::MinMax),
            "mse" => Ok(WeightCalibration::Mse),
            other => Err(Error::option(
                "--weight-calibration",
                format!("unknown weight calibration `{other}` (use minmax or mse)"),
            )),
        }
    }
}

/// Counts of one activation's values over its observed range: [`HISTOGRAM_BINS`] bins over `(0, hi]` and as
/// many over the magnitudes `(0, -lo]`, plus the exact zeros (a ReLU's many zeros are exact in every range).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pos_max: f32,
    neg_max: f32,
    pos: Vec<u64>,
    neg: Vec<u64>,
    zeros: u64,
}

impl Histogram {
    /// An empty histogram over `[lo, hi]`, widened to contain 0 (as the quantization range will be).
    pub fn new(lo: f32, hi: f32) -> Self {
        let finite = |v: f32| if v.is_finite() { v } else { 0.0 };
        Self {
            pos_max: finite(hi).max(0.0),
            neg_max: (-finite(lo)).max(0.0),
            pos: vec![0; HISTOGRAM_BINS],
            neg: vec![0; HISTOGRAM_BINS],
            zeros: 0,
        }
    }

    /// Counts the finite values of `x`; values beyond the range count in the outermost bin.
    pub fn add(&mut self, x: &[f32]) {
        let n = HISTOGRAM_BINS as f32;
        let last = HISTOGRAM_BINS - 1;
        for &v in x {
            if v == 0.0 {
                self.zeros += 1;
            } else if v > 0.0 && v.is_finite() {
                let b = if self.pos_max > 0.0 {
                    v / self.pos_max * n
                } else {
                    n
                };
                self.pos[(b as usize).min(last)] += 1;
            } else if v < 0.0 && v.is_finite() {
                let b = if self.neg_max > 0.0 {
                    -v / self.neg_max * n
                } else {
                    n
                };
                self.neg[(b as usize).min(last)] += 1;
            }
        }
    }

    /// Values counted.
    pub fn total(&self) -> u64 {
        self.zeros + self.pos.iter().sum::<u64>() + self.neg.iter().sum::<u64>()
    }

    /// The value below which a fraction `q` of the counts lie, interpolating linearly inside a bin.
    fn quantile(&self, q: f64) -> f64 {
        let total = self.total() as f64;
        let target = q.clamp(0.0, 1.0) * total;
        let (wn, wp) = (
            self.neg_max as f64 / HISTOGRAM_BINS as f64,
            self.pos_max as f64 / HISTOGRAM_BINS as f64,
        );
        let mut seen = 0.0;
        // From the most negative bin up to the most positive one.
        for (k, &c) in self.neg.iter().enumerate().rev() {
            let c = c as f64;
            if c > 0.0 && seen + c >= target {
                let f = (target - seen) / c;
                return -((k + 1) as f64 - f) * wn;
            }
            seen += c;
        }
        seen += self.zeros as f64;
        if seen >= target {
            return 0.0;
        }
        for (k, &c) in self.pos.iter().enumerate() {
            let c = c as f64;
            if c > 0.0 && seen + c >= target {
                let f = (target - seen) / c;
                return (k as f64 + f) * wp;
            }
            seen += c;
        }
        self.pos_max as f64
    }

    /// Percentile `p` range: one-sided data keep the `p`-th percentile on their side, two-sided data cut
    /// `(100 - p) / 2` percent from each tail. At least one bin is kept on each occupied side.
    fn percentile_range(&self, p: f64) -> (f32, f32) {
        let has_neg = self.neg.iter().any(|&c| c > 0);
        let has_pos = self.pos.iter().any(|&c| c > 0);
        let cut = (100.0 - p) / 100.0;
        let (lo, hi) = match (has_neg, has_pos) {
            (false, _) => (0.0, self.quantile(1.0 - cut)),
            (true, false) => (self.quantile(cut), 0.0),
            (true, true) => (self.quantile(cut / 2.0), self.quantile(1.0 - cut / 2.0)),
        };
        let min_bin = |m: f32| f64::from(m) / HISTOGRAM_BINS as f64;
        let lo = if has_neg {
            lo.min(-min_bin(self.neg_max))
        } else {
            0.0
        };
        let hi = if has_pos {
            hi.max(min_bin(self.pos_max))
        } else {
            0.0
        };
        (lo as f32, hi as f32)
    }

    /// The shrink factor `i / 2048` minimising the expected squared error of `bits`-bit fake-quantization.
    ///
    /// For the candidate keeping `i` bins per side, with step `d = alpha (hi - lo) / (2^bits - 1)`: a non-zero
    /// value inside the range costs the rounding error `d^2 / 12` (uniform within a step), a zero costs
    /// nothing, and a value in a clipped bin costs `(c - t)^2 + w^2 / 12` with `c` the bin centre, `t` the
    /// range end and `w` the bin width (uniform within the bin). Suffix sums make each candidate O(1).
    fn mse_alpha(&self, bits: u32) -> f64 {
        let n = HISTOGRAM_BINS;
        let qmax = f64::from((1u32 << bits.clamp(1, 8)) - 1);
        let span = f64::from(self.pos_max) + f64::from(self.neg_max);
        // Suffix sums per side: counts, sum of centres, sum of squared centres (bins k..n).
        let suffix = |bins: &[u64], max: f32| {
            let w = f64::from(max) / n as f64;
            let mut s = vec![[0f64; 3]; n + 1];
            for k in (0..n).rev() {
                let c = bins[k] as f64;
                let x = (k as f64 + 0.5) * w;
                s[k] = [
                    s[k + 1][0] + c,
                    s[k + 1][1] + c * x,
                    s[k + 1][2] + c * x * x,
                ];
            }
            (s, w)
        };
        let (sp, wp) = suffix(&self.pos, self.pos_max);
        let (sn, wn) = suffix(&self.neg, self.neg_max);
        let nonzero = sp[0][0] + sn[0][0];
        let mut best = (f64::INFINITY, 1.0);
        for i in (1..=n).rev() {
            let alpha = i as f64 / n as f64;
            let d = alpha * span / qmax;
            let clipped_err = |s: &[[f64; 3]], w: f64| {
                let t = i as f64 * w;
                let [c, sx, sxx] = s[i];
                sxx - 2.0 * t * sx + t * t * c + c * w * w / 12.0
            };
            let clipped = sp[i][0] + sn[i][0];
            let err =
                (nonzero - clipped) * d * d / 12.0 + clipped_err(&sp, wp) + clipped_err(&sn, wn);
            if err < best.0 {
                best = (err, alpha);
            }
        }
        best.1
    }

    /// The shrink factor `i / 2048` minimising TensorRT's KL divergence for `bits` bits.
    ///
    /// For the candidate keeping `i` bins per side, each side's reference distribution `P` is its first `i`
    /// bins with the clipped outliers added to the last kept bin. The candidate `Q` merges the same `i` bins
    /// *without* the outliers into one bin per quantization step on that side
    /// (`round((2^bits - 1) side / (hi - lo))`, at least 1), then spreads each merged count evenly back over
    /// the bins where `P` is non-zero; `P` and `Q` are each normalised, so the clipped mass shows as a
    /// divergence. Where `Q` is zero but `P` is not (outliers beyond an empty last step), `Q` is taken as
    /// [`ENTROPY_EPS`], as MXNet's implementation smooths. Exact zeros are one level of their own in `P` and
    /// `Q` alike, as every candidate represents 0 exactly: counted in the first bin, a ReLU's zeros would
    /// dominate the first merged bin. Candidates start at the larger side's step count (fewer bins than steps
    /// lose nothing to rounding); the divergence is over both sides together; ties keep the wider range.
    fn entropy_alpha(&self, bits: u32) -> f64 {
        let n = HISTOGRAM_BINS;
        let qmax = f64::from((1u32 << bits.clamp(1, 8)) - 1);
        let span = f64::from(self.pos_max) + f64::from(self.neg_max);
        let total = self.total() as f64;
        if span <= 0.0 || total <= 0.0 {
            return 1.0;
        }
        let levels = |max: f32| ((qmax * f64::from(max) / span).round() as usize).clamp(1, n);
        let pos: Vec<f64> = self.pos.iter().map(|&c| c as f64).collect();
        let neg: Vec<f64> = self.neg.iter().map(|&c| c as f64).collect();
        // An empty side (a ReLU output has no negatives) adds nothing to the divergence.
        let sides: Vec<(Vec<f64>, usize)> =
            [(pos, levels(self.pos_max)), (neg, levels(self.neg_max))]
                .into_iter()
                .filter(|(bins, _)| bins.iter().any(|&c| c > 0.0))
                .collect();
        let start = sides.iter().map(|s| s.1).max().unwrap_or(1);
        let mut p = Vec::with_capacity(n);
        let mut best = (f64::INFINITY, 1.0);
        for i in (start..=n).rev() {
            let outliers: Vec<f64> = sides.iter().map(|(b, _)| b[i..].iter().sum()).collect();
            let kept = total - outliers.iter().sum::<f64>();
            if kept <= 0.0 {
                continue;
            }
            let mut kl = 0.0;
            for ((bins, nq), &out) in sides.iter().zip(&outliers) {
                p.clear();
                p.extend_from_slice(&bins[..i]);
                p[i - 1] += out;
                kl += kl_to_merged(&p, &bins[..i], *nq, total, kept);
            }
            if kl < best.0 {
                best = (kl, i as f64 / n as f64);
            }
        }
        best.1
    }
}

/// Probability given to a bin where the quantized distribution has none but the reference has some (MXNet's
/// smoothing constant in its TensorRT-style calibration).
pub const ENTROPY_EPS: f64 = 1e-4;

/// `sum P ln(P / Q)` over one side: `P = p / p_total`, and `Q` is `kept` (the same bins without the outliers)
/// merged into `nq` groups, spread back evenly over the bins where `p` is non-zero, divided by `q_total`
/// ([`ENTROPY_EPS`] where that is zero).
fn kl_to_merged(p: &[f64], kept: &[f64], nq: usize, p_total: f64, q_total: f64) -> f64 {
    let i = p.len();
    let nq = nq.min(i).max(1);
    let mut kl = 0.0;
    for g in 0..nq {
        let (start, end) = (g * i / nq, (g + 1) * i / nq);
        let group = &p[start..end];
        let nonzero = group.iter().filter(|&&c| c > 0.0).count();
        if nonzero == 0 {
            continue;
        }
        let mass: f64 = kept[start..end].iter().sum();
        let q = if mass > 0.0 {
            mass / nonzero as f64 / q_total
        } else {
            ENTROPY_EPS
        };
        kl += group
            .iter()
            .filter(|&&c| c > 0.0)
            .map(|&c| {
                let pp = c / p_total;
                pp * (pp / q).ln()
            })
            .sum::<f64>();
    }
    kl
}

/// Per group (the whole tensor, or each of `rows` output channels when `per_channel`), the clipping ratio `c`
/// in `(0, 1]` whose symmetric `bits`-bit scale `c max|w| / (2^(bits-1) - 1)` minimises `sum (w - w_q)^2`,
/// with `w_q` rounded and clamped by [`qparams::quantize`]. Ties keep the larger ratio; an all-zero group
/// keeps 1. `w` is `[rows, cols]` row-major.
pub fn mse_weight_clip(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: u32,
    per_channel: bool,
) -> Vec<f32> {
    let qmax = (1i32 << (bits.clamp(2, 8) - 1)) - 1;
    let groups: Vec<&[f32]> = if per_channel && rows > 0 && cols > 0 {
        w.chunks(cols).take(rows).collect()
    } else {
        vec![w]
    };
    groups
        .into_iter()
        .map(|g| {
            let max = g.iter().fold(0f32, |m, x| m.max(x.abs()));
            let mut best = (f64::INFINITY, 1.0f32);
            for k in 0..WEIGHT_CLIP_CANDIDATES {
                let c = 1.0 - k as f32 / WEIGHT_CLIP_STEPS as f32;
                let scale = max * c / qmax as f32;
                if !scale.is_normal() {
                    continue;
                }
                let qp = QParams {
                    scale,
                    zero_point: 0,
                };
                let err: f64 = g
                    .iter()
                    .map(|&x| {
                        let d = x - qparams::dequantize(qparams::quantize(x, qp, -qmax, qmax), qp);
                        f64::from(d) * f64::from(d)
                    })
                    .sum();
                if err < best.0 {
                    best = (err, c);
                }
            }
            best.1
        })
        .collect()
}
