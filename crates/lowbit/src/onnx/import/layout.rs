//! The layout ops of the importer: `Transpose`, `Reshape`, `Squeeze`, `Unsqueeze` and `Flatten` of run-time
//! values. lowbit's values are NCHW; a Keras/tf2onnx graph holds NHWC views of them ([`Val::Permuted`]), which
//! fold away when a later transpose undoes them, when a reshape only moves axes of size 1 (tf2onnx's form of
//! the input transpose of a one-channel image), or when they are flattened for a `Gemm`/`MatMul`, whose weight
//! rows are then taken in the view's order ([`Val::Reordered`], Keras's `Flatten` of NHWC then `Dense`).
use super::{Ctx, Dyn, Importer, Val, R};
use crate::nn::{Flatten, Layer, ValueId};
use crate::onnx::fold::{self, BATCH};

/// Where each element of the row-major flattening of a permuted view lies in the row-major flattening of the
/// source: `order[j]` for the view's element `j`. `shape` is the source's per-sample shape, `perm` the view's
/// axes (batch included, `perm[0] == 0`): view axis `i` is source axis `perm[i]`.
pub(super) fn flat_order(shape: &[usize], perm: &[usize]) -> Vec<usize> {
    let full: Vec<usize> = std::iter::once(1).chain(shape.iter().copied()).collect();
    let seen: Vec<usize> = perm.iter().map(|&p| full[p]).collect();
    // The source stride of each view axis.
    let mut stride = vec![0; full.len()];
    let mut s = 1;
    for a in (0..full.len()).rev() {
        stride[a] = s;
        s *= full[a];
    }
    let view_stride: Vec<usize> = perm.iter().map(|&p| stride[p]).collect();
    let mut order = Vec::with_capacity(s);
    let mut index = vec![0; seen.len()];
    for _ in 0..s {
        order.push(index.iter().zip(&view_stride).map(|(i, st)| i * st).sum());
        for a in (0..seen.len()).rev() {
            index[a] += 1;
            if index[a] < seen[a] {
                break;
            }
            index[a] = 0;
        }
    }
    order
}

/// True when `order` is `0, 1, 2, ...`.
fn is_identity(order: &[usize]) -> bool {
    order.iter().enumerate().all(|(i, &p)| i == p)
}

impl Importer {
    /// A run-time value as `(id, per-sample shape, axes)`: the axes of its view (the identity for a plain value).
    fn view(&self, cx: &Ctx<'_>, k: usize) -> R<(ValueId, Vec<usize>, Vec<usize>)> {
        match self.get(cx, k)? {
            Some(Val::Permuted(id, shape, perm)) => Ok((*id, shape.clone(), perm.clone())),
            _ => {
                let (id, shape) = self.dynamic(cx, k)?;
                let axes = (0..=shape.len()).collect();
                Ok((id, shape, axes))
            }
        }
    }

    /// A `Transpose` of a run-time value: layout-only when a later transpose undoes it (tracked as
    /// [`Val::Permuted`]); an identity permutation passes the value through.
    pub(super) fn layout_transpose(&self, cx: &Ctx<'_>) -> R<Val> {
        let (id, shape, before) = self.view(cx, 0)?;
        let rank = before.len();
        // No `perm` reverses the axes (ONNX's default).
        let perm: Vec<i64> = cx
            .ints("perm")
            .unwrap_or_else(|| (0..rank as i64).rev().collect());
        let mut seen = vec![false; rank];
        let valid = perm.len() == rank
            && perm.iter().all(|&p| {
                usize::try_from(p).is_ok_and(|p| p < rank && !std::mem::replace(&mut seen[p], true))
            });
        if !valid || perm[0] != 0 {
            return Err(cx.unsupported(format!(
                "perm {perm:?} of a rank-{rank} value (need a permutation that keeps the batch axis first)"
            )));
        }
        // Transposing a view permuted by `before` by `perm` views the source by before[perm[i]].
        let composed: Vec<usize> = perm.iter().map(|&p| before[p as usize]).collect();
        if is_identity(&composed) {
            Ok(Val::Dyn(id, shape))
        } else {
            Ok(Val::Permuted(id, shape, composed))
        }
    }

    /// The one input as a flat per-sample vector (`[B, K]`), with the order of its features when it is a
    /// flattened permuted view ([`Val::Reordered`]).
    pub(super) fn flat_input(&self, cx: &Ctx<'_>) -> R<(Dyn, Option<Vec<usize>>)> {
        if let Some(Val::Reordered(id, k, order)) = self.get(cx, 0)? {
            return Ok(((*id, vec![*k]), Some(order.clone())));
        }
        let x = self.dynamic(cx, 0)?;
        if x.1.len() != 1 {
            return Err(cx.unsupported(format!(
                "input of per-sample shape {:?} (need [B, K]: flatten first)",
                x.1
            )));
        }
        Ok((x, None))
    }

    pub(super) fn flatten(&mut self, cx: &Ctx<'_>, x: Dyn) -> R<Val> {
        if x.1.len() == 1 {
            return Ok(Val::Dyn(x.0, x.1));
        }
        self.emit(cx, "", Layer::Flatten(Flatten::new()), vec![x])
    }

    /// The `Flatten` op (axis 1 only).
    pub(super) fn flatten_op(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let (id, shape, perm) = self.view(cx, 0)?;
        if fold::axis(cx.int("axis", 1), shape.len() + 1) != Ok(1) {
            return Err(cx.unsupported("flatten at an axis other than 1"));
        }
        let k = shape.iter().product();
        self.reshaped(cx, (id, shape), &perm, vec![k])
    }

    /// `Reshape`, `Squeeze`, `Unsqueeze` of a run-time value: only a flatten (or nothing) is expressible.
    pub(super) fn reshape(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let (id, shape, perm) = self.view(cx, 0)?;
        let full: Vec<usize> = std::iter::once(1).chain(shape.iter().copied()).collect();
        // The per-sample shape the graph sees.
        let seen: Vec<usize> = perm[1..].iter().map(|&p| full[p]).collect();
        let target: Vec<i64> = match cx.n.op_type() {
            "Reshape" => {
                let t = self
                    .required_constant(cx, 1)?
                    .to_i64()
                    .map_err(|e| cx.unsupported(e))?;
                match t.first() {
                    Some(&BATCH) | Some(&0) | Some(&-1) => {}
                    _ => {
                        return Err(
                            cx.unsupported(format!("target {t:?} that does not keep the batch"))
                        )
                    }
                }
                let rest = fold::reshape_dims(&seen, &t[1..]).map_err(|e| cx.unsupported(e))?;
                rest.iter().map(|&d| d as i64).collect()
            }
            op => {
                let axes = if self.opset >= 13 {
                    self.constant(cx, 1)?
                        .map(|c| c.to_i64())
                        .transpose()
                        .map_err(|e| cx.unsupported(e))?
                } else {
                    cx.ints("axes")
                };
                let dims: Vec<usize> = std::iter::once(1).chain(seen.iter().copied()).collect();
                let out = if op == "Squeeze" {
                    fold::squeeze_dims(&dims, axes.as_deref())
                } else {
                    fold::unsqueeze_dims(&dims, axes.as_deref().unwrap_or(&[]))
                }
                .map_err(|e| cx.unsupported(e))?;
                let keeps_batch = axes.as_deref().unwrap_or(&[]).iter().all(|&a| {
                    fold::axis(
                        a,
                        if op == "Squeeze" {
                            dims.len()
                        } else {
                            out.len()
                        },
                    ) != Ok(0)
                });
                if !keeps_batch || out.is_empty() {
                    return Err(cx.unsupported("squeezing or unsqueezing the batch axis"));
                }
                out[1..].iter().map(|&d| d as i64).collect()
            }
        };
        let target: Vec<usize> = target.iter().map(|&d| d as usize).collect();
        self.reshaped(cx, (id, shape), &perm, target)
    }

    /// The value `x` seen through `perm` and reshaped to the per-sample `target`: `x` itself when the data are
    /// unchanged and the target is `x`'s shape, a flatten (reordered for the reader when the view permutes
    /// it), or an error.
    fn reshaped(&mut self, cx: &Ctx<'_>, x: Dyn, perm: &[usize], target: Vec<usize>) -> R<Val> {
        let order = flat_order(&x.1, perm);
        if is_identity(&order) && target == x.1 {
            return Ok(Val::Dyn(x.0, x.1));
        }
        if target.len() != 1 {
            let full: Vec<usize> = std::iter::once(1).chain(x.1.iter().copied()).collect();
            let seen: Vec<usize> = perm[1..].iter().map(|&p| full[p]).collect();
            return Err(cx.unsupported(format!(
                "reshaping per-sample {seen:?} to {target:?} (only flattening is supported)"
            )));
        }
        match self.flatten(cx, x)? {
            Val::Dyn(id, shape) if !is_identity(&order) => Ok(Val::Reordered(id, shape[0], order)),
            flat => Ok(flat),
        }
    }
}
