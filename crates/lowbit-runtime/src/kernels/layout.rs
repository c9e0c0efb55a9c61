//! Data movement on NCHW `u8` codes: zero padding (spatial and channel) and strided slicing. No arithmetic, so no
//! SIMD tier: rows are copied with `copy_from_slice` (a `memcpy`) and the scalar definitions in [`reference`](mod@reference)
//! restate the formulas element by element for the tests.
//!
//! - Pad: `out[n][c][y][x] = x[n][c - front][y - top][x - left]` where those indices are inside the input, else
//!   `pad_code` (the input zero point, the code of real 0).
//! - Slice: `out[n][i][j][k] = x[n][c.start + i * c.step][h.start + j * h.step][w.start + k * w.step]` with
//!   `i < ceil((c.end - c.start) / c.step)` and likewise for `j`, `k` (end exclusive).
use super::check_len;
use crate::error::QuantError;

/// One sample's NCHW shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleShape {
    /// Channels.
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
}

impl SampleShape {
    /// `channels * height * width`, `None` on overflow.
    pub fn elems(&self) -> Option<usize> {
        self.channels
            .checked_mul(self.height)?
            .checked_mul(self.width)
    }
}

/// Zero padding of every sample: codes added before and after each axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Padding {
    /// Channels added in front.
    pub channels_front: usize,
    /// Channels added at the back.
    pub channels_back: usize,
    /// Rows added at the top.
    pub top: usize,
    /// Rows added at the bottom.
    pub bottom: usize,
    /// Columns added on the left.
    pub left: usize,
    /// Columns added on the right.
    pub right: usize,
}

impl Padding {
    /// The padded shape of `input`, `None` on overflow.
    pub fn output_shape(&self, input: SampleShape) -> Option<SampleShape> {
        let add = |v: usize, a: usize, b: usize| v.checked_add(a)?.checked_add(b);
        Some(SampleShape {
            channels: add(input.channels, self.channels_front, self.channels_back)?,
            height: add(input.height, self.top, self.bottom)?,
            width: add(input.width, self.left, self.right)?,
        })
    }
}

/// A strided range of one axis: indices `start, start + step, ...` below `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisSlice {
    /// First index taken.
    pub start: usize,
    /// End (exclusive), at most the axis length and greater than `start`.
    pub end: usize,
    /// Distance between taken indices, at least 1.
    pub step: usize,
}

impl AxisSlice {
    /// The whole axis of length `len`.
    pub fn full(len: usize) -> Self {
        Self {
            start: 0,
            end: len,
            step: 1,
        }
    }

    /// Indices taken: `ceil((end - start) / step)` (checked valid by [`Slicing::output_shape`]).
    pub fn len(&self) -> usize {
        self.end
            .saturating_sub(self.start)
            .div_ceil(self.step.max(1))
    }

    /// Whether the range takes no index (never true for a valid slice).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self, axis: &str, len: usize) -> Result<(), QuantError> {
        if self.step == 0 || self.start >= self.end || self.end > len {
            return Err(super::mismatch(
                "slice",
                format!(
                    "{axis} range {}..{} step {} must satisfy start < end <= {len} and step >= 1",
                    self.start, self.end, self.step
                ),
            ));
        }
        Ok(())
    }
}

/// A strided slice of every sample on the channel, row and column axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slicing {
    /// Channel range.
    pub channels: AxisSlice,
    /// Row range.
    pub height: AxisSlice,
    /// Column range.
    pub width: AxisSlice,
}

impl Slicing {
    /// The sliced shape of `input`, or an error naming the axis whose range does not fit it.
    pub fn output_shape(&self, input: SampleShape) -> Result<SampleShape, QuantError> {
        self.channels.check("channel", input.channels)?;
        self.height.check("row", input.height)?;
        self.width.check("column", input.width)?;
        Ok(SampleShape {
            channels: self.channels.len(),
            height: self.height.len(),
            width: self.width.len(),
        })
    }
}

/// Element counts `(input, output)` of `batch` samples, checked against the slices.
fn check_batch(
    context: &str,
    batch: usize,
    (input, output): (SampleShape, SampleShape),
    x_len: usize,
    out_len: usize,
) -> Result<(), QuantError> {
    let total = |s: SampleShape| s.elems().and_then(|e| e.checked_mul(batch));
    check_len(context, "input", x_len, total(input))?;
    check_len(context, "output", out_len, total(output))
}

/// Scalar definitions (normative): one index computation per output element.
pub mod reference {
    use super::{Padding, SampleShape, Slicing};

    /// [`super::pad_u8`] element by element (checked shapes).
    pub fn pad_u8(
        x: &[u8],
        batch: usize,
        input: SampleShape,
        padding: &Padding,
        pad_code: u8,
        out: &mut [u8],
    ) {
        let (c, h, w) = (input.channels, input.height, input.width);
        let (oc, oh, ow) = (
            c + padding.channels_front + padding.channels_back,
            h + padding.top + padding.bottom,
            w + padding.left + padding.right,
        );
        for n in 0..batch {
            for ci in 0..oc {
                for y in 0..oh {
                    for xx in 0..ow {
                        let src = match (
                            ci.checked_sub(padding.channels_front),
                            y.checked_sub(padding.top),
                            xx.checked_sub(padding.left),
                        ) {
                            (Some(ic), Some(iy), Some(ix)) if ic < c && iy < h && ix < w => {
                                x[((n * c + ic) * h + iy) * w + ix]
                            }
                            _ => pad_code,
                        };
                        out[((n * oc + ci) * oh + y) * ow + xx] = src;
                    }
                }
            }
        }
    }

    /// [`super::slice_u8`] element by element (checked shapes).
    pub fn slice_u8(x: &[u8], batch: usize, input: SampleShape, slicing: &Slicing, out: &mut [u8]) {
        let (c, h, w) = (input.channels, input.height, input.width);
        let (sc, sh, sw) = (slicing.channels, slicing.height, slicing.width);
        let mut o = 0;
        for n in 0..batch {
            for i in 0..sc.len() {
                for j in 0..sh.len() {
                    for k in 0..sw.len() {
                        let (ic, iy, ix) = (
                            sc.start + i * sc.step,
                            sh.start + j * sh.step,
                            sw.start + k * sw.step,
                        );
                        out[o] = x[((n * c + ic) * h + iy) * w + ix];
                        o += 1;
                    }
                }
            }
        }
    }
}

/// Zero-pads `batch` NCHW samples of shape `input` (module doc); `out` holds `batch` samples of
/// [`Padding::output_shape`]. Equals [`reference::pad_u8`].
pub fn pad_u8(
    x: &[u8],
    batch: usize,
    input: SampleShape,
    padding: &Padding,
    pad_code: u8,
    out: &mut [u8],
) -> Result<(), QuantError> {
    const CTX: &str = "pad";
    let output = padding
        .output_shape(input)
        .ok_or_else(|| super::mismatch(CTX, "padded shape overflows usize".into()))?;
    check_batch(CTX, batch, (input, output), x.len(), out.len())?;
    let (h, w) = (input.height, input.width);
    let (oh, ow) = (output.height, output.width);
    let plane = h * w;
    let oplane = oh * ow;
    if x.is_empty() || out.is_empty() {
        out.fill(pad_code);
        return Ok(());
    }
    let front = padding.channels_front * oplane;
    let back = padding.channels_back * oplane;
    for (xs, os) in x
        .chunks_exact(input.channels * plane)
        .zip(out.chunks_exact_mut(output.channels * oplane))
    {
        let (head, rest) = os.split_at_mut(front);
        head.fill(pad_code);
        let (body, tail) = rest.split_at_mut(rest.len() - back);
        tail.fill(pad_code);
        for (xp, op) in xs.chunks_exact(plane).zip(body.chunks_exact_mut(oplane)) {
            let (top, rest) = op.split_at_mut(padding.top * ow);
            top.fill(pad_code);
            let (rows, bottom) = rest.split_at_mut(h * ow);
            bottom.fill(pad_code);
            for (src, dst) in xp.chunks_exact(w).zip(rows.chunks_exact_mut(ow)) {
                let (left, rest) = dst.split_at_mut(padding.left);
                left.fill(pad_code);
                let (mid, right) = rest.split_at_mut(w);
                mid.copy_from_slice(src);
                right.fill(pad_code);
            }
        }
    }
    Ok(())
}

/// Strided slice of `batch` NCHW samples of shape `input` (module doc); `out` holds `batch` samples of
/// [`Slicing::output_shape`]. Unit column steps copy whole row segments. Equals [`reference::slice_u8`].
pub fn slice_u8(
    x: &[u8],
    batch: usize,
    input: SampleShape,
    slicing: &Slicing,
    out: &mut [u8],
) -> Result<(), QuantError> {
    const CTX: &str = "slice";
    let output = slicing.output_shape(input)?;
    check_batch(CTX, batch, (input, output), x.len(), out.len())?;
    if out.is_empty() {
        return Ok(());
    }
    let (h, w) = (input.height, input.width);
    let (sc, sh, sw) = (slicing.channels, slicing.height, slicing.width);
    let ow = output.width;
    let mut rows = out.chunks_exact_mut(ow);
    for xs in x.chunks_exact(input.channels * h * w) {
        for ic in (sc.start..sc.end).step_by(sc.step) {
            for iy in (sh.start..sh.end).step_by(sh.step) {
                let src = &xs[(ic * h + iy) * w..][..w];
                // Every output row has a destination: the row count is batch * channels * height of `output`.
                let Some(dst) = rows.next() else {
                    return Err(super::mismatch(CTX, "output rows ran out".into()));
                };
                if sw.step == 1 {
                    dst.copy_from_slice(&src[sw.start..sw.end]);
                } else {
                    for (d, &s) in dst
                        .iter_mut()
                        .zip(src[sw.start..sw.end].iter().step_by(sw.step))
                    {
                        *d = s;
                    }
                }
            }
        }
    }
    Ok(())
}
