//! `lowbit sweep`: one float model quantized at several bit widths and fixed steps, each measured on the integer
//! engine; one table, the Pareto front, the recommended point for an accuracy budget, and one picture.
use crate::commands::{load_data, load_float_model, pct, write_model_report, Bars};
use crate::plot::{self, Marker, SizePoint};
use crate::ui::Table;
use anyhow::Result;
use clap::{Args, ValueEnum};
use lowbit::quant::{Method, QuantConfig};
use lowbit::sweep::{self, Setting, SweepConfig};
use lowbit::train::TrainConfig;
use std::path::PathBuf;
use std::time::Instant;

/// Sweep method: post-training quantization of the model, or QAT fine-tuned from it.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepMethod {
    /// Round the trained weights, calibrate activation ranges (no training).
    Ptq,
    /// Fine-tune from the model through the quantizer for --epochs at every setting.
    Qat,
}

/// Arguments of `lowbit sweep`.
#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// Trained float model file (`lowbit train ... --out MODEL.f32` without --weight-bits), or an ONNX model.
    model: PathBuf,
    #[command(flatten)]
    data: crate::DataArg,
    /// Weight bit widths to try (2 = ternary, 1 = binary), comma separated. Default 1,2,3,4,8 when
    /// --quant-step is not given either.
    #[arg(long, value_delimiter = ',')]
    bits: Vec<u32>,
    /// Fixed weight steps K to try (w_q = round(w*K)/K), comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "K",
        allow_negative_numbers = true
    )]
    quant_step: Vec<f32>,
    /// Mixed-precision points: per-layer weight bits at these average stored bits per weight (e.g. 2.5,3),
    /// allocated over each layer's measured cost at the lower --bits (see `lowbit mixed`).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "BITS",
        allow_negative_numbers = true
    )]
    mixed_bits: Vec<f64>,
    /// PTQ (default, minutes) or QAT fine-tuning at every setting.
    #[arg(long, value_enum, default_value_t = SweepMethod::Ptq)]
    method: SweepMethod,
    /// Activation bit width of every setting.
    #[arg(long, default_value_t = 8)]
    act_bits: u32,
    /// One weight scale per tensor instead of per output channel.
    #[arg(long)]
    per_tensor: bool,
    /// Bits of the activations that only feed a residual add, in every setting (as `train --add-bits`);
    /// default: the activation bits.
    #[arg(long, value_name = "BITS")]
    add_bits: Option<u32>,
    /// Training samples that calibrate activation ranges (PTQ).
    #[arg(long, default_value_t = 2000)]
    calibration_samples: usize,
    /// QAT: fine-tuning epochs per setting.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// QAT: learning rate (Adam).
    #[arg(long, default_value_t = 1e-4, allow_negative_numbers = true)]
    lr: f32,
    /// QAT: mini-batch size.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// QAT: random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Accuracy budget in percentage points below the float model: the recommended point is the smallest
    /// model within it.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    max_drop: f64,
    /// Draw accuracy against size (every setting, the f32 line, the Pareto front, the recommended point);
    /// .svg or .png by the extension.
    #[arg(long, value_parser = plot::parse_plot_path)]
    plot: Option<PathBuf>,
    /// Write the sweep as JSON (every point's full report, the front, the recommendation).
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Runs `lowbit sweep`.
pub fn sweep(a: &SweepArgs, quiet: bool) -> Result<()> {
    let t0 = Instant::now();
    let bits = if a.bits.is_empty() && a.quant_step.is_empty() {
        vec![1, 2, 3, 4, 8]
    } else {
        a.bits.clone()
    };
    let settings: Vec<Setting> = bits
        .iter()
        .map(|&b| Setting::Bits(b))
        .chain(a.quant_step.iter().map(|&k| Setting::Step(k)))
        .chain(a.mixed_bits.iter().map(|&b| Setting::Mixed(b)))
        .collect();
    let method = match a.method {
        SweepMethod::Ptq => Method::Ptq,
        SweepMethod::Qat => Method::Qat,
    };
    let cfg = SweepConfig {
        data: a.data.data.clone(),
        base: QuantConfig {
            act_bits: a.act_bits,
            per_channel: !a.per_tensor,
            add_bits: a.add_bits,
            method,
            calibration_samples: a.calibration_samples,
            ..QuantConfig::default()
        },
        settings,
        train: TrainConfig {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            seed: a.seed,
            ..TrainConfig::default()
        },
        max_drop_pp: a.max_drop,
    };
    // Options first, then files: a bad flag costs nothing.
    cfg.validate()?;
    let model = load_float_model(&a.model)?;
    let split = load_data(&a.data.data, &a.data, model.normalization.clone())?;
    println!(
        "lowbit sweep: {} ({}) on {} ({} test images), {} settings by {}, A{}, {}",
        a.model.display(),
        model.spec,
        a.data.data,
        split.test.n,
        cfg.settings.len(),
        match method {
            Method::Ptq => "PTQ".to_string(),
            Method::Qat => format!("QAT ({} epochs, lr {})", a.epochs, a.lr),
        },
        a.act_bits,
        if a.per_tensor {
            "per-tensor"
        } else {
            "per-channel"
        },
    );
    let progress = crate::ui::bar(
        cfg.settings.len() as u64,
        "settings",
        quiet || method == Method::Qat,
    );
    let mut bars = Bars::new(quiet);
    let result = sweep::run(&model, &split, &cfg, &mut |e| bars.handle(e), &mut |p| {
        progress.inc(1);
        progress.set_message(format!("{}: {}", p.label, pct(p.accuracy)));
    })?;
    progress.finish_and_clear();

    let mut table = Table::new(&["setting", "accuracy", "vs f32", "bytes", "ratio", "front"]);
    table.row(vec![
        "f32".into(),
        pct(result.float_accuracy),
        "-".into(),
        result.float_bytes.to_string(),
        "1.000".into(),
        String::new(),
    ]);
    for (i, p) in result.points.iter().enumerate() {
        let mut mark = String::new();
        if result.pareto.contains(&i) {
            mark.push('*');
        }
        if result.recommended == Some(i) {
            mark.push_str(" recommended");
        }
        table.row(vec![
            p.label.clone(),
            pct(p.accuracy),
            format!("{:+.2} pp", p.delta_pp),
            p.bytes.to_string(),
            format!("{:.3}", p.bytes as f64 / result.float_bytes.max(1) as f64),
            mark.trim().to_string(),
        ]);
    }
    println!();
    print!("{}", table.render());
    let mismatches: usize = result
        .points
        .iter()
        .filter_map(|p| p.report.engine_simulation_mismatches)
        .sum();
    println!(
        "\n* on the Pareto front. Accuracies are measured by the integer engine; the independent integer \
         simulation disagreed on {mismatches} of {} predictions.",
        result.points.len() * result.test_samples
    );
    match result.recommended {
        Some(i) => println!(
            "Recommended for --max-drop {}: {} ({} bytes, {:+.2} pp).",
            a.max_drop, result.points[i].label, result.points[i].bytes, result.points[i].delta_pp
        ),
        None => println!(
            "No setting stays within --max-drop {} pp; try more bits, a larger step or --method qat.",
            a.max_drop
        ),
    }
    println!("Total {:.1}s.", t0.elapsed().as_secs_f64());

    if let Some(path) = &a.plot {
        let mut points = vec![SizePoint {
            label: "f32".into(),
            bytes: result.float_bytes,
            accuracy: result.float_accuracy,
            marker: Marker::Float,
        }];
        points.extend(result.points.iter().map(|p| SizePoint {
            label: p.label.clone(),
            bytes: p.bytes,
            accuracy: p.accuracy,
            marker: match (p.setting, method) {
                (Setting::Mixed(_), _) => Marker::Mixed,
                (_, Method::Ptq) => Marker::Ptq,
                (_, Method::Qat) => Marker::Qat,
            },
        }));
        plot::accuracy_vs_size(
            path,
            &plot::AccuracyVsSize {
                title: &format!(
                    "{} on {}: test accuracy (integer engine) vs size",
                    model.spec, a.data.data
                ),
                points: &points,
                test_samples: result.test_samples,
                recommended: result.recommended.map(|i| {
                    (
                        i + 1,
                        format!("recommended: smallest within {} pp of f32", a.max_drop),
                    )
                }),
            },
        )?;
        println!("plot written to {}", path.display());
    }
    if let Some(path) = &a.report {
        let fields = serde_json::json!({
            "method": format!("{:?}", a.method).to_lowercase(),
            "sweep": result,
        });
        write_model_report(path, &a.model, &model.spec, &a.data.data, fields)?;
    }
    Ok(())
}
