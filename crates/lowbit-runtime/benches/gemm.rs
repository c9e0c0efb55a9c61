//! GEMM throughput per kernel tier, bit width and model shape. Throughput is ops = 2 * m * n * k.
//!
//! `cargo bench -p lowbit-runtime --bench gemm -- --quick` for a sanity pass; the reference tier is skipped at
//! 1024^3 (it would take seconds per iteration).
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lowbit_runtime::kernels::{self, Isa, OutputParams};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::{weight_code_range, Requant};
use std::time::Duration;

/// (m, k, n): MNIST MLP batch 1 and 256 (784 -> 64 -> 10), and a large square.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 784, 64),
    (256, 784, 64),
    (256, 64, 10),
    (1024, 1024, 1024),
];

fn weights(bits: u32, n: usize, k: usize) -> PackedWeights {
    let (lo, hi) = weight_code_range(bits).unwrap_or((-1, 1));
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
    PackedWeights::pack(bits, n, k, &codes).unwrap_or_else(|e| panic!("pack: {e}"))
}

fn bench_gemm(c: &mut Criterion) {
    for (op, requant) in [("gemm_acc", false), ("gemm_requant", true)] {
        for bits in [8u32, 4, 2, 1] {
            let mut g = c.benchmark_group(format!("{op}/int{bits}"));
            g.warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(1))
                .sample_size(10);
            for &(m, k, n) in SHAPES {
                let a: Vec<u8> = (0..m * k).map(|t| (t * 31 % 256) as u8).collect();
                let w = weights(bits, n, k);
                let bias = vec![17i32; n];
                let rq = [Requant::from_real(0.0007).unwrap_or(Requant {
                    multiplier: 1 << 30,
                    shift: 10,
                })];
                let p = OutputParams {
                    bias: &bias,
                    requant: &rq,
                    zero_point: 3,
                    qmin: 0,
                    qmax: 255,
                };
                let mut acc = vec![0i32; m * n];
                let mut out = vec![0u8; m * n];
                g.throughput(Throughput::Elements((2 * m * n * k) as u64));
                for isa in Isa::available() {
                    if isa == Isa::Reference && m * n * k > 50_000_000 {
                        continue;
                    }
                    let id = BenchmarkId::new(isa.name(), format!("{m}x{k}x{n}"));
                    g.bench_with_input(id, &(), |b, _| {
                        b.iter(|| {
                            if requant {
                                kernels::gemm_requant_with(
                                    isa,
                                    black_box(&a),
                                    m,
                                    k,
                                    &w,
                                    &p,
                                    &mut out,
                                )
                            } else {
                                kernels::gemm_acc_with(
                                    isa,
                                    black_box(&a),
                                    m,
                                    k,
                                    &w,
                                    &bias,
                                    &mut acc,
                                )
                            }
                        })
                    });
                }
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
