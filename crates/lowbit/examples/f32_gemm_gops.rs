//! f32 GEMM throughput of the training library's `sgemm` at 1024^3 (the issue-4 comparison with OpenBLAS through
//! numpy, `bench/peers/torch_int_mm.py`): best wall time over a few repeats, with rayon's threads (2 here).
//!
//! `cargo run --release -p lowbit --example f32_gemm_gops [N]`
use lowbit::nn::gemm::{sgemm, MatRef};
use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    // Deterministic values in [-1, 1): the speed does not depend on them.
    let fill = |seed: usize| -> Vec<f32> {
        (0..n * n)
            .map(|i| {
                ((i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) % 2000) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    };
    let (a, b) = (fill(1), fill(2));
    let mut c = vec![0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..10 {
        let t0 = Instant::now();
        sgemm(
            1.0,
            MatRef::row_major(&a, n, n),
            MatRef::row_major(&b, n, n),
            0.0,
            &mut c,
            n,
        );
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let gops = 2.0 * (n as f64).powi(3) / best / 1e9;
    println!(
        "{{\"peer\": \"lowbit sgemm f32\", \"threads\": {}, \"shape\": [{n}, {n}, {n}], \"gops\": {gops:.1}, \"ms\": {:.3}}}",
        rayon::current_num_threads(),
        best * 1e3
    );
    std::hint::black_box(&c);
}
