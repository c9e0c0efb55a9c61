//! Batch-1 and batch-256 engine latency on a shared machine: the minimum over many short windows of the mean wall
//! time per call, which filters out the windows in which the thread was descheduled (the mean of one long window,
//! as `lowbit bench` reports, mostly measures the machine's load). Also times the first layer alone on prepared
//! weights against the per-call-decoding `gemm_acc` API, the path sub-byte layers took before they were prepared.
//! The engine's helper threads spin between calls (`EngineOptions::allow_spinning`), as in the CLI's `bench`.
//!
//! `cargo run --release -p lowbit-runtime --example engine_latency` (about 10 s).
use lowbit_runtime::engine::{Engine, EngineOptions};
use lowbit_runtime::kernels::{self, PrepackedWeights};
use lowbit_runtime::model::QOp;
use lowbit_runtime::testutil::{min_window_secs, reference_mlp};
use std::time::Duration;

fn main() {
    let window = Duration::from_millis(2);
    println!("active ISA: {}", kernels::active_isa());
    for bits in [8u32, 4, 2, 1] {
        let model = reference_mlp(42, bits);
        let spinning = EngineOptions {
            allow_spinning: true,
            ..EngineOptions::default()
        };
        let engine =
            Engine::with_options(&model, spinning).unwrap_or_else(|e| panic!("engine: {e}"));
        let x1: Vec<u8> = (0..784).map(|t| (t * 37 % 256) as u8).collect();
        let x256: Vec<u8> = (0..256 * 784).map(|t| (t * 37 % 256) as u8).collect();
        let t1 = min_window_secs(window, 400, || {
            std::hint::black_box(engine.run(std::hint::black_box(&x1), 1).ok());
        });
        let t256 = min_window_secs(Duration::from_millis(5), 40, || {
            std::hint::black_box(engine.run(std::hint::black_box(&x256), 256).ok());
        });
        let QOp::Dense(d) = &model.nodes[0].op else {
            panic!("first layer is dense")
        };
        let pw = PrepackedWeights::new(d.weights.clone()).unwrap_or_else(|e| panic!("{e}"));
        let bias = vec![0i32; 64];
        let mut acc = vec![0i32; 64];
        let t_prep = min_window_secs(window, 200, || {
            kernels::gemm_acc_prepacked(std::hint::black_box(&x1), 1, 784, &pw, &bias, &mut acc)
                .ok();
        });
        let t_plain = min_window_secs(window, 100, || {
            kernels::gemm_acc(
                std::hint::black_box(&x1),
                1,
                784,
                &d.weights,
                &bias,
                &mut acc,
            )
            .ok();
        });
        println!(
            "int{bits}: engine batch 1 {:6.2} us, batch 256 {:8.1} us ({:8.0} samples/s); layer 784x64 batch 1: \
             prepared {:6.2} us, per-call decode {:6.2} us",
            t1 * 1e6,
            t256 * 1e6,
            256.0 / t256,
            t_prep * 1e6,
            t_plain * 1e6
        );
    }
}
