//! Softmax cross-entropy from logits.
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Result of [`softmax_cross_entropy`].
#[derive(Debug, Clone, PartialEq)]
pub struct LossOutput {
    /// Mean cross-entropy over the batch (nats).
    pub loss: f32,
    /// Number of rows whose arg-max logit equals the label (ties go to the lowest index).
    pub correct: usize,
    /// dL/dlogits for the mean loss, shaped like the logits.
    pub grad: Tensor,
}

/// Mean softmax cross-entropy of `logits [B, C]` against `labels [B]`, its gradient and the hit count.
///
/// Numerically stable: `log_softmax(z)_i = z_i - m - ln(sum_j exp(z_j - m))` with `m = max_j z_j`, so no
/// exponent exceeds 0. The gradient is `(softmax(z) - onehot(y)) / B`. Non-finite logits give a non-finite
/// loss, which the training loop reports as divergence.
pub fn softmax_cross_entropy(logits: &Tensor, labels: &[u8]) -> Result<LossOutput> {
    let batch = logits.rows();
    let classes = logits.row_len();
    if logits.shape.len() != 2 || labels.len() != batch || classes == 0 || batch == 0 {
        return Err(Error::Shape(format!(
            "cross-entropy: logits {:?} with {} labels",
            logits.shape,
            labels.len()
        )));
    }
    if let Some(&bad) = labels.iter().find(|&&l| usize::from(l) >= classes) {
        return Err(Error::Shape(format!(
            "cross-entropy: label {bad} out of range for {classes} classes"
        )));
    }
    let mut grad = vec![0.0f32; logits.len()];
    let mut total = 0.0f64;
    let mut correct = 0;
    let inv_batch = 1.0 / batch as f32;
    for ((z, g), &label) in logits
        .data
        .chunks_exact(classes)
        .zip(grad.chunks_exact_mut(classes))
        .zip(labels)
    {
        let label = usize::from(label);
        let mut arg = 0;
        let mut max = z[0];
        for (i, &v) in z.iter().enumerate().skip(1) {
            if v > max {
                max = v;
                arg = i;
            }
        }
        correct += usize::from(arg == label);
        let mut sum = 0.0f32;
        for (gi, &v) in g.iter_mut().zip(z) {
            let e = (v - max).exp();
            *gi = e;
            sum += e;
        }
        total += f64::from(sum.ln() - (z[label] - max));
        let scale = inv_batch / sum;
        for gi in g.iter_mut() {
            *gi *= scale;
        }
        g[label] -= inv_batch;
    }
    Ok(LossOutput {
        loss: (total / batch as f64) as f32,
        correct,
        grad: Tensor::new(grad, logits.shape.clone()),
    })
}
