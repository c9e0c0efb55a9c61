//! Throughput of one shared `Engine` with 1 and 2 threads calling `Engine::run` at once, with the helper threads
//! spinning between batches (`EngineOptions::allow_spinning`) and with the library's default (parking), in 200 ms
//! windows that take turns in one process so that a shared machine's drift falls on every case. Each window
//! counts the samples all callers finished; a second caller finds the helpers busy with the first one's batch and
//! runs its own on its thread alone.
//!
//! `cargo run --release -p lowbit-runtime --example concurrent_callers -- MODEL.lbq [BATCH [WINDOWS]]` (default
//! 256, 40)
use lowbit_runtime::engine::{Engine, EngineOptions};
use lowbit_runtime::format;
use lowbit_runtime::testutil::process_cpu_secs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or("usage: concurrent_callers MODEL.lbq [BATCH [WINDOWS]]")?,
    );
    let batch: usize = args.next().map(|b| b.parse()).transpose()?.unwrap_or(256);
    let windows: usize = args.next().map(|w| w.parse()).transpose()?.unwrap_or(40);
    let model = format::load(&path)?;
    let engines = [true, false].map(|allow_spinning| {
        Engine::with_options(
            &model,
            EngineOptions {
                allow_spinning,
                ..EngineOptions::default()
            },
        )
    });
    let [spinning, parking] = engines;
    let (spinning, parking) = (spinning?, parking?);
    let features = parking.input_features();
    // Deterministic pseudo-random pixels, different per caller: the engine's speed does not depend on them.
    let inputs: Vec<Vec<u8>> = (0..2usize)
        .map(|c| {
            (0..batch * features)
                .map(|i| ((i + c * 7919).wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect()
        })
        .collect();
    let cases: [(&str, &Engine, usize); 4] = [
        ("1 caller, spinning", &spinning, 1),
        ("2 callers, spinning", &spinning, 2),
        ("1 caller, parking", &parking, 1),
        ("2 callers, parking", &parking, 2),
    ];
    let n = cases.len();
    let (mut best, mut samples, mut secs, mut cpu) =
        (vec![0f64; n], vec![0u64; n], vec![0f64; n], vec![0f64; n]);
    for w in 0..windows.max(n) {
        let which = w % n;
        let (_, engine, callers) = cases[which];
        let done = AtomicU64::new(0);
        let (t0, cpu0) = (Instant::now(), process_cpu_secs());
        let deadline = t0 + Duration::from_millis(200);
        std::thread::scope(|s| {
            for input in inputs.iter().take(callers) {
                let done = &done;
                s.spawn(move || {
                    while Instant::now() < deadline {
                        let logits = engine
                            .run(input, batch)
                            .unwrap_or_else(|e| panic!("run: {e}"));
                        std::hint::black_box(logits);
                        done.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        let el = t0.elapsed().as_secs_f64();
        let d = done.load(Ordering::Relaxed);
        best[which] = f64::max(best[which], d as f64 / el);
        samples[which] += d;
        secs[which] += el;
        cpu[which] += process_cpu_secs() - cpu0;
    }
    println!(
        "{}: batch {batch}, {} rayon threads, {windows} windows of 200 ms",
        path.display(),
        rayon::current_num_threads()
    );
    for (i, (name, _, _)) in cases.iter().enumerate() {
        println!(
            "{name:>20}: best window {:>10.0} samples/s, mean {:>10.0} samples/s, {:>5.2} CPU-s per s",
            best[i],
            samples[i] as f64 / secs[i],
            cpu[i] / secs[i]
        );
    }
    Ok(())
}
