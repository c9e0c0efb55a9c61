//! The op rows of the importer with layer parameters to translate (Gemm, Conv, pooling, Add, Pad, Slice and the
//! layout ops), kept apart from the graph walk in [`super`].
use super::{Ctx, Dyn, Importer, Val, R};
use crate::nn::{
    Add, AvgPool2d, AxisSlice, BatchNorm2d, Conv2d, Dense, Layer, MaxPool2d, Pad, Slice, ValueId,
};
use crate::onnx::fold::{self, Const};

impl Importer {
    pub(super) fn gemm(&mut self, cx: &Ctx<'_>) -> R<Val> {
        if cx.int("transA", 0) != 0 {
            return Err(cx.unsupported("transA = 1 on the batch input"));
        }
        let (x, order) = self.flat_input(cx)?;
        let k = x.1[0];
        let w = self.required_constant(cx, 1)?;
        let (alpha, beta) = (cx.float("alpha", 1.0), cx.float("beta", 1.0));
        let w = if cx.int("transB", 0) != 0 {
            w.clone()
        } else {
            fold::transpose(w, &[]).map_err(|e| cx.unsupported(e))?
        };
        let [m, k2] = w.dims[..] else {
            return Err(cx.unsupported(format!("weight of shape {:?}", w.dims)));
        };
        if k2 != k {
            return Err(cx.unsupported(format!(
                "weight of shape {:?} for {k} input features",
                w.dims
            )));
        }
        let weight: Vec<f32> = w
            .to_f32()
            .map_err(|e| cx.unsupported(e))?
            .iter()
            .map(|v| v * alpha)
            .collect();
        let weight = reorder_columns(weight, k, order.as_deref());
        let bias = match self.constant(cx, 2)? {
            None => vec![0.0; m],
            Some(c) => broadcast_bias(c, m)
                .ok_or_else(|| {
                    cx.unsupported(format!("bias of shape {:?} for {m} outputs", c.dims))
                })?
                .into_iter()
                .map(|v| v * beta)
                .collect(),
        };
        self.emit(
            cx,
            "",
            Layer::Dense(Dense::from_weights(k, m, weight, bias)),
            vec![x],
        )
    }

    pub(super) fn conv(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let x = self.spatial(cx)?;
        let [c, h, w] = x.1[..] else {
            unreachable!("spatial checks the rank")
        };
        let wt = self.required_constant(cx, 1)?;
        let [oc, icg, kh, kw] = wt.dims[..] else {
            return Err(cx.unsupported(format!(
                "weight of shape {:?} (need 2-D convolution)",
                wt.dims
            )));
        };
        let groups = usize::try_from(cx.int("group", 1)).unwrap_or(0);
        if groups == 0 || icg * groups != c {
            return Err(cx.unsupported(format!(
                "{groups} groups of {icg} channels for an input of {c}"
            )));
        }
        if cx.pair("dilations", 1)? != (1, 1) {
            return Err(cx.unsupported("dilations other than 1"));
        }
        if let Some(k) = cx.ints("kernel_shape") {
            if k != [kh as i64, kw as i64] {
                return Err(cx.unsupported(format!("kernel_shape {k:?} differs from the weight's")));
            }
        }
        let stride = cx.pair("strides", 1)?;
        let pads = self.pads(cx, (h, w), (kh, kw), stride)?;
        let bias = match self.constant(cx, 2)? {
            None => vec![0.0; oc],
            Some(b) if b.len() == oc => b.to_f32().map_err(|e| cx.unsupported(e))?,
            Some(b) => {
                return Err(cx.unsupported(format!("bias of shape {:?} for {oc} outputs", b.dims)))
            }
        };
        let weight = wt.to_f32().map_err(|e| cx.unsupported(e))?;
        let (x, padding) = self.pad_if_asymmetric(cx, x, pads)?;
        let layer = if groups == 1 {
            Conv2d::from_weights(c, oc, (kh, kw), stride, padding, weight, bias)
        } else {
            Conv2d::from_weights_grouped(c, oc, (kh, kw), stride, padding, groups, weight, bias)
                .map_err(|e| cx.unsupported(e.to_string()))?
        };
        self.emit(cx, "", Layer::Conv2d(layer), vec![x])
    }

    /// `[top, left, bottom, right]` padding from `pads` or `auto_pad`.
    pub(super) fn pads(
        &self,
        cx: &Ctx<'_>,
        hw: (usize, usize),
        k: (usize, usize),
        s: (usize, usize),
    ) -> R<[usize; 4]> {
        let same = |n: usize, k: usize, s: usize, upper: bool| {
            let total = ((n.div_ceil(s) - 1) * s + k).saturating_sub(n);
            let small = total / 2;
            if upper {
                (small, total - small)
            } else {
                (total - small, small)
            }
        };
        match cx.string("auto_pad", "NOTSET").as_str() {
            "NOTSET" => match cx.ints("pads").as_deref() {
                None => Ok([0; 4]),
                Some(&[t, l, b, r]) if [t, l, b, r].iter().all(|&p| p >= 0) => {
                    Ok([t as usize, l as usize, b as usize, r as usize])
                }
                Some(p) => Err(cx.unsupported(format!("pads {p:?}"))),
            },
            "VALID" => Ok([0; 4]),
            mode @ ("SAME_UPPER" | "SAME_LOWER") => {
                let upper = mode == "SAME_UPPER";
                let (t, b) = same(hw.0, k.0, s.0, upper);
                let (l, r) = same(hw.1, k.1, s.1, upper);
                Ok([t, l, b, r])
            }
            other => Err(cx.unsupported(format!("auto_pad {other}"))),
        }
    }

    /// Symmetric padding stays in the layer; otherwise a [`Pad`] node goes before it.
    pub(super) fn pad_if_asymmetric(
        &mut self,
        cx: &Ctx<'_>,
        x: Dyn,
        [t, l, b, r]: [usize; 4],
    ) -> R<(Dyn, (usize, usize))> {
        if t == b && l == r {
            return Ok((x, (t, l)));
        }
        match self.emit(cx, ".pad", Layer::Pad(Pad::spatial(t, b, l, r)), vec![x])? {
            Val::Dyn(id, shape) => Ok(((id, shape), (0, 0))),
            Val::Const(_) | Val::Permuted(..) | Val::Reordered(..) => {
                unreachable!("emit returns run-time values")
            }
        }
    }

    pub(super) fn pool(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let x = self.spatial(cx)?;
        let max = cx.n.op_type() == "MaxPool";
        if cx.n.output.get(1).is_some_and(|o| !o.is_empty()) {
            return Err(cx.unsupported("the indices output"));
        }
        if cx.int("ceil_mode", 0) != 0 {
            return Err(cx.unsupported("ceil_mode = 1"));
        }
        if cx.pair("dilations", 1)? != (1, 1) {
            return Err(cx.unsupported("dilations other than 1"));
        }
        let kernel = match cx.ints("kernel_shape").as_deref() {
            Some(&[a, b]) if a > 0 && b > 0 => (a as usize, b as usize),
            k => return Err(cx.unsupported(format!("kernel_shape {k:?}"))),
        };
        let stride = cx.pair("strides", 1)?;
        let pads = self.pads(cx, (x.1[1], x.1[2]), kernel, stride)?;
        let x = if pads == [0; 4] {
            x
        } else if max {
            return Err(cx.unsupported(
                "padded max pooling (lowbit pads with zeros, max pooling with -inf)",
            ));
        } else if cx.int("count_include_pad", 0) == 0 {
            return Err(cx.unsupported("padded average pooling with count_include_pad = 0"));
        } else {
            let [t, l, b, r] = pads;
            match self.emit(cx, ".pad", Layer::Pad(Pad::spatial(t, b, l, r)), vec![x])? {
                Val::Dyn(id, shape) => (id, shape),
                Val::Const(_) | Val::Permuted(..) | Val::Reordered(..) => {
                    unreachable!("emit returns run-time values")
                }
            }
        };
        let layer = if max {
            Layer::MaxPool2d(MaxPool2d::new(kernel, stride))
        } else {
            Layer::AvgPool2d(AvgPool2d::new(kernel, stride))
        };
        self.emit(cx, "", layer, vec![x])
    }

    pub(super) fn add(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let (a, b) = (self.get(cx, 0)?.cloned(), self.get(cx, 1)?.cloned());
        match (a, b) {
            (Some(Val::Dyn(ia, sa)), Some(Val::Dyn(ib, sb))) => {
                if sa != sb {
                    return Err(cx.unsupported(format!("broadcasting {sa:?} + {sb:?}")));
                }
                self.emit(cx, "", Layer::Add(Add::new()), vec![(ia, sa), (ib, sb)])
            }
            (Some(Val::Dyn(id, shape)), Some(Val::Const(c)))
            | (Some(Val::Const(c)), Some(Val::Dyn(id, shape))) => {
                // A bias after MatMul (or Conv): folded into that layer when nothing else reads its output.
                let channels = shape.first().copied().unwrap_or(0);
                let bias = if shape.len() == 1 {
                    broadcast_bias(&c, channels)
                } else {
                    channel_bias(&c, channels)
                };
                let (layer, only_reader) = self.producer(cx, id);
                match (layer, bias, only_reader) {
                    (Some(Layer::Dense(d)), Some(bias), true) if shape.len() == 1 => {
                        d.bias.iter_mut().zip(&bias).for_each(|(b, v)| *b += v);
                    }
                    (Some(Layer::Conv2d(conv)), Some(bias), true) => {
                        conv.bias.iter_mut().zip(&bias).for_each(|(b, v)| *b += v);
                    }
                    (Some(Layer::BatchNorm2d(bn)), Some(bias), true) => {
                        bn.beta.iter_mut().zip(&bias).for_each(|(b, v)| *b += v);
                    }
                    _ => {
                        return Err(cx.unsupported(
                            "adding a constant other than the bias of the MatMul or Conv before it",
                        ))
                    }
                }
                Ok(Val::Dyn(id, shape))
            }
            _ => Err(cx.unsupported("inputs")),
        }
    }

    /// The layer that computed the value `id` this node reads, and whether this node is its only reader (so a
    /// constant bias or scale can fold into it).
    fn producer(&mut self, cx: &Ctx<'_>, id: ValueId) -> (Option<&mut Layer>, bool) {
        let src =
            cx.n.input
                .iter()
                .find(|i| matches!(self.values.get(*i), Some(Val::Dyn(..))))
                .cloned()
                .unwrap_or_default();
        let only_reader = self.uses.get(&src) == Some(&1);
        let layer = id
            .checked_sub(1)
            .and_then(|j| self.nodes.get_mut(j))
            .map(|n| &mut n.layer);
        (layer, only_reader)
    }

    /// `Mul` of a run-time value by a constant per channel (a batch norm as tf2onnx writes Keras's: `Mul`, then
    /// `Add`): folded into the Conv or Dense before it when nothing else reads that layer's output, else a
    /// [`BatchNorm2d`] of that scale (whose `beta` a following `Add` takes).
    pub(super) fn mul(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let (id, shape, c) = match (self.get(cx, 0)?.cloned(), self.get(cx, 1)?.cloned()) {
            (Some(Val::Dyn(id, shape)), Some(Val::Const(c)))
            | (Some(Val::Const(c)), Some(Val::Dyn(id, shape))) => (id, shape, c),
            _ => {
                return Err(cx.unsupported(
                    "a product other than a run-time value times a constant per channel",
                ))
            }
        };
        let channels = shape.first().copied().unwrap_or(0);
        let scale = if c.len() == 1 {
            c.to_f32().ok().map(|v| vec![v[0]; channels])
        } else if shape.len() == 1 {
            broadcast_bias(&c, channels)
        } else {
            channel_bias(&c, channels)
        }
        .ok_or_else(|| {
            cx.unsupported(format!(
                "a factor of shape {:?} for per-sample shape {shape:?} (need one value per channel)",
                c.dims
            ))
        })?;
        let (weight, bias) = match self.producer(cx, id) {
            (Some(Layer::Conv2d(conv)), true) => (&mut conv.weight, &mut conv.bias),
            (Some(Layer::Dense(d)), true) if shape.len() == 1 => (&mut d.weight, &mut d.bias),
            _ if shape.len() == 3 => {
                let mut bn = BatchNorm2d::new(channels);
                // gamma / sqrt(1 + eps) is the scale.
                let norm = (1.0 + f64::from(bn.eps)).sqrt();
                bn.gamma = scale
                    .iter()
                    .map(|&s| (f64::from(s) * norm) as f32)
                    .collect();
                return self.emit(cx, "", Layer::BatchNorm2d(bn), vec![(id, shape)]);
            }
            _ => {
                return Err(cx.unsupported(
                    "scaling a value that is not a convolution's or a dense layer's output",
                ))
            }
        };
        let per = weight.len() / channels.max(1);
        for ((row, b), s) in weight
            .chunks_exact_mut(per)
            .zip(bias.iter_mut())
            .zip(&scale)
        {
            row.iter_mut().for_each(|w| *w *= s);
            *b *= s;
        }
        Ok(Val::Dyn(id, shape))
    }

    pub(super) fn pad(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let x = self.spatial(cx)?;
        if cx.string("mode", "constant") != "constant" {
            return Err(cx.unsupported(format!("mode {}", cx.string("mode", "constant"))));
        }
        let pads = self
            .required_constant(cx, 1)?
            .to_i64()
            .map_err(|e| cx.unsupported(e))?;
        if let Some(v) = self.constant(cx, 2)? {
            if v.to_f32()
                .map_err(|e| cx.unsupported(e))?
                .iter()
                .any(|&v| v != 0.0)
            {
                return Err(cx.unsupported("a constant value other than zero"));
            }
        }
        if self.get(cx, 3)?.is_some() {
            return Err(cx.unsupported("the axes input"));
        }
        let p: Vec<usize> = match pads[..] {
            [0, c0, t, l, 0, c1, b, r] if [c0, t, l, c1, b, r].iter().all(|&v| v >= 0) => {
                [c0, t, l, c1, b, r].iter().map(|&v| v as usize).collect()
            }
            _ => {
                return Err(cx.unsupported(format!(
                    "pads {pads:?} (need non-negative NCHW pads, none on the batch)"
                )))
            }
        };
        let layer = Pad::new((p[0], p[3]), (p[1], p[4]), (p[2], p[5]));
        self.emit(cx, "", Layer::Pad(layer), vec![x])
    }

    pub(super) fn slice(&mut self, cx: &Ctx<'_>) -> R<Val> {
        let x = self.spatial(cx)?;
        let ints = |k: usize| -> R<Option<Vec<i64>>> {
            self.constant(cx, k)?
                .map(|c| c.to_i64().map_err(|e| cx.unsupported(e)))
                .transpose()
        };
        let (starts, ends) = (ints(1)?.unwrap_or_default(), ints(2)?.unwrap_or_default());
        let p = fold::slice_params(4, &starts, &ends, ints(3)?.as_deref(), ints(4)?.as_deref())
            .map_err(|e| cx.unsupported(e))?;
        if p[0] != (0, i64::MAX, 1)
            && !(p[0].0 == 0 && p[0].1 >= i64::from(i32::MAX) && p[0].2 == 1)
        {
            return Err(cx.unsupported("slicing the batch"));
        }
        let mut axes = Vec::new();
        for (d, &(s, e, st)) in p.iter().enumerate().skip(1) {
            let len = x.1[d - 1];
            let keep = fold::slice_indices(len, s, e, st).map_err(|e| cx.unsupported(e))?;
            if st < 0 || keep.is_empty() {
                return Err(cx.unsupported("a negative step or an empty slice"));
            }
            let start = keep[0];
            let end = keep[keep.len() - 1] + 1;
            axes.push(AxisSlice::new(start, end, st as usize));
        }
        let layer = Slice::new(axes[0], axes[1], axes[2]);
        self.emit(cx, "", Layer::Slice(layer), vec![x])
    }
}

/// A `[m, k]` Dense weight whose input features arrive in `order` (feature `j` of the graph is lowbit's
/// `order[j]`): column `j` moves to `order[j]`.
pub(super) fn reorder_columns(weight: Vec<f32>, k: usize, order: Option<&[usize]>) -> Vec<f32> {
    let Some(order) = order else {
        return weight;
    };
    let mut out = vec![0.0; weight.len()];
    for (row, new) in weight.chunks_exact(k).zip(out.chunks_exact_mut(k)) {
        for (v, &to) in row.iter().zip(order) {
            new[to] = *v;
        }
    }
    out
}

/// A Dense bias from a constant of `[m]`, `[1, m]` or one element.
fn broadcast_bias(c: &Const, m: usize) -> Option<Vec<f32>> {
    let v = c.to_f32().ok()?;
    let fits = match c.dims[..] {
        [] | [1] | [1, 1] => true,
        [n] | [1, n] => n == m,
        _ => false,
    };
    if !fits {
        return None;
    }
    Some(if v.len() == 1 { vec![v[0]; m] } else { v })
}

/// A Conv bias from a constant of `[C, 1, 1]` or `[1, C, 1, 1]`.
fn channel_bias(c: &Const, channels: usize) -> Option<Vec<f32>> {
    let fits = matches!(c.dims[..], [n, 1, 1] | [1, n, 1, 1] if n == channels);
    fits.then(|| c.to_f32().ok()).flatten()
}
