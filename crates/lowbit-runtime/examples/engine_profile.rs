//! Where the engine's time goes: each planned step of a saved `.lbq` model timed on one thread
//! ([`Engine::profile`]: best of RUNS runs of a BATCH-sample batch), with its share and multiply-accumulate rate.
//!
//! `cargo run --release -p lowbit-runtime --example engine_profile -- MODEL.lbq [BATCH [RUNS]]` (default batch 16,
//! 20 runs). Inputs are seeded random codes. On a shared machine the best of many runs filters out the runs in
//! which the thread was descheduled.
use lowbit_runtime::engine::Engine;
use lowbit_runtime::format;
use lowbit_runtime::testutil::Rng;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or("usage: engine_profile MODEL.lbq [BATCH [RUNS]]")?,
    );
    let batch: usize = args.next().map(|v| v.parse()).transpose()?.unwrap_or(16);
    let runs: usize = args.next().map(|v| v.parse()).transpose()?.unwrap_or(20);
    let engine = Engine::new(&format::load(&path)?)?;
    let input = Rng(1).bytes(batch * engine.input_features());
    let steps = engine.profile(&input, batch, runs)?;
    let total: f64 = steps.iter().map(|s| s.seconds).sum();
    let macs: usize = steps.iter().map(|s| s.macs).sum();
    println!(
        "{}: batch {batch}, best of {runs} runs per step, one thread",
        path.display()
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
