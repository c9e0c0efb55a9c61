//! Ops that combine or map codes element by element: the residual Add, channel Concat and the 256-entry table
//! every unary function lowers to. Their arithmetic is [`crate::kernels::eltwise`]'s (normative there).
use super::{
    check_input_qparams, check_qparams, internal, shape_err, Arity, InferCx, Inferred, OpDef,
    PlanCx, Shape, Step, StepOut, ValueInfo, ValueQuant,
};
use crate::error::QuantError;
use crate::kernels::eltwise::{add_u8, lut_u8, rescale_u8, AddQuant, RescaleQuant};
use crate::model::{QAdd, QConcat, QLut};
use crate::qparams::{act_code_range, AddParams, QParams, Rescale};

/// Output quantization of an op that requantizes to `output` at `bits`, checked.
fn output_codes(name: &str, output: QParams, bits: u32) -> Result<(ValueQuant, i32), QuantError> {
    let (_, qmax) = act_code_range(bits)?;
    check_qparams(output, &format!("{name}.output"), qmax)?;
    Ok((
        ValueQuant::Codes {
            qparams: output,
            bits,
        },
        qmax,
    ))
}

impl QAdd {
    /// The kernels' parameters of this Add, validated.
    pub(crate) fn quant(&self, name: &str) -> Result<AddQuant, QuantError> {
        let [a, b] = self.inputs;
        let (_, qmax) = output_codes(name, self.output, self.bits)?;
        let q = AddQuant {
            params: AddParams::from_scales(a.scale, b.scale, self.output.scale)?,
            zero_point_a: a.zero_point,
            zero_point_b: b.zero_point,
            zero_point_out: self.output.zero_point,
            qmin: if self.relu { self.output.zero_point } else { 0 },
            qmax,
        };
        q.validate()?;
        Ok(q)
    }
}

impl OpDef for QAdd {
    fn arity(&self) -> Arity {
        Arity::Exactly(2)
    }

    fn infer(&self, cx: &InferCx<'_>) -> Result<Inferred, QuantError> {
        cx.not_output()?;
        check_input_qparams(cx, 0, self.inputs[0])?;
        check_input_qparams(cx, 1, self.inputs[1])?;
        let (a, b) = (cx.inputs[0].shape, cx.inputs[1].shape);
        if a != b {
            return Err(shape_err(
                cx.name,
                format!("input shapes {a:?} and {b:?} differ"),
            ));
        }
        let (quant, _) = output_codes(cx.name, self.output, self.bits)?;
        self.quant(cx.name)?;
        Ok(Inferred {
            output: ValueInfo { shape: a, quant },
            scratch_elems: 0,
            macs: 0,
        })
    }

    fn describe(&self) -> String {
        format!(
            "add, requant {}-bit{}",
            self.bits,
            if self.relu { " relu" } else { "" }
        )
    }

    fn plan(&self, cx: &PlanCx<'_>) -> Result<Box<dyn Step>, QuantError> {
        Ok(Box::new(AddStep {
            quant: self.quant(cx.name)?,
        }))
    }
}

#[derive(Debug)]
struct AddStep {
    quant: AddQuant,
}

impl Step for AddStep {
    fn run(&self, inputs: &[&[u8]], _batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        match (inputs, out) {
            ([a, b], StepOut::Codes(o)) => add_u8(a, b, &self.quant, o),
            _ => Err(internal("add: two inputs, codes out")),
        }
    }
}

impl QConcat {
    /// Per input: `None` to copy (same parameters as the output), else its rescale.
    fn rescales(&self, name: &str) -> Result<Vec<Option<RescaleQuant>>, QuantError> {
        let (_, qmax) = output_codes(name, self.output, self.bits)?;
        self.inputs
            .iter()
            .map(|&qp| {
                if qp == self.output {
                    return Ok(None);
                }
                let q = RescaleQuant {
                    params: Rescale::from_scales(qp.scale, self.output.scale)?,
                    zero_point_in: qp.zero_point,
                    zero_point_out: self.output.zero_point,
                    qmin: 0,
                    qmax,
                };
                q.validate()?;
                Ok(Some(q))
            })
            .collect()
    }
}

impl OpDef for QConcat {
    fn arity(&self) -> Arity {
        Arity::AtLeast(1)
    }

    fn infer(&self, cx: &InferCx<'_>) -> Result<Inferred, QuantError> {
        cx.not_output()?;
        if self.inputs.len() != cx.inputs.len() {
            return Err(shape_err(
                cx.name,
                format!(
                    "{} input parameters for {} inputs",
                    self.inputs.len(),
                    cx.inputs.len()
                ),
            ));
        }
        let first = cx.inputs[0].shape;
        let mut channels = 0usize;
        for (i, (&qp, v)) in self.inputs.iter().zip(cx.inputs).enumerate() {
            check_input_qparams(cx, i, qp)?;
            if (v.shape.height, v.shape.width) != (first.height, first.width) {
                return Err(shape_err(
                    cx.name,
                    format!("input {i} is {:?}, input 0 is {first:?}", v.shape),
                ));
            }
            channels = channels
                .checked_add(v.shape.channels)
                .ok_or_else(|| shape_err(cx.name, "channel count overflows".into()))?;
        }
        let (quant, _) = output_codes(cx.name, self.output, self.bits)?;
        self.rescales(cx.name)?;
        Ok(Inferred {
            output: ValueInfo {
                shape: Shape { channels, ..first },
                quant,
            },
            scratch_elems: 0,
            macs: 0,
        })
    }

    fn describe(&self) -> String {
        format!(
            "concat of {} inputs, requant {}-bit",
            self.inputs.len(),
            self.bits
        )
    }

    fn plan(&self, cx: &PlanCx<'_>) -> Result<Box<dyn Step>, QuantError> {
        let elems = cx
            .inputs
            .iter()
            .map(|v| v.shape.elems().ok_or_else(|| internal("concat size")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(ConcatStep {
            rescales: self.rescales(cx.name)?,
            elems,
        }))
    }
}

#[derive(Debug)]
struct ConcatStep {
    rescales: Vec<Option<RescaleQuant>>,
    /// Elements per sample of each input.
    elems: Vec<usize>,
}

impl Step for ConcatStep {
    fn run(&self, inputs: &[&[u8]], batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        let StepOut::Codes(o) = out else {
            return Err(internal("concat emits codes"));
        };
        let total: usize = self.elems.iter().sum();
        if inputs.len() != self.elems.len() || o.len() != batch * total {
            return Err(internal("concat buffers of the wrong size"));
        }
        // NCHW per sample: the inputs' channel blocks one after the other.
        for (s, os) in o.chunks_exact_mut(total.max(1)).enumerate() {
            let mut at = 0;
            for ((x, &n), rq) in inputs.iter().zip(&self.elems).zip(&self.rescales) {
                let src = x
                    .get(s * n..(s + 1) * n)
                    .ok_or_else(|| internal("concat input too short"))?;
                let dst = &mut os[at..at + n];
                match rq {
                    None => dst.copy_from_slice(src),
                    Some(q) => rescale_u8(src, q, dst)?,
                }
                at += n;
            }
        }
        Ok(())
    }
}

impl QLut {
    fn table(&self, name: &str) -> Result<[u8; 256], QuantError> {
        let table: [u8; 256] = self.table.as_slice().try_into().map_err(|_| {
            shape_err(
                &format!("{name}.table"),
                format!("{} entries, expected 256", self.table.len()),
            )
        })?;
        let (_, qmax) = output_codes(name, self.output, self.bits)?;
        if let Some(&t) = table.iter().find(|&&t| i32::from(t) > qmax) {
            return Err(shape_err(
                &format!("{name}.table"),
                format!("code {t} above the output's {qmax}"),
            ));
        }
        Ok(table)
    }
}

impl OpDef for QLut {
    fn infer(&self, cx: &InferCx<'_>) -> Result<Inferred, QuantError> {
        cx.not_output()?;
        check_input_qparams(cx, 0, self.input)?;
        let x = cx.input()?;
        let (quant, _) = output_codes(cx.name, self.output, self.bits)?;
        self.table(cx.name)?;
        Ok(Inferred {
            output: ValueInfo {
                shape: x.shape,
                quant,
            },
            scratch_elems: 0,
            macs: 0,
        })
    }

    fn describe(&self) -> String {
        format!("table (element-wise), {}-bit", self.bits)
    }

    fn plan(&self, cx: &PlanCx<'_>) -> Result<Box<dyn Step>, QuantError> {
        Ok(Box::new(LutStep {
            table: self.table(cx.name)?,
        }))
    }
}

#[derive(Debug)]
struct LutStep {
    table: [u8; 256],
}

impl Step for LutStep {
    fn run(&self, inputs: &[&[u8]], _batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        match (inputs, out) {
            ([x], StepOut::Codes(o)) => lut_u8(x, &self.table, o),
            _ => Err(internal("table: one input, codes out")),
        }
    }
}
