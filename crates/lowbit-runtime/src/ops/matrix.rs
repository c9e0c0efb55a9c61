//! Dense (and what Conv2d shares with it): weight validation, the zero-point-corrected bias, the i32 overflow
//! bound and the output stage (requantize to codes, or logits).
//!
//! Conventions (normative; the training library's independent interpreter matches them bit for bit):
//! - Zero-point correction is folded into the bias once: `bias_eff[j] = bias[j] - zp_in * sum_k w[j][k]`, so the
//!   kernels multiply raw `u8` codes by weight codes and `acc[j] = bias[j] + sum_k (a[k] - zp_in) * w[j][k]`.
//! - Requantized outputs: `out = clamp(zp_out + requant[j or 0].apply(acc), qmin, qmax)`
//!   ([`crate::qparams::requantize`]) with `qmax = 2^bits - 1` and `qmin = zp_out` when ReLU is fused, else 0.
//! - Logits: `acc as f32 * (s_in * s_w[j])`, the product of the two scales taken in f32 first.
use super::{
    check_input_qparams, check_qparams, internal, qp_err, shape_err, InferCx, Inferred, OpDef,
    PlanCx, Shape, Step, StepOut, ValueInfo, ValueQuant, MAX_ACT_CODE,
};
use crate::error::QuantError;
use crate::kernels::{self, Isa, OutputParams, PrepackedWeights};
use crate::model::{OutputStage, QDense};
use crate::pack::PackedWeights;
use crate::qparams::{act_code_range, QParams, Requant};

/// How a matrix op's accumulators leave it.
#[derive(Debug, Clone)]
pub(crate) enum Out {
    Requant {
        requant: Vec<Requant>,
        zero_point: i32,
        qmin: i32,
        qmax: i32,
    },
    /// `s_in * s_w[j]` in f32, one per output row.
    Logits { factor: Vec<f32> },
}

/// A validated weight matrix with its zero-point-corrected bias, prepared for a kernel tier.
#[derive(Debug, Clone)]
pub(crate) struct Gemm {
    /// Output rows (N).
    pub n: usize,
    /// Codes per row (K).
    pub k: usize,
    /// Prepared once for the selected kernel tier (int8 panels on AVX2; see [`PrepackedWeights`]).
    pub weights: PrepackedWeights,
    pub bias_eff: Vec<i32>,
    pub out: Out,
}

impl Gemm {
    pub(crate) fn acc(&self, a: &[u8], m: usize, out: &mut [i32]) -> Result<(), QuantError> {
        kernels::gemm_acc_prepacked(a, m, self.k, &self.weights, &self.bias_eff, out)
    }

    pub(crate) fn requant(&self, a: &[u8], m: usize, out: &mut [u8]) -> Result<(), QuantError> {
        let p = self.output_params(&self.bias_eff)?;
        kernels::gemm_requant_prepacked(a, m, self.k, &self.weights, &p, out)
    }

    /// The kernels' output stage with `bias` (empty where the accumulators already hold it).
    pub(crate) fn output_params<'a>(
        &'a self,
        bias: &'a [i32],
    ) -> Result<OutputParams<'a>, QuantError> {
        self.out.params(bias)
    }

    /// Logits from NCHW accumulators (see [`Out::logits`]).
    pub(crate) fn logits(&self, acc: &[i32], positions: usize) -> Result<Vec<f32>, QuantError> {
        self.out.logits(acc, positions)
    }
}

impl Out {
    /// Logits from NCHW accumulators: each run of `positions` values is one channel, channels cycling per sample.
    pub(crate) fn logits(&self, acc: &[i32], positions: usize) -> Result<Vec<f32>, QuantError> {
        let Out::Logits { factor } = self else {
            return Err(internal("the last layer must emit logits"));
        };
        let mut logits = Vec::with_capacity(acc.len());
        for (row, &f) in acc.chunks(positions.max(1)).zip(factor.iter().cycle()) {
            logits.extend(row.iter().map(|&a| a as f32 * f));
        }
        Ok(logits)
    }

    /// The kernels' output stage with `bias`; an error for logits.
    pub(crate) fn params<'a>(&'a self, bias: &'a [i32]) -> Result<OutputParams<'a>, QuantError> {
        match self {
            Out::Requant {
                requant,
                zero_point,
                qmin,
                qmax,
            } => Ok(OutputParams {
                bias,
                requant,
                zero_point: *zero_point,
                qmin: *qmin,
                qmax: *qmax,
            }),
            Out::Logits { .. } => Err(internal("requant called on a logits layer")),
        }
    }
}

/// Validates packed weights ([`PackedWeights::validate`] plus non-empty shape) and returns each row's code sum.
pub fn validate_weights(w: &PackedWeights, tensor: &str) -> Result<Vec<i64>, QuantError> {
    if w.rows == 0 || w.cols == 0 {
        return Err(shape_err(
            tensor,
            format!("empty weight matrix {} x {}", w.rows, w.cols),
        ));
    }
    w.validate().map_err(|e| match e {
        QuantError::InvalidQParams { reason, .. } => qp_err(tensor.into(), reason),
        QuantError::ShapeMismatch { detail, .. } => shape_err(tensor, detail),
        other => other,
    })?;
    let mut row = vec![0i8; w.cols];
    let mut sums = Vec::with_capacity(w.rows);
    for r in 0..w.rows {
        w.unpack_row(r, &mut row);
        sums.push(row.iter().map(|&c| c as i64).sum());
    }
    Ok(sums)
}

/// Everything a Dense or Conv2d op shares.
pub(crate) struct MatrixSpec<'a> {
    pub name: &'a str,
    pub rows: usize,
    pub k: usize,
    pub weights: &'a PackedWeights,
    pub weight_scales: &'a [f32],
    pub bias: &'a [i32],
    pub input: QParams,
    pub output: &'a OutputStage,
}

/// A matrix op after validation: the corrected bias, the output stage and the quantization of what it emits.
pub(crate) struct CheckedMatrix {
    pub bias_eff: Vec<i32>,
    pub out: Out,
    pub quant: ValueQuant,
}

impl MatrixSpec<'_> {
    /// Validates weights, scales, bias (with the i32 overflow bound) and the output stage.
    pub(crate) fn check(&self, cx: &InferCx<'_>) -> Result<CheckedMatrix, QuantError> {
        let name = self.name;
        check_input_qparams(cx, 0, self.input)?;
        if self.weights.rows != self.rows || self.weights.cols != self.k {
            return Err(shape_err(
                &format!("{name}.weight"),
                format!(
                    "expected {} x {}, found {} x {}",
                    self.rows, self.k, self.weights.rows, self.weights.cols
                ),
            ));
        }
        let sums = validate_weights(self.weights, &format!("{name}.weight"))?;
        if self.bias.len() != self.rows {
            return Err(shape_err(
                &format!("{name}.bias"),
                format!("expected {} values, found {}", self.rows, self.bias.len()),
            ));
        }
        if self.weight_scales.len() != 1 && self.weight_scales.len() != self.rows {
            return Err(shape_err(
                &format!("{name}.weight_scales"),
                format!(
                    "expected 1 or {} values, found {}",
                    self.rows,
                    self.weight_scales.len()
                ),
            ));
        }
        for &sw in self.weight_scales {
            QParams::new(sw, 0).map_err(|_| {
                qp_err(
                    format!("{name}.weight_scales"),
                    format!("scale {sw} must be finite, normal and > 0"),
                )
            })?;
        }
        // Overflow bound (the kernels' one, for every bit width): any partial sum of products is at most
        // K * 255 * 127 (K <= kernels::MAX_K); the kernels may add the bias before or after, so |bias_eff| plus
        // that must fit in i32 too. The original bias is checked as well: it bounds the true (zero-point
        // corrected) sum.
        let prod_bound = Some(self.k)
            .filter(|&k| k <= kernels::MAX_K)
            .map(|k| k as i64 * MAX_ACT_CODE * 127)
            .ok_or_else(|| {
                shape_err(
                    &format!("{name}.weight"),
                    format!("K = {} can overflow the i32 accumulator", self.k),
                )
            })?;
        let zp = self.input.zero_point as i64;
        let mut bias_eff = Vec::with_capacity(self.rows);
        for (j, (&b, &sum)) in self.bias.iter().zip(&sums).enumerate() {
            let e = b as i64 - zp * sum;
            if e.abs() + prod_bound > i32::MAX as i64
                || (b as i64).abs() + prod_bound > i32::MAX as i64
            {
                return Err(shape_err(
                    &format!("{name}.bias"),
                    format!(
                        "bias[{j}] = {b} with K = {} can overflow the i32 accumulator",
                        self.k
                    ),
                ));
            }
            bias_eff.push(e as i32);
        }
        let (out, quant) = match self.output {
            OutputStage::Logits => {
                if !cx.is_output {
                    return Err(shape_err(name, "only the last node may emit logits".into()));
                }
                let mut factor = Vec::with_capacity(self.rows);
                for j in 0..self.rows {
                    let sw = if self.weight_scales.len() == 1 {
                        self.weight_scales.first()
                    } else {
                        self.weight_scales.get(j)
                    };
                    let f = self.input.scale * sw.copied().unwrap_or(f32::NAN);
                    if !f.is_finite() {
                        return Err(qp_err(
                            format!("{name}.weight_scales"),
                            format!("s_in * s_w[{j}] = {f} is not finite"),
                        ));
                    }
                    factor.push(f);
                }
                (Out::Logits { factor }, ValueQuant::Logits)
            }
            OutputStage::Requantize {
                qparams,
                bits,
                relu,
                requant,
                max_code,
            } => {
                cx.not_output()?;
                let (_, full) = act_code_range(*bits)?;
                check_qparams(*qparams, &format!("{name}.output"), full)?;
                let qmin = if *relu { qparams.zero_point } else { 0 };
                let qmax = match *max_code {
                    None => full,
                    Some(m) if (qmin..=full).contains(&m) => m,
                    Some(m) => {
                        return Err(qp_err(
                            format!("{name}.output"),
                            format!("max_code {m} outside [{qmin}, {full}]"),
                        ))
                    }
                };
                if requant.len() != 1 && requant.len() != self.rows {
                    return Err(shape_err(
                        &format!("{name}.requant"),
                        format!(
                            "expected 1 or {} values, found {}",
                            self.rows,
                            requant.len()
                        ),
                    ));
                }
                for r in requant {
                    r.validate()?;
                }
                (
                    Out::Requant {
                        requant: requant.clone(),
                        zero_point: qparams.zero_point,
                        qmin,
                        qmax,
                    },
                    ValueQuant::Codes {
                        qparams: *qparams,
                        bits: *bits,
                    },
                )
            }
        };
        Ok(CheckedMatrix {
            bias_eff,
            out,
            quant,
        })
    }

    /// [`MatrixSpec::check`], then the weights prepared for `isa`.
    pub(crate) fn gemm(&self, cx: &InferCx<'_>, isa: Isa) -> Result<Gemm, QuantError> {
        let c = self.check(cx)?;
        Ok(Gemm {
            n: self.rows,
            k: self.k,
            weights: PrepackedWeights::with_isa(isa, self.weights.clone())?,
            bias_eff: c.bias_eff,
            out: c.out,
        })
    }
}

/// Describes weights and output stage: `int4 per-channel, requant 8-bit relu`.
pub(crate) fn describe_matrix(w: &PackedWeights, scales: &[f32], out: &OutputStage) -> String {
    let weights = match w.bits {
        1 => "binary".to_string(),
        2 => "ternary".to_string(),
        b => format!("int{b}"),
    };
    let gran = if scales.len() > 1 {
        "per-channel"
    } else {
        "per-tensor"
    };
    let stage = match out {
        OutputStage::Logits => "logits".to_string(),
        OutputStage::Requantize {
            bits,
            relu,
            max_code,
            ..
        } => format!(
            "requant {bits}-bit{}{}",
            if *relu { " relu" } else { "" },
            max_code.map_or(String::new(), |m| format!(" max {m}"))
        ),
    };
    format!("{weights} {gran}, {stage}")
}

impl QDense {
    fn spec<'a>(&'a self, name: &'a str) -> MatrixSpec<'a> {
        MatrixSpec {
            name,
            rows: self.out_features,
            k: self.in_features,
            weights: &self.weights,
            weight_scales: &self.weight_scales,
            bias: &self.bias,
            input: self.input,
            output: &self.output,
        }
    }

    fn check_features(&self, cx: &InferCx<'_>) -> Result<(), QuantError> {
        let x = cx.input()?;
        let n = x.shape.elems();
        if n != Some(self.in_features) {
            return Err(shape_err(
                cx.name,
                format!(
                    "in_features {} but the incoming activation has {n:?}",
                    self.in_features
                ),
            ));
        }
        Ok(())
    }
}

impl OpDef for QDense {
    fn infer(&self, cx: &InferCx<'_>) -> Result<Inferred, QuantError> {
        self.check_features(cx)?;
        let c = self.spec(cx.name).check(cx)?;
        Ok(Inferred {
            output: ValueInfo {
                shape: Shape {
                    channels: self.out_features,
                    height: 1,
                    width: 1,
                },
                quant: c.quant,
            },
            scratch_elems: 0,
            macs: self.out_features.saturating_mul(self.in_features),
        })
    }

    fn describe(&self) -> String {
        format!(
            "dense {}->{}, {}",
            self.in_features,
            self.out_features,
            describe_matrix(&self.weights, &self.weight_scales, &self.output)
        )
    }

    fn plan(&self, cx: &PlanCx<'_>) -> Result<Box<dyn Step>, QuantError> {
        let icx = InferCx {
            name: cx.name,
            inputs: cx.inputs,
            is_output: cx.output.quant == ValueQuant::Logits,
        };
        Ok(Box::new(DenseStep {
            gemm: self.spec(cx.name).gemm(&icx, cx.isa)?,
        }))
    }
}

/// A Dense op: one GEMM over the batch.
#[derive(Debug)]
struct DenseStep {
    gemm: Gemm,
}

impl Step for DenseStep {
    fn run(&self, inputs: &[&[u8]], batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        let [x] = inputs else {
            return Err(internal("dense takes one input"));
        };
        match out {
            StepOut::Codes(o) => self.gemm.requant(x, batch, o),
            StepOut::Acc(o) => self.gemm.acc(x, batch, o),
        }
    }

    fn logits(&self, acc: &[i32]) -> Result<Vec<f32>, QuantError> {
        self.gemm.logits(acc, 1)
    }

    fn path(&self) -> Option<String> {
        Some(format!(
            "dense {}x{}: {}",
            self.gemm.k,
            self.gemm.n,
            self.gemm.weights.path()
        ))
    }
}
