//! Per-layer sensitivity to quantization: what each bit costs, layer by layer.
//!
//! Three answers, side by side:
//! - **Measured**, one layer at a time: the model quantized by PTQ at the base setting (W8A8 by default), except
//!   one weight layer's weights (or its output activations) at `b` bits; accuracy and loss on the integer engine,
//!   against the all-base model.
//! - **Predicted** without a sweep (HAWQ-V2, Dong et al. 2020): `Omega = tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2`,
//!   the layer's mean Hessian trace (Hutchinson's estimator `E[v^T H v]` over Rademacher `v`, Avron & Toledo
//!   2011) times the squared weight perturbation of its quantizer, each probe one backward pass (see
//!   `hutchinson` below). Batch norms use their running statistics (as deployed) and dropout is off.
//! - **Predicted, second order** (Gauss-Newton): `1/2 mean_i dz_i^T (diag(p_i) - p_i p_i^T) dz_i`, `dz_i` the
//!   change of sample `i`'s logits when only that layer's weights are quantized, `p_i` its softmax: the
//!   quadratic form `1/2 dW^T G dW` of the layer's Gauss-Newton block (equal to the Hessian's where the network
//!   is linear in the layer's weights), in nats like the measured loss increase, at one forward pass per layer
//!   and width. Unlike the trace it sees the direction of the rounding error, not only its size.
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
    /// Training images behind the HAWQ and Gauss-Newton estimates.
    pub hessian_samples: usize,
    /// Rademacher vectors of Hutchinson's estimator (0 skips HAWQ's estimate).
    pub hessian_iters: usize,
    /// Compute the Gauss-Newton estimate (on the `hessian_samples` images).
    pub gauss_newton: bool,
    /// Measure each layer by PTQ one layer at a time (false: only the estimates, at a fraction of the cost; the
    /// all-base model is still measured).
    pub measure: bool,
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
            gauss_newton: true,
            measure: true,
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
        if (self.hessian_iters > 0 || self.gauss_newton) && self.hessian_samples == 0 {
            return Err(Error::option("--hessian-samples", "must be at least 1"));
        }
        if !self.measure && self.hessian_iters == 0 && !self.gauss_newton {
            return Err(Error::option(
                "--cost",
                "nothing to do: no layer is measured and no estimate is computed",
            ));
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
    /// HAWQ's `tr(H) / n * ||Q_b(W) - W||^2` (when HAWQ's trace was estimated: `hessian_iters > 0`).
    pub predicted: Option<f64>,
    /// The Gauss-Newton second-order estimate of the loss increase (nats; see the module doc), on the
    /// `hessian_samples` training images (when [`SensitivityConfig::gauss_newton`] asked for it).
    pub predicted_gn: Option<f64>,
    /// Engine accuracy drop (pp, positive = worse) with only this layer's weights at `bits` (None when the
    /// layers were not measured).
    pub weight_drop_pp: Option<f64>,
    /// Engine mean cross-entropy increase with only this layer's weights at `bits` (None when the layers were
    /// not measured).
    pub weight_loss_delta: Option<f64>,
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
    /// the layers (None without HAWQ's estimate, without measurements or with fewer than 3 layers).
    pub spearman: Vec<(u32, Option<f64>)>,
    /// Spearman's rank correlation over every (layer, bit width) pair at once: what a mixed-precision allocation
    /// relies on, since it trades one layer's bits against another's (None without HAWQ's estimate or without
    /// measurements).
    pub spearman_pooled: Option<f64>,
    /// [`Sensitivity::spearman`] for the Gauss-Newton estimate ([`BitCost::predicted_gn`]).
    pub spearman_gn: Vec<(u32, Option<f64>)>,
    /// [`Sensitivity::spearman_pooled`] for the Gauss-Newton estimate.
    pub spearman_gn_pooled: Option<f64>,
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
    analyse_with(&measurer, split, cfg, progress)
}

/// [`analyse`] with a [`Measurer`] the caller keeps (to refine an allocation on the same images afterwards); build
/// it from the same `cfg`, as [`analyse`] does. Its images stand in for `cfg.samples` and `cfg.measure_on`, and PTQ
/// calibrates on at most `cfg.base.calibration_samples` of its calibration images; `split` gives the training
/// images of the Hessian and Gauss-Newton estimates.
pub fn analyse_with(
    measurer: &Measurer,
    split: &Split,
    cfg: &SensitivityConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Sensitivity> {
    cfg.validate()?;
    let model = measurer.model;
    let weight_nodes: Vec<usize> = (0..model.nodes.len())
        .filter(|&j| is_weight_layer(&model.nodes[j].layer))
        .collect();
    let nl = weight_nodes.len();
    let act_measured = |l: usize| cfg.measure && cfg.activations && l + 1 < nl;
    let total = 1 + cfg.bits.len()
        * (0..nl)
            .map(|l| usize::from(cfg.measure) + usize::from(act_measured(l)))
            .sum::<usize>();
    let mut done = 0;

    let float_accuracy = measurer.float_accuracy()?;
    let (base_accuracy, base_loss) = measurer.measure(&cfg.base)?;
    done += 1;
    progress(done, total);

    let batches = (cfg.hessian_iters > 0 || cfg.gauss_newton)
        .then(|| hessian_batches(split, cfg.hessian_samples));
    let traces = match &batches {
        Some(b) if cfg.hessian_iters > 0 => Some(hutchinson(
            model,
            b,
            &weight_nodes,
            cfg.hessian_iters,
            cfg.seed,
        )?),
        _ => None,
    };
    let mut probe = match batches {
        Some(b) if cfg.gauss_newton => Some(OutputProbe::new(model, b)?),
        _ => None,
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
            let quantized = wq.fake_quantize(w, rows, w.len() / rows.max(1));
            let perturbation: f64 = quantized
                .iter()
                .zip(w)
                .map(|(q, w)| f64::from(q - w).powi(2))
                .sum();
            let predicted_gn = match probe.as_mut() {
                Some(p) => Some(p.gauss_newton(j, &quantized)?),
                None => None,
            };
            let measured = match cfg.measure {
                true => {
                    let (acc, loss) = measurer.measure(&only(Some(b), None))?;
                    done += 1;
                    progress(done, total);
                    Some(((base_accuracy - acc) * 100.0, loss - base_loss))
                }
                false => None,
            };
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
                predicted_gn,
                weight_drop_pp: measured.map(|m| m.0),
                weight_loss_delta: measured.map(|m| m.1),
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
    let (spearman, spearman_pooled) = rank_agreement(&layers, &cfg.bits, |c| c.predicted);
    let (spearman_gn, spearman_gn_pooled) = rank_agreement(&layers, &cfg.bits, |c| c.predicted_gn);
    Ok(Sensitivity {
        float_accuracy,
        base_accuracy,
        base_loss,
        measured_on: measurer.measured_on(),
        samples: measurer.samples(),
        layers,
        spearman,
        spearman_pooled,
        spearman_gn,
        spearman_gn_pooled,
    })
}

/// Spearman's coefficient between a prediction and the measured loss increase, per bit width (over the layers)
/// and over every (layer, width) pair; None where the prediction is missing.
fn rank_agreement(
    layers: &[LayerSensitivity],
    bits: &[u32],
    predicted: impl Fn(&BitCost) -> Option<f64>,
) -> (PerWidth, Option<f64>) {
    let per_width = bits
        .iter()
        .enumerate()
        .map(|(k, &b)| {
            let p: Option<Vec<f64>> = layers.iter().map(|l| predicted(&l.costs[k])).collect();
            let m: Option<Vec<f64>> = layers
                .iter()
                .map(|l| l.costs[k].weight_loss_delta)
                .collect();
            (b, p.zip(m).and_then(|(p, m)| spearman(&p, &m)))
        })
        .collect();
    let pooled: Option<Vec<(f64, f64)>> = layers
        .iter()
        .flat_map(|l| &l.costs)
        .map(|c| predicted(c).zip(c.weight_loss_delta))
        .collect();
    let pooled = pooled.and_then(|v| {
        let (p, m): (Vec<f64>, Vec<f64>) = v.into_iter().unzip();
        spearman(&p, &m)
    });
    (per_width, pooled)
}

/// A weight layer's weights and output-channel count.
fn weight_of(layer: &Layer) -> (&[f32], usize) {
    match layer {
        Layer::Dense(d) => (&d.weight, d.out_features),
        Layer::Conv2d(c) => (&c.weight, c.out_channels),
        _ => (&[], 1),
    }
}

/// Spearman's coefficient per bit width.
type PerWidth = Vec<(u32, Option<f64>)>;

/// Images with their labels, batch by batch.
type Batches = Vec<(Tensor, Vec<u8>)>;

/// `samples` training images spread evenly, in batches with their labels: what the Hessian estimates run on.
fn hessian_batches(split: &Split, samples: usize) -> Batches {
    let train = &split.train;
    let pick = spread(train.n, samples);
    let per = train.image_len();
    pick.chunks(EVAL_BATCH)
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
        .collect()
}

/// The model as deployed (batch norms on running statistics, no dropout), for the Hessian estimates.
fn deployed(model: &Model) -> Model {
    let mut m = model.clone();
    for node in &mut m.nodes {
        match &mut node.layer {
            Layer::BatchNorm2d(b) => b.frozen = true,
            Layer::Dropout(d) => d.p = 0.0,
            _ => {}
        }
    }
    m
}

/// The Gauss-Newton estimate of one layer's quantization (see the module doc): the float logits and softmax of
/// the Hessian's images kept once, each layer's quantized weights swapped in for one forward pass.
struct OutputProbe {
    model: Model,
    batches: Batches,
    logits: Vec<Tensor>,
    probs: Vec<Vec<f64>>,
}

impl OutputProbe {
    fn new(model: &Model, batches: Batches) -> Result<Self> {
        let mut model = deployed(model);
        let mut logits = Vec::with_capacity(batches.len());
        for (x, _) in &batches {
            logits.push(model.forward(x, true)?);
        }
        let probs = logits.iter().map(softmax_rows).collect();
        Ok(Self {
            model,
            batches,
            logits,
            probs,
        })
    }

    /// `1/2 mean_i dz_i^T (diag(p_i) - p_i p_i^T) dz_i` with node `node`'s weights replaced by `weights` (0 for a
    /// node without weights: nothing changes).
    fn gauss_newton(&mut self, node: usize, weights: &[f32]) -> Result<f64> {
        let Some(slot) = weights_mut(&mut self.model.nodes[node].layer) else {
            return Ok(0.0);
        };
        if slot.len() != weights.len() {
            return Err(Error::Shape(format!(
                "{} weights for a layer of {}",
                weights.len(),
                slot.len()
            )));
        }
        let float = std::mem::replace(slot, weights.to_vec());
        let form = self.quadratic_form();
        if let Some(slot) = weights_mut(&mut self.model.nodes[node].layer) {
            *slot = float;
        }
        form
    }

    fn quadratic_form(&mut self) -> Result<f64> {
        let (mut sum, mut n) = (0.0f64, 0usize);
        for (((x, y), z0), p) in self.batches.iter().zip(&self.logits).zip(&self.probs) {
            let z = self.model.forward(x, true)?;
            let c = z.row_len().max(1);
            for ((zr, z0r), pr) in z.data.chunks(c).zip(z0.data.chunks(c)).zip(p.chunks(c)) {
                // dz^T (diag(p) - p p^T) dz = sum p dz^2 - (sum p dz)^2.
                let (mut second, mut first) = (0.0f64, 0.0f64);
                for ((&a, &b), &q) in zr.iter().zip(z0r).zip(pr) {
                    let dz = f64::from(a) - f64::from(b);
                    second += q * dz * dz;
                    first += q * dz;
                }
                sum += second - first * first;
            }
            n += y.len();
        }
        Ok(0.5 * sum / n.max(1) as f64)
    }
}

/// The weights of a weight layer, to swap.
fn weights_mut(layer: &mut Layer) -> Option<&mut Vec<f32>> {
    match layer {
        Layer::Dense(d) => Some(&mut d.weight),
        Layer::Conv2d(c) => Some(&mut c.weight),
        _ => None,
    }
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
    let mut m = deployed(model);
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
#[path = "sensitivity_tests.rs"]
mod tests;
