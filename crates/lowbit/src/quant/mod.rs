//! Quantizers, QAT wiring, PTQ calibration and conversion to the runtime model.
//!
//! (Interface fixed early so `nn` can call it; bodies are being filled in.)
use crate::tensor::Tensor;

/// Fake-quantizer of a layer's weights (a `[rows = out channels, cols = K]` row-major matrix).
///
/// `nn::Dense` calls [`WeightQuantizer::forward`] before its matrix product and
/// [`WeightQuantizer::backward`] to map the gradient of the quantized weights back to the float shadow weights.
#[derive(Debug, Clone, Default)]
pub struct WeightQuantizer {}

impl WeightQuantizer {
    /// Writes fake-quantized weights into `out` (same length as `w`) and remembers what backward needs.
    pub fn forward(&mut self, w: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
        let _ = (rows, cols);
        out.copy_from_slice(w);
    }

    /// Given `grad_wq` = dL/dw_q, adds dL/dw (straight-through estimator) into `grad_w`.
    pub fn backward(&mut self, w: &[f32], grad_wq: &[f32], grad_w: &mut [f32]) {
        let _ = w;
        for (g, gq) in grad_w.iter_mut().zip(grad_wq) {
            *g += gq;
        }
    }
}

/// Fake-quantizer of activations, used as a layer (`nn::Layer::ActQuant`).
#[derive(Debug, Clone, Default)]
pub struct ActQuantizer {}

impl ActQuantizer {
    /// Fake-quantizes `x`; `train` updates running range statistics.
    pub fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        let _ = train;
        x.clone()
    }

    /// Straight-through gradient: passes inside the clipping range, zero outside.
    pub fn backward(&mut self, grad_out: &Tensor) -> Tensor {
        grad_out.clone()
    }
}
