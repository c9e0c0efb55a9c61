//! `lowbit mixed`: per-layer weight bits for a budget, chosen exactly over each layer's measured (or
//! Hessian-predicted) cost, written as a config file, then quantized and measured on the integer engine beside
//! every uniform allocation.
use crate::commands::{load_data, load_float_model, pct, write_model_report, Bars};
use crate::sensitivity::{images_of, MeasureOnArg};
use crate::ui::Table;
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use lowbit::allocate::{self, Budget, Cost};
use lowbit::config_file::{FileConfig, MethodName, QuantSection};
use lowbit::pipeline::{self, RunConfig};
use lowbit::quant::{Method, QuantConfig};
use lowbit::sensitivity::{self, MeasureOn, SensitivityConfig};
use lowbit::train::TrainConfig;
use std::path::PathBuf;
use std::time::Instant;

/// What the allocation minimises.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostArg {
    /// The cross-entropy each layer adds on the engine when only it is lowered (one PTQ per layer and width).
    Measured,
    /// HAWQ's Hessian-trace prediction tr(H)/n * ||Q(W) - W||^2 (32 backward passes on 512 training images; no
    /// per-layer quantized runs).
    Hessian,
    /// The Gauss-Newton estimate of the loss increase, 1/2 dW^T G dW from the logit change (one forward pass per
    /// layer and width on 512 training images, no per-layer quantized runs: the fast choice on deep networks;
    /// ranks LeNet-5's and ResNet-20's costs better than the trace). It sees the weights alone, not the
    /// quantized activations around them, which QAT learns to live with: the allocation to fine-tune with QAT.
    Gn,
}

/// Arguments of `lowbit mixed`.
#[derive(Args, Debug, Clone)]
pub struct MixedArgs {
    /// Trained float model file, or an ONNX model (imported in memory).
    model: PathBuf,
    #[command(flatten)]
    data: crate::DataArg,
    /// Average stored weight bits (packed as the engine stores them: 3 bits take 4) at most this.
    #[arg(long, value_name = "BITS", allow_negative_numbers = true)]
    budget_bits: Option<f64>,
    /// Packed weight bytes at most this.
    #[arg(long, value_name = "BYTES")]
    budget_bytes: Option<u64>,
    /// The smallest allocation that loses at most this many percentage points from all 8 bits: solved over the sum
    /// of the layers' measured drops, then measured on the sensitivity's images; if it loses more (one-layer drops
    /// do not add up on deep networks), the frontier of the layers' measured losses is bisected (a few PTQ runs)
    /// for the smallest allocation it finds within the limit.
    #[arg(long, value_name = "PP", allow_negative_numbers = true)]
    max_drop: Option<f64>,
    /// Candidate weight bit widths per layer besides 8, comma separated. A width stored in as many bytes as a
    /// wider candidate (3 bits, in 4-bit containers, beside 4) is left out.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4")]
    bits: Vec<u32>,
    /// Activation bits of every layer.
    #[arg(long, default_value_t = 8)]
    act_bits: u32,
    /// Bits of the activations that only feed a residual add (as `train --add-bits`); default: --act-bits.
    #[arg(long, value_name = "BITS")]
    add_bits: Option<u32>,
    /// What the allocation minimises under a size budget.
    #[arg(long, value_enum, default_value_t = CostArg::Measured)]
    cost: CostArg,
    /// Rounds of refinement, for deep networks where one-layer costs do not add up (ResNet): each round
    /// re-measures every layer's candidates with the allocation found everywhere else, solves again over those
    /// costs and keeps the new allocation if it measures better (about as many PTQ runs per round as the
    /// sensitivity analysis). Byte budgets only.
    #[arg(long, value_name = "ROUNDS", default_value_t = 0)]
    refine: usize,
    /// Images the sensitivity and refinement measurements run on: training images the calibration does not use
    /// (the allocation never sees the test set), or test images. The chosen model and the uniform ones beside it
    /// are always measured on the whole test set.
    #[arg(long, value_enum, default_value_t = MeasureOnArg::Train)]
    measure_on: MeasureOnArg,
    /// Images per sensitivity measurement (all there are when fewer).
    #[arg(long, default_value_t = 10_000)]
    samples: usize,
    /// Write the allocation as a config file (`train --config FILE --init MODEL` reruns it, or fine-tunes it with
    /// `--method qat`); .toml or .json.
    #[arg(long, value_name = "FILE")]
    out_config: Option<PathBuf>,
    /// Write the quantized model (.lbq).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write everything as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Bits per layer as `8,4,2`.
fn bits_list(bits: &[u32]) -> String {
    bits.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `lowbit mixed`.
pub fn mixed(a: &MixedArgs, quiet: bool) -> Result<()> {
    let t0 = Instant::now();
    let given = [
        a.budget_bits.is_some(),
        a.budget_bytes.is_some(),
        a.max_drop.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() != 1 {
        bail!("give exactly one of --budget-bits, --budget-bytes and --max-drop");
    }
    if let Some(b) = a.budget_bits {
        if !(b.is_finite() && b > 0.0 && b <= 8.0) {
            bail!("--budget-bits: {b} is not in (0, 8]");
        }
    }
    if let Some(d) = a.max_drop {
        if !(d.is_finite() && d >= 0.0) {
            bail!("--max-drop: {d} must be a finite number >= 0");
        }
    }
    if a.cost != CostArg::Measured && a.max_drop.is_some() {
        bail!("--max-drop sums the layers' measured drops; --cost applies to --budget-bits and --budget-bytes");
    }
    if a.refine > 0 && a.max_drop.is_some() {
        bail!("--refine works with --budget-bits or --budget-bytes, not --max-drop");
    }
    if let Some(p) = &a.out_config {
        match p.extension().and_then(|e| e.to_str()) {
            Some("toml" | "json") => {}
            _ => bail!("{}: --out-config must end in .toml or .json", p.display()),
        }
    }
    let mut bits: Vec<u32> = a.bits.iter().copied().filter(|&b| b != 8).collect();
    bits.sort_unstable();
    bits.dedup();
    if bits.is_empty() {
        bail!("--bits: give at least one width other than 8");
    }
    let base = QuantConfig {
        weight_bits: 8,
        act_bits: a.act_bits,
        add_bits: a.add_bits,
        method: Method::Ptq,
        ..QuantConfig::default()
    };
    let scfg = SensitivityConfig {
        base: base.clone(),
        bits: bits.clone(),
        activations: false,
        measure_on: a.measure_on.into(),
        samples: a.samples,
        // An accuracy budget sums measured drops; a size budget needs only the cost it minimises.
        measure: a.max_drop.is_some() || a.cost == CostArg::Measured,
        hessian_iters: if a.cost == CostArg::Hessian { 32 } else { 0 },
        gauss_newton: a.cost == CostArg::Gn,
        ..SensitivityConfig::default()
    };
    scfg.validate()?;
    base.validate()?;
    let model = load_float_model(&a.model)?;
    let split = load_data(&a.data.data, &a.data, model.normalization.clone())?;
    // One set of calibration and measured images for the sensitivity and the refinement, so their figures compare.
    let measurer = sensitivity::Measurer::new(
        &model,
        &split,
        base.calibration_samples,
        scfg.samples,
        scfg.measure_on,
    )?;
    let bar = crate::ui::bar(0, "sensitivity", quiet);
    let sens = sensitivity::analyse_with(&measurer, &split, &scfg, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let cost = match (a.max_drop.is_some(), a.cost) {
        (true, _) => Cost::MeasuredDrop,
        (false, CostArg::Measured) => Cost::MeasuredLoss,
        (false, CostArg::Hessian) => Cost::Hessian,
        (false, CostArg::Gn) => Cost::GaussNewton,
    };
    let layers = allocate::layer_choices(&sens, cost)?;
    let total_weights: usize = sens.layers.iter().map(|l| l.weights).sum();
    let budget = match (a.budget_bits, a.budget_bytes, a.max_drop) {
        (Some(b), _, _) => Budget::Bytes((b * total_weights as f64 / 8.0).floor() as u64),
        (_, Some(n), _) => Budget::Bytes(n),
        (_, _, Some(d)) => Budget::MaxCost(d),
        _ => unreachable!("exactly one budget was checked above"),
    };
    let t_solve = Instant::now();
    let solved = allocate::solve(&layers, budget)?;
    let solve_ms = t_solve.elapsed().as_secs_f64() * 1e3;
    let refined = match budget {
        Budget::Bytes(max) if a.refine > 0 => {
            let bar = crate::ui::bar(0, "refine", quiet);
            let r = allocate::refine(
                &measurer,
                &base,
                &layers,
                &solved,
                max,
                a.refine,
                &mut |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                },
            )?;
            bar.finish_and_clear();
            Some(r)
        }
        _ => None,
    };
    let checked = match budget {
        Budget::MaxCost(max) => {
            let bar = crate::ui::bar(0, "check --max-drop", quiet);
            // The search orders the candidates by the measured loss, which rarely ties.
            let order = allocate::layer_choices(&sens, Cost::MeasuredLoss)?;
            let c = allocate::check_max_drop(
                &measurer,
                &base,
                &layers,
                &order,
                &solved,
                sens.base_accuracy,
                max,
                &mut |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                },
            )?;
            bar.finish_and_clear();
            Some(c)
        }
        Budget::Bytes(_) => None,
    };
    let alloc = match (&refined, &checked) {
        (Some(r), _) => r.best.clone(),
        (_, Some(c)) => c.best.clone(),
        _ => solved.clone(),
    };

    let run = |q: QuantConfig, bars: &mut Bars| {
        let cfg = RunConfig {
            data: a.data.data.clone(),
            model: model.spec.clone(),
            train: TrainConfig::default(),
            quant: Some(q),
            init: None,
            baseline: false,
        };
        pipeline::run(&cfg, &split, Some(&model), None, &mut |e| bars.handle(e))
    };
    let mut bars = Bars::new(true);
    let chosen_cfg = alloc.quant_config(&base);
    let chosen = run(chosen_cfg.clone(), &mut bars)?;
    let predicted_drop = alloc.predicted_drop_pp(&sens);

    println!(
        "lowbit mixed: {} ({}) on {}, A{}{} PTQ, {} weight layers, {} weights; budget {}",
        a.model.display(),
        model.spec,
        a.data.data,
        a.act_bits,
        a.add_bits
            .map_or(String::new(), |b| format!(" (add operands {b})")),
        sens.layers.len(),
        total_weights,
        match budget {
            Budget::Bytes(b) => format!(
                "{b} packed weight bytes ({:.2} bits per weight)",
                b as f64 * 8.0 / total_weights as f64
            ),
            Budget::MaxCost(d) => format!(
                "a drop of at most {d} pp from all 8 bits (checked on the {} {})",
                sens.samples,
                images_of(sens.measured_on)
            ),
        }
    );
    let mut t = Table::new(&["#", "layer", "weights", "bits", "bytes", "cost"]);
    for ((l, &k), choices) in sens.layers.iter().zip(&alloc.choice).zip(&layers) {
        t.row(vec![
            l.index.to_string(),
            l.name.clone(),
            l.weights.to_string(),
            choices[k].bits.to_string(),
            choices[k].bytes.to_string(),
            format!("{:.4}", choices[k].cost),
        ]);
    }
    println!();
    print!("{}", t.render());
    println!(
        "\nSolved exactly over {} allocations on the frontier in {solve_ms:.1} ms. Weight bytes {} ({:.2} bits per \
         weight).",
        allocate::frontier(&layers)?.len(),
        alloc.bytes,
        alloc.bytes as f64 * 8.0 / total_weights as f64
    );
    let left_out: Vec<String> = bits
        .iter()
        .filter(|&&b| !layers.iter().flatten().any(|c| c.bits == b))
        .map(|b| format!("{b}-bit"))
        .collect();
    if !left_out.is_empty() {
        println!(
            "Not candidates: {} (stored in as many bytes as a wider width, which keeps more levels).",
            left_out.join(", ")
        );
    }

    if let Some(r) = &refined {
        let mut t = Table::new(&[
            "round",
            "bits per layer",
            "bits/weight",
            "predicted loss",
            "loss",
            "accuracy",
        ]);
        for (i, m) in r.rounds.iter().enumerate() {
            t.row(vec![
                i.to_string(),
                bits_list(&m.bits),
                format!("{:.2}", m.bytes as f64 * 8.0 / total_weights as f64),
                m.predicted_loss.map_or("-".into(), |p| format!("{p:.4}")),
                format!("{:.4}", m.loss),
                pct(m.accuracy),
            ]);
        }
        println!(
            "\nRefinement on {} {} (round 0: the solve over one-layer costs; each later round re-measured every \
             candidate around the best so far and solved again):",
            sens.samples,
            images_of(sens.measured_on)
        );
        print!("{}", t.render());
        let kept = r.rounds.iter().position(|m| m.bits == r.best.bits);
        println!(
            "Kept round {} (the table of layers above shows it).",
            kept.unwrap_or(0)
        );
    }

    if let Some(c) = &checked {
        let mut t = Table::new(&[
            "step",
            "bits per layer",
            "bits/weight",
            "predicted drop",
            "accuracy",
            "drop",
        ]);
        for (i, m) in c.measured.iter().enumerate() {
            t.row(vec![
                i.to_string(),
                bits_list(&m.bits),
                format!("{:.2}", m.bytes as f64 * 8.0 / total_weights as f64),
                format!("{:.2} pp", m.predicted_drop_pp),
                pct(m.accuracy),
                format!("{:.2} pp", m.drop_pp),
            ]);
        }
        println!(
            "\nChecked on the {} {} (all 8 bits {:.2}%; step 0: the solve over the summed one-layer drops; if it lost \
             more, a bisection of the frontier of measured losses):",
            sens.samples,
            images_of(sens.measured_on),
            sens.base_accuracy * 100.0
        );
        print!("{}", t.render());
        match c.all_eight {
            true => println!(
                "Nothing searched measured within {} pp: kept all 8 bits.",
                match budget {
                    Budget::MaxCost(max) => max,
                    Budget::Bytes(_) => 0.0,
                }
            ),
            false => println!(
                "Kept step {} (the table of layers above shows it).",
                c.measured
                    .iter()
                    .rposition(|m| m.bits == c.best.bits)
                    .unwrap_or(0)
            ),
        }
    }

    // The uniform allocations beside it, each measured the same way.
    let mut cmp = Table::new(&[
        "allocation",
        "weight bytes",
        "bits/weight",
        "accuracy",
        "vs f32",
        "model bytes",
    ]);
    // Every row below is measured on the whole test set; the sensitivity saw other images or part of it.
    let subset = sens.measured_on != MeasureOn::Test || sens.samples < split.test.n;
    let f32_acc = match subset {
        true => lowbit::train::evaluate_float(&mut model.clone(), &split.test, 256)?.0,
        false => sens.float_accuracy,
    };
    let chosen_acc = chosen.report.test_accuracy;
    let mut uniform = Vec::new();
    for &b in bits.iter().chain(std::iter::once(&8)) {
        // From the layers' shapes: a width left out of the candidates still has its size.
        let bytes = sens.layers.iter().try_fold(0u64, |sum, l| {
            Ok::<u64, lowbit::Error>(
                sum + allocate::weight_bytes(b, l.rows, l.weights / l.rows.max(1))?,
            )
        })?;
        let out = run(
            QuantConfig {
                weight_bits: b,
                ..base.clone()
            },
            &mut bars,
        )?;
        uniform.push((b, bytes, out.report.test_accuracy, out.report.model_bytes));
    }
    for &(b, bytes, acc, mb) in &uniform {
        cmp.row(vec![
            format!("uniform W{b}A{}", a.act_bits),
            bytes.to_string(),
            format!("{:.2}", bytes as f64 * 8.0 / total_weights as f64),
            pct(acc),
            format!("{:+.2} pp", (acc - f32_acc) * 100.0),
            mb.to_string(),
        ]);
    }
    cmp.row(vec![
        "mixed (this)".into(),
        alloc.bytes.to_string(),
        format!("{:.2}", alloc.bytes as f64 * 8.0 / total_weights as f64),
        pct(chosen_acc),
        format!("{:+.2} pp", (chosen_acc - f32_acc) * 100.0),
        chosen.report.model_bytes.to_string(),
    ]);
    println!();
    print!("{}", cmp.render());
    let best_uniform = uniform
        .iter()
        .filter(|u| u.1 <= alloc.bytes)
        .max_by(|x, y| x.2.total_cmp(&y.2));
    let engine = format!(
        "measured on the integer engine {:.2}% ({} engine/simulation mismatches)",
        chosen_acc * 100.0,
        chosen.report.engine_simulation_mismatches.unwrap_or(0)
    );
    // The prediction and the measurement compare as drops from all-8-bit: each on its own images.
    let measured_drop = uniform
        .iter()
        .find(|u| u.0 == 8)
        .map(|u| (u.2 - chosen_acc) * 100.0);
    match predicted_drop {
        Some(predicted_drop) => {
            println!(
                "\nf32 {:.2}%. Predicted accuracy (all-8-bit {:.2}%{} minus the layers' measured drops) {:.2}%, \
                 {engine}.",
                f32_acc * 100.0,
                sens.base_accuracy * 100.0,
                match subset {
                    true => format!(" on the {} {}", sens.samples, images_of(sens.measured_on)),
                    false => String::new(),
                },
                (sens.base_accuracy * 100.0 - predicted_drop),
            );
            if let Some(d) = measured_drop {
                println!(
                    "Drop from uniform W8A{}: predicted {predicted_drop:.2} pp (the chosen layers' drops on the {} \
                     {}), measured {d:.2} pp on the {} test images.",
                    a.act_bits,
                    sens.samples,
                    images_of(sens.measured_on),
                    split.test.n
                );
            }
        }
        // Estimated costs only: the layers were not measured one by one.
        None => println!(
            "\nf32 {:.2}%. Predicted loss increase over all-8-bit {:.4} {}, {engine}; drop from uniform W8A{} {}.",
            f32_acc * 100.0,
            alloc.cost,
            match a.cost {
                CostArg::Hessian => "(HAWQ's estimate, in its own units)",
                _ => "nats (the Gauss-Newton estimate)",
            },
            a.act_bits,
            measured_drop.map_or("-".into(), |d| format!("{d:.2} pp")),
        ),
    }
    if let (Budget::MaxCost(max), Some(d)) = (budget, measured_drop) {
        if d > max && subset {
            println!(
                "The test set's drop ({d:.2} pp) is above --max-drop {max}: the check measured other images ({}).",
                match sens.measured_on {
                    MeasureOn::Test => "more --samples bring them closer",
                    MeasureOn::Train => "more --samples, or --measure-on test, bring them closer",
                }
            );
        }
    }
    match best_uniform {
        Some(&(b, _, acc, _)) => println!(
            "Best uniform allocation of equal or smaller size: W{b} at {:.2}% ({:+.2} pp for the mixed one).",
            acc * 100.0,
            (chosen_acc - acc) * 100.0
        ),
        None => println!("No uniform allocation is this small."),
    }
    if let Some(path) = &a.out_config {
        let fc = FileConfig {
            model: Some(model.spec.clone()),
            data: Some(a.data.data.clone()),
            quantization: Some(QuantSection {
                weight_bits: Some(8),
                act_bits: Some(a.act_bits),
                add_bits: a.add_bits,
                per_channel: Some(base.per_channel),
                method: Some(MethodName::Ptq),
                layers: chosen_cfg.layers.clone(),
                ..QuantSection::default()
            }),
            ..FileConfig::default()
        };
        let text = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => serde_json::to_string_pretty(&fc)?,
            _ => format!(
                "# Written by `lowbit mixed` for {} ({}). Rerun: lowbit train --config {} --init {}\n{}",
                a.model.display(),
                model.spec,
                path.display(),
                a.model.display(),
                fc.to_toml()?
            ),
        };
        lowbit::modelfile::write_atomic(path, text.as_bytes())?;
        println!("config written to {}", path.display());
    }
    if let Some(path) = &a.out {
        if let Some(qm) = &chosen.quant_model {
            lowbit_runtime::format::save(qm, path)?;
            println!("model written to {}", path.display());
        }
    }
    if let Some(path) = &a.report {
        let fields = serde_json::json!({
            "budget": budget,
            "allocation": alloc,
            "solved": solved,
            "refine": refined,
            "max_drop_check": checked,
            "predicted_drop_pp": predicted_drop,
            "measured_drop_pp": measured_drop,
            "measured_accuracy": chosen_acc,
            "float_accuracy": f32_acc,
            "uniform": uniform.iter().map(|&(b, bytes, acc, mb)| serde_json::json!({
                "bits": b, "weight_bytes": bytes, "accuracy": acc, "model_bytes": mb
            })).collect::<Vec<_>>(),
            "sensitivity": sens,
            "report": chosen.report,
        });
        write_model_report(path, &a.model, &model.spec, &a.data.data, fields)?;
    }
    println!("Total {:.1}s.", t0.elapsed().as_secs_f64());
    Ok(())
}
