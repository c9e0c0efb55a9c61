//! Pooling on codes, without padding. MaxPool2d takes the max of codes over the window (exact: max commutes with
//! a monotonic quantizer, so the output keeps the input's parameters). AvgPool2d (normative):
//! `out = clamp(zp_out + Requant::from_real(s_in / (s_out * window)).apply(sum(q - zp_in)), 0, 2^bits - 1)` where
//! the real multiplier is computed in f64 as `s_in as f64 / (s_out as f64 * window as f64)`.
use super::{
    check_input_qparams, check_qparams, internal, shape_err, InferCx, Inferred, OpDef, PlanCx,
    Shape, Step, StepOut, ValueInfo, ValueQuant, Window, MAX_ACT_CODE,
};
use crate::error::QuantError;
use crate::kernels;
use crate::kernels::pool::{global_avg_pool_u8, AvgPoolQuant};
use crate::model::{QAvgPool2d, QMaxPool2d};
use crate::qparams::{act_code_range, requantize, Requant};

fn window(kernel: (usize, usize), stride: (usize, usize)) -> Window {
    Window {
        kernel,
        stride,
        padding: (0, 0),
    }
}

impl OpDef for QMaxPool2d {
    fn infer(&self, cx: &InferCx<'_>) -> Result<Inferred, QuantError> {
        cx.not_output()?;
        cx.codes(0)?;
        let x = cx.input()?;
        let output = window(self.kernel, self.stride).output(cx.name, x.shape, x.shape.channels)?;
        Ok(Inferred {
            output: ValueInfo {
                shape: output,
                quant: x.quant,
            },
            scratch_elems: 0,
            macs: 0,
        })
    }

    fn describe(&self) -> String {
        format!(
            "max_pool2d {}x{} stride {}x{}",
            self.kernel.0, self.kernel.1, self.stride.0, self.stride.1
        )
    }

    fn plan(&self, cx: &PlanCx<'_>) -> Result<Box<dyn Step>, QuantError> {
        let input = cx
            .inputs
            .first()
            .ok_or_else(|| internal("pool input"))?
            .shape;
        Ok(Box::new(MaxPoolStep {
            input,
            output: cx.output.shape,
            window: window(self.kernel, self.stride),
        }))
    }
}

#[derive(Debug)]
struct MaxPoolStep {
    input: Shape,
    output: Shape,
    window: Window,
}

impl Step for MaxPoolStep {
    fn run(&self, inputs: &[&[u8]], _batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        let ([x], StepOut::Codes(o)) = (inputs, out) else {
            return Err(internal("max pool: one input, codes out"));
        };
        if self.window.kernel == (2, 2) && self.window.stride == (2, 2) {
            max_pool_2x2(x, self.input, self.output, o)
        } else {
            pool(
                x,
                self.input,
                self.output,
                &self.window,
                o,
                0u8,
                u8::max,
                |m| m,
            );
            Ok(())
        }
    }
}

impl QAvgPool2d {
    fn requant(&self, name: &str) -> Result<Requant, QuantError> {
        let area = self
            .kernel
            .0
            .checked_mul(self.kernel.1)
            .filter(|&a| (a as i64) * MAX_ACT_CODE <= i32::MAX as i64)
            .ok_or_else(|| shape_err(name, "pool window too large".into()))?;
        let real = self.input.scale as f64 / (self.output.scale as f64 * area as f64);
        Requant::from_real(real)
    }
}

impl OpDef for QAvgPool2d {
    fn infer(&self, cx: &InferCx<'_>) -> Result<Inferred, QuantError> {
        cx.not_output()?;
        check_input_qparams(cx, 0, self.input)?;
        let x = cx.input()?;
        let (_, qmax) = act_code_range(self.bits)?;
        check_qparams(self.output, &format!("{}.output", cx.name), qmax)?;
        let output = window(self.kernel, self.stride).output(cx.name, x.shape, x.shape.channels)?;
        self.requant(cx.name)?;
        Ok(Inferred {
            output: ValueInfo {
                shape: output,
                quant: ValueQuant::Codes {
                    qparams: self.output,
                    bits: self.bits,
                },
            },
            scratch_elems: 0,
            macs: 0,
        })
    }

    fn describe(&self) -> String {
        format!(
            "avg_pool2d {}x{} stride {}x{}, requant {}-bit",
            self.kernel.0, self.kernel.1, self.stride.0, self.stride.1, self.bits
        )
    }

    fn plan(&self, cx: &PlanCx<'_>) -> Result<Box<dyn Step>, QuantError> {
        let input = cx
            .inputs
            .first()
            .ok_or_else(|| internal("pool input"))?
            .shape;
        let (_, qmax) = act_code_range(self.bits)?;
        if self.kernel == (input.height, input.width) {
            let quant =
                AvgPoolQuant::new(self.input, self.output, input.height * input.width, qmax)?;
            return Ok(Box::new(GlobalAvgPoolStep {
                quant,
                plane: input.height * input.width,
            }));
        }
        Ok(Box::new(AvgPoolStep {
            input,
            output: cx.output.shape,
            window: window(self.kernel, self.stride),
            requant: self.requant(cx.name)?,
            zp_in: self.input.zero_point,
            zp_out: self.output.zero_point,
            qmax,
        }))
    }
}

/// An average pool whose window is the whole map: one sum per channel plane.
#[derive(Debug)]
struct GlobalAvgPoolStep {
    quant: AvgPoolQuant,
    plane: usize,
}

impl Step for GlobalAvgPoolStep {
    fn run(&self, inputs: &[&[u8]], _batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        let ([x], StepOut::Codes(o)) = (inputs, out) else {
            return Err(internal("average pool: one input, codes out"));
        };
        global_avg_pool_u8(x, o.len(), self.plane, &self.quant, o)
    }
}

#[derive(Debug)]
struct AvgPoolStep {
    input: Shape,
    output: Shape,
    window: Window,
    requant: Requant,
    zp_in: i32,
    zp_out: i32,
    qmax: i32,
}

impl Step for AvgPoolStep {
    fn run(&self, inputs: &[&[u8]], _batch: usize, out: StepOut<'_>) -> Result<(), QuantError> {
        let ([x], StepOut::Codes(o)) = (inputs, out) else {
            return Err(internal("average pool: one input, codes out"));
        };
        let zp = self.zp_in;
        pool(
            x,
            self.input,
            self.output,
            &self.window,
            o,
            0i32,
            |sum, v| sum + (v as i32 - zp),
            |sum| requantize(sum, self.requant, self.zp_out, 0, self.qmax) as u8,
        );
        Ok(())
    }
}

/// [`pool`] with the max over 2 x 2 windows at stride 2 (LeNet's pooling): the vertical max of each row pair
/// into one contiguous plane, then the SIMD pair max over the whole plane at once (LeNet's rows are too short
/// for a vector each).
pub(crate) fn max_pool_2x2(
    x: &[u8],
    input: Shape,
    output: Shape,
    out: &mut [u8],
) -> Result<(), QuantError> {
    let (w, ow) = (input.width, output.width);
    let in_plane = input.height * w;
    let out_plane = output.height * ow;
    let mut vmax = vec![0u8; 2 * out_plane];
    for (xp, op) in x.chunks(in_plane).zip(out.chunks_mut(out_plane)) {
        for (oy, v) in vmax.chunks_exact_mut(2 * ow).enumerate() {
            let a = &xp[2 * oy * w..][..2 * ow];
            let b = &xp[(2 * oy + 1) * w..][..2 * ow];
            for ((v, &a), &b) in v.iter_mut().zip(a).zip(b) {
                *v = a.max(b);
            }
        }
        kernels::conv::max_pool_2x2_row(&vmax, &vmax, op)?;
    }
    Ok(())
}

/// Pooling without padding over each channel plane: `finish(fold(step, init, window codes))` per output.
#[allow(clippy::too_many_arguments)]
fn pool<T: Copy>(
    x: &[u8],
    input: Shape,
    output: Shape,
    w: &Window,
    out: &mut [u8],
    init: T,
    step: impl Fn(T, u8) -> T,
    finish: impl Fn(T) -> u8,
) {
    let (kh, kw) = w.kernel;
    let (sh, sw) = w.stride;
    let in_plane = input.height * input.width;
    let out_plane = output.height * output.width;
    for (xp, op) in x.chunks(in_plane).zip(out.chunks_mut(out_plane)) {
        for (oy, orow) in op.chunks_exact_mut(output.width).enumerate() {
            for (ox, o) in orow.iter_mut().enumerate() {
                let mut a = init;
                for ky in 0..kh {
                    let row = (oy * sh + ky) * input.width + ox * sw;
                    for &v in &xp[row..row + kw] {
                        a = step(a, v);
                    }
                }
                *o = finish(a);
            }
        }
    }
}
