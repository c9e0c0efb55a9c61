//! Integer simulation of a [`QuantModel`] graph: plain scalar loops written independently of the engine and
//! kernels, so tests can compare the two node by node.
use crate::error::{Error, Result};
#[cfg(target_arch = "x86_64")]
use crate::kernel_tiers::Family;
use crate::nn::conv::window_len;
#[cfg(target_arch = "x86_64")]
use lowbit_runtime::isa::Isa;
use lowbit_runtime::model::{OutputStage, QConv2d, QDense, QOp, QuantModel};
use lowbit_runtime::pack::{PackedWeights, Packing};
use lowbit_runtime::qparams::{self, Requant};
use rayon::prelude::*;

/// What [`simulate`] computes.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    /// `codes[i]` is the output of node `i` (`batch * elems` codes, sample-major NCHW) for every node but the
    /// last (the logits node), so `codes.len() == nodes.len() - 1`; empty when not kept. Flatten's output equals
    /// its input.
    pub codes: Vec<Vec<u8>>,
    /// Accumulators of the last node, `[batch, classes]`: `bias[c] + sum_k (x[k] - zp_in) * w[c][k]`.
    pub final_acc: Vec<i32>,
    /// Logits `[batch, classes]`: `acc as f32 * (s_in * s_w[c])`, the product of the two scales taken in f32
    /// (the engine's formula).
    pub logits: Vec<f32>,
}

/// A value of the graph during simulation: `batch` samples of `(c, h, w)` codes, and the code of real 0 (what
/// padding fills in).
struct Value {
    data: Vec<u8>,
    dims: (usize, usize, usize),
    zero_point: u8,
}

/// Runs `qm` on `batch` samples of raw `u8` input (`batch * input.features()` values, NCHW per sample), keeping
/// every node's codes. Accumulators are computed in i64 and must fit i32 (else an error). Conv2d is a direct
/// 7-deep loop (padded positions contribute `(zp - zp) * w = 0`), not im2col; pools follow the engine's
/// documented formulas.
pub fn simulate(qm: &QuantModel, input: &[u8], batch: usize) -> Result<Simulation> {
    simulate_with(qm, input, batch, true)
}

/// [`simulate`]; with `keep_codes == false` each value is dropped after its last reader and
/// [`Simulation::codes`] stays empty (for whole test sets, where only the logits matter).
pub fn simulate_with(
    qm: &QuantModel,
    input: &[u8],
    batch: usize,
    keep_codes: bool,
) -> Result<Simulation> {
    let features = qm.input.features();
    if Some(input.len()) != batch.checked_mul(features) {
        return Err(Error::Shape(format!(
            "simulate: {} input codes for batch {batch} x {features} features",
            input.len()
        )));
    }
    let n_nodes = qm.nodes.len();
    // The last node reading each value, so values can be dropped when not kept.
    let mut last_read = vec![0usize; n_nodes + 1];
    for (i, node) in qm.nodes.iter().enumerate() {
        for &v in &node.inputs {
            if let Some(l) = last_read.get_mut(v) {
                *l = i;
            }
        }
    }
    let mut values: Vec<Option<Value>> = Vec::with_capacity(n_nodes + 1);
    values.push(Some(Value {
        data: input.to_vec(),
        dims: (qm.input.channels, qm.input.height, qm.input.width),
        zero_point: code_of(qm.input.qparams.zero_point)?,
    }));
    let mut codes = Vec::new();
    for (li, node) in qm.nodes.iter().enumerate() {
        let name = &node.name;
        let args = node
            .inputs
            .iter()
            .map(|&v| {
                values
                    .get(v)
                    .and_then(Option::as_ref)
                    .filter(|_| v <= li)
                    .ok_or_else(|| {
                        Error::Shape(format!(
                            "simulate: node {name} reads value {v}, not an earlier one"
                        ))
                    })
            })
            .collect::<Result<Vec<&Value>>>()?;
        let x = match (&node.op, args.as_slice()) {
            (_, [x]) => *x,
            (QOp::Add(_) | QOp::Concat(_), [x, ..]) => *x,
            _ => {
                return Err(Error::Shape(format!(
                    "simulate: node {name} has {} inputs",
                    args.len()
                )))
            }
        };
        let (c, h, w) = x.dims;
        let cur = &x.data;
        let out = match &node.op {
            QOp::Add(a) => add(name, a, &args)?,
            QOp::Concat(cat) => concat(name, cat, &args, batch)?,
            QOp::Pad(p) => pad(x, p, batch)?,
            QOp::Slice(sl) => slice(name, x, sl, batch)?,
            QOp::Lut(l) => {
                if l.table.len() != 256 {
                    return Err(Error::Shape(format!(
                        "simulate: node {name} table is not 256 codes"
                    )));
                }
                Value {
                    data: cur.iter().map(|&q| l.table[q as usize]).collect(),
                    dims: x.dims,
                    zero_point: code_of(l.output.zero_point)?,
                }
            }
            QOp::Flatten => Value {
                data: cur.clone(),
                dims: (c * h * w, 1, 1),
                zero_point: x.zero_point,
            },
            QOp::MaxPool2d(p) => {
                let (oh, ow) = pool_out(name, h, w, p.kernel, p.stride)?;
                let data = pool(cur, batch * c, (h, w), (oh, ow), p.kernel, p.stride, |v| {
                    v.iter().copied().max().unwrap_or(0)
                });
                Value {
                    data,
                    dims: (c, oh, ow),
                    zero_point: x.zero_point,
                }
            }
            QOp::AvgPool2d(p) => {
                let (oh, ow) = pool_out(name, h, w, p.kernel, p.stride)?;
                let (_, qmax) = qparams::act_code_range(p.bits)?;
                let area = (p.kernel.0 * p.kernel.1) as f64;
                let rq = Requant::from_real(p.input.scale as f64 / (p.output.scale as f64 * area))?;
                let (zp_in, zp_out) = (p.input.zero_point, p.output.zero_point);
                let data = pool(cur, batch * c, (h, w), (oh, ow), p.kernel, p.stride, |v| {
                    let sum: i32 = v.iter().map(|&q| q as i32 - zp_in).sum();
                    qparams::requantize(sum, rq, zp_out, 0, qmax) as u8
                });
                Value {
                    data,
                    dims: (c, oh, ow),
                    zero_point: code_of(zp_out)?,
                }
            }
            QOp::Dense(d) => {
                if d.in_features != c * h * w {
                    return Err(Error::Shape(format!(
                        "simulate: node {name} expects {} features, got {}",
                        d.in_features,
                        c * h * w
                    )));
                }
                let acc = dense_acc(d, cur, batch, name)?;
                let m = Matrix {
                    name,
                    stage: &d.output,
                    scales: &d.weight_scales,
                    s_in: d.input.scale,
                    dims: (d.out_features, 1, 1),
                };
                match m.finish(acc, li + 1 == n_nodes)? {
                    Finished::Codes(v) => v,
                    Finished::Logits(final_acc, logits) => {
                        return Ok(Simulation {
                            codes,
                            final_acc,
                            logits,
                        })
                    }
                }
            }
            QOp::Conv2d(cv) => {
                if cv.in_channels != c {
                    return Err(Error::Shape(format!(
                        "simulate: node {name} expects {} channels, got {c}",
                        cv.in_channels
                    )));
                }
                let (acc, oh, ow) = conv_acc(cv, cur, batch, (h, w), name)?;
                let m = Matrix {
                    name,
                    stage: &cv.output,
                    scales: &cv.weight_scales,
                    s_in: cv.input.scale,
                    dims: (cv.out_channels, oh, ow),
                };
                match m.finish(acc, li + 1 == n_nodes)? {
                    Finished::Codes(v) => v,
                    Finished::Logits(final_acc, logits) => {
                        return Ok(Simulation {
                            codes,
                            final_acc,
                            logits,
                        })
                    }
                }
            }
        };
        if keep_codes {
            codes.push(out.data.clone());
        }
        values.push(Some(out));
        if !keep_codes {
            for (v, slot) in values.iter_mut().enumerate() {
                if last_read.get(v) == Some(&li) {
                    *slot = None;
                }
            }
        }
    }
    Err(Error::Shape(
        "simulate: the model does not end in a logits node".into(),
    ))
}

/// `rshift_round(v, n)`: `v` for `n == 0`, else `(v + 2^(n-1)) >> n` (the rounding of every fixed-point rescale).
fn rshift_round(v: i64, n: u32) -> i64 {
    if n == 0 {
        v
    } else {
        (v + (1i64 << (n - 1))) >> n
    }
}

/// A zero point as the `u8` code it must be.
fn code_of(zp: i32) -> Result<u8> {
    u8::try_from(zp)
        .map_err(|_| Error::Shape(format!("simulate: zero point {zp} is not a u8 code")))
}

/// Residual add: both inputs onto the output scale in one fixed-point sum, one rounding.
fn add(name: &str, a: &lowbit_runtime::model::QAdd, args: &[&Value]) -> Result<Value> {
    let [x, y] = args else {
        return Err(Error::Shape(format!(
            "simulate: add node {name} needs 2 inputs"
        )));
    };
    if x.dims != y.dims || x.data.len() != y.data.len() {
        return Err(Error::Shape(format!(
            "simulate: add node {name} inputs differ in shape"
        )));
    }
    let [qa, qb] = a.inputs;
    let p = qparams::AddParams::from_scales(qa.scale, qb.scale, a.output.scale)?;
    let (_, qmax) = qparams::act_code_range(a.bits)?;
    let qmin = if a.relu { a.output.zero_point } else { 0 };
    let data = x
        .data
        .iter()
        .zip(&y.data)
        .map(|(&u, &v)| {
            let s = (i64::from(u) - i64::from(qa.zero_point)) * i64::from(p.multiplier_a)
                + (i64::from(v) - i64::from(qb.zero_point)) * i64::from(p.multiplier_b);
            (i64::from(a.output.zero_point) + rshift_round(s, p.shift))
                .clamp(i64::from(qmin), i64::from(qmax)) as u8
        })
        .collect();
    Ok(Value {
        data,
        dims: x.dims,
        zero_point: code_of(a.output.zero_point)?,
    })
}

/// Channel concatenation, each input rescaled onto the output's parameters (copied when they are equal).
fn concat(
    name: &str,
    cat: &lowbit_runtime::model::QConcat,
    args: &[&Value],
    batch: usize,
) -> Result<Value> {
    let (_, qmax) = qparams::act_code_range(cat.bits)?;
    let (_, h, w) = args[0].dims;
    if cat.inputs.len() != args.len() || args.iter().any(|v| (v.dims.1, v.dims.2) != (h, w)) {
        return Err(Error::Shape(format!(
            "simulate: concat node {name} inputs do not fit"
        )));
    }
    let channels: usize = args.iter().map(|v| v.dims.0).sum();
    let mut data = Vec::with_capacity(batch * channels * h * w);
    for b in 0..batch {
        for (v, &qp) in args.iter().zip(&cat.inputs) {
            let n = v.dims.0 * h * w;
            let sample = &v.data[b * n..(b + 1) * n];
            if qp == cat.output {
                data.extend_from_slice(sample);
                continue;
            }
            let r = qparams::Rescale::from_scales(qp.scale, cat.output.scale)?;
            data.extend(sample.iter().map(|&q| {
                let d = (i64::from(q) - i64::from(qp.zero_point)) * i64::from(r.multiplier);
                (i64::from(cat.output.zero_point) + rshift_round(d, r.shift))
                    .clamp(0, i64::from(qmax)) as u8
            }));
        }
    }
    Ok(Value {
        data,
        dims: (channels, h, w),
        zero_point: code_of(cat.output.zero_point)?,
    })
}

/// Zero padding with the value's zero point (real 0).
fn pad(x: &Value, p: &lowbit_runtime::model::QPad, batch: usize) -> Result<Value> {
    let (c, h, w) = x.dims;
    let (oc, oh, ow) = (
        c + p.channels.0 + p.channels.1,
        h + p.rows.0 + p.rows.1,
        w + p.cols.0 + p.cols.1,
    );
    let code = x.zero_point;
    let mut data = vec![code; batch * oc * oh * ow];
    for b in 0..batch {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let src = ((b * c + ch) * h + y) * w + xx;
                    let dst =
                        ((b * oc + ch + p.channels.0) * oh + y + p.rows.0) * ow + xx + p.cols.0;
                    data[dst] = x.data[src];
                }
            }
        }
    }
    Ok(Value {
        data,
        dims: (oc, oh, ow),
        zero_point: code,
    })
}

/// Strided slice on channels, rows and columns.
fn slice(name: &str, x: &Value, sl: &lowbit_runtime::model::QSlice, batch: usize) -> Result<Value> {
    let (c, h, w) = x.dims;
    let axis = |[start, end, step]: [usize; 3], len: usize| -> Result<Vec<usize>> {
        if step == 0 || start >= end || end > len {
            return Err(Error::Shape(format!(
                "simulate: slice node {name} range does not fit"
            )));
        }
        Ok((start..end).step_by(step).collect())
    };
    let (cs, ys, xs) = (axis(sl.channels, c)?, axis(sl.rows, h)?, axis(sl.cols, w)?);
    let mut data = Vec::with_capacity(batch * cs.len() * ys.len() * xs.len());
    for b in 0..batch {
        for &ch in &cs {
            for &y in &ys {
                for &xx in &xs {
                    data.push(x.data[((b * c + ch) * h + y) * w + xx]);
                }
            }
        }
    }
    Ok(Value {
        data,
        dims: (cs.len(), ys.len(), xs.len()),
        zero_point: x.zero_point,
    })
}

/// The output stage of a Dense or Conv2d node.
struct Matrix<'a> {
    name: &'a str,
    stage: &'a OutputStage,
    scales: &'a [f32],
    s_in: f32,
    /// Output (channels, height, width).
    dims: (usize, usize, usize),
}

/// What a matrix node's accumulators become.
enum Finished {
    Codes(Value),
    /// Accumulators and logits of the output node.
    Logits(Vec<i32>, Vec<f32>),
}

impl Matrix<'_> {
    fn finish(&self, acc: Vec<i32>, is_last: bool) -> Result<Finished> {
        let name = self.name;
        let (c, oh, ow) = self.dims;
        let positions = oh * ow;
        // Channel of element idx within a sample laid out [C, positions].
        let per_sample = c * positions;
        let channel = |idx: usize| (idx % per_sample.max(1)) / positions.max(1);
        match self.stage {
            OutputStage::Logits => {
                if !is_last {
                    return Err(Error::Shape(format!(
                        "simulate: node {name} emits logits but is not last"
                    )));
                }
                let logits = acc
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| a as f32 * (self.s_in * scale_of(self.scales, channel(i))))
                    .collect();
                Ok(Finished::Logits(acc, logits))
            }
            OutputStage::Requantize {
                qparams: qp,
                bits,
                relu,
                requant,
                max_code,
            } => {
                let (lo, full) = qparams::act_code_range(*bits)?;
                let qmin = if *relu { lo.max(qp.zero_point) } else { lo };
                let hi = max_code.map_or(full, |m| m.min(full));
                if requant.is_empty() || requant.len() != 1 && requant.len() != c {
                    return Err(Error::Shape(format!(
                        "simulate: node {name} has {} requantization multipliers for {c} channels",
                        requant.len()
                    )));
                }
                let data = acc
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| {
                        let rq = if requant.len() == 1 {
                            requant[0]
                        } else {
                            requant[channel(i)]
                        };
                        qparams::requantize(a, rq, qp.zero_point, qmin, hi) as u8
                    })
                    .collect();
                Ok(Finished::Codes(Value {
                    data,
                    dims: self.dims,
                    zero_point: code_of(qp.zero_point)?,
                }))
            }
        }
    }
}

fn pool_out(
    li: &str,
    h: usize,
    w: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
) -> Result<(usize, usize)> {
    match (
        window_len(h, kernel.0, stride.0, 0),
        window_len(w, kernel.1, stride.1, 0),
    ) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(Error::Shape(format!(
            "simulate: node {li} window {kernel:?} does not fit {h}x{w}"
        ))),
    }
}

/// Pools every `(h, w)` plane of `x` (`planes` of them) with window `kernel` and `stride`, no padding.
fn pool(
    x: &[u8],
    planes: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    f: impl Fn(&[u8]) -> u8,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(planes * oh * ow);
    let mut window = Vec::with_capacity(kernel.0 * kernel.1);
    for p in 0..planes {
        for oy in 0..oh {
            for ox in 0..ow {
                window.clear();
                for ky in 0..kernel.0 {
                    for kx in 0..kernel.1 {
                        window.push(x[p * h * w + (oy * stride.0 + ky) * w + ox * stride.1 + kx]);
                    }
                }
                out.push(f(&window));
            }
        }
    }
    out
}

/// `acc[b, o, oy, ox] = bias[o] + sum_{ic, ky, kx} (x[b, ic, iy, ix] - zp_in) * w[o][ic][ky][kx]` over the
/// in-bounds `iy = oy*sh + ky - ph`, `ix = ox*sw + kx - pw`, checked against i32.
fn conv_acc(
    cv: &QConv2d,
    x: &[u8],
    batch: usize,
    (h, w): (usize, usize),
    li: &str,
) -> Result<(Vec<i32>, usize, usize)> {
    let (kh, kw) = cv.kernel;
    let (sh, sw) = cv.stride;
    let (ph, pw) = cv.padding;
    let (ic_n, oc_n) = (cv.in_channels, cv.out_channels);
    let g = cv.groups;
    if g == 0 || !ic_n.is_multiple_of(g) || !oc_n.is_multiple_of(g) {
        return Err(Error::Shape(format!(
            "simulate: node {li} has {g} groups for {ic_n} -> {oc_n} channels"
        )));
    }
    // Each output channel reads the `ic_g` input channels of its group.
    let (ic_g, oc_g) = (ic_n / g, oc_n / g);
    let k = ic_g * kh * kw;
    let (oh, ow) = match (window_len(h, kh, sh, ph), window_len(w, kw, sw, pw)) {
        (Some(a), Some(b)) => (a, b),
        _ => {
            return Err(Error::Shape(format!(
                "simulate: node {li} kernel {:?} does not fit {h}x{w}",
                cv.kernel
            )))
        }
    };
    if cv.bias.len() != oc_n || cv.weights.rows != oc_n || cv.weights.cols != k {
        return Err(Error::Shape(format!(
            "simulate: node {li} has {} biases and {}x{} weights for {oc_n}x{k}",
            cv.bias.len(),
            cv.weights.rows,
            cv.weights.cols
        )));
    }
    let wts = unpack(&cv.weights)?;
    let zp = cv.input.zero_point;
    let in_sample = ic_n * h * w;
    let out_sample = oc_n * oh * ow;
    // An output channel whose worst case `|bias| + sum |w| * max|x - zp|` fits in i32 is summed in i32 (every
    // partial sum is bounded by it, so that is exact); any other in i64, checked at the end.
    let max_dx = i64::from(zp).abs().max(i64::from(255 - zp).abs());
    let fits_i32: Vec<bool> = (0..oc_n)
        .map(|o| {
            let taps: i64 = wts[o * k..(o + 1) * k]
                .iter()
                .map(|&q| i64::from(q).abs() * max_dx)
                .sum();
            i64::from(cv.bias[o]).abs() + taps <= i64::from(i32::MAX)
        })
        .collect();
    let geometry = Columns {
        ic_g,
        kernel: (kh, kw),
        stride: (sh, sw),
        padding: (ph, pw),
        in_hw: (h, w),
        out_hw: (oh, ow),
    };
    let p = oh * ow;
    // Per sample (in parallel), per group: the group's input codes minus the zero point laid out as `k` rows of
    // the `p` output positions (padding reads (zp - zp) = 0); then per output channel, one tap at a time, the
    // tap's weight times its row added over the whole output plane (long rows: the loop vectorizes).
    let samples: Vec<Result<Vec<i32>>> = (0..batch)
        .into_par_iter()
        .map(|b| {
            let xs = &x[b * in_sample..(b + 1) * in_sample];
            let mut cols = vec![0i32; k * p];
            let mut out = Vec::with_capacity(out_sample);
            let (mut narrow, mut wide) = (vec![0i32; p], Vec::new());
            for o in 0..oc_n {
                if o % oc_g == 0 {
                    geometry.fill(xs, zp, o / oc_g, &mut cols);
                }
                let row = &wts[o * k..(o + 1) * k];
                if fits_i32[o] {
                    narrow.fill(cv.bias[o]);
                    accumulate_i32(row, &cols, &mut narrow);
                    out.extend_from_slice(&narrow);
                    continue;
                }
                wide.clear();
                wide.resize(p, i64::from(cv.bias[o]));
                accumulate(row, &cols, &mut wide);
                for &v in &wide {
                    out.push(i32::try_from(v).map_err(|_| {
                        Error::Shape(format!("simulate: node {li} accumulator {v} overflows i32"))
                    })?);
                }
            }
            Ok(out)
        })
        .collect();
    let mut acc = Vec::with_capacity(batch * out_sample);
    for s in samples {
        acc.extend(s?);
    }
    Ok((acc, oh, ow))
}

/// A convolution's geometry, for [`conv_acc`]'s columns.
struct Columns {
    ic_g: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    in_hw: (usize, usize),
    out_hw: (usize, usize),
}

impl Columns {
    /// Writes group `group`'s columns of one sample's codes `xs` into `cols`: row `(ic * kh + ky) * kw + kx`
    /// holds `x[ic, oy * sh + ky - ph, ox * sw + kx - pw] - zp` at position `oy * ow + ox`, 0 outside the map.
    fn fill(&self, xs: &[u8], zp: i32, group: usize, cols: &mut [i32]) {
        let ((kh, kw), (sh, sw), (ph, pw)) = (self.kernel, self.stride, self.padding);
        let ((h, w), (oh, ow)) = (self.in_hw, self.out_hw);
        let p = oh * ow;
        for ic in 0..self.ic_g {
            let plane = &xs[(group * self.ic_g + ic) * h * w..][..h * w];
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = &mut cols[((ic * kh + ky) * kw + kx) * p..][..p];
                    // Output columns whose input column ox * sw + kx - pw lies in [0, w).
                    let lo = pw.saturating_sub(kx).div_ceil(sw).min(ow);
                    let hi = match (w + pw).checked_sub(kx + 1) {
                        Some(last) => (last / sw + 1).clamp(lo, ow),
                        None => lo,
                    };
                    for oy in 0..oh {
                        let dst = &mut row[oy * ow..(oy + 1) * ow];
                        let Some(iy) = (oy * sh + ky).checked_sub(ph).filter(|&iy| iy < h) else {
                            dst.fill(0);
                            continue;
                        };
                        dst[..lo].fill(0);
                        dst[hi..].fill(0);
                        if lo == hi {
                            continue;
                        }
                        let src = &plane[iy * w + lo * sw + kx - pw..(iy + 1) * w];
                        for (d, &v) in dst[lo..hi].iter_mut().zip(src.iter().step_by(sw)) {
                            *d = i32::from(v) - zp;
                        }
                    }
                }
            }
        }
    }
}

/// [`accumulate`] in i32, the common case: compiled for AVX2 too, run when fake-quant's tier is AVX2 (so
/// `LOWBIT_ISA=reference` turns it off with the other families), since the baseline target (SSE2) has no 32-bit
/// lane multiply and emulates it in eight instructions. Integer sums are exact, so the instruction set cannot
/// change a result; this is codegen for the same safe code, not a second kernel.
fn accumulate_i32(row: &[i8], cols: &[i32], plane: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// The CPU must support AVX2.
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(row: &[i8], cols: &[i32], plane: &mut [i32]) {
            accumulate(row, cols, plane)
        }
        if Family::FakeQuant.tier() == Isa::Avx2 {
            // SAFETY: fake-quant's tier is avx2 only when the CPU has AVX2 (`kernel_tiers`); safe code inside.
            return unsafe { avx2(row, cols, plane) };
        }
    }
    accumulate(row, cols, plane)
}

/// `plane += sum_t row[t] * cols[t]` over the taps `t` (rows of `cols`, each as long as `plane`); zero weights
/// are skipped (ternary and binary layers have many).
#[inline(always)]
fn accumulate<T>(row: &[i8], cols: &[i32], plane: &mut [T])
where
    T: Copy + From<i32> + std::ops::AddAssign + std::ops::Mul<Output = T>,
{
    let p = plane.len();
    for (&q, col) in row.iter().zip(cols.chunks_exact(p)) {
        if q == 0 {
            continue;
        }
        let q = T::from(i32::from(q));
        for (d, &v) in plane.iter_mut().zip(col) {
            *d += T::from(v) * q;
        }
    }
}

fn scale_of(scales: &[f32], c: usize) -> f32 {
    if scales.len() == 1 {
        scales[0]
    } else {
        scales.get(c).copied().unwrap_or(f32::NAN)
    }
}

/// `acc[b, c] = bias[c] + sum_k (x[b, k] - zp_in) * w[c][k]`, checked against i32.
fn dense_acc(d: &QDense, x: &[u8], batch: usize, li: &str) -> Result<Vec<i32>> {
    let (k, n) = (d.in_features, d.out_features);
    if d.bias.len() != n || d.weights.rows != n || d.weights.cols != k {
        return Err(Error::Shape(format!(
            "simulate: node {li} has {} biases and {}x{} weights for {n}x{k}",
            d.bias.len(),
            d.weights.rows,
            d.weights.cols
        )));
    }
    let w = unpack(&d.weights)?;
    let zp = d.input.zero_point as i64;
    let mut acc = Vec::with_capacity(batch * n);
    for xs in x.chunks_exact(k.max(1)).take(batch) {
        for c in 0..n {
            let row = &w[c * k..(c + 1) * k];
            let s: i64 = xs
                .iter()
                .zip(row)
                .map(|(&a, &q)| (a as i64 - zp) * q as i64)
                .sum::<i64>()
                + d.bias[c] as i64;
            acc.push(i32::try_from(s).map_err(|_| {
                Error::Shape(format!("simulate: node {li} accumulator {s} overflows i32"))
            })?);
        }
    }
    Ok(acc)
}

/// Decodes all codes, restating pack.rs's documented bit order (not calling its decoder, on purpose).
fn unpack(w: &PackedWeights) -> Result<Vec<i8>> {
    let per = match w.packing {
        Packing::I8 => 1,
        Packing::I4x2 => 2,
        Packing::I2x4 => 4,
        Packing::B1x8 => 8,
    };
    let row_bytes = w.cols.div_ceil(per);
    if w.data.len() != w.rows * row_bytes {
        return Err(Error::Shape(format!(
            "simulate: packed weights hold {} bytes, expected {}",
            w.data.len(),
            w.rows * row_bytes
        )));
    }
    let mut out = Vec::with_capacity(w.rows * w.cols);
    for r in 0..w.rows {
        let row = &w.data[r * row_bytes..(r + 1) * row_bytes];
        for c in 0..w.cols {
            let byte = row[c / per];
            let j = c % per;
            let code = match w.packing {
                Packing::I8 => byte as i8 as i32,
                Packing::I4x2 => {
                    let v = ((byte >> (4 * j)) & 0xF) as i32;
                    if v >= 8 {
                        v - 16
                    } else {
                        v
                    }
                }
                Packing::I2x4 => {
                    let v = ((byte >> (2 * j)) & 0x3) as i32;
                    if v >= 2 {
                        v - 4
                    } else {
                        v
                    }
                }
                Packing::B1x8 => {
                    if (byte >> j) & 1 == 1 {
                        1
                    } else {
                        -1
                    }
                }
            };
            out.push(code as i8);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "simulate_tests.rs"]
mod tests;
