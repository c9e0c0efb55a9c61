//! Three ways to run one batch, in 100 ms windows that take turns in one process, so that a shared machine's drift
//! falls on all of them:
//! - `Engine::run` with `EngineOptions::allow_spinning` (the caller and `lowbit_runtime::workers`' helper threads
//!   take batch tasks from one counter; the helpers then poll for the next batch before they park), as the CLI's
//!   `bench` and `eval` run;
//! - `Engine::run` with the library's default options (the same split, but the helpers park after every batch and
//!   must be woken for the next: a host process is left idle between calls);
//! - `Engine::run_pooled` (the whole split handed to the rayon pool, whose workers sleep between calls, the caller
//!   waiting on its latch).
//!
//! CPU time per call (all threads of the process) shows what the spinning costs the host.
//!
//! `cargo run --release -p lowbit-runtime --example split_ab -- MODEL.lbq [BATCH [WINDOWS]]` (default 256, 60)
use lowbit_runtime::engine::{Engine, EngineOptions};
use lowbit_runtime::format;
use lowbit_runtime::testutil::process_cpu_secs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

type Case<'a> = (
    &'a str,
    Box<dyn Fn() -> Result<Vec<f32>, lowbit_runtime::QuantError> + 'a>,
);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or("usage: split_ab MODEL.lbq [BATCH [WINDOWS]]")?,
    );
    let batch: usize = args.next().map(|b| b.parse()).transpose()?.unwrap_or(256);
    let windows: usize = args.next().map(|w| w.parse()).transpose()?.unwrap_or(60);
    let model = format::load(&path)?;
    let spinning = Engine::with_options(
        &model,
        EngineOptions {
            allow_spinning: true,
            ..EngineOptions::default()
        },
    )?;
    let parking = Engine::new(&model)?;
    let features = parking.input_features();
    // Deterministic pseudo-random pixels: the engine's speed does not depend on their values.
    let input: Vec<u8> = (0..batch * features)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: [Case; 3] = [
        (
            "run, spinning helpers",
            Box::new(|| spinning.run(&input, batch)),
        ),
        (
            "run, default (parking)",
            Box::new(|| parking.run(&input, batch)),
        ),
        ("run_pooled", Box::new(|| parking.run_pooled(&input, batch))),
    ];
    let n = cases.len();
    let (mut best, mut calls, mut secs) = (vec![f64::INFINITY; n], vec![0u64; n], vec![0f64; n]);
    let mut cpu = vec![0f64; n];
    for w in 0..windows.max(n) {
        let which = w % n;
        let (t0, cpu0) = (Instant::now(), process_cpu_secs());
        let mut c = 0u64;
        while t0.elapsed() < Duration::from_millis(100) || c == 0 {
            std::hint::black_box((cases[which].1)()?);
            c += 1;
        }
        let el = t0.elapsed().as_secs_f64();
        cpu[which] += process_cpu_secs() - cpu0;
        best[which] = best[which].min(el / c as f64);
        calls[which] += c;
        secs[which] += el;
    }
    println!(
        "{}: batch {batch}, {} rayon threads",
        path.display(),
        rayon::current_num_threads()
    );
    for (i, (name, _)) in cases.iter().enumerate() {
        println!(
            "{name:>24}: best window {:>10.0} samples/s, mean {:>10.0} samples/s, {:>6.1} CPU-us per call",
            batch as f64 / best[i],
            (calls[i] * batch as u64) as f64 / secs[i],
            cpu[i] * 1e6 / calls[i] as f64
        );
    }
    Ok(())
}
