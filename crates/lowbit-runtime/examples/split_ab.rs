//! `Engine::run` (the caller and `lowbit_runtime::workers`' spinning helpers take batch tasks from one counter)
//! against `Engine::run_pooled` (the whole split handed to the rayon pool, whose workers sleep between calls, the
//! caller waiting on its latch), in 100 ms windows alternating between the two in one process, so that a shared
//! machine's drift falls on both.
//!
//! `cargo run --release -p lowbit-runtime --example split_ab -- MODEL.lbq [BATCH [WINDOWS]]` (default 256, 40)
use lowbit_runtime::engine::Engine;
use lowbit_runtime::format;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or("usage: split_ab MODEL.lbq [BATCH [WINDOWS]]")?,
    );
    let batch: usize = args.next().map(|b| b.parse()).transpose()?.unwrap_or(256);
    let windows: usize = args.next().map(|w| w.parse()).transpose()?.unwrap_or(40);
    let engine = Engine::new(&format::load(&path)?)?;
    let features = engine.input_features();
    // Deterministic pseudo-random pixels: the engine's speed does not depend on their values.
    let input: Vec<u8> = (0..batch * features)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let names = ["run (spinning helpers)", "run_pooled"];
    let (mut best, mut calls, mut secs) = ([f64::INFINITY; 2], [0u64; 2], [0f64; 2]);
    for w in 0..windows.max(2) {
        let which = w % 2;
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < Duration::from_millis(100) || n == 0 {
            let logits = if which == 0 {
                engine.run(&input, batch)?
            } else {
                engine.run_pooled(&input, batch)?
            };
            std::hint::black_box(logits);
            n += 1;
        }
        let el = t0.elapsed().as_secs_f64();
        best[which] = best[which].min(el / n as f64);
        calls[which] += n;
        secs[which] += el;
    }
    println!(
        "{}: batch {batch}, {} rayon threads",
        path.display(),
        rayon::current_num_threads()
    );
    for i in 0..2 {
        println!(
            "{:>20}: best window {:>10.0} samples/s, mean {:>10.0} samples/s",
            names[i],
            batch as f64 / best[i],
            (calls[i] * batch as u64) as f64 / secs[i]
        );
    }
    Ok(())
}
