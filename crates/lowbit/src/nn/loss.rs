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

/// `log_softmax(z / t)` of one row, in f64 (stable: the row maximum is subtracted first).
fn log_soft(z: &[f32], t: f64) -> Vec<f64> {
    let max = f64::from(z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
    let shifted: Vec<f64> = z.iter().map(|&v| (f64::from(v) - max) / t).collect();
    let log_sum = shifted.iter().map(|v| v.exp()).sum::<f64>().ln();
    shifted.into_iter().map(|v| v - log_sum).collect()
}

/// Knowledge distillation (Hinton et al. 2015): `(1 - alpha) CE(z, y) + alpha T^2 KL(softmax(t / T) ||
/// softmax(z / T))` averaged over the batch, with `z` the student's logits, `t` the teacher's (same shape) and
/// `T` the temperature; the `T^2` keeps the soft term's gradient on the scale of the hard one. The gradient is
/// `(1 - alpha) (softmax(z) - onehot(y)) / B + alpha T (softmax(z / T) - softmax(t / T)) / B`; `correct`
/// counts the student's hits against the labels. `alpha` in `[0, 1]` and `T > 0` are the caller's to check.
///
/// Why: quantization-aware fine-tuning from a float model has that model at hand, and its soft targets carry
/// more than the labels (LSQ's best low-bit results use it, Esser et al. 2020, sec. 4.3).
pub fn distillation_loss(
    logits: &Tensor,
    labels: &[u8],
    teacher: &Tensor,
    alpha: f32,
    temperature: f32,
) -> Result<LossOutput> {
    if teacher.shape != logits.shape {
        return Err(Error::Shape(format!(
            "distillation: teacher logits {:?} against student logits {:?}",
            teacher.shape, logits.shape
        )));
    }
    let hard = softmax_cross_entropy(logits, labels)?;
    let classes = logits.row_len();
    let batch = logits.rows();
    let (a, t) = (f64::from(alpha), f64::from(temperature));
    let mut grad = hard.grad.data;
    let mut kl = 0.0f64;
    for ((z, tz), g) in logits
        .data
        .chunks_exact(classes)
        .zip(teacher.data.chunks_exact(classes))
        .zip(grad.chunks_exact_mut(classes))
    {
        let ls = log_soft(z, t);
        let lt = log_soft(tz, t);
        kl += lt
            .iter()
            .zip(&ls)
            .map(|(&p, &q)| p.exp() * (p - q))
            .sum::<f64>();
        for ((gi, &q), &p) in g.iter_mut().zip(&ls).zip(&lt) {
            *gi = ((1.0 - a) * f64::from(*gi) + a * t * (q.exp() - p.exp()) / batch as f64) as f32;
        }
    }
    let loss = (1.0 - a) * f64::from(hard.loss) + a * t * t * kl / batch as f64;
    Ok(LossOutput {
        loss: loss as f32,
        correct: hard.correct,
        grad: Tensor::new(grad, logits.shape.clone()),
    })
}
