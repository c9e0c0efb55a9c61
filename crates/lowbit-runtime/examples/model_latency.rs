//! Engine latency of a saved `.lbq` model at batch 1 and 256: the minimum over short windows of the mean wall time
//! per call (filters out windows in which the thread was descheduled on a shared machine). The engine's helper
//! threads spin between calls (`EngineOptions::allow_spinning`), as in the CLI's `bench`.
//!
//! `cargo run --release -p lowbit-runtime --example model_latency -- MODEL.lbq [WINDOWS [BATCHES]]` (BATCHES comma separated, default
//! `1,256`; WINDOWS = 0 runs each batch once, for instruction counts under callgrind)
use lowbit_runtime::engine::{Engine, EngineOptions};
use lowbit_runtime::format;
use lowbit_runtime::testutil::{min_window_secs, process_cpu_secs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or("usage: model_latency MODEL.lbq [WINDOWS [BATCHES]]")?,
    );
    let windows: usize = args.next().map(|w| w.parse()).transpose()?.unwrap_or(20);
    let batches: Vec<usize> = match args.next() {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![1, 256],
    };
    let model = format::load(&path)?;
    let engine = Engine::with_options(
        &model,
        EngineOptions {
            allow_spinning: true,
            ..EngineOptions::default()
        },
    )?;
    let features = engine.input_features();
    println!(
        "{}: kernel {}, {} rayon threads",
        path.display(),
        lowbit_runtime::kernels::active_isa(),
        rayon::current_num_threads()
    );
    for path in engine.kernel_paths() {
        println!("  {path}");
    }
    for batch in batches {
        // Deterministic pseudo-random pixels: the engine's speed does not depend on their values.
        let input: Vec<u8> = (0..batch * features)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let secs = min_window_secs(Duration::from_millis(50), windows, || {
            std::hint::black_box(engine.run(&input, batch).map(|l| l.len()).unwrap_or(0));
        });
        // CPU time of a 2-second run: the work per sample, whatever the machine's load.
        let (t0, c0) = (Instant::now(), process_cpu_secs());
        let mut calls = 0usize;
        while windows > 0 && t0.elapsed() < Duration::from_secs(2) {
            std::hint::black_box(engine.run(&input, batch).map(|l| l.len()).unwrap_or(0));
            calls += 1;
        }
        let cpu_us = (process_cpu_secs() - c0) * 1e6 / (calls.max(1) * batch) as f64;
        println!(
            "batch {batch:>3}: {:>10.0} samples/s, {:>9.2} us per call, {:>8.2} CPU-us per sample",
            batch as f64 / secs,
            secs * 1e6,
            cpu_us
        );
    }
    Ok(())
}
