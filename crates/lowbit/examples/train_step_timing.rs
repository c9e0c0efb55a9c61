//! Speed of f32 training steps (forward + softmax cross-entropy + backward + Adam) of any model spec on random
//! data, with the time per layer kind, for the issue-11 comparison with PyTorch's epoch time.
//!
//! `cargo run --release -p lowbit --example train_step_timing -- [SPEC (resnet:20)] [BATCH (128)] [WINDOWS (5)]
//! [STEPS per window (3)] [CxHxW (1x28x28)]`
//!
//! Prints, as a table and one JSON line: samples/s of the best window (the machine is shared: the best window is
//! the least disturbed one) and of the mean, the process CPU time per step, the estimated time of a 60,000-image
//! epoch, the wall time per layer kind (mean per step, from [`lowbit::nn::profile`]), the convolutions' backward
//! split into dW and dX (each conv layer timed alone, min of repeats), and an FNV-1a hash of the weights after
//! the run (equal hashes = bit-identical training; it depends on the thread count).
use lowbit::nn::{profile, softmax_cross_entropy, Layer, Model};
use lowbit::optim::{Optimizer, OptimizerKind};
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Process CPU time (user + system) in seconds, from `/proc/self/stat` (Linux; 0 elsewhere). Fields 14 and 15
/// are in `USER_HZ` ticks, 100 per second on every Linux ABI.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are plain.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // rest starts at field 3, so utime (14) and stime (15) are f[11] and f[12].
    (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) as f64 / 100.0
}

fn fail(what: impl std::fmt::Display) -> ! {
    eprintln!("train_step_timing: {what}");
    std::process::exit(1);
}

/// The kind a node's time is reported under.
fn kind(layer: &Layer) -> &'static str {
    match layer {
        Layer::Conv2d(c) if c.groups() > 1 => "conv (grouped)",
        Layer::Conv2d(_) => "conv",
        Layer::BatchNorm2d(_) => "batchnorm",
        Layer::Relu(_) | Layer::Clip(_) => "relu/clip",
        Layer::Add(_) => "add",
        Layer::AvgPool2d(_) | Layer::MaxPool2d(_) => "pool",
        Layer::Slice(_) | Layer::Pad(_) | Layer::Flatten(_) | Layer::Concat(_) => {
            "slice/pad/flatten"
        }
        Layer::Dense(_) => "dense",
        _ => "other",
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| -> usize {
        args.get(i).map_or(default, |s| {
            s.parse()
                .unwrap_or_else(|_| fail(format!("argument {} '{s}' is not a number", i + 1)))
        })
    };
    let spec = args.first().map_or("resnet:20", String::as_str);
    let (batch, windows, steps) = (arg(1, 128).max(1), arg(2, 5).max(1), arg(3, 3).max(1));
    let shape: Vec<usize> = args
        .get(4)
        .map_or("1x28x28", String::as_str)
        .split('x')
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let [c, h, w] = shape[..] else {
        fail("the input shape is CxHxW, e.g. 1x28x28")
    };
    let mut model = Model::from_spec_for(spec, 1, [c, h, w], 10).unwrap_or_else(|e| fail(e));
    let mut rng = Rng::new(7);
    let x = Tensor::new(
        rng.uniform_vec(batch * c * h * w, 0.0, 1.0),
        vec![batch, c, h, w],
    );
    let labels: Vec<u8> = (0..batch).map(|_| rng.below(10) as u8).collect();
    let mut opt = Optimizer::new(OptimizerKind::adam(), 1e-3).unwrap_or_else(|e| fail(e));
    let mut loss_opt = [Duration::ZERO; 2];
    let step = |model: &mut Model, opt: &mut Optimizer, acc: &mut [Duration; 2]| {
        let logits = model.forward(&x, true).unwrap_or_else(|e| fail(e));
        let t = Instant::now();
        let out = softmax_cross_entropy(&logits, &labels).unwrap_or_else(|e| fail(e));
        acc[0] += t.elapsed();
        model.backward(&out.grad).unwrap_or_else(|e| fail(e));
        let t = Instant::now();
        opt.step(&mut model.params_mut())
            .unwrap_or_else(|e| fail(e));
        acc[1] += t.elapsed();
    };
    // Warm-up: buffers sized, optimizer state created, caches and rayon's threads awake.
    let mut ignored = [Duration::ZERO; 2];
    for _ in 0..2 {
        step(&mut model, &mut opt, &mut ignored);
    }
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    profile::start();
    let mut best = f64::INFINITY;
    for _ in 0..windows {
        let t = Instant::now();
        for _ in 0..steps {
            step(&mut model, &mut opt, &mut loss_opt);
        }
        best = best.min(t.elapsed().as_secs_f64() / steps as f64);
    }
    let times = profile::take().unwrap_or_default();
    let n_steps = (windows * steps) as f64;
    let mean = wall0.elapsed().as_secs_f64() / n_steps;
    let cpu = (cpu_seconds() - cpu0) / n_steps;

    // Per layer kind, mean ms per step.
    let mut kinds: BTreeMap<String, f64> = BTreeMap::new();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3 / n_steps;
    for (j, node) in model.nodes.iter().enumerate() {
        let k = kind(&node.layer);
        let f = times.forward.get(j).map_or(0.0, ms);
        let b = times.backward.get(j).map_or(0.0, ms);
        *kinds.entry(format!("{k} forward")).or_default() += f;
        *kinds.entry(format!("{k} backward")).or_default() += b;
    }
    kinds.retain(|_, v| *v > 0.0);
    kinds.insert("loss".into(), ms(&loss_opt[0]));
    kinds.insert("optimizer (adam)".into(), ms(&loss_opt[1]));
    let accounted: f64 = kinds.values().sum();
    kinds.insert(
        "graph (gradient sums, copies)".into(),
        (mean * 1e3 - accounted).max(0.0),
    );

    // Conv backward split: each conv layer alone, after a training forward on its real input.
    let values = model.forward_all(&x, true).unwrap_or_else(|e| fail(e));
    let (mut dw_ms, mut dwdx_ms) = (0.0, 0.0);
    for (j, node) in model.nodes.iter().enumerate() {
        let Layer::Conv2d(conv) = &node.layer else {
            continue;
        };
        let mut conv = conv.clone();
        let input = &values[node.inputs[0]];
        let y = conv.forward(input, true).unwrap_or_else(|e| fail(e));
        let g = Tensor::new(rng.uniform_vec(y.len(), -1.0, 1.0), y.shape.clone());
        let min_ms = |conv: &mut lowbit::nn::Conv2d, need: bool| {
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    lowbit::nn::layer::Op::backward(conv, &g, need).unwrap_or_else(|e| fail(e));
                    t.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::INFINITY, f64::min)
        };
        dw_ms += min_ms(&mut conv, false);
        // The first layer's input gradient is never needed in training; still timed, for completeness.
        dwdx_ms += if j == 0 { 0.0 } else { min_ms(&mut conv, true) };
    }

    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for p in model.params_mut() {
        for v in p.value.iter() {
            for byte in v.to_bits().to_le_bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let threads = rayon::current_num_threads();
    let sps_best = batch as f64 / best;
    let sps_mean = batch as f64 / mean;
    let epoch_s = 60_000.0 / sps_best;
    println!(
        "{spec}, batch {batch}, input {c}x{h}x{w}, {threads} threads, {} steps in {windows} windows, kernels {:?}",
        windows * steps,
        lowbit::nn::kernels::isa()
    );
    println!(
        "step: best {:.1} ms ({sps_best:.1} samples/s), mean {:.1} ms ({sps_mean:.1} samples/s), CPU {:.1} ms/step ({:.2} cores busy)",
        best * 1e3,
        mean * 1e3,
        cpu * 1e3,
        cpu / mean
    );
    println!(
        "60,000-image epoch at the best rate: {epoch_s:.1} s (PyTorch 117-149 s: ratio {:.2}-{:.2})",
        epoch_s / 149.0,
        epoch_s / 117.0
    );
    println!("{:<32} {:>9} {:>7}", "part (mean per step)", "ms", "share");
    for (k, v) in &kinds {
        println!("{k:<32} {v:>9.2} {:>6.1}%", 100.0 * v / (mean * 1e3));
    }
    println!(
        "conv backward alone, sum over layers: dW {dw_ms:.2} ms, dW + dX {dwdx_ms:.2} ms (dX ~{:.2} ms)",
        dwdx_ms - dw_ms
    );
    println!("weights hash {hash:016x}");
    let parts: Vec<String> = kinds
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v:.3}"))
        .collect();
    println!(
        "{{\"spec\": \"{spec}\", \"batch\": {batch}, \"threads\": {threads}, \"best_ms\": {:.3}, \"mean_ms\": {:.3}, \"cpu_ms\": {:.3}, \"samples_per_s\": {sps_best:.1}, \"epoch_60k_s\": {epoch_s:.1}, \"parts_ms\": {{{}}}, \"conv_dw_ms\": {dw_ms:.3}, \"conv_dw_dx_ms\": {dwdx_ms:.3}, \"weights_hash\": \"{hash:016x}\"}}",
        best * 1e3,
        mean * 1e3,
        cpu * 1e3,
        parts.join(", ")
    );
}
