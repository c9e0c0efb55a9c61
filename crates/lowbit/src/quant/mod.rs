//! Quantizers, QAT wiring, PTQ calibration and conversion to the runtime model.
//!
//! Every number goes through [`lowbit_runtime::qparams`] (the normative arithmetic), so QAT's fake-quant, PTQ
//! calibration, [`convert()`] and the integer engine agree by construction:
//! - [`WeightQuantizer::quantize`] is the single source of weight codes (fake-quant forward and conversion);
//! - [`ActQuantizer`] fake-quantizes with `qparams::fake_quantize` on a tracked range, which PTQ's
//!   [`calibrate`] module chooses from histograms of the calibration samples;
//! - [`simulate()`] re-runs a [`lowbit_runtime::QuantModel`] with plain scalar loops, independent of the engine.
pub mod act;
pub mod adaround;
pub mod calibrate;
pub mod config;
pub mod convbn;
pub mod convert;
pub mod dequantize;
mod kernels;
pub mod lsq;
pub mod mixed;
pub mod pact;
pub mod prepare;
pub mod ptq;
pub mod simulate;
pub mod stats;
pub mod weight;

pub use act::{act_qparams, ActQuantizer, INPUT_SCALE};
pub use adaround::{AdaRoundOptions, AdaRoundProgress};
pub use calibrate::{Calibrator, Histogram, WeightCalibration};
pub use config::{
    ActMethod, BnFold, LayerQuant, LayerSelector, LsqInit, Method, QuantConfig, WeightMethod,
    WeightQuantKind,
};
pub use convbn::ConvBn2d;
pub use convert::{convert, float_bytes, model_bytes};
pub use dequantize::dequantize;
pub use mixed::configure_quantizers;
pub use prepare::{
    bypass_quantizers, fold_batchnorms, fold_conv_batchnorms, freeze_ranges, has_quantizers,
    merge_conv_batchnorms, prepare_qat, start_quantizing, unfreeze_ranges,
};
pub use ptq::{ptq, ptq_with_progress};
pub use simulate::{simulate, simulate_with, Simulation};
pub use stats::{layer_quant_stats, sqnr_db, LayerQuantStats};
pub use weight::{WeightCodes, WeightQuantizer};
