//! `lowbit sensitivity`: per weight layer and bit width, the accuracy and loss one layer's quantization costs on
//! the integer engine, beside the Hessian-trace estimate that predicts it without a sweep.
use crate::commands::{load_data, load_float_model, write_model_report};
use crate::ui::Table;
use anyhow::Result;
use clap::{Args, ValueEnum};
use lowbit::quant::{Method, QuantConfig};
use lowbit::sensitivity::{self, MeasureOn, SensitivityConfig};
use std::path::PathBuf;
use std::time::Instant;

/// Which images one-layer measurements run on (`--measure-on`, shared by `sensitivity` and `mixed`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureOnArg {
    /// Training images that calibration does not use (evenly spread): bits chosen on them have not seen the
    /// test set they are then measured on.
    Train,
    /// Test images: what each layer costs on the test set itself.
    Test,
}

impl From<MeasureOnArg> for MeasureOn {
    fn from(a: MeasureOnArg) -> Self {
        match a {
            MeasureOnArg::Train => MeasureOn::Train,
            MeasureOnArg::Test => MeasureOn::Test,
        }
    }
}

/// The words for the set measured on, as reports print them.
pub fn images_of(on: MeasureOn) -> &'static str {
    match on {
        MeasureOn::Train => "training images not used for calibration",
        MeasureOn::Test => "test images",
    }
}

/// Arguments of `lowbit sensitivity`.
#[derive(Args, Debug, Clone)]
pub struct SensitivityArgs {
    /// Trained float model file, or an ONNX model (imported in memory).
    model: PathBuf,
    #[command(flatten)]
    data: crate::DataArg,
    /// Bit widths tried on each layer (its weights, then its output activations), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4")]
    bits: Vec<u32>,
    /// Bits of every other layer's weights and activations (PTQ).
    #[arg(long, default_value_t = 8)]
    base_bits: u32,
    /// One weight scale per tensor instead of per output channel.
    #[arg(long)]
    per_tensor: bool,
    /// Bits of the activations that only feed a residual add, in every setting (as `train --add-bits`);
    /// default: the activation bits.
    #[arg(long, value_name = "BITS")]
    add_bits: Option<u32>,
    /// Measure weights only (halves the work).
    #[arg(long)]
    no_activations: bool,
    /// Images each measurement runs on: training images the calibration does not use, or test images.
    #[arg(long, value_enum, default_value_t = MeasureOnArg::Train)]
    measure_on: MeasureOnArg,
    /// Images per measurement (all there are when fewer).
    #[arg(long, default_value_t = 10_000)]
    samples: usize,
    /// Training images behind the two estimates.
    #[arg(long, default_value_t = 512)]
    hessian_samples: usize,
    /// Rademacher vectors of the Hutchinson (HAWQ) estimate (0: skip it; the Gauss-Newton estimate, one forward
    /// pass per layer and width, is always computed).
    #[arg(long, default_value_t = 32)]
    hessian_iters: usize,
    /// Seed of the estimate's random vectors.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write everything as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Draw the per-layer drops (bars) and the Hessian estimate against the measured loss (scatter): .png or
    /// .svg.
    #[arg(long, value_parser = crate::plot::parse_plot_path)]
    plot: Option<PathBuf>,
}

/// Runs `lowbit sensitivity`.
pub fn sensitivity(a: &SensitivityArgs, quiet: bool) -> Result<()> {
    let t0 = Instant::now();
    let cfg = SensitivityConfig {
        base: QuantConfig {
            weight_bits: a.base_bits,
            act_bits: a.base_bits,
            per_channel: !a.per_tensor,
            add_bits: a.add_bits,
            method: Method::Ptq,
            ..QuantConfig::default()
        },
        bits: a.bits.clone(),
        activations: !a.no_activations,
        measure_on: a.measure_on.into(),
        samples: a.samples,
        hessian_samples: a.hessian_samples,
        hessian_iters: a.hessian_iters,
        gauss_newton: true,
        measure: true,
        seed: a.seed,
    };
    cfg.validate()?;
    let model = load_float_model(&a.model)?;
    let split = load_data(&a.data.data, &a.data, model.normalization.clone())?;
    let bar = crate::ui::bar(0, "measurements", quiet);
    let s = sensitivity::analyse(&model, &split, &cfg, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    println!(
        "lowbit sensitivity: {} ({}) on {}, {} {}; every other layer W{b}A{b} PTQ ({}): {:.2}% \
         (f32 {:.2}%), loss {:.4}",
        a.model.display(),
        model.spec,
        a.data.data,
        s.samples,
        images_of(s.measured_on),
        if a.per_tensor {
            "per-tensor"
        } else {
            "per-channel"
        },
        s.base_accuracy * 100.0,
        s.float_accuracy * 100.0,
        s.base_loss,
        b = a.base_bits,
    );
    let mut head = vec![
        "#".to_string(),
        "layer".into(),
        "weights".into(),
        "tr(H)/n".into(),
    ];
    for b in &a.bits {
        head.push(format!("W{b} drop"));
        head.push(format!("W{b} dloss"));
        head.push(format!("W{b} pred"));
        head.push(format!("W{b} gn"));
        if cfg.activations {
            head.push(format!("A{b} drop"));
        }
    }
    let head_refs: Vec<&str> = head.iter().map(String::as_str).collect();
    let mut t = Table::new(&head_refs);
    for l in &s.layers {
        let mut row = vec![
            l.index.to_string(),
            l.name.clone(),
            l.weights.to_string(),
            l.hessian_trace
                .map(|tr| format!("{:.3e}", tr / l.weights.max(1) as f64))
                .unwrap_or_else(|| "-".into()),
        ];
        for c in &l.costs {
            row.push(c.weight_drop_pp.map_or("-".into(), |d| format!("{d:+.2}")));
            row.push(
                c.weight_loss_delta
                    .map_or("-".into(), |d| format!("{d:+.4}")),
            );
            for p in [c.predicted, c.predicted_gn] {
                row.push(p.map(|p| format!("{p:.2e}")).unwrap_or_else(|| "-".into()));
            }
            if cfg.activations {
                row.push(
                    c.act_drop_pp
                        .map(|d| format!("{d:+.2}"))
                        .unwrap_or_else(|| "-".into()),
                );
            }
        }
        t.row(row);
    }
    println!();
    print!("{}", t.render());
    println!(
        "\ndrop: accuracy lost (pp) on the integer engine with only that layer at the bit width; dloss: the \
         cross-entropy it adds; pred: the Hessian estimate tr(H)/n * ||Q(W) - W||^2 (HAWQ); gn: the Gauss-Newton \
         estimate of dloss, 1/2 dW^T G dW, from the logit change on the Hessian's training images."
    );
    for (name, per_width, pooled) in [
        ("pred", &s.spearman, s.spearman_pooled),
        ("gn", &s.spearman_gn, s.spearman_gn_pooled),
    ] {
        for (b, r) in per_width {
            if let Some(r) = r {
                println!("Spearman rank correlation, {name} vs measured loss at {b} bits: {r:.3}");
            }
        }
        if let Some(r) = pooled {
            println!(
                "Spearman rank correlation, {name} vs measured loss over every layer and bit width ({} pairs): \
                 {r:.3}",
                s.layers.len() * a.bits.len()
            );
        }
    }
    println!("Total {:.1}s.", t0.elapsed().as_secs_f64());
    if let Some(path) = &a.plot {
        let title = format!(
            "{}: per-layer sensitivity, every other layer W{b}A{b} ({} {} images)",
            model.spec,
            s.samples,
            match s.measured_on {
                MeasureOn::Train => "training",
                MeasureOn::Test => "test",
            },
            b = a.base_bits
        );
        crate::plot::sensitivity_picture(
            path,
            &crate::plot::SensitivityPicture {
                title: &title,
                sensitivity: &s,
            },
        )?;
        println!("Picture: {}", path.display());
    }
    if let Some(path) = &a.report {
        let fields = serde_json::json!({
            "base_bits": a.base_bits,
            "sensitivity": s,
        });
        write_model_report(path, &a.model, &model.spec, &a.data.data, fields)?;
    }
    Ok(())
}
