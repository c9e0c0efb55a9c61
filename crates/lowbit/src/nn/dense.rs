//! Fully connected layer `y = x W^T + b`, optionally with fake-quantized weights.
use super::activation::reshape_buffer;
use super::gemm::{sgemm, MatRef};
use super::kernels::{gemm_abt, gemm_atb};
use super::Param;
use crate::error::{Error, Result};
use crate::quant::WeightQuantizer;
use crate::rng::Rng;
use crate::state::{StateValue, StateVisitor, Stateful};
use crate::tensor::Tensor;

/// Fully connected layer. Input `[B, in_features]` (or any `[B, ...]` whose trailing size is `in_features`),
/// output `[B, out_features]`.
#[derive(Debug, Clone)]
pub struct Dense {
    /// Input size K.
    pub in_features: usize,
    /// Output size N.
    pub out_features: usize,
    /// Float (shadow) weights, `[out_features, in_features]` row-major: row = output channel.
    pub weight: Vec<f32>,
    /// Bias, `[out_features]`.
    pub bias: Vec<f32>,
    /// Fake-quantizer applied to `weight` before the product (QAT); `None` trains in plain f32.
    pub weight_quant: Option<WeightQuantizer>,
    /// dL/dweight of the last backward pass (w.r.t. the float shadow weights).
    pub grad_weight: Vec<f32>,
    /// dL/dbias of the last backward pass.
    pub grad_bias: Vec<f32>,
    /// Fake-quantized weights used by the last forward pass (empty when `weight_quant` is `None`).
    weight_q: Vec<f32>,
    /// dL/dweight_q, only used when `weight_quant` is `Some`.
    grad_weight_q: Vec<f32>,
    /// Input of the last training forward pass, needed for dW.
    input: Tensor,
    /// Output of the last forward pass (reused from step to step).
    output: Tensor,
    /// dL/dinput of the last backward pass (reused from step to step).
    input_grad: Tensor,
}

impl Dense {
    /// Glorot-uniform weights (limit `sqrt(6 / (in + out))`, as Keras' default) and zero bias.
    pub fn new(in_features: usize, out_features: usize, rng: &mut Rng) -> Self {
        let limit = (6.0 / (in_features + out_features) as f32).sqrt();
        let weight = (0..in_features * out_features)
            .map(|_| rng.uniform_range(-limit, limit))
            .collect();
        Self::from_weights(in_features, out_features, weight, vec![0.0; out_features])
    }

    /// A layer with the given weights (`[out, in]` row-major) and bias; lengths are the caller's contract.
    pub fn from_weights(
        in_features: usize,
        out_features: usize,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Self {
        debug_assert_eq!(weight.len(), in_features * out_features);
        debug_assert_eq!(bias.len(), out_features);
        Self {
            in_features,
            out_features,
            grad_weight: vec![0.0; weight.len()],
            grad_bias: vec![0.0; bias.len()],
            weight,
            bias,
            weight_quant: None,
            weight_q: Vec::new(),
            grad_weight_q: Vec::new(),
            input: Tensor::default(),
            output: Tensor::default(),
            input_grad: Tensor::default(),
        }
    }

    /// Per-sample output shape `[out_features]` for any input of `in_features` elements.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        if input.is_empty() || super::shape::elems("dense", input)? != self.in_features {
            return Err(Error::Shape(format!(
                "dense {}->{}: per-sample shape {input:?}",
                self.in_features, self.out_features
            )));
        }
        Ok(vec![self.out_features])
    }

    /// The weights the product actually uses: fake-quantized when quantizing (valid after a forward pass).
    pub fn effective_weight(&self) -> &[f32] {
        if self.weight_quant.is_some() && self.weight_q.len() == self.weight.len() {
            &self.weight_q
        } else {
            &self.weight
        }
    }

    /// Forward pass. In training mode the input is cached for [`Dense::backward`].
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_buffered(x, train)?;
        Ok(self.output.clone())
    }

    /// The output of the last forward pass.
    pub(crate) fn output(&self) -> &Tensor {
        &self.output
    }

    /// dL/dinput of the last backward pass.
    pub(crate) fn input_grad(&self) -> &Tensor {
        &self.input_grad
    }

    /// [`Dense::forward`] into the layer's output buffer.
    pub(crate) fn forward_buffered(&mut self, x: &Tensor, train: bool) -> Result<()> {
        let batch = x.rows();
        if x.shape.len() < 2 || x.row_len() != self.in_features {
            return Err(Error::Shape(format!(
                "dense {}->{}: input shape {:?}",
                self.in_features, self.out_features, x.shape
            )));
        }
        if let Some(q) = &mut self.weight_quant {
            self.weight_q.resize(self.weight.len(), 0.0);
            q.forward(
                &self.weight,
                self.out_features,
                self.in_features,
                &mut self.weight_q,
            );
        }
        let w = if self.weight_quant.is_some() {
            &self.weight_q
        } else {
            &self.weight
        };
        let n = self.out_features;
        reshape_buffer(&mut self.output, &[batch, n]);
        let y = &mut self.output.data;
        for row in y.chunks_exact_mut(n) {
            row.copy_from_slice(&self.bias);
        }
        // y[B, N] = x[B, K] * W^T[K, N] + y
        gemm_abt(batch, self.in_features, n, &x.data, w, y, true);
        if train {
            self.input.data.clear();
            self.input.data.extend_from_slice(&x.data);
            self.input.shape.clear();
            self.input.shape.extend_from_slice(&x.shape);
        }
        Ok(())
    }

    /// Backward pass: sets `grad_weight` and `grad_bias` (overwriting), returns dL/dx shaped like the input.
    pub fn backward(&mut self, grad: &Tensor) -> Result<Tensor> {
        self.backward_impl(grad, true)
    }

    /// Backward pass; skips the input gradient (the costliest product of the first layer) when not needed,
    /// returning an empty tensor then.
    pub(crate) fn backward_impl(&mut self, grad: &Tensor, need_input_grad: bool) -> Result<Tensor> {
        self.backward_buffered(grad, need_input_grad)?;
        Ok(if need_input_grad {
            self.input_grad.clone()
        } else {
            Tensor::default()
        })
    }

    /// Backward pass into the layer's input-gradient buffer (left as it was when `need_input_grad` is false).
    pub(crate) fn backward_buffered(&mut self, grad: &Tensor, need_input_grad: bool) -> Result<()> {
        let (k, n) = (self.in_features, self.out_features);
        let batch = self.input.rows();
        if grad.shape != [batch, n] || self.input.row_len() != k {
            return Err(Error::Shape(format!(
                "dense {k}->{n}: backward with gradient {:?} after forward of {:?} (forward in train mode first)",
                grad.shape, self.input.shape
            )));
        }
        // db[N] = sum over the batch of G[B, N]
        self.grad_bias.fill(0.0);
        for row in grad.data.chunks_exact(n) {
            for (g, v) in self.grad_bias.iter_mut().zip(row) {
                *g += v;
            }
        }
        // dW[N, K] = G^T[N, B] * x[B, K]
        let (g, x) = (&grad.data, &self.input.data);
        if let Some(q) = &mut self.weight_quant {
            self.grad_weight_q.resize(n * k, 0.0);
            gemm_atb(batch, n, k, g, x, &mut self.grad_weight_q);
            self.grad_weight.fill(0.0);
            q.backward(&self.weight, &self.grad_weight_q, &mut self.grad_weight);
        } else {
            gemm_atb(batch, n, k, g, x, &mut self.grad_weight);
        }
        if !need_input_grad {
            return Ok(());
        }
        // dX[B, K] = G[B, N] * W[N, K]
        let w = if self.weight_quant.is_some() {
            &self.weight_q
        } else {
            &self.weight
        };
        reshape_buffer(&mut self.input_grad, &self.input.shape);
        // beta = 0: the old contents are ignored.
        sgemm(
            1.0,
            MatRef::row_major(&grad.data, batch, n),
            MatRef::row_major(w, n, k),
            0.0,
            &mut self.input_grad.data,
            k,
        );
        Ok(())
    }

    /// The layer's parameters with their gradients: weight, bias, then the weight quantizer's learned
    /// parameters (LSQ steps, initialized from the weights here if needed).
    pub fn params_mut(&mut self) -> Vec<Param<'_>> {
        if let Some(q) = &mut self.weight_quant {
            q.ensure_init(&self.weight, self.out_features, self.in_features);
        }
        let mut params = vec![
            Param {
                name: "weight",
                value: &mut self.weight,
                grad: &mut self.grad_weight,
            },
            Param {
                name: "bias",
                value: &mut self.bias,
                grad: &mut self.grad_bias,
            },
        ];
        if let Some(q) = &mut self.weight_quant {
            params.extend(q.params_mut());
        }
        params
    }
}

impl Stateful for Dense {
    /// `weight`, `bias`, then the weight quantizer's state under `weight_quant`.
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        visit_weight_layer(v, &mut self.weight, &mut self.bias, &mut self.weight_quant)
    }
}

/// The state of a layer with weights (dense, conv): `weight`, `bias`, then the weight quantizer's state under
/// `weight_quant`.
pub(super) fn visit_weight_layer(
    v: &mut StateVisitor<'_>,
    weight: &mut [f32],
    bias: &mut [f32],
    quant: &mut Option<WeightQuantizer>,
) -> Result<()> {
    v.value("weight", StateValue::F32(weight))?;
    v.value("bias", StateValue::F32(bias))?;
    if let Some(q) = quant {
        v.part("weight_quant", q)?;
    }
    Ok(())
}
