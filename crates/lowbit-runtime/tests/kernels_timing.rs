//! Quick throughput probe (ignored by default): `cargo test -p lowbit-runtime --test kernels_timing -- --ignored
//! --nocapture`. Reports GOPS per wall second and per CPU second; the latter is what a core delivers when the
//! machine is shared (the development box runs ~9 runnable jobs on 2 cores, so wall numbers understate).
use lowbit_runtime::kernels::{self, Isa};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::weight_code_range;
use lowbit_runtime::testutil::process_cpu_secs;
use std::time::Instant;

fn probe(isa: Isa, bits: u32, m: usize, k: usize, n: usize, threads: usize) {
    let (lo, hi) = weight_code_range(bits).unwrap();
    let span = (hi - lo + 1) as usize;
    let codes: Vec<i8> = (0..n * k)
        .map(|t| {
            let q = lo + ((t * 7919 + 13) % span) as i32;
            if bits == 1 && q == 0 {
                1
            } else {
                q as i8
            }
        })
        .collect();
    let w = PackedWeights::pack(bits, n, k, &codes).unwrap();
    let a: Vec<u8> = (0..m * k).map(|t| (t * 31 % 256) as u8).collect();
    let bias = vec![1i32; n];
    let mut out = vec![0i32; m * n];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        kernels::gemm_acc_with(isa, &a, m, k, &w, &bias, &mut out).unwrap();
        let ops = 2.0 * (m * n * k) as f64;
        let iters = ((2e10 / ops) as usize).clamp(1, 100_000);
        let (t0, c0) = (Instant::now(), process_cpu_secs());
        for _ in 0..iters {
            kernels::gemm_acc_with(isa, std::hint::black_box(&a), m, k, &w, &bias, &mut out).unwrap();
        }
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), process_cpu_secs() - c0);
        println!(
            "{:>10} int{bits} {m}x{k}x{n} threads {threads}: {:7.1} GOPS wall, {:7.1} GOPS per CPU-second",
            isa.name(),
            ops * iters as f64 / wall / 1e9,
            ops * iters as f64 / cpu.max(1e-9) / 1e9
        );
    });
}

#[test]
#[ignore]
fn report_gemm_throughput() {
    for isa in Isa::available()
        .into_iter()
        .filter(|i| *i != Isa::Reference)
    {
        for bits in [8, 4, 2, 1] {
            probe(isa, bits, 256, 784, 64, 1);
        }
        probe(isa, 8, 1, 784, 64, 1);
        probe(isa, 8, 256, 64, 10, 1);
        probe(isa, 8, 256, 784, 64, 2);
        probe(isa, 8, 1024, 1024, 1024, 2);
    }
}
