//! Grouped convolutions (`groups > 1`): constructors and the two execution paths.
//!
//! - Depthwise (`groups == in_channels`, any channel multiplier): a direct per-channel kernel, see
//!   [`super::depthwise`]. Each group has a single input channel, so an im2col product per group would be a
//!   degenerate `[m, kh*kw] x [kh*kw, P]` GEMM.
//! - Otherwise each group is an ordinary convolution of `in_channels/groups` inputs and
//!   `out_channels/groups` outputs over a contiguous channel range (NCHW keeps a group's channels together in
//!   both the input and the output), so the layer runs one plain [`Conv2d`] per group and keeps all of that
//!   path's work (implicit im2col, fixed-group weight-gradient sums, no nested threading). The cost is a copy
//!   of each group's input and output channels per pass, small beside the products.
use super::{glorot, Conv2d};
use crate::error::{Error, Result};
use crate::nn::activation::reshape_buffer;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// The group count of a grouped layer (`groups > 1`), with the scratch and caches of its execution path.
#[derive(Debug, Clone)]
pub(super) struct GroupState {
    /// Channel groups, at least 2.
    pub(super) groups: usize,
    /// One plain convolution per group (general path); their weights are copied from the layer's effective
    /// weights at every forward.
    subs: Vec<Conv2d>,
    /// One group's channels of the input (forward) or of the output gradient (backward).
    slice: Tensor,
    /// Caches of the depthwise path.
    pub(super) depthwise: super::depthwise::Cache,
}

impl GroupState {
    fn new(groups: usize) -> Self {
        Self {
            groups,
            subs: Vec::new(),
            slice: Tensor::default(),
            depthwise: super::depthwise::Cache::default(),
        }
    }
}

/// The state of a grouped layer, or the error of a grouped path reached without one.
pub(super) fn group_state(grouped: &mut Option<Box<GroupState>>) -> Result<&mut GroupState> {
    grouped
        .as_deref_mut()
        .ok_or_else(|| Error::Shape("conv2d: grouped path of an ungrouped layer".into()))
}

/// Sets `dst` to `[B, n, plane]`: channels `[from, from + n)` of every sample of `src` (`[B, c_src, plane]`).
fn gather(src: &Tensor, from: usize, n: usize, dst: &mut Tensor) {
    let [b, c_src, ..] = src.shape[..] else {
        return;
    };
    let plane = src.row_len() / c_src.max(1);
    let mut shape = src.shape.clone();
    shape[1] = n;
    reshape_buffer(dst, &shape);
    for (d, s) in dst
        .data
        .chunks_exact_mut((n * plane).max(1))
        .zip(src.data.chunks_exact((c_src * plane).max(1)))
        .take(b)
    {
        d.copy_from_slice(&s[from * plane..(from + n) * plane]);
    }
}

/// Writes `src` (`[B, n, plane]`) into channels `[from, from + n)` of every sample of `dst` (`[B, c_dst,
/// plane]`).
fn scatter(src: &Tensor, dst: &mut Tensor, from: usize) {
    let n = src.shape.get(1).copied().unwrap_or(0);
    let plane = src.row_len() / n.max(1);
    let c_dst = dst.shape.get(1).copied().unwrap_or(0);
    for (d, s) in dst
        .data
        .chunks_exact_mut((c_dst * plane).max(1))
        .zip(src.data.chunks_exact((n * plane).max(1)))
    {
        d[from * plane..(from + n) * plane].copy_from_slice(s);
    }
}

impl Conv2d {
    /// A grouped convolution with Glorot-uniform weights over the fans one output and one input see
    /// (`fan_in = in/groups * kh*kw`, `fan_out = out/groups * kh*kw`; for `groups == 1` exactly
    /// [`Conv2d::new`]) and zero bias. Fails unless `groups >= 1` divides both channel counts (both >= 1).
    pub fn new_grouped(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        groups: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        check_groups(in_channels, out_channels, groups)?;
        let weight = glorot(in_channels, out_channels, kernel, groups, rng);
        Self::from_weights_grouped(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            groups,
            weight,
            vec![0.0; out_channels],
        )
    }

    /// A depthwise convolution: `channels` inputs, `channels * multiplier` outputs, output channel `oc` reading
    /// input channel `oc / multiplier` (`groups = channels`).
    pub fn depthwise(
        channels: usize,
        multiplier: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        rng: &mut Rng,
    ) -> Result<Self> {
        let out = channels.checked_mul(multiplier).ok_or_else(|| {
            Error::Shape(format!(
                "conv2d: {channels} channels x multiplier {multiplier} overflows"
            ))
        })?;
        Self::new_grouped(channels, out, kernel, stride, padding, channels, rng)
    }

    /// A grouped convolution with the given weights (`[out][in/groups * kh * kw]`) and bias (`[out]`); fails
    /// on a group count that does not divide the channels or on a weight or bias of the wrong length.
    #[allow(clippy::too_many_arguments)]
    pub fn from_weights_grouped(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        groups: usize,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Result<Self> {
        check_groups(in_channels, out_channels, groups)?;
        let want = (in_channels / groups)
            .checked_mul(kernel.0)
            .and_then(|n| n.checked_mul(kernel.1))
            .and_then(|n| n.checked_mul(out_channels));
        if want != Some(weight.len()) || bias.len() != out_channels {
            return Err(Error::Shape(format!(
                "conv2d {in_channels}->{out_channels} {}x{} in {groups} groups: {} weights and {} biases (expected {} and {out_channels})",
                kernel.0,
                kernel.1,
                weight.len(),
                bias.len(),
                want.map_or_else(|| "too many".to_string(), |n| n.to_string()),
            )));
        }
        // Not from_weights: its (debug-asserted) length contract is for one group.
        let mut layer = Self::with_checked_weights(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            weight,
            bias,
        );
        layer.grouped = (groups > 1).then(|| Box::new(GroupState::new(groups)));
        Ok(layer)
    }

    /// Whether this grouped layer takes the depthwise path (one input channel per group).
    fn is_depthwise(&self) -> bool {
        self.groups() == self.in_channels
    }

    /// [`Conv2d::forward_buffered`] of a grouped layer, after the input check and the weight fake-quantization.
    pub(super) fn forward_grouped(&mut self, x: &Tensor, train: bool) -> Result<()> {
        let [b, _, h, w] = x.shape[..] else {
            return Err(Error::Shape(format!("conv2d: input shape {:?}", x.shape)));
        };
        let (oh, ow) = self
            .output_hw(h, w)
            .ok_or_else(|| Error::Shape("conv2d: kernel does not fit".into()))?;
        // Every output element is written below, so the old contents do not matter.
        reshape_buffer(&mut self.output, &[b, self.out_channels, oh, ow]);
        if self.is_depthwise() {
            self.forward_depthwise(x, train)?;
        } else {
            self.forward_groups(x, train)?;
        }
        self.input_shape.clear();
        if train {
            self.input_shape.clone_from(&x.shape);
        }
        Ok(())
    }

    /// Forward of the general grouped path: each group's plain convolution on its channels of `x`.
    fn forward_groups(&mut self, x: &Tensor, train: bool) -> Result<()> {
        let (g, k) = (self.groups(), self.k());
        let (cig, ocg) = (self.in_channels / g, self.out_channels / g);
        let st = group_state(&mut self.grouped)?;
        let fits = |s: &Conv2d| {
            (s.in_channels, s.out_channels, s.kernel, s.stride, s.padding)
                == (cig, ocg, self.kernel, self.stride, self.padding)
        };
        if st.subs.len() != g || !st.subs.iter().all(fits) {
            st.subs = (0..g)
                .map(|_| {
                    let (w, b) = (vec![0.0; ocg * k], vec![0.0; ocg]);
                    Conv2d::from_weights(cig, ocg, self.kernel, self.stride, self.padding, w, b)
                })
                .collect();
        }
        let wt = if self.weight_quant.is_some() {
            &self.weight_q
        } else {
            &self.weight
        };
        for (gi, sub) in st.subs.iter_mut().enumerate() {
            sub.weight
                .copy_from_slice(&wt[gi * ocg * k..(gi + 1) * ocg * k]);
            sub.bias
                .copy_from_slice(&self.bias[gi * ocg..(gi + 1) * ocg]);
            gather(x, gi * cig, cig, &mut st.slice);
            sub.forward_buffered(&st.slice, train)?;
            scatter(sub.output(), &mut self.output, gi * ocg);
        }
        Ok(())
    }

    /// [`Conv2d::backward_buffered`] of a grouped layer.
    pub(super) fn backward_grouped(&mut self, grad: &Tensor, need_input_grad: bool) -> Result<()> {
        let [b, c_in, h, w] = self.input_shape[..] else {
            return Err(Error::Shape(
                "conv2d: backward without a training forward pass".into(),
            ));
        };
        let (oh, ow) = self
            .output_hw(h, w)
            .ok_or_else(|| Error::Shape("conv2d: cached shape does not fit".into()))?;
        if grad.shape != [b, self.out_channels, oh, ow] {
            return Err(Error::Shape(format!(
                "conv2d: backward with gradient {:?} after forward of {:?}",
                grad.shape, self.input_shape
            )));
        }
        if self.weight_quant.is_some() {
            self.grad_weight_q.resize(self.weight.len(), 0.0);
        }
        if need_input_grad {
            // Every element is written below.
            reshape_buffer(&mut self.input_grad, &[b, c_in, h, w]);
        }
        if self.is_depthwise() {
            self.backward_depthwise(grad, need_input_grad)?;
        } else {
            self.backward_groups(grad, need_input_grad)?;
        }
        if let Some(q) = &mut self.weight_quant {
            self.grad_weight.fill(0.0);
            q.backward(&self.weight, &self.grad_weight_q, &mut self.grad_weight);
        }
        Ok(())
    }

    /// Backward of the general grouped path: each group's plain convolution on its channels of `grad`, after
    /// [`Conv2d::backward_grouped`]'s checks.
    fn backward_groups(&mut self, grad: &Tensor, need_input_grad: bool) -> Result<()> {
        let (g, k) = (self.groups(), self.k());
        let (cig, ocg) = (self.in_channels / g, self.out_channels / g);
        let dw = if self.weight_quant.is_some() {
            &mut self.grad_weight_q
        } else {
            &mut self.grad_weight
        };
        let st = group_state(&mut self.grouped)?;
        if st.subs.len() != g {
            return Err(Error::Shape(
                "conv2d: backward without a training forward pass".into(),
            ));
        }
        for (gi, sub) in st.subs.iter_mut().enumerate() {
            gather(grad, gi * ocg, ocg, &mut st.slice);
            sub.backward_buffered(&st.slice, need_input_grad)?;
            dw[gi * ocg * k..(gi + 1) * ocg * k].copy_from_slice(&sub.grad_weight);
            self.grad_bias[gi * ocg..(gi + 1) * ocg].copy_from_slice(&sub.grad_bias);
            if need_input_grad {
                scatter(sub.input_grad(), &mut self.input_grad, gi * cig);
            }
        }
        Ok(())
    }
}

/// Checks that `groups` divides both channel counts (all at least 1).
fn check_groups(in_channels: usize, out_channels: usize, groups: usize) -> Result<()> {
    if groups == 0
        || in_channels == 0
        || out_channels == 0
        || !in_channels.is_multiple_of(groups)
        || !out_channels.is_multiple_of(groups)
    {
        return Err(Error::Shape(format!(
            "conv2d {in_channels}->{out_channels}: {groups} groups do not divide both channel counts"
        )));
    }
    Ok(())
}
