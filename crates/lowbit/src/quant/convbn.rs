//! QAT convolution with a batch norm folded in while training on batch statistics (Jacob et al. 2018, sec. 3.2
//! and fig. C.8; Krishnamoorthi 2018, sec. 3.2), the formulation of PyTorch's `ConvBn2d` QAT modules.
//!
//! Per output channel `c`, with the running variance `v_c` of *before* the step:
//! `f_c = gamma_c / sqrt(v_c + eps)`, `y = conv(x, fq(W * f))`, `z = y / f + b`,
//! `out = BN_batch(z) = gamma * (z - mean_B) / sqrt(var_B + eps) + beta` (running statistics updated from `z`).
//!
//! Why: the weights are quantized exactly as the engine will hold them (`W * f`, the folded weight), while the
//! output is normalised with the *batch* statistics, so training sees honest, well-conditioned activations and
//! the running statistics track the quantized network. Dividing by `f` undoes the scale folded into the
//! weights before the batch norm re-applies `gamma`; without quantization `conv(x, W f) / f = conv(x, W)`.
//! In inference (and after the statistics are frozen) the layer is exactly the folded convolution:
//! weight `fq(W * f)`, bias `beta + (b - mean) * f`, with running statistics; conversion materialises that
//! convolution ([`ConvBn2d::folded_conv`]) and goes through the ordinary Conv2d path.
use crate::error::{Error, Result};
use crate::nn::{BatchNorm2d, Conv2d, Param};
use crate::quant::WeightQuantizer;
use crate::state::{StateValue, StateVisitor, Stateful};
use crate::tensor::Tensor;

/// A Conv2d followed by a BatchNorm2d, trained as one QAT layer with the batch norm folded into the quantized
/// weights (see the module docs). Parameters, in order: conv weight, conv bias, gamma, beta, then the weight
/// quantizer's learned step (LSQ) if any.
#[derive(Debug, Clone)]
pub struct ConvBn2d {
    /// The float convolution: shadow weights `W`, bias `b`, geometry, and the weight quantizer (applied to the
    /// folded weights `W * f`, never to `W`).
    pub conv: Conv2d,
    /// The batch norm: gamma, beta, running statistics, eps, momentum; `bn.frozen` selects the running
    /// statistics in training too.
    pub bn: BatchNorm2d,
    /// Freeze the batch-norm statistics after this many training steps (Krishnamoorthi 2018, sec. 3.2);
    /// `None` keeps batch statistics for the whole training.
    pub freeze_after_steps: Option<usize>,
    /// Training forward passes seen so far.
    pub steps: usize,
    /// Scratch: the folded weights, swapped into `conv` while it computes (valid after a forward pass).
    folded_weight: Vec<f32>,
    /// Scratch: the bias handed to `conv` (zeros in training, the folded bias in inference).
    folded_bias: Vec<f32>,
    /// `f_c` of the last training forward.
    fold_scale: Vec<f32>,
    /// `1 / sqrt(v_c + eps)` of the last training forward (`df_c / dgamma_c`).
    fold_inv_std: Vec<f32>,
    /// Convolution output `y` (before `/ f`) of the last training forward, `[B, C, OH, OW]`.
    conv_out: Vec<f32>,
}

/// `f_c = gamma_c / sqrt(v_c + eps)` in f64, the expression [`Conv2d::fold_batchnorm`] uses.
fn fold_factor(bn: &BatchNorm2d, c: usize) -> f64 {
    f64::from(bn.gamma[c]) / (f64::from(bn.running_var[c]) + f64::from(bn.eps)).sqrt()
}

impl ConvBn2d {
    /// Joins a convolution and the batch norm that follows it. Fails unless the channel counts agree.
    pub fn new(conv: Conv2d, bn: BatchNorm2d, freeze_after_steps: Option<usize>) -> Result<Self> {
        if bn.channels != conv.out_channels {
            return Err(Error::Shape(format!(
                "cannot fold a batch norm of {} channels into a conv with {} outputs",
                bn.channels, conv.out_channels
            )));
        }
        Ok(Self {
            conv,
            bn,
            freeze_after_steps,
            steps: 0,
            folded_weight: Vec::new(),
            folded_bias: Vec::new(),
            fold_scale: Vec::new(),
            fold_inv_std: Vec::new(),
            conv_out: Vec::new(),
        })
    }

    /// The weight quantizer (of the folded weights), if any.
    pub fn weight_quant(&self) -> Option<&WeightQuantizer> {
        self.conv.weight_quant.as_ref()
    }

    /// Writes `W * f` (running statistics) into `folded_weight` and, when `with_bias`, the folded bias
    /// `(b - mean) * f + beta` into `folded_bias` (else zeros); bit for bit what [`Conv2d::fold_batchnorm`]
    /// computes.
    fn fold_running(&mut self, with_bias: bool) {
        let (oc, k) = (self.conv.out_channels, self.conv.k());
        self.folded_weight.resize(self.conv.weight.len(), 0.0);
        self.folded_bias.resize(oc, 0.0);
        for c in 0..oc {
            let f = fold_factor(&self.bn, c);
            for (o, &w) in self.folded_weight[c * k..(c + 1) * k]
                .iter_mut()
                .zip(&self.conv.weight[c * k..(c + 1) * k])
            {
                *o = (f64::from(w) * f) as f32;
            }
            self.folded_bias[c] = if with_bias {
                ((f64::from(self.conv.bias[c]) - f64::from(self.bn.running_mean[c])) * f
                    + f64::from(self.bn.beta[c])) as f32
            } else {
                0.0
            };
        }
    }

    /// Runs `conv` with the folded weights and bias swapped in (so its quantizer sees `W * f` and its cache is
    /// reused), then swaps the float parameters back, error or not.
    fn with_folded<T>(&mut self, run: impl FnOnce(&mut Conv2d) -> T) -> T {
        std::mem::swap(&mut self.conv.weight, &mut self.folded_weight);
        std::mem::swap(&mut self.conv.bias, &mut self.folded_bias);
        let out = run(&mut self.conv);
        std::mem::swap(&mut self.conv.weight, &mut self.folded_weight);
        std::mem::swap(&mut self.conv.bias, &mut self.folded_bias);
        out
    }

    /// Forward pass. Training: batch statistics (or the running ones once frozen), see the module docs.
    /// Inference: exactly the folded convolution with running statistics.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train {
            self.fold_running(true);
            return self.with_folded(|conv| conv.forward(x, false));
        }
        if self.freeze_after_steps.is_some_and(|n| self.steps >= n) {
            self.bn.frozen = true;
        }
        self.steps += 1;
        let oc = self.conv.out_channels;
        self.fold_running(false);
        self.fold_scale = (0..oc).map(|c| fold_factor(&self.bn, c) as f32).collect();
        self.fold_inv_std = (0..oc)
            .map(|c| {
                (1.0 / (f64::from(self.bn.running_var[c]) + f64::from(self.bn.eps)).sqrt()) as f32
            })
            .collect();
        let y = self.with_folded(|conv| conv.forward(x, true))?;
        let p: usize = y.shape[2..].iter().product();
        let mut z = y.data.clone();
        for (i, plane) in z.chunks_exact_mut(p.max(1)).enumerate() {
            let c = i % oc;
            let (f, b) = (self.fold_scale[c], self.conv.bias[c]);
            for v in plane {
                // gamma = 0 gives f = 0 and zero folded weights: z = b, as the unfolded layer would give.
                *v = if f != 0.0 { *v / f } else { 0.0 } + b;
            }
        }
        self.conv_out = y.data;
        self.bn.forward(&Tensor::new(z, y.shape), true)
    }

    /// Backward pass: sets the gradients of W, b, gamma, beta (and the LSQ step), returns dL/dx.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        self.backward_impl(grad, true)
    }

    /// Backward pass; skips dL/dx (returning an empty tensor) when `need_input_grad` is false.
    ///
    /// Chain: `dz` from the batch norm (batch-statistics formula, or affine when frozen); `db = sum dz`;
    /// `dy = dz / f`; the convolution maps `dy` to `dW_f` through the quantizer (STE / LSQ) and to `dx`;
    /// `dW = dW_f * f`; `df = sum_k dW_f W - sum dz y / f^2`; `dgamma = dgamma_bn + df / sqrt(v + eps)`.
    pub(crate) fn backward_impl(&mut self, grad: &Tensor, need_input_grad: bool) -> Result<Tensor> {
        let oc = self.conv.out_channels;
        if self.fold_scale.len() != oc || self.conv_out.len() != grad.len() {
            return Err(Error::Shape(format!(
                "conv_bn2d: backward with gradient {:?} without a matching training forward",
                grad.shape
            )));
        }
        let dz = self.bn.backward(grad)?;
        let p: usize = dz.shape[2..].iter().product();
        let mut dy = dz.data;
        let mut db = vec![0.0f64; oc];
        let mut df = vec![0.0f64; oc];
        for (i, (plane, yp)) in dy
            .chunks_exact_mut(p.max(1))
            .zip(self.conv_out.chunks_exact(p.max(1)))
            .enumerate()
        {
            let c = i % oc;
            let f = self.fold_scale[c];
            let inv_f = if f != 0.0 { 1.0 / f64::from(f) } else { 0.0 };
            let (mut sdz, mut sdzy) = (0.0f64, 0.0f64);
            for (g, &yv) in plane.iter_mut().zip(yp) {
                sdz += f64::from(*g);
                sdzy += f64::from(*g) * f64::from(yv);
                *g = if f != 0.0 { *g / f } else { 0.0 };
            }
            db[c] += sdz;
            df[c] -= sdzy * inv_f * inv_f;
        }
        let dy = Tensor::new(dy, dz.shape);
        let dx = self.with_folded(|conv| conv.backward_impl(&dy, need_input_grad))?;
        // conv.grad_weight now holds dL/d(W f) (through the quantizer's backward); map it to dL/dW.
        let k = self.conv.k();
        for c in 0..oc {
            let f = self.fold_scale[c];
            let mut s = 0.0f64;
            for (g, &w) in self.conv.grad_weight[c * k..(c + 1) * k]
                .iter_mut()
                .zip(&self.conv.weight[c * k..(c + 1) * k])
            {
                s += f64::from(*g) * f64::from(w);
                *g *= f;
            }
            df[c] += s;
            self.conv.grad_bias[c] = db[c] as f32;
            self.bn.grad_gamma[c] += (df[c] * f64::from(self.fold_inv_std[c])) as f32;
        }
        Ok(dx)
    }

    /// Parameters: conv weight, conv bias, gamma, beta, then the LSQ step of the weight quantizer (initialised
    /// here from the folded weights, so the optimizer sees it from the first step).
    pub fn params_mut(&mut self) -> Vec<Param<'_>> {
        let needs_init = self
            .conv
            .weight_quant
            .as_ref()
            .is_some_and(|q| q.kind() == super::WeightQuantKind::Lsq && q.steps().is_empty());
        if needs_init {
            self.fold_running(false);
            let (oc, k) = (self.conv.out_channels, self.conv.k());
            if let Some(q) = &mut self.conv.weight_quant {
                q.ensure_init(&self.folded_weight, oc, k);
            }
        }
        let conv = &mut self.conv;
        let mut params = vec![
            Param {
                name: "weight",
                value: &mut conv.weight,
                grad: &mut conv.grad_weight,
            },
            Param {
                name: "bias",
                value: &mut conv.bias,
                grad: &mut conv.grad_bias,
            },
        ];
        params.extend(self.bn.params_mut().into_iter().map(|mut p| {
            p.name = if p.name == "weight" { "gamma" } else { "beta" };
            p
        }));
        if let Some(q) = &mut conv.weight_quant {
            params.extend(q.params_mut());
        }
        params
    }

    /// Number of trainable scalars (weights, bias, gamma, beta; quantizer steps excluded as for Conv2d).
    pub fn param_count(&self) -> usize {
        self.conv.weight.len() + self.conv.bias.len() + self.bn.gamma.len() + self.bn.beta.len()
    }

    /// The folded convolution the engine runs: weight `W * f` and bias `(b - mean) * f + beta` with the
    /// running statistics ([`Conv2d::fold_batchnorm`]), carrying this layer's weight quantizer, so its codes
    /// are the codes of `W * f`. Conversion and [`crate::quant::fold_batchnorms`]-style exports use it.
    pub fn folded_conv(&self) -> Result<Conv2d> {
        let c = &self.conv;
        let mut folded = Conv2d::from_weights_grouped(
            c.in_channels,
            c.out_channels,
            c.kernel,
            c.stride,
            c.padding,
            c.groups(),
            c.weight.clone(),
            c.bias.clone(),
        )?;
        folded.fold_batchnorm(&self.bn)?;
        folded.weight_quant.clone_from(&c.weight_quant);
        Ok(folded)
    }
}

impl Stateful for ConvBn2d {
    /// The convolution (`conv`: weights, bias, weight quantizer), the batch norm (`bn`: parameters, running
    /// statistics, frozen flag) and the training-step counter that triggers the statistics freeze.
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        v.part("conv", &mut self.conv)?;
        v.part("bn", &mut self.bn)?;
        v.value("steps", StateValue::Count(&mut self.steps))
    }
}
