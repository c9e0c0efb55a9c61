//! The training loop (float or QAT, depending on the quantizers attached to the model's layers).
use std::borrow::Cow;
use std::time::Instant;

use crate::checkpoint::{Checkpointing, PhaseCheckpoints};
use crate::data::stratified_split;
use crate::error::{Error, Result};
use crate::nn::{argmax_rows, distillation_loss, softmax_cross_entropy, Layer, Model};
use crate::optim::{clip_grad_norm, sum_squares, Optimizer};
use crate::quant::{bypass_quantizers, has_quantizers, start_quantizing};
use crate::rng::Rng;
use crate::tensor::Tensor;
pub use config::{Distill, TrainConfig};
use resume::{data_identity, resume, save_checkpoint, LoopArrays, LoopState};

mod config;
mod resume;

/// A labelled image set the loop can draw samples from: [`crate::data::Dataset`] (implemented in
/// [`crate::pipeline`]) or in-memory f32 slices ([`SliceSamples`]).
pub trait Samples {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Shape of one sample, (C, H, W).
    fn sample_shape(&self) -> [usize; 3];
    /// Writes sample `index` (scaled as the model expects, e.g. to [0, 1]) into `out` (length C*H*W).
    fn write_sample(&self, index: usize, out: &mut [f32]);
    /// Label of sample `index`.
    fn label(&self, index: usize) -> u8;
}

/// Samples held as an f32 slice `[N, C, H, W]` plus labels.
#[derive(Debug, Clone, Copy)]
pub struct SliceSamples<'a> {
    images: &'a [f32],
    labels: &'a [u8],
    shape: [usize; 3],
}

impl<'a> SliceSamples<'a> {
    /// Wraps `images` (`labels.len()` samples of `shape`) and `labels`; checks the lengths agree.
    pub fn new(images: &'a [f32], labels: &'a [u8], shape: [usize; 3]) -> Result<Self> {
        let per: usize = shape.iter().product();
        if per == 0 || labels.len().checked_mul(per) != Some(images.len()) {
            return Err(Error::Shape(format!(
                "{} images of {shape:?} do not match {} labels",
                images.len(),
                labels.len()
            )));
        }
        Ok(Self {
            images,
            labels,
            shape,
        })
    }
}

impl Samples for SliceSamples<'_> {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn sample_shape(&self) -> [usize; 3] {
        self.shape
    }
    fn write_sample(&self, index: usize, out: &mut [f32]) {
        let per = out.len();
        out.copy_from_slice(&self.images[index * per..(index + 1) * per]);
    }
    fn label(&self, index: usize) -> u8 {
        self.labels[index]
    }
}

/// Per-step progress, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Current epoch, 1-based.
    pub epoch: usize,
    /// Total epochs.
    pub epochs: usize,
    /// Steps done in this epoch, 1-based.
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
    /// Mean loss so far in this epoch.
    pub loss: f32,
    /// Training accuracy so far in this epoch.
    pub accuracy: f32,
    /// Mean loss of this step's batch alone (per-step curves; the running `loss` hides the first epoch).
    pub batch_loss: f32,
    /// Accuracy of this step's batch alone, in [0, 1].
    pub batch_accuracy: f32,
}

/// Summary of one epoch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    /// Epoch, 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch (weights changing as it runs, as Keras reports it).
    pub train_loss: f32,
    /// Training accuracy over the epoch, in [0, 1].
    pub train_accuracy: f32,
    /// Wall time of the epoch's training steps (validation excluded).
    pub seconds: f64,
    /// Accuracy on the held-out samples at the end of the epoch, when a validation fraction is set.
    pub val_accuracy: Option<f32>,
    /// Learning rate of the epoch's last step.
    pub lr: f32,
    /// Mean over the epoch's steps of the global gradient L2 norm (before clipping).
    pub grad_norm: f32,
    /// Steps whose gradient was clipped (`clip_grad_norm`).
    pub clipped_steps: usize,
    /// Per-layer gradient and quantizer diagnostics (layers with parameters or quantizers only).
    pub layers: Vec<LayerDiagnostics>,
}

/// One layer's training diagnostics over an epoch: vanishing / exploding gradients and quantizer clipping or
/// dead zones.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerDiagnostics {
    /// Index in `Model::nodes`.
    pub index: usize,
    /// Layer kind (`dense`, `act_quant`, ...).
    pub kind: String,
    /// Mean over the epoch's steps of the L2 norm of each parameter's gradient, in visit order.
    pub grad_norms: Vec<ParamGradNorm>,
    /// Mean fraction of weights clipped by the weight quantizer (weight layers with one).
    pub weight_clipped_fraction: Option<f32>,
    /// Mean fraction of zero weight codes (the low-bit dead zone).
    pub weight_zero_fraction: Option<f32>,
    /// Mean fraction of activations clipped above the range by an activation quantizer.
    pub act_clipped_fraction: Option<f32>,
}

/// Mean gradient L2 norm of one parameter tensor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParamGradNorm {
    /// Parameter name (`weight`, `bias`, `weight_step`, `act_step`, `pact_alpha`, ...).
    pub name: String,
    /// Mean over steps of `||dL/dparam||_2`.
    pub mean_l2: f32,
}

/// Per-epoch accumulator behind [`LayerDiagnostics`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Diagnostics {
    steps: usize,
    grad_norm_sum: f64,
    clipped_steps: usize,
    /// Per layer: (grad norm sums per parameter with names, weight clipped, weight zero, act clipped sums).
    layers: Vec<LayerAcc>,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct LayerAcc {
    /// Parameter name (borrowed from the layer; owned when read from a checkpoint) and sum of gradient norms.
    grads: Vec<(Cow<'static, str>, f64)>,
    weight_clipped: Option<f64>,
    weight_zero: Option<f64>,
    act_clipped: Option<f64>,
}

impl Diagnostics {
    fn observe_quantizers(&mut self, model: &Model) {
        self.layers.resize(model.nodes.len(), LayerAcc::default());
        for (acc, layer) in self.layers.iter_mut().zip(model.layers()) {
            let wq = match layer {
                Layer::Dense(d) => d.weight_quant.as_ref(),
                Layer::Conv2d(c) => c.weight_quant.as_ref(),
                Layer::ConvBn2d(c) => c.weight_quant(),
                _ => None,
            };
            if let Some(q) = wq {
                *acc.weight_clipped.get_or_insert(0.0) += f64::from(q.clipped_fraction());
                *acc.weight_zero.get_or_insert(0.0) += f64::from(q.zero_fraction());
            }
            if let Layer::ActQuant(q) = layer {
                if !q.is_input() {
                    *acc.act_clipped.get_or_insert(0.0) += f64::from(q.clipped_fraction());
                }
            }
        }
    }

    /// Adds each parameter's gradient norm; returns the global squared norm.
    fn observe_grads(&mut self, model: &mut Model) -> f64 {
        self.layers.resize(model.nodes.len(), LayerAcc::default());
        let mut total = 0.0;
        for (acc, layer) in self.layers.iter_mut().zip(model.layers_mut()) {
            for (j, p) in layer.params_mut().iter().enumerate() {
                let sq = sum_squares(p.grad);
                total += sq;
                match acc.grads.get_mut(j) {
                    Some(slot) => slot.1 += sq.sqrt(),
                    None => acc.grads.push((Cow::Borrowed(p.name), sq.sqrt())),
                }
            }
        }
        total
    }

    fn finish(self, model: &Model) -> (f32, usize, Vec<LayerDiagnostics>) {
        let n = self.steps.max(1) as f64;
        let mean = |v: f64| (v / n) as f32;
        let layers = self
            .layers
            .into_iter()
            .zip(model.layers())
            .enumerate()
            .filter(|(_, (a, _))| {
                !a.grads.is_empty() || a.weight_clipped.is_some() || a.act_clipped.is_some()
            })
            .map(|(index, (a, l))| LayerDiagnostics {
                index,
                kind: l.kind().to_string(),
                grad_norms: a
                    .grads
                    .iter()
                    .map(|(name, s)| ParamGradNorm {
                        name: name.to_string(),
                        mean_l2: mean(*s),
                    })
                    .collect(),
                weight_clipped_fraction: a.weight_clipped.map(mean),
                weight_zero_fraction: a.weight_zero.map(mean),
                act_clipped_fraction: a.act_clipped.map(mean),
            })
            .collect();
        (mean(self.grad_norm_sum), self.clipped_steps, layers)
    }
}

/// Trains `model` on `data` and returns one [`EpochStats`] per epoch.
///
/// Shuffles are seeded from `cfg.seed` and the epoch number, so the same seed, model and data give bit-identical
/// weights. A non-finite loss or gradient (or a learned quantizer parameter that became non-finite) stops
/// training with [`Error::Diverged`]; the model then holds the weights it had at the end of the last completed
/// epoch (or its initial weights).
///
/// Each step: forward, loss, backward, finite check, per-parameter gradient norms (for [`EpochStats`]),
/// optional clipping of the global gradient norm to `cfg.clip_grad_norm`, learning rate from `cfg.schedule`
/// after `cfg.warmup_steps` of linear warmup, optimizer update.
///
/// With a quantization delay (`cfg.quant_delay_epochs`) and a model holding quantizers, the quantizers are
/// bypassed until step `round(delay * steps per epoch)` (0-based, counted over the whole run); before that
/// step's forward they switch on, reset ([`start_quantizing`]). The optimizer keeps its state across the
/// switch, as TensorFlow's `quant_delay` does (the quantizer parameters' moments are still zero then): on
/// LeNet-5 LSQ W2A2, Fashion-MNIST, delay 1 of 5 epochs, 3 seeds, restarting Adam at the switch scored 0.4 pp
/// lower (85.18% vs 85.58%, within seed noise). If training stops before the switch, the quantizers are
/// switched on (reset) before returning, so the model is never left bypassed.
pub fn train<S: Samples + ?Sized>(
    model: &mut Model,
    data: &S,
    cfg: &TrainConfig,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Vec<EpochStats>> {
    train_checkpointed(model, data, cfg, None, on_progress)
}

/// [`train`] that checkpoints phase `phase` of a run to `checkpoints.dir` (at every epoch end and every
/// `checkpoints.every_steps` optimizer steps) and, with `checkpoints.resume`, first continues from the phase's
/// checkpoint if there is one. A resumed run ends with the model (and history) an uninterrupted run would have,
/// bit for bit, on the same machine and thread count: the checkpoint holds the model's and the optimizer's
/// [`crate::state::Stateful`] state, the data order, the position in the run and the history so far. Check the
/// directory with [`Checkpointing::prepare`] first (it refuses to let a new run overwrite checkpoints).
pub fn train_checkpointed<S: Samples + ?Sized>(
    model: &mut Model,
    data: &S,
    cfg: &TrainConfig,
    checkpoints: Option<(&Checkpointing, &str)>,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Vec<EpochStats>> {
    train_distilled(model, None, data, cfg, checkpoints, on_progress)
}

/// [`train_checkpointed`] with a float `teacher` whose logits on each batch (evaluation mode) give the soft
/// targets of `cfg.distill` ([`crate::nn::distillation_loss`]). `cfg.distill` and `teacher` go together: one
/// without the other is an error naming `--distill`.
pub fn train_distilled<S: Samples + ?Sized>(
    model: &mut Model,
    teacher: Option<&Model>,
    data: &S,
    cfg: &TrainConfig,
    checkpoints: Option<(&Checkpointing, &str)>,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Vec<EpochStats>> {
    cfg.validate()?;
    check_shapes(model, data)?;
    let mut teacher = match (cfg.distill, teacher) {
        (Some(_), Some(t)) => {
            check_shapes(t, data)?;
            Some(t.clone())
        }
        (None, None) => None,
        (Some(_), None) => return Err(Error::option(
            "--distill",
            "needs a float teacher: quantization-aware training from --init or the f32 baseline",
        )),
        (None, Some(_)) => {
            return Err(Error::option(
                "--distill",
                "a teacher was given but no distillation weight",
            ))
        }
    };
    let phase = checkpoints.map(|(c, phase)| c.phase(phase, data_identity(data)));
    let mut bypassed = false;
    let result = train_validated(
        model,
        teacher.as_mut(),
        data,
        cfg,
        phase.as_ref(),
        on_progress,
        &mut bypassed,
    );
    if bypassed {
        start_quantizing(model);
    }
    result
}

/// [`train`] after validation; `bypassed` says whether the model's quantizers are bypassed on return.
fn train_validated<S: Samples + ?Sized>(
    model: &mut Model,
    mut teacher: Option<&mut Model>,
    data: &S,
    cfg: &TrainConfig,
    checkpoints: Option<&PhaseCheckpoints>,
    on_progress: &mut dyn FnMut(Progress),
    bypassed: &mut bool,
) -> Result<Vec<EpochStats>> {
    let (mut order, val_indices) = split_indices(data, cfg)?;
    let n_train = order.len();
    let mut opt = Optimizer::new(cfg.optimizer, cfg.lr)?;
    opt.set_quant_lr_scale(cfg.quant_lr_scale)?;
    let per: usize = model.input_shape.iter().product();
    let mut x = Tensor::default();
    let mut labels = Vec::with_capacity(cfg.batch_size);
    let steps = n_train.div_ceil(cfg.batch_size);
    let total_steps = steps * cfg.epochs;
    let delay_steps = (f64::from(cfg.quant_delay_epochs) * steps as f64).round() as usize;
    if delay_steps >= total_steps {
        return Err(Error::option(
            "--quant-delay-epochs",
            format!(
                "{} epochs is {delay_steps} of the run's {total_steps} steps: none would be quantized",
                cfg.quant_delay_epochs
            ),
        ));
    }
    let mut good = Vec::new();
    let resumed = match checkpoints {
        Some(file) => resume(
            file, model, &mut opt, &mut order, &mut good, steps, cfg.epochs,
        )?,
        None => None,
    };
    let mut st = match resumed {
        Some(st) => {
            *bypassed = st.bypassed;
            st
        }
        None => {
            if delay_steps > 0 && has_quantizers(model) {
                bypass_quantizers(model);
                *bypassed = true;
            }
            good = model.snapshot();
            LoopState::default()
        }
    };
    for epoch in st.epochs_done + 1..=cfg.epochs {
        let start = Instant::now();
        let seconds_before = st.seconds;
        if st.steps_done == 0 {
            // A fresh generator per epoch (not one long stream), so epoch e's shuffle depends only on seed, e
            // and the order it starts from (the previous epoch's, which a checkpoint keeps).
            Rng::new(cfg.seed ^ 0x5EED_0000_0000_0000)
                .fork(epoch as u64)
                .shuffle(&mut order);
        }
        for step0 in st.steps_done..steps {
            let step = step0 + 1;
            let batch = &order[step0 * cfg.batch_size..(step * cfg.batch_size).min(order.len())];
            if *bypassed && st.global_step == delay_steps {
                start_quantizing(model);
                *bypassed = false;
            }
            fill_batch(data, batch, model.input_shape, per, &mut x, &mut labels);
            let batch_len = batch.len();
            let logits = model.forward(&x, true)?;
            let out = match (cfg.distill, teacher.as_deref_mut()) {
                (Some(d), Some(t)) => {
                    let soft = t.forward(&x, false)?;
                    distillation_loss(&logits, &labels, &soft, d.alpha, d.temperature)?
                }
                _ => softmax_cross_entropy(&logits, &labels)?,
            };
            let diverged = |what: String, model: &mut Model, good: &[Vec<f32>]| {
                model.restore(good)?;
                Err(Error::Diverged { epoch, step, what })
            };
            if !out.loss.is_finite() {
                return diverged("the loss is not finite".into(), model, &good);
            }
            if out.loss > cfg.max_loss {
                let what = format!(
                    "the loss {:.3e} exceeds --max-loss {:e}",
                    out.loss, cfg.max_loss
                );
                return diverged(what, model, &good);
            }
            model.backward(&out.grad)?;
            let params = model.params_mut();
            if let Some(i) = params.iter().position(|p| !all_finite(p.grad)) {
                let what = format!(
                    "the gradient of parameter {i} ({}) is not finite",
                    params[i].name
                );
                drop(params);
                return diverged(what, model, &good);
            }
            drop(params);
            st.diag.observe_quantizers(model);
            let norm_sq = st.diag.observe_grads(model);
            st.diag.steps += 1;
            st.diag.grad_norm_sum += norm_sq.sqrt();
            let mut params = model.params_mut();
            if let Some(max_norm) = cfg.clip_grad_norm {
                if clip_grad_norm(&mut params, max_norm) > max_norm {
                    st.diag.clipped_steps += 1;
                }
            }
            opt.set_lr(cfg.schedule.lr_at(
                cfg.lr,
                st.global_step,
                cfg.warmup_steps,
                steps,
                total_steps,
            ))?;
            st.global_step += 1;
            opt.step(&mut params)?;
            // Quantizer parameters (steps, alphas) are small and can be driven non-finite by a huge update.
            if let Some(i) = params
                .iter()
                .position(|p| p.name != "weight" && p.name != "bias" && !all_finite(p.value))
            {
                let what = format!("value of parameter {i} ({})", params[i].name);
                drop(params);
                return diverged(what, model, &good);
            }
            drop(params);
            st.loss_sum += f64::from(out.loss) * batch_len as f64;
            st.correct += out.correct;
            st.steps_done = step;
            let seen = (step0 * cfg.batch_size + batch_len) as f64;
            on_progress(Progress {
                epoch,
                epochs: cfg.epochs,
                step,
                steps,
                loss: (st.loss_sum / seen) as f32,
                accuracy: (st.correct as f64 / seen) as f32,
                batch_loss: out.loss,
                batch_accuracy: out.correct as f32 / batch_len as f32,
            });
            if let Some(file) = checkpoints {
                // The epoch's last step is saved by the epoch-end checkpoint just after.
                if step < steps && file.due_at_step(st.global_step) {
                    st.seconds = seconds_before + start.elapsed().as_secs_f64();
                    let arrays = &mut LoopArrays {
                        order: &mut order,
                        good: &mut good,
                    };
                    st.bypassed = *bypassed;
                    save_checkpoint(file, &st, model, &mut opt, arrays)?;
                }
                file.after_step(st.global_step);
            }
        }
        let seconds = seconds_before + start.elapsed().as_secs_f64();
        let val_accuracy = if val_indices.is_empty() {
            None
        } else {
            Some(evaluate_indices(model, data, &val_indices, EVAL_BATCH, None)?.0 as f32)
        };
        good = model.snapshot();
        let (grad_norm, clipped_steps, layers) = std::mem::take(&mut st.diag).finish(model);
        st.history.push(EpochStats {
            epoch,
            train_loss: (st.loss_sum / n_train as f64) as f32,
            train_accuracy: (st.correct as f64 / n_train as f64) as f32,
            seconds,
            val_accuracy,
            lr: opt.lr(),
            grad_norm,
            clipped_steps,
            layers,
        });
        st.epochs_done = epoch;
        st.steps_done = 0;
        st.loss_sum = 0.0;
        st.correct = 0;
        st.seconds = 0.0;
        if let Some(file) = checkpoints {
            st.bypassed = *bypassed;
            let arrays = &mut LoopArrays {
                order: &mut order,
                good: &mut good,
            };
            save_checkpoint(file, &st, model, &mut opt, arrays)?;
        }
    }
    Ok(st.history)
}

/// The training and validation sample indices of a run: all samples for training without
/// `cfg.validation_fraction`, else a stratified split seeded from `cfg.seed` ([`stratified_split`]), so data
/// sorted by class still validates on every class and the same seed holds out the same samples.
/// Errors (naming `--validation-split`) when no training sample would remain, or when the fraction is large
/// enough to hold some out but rounds to none.
pub fn split_indices<S: Samples + ?Sized>(
    data: &S,
    cfg: &TrainConfig,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let n = data.len();
    let (train, val) = match cfg.validation_fraction {
        None => ((0..n).collect(), Vec::new()),
        Some(f) => {
            let labels: Vec<u8> = (0..n).map(|i| data.label(i)).collect();
            let (train, val) = stratified_split(&labels, f, cfg.seed ^ 0x5711_7000_0000_0000);
            if val.is_empty() && !train.is_empty() {
                return Err(Error::option(
                    "--validation-split",
                    format!("{f} of {n} samples holds none out for validation"),
                ));
            }
            (train, val)
        }
    };
    if train.is_empty() {
        return Err(Error::option(
            "--validation-split",
            format!("leaves no training samples out of {n}"),
        ));
    }
    Ok((train, val))
}

/// Batch size for inference passes; larger than training batches because there is no backward pass.
const EVAL_BATCH: usize = 256;

/// Float-model accuracy on `data` (inference mode, batches of `batch`) and the predicted class per sample.
pub fn evaluate_float<S: Samples + ?Sized>(
    model: &mut Model,
    data: &S,
    batch: usize,
) -> Result<(f64, Vec<usize>)> {
    float_logits(model, data, batch, None)
}

/// [`evaluate_float`] that also appends every sample's logits (`[N, classes]` row-major) to `logits` when given,
/// e.g. to compare them with another runtime's.
pub fn float_logits<S: Samples + ?Sized>(
    model: &mut Model,
    data: &S,
    batch: usize,
    logits: Option<&mut Vec<f32>>,
) -> Result<(f64, Vec<usize>)> {
    if batch == 0 {
        return Err(Error::option("--batch-size", "must be at least 1"));
    }
    check_shapes(model, data)?;
    let indices: Vec<usize> = (0..data.len()).collect();
    evaluate_indices(model, data, &indices, batch, logits)
}

fn evaluate_indices<S: Samples + ?Sized>(
    model: &mut Model,
    data: &S,
    indices: &[usize],
    batch: usize,
    mut keep: Option<&mut Vec<f32>>,
) -> Result<(f64, Vec<usize>)> {
    let per: usize = model.input_shape.iter().product();
    let mut x = Tensor::default();
    let mut labels = Vec::new();
    let mut predictions = Vec::with_capacity(indices.len());
    let mut correct = 0usize;
    for chunk in indices.chunks(batch) {
        fill_batch(data, chunk, model.input_shape, per, &mut x, &mut labels);
        let logits = model.forward(&x, false)?;
        if let Some(k) = keep.as_deref_mut() {
            k.extend_from_slice(&logits.data);
        }
        for (p, &l) in argmax_rows(&logits).into_iter().zip(&labels) {
            correct += usize::from(p == usize::from(l));
            predictions.push(p);
        }
    }
    let accuracy = if indices.is_empty() {
        0.0
    } else {
        correct as f64 / indices.len() as f64
    };
    Ok((accuracy, predictions))
}

fn check_shapes<S: Samples + ?Sized>(model: &Model, data: &S) -> Result<()> {
    if data.sample_shape() != model.input_shape {
        return Err(Error::Shape(format!(
            "model {} takes {:?} samples, data has {:?}",
            model.spec,
            model.input_shape,
            data.sample_shape()
        )));
    }
    Ok(())
}

/// Fills `x` (`[B, C, H, W]`, storage reused across calls) and `labels` with the samples at `indices`.
fn fill_batch<S: Samples + ?Sized>(
    data: &S,
    indices: &[usize],
    shape: [usize; 3],
    per: usize,
    x: &mut Tensor,
    labels: &mut Vec<u8>,
) {
    x.data.resize(indices.len() * per, 0.0);
    x.shape.clear();
    x.shape
        .extend_from_slice(&[indices.len(), shape[0], shape[1], shape[2]]);
    labels.clear();
    for (&i, out) in indices.iter().zip(x.data.chunks_exact_mut(per)) {
        data.write_sample(i, out);
        labels.push(data.label(i));
    }
}

/// True when no element is NaN or infinite. `v * 0` is 0 for finite `v` and NaN otherwise, and summing in 8
/// independent lanes lets the compiler vectorize (a plain `all(is_finite)` short-circuits and does not).
pub(crate) fn all_finite(xs: &[f32]) -> bool {
    let mut lanes = [0.0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v * 0.0;
        }
    }
    for &v in tail {
        lanes[0] += v * 0.0;
    }
    lanes.iter().sum::<f32>() == 0.0
}

#[cfg(test)]
mod tests {
    use super::all_finite;

    #[test]
    fn all_finite_spots_one_bad_value_anywhere() {
        let mut v = vec![1.0f32; 37];
        assert!(all_finite(&v));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for i in [0, 7, 8, 31, 36] {
                let old = v[i];
                v[i] = bad;
                assert!(!all_finite(&v), "missed {bad} at {i}");
                v[i] = old;
            }
        }
        assert!(all_finite(&[f32::MAX, -f32::MAX, f32::MIN_POSITIVE]));
    }
}
