//! Where the engine's time goes: each planned step of a saved `.lbq` model timed on one thread
//! ([`Engine::profile`]: best of RUNS runs of a BATCH-sample batch), with its share and multiply-accumulate rate.
//!
//! `cargo run --release -p lowbit-runtime --example engine_profile -- MODEL.lbq [BATCH [RUNS] [wall] [ab]]`
//! (default batch 16, 20 runs). Inputs are seeded random codes. Times are the thread's CPU time (on a shared
//! machine, the work done rather than the machine's load), or wall time with `wall`. Set `RAYON_NUM_THREADS=1`:
//! an im2col GEMM large enough spreads its row blocks over rayon's pool, whose CPU time the calling thread's clock
//! misses. With `ab`, the default plan (Winograd for eligible 3x3 convolutions) and the direct plan
//! ([`EngineOptions::direct_3x3`]) are profiled in alternation, three rounds each keeping every step's best, and
//! compared step by step (the outputs are checked to be the same logits).
use lowbit_runtime::engine::{Engine, EngineOptions, StepProfile};
use lowbit_runtime::format;
use lowbit_runtime::testutil::{thread_cpu_secs, Rng};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or("usage: engine_profile MODEL.lbq [BATCH [RUNS]] [wall] [ab]")?,
    );
    let batch: usize = args.next().map(|v| v.parse()).transpose()?.unwrap_or(16);
    let runs: usize = args.next().map(|v| v.parse()).transpose()?.unwrap_or(20);
    let flags: Vec<String> = args.collect();
    let wall = flags.iter().any(|f| f == "wall");
    let ab = flags.iter().any(|f| f == "ab");
    let model = format::load(&path)?;
    let engine = Engine::new(&model)?;
    let input = Rng(1).bytes(batch * engine.input_features());
    let profile = |e: &Engine| {
        if wall {
            e.profile(&input, batch, runs)
        } else {
            e.profile_with_clock(&input, batch, runs, &thread_cpu_secs)
        }
    };
    let clock = if wall { "wall" } else { "thread CPU" };
    if !ab {
        let steps = profile(&engine)?;
        println!(
            "{}: batch {batch}, best of {runs} runs per step, one thread, {clock} time",
            path.display()
        );
        print_steps(&steps, batch);
        return Ok(());
    }
    let direct = Engine::with_options(
        &model,
        EngineOptions {
            direct_3x3: true,
            ..EngineOptions::default()
        },
    )?;
    if engine.run(&input, batch)? != direct.run(&input, batch)? {
        return Err("the Winograd and direct plans disagree".into());
    }
    let (mut a, mut b) = (profile(&engine)?, profile(&direct)?);
    for _ in 1..3 {
        keep_best(&mut a, &profile(&engine)?);
        keep_best(&mut b, &profile(&direct)?);
    }
    println!(
        "{}: batch {batch}, best of 3 x {runs} runs per step, one thread, {clock} time",
        path.display()
    );
    println!("\nA: default plan (Winograd where eligible)");
    print_steps(&a, batch);
    println!("\nB: direct_3x3 (planes kernel)");
    print_steps(&b, batch);
    println!(
        "\n{:<34} {:>10} {:>10} {:>8}",
        "step", "A us", "B us", "B / A"
    );
    for (x, y) in a.iter().zip(&b) {
        println!(
            "{:<34} {:>10.1} {:>10.1} {:>8.2}",
            x.name,
            x.seconds * 1e6,
            y.seconds * 1e6,
            y.seconds / x.seconds
        );
    }
    let (ta, tb): (f64, f64) = (
        a.iter().map(|s| s.seconds).sum(),
        b.iter().map(|s| s.seconds).sum(),
    );
    println!(
        "total: A {:.1} us, B {:.1} us per batch; B / A = {:.3}",
        ta * 1e6,
        tb * 1e6,
        tb / ta
    );
    Ok(())
}

/// Each step's best time of `best` and `other` (the same plan profiled again).
fn keep_best(best: &mut [StepProfile], other: &[StepProfile]) {
    for (b, o) in best.iter_mut().zip(other) {
        b.seconds = b.seconds.min(o.seconds);
    }
}

fn print_steps(steps: &[StepProfile], batch: usize) {
    let total: f64 = steps.iter().map(|s| s.seconds).sum();
    let macs: usize = steps.iter().map(|s| s.macs).sum();
    println!(
        "{:<34} {:>10} {:>10} {:>6} {:>9}  kernel",
        "step", "MACs", "us", "share", "GMAC/s"
    );
    for s in steps {
        let rate = if s.macs > 0 {
            format!("{:.1}", (s.macs * batch) as f64 / s.seconds / 1e9)
        } else {
            "-".into()
        };
        println!(
            "{:<34} {:>10} {:>10.1} {:>5.1}% {:>9}  {}",
            s.name,
            s.macs,
            s.seconds * 1e6,
            100.0 * s.seconds / total,
            rate,
            s.path.as_deref().unwrap_or("")
        );
    }
    println!(
        "total {:.1} us per batch = {:.0} samples/s on one thread; {} MACs per sample, {:.1} GMAC/s ({:.1} GOPS)",
        total * 1e6,
        batch as f64 / total,
        macs,
        (macs * batch) as f64 / total / 1e9,
        2.0 * (macs * batch) as f64 / total / 1e9
    );
}
