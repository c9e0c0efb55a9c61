//! Shape checks shared by the layers: NCHW inputs, per-sample shapes for shape inference, the input count of
//! multi-input layers, and overflow-checked element counts (shape inference also runs on shapes read from
//! files, so it must never overflow or panic).
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `[B, C, H, W]` of an NCHW tensor whose data length matches its shape.
pub(crate) fn nchw(op: &str, x: &Tensor) -> Result<[usize; 4]> {
    match x.shape[..] {
        [b, c, h, w] if elems(op, &x.shape).ok() == Some(x.len()) => Ok([b, c, h, w]),
        _ => Err(Error::Shape(format!(
            "{op}: input shape {:?} is not [B, C, H, W]",
            x.shape
        ))),
    }
}

/// `[C, H, W]` of a per-sample shape.
pub(crate) fn chw(op: &str, sample: &[usize]) -> Result<[usize; 3]> {
    match sample[..] {
        [c, h, w] => Ok([c, h, w]),
        _ => Err(Error::Shape(format!(
            "{op}: per-sample shape {sample:?} is not [C, H, W]"
        ))),
    }
}

/// Number of elements of `shape`; an error naming `op` when the product overflows.
pub(crate) fn elems(op: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::Shape(format!("{op}: shape {shape:?} has too many elements")))
}

/// A tensor whose data length matches its shape (and has a batch dimension).
pub(crate) fn batched(op: &str, x: &Tensor) -> Result<()> {
    if x.shape.is_empty() || elems(op, &x.shape).ok() != Some(x.len()) {
        return Err(Error::Shape(format!(
            "{op}: input shape {:?} does not describe its {} elements as [B, ...]",
            x.shape,
            x.len()
        )));
    }
    Ok(())
}

/// Checks that a multi-input layer got exactly `want` inputs (`exact`) or at least `want`.
pub(crate) fn arity(op: &str, got: usize, want: usize, exact: bool) -> Result<()> {
    let ok = if exact { got == want } else { got >= want };
    if ok {
        return Ok(());
    }
    let how = if exact { "exactly" } else { "at least" };
    Err(Error::Shape(format!(
        "{op}: takes {how} {want} input(s), got {got}"
    )))
}

/// The error of a backward pass whose gradient does not match the last training forward.
pub(crate) fn backward_mismatch(op: &str, grad: &[usize], forward: &[usize]) -> Error {
    if forward.is_empty() {
        Error::Shape(format!("{op}: backward without a training forward pass"))
    } else {
        Error::Shape(format!(
            "{op}: backward with gradient {grad:?} after forward of {forward:?}"
        ))
    }
}

/// Units (planes, samples, chunks) per rayon job for units of `unit_elems` elements: about 16K elements, so a
/// job (~10 us) outweighs rayon's per-job cost (~1 us) instead of one 28x28 plane per job.
pub(crate) fn per_task(unit_elems: usize) -> usize {
    (16 * 1024 / unit_elems.max(1)).max(1)
}
