//! Per-layer sensitivity to quantization: what each bit costs, layer by layer.
//!
//! Two answers, side by side:
//! - **Measured**, one layer at a time: the model quantized by PTQ at the base setting (W8A8 by default), except
//!   one weight layer's weights (or its output activations) at `b` bits; accuracy and loss on the integer engine,
//!   against the all-base model.
//! - **Predicted** without a sweep (HAWQ-V2, Dong et al. 2020): `Omega = tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2`,
//!   the layer's mean Hessian trace (Hutchinson's estimator `E[v^T H v]` over Rademacher `v`, Avron & Toledo
//!   2011) times the squared weight perturbation of its quantizer, each probe one backward pass (see
//!   `hutchinson` below). Batch norms use their running statistics (as deployed) and dropout is off.
//!
//! Measurements run by default on training images that calibration does not use ([`MeasureOn::Train`]): an
//! allocation chosen over them ([`crate::allocate`]) has not seen the test set it is then measured on.
//!
//! Per-channel min-max quantization is scale-equivariant per output channel, so the perturbation of a conv's
//! own weights ranks the same as that of the conv folded with its batch norm.
use crate::data::Split;
use crate::error::{Error, Result};
use crate::nn::{softmax_cross_entropy, Layer, Model};
use crate::pipeline::{self, EVAL_BATCH};
use crate::quant::{self, prepare::is_weight_layer, LayerQuant, LayerSelector, QuantConfig};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::Samples;
use lowbit_runtime::engine::{Engine, EngineOptions};
use lowbit_runtime::model::Provenance;
use serde::Serialize;

/// Which images the one-layer measurements run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MeasureOn {
    /// Training images spread evenly and disjoint from the calibration images: choosing bits on them leaves the
    /// test set unseen.
    #[default]
    Train,
    /// Test images: what each layer costs on the test set itself (a diagnosis, not a basis for choosing).
    Test,
}

/// What [`analyse`] measures and estimates.
#[derive(Debug, Clone)]
pub struct SensitivityConfig {
    /// The base quantization every other layer keeps (PTQ; per-channel and calibration samples from here).
    pub base: QuantConfig,
    /// Bit widths tried on each layer.
    pub bits: Vec<u32>,
    /// Also measure each layer's output activations at each bit width.
    pub activations: bool,
    /// Images the measurements run on.
    pub measure_on: MeasureOn,
    /// Images evaluated per measurement (all there are when fewer).
    pub samples: usize,
    /// Training images behind the Hessian estimate.
    pub hessian_samples: usize,
    /// Rademacher vectors of Hutchinson's estimator (0 skips the estimate).
    pub hessian_iters: usize,
    /// Seed of the Rademacher vectors.
    pub seed: u64,
}

impl Default for SensitivityConfig {
    fn default() -> Self {
        Self {
            base: QuantConfig {
                method: quant::Method::Ptq,
                ..QuantConfig::default()
            },
            bits: vec![2, 3, 4],
            activations: true,
            measure_on: MeasureOn::Train,
            samples: 10_000,
            hessian_samples: 512,
            hessian_iters: 32,
            seed: 1,
        }
    }
}

impl SensitivityConfig {
    /// Checks every option before anything runs, naming the flag at fault.
    pub fn validate(&self) -> Result<()> {
        if self.bits.is_empty() {
            return Err(Error::option("--bits", "give at least one bit width"));
        }
        for &b in &self.bits {
            let q = QuantConfig {
                weight_bits: b,
                act_bits: b,
                ..self.base.clone()
            };
            q.validate()?;
        }
        self.base.validate()?;
        if self.samples == 0 {
            return Err(Error::option("--samples", "must be at least 1"));
        }
        if self.hessian_iters > 0 && self.hessian_samples == 0 {
            return Err(Error::option("--hessian-samples", "must be at least 1"));
        }
        Ok(())
    }
}

/// One layer at one bit width.
#[derive(Debug, Clone, Serialize)]
pub struct BitCost {
    /// The bit width.
    pub bits: u32,
    /// `||Q_b(W) - W||^2` of the layer's weights.
    pub weight_perturbation: f64,
    /// HAWQ's `tr(H) / n * ||Q_b(W) - W||^2` (when the Hessian was estimated).
    pub predicted: Option<f64>,
    /// Engine accuracy drop (pp, positive = worse) with only this layer's weights at `bits`.
    pub weight_drop_pp: f64,
    /// Engine mean cross-entropy increase with only this layer's weights at `bits`.
    pub weight_loss_delta: f64,
    /// Engine accuracy drop (pp) with only this layer's output activations at `bits` (None for the last layer,
    /// whose output is float logits, or when activations were not measured).
    pub act_drop_pp: Option<f64>,
}

/// One weight layer's sensitivity.
#[derive(Debug, Clone, Serialize)]
pub struct LayerSensitivity {
    /// Weight-layer index (as `--layer-bits` and the config file's `layers` count them).
    pub index: usize,
    /// Node name.
    pub name: String,
    /// Weight count.
    pub weights: usize,
    /// Output channels (rows of the weight matrix; the weights are `rows x weights / rows`).
    pub rows: usize,
    /// Hutchinson estimate of the trace of the loss Hessian over this layer's weights.
    pub hessian_trace: Option<f64>,
    /// Per bit width.
    pub costs: Vec<BitCost>,
}

/// Everything [`analyse`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Sensitivity {
    /// f32 accuracy on the evaluated images.
    pub float_accuracy: f64,
    /// Engine accuracy of the all-base model (every layer at the base setting).
    pub base_accuracy: f64,
    /// Engine mean cross-entropy of the all-base model.
    pub base_loss: f64,
    /// Images the measurements ran on.
    pub measured_on: MeasureOn,
    /// Images per measurement.
    pub samples: usize,
    /// Per weight layer, in node order.
    pub layers: Vec<LayerSensitivity>,
    /// Per bit width: Spearman rank correlation between the predicted cost and the measured loss increase over
    /// the layers (None without a Hessian estimate or with fewer than 3 layers).
    pub spearman: Vec<(u32, Option<f64>)>,
    /// Spearman's rank correlation over every (layer, bit width) pair at once: what a mixed-precision allocation
    /// relies on, since it trades one layer's bits against another's (None without a Hessian estimate).
    pub spearman_pooled: Option<f64>,
}

/// Spearman's rank correlation of two equally long series (average ranks for ties); None when either is
/// constant or shorter than 3.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 3 {
        return None;
    }
    let ranks = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            let mean = (i + j) as f64 / 2.0;
            for &k in &idx[i..=j] {
                r[k] = mean;
            }
            i = j + 1;
        }
        r
    };
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let mean = (n - 1.0) / 2.0;
    let cov: f64 = ra
        .iter()
        .zip(&rb)
        .map(|(x, y)| (x - mean) * (y - mean))
        .sum();
    let var = |r: &[f64]| r.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>();
    let d = (var(&ra) * var(&rb)).sqrt();
    (d > 0.0).then(|| cov / d)
}

/// Measures PTQ settings of one model on the integer engine, always on the same calibration and evaluation
/// images (picked once), so that measurements compare: what [`analyse`] and [`crate::allocate::refine`] run.
pub struct Measurer<'a> {
    model: &'a Model,
    calib: Vec<Tensor>,
    eval: Eval,
    on: MeasureOn,
}

impl<'a> Measurer<'a> {
    /// Calibration on `calibration_samples` training images of `split` (as PTQ picks them: evenly spread) and
    /// evaluation on `samples` images of the set `on` names, evenly spread (training images: none of the
    /// calibration ones). Errors when no training image is left beside the calibration images.
    pub fn new(
        model: &'a Model,
        split: &Split,
        calibration_samples: usize,
        samples: usize,
        on: MeasureOn,
    ) -> Result<Self> {
        let (set, pick) = match on {
            MeasureOn::Test => (&split.test, spread(split.test.n, samples)),
            MeasureOn::Train => (
                &split.train,
                held_out(split.train.n, samples, calibration_samples),
            ),
        };
        if pick.is_empty() {
            return Err(Error::option(
                "--measure-on",
                format!(
                    "all {} training images are calibration images, none is left to measure on (use \
                     --measure-on test)",
                    split.train.n
                ),
            ));
        }
        let per = set.image_len();
        let eval = Eval {
            images: pick
                .iter()
                .flat_map(|&i| set.images[i * per..(i + 1) * per].iter().copied())
                .collect(),
            labels: pick.iter().map(|&i| set.labels[i]).collect(),
            n: pick.len(),
            shape: set.shape(),
            normalization: set.normalization.clone(),
        };
        let calib = pipeline::sample_batches(&split.train, calibration_samples, EVAL_BATCH);
        Ok(Self {
            model,
            calib,
            eval,
            on,
        })
    }

    /// Images per measurement.
    pub fn samples(&self) -> usize {
        self.eval.n
    }

    /// The set the images come from.
    pub fn measured_on(&self) -> MeasureOn {
        self.on
    }

    /// Engine accuracy and mean cross-entropy of the PTQ of the model under `q`.
    pub fn measure(&self, q: &QuantConfig) -> Result<(f64, f64)> {
        let prepared = quant::ptq(self.model, q, &self.calib)?;
        let qm = quant::convert(&prepared, Provenance::default())?;
        let engine = Engine::with_options(&qm, EngineOptions::default())?;
        let per = qm.input.features();
        let eval = &self.eval;
        let (mut correct, mut loss) = (0usize, 0.0f64);
        for start in (0..eval.n).step_by(EVAL_BATCH) {
            let b = EVAL_BATCH.min(eval.n - start);
            let logits = engine.run(
                &qm.input_codes(&eval.images[start * per..(start + b) * per]),
                b,
            )?;
            let out = softmax_cross_entropy(
                &Tensor::new(logits, vec![b, qm.classes]),
                &eval.labels[start..start + b],
            )?;
            correct += out.correct;
            loss += f64::from(out.loss) * b as f64;
        }
        Ok((correct as f64 / eval.n as f64, loss / eval.n as f64))
    }

    /// Accuracy of the float model on the same images.
    fn float_accuracy(&self) -> Result<f64> {
        let eval = &self.eval;
        let mut m = self.model.clone();
        let mut x = Vec::with_capacity(eval.images.len());
        crate::data::pixels_to_input(
            &eval.images,
            eval.shape,
            eval.normalization.as_ref(),
            &mut x,
        );
        let [c, h, w] = eval.shape;
        let x = Tensor::new(x, vec![eval.n, c, h, w]);
        let pred = m.predict(&x)?;
        Ok(pred
            .iter()
            .zip(&eval.labels)
            .filter(|(p, &l)| **p == usize::from(l))
            .count() as f64
            / eval.n as f64)
    }
}

/// The evaluated images, as the engine takes them.
struct Eval {
    images: Vec<u8>,
    labels: Vec<u8>,
    n: usize,
    shape: [usize; 3],
    normalization: Option<lowbit_runtime::preprocess::Normalization>,
}

/// Indices of `n` samples spread evenly over `total` (as [`pipeline::sample_batches`] picks them).
fn spread(total: usize, n: usize) -> Vec<usize> {
    let n = n.min(total);
    (0..n).map(|i| i * total / n.max(1)).collect()
}

/// `n` of `total` training-image indices, spread evenly (halfway between the calibration picks where it can)
/// and disjoint from the `calibration` ones PTQ takes ([`spread`]`(total, calibration)`); as many as are free
/// when fewer than `n`.
fn held_out(total: usize, n: usize, calibration: usize) -> Vec<usize> {
    let mut used = vec![false; total];
    for i in spread(total, calibration) {
        used[i] = true;
    }
    let n = n.min(used.iter().filter(|&&u| !u).count());
    let mut pick = Vec::with_capacity(n);
    for i in 0..n {
        // Free indices remain (n counted them), so the walk ends.
        let mut j = (2 * i + 1) * total / (2 * n);
        while used[j] {
            j = (j + 1) % total;
        }
        used[j] = true;
        pick.push(j);
    }
    pick.sort_unstable();
    pick
}

/// Measures and estimates every weight layer's sensitivity of `model` (see the module doc). `progress` is told
/// `(done, total)` measurements.
pub fn analyse(
    model: &Model,
    split: &Split,
    cfg: &SensitivityConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Sensitivity> {
    cfg.validate()?;
    let measurer = Measurer::new(
        model,
        split,
        cfg.base.calibration_samples,
        cfg.samples,
        cfg.measure_on,
    )?;
    let weight_nodes: Vec<usize> = (0..model.nodes.len())
        .filter(|&j| is_weight_layer(&model.nodes[j].layer))
        .collect();
    let nl = weight_nodes.len();
    let act_measured = |l: usize| cfg.activations && l + 1 < nl;
    let total = 1 + cfg.bits.len()
        * (0..nl)
            .map(|l| 1 + usize::from(act_measured(l)))
            .sum::<usize>();
    let mut done = 0;

    let float_accuracy = measurer.float_accuracy()?;
    let (base_accuracy, base_loss) = measurer.measure(&cfg.base)?;
    done += 1;
    progress(done, total);

    let traces = if cfg.hessian_iters > 0 {
        Some(hessian_traces(model, split, &weight_nodes, cfg)?)
    } else {
        None
    };
    let mut layers = Vec::with_capacity(nl);
    for (l, &j) in weight_nodes.iter().enumerate() {
        let node = &model.nodes[j];
        let (w, rows) = weight_of(&node.layer);
        let mut costs = Vec::with_capacity(cfg.bits.len());
        for &b in &cfg.bits {
            let only = |weight_bits, act_bits| QuantConfig {
                layers: vec![LayerQuant {
                    layer: LayerSelector::Index(l as i64),
                    weight_bits,
                    act_bits,
                    calibration: None,
                    weight_calibration: None,
                }],
                ..cfg.base.clone()
            };
            let wq = quant::WeightQuantizer::from_config(&QuantConfig {
                weight_bits: b,
                ..cfg.base.clone()
            })?;
            let perturbation: f64 = wq
                .fake_quantize(w, rows, w.len() / rows.max(1))
                .iter()
                .zip(w)
                .map(|(q, w)| f64::from(q - w).powi(2))
                .sum();
            let (acc, loss) = measurer.measure(&only(Some(b), None))?;
            done += 1;
            progress(done, total);
            let act_drop_pp = if act_measured(l) {
                let (a, _) = measurer.measure(&only(None, Some(b)))?;
                done += 1;
                progress(done, total);
                Some((base_accuracy - a) * 100.0)
            } else {
                None
            };
            costs.push(BitCost {
                bits: b,
                weight_perturbation: perturbation,
                predicted: traces
                    .as_ref()
                    .map(|t| t[l] / w.len().max(1) as f64 * perturbation),
                weight_drop_pp: (base_accuracy - acc) * 100.0,
                weight_loss_delta: loss - base_loss,
                act_drop_pp,
            });
        }
        layers.push(LayerSensitivity {
            index: l,
            name: node.name.clone(),
            weights: w.len(),
            rows,
            hessian_trace: traces.as_ref().map(|t| t[l]),
            costs,
        });
    }
    let per_width = cfg
        .bits
        .iter()
        .enumerate()
        .map(|(k, &b)| {
            let predicted: Option<Vec<f64>> = layers.iter().map(|l| l.costs[k].predicted).collect();
            let measured: Vec<f64> = layers
                .iter()
                .map(|l| l.costs[k].weight_loss_delta)
                .collect();
            (b, predicted.and_then(|p| spearman(&p, &measured)))
        })
        .collect();
    let pooled: Option<Vec<(f64, f64)>> = layers
        .iter()
        .flat_map(|l| &l.costs)
        .map(|c| c.predicted.map(|p| (p, c.weight_loss_delta)))
        .collect();
    let spearman_pooled = pooled.and_then(|v| {
        let (p, m): (Vec<f64>, Vec<f64>) = v.into_iter().unzip();
        spearman(&p, &m)
    });
    Ok(Sensitivity {
        float_accuracy,
        base_accuracy,
        base_loss,
        measured_on: measurer.measured_on(),
        samples: measurer.samples(),
        layers,
        spearman: per_width,
        spearman_pooled,
    })
}

/// A weight layer's weights and output-channel count.
fn weight_of(layer: &Layer) -> (&[f32], usize) {
    match layer {
        Layer::Dense(d) => (&d.weight, d.out_features),
        Layer::Conv2d(c) => (&c.weight, c.out_channels),
        _ => (&[], 1),
    }
}

/// Hutchinson estimates of `tr(H_l)` for every weight layer `l` (node indices `weight_nodes`) of the mean
/// cross-entropy over `cfg.hessian_samples` training images.
fn hessian_traces(
    model: &Model,
    split: &Split,
    weight_nodes: &[usize],
    cfg: &SensitivityConfig,
) -> Result<Vec<f64>> {
    let train = &split.train;
    let pick = spread(train.n, cfg.hessian_samples);
    let per = train.image_len();
    let batches: Vec<(Tensor, Vec<u8>)> = pick
        .chunks(EVAL_BATCH)
        .map(|c| {
            let mut x = vec![0.0f32; c.len() * per];
            for (k, &i) in c.iter().enumerate() {
                train.write_sample(i, &mut x[k * per..(k + 1) * per]);
            }
            (
                Tensor::new(x, vec![c.len(), train.channels, train.rows, train.cols]),
                c.iter().map(|&i| train.labels[i]).collect(),
            )
        })
        .collect();
    hutchinson(model, &batches, weight_nodes, cfg.hessian_iters, cfg.seed)
}

/// The logits' softmax, row by row, in f64.
fn softmax_rows(logits: &Tensor) -> Vec<f64> {
    let c = logits.row_len().max(1);
    let mut p: Vec<f64> = logits.data.iter().map(|&z| f64::from(z)).collect();
    for row in p.chunks_mut(c) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
    p
}

/// Hutchinson estimates of `tr(H_l)` of the mean cross-entropy over `batches`, `iters` probes.
///
/// For a network that is piecewise linear in each layer's weights (ReLU, pooling, frozen batch norm), the
/// layer's Hessian block is exactly its Gauss-Newton block `H_ll = mean_i J_i^T (diag(p_i) - p_i p_i^T) J_i`
/// almost everywhere, and a probe is one backward pass: logit gradients `s_i (p_i - e_{y_i})` with random signs
/// `s_i` over the samples and labels `y_i` drawn from the model's own softmax, so that
/// `E ||g_l||^2 = sum_i tr(J_i^T H_out J_i)`. Every layer is probed at once without cross-layer terms, the
/// estimate is never negative, and no finite difference meets ReLU's kinks (a second difference of the loss
/// does, and came out negative on LeNet's first conv).
fn hutchinson(
    model: &Model,
    batches: &[(Tensor, Vec<u8>)],
    weight_nodes: &[usize],
    iters: usize,
    seed: u64,
) -> Result<Vec<f64>> {
    let mut m = model.clone();
    for node in &mut m.nodes {
        match &mut node.layer {
            Layer::BatchNorm2d(b) => b.frozen = true,
            Layer::Dropout(d) => d.p = 0.0,
            _ => {}
        }
    }
    let n: f64 = batches.iter().map(|(_, y)| y.len() as f64).sum();
    let mut rng = Rng::new(seed ^ 0x4855_5443_4849_4e53);
    let mut traces = vec![0.0f64; weight_nodes.len()];
    for (x, y) in batches {
        let logits = m.forward(x, true)?;
        let c = logits.row_len().max(1);
        let p = softmax_rows(&logits);
        for _ in 0..iters {
            let mut g = vec![0.0f32; p.len()];
            for (pr, gr) in p.chunks(c).zip(g.chunks_mut(c)).take(y.len()) {
                let u = f64::from(rng.uniform());
                let mut acc = 0.0;
                let label = pr
                    .iter()
                    .position(|&q| {
                        acc += q;
                        u < acc
                    })
                    .unwrap_or(c - 1);
                let sign = if rng.next_u64() & 1 == 0 { -1.0 } else { 1.0 };
                for (k, (gv, &q)) in gr.iter_mut().zip(pr).enumerate() {
                    *gv = (sign * (q - f64::from(u8::from(k == label)))) as f32;
                }
            }
            m.backward(&Tensor::new(g, logits.shape.clone()))?;
            for (t, &j) in traces.iter_mut().zip(weight_nodes) {
                let gw: &[f32] = match &m.nodes[j].layer {
                    Layer::Dense(d) => &d.grad_weight,
                    Layer::Conv2d(c) => &c.grad_weight,
                    _ => &[],
                };
                let sq: f64 = gw.iter().map(|&v| f64::from(v).powi(2)).sum();
                *t += sq / n / iters as f64;
            }
        }
    }
    Ok(traces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_is_one_for_monotone_series_minus_one_reversed_and_handles_ties() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&a, &[10.0, 20.0, 35.0, 90.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        // Ties take their average rank: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3).
        let r = spearman(&[1.0, 2.0, 2.0, 3.0], &a).unwrap();
        assert!((r - 0.948_683_298).abs() < 1e-6, "{r}");
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(spearman(&[1.0, 2.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn the_hutchinson_traces_match_the_exact_gauss_newton_traces_from_per_sample_gradients() {
        let model = Model::from_spec_for("mlp:6-5-3", 3, [1, 1, 6], 3).unwrap();
        let mut rng = Rng::new(11);
        let batches: Vec<(Tensor, Vec<u8>)> = (0..2)
            .map(|_| {
                let x: Vec<f32> = (0..20 * 6).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
                let y: Vec<u8> = (0..20).map(|i| (i % 3) as u8).collect();
                (Tensor::new(x, vec![20, 6]), y)
            })
            .collect();
        let weight_nodes: Vec<usize> = (0..model.nodes.len())
            .filter(|&j| is_weight_layer(&model.nodes[j].layer))
            .collect();
        let est = hutchinson(&model, &batches, &weight_nodes, 3000, 5).unwrap();
        // Exact: sum over samples i and labels c of p_ic ||d CE(x_i, c) / d W_l||^2, over the sample count.
        let mut m = model.clone();
        let mut exact = vec![0.0f64; weight_nodes.len()];
        for (x, _) in &batches {
            for i in 0..x.rows() {
                let xi = Tensor::new(x.data[i * 6..(i + 1) * 6].to_vec(), vec![1, 6]);
                let p = softmax_rows(&m.forward(&xi, true).unwrap());
                for (c, &pc) in p.iter().enumerate() {
                    let out =
                        softmax_cross_entropy(&m.forward(&xi, true).unwrap(), &[c as u8]).unwrap();
                    m.backward(&out.grad).unwrap();
                    for (e, &j) in exact.iter_mut().zip(&weight_nodes) {
                        if let Layer::Dense(d) = &m.nodes[j].layer {
                            *e += pc
                                * d.grad_weight
                                    .iter()
                                    .map(|&v| f64::from(v).powi(2))
                                    .sum::<f64>()
                                / 40.0;
                        }
                    }
                }
            }
        }
        for (l, (&e, &x)) in est.iter().zip(&exact).enumerate() {
            assert!(x > 0.0);
            assert!(
                (e - x).abs() / x < 0.05,
                "layer {l}: estimate {e} exact {x}"
            );
        }
        // A different seed estimates the same quantity: the estimate is not an artefact of one draw.
        let other = hutchinson(&model, &batches, &weight_nodes, 3000, 6).unwrap();
        assert_ne!(other, est);
    }

    #[test]
    fn spread_picks_evenly_and_never_more_than_there_are() {
        assert_eq!(spread(10, 4), vec![0, 2, 5, 7]);
        assert_eq!(spread(3, 100), vec![0, 1, 2]);
    }

    #[test]
    fn held_out_images_are_distinct_spread_and_never_calibration_images() {
        // Fashion-MNIST's sizes: calibration takes every 30th image, the measurement the ones halfway between.
        let pick = held_out(60_000, 2000, 2000);
        assert_eq!(pick, (0..2000).map(|i| 30 * i + 15).collect::<Vec<_>>());
        for (total, n, calibration) in [
            (10, 4, 5),
            (10, 100, 5),
            (7, 3, 7),
            (7, 3, 0),
            (1000, 999, 1),
            (5, 5, 3),
        ] {
            let pick = held_out(total, n, calibration);
            let calib = spread(total, calibration);
            let free = total - calib.len();
            assert_eq!(pick.len(), n.min(free), "{total} {n} {calibration}");
            assert!(
                pick.windows(2).all(|w| w[0] < w[1]),
                "distinct and sorted: {pick:?}"
            );
            assert!(
                pick.iter().all(|i| *i < total && !calib.contains(i)),
                "{pick:?} vs {calib:?}"
            );
        }
        assert!(held_out(7, 3, 7).is_empty());
    }
}
