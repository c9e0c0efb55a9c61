//! Where the engine's time goes: each planned step of a saved `.lbq` model timed on one thread
//! ([`Engine::profile`]: best of RUNS runs of a BATCH-sample batch), with its share and multiply-accumulate rate.
//!
//! `cargo run --release -p lowbit-runtime --example engine_profile -- MODEL.lbq [BATCH [RUNS] [wall]]` (default
//! batch 16, 20 runs). Inputs are seeded random codes. Times are the thread's CPU time (on a shared machine, the
//! work done rather than the machine's load), or wall time with `wall`. Set `RAYON_NUM_THREADS=1`: an im2col GEMM
//! large enough spreads its row blocks over rayon's pool, whose CPU time the calling thread's clock misses.
use lowbit_runtime::engine::Engine;
use lowbit_runtime::format;
use lowbit_runtime::testutil::{thread_cpu_secs, Rng};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or("usage: engine_profile MODEL.lbq [BATCH [RUNS]]")?,
    );
    let batch: usize = args.next().map(|v| v.parse()).transpose()?.unwrap_or(16);
    let runs: usize = args.next().map(|v| v.parse()).transpose()?.unwrap_or(20);
    let wall = args.next().as_deref() == Some("wall");
    let engine = Engine::new(&format::load(&path)?)?;
    let input = Rng(1).bytes(batch * engine.input_features());
    let steps = if wall {
        engine.profile(&input, batch, runs)?
    } else {
        engine.profile_with_clock(&input, batch, runs, &thread_cpu_secs)?
    };
    let total: f64 = steps.iter().map(|s| s.seconds).sum();
    let macs: usize = steps.iter().map(|s| s.macs).sum();
    println!(
        "{}: batch {batch}, best of {runs} runs per step, one thread, {} time",
        path.display(),
        if wall { "wall" } else { "thread CPU" }
    );
    println!(
        "{:<34} {:>10} {:>10} {:>6} {:>9}  kernel",
        "step", "MACs", "us", "share", "GMAC/s"
    );
    for s in &steps {
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
    Ok(())
}
