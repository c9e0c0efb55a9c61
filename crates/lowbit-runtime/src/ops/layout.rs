//! Ops that move codes without changing their quantization: zero padding (padded codes are the value's zero
//! point, real 0) and strided slicing. Data movement only ([`crate::kernels::layout`]).
use super::{
    internal, shape_err, InferCx, Inferred, OpDef, PlanCx, Shape, Step, StepOut, ValueInfo,
};
use crate::error::QuantError;
use crate::kernels::layout::{pad_u8, slice_u8, AxisSlice, Padding, SampleShape, Slicing};
use crate::model::{QPad, QSlice};
use crate::ops::ValueQuant;

fn sample(s: Shape) -> SampleShape {
    SampleShape {
        channels: s.channels,
        height: s.height,
        width: s.width,
    }
}

fn shape(s: SampleShape) -> Shape {
    Shape {
        channels: s.channels,
        height: s.height,
        width: s.width,
    }
}

impl QPad {
    fn padding(&self) -> Padding {
        Padding {
            channels_front: self.channels.0,
            channels_back: self.channels.1,
            top: self.rows.0,
            bottom: self.rows.1,
            left: self.cols.0,
            right: self.cols.1,
        }
    }
}

impl OpDef for QPad {
    fn infer(&self, cx: &InferCx<'_>) -> Result<Inferred, QuantError> {
        cx.not_output()?;
        cx.codes(0)?;
        let x = cx.input()?;
        let out = self
            .padding()
            .output_shape(sample(x.shape))
            .ok_or_else(|| shape_err(cx.name, "padded shape overflows".into()))?;
        Ok(Inferred {
            output: ValueInfo {
                shape: shape(out),
                quant: x.quant,
            },
            scratch_elems: 0,
            macs: 0,
        })
    }

    fn describe(&self) -> String {
        let p = self;
        format!(
            "pad channels {}+{}, rows {}+{}, cols {}+{}",
            p.channels.0, p.channels.1, p.rows.0, p.rows.1, p.cols.0, p.cols.1
        )
    }

    fn plan(&self, cx: &PlanCx<'_>) -> Result<Box<dyn Step>, QuantError> {
        let x = cx.inputs.first().ok_or_else(|| internal("pad input"))?;
        let ValueQuant::Codes { qparams, .. } = x.quant else {
            return Err(internal("pad reads codes"));
        };
        Ok(Box::new(PadStep {
            input: sample(x.shape),
            padding: self.padding(),
            code: u8::try_from(qparams.zero_point).map_err(|_| internal("zero point"))?,
        }))
    }
}

#[derive(Debug)]
struct PadStep {
    input: SampleShape,
    padding: Padding,
    code: u8,
}

impl Step for PadStep {
    fn run(&self, inputs: &[&[u8]], batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        match (inputs, out) {
            ([x], StepOut::Codes(o)) => pad_u8(x, batch, self.input, &self.padding, self.code, o),
            _ => Err(internal("pad: one input, codes out")),
        }
    }
}

impl QSlice {
    fn slicing(&self) -> Slicing {
        let axis = |[start, end, step]: [usize; 3]| AxisSlice { start, end, step };
        Slicing {
            channels: axis(self.channels),
            height: axis(self.rows),
            width: axis(self.cols),
        }
    }
}

impl OpDef for QSlice {
    fn infer(&self, cx: &InferCx<'_>) -> Result<Inferred, QuantError> {
        cx.not_output()?;
        cx.codes(0)?;
        let x = cx.input()?;
        let out = self
            .slicing()
            .output_shape(sample(x.shape))
            .map_err(|e| match e {
                QuantError::ShapeMismatch { detail, .. } => shape_err(cx.name, detail),
                other => other,
            })?;
        Ok(Inferred {
            output: ValueInfo {
                shape: shape(out),
                quant: x.quant,
            },
            scratch_elems: 0,
            macs: 0,
        })
    }

    fn describe(&self) -> String {
        let r = |[a, b, s]: [usize; 3]| format!("{a}..{b}:{s}");
        format!(
            "slice channels {}, rows {}, cols {}",
            r(self.channels),
            r(self.rows),
            r(self.cols)
        )
    }

    fn plan(&self, cx: &PlanCx<'_>) -> Result<Box<dyn Step>, QuantError> {
        let x = cx.inputs.first().ok_or_else(|| internal("slice input"))?;
        Ok(Box::new(SliceStep {
            input: sample(x.shape),
            slicing: self.slicing(),
        }))
    }
}

#[derive(Debug)]
struct SliceStep {
    input: SampleShape,
    slicing: Slicing,
}

impl Step for SliceStep {
    fn run(&self, inputs: &[&[u8]], batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        match (inputs, out) {
            ([x], StepOut::Codes(o)) => slice_u8(x, batch, self.input, &self.slicing, o),
            _ => Err(internal("slice: one input, codes out")),
        }
    }
}
