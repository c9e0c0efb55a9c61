//! Every available kernel tier equals the normative reference bit for bit (no tolerance).
use lowbit_runtime::kernels::{self, reference, Isa, OutputParams, PrepackedWeights};
use lowbit_runtime::pack::{row_bytes, PackedWeights, Packing};
use lowbit_runtime::qparams::{weight_code_range, Requant};
use proptest::prelude::*;

/// splitmix64: tiny, seeded, good enough to spread test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

/// K values that hit the 16-wide widening loop, the 256-deep K block, and their tails.
const KS: &[usize] = &[
    1, 2, 3, 4, 5, 7, 8, 9, 13, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 255, 256, 257, 263, 784,
];
/// M values: 1..=9 and around the micro-tile (6) multiples and powers of two.
const MS: &[usize] = &[
    1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 16, 17, 31, 32, 33, 64,
];
/// N values: 1..=20 and a full MLP layer.
const NS: &[usize] = &[
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 31, 32, 33, 64,
];

struct Case {
    /// Every adjacent K pair of the weights is safe for `vpmaddubsw`, so AVX2 must take the pair kernels.
    pairs_safe: bool,
    m: usize,
    k: usize,
    n: usize,
    a: Vec<u8>,
    w: PackedWeights,
    bias: Vec<i32>,
    requant: Vec<Requant>,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
}

fn make_case(bits: u32, seed: u64, mi: usize, ki: usize, ni: usize) -> Case {
    let mut rng = Rng(seed);
    let (m, k, n) = (MS[mi % MS.len()], KS[ki % KS.len()], NS[ni % NS.len()]);
    // Cap the largest shapes so 1000 cases stay fast; 64 x 784 x 64 still occurs.
    let a_mode = rng.below(4);
    let a: Vec<u8> = (0..m * k)
        .map(|_| match a_mode {
            0 => 255,
            1 => [0u8, 255][rng.below(2) as usize],
            _ => match rng.below(4) {
                0 => 0,
                1 => 255,
                _ => rng.below(256) as u8,
            },
        })
        .collect();
    let (lo, hi) = weight_code_range(bits).unwrap();
    // Modes 4 and 5 (int8) are what trained layers look like to the pair kernels: every pair safe (7-bit
    // magnitudes), or bell-shaped codes (std about 36), which only a re-pairing of K makes safe.
    let w_mode = rng.below(6);
    let codes: Vec<i8> = (0..n * k)
        .map(|_| {
            let q = match w_mode {
                0 => hi,
                1 => [lo, hi][rng.below(2) as usize],
                4 if bits == 8 => rng.range(-64, 64) as i32,
                5 if bits == 8 => {
                    ((0..4).map(|_| rng.below(65536) as i64).sum::<i64>() - 2 * 65536) as i32 * 62
                        / 65536
                }
                _ => rng.range(lo as i64, hi as i64) as i32,
            };
            if bits == 1 && q == 0 {
                1
            } else {
                q as i8
            }
        })
        .collect();
    let w = PackedWeights::pack(bits, n, k, &codes).unwrap();
    let bias: Vec<i32> = (0..n)
        .map(|_| match rng.below(8) {
            0 => i32::MAX,
            1 => i32::MIN,
            2 => 0,
            _ => rng.range(-(1 << 24), 1 << 24) as i32,
        })
        .collect();
    let nrq = if rng.below(2) == 0 { 1 } else { n };
    let requant: Vec<Requant> = (0..nrq)
        .map(|_| Requant {
            multiplier: rng.range(1 << 30, (1i64 << 31) - 1) as i32,
            // Total shift 31 + shift spans the whole legal 1..=62.
            shift: rng.range(-30, 31) as i32,
        })
        .collect();
    let zero_point = match rng.below(3) {
        0 => 0,
        1 => 255,
        _ => rng.range(0, 255) as i32,
    };
    let (qmin, qmax) = match rng.below(3) {
        0 => (0, 255),
        1 => (zero_point, 255),
        _ => {
            let x = rng.range(0, 255) as i32;
            let y = rng.range(0, 255) as i32;
            (x.min(y), x.max(y))
        }
    };
    Case {
        pairs_safe: bits == 8 && w_mode == 4,
        m,
        k,
        n,
        a,
        w,
        bias,
        requant,
        zero_point,
        qmin,
        qmax,
    }
}

fn check_acc(bits: u32, seed: u64, mi: usize, ki: usize, ni: usize) {
    let c = make_case(bits, seed, mi, ki, ni);
    let mut want = vec![0i32; c.m * c.n];
    reference::gemm_u8i8_i32(&c.a, c.m, c.k, &c.w, &c.bias, &mut want);
    for isa in Isa::available() {
        let mut got = vec![7i32; c.m * c.n];
        kernels::gemm_acc_with(isa, &c.a, c.m, c.k, &c.w, &c.bias, &mut got).unwrap();
        for (idx, (e, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                e, g,
                "{} {bits}-bit acc: index {idx} (row {}, col {}) expected {e} got {g}, m/k/n = {}/{}/{}, seed {seed}",
                isa.name(), idx / c.n, idx % c.n, c.m, c.k, c.n
            );
        }
    }
}

fn check_requant(bits: u32, seed: u64, mi: usize, ki: usize, ni: usize) {
    let c = make_case(bits, seed, mi, ki, ni);
    let p = OutputParams {
        bias: &c.bias,
        requant: &c.requant,
        zero_point: c.zero_point,
        qmin: c.qmin,
        qmax: c.qmax,
    };
    let mut want = vec![0u8; c.m * c.n];
    reference::gemm_u8i8_u8(&c.a, c.m, c.k, &c.w, &p, &mut want);
    for isa in Isa::available() {
        let mut got = vec![7u8; c.m * c.n];
        kernels::gemm_requant_with(isa, &c.a, c.m, c.k, &c.w, &p, &mut got).unwrap();
        for (idx, (e, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                e, g,
                "{} {bits}-bit requant: index {idx} expected {e} got {g}, m/k/n = {}/{}/{}, requant {:?}, zero point {}, \
                 clamp [{}, {}], seed {seed}",
                isa.name(), c.m, c.k, c.n, c.requant[if c.requant.len() == 1 { 0 } else { idx % c.n }],
                c.zero_point, c.qmin, c.qmax
            );
        }
    }
}

fn check_b1b1(seed: u64, mi: usize, ki: usize, ni: usize) {
    let c = make_case(1, seed, mi, ki, ni);
    let mut rng = Rng(seed ^ 0xA5A5);
    // Random bytes, padding bits included: kernels must ignore activation bits past k.
    let a_bits: Vec<u8> = (0..c.m * row_bytes(Packing::B1x8, c.k))
        .map(|_| rng.below(256) as u8)
        .collect();
    let mut want = vec![0i32; c.m * c.n];
    reference::gemm_b1b1_i32(&a_bits, c.m, c.k, &c.w, &c.bias, &mut want);
    for isa in Isa::available() {
        let mut got = vec![7i32; c.m * c.n];
        kernels::gemm_acc_b1b1_with(isa, &a_bits, c.m, c.k, &c.w, &c.bias, &mut got).unwrap();
        for (idx, (e, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                e,
                g,
                "{} b1b1: index {idx} expected {e} got {g}, m/k/n = {}/{}/{}, seed {seed}",
                isa.name(),
                c.m,
                c.k,
                c.n
            );
        }
    }
}

/// Prepacked weights (int8 panels on AVX2, packed bytes otherwise) on every tier equal the reference, for the
/// accumulators and the requantized outputs; `m = 1` takes the GEMV path.
fn check_prepacked(bits: u32, seed: u64, mi: usize, ki: usize, ni: usize) {
    let c = make_case(bits, seed, mi, ki, ni);
    let p = OutputParams {
        bias: &c.bias,
        requant: &c.requant,
        zero_point: c.zero_point,
        qmin: c.qmin,
        qmax: c.qmax,
    };
    let mut want_acc = vec![0i32; c.m * c.n];
    reference::gemm_u8i8_i32(&c.a, c.m, c.k, &c.w, &c.bias, &mut want_acc);
    let mut want = vec![0u8; c.m * c.n];
    reference::gemm_u8i8_u8(&c.a, c.m, c.k, &c.w, &p, &mut want);
    for isa in Isa::available() {
        let pw = PrepackedWeights::with_isa(isa, c.w.clone()).unwrap();
        assert_eq!(pw.isa(), isa);
        if isa == Isa::Avx2 && c.pairs_safe && c.k > 0 {
            assert!(
                pw.path().contains("pairs"),
                "7-bit magnitudes took {}",
                pw.path()
            );
        }
        assert_eq!(pw.weights(), &c.w);
        let mut got_acc = vec![7i32; c.m * c.n];
        kernels::gemm_acc_prepacked(&c.a, c.m, c.k, &pw, &c.bias, &mut got_acc).unwrap();
        for (idx, (e, g)) in want_acc.iter().zip(&got_acc).enumerate() {
            assert_eq!(
                e, g,
                "{} prepacked {bits}-bit acc (panelized {}): index {idx} (row {}, col {}) expected {e} got {g}, \
                 m/k/n = {}/{}/{}, seed {seed}",
                isa.name(), pw.is_panelized(), idx / c.n, idx % c.n, c.m, c.k, c.n
            );
        }
        let mut got = vec![7u8; c.m * c.n];
        kernels::gemm_requant_prepacked(&c.a, c.m, c.k, &pw, &p, &mut got).unwrap();
        for (idx, (e, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                e, g,
                "{} prepacked {bits}-bit requant: index {idx} expected {e} got {g}, m/k/n = {}/{}/{}, requant {:?}, \
                 zero point {}, clamp [{}, {}], seed {seed}",
                isa.name(), c.m, c.k, c.n, c.requant[if c.requant.len() == 1 { 0 } else { idx % c.n }],
                c.zero_point, c.qmin, c.qmax
            );
        }
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn int8_accumulators_match_reference_on_every_tier(seed: u64, mi in 0usize..64, ki in 0usize..64, ni in 0usize..64) {
        check_acc(8, seed, mi, ki, ni);
    }

    #[test]
    fn int4_accumulators_match_reference_on_every_tier(seed: u64, mi in 0usize..64, ki in 0usize..64, ni in 0usize..64) {
        check_acc(4, seed, mi, ki, ni);
    }

    #[test]
    fn int2_accumulators_match_reference_on_every_tier(seed: u64, mi in 0usize..64, ki in 0usize..64, ni in 0usize..64) {
        check_acc(2, seed, mi, ki, ni);
    }

    #[test]
    fn binary_accumulators_match_reference_on_every_tier(seed: u64, mi in 0usize..64, ki in 0usize..64, ni in 0usize..64) {
        check_acc(1, seed, mi, ki, ni);
    }

    #[test]
    fn odd_bit_widths_match_reference_on_every_tier(seed: u64, bits in prop::sample::select(vec![3u32, 5, 6, 7]), mi in 0usize..64, ki in 0usize..64, ni in 0usize..64) {
        check_acc(bits, seed, mi, ki, ni);
    }

    #[test]
    fn int8_requantized_outputs_match_reference_on_every_tier(seed: u64, mi in 0usize..64, ki in 0usize..64, ni in 0usize..64) {
        check_requant(8, seed, mi, ki, ni);
    }

    #[test]
    fn int4_requantized_outputs_match_reference_on_every_tier(seed: u64, mi in 0usize..64, ki in 0usize..64, ni in 0usize..64) {
        check_requant(4, seed, mi, ki, ni);
    }

    #[test]
    fn int2_requantized_outputs_match_reference_on_every_tier(seed: u64, mi in 0usize..64, ki in 0usize..64, ni in 0usize..64) {
        check_requant(2, seed, mi, ki, ni);
    }

    #[test]
    fn binary_requantized_outputs_match_reference_on_every_tier(seed: u64, mi in 0usize..64, ki in 0usize..64, ni in 0usize..64) {
        check_requant(1, seed, mi, ki, ni);
    }

    #[test]
    fn prepacked_int8_matches_reference_on_every_tier(seed: u64, mi in 0usize..64, ki in 0usize..64, ni in 0usize..64) {
        check_prepacked(8, seed, mi, ki, ni);
    }

    #[test]
    fn prepacked_int8_batch_one_gemv_matches_reference_on_every_tier(seed: u64, ki in 0usize..64, ni in 0usize..64) {
        // MS[0] == 1: the GEMV path, over every K tail and N from 1 to 64 (1 to 4 panels, ragged last panel).
        check_prepacked(8, seed, 0, ki, ni);
    }

    #[test]
    fn prepacked_sub_byte_weights_match_reference_on_every_tier(seed: u64, bits in prop::sample::select(vec![1u32, 2, 3, 4, 5, 7]), mi in 0usize..64, ki in 0usize..64, ni in 0usize..64) {
        check_prepacked(bits, seed, mi, ki, ni);
    }

    #[test]
    fn binary_activation_popcount_matches_reference_on_every_tier(seed: u64, mi in 0usize..64, ki in 0usize..64, ni in 0usize..64) {
        check_b1b1(seed, mi, ki, ni);
    }
}

#[test]
fn large_parallel_shapes_match_reference() {
    // Big enough to take the rayon path (m*n*k >= 2M) with a ragged last row block.
    for (bits, seed) in [(8u32, 1u64), (4, 2), (2, 3), (1, 4)] {
        let mut rng = Rng(seed);
        let (m, k, n) = (133, 300, 70);
        let a: Vec<u8> = (0..m * k).map(|_| rng.below(256) as u8).collect();
        let (lo, hi) = weight_code_range(bits).unwrap();
        let codes: Vec<i8> = (0..n * k)
            .map(|_| {
                let q = rng.range(lo as i64, hi as i64) as i8;
                if bits == 1 && q == 0 {
                    -1
                } else {
                    q
                }
            })
            .collect();
        let w = PackedWeights::pack(bits, n, k, &codes).unwrap();
        let bias: Vec<i32> = (0..n).map(|_| rng.range(-1000, 1000) as i32).collect();
        let mut want = vec![0i32; m * n];
        reference::gemm_u8i8_i32(&a, m, k, &w, &bias, &mut want);
        for isa in Isa::available() {
            let mut got = vec![0i32; m * n];
            kernels::gemm_acc_with(isa, &a, m, k, &w, &bias, &mut got).unwrap();
            assert!(
                want == got,
                "{} {bits}-bit {m}x{k}x{n} differs from reference, seed {seed}",
                isa.name()
            );
        }
    }
}

#[test]
fn vnni_gemm_matches_reference_when_k_is_not_a_multiple_of_four() {
    if !Isa::Avx512Vnni.is_available() {
        eprintln!("skipping: avx512vnni needs a CPU with avx512f/avx512bw/avx512vnni");
        return;
    }
    for (seed, ki) in [(11u64, 2usize), (12, 4), (13, 12), (14, 23)] {
        let c = make_case(8, seed, 9, ki, 16);
        let mut want = vec![0i32; c.m * c.n];
        reference::gemm_u8i8_i32(&c.a, c.m, c.k, &c.w, &c.bias, &mut want);
        let mut got = vec![0i32; c.m * c.n];
        kernels::gemm_acc_with(Isa::Avx512Vnni, &c.a, c.m, c.k, &c.w, &c.bias, &mut got).unwrap();
        assert_eq!(
            want, got,
            "vnni m/k/n = {}/{}/{}, seed {seed}",
            c.m, c.k, c.n
        );
    }
}

#[test]
fn overflow_bound_constant_matches_its_derivation() {
    assert_eq!(kernels::MAX_K, 66311);
    assert!(kernels::acc_cannot_overflow(kernels::MAX_K, 0));
    assert!(!kernels::acc_cannot_overflow(kernels::MAX_K + 1, 0));
    assert!(!kernels::acc_cannot_overflow(kernels::MAX_K, 100_000));
}

#[test]
fn isa_cap_falls_back_to_the_best_available_tier_at_or_below_it() {
    assert_eq!(Isa::Reference.capped(), Isa::Reference);
    let avail = Isa::available();
    assert_eq!(avail[0], Isa::Reference);
    for isa in Isa::ALL {
        let got = isa.capped();
        assert!(
            got.is_available() && got.rank() <= isa.rank(),
            "{isa:?} capped to {got:?}"
        );
        assert_eq!(Isa::from_name(isa.name()), Some(isa));
    }
    assert!(Isa::from_name("sse9").is_none());
    assert!(Isa::ALL.iter().any(|i| i.name() == kernels::active_isa()));
    if cfg!(target_arch = "x86_64") && Isa::Avx2.is_available() {
        assert_eq!(Isa::Neon.capped(), Isa::Avx2);
        if !Isa::Avx512Vnni.is_available() {
            assert_eq!(Isa::Avx512Vnni.capped(), Isa::Avx2);
        }
    }
}

#[test]
fn requantized_outputs_match_reference_at_extreme_zero_points_and_shifts() {
    // The public OutputParams accept any i32 zero point; the SIMD output stage must clamp exactly like the
    // reference's i64 arithmetic, including when zero point + requantized value would overflow i32.
    let mut rng = Rng(77);
    let (m, k, n) = (7, 33, 24);
    let a: Vec<u8> = (0..m * k).map(|_| rng.below(256) as u8).collect();
    let codes: Vec<i8> = (0..n * k).map(|_| rng.range(-127, 127) as i8).collect();
    let w = PackedWeights::pack(8, n, k, &codes).unwrap();
    let bias: Vec<i32> = (0..n)
        .map(|j| [i32::MAX, i32::MIN, 0, -1, 1][j % 5])
        .collect();
    for zero_point in [
        i32::MIN,
        i32::MIN + 255,
        -256,
        -1,
        0,
        128,
        255,
        256,
        i32::MAX - 255,
        i32::MAX,
    ] {
        for shift in [-30, -29, 0, 1, 30, 31] {
            let requant: Vec<Requant> = (0..n)
                .map(|j| Requant {
                    multiplier: if j % 2 == 0 { 1 << 30 } else { i32::MAX },
                    shift: if j % 3 == 0 { shift } else { -30 },
                })
                .collect();
            for (qmin, qmax) in [(0, 255), (0, 0), (255, 255), (3, 200)] {
                let p = OutputParams {
                    bias: &bias,
                    requant: &requant,
                    zero_point,
                    qmin,
                    qmax,
                };
                let mut want = vec![0u8; m * n];
                reference::gemm_u8i8_u8(&a, m, k, &w, &p, &mut want);
                for isa in Isa::available() {
                    let pw = PrepackedWeights::with_isa(isa, w.clone()).unwrap();
                    for mm in [1, m] {
                        let mut got = vec![7u8; mm * n];
                        kernels::gemm_requant_prepacked(&a[..mm * k], mm, k, &pw, &p, &mut got)
                            .unwrap();
                        assert_eq!(
                            &want[..mm * n], &got[..],
                            "{} m {mm}, zero point {zero_point}, shift {shift}, clamp [{qmin}, {qmax}]",
                            isa.name()
                        );
                        let mut got = vec![7u8; mm * n];
                        kernels::gemm_requant_with(isa, &a[..mm * k], mm, k, &w, &p, &mut got)
                            .unwrap();
                        assert_eq!(
                            &want[..mm * n],
                            &got[..],
                            "{} unprepacked m {mm}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn prepacked_large_shapes_match_reference_across_l2_row_blocks() {
    // 500 rows cross the 240-row L2 block twice and take the rayon split; k = 600 spans three K blocks.
    for (bits, seed) in [(8u32, 21u64), (4, 22)] {
        let mut rng = Rng(seed);
        let (m, k, n) = (500, 600, 40);
        let a: Vec<u8> = (0..m * k).map(|_| rng.below(256) as u8).collect();
        let (lo, hi) = weight_code_range(bits).unwrap();
        let codes: Vec<i8> = (0..n * k)
            .map(|_| rng.range(lo as i64, hi as i64) as i8)
            .collect();
        let w = PackedWeights::pack(bits, n, k, &codes).unwrap();
        let bias: Vec<i32> = (0..n).map(|_| rng.range(-1000, 1000) as i32).collect();
        let mut want = vec![0i32; m * n];
        reference::gemm_u8i8_i32(&a, m, k, &w, &bias, &mut want);
        for isa in Isa::available() {
            let pw = PrepackedWeights::with_isa(isa, w.clone()).unwrap();
            let mut got = vec![0i32; m * n];
            kernels::gemm_acc_prepacked(&a, m, k, &pw, &bias, &mut got).unwrap();
            assert!(
                want == got,
                "{} prepacked {bits}-bit {m}x{k}x{n} differs, seed {seed}",
                isa.name()
            );
            let mut got = vec![0i32; m * n];
            kernels::gemm_acc_with(isa, &a, m, k, &w, &bias, &mut got).unwrap();
            assert!(
                want == got,
                "{} {bits}-bit {m}x{k}x{n} differs, seed {seed}",
                isa.name()
            );
        }
    }
}

/// Bell-shaped int8 weights like trained ones (sum of four uniforms, std about 36 codes, extremes near +-124)
/// force a re-paired K order; rows cross the 240-row block and the rayon split, K crosses the 1024-position block
/// of the pair kernels, and activations at 255 would expose any pair that saturates.
#[test]
fn re_paired_int8_weights_match_reference_at_full_scale_activations() {
    for (seed, m, k, n) in [
        (31u64, 500usize, 600usize, 40usize),
        (32, 20, 1100, 70),
        (33, 1, 784, 64),
    ] {
        let mut rng = Rng(seed);
        let a: Vec<u8> = (0..m * k)
            .map(|_| {
                if rng.below(2) == 0 {
                    255
                } else {
                    rng.below(256) as u8
                }
            })
            .collect();
        let codes: Vec<i8> = (0..n * k)
            .map(|_| {
                ((0..4).map(|_| rng.below(65536) as i64).sum::<i64>() - 2 * 65536) * 62 / 65536
            })
            .map(|q| q as i8)
            .collect();
        let w = PackedWeights::pack(8, n, k, &codes).unwrap();
        let bias: Vec<i32> = (0..n).map(|_| rng.range(-1000, 1000) as i32).collect();
        let mut want = vec![0i32; m * n];
        reference::gemm_u8i8_i32(&a, m, k, &w, &bias, &mut want);
        for isa in Isa::available() {
            let pw = PrepackedWeights::with_isa(isa, w.clone()).unwrap();
            if isa == Isa::Avx2 {
                assert!(
                    pw.path().contains("re-paired"),
                    "{m}x{k}x{n} took {}",
                    pw.path()
                );
            }
            let mut got = vec![0i32; m * n];
            kernels::gemm_acc_prepacked(&a, m, k, &pw, &bias, &mut got).unwrap();
            assert!(
                want == got,
                "{} ({}) {m}x{k}x{n} differs, seed {seed}",
                isa.name(),
                pw.path()
            );
        }
    }
}

#[test]
fn prepacked_entry_points_reject_mismatched_shapes() {
    let w = PackedWeights::pack(8, 3, 5, &[1i8; 15]).unwrap();
    let pw = PrepackedWeights::new(w).unwrap();
    let mut out = vec![0i32; 6];
    assert!(matches!(
        kernels::gemm_acc_prepacked(&[0u8; 10], 2, 4, &pw, &[0; 3], &mut out),
        Err(lowbit_runtime::QuantError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        kernels::gemm_acc_prepacked(&[0u8; 10], 2, 5, &pw, &[0; 2], &mut out),
        Err(lowbit_runtime::QuantError::ShapeMismatch { .. })
    ));
    assert!(kernels::gemm_acc_prepacked(&[0u8; 10], 2, 5, &pw, &[0; 3], &mut out).is_ok());
    let bad = PackedWeights {
        bits: 8,
        packing: Packing::I8,
        rows: 3,
        cols: 5,
        data: vec![0; 14],
    };
    assert!(matches!(
        PrepackedWeights::new(bad),
        Err(lowbit_runtime::QuantError::ShapeMismatch { .. })
    ));
}

/// The kernels' own rayon split (row blocks of prepared weights, a ragged last block) inside pools of several sizes:
/// accumulators and requantized outputs equal the reference for every packing and tier.
#[test]
fn prepared_split_matches_reference_at_several_thread_counts() {
    // 301 x 520 x 48 = 7.5M MACs, past the split threshold: 21-row blocks at 2 threads, a ragged last one.
    let (m, k, n) = (301usize, 520usize, 48usize);
    for threads in [2usize, 3, 5] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for bits in [8u32, 4, 2, 1] {
            let mut rng = Rng(threads as u64 * 100 + bits as u64);
            let a: Vec<u8> = (0..m * k).map(|_| rng.below(256) as u8).collect();
            let (lo, hi) = weight_code_range(bits).unwrap();
            let codes: Vec<i8> = (0..n * k)
                .map(|_| match bits {
                    1 => [-1i8, 1][rng.below(2) as usize],
                    _ => rng.range(lo as i64, hi as i64) as i8,
                })
                .collect();
            let w = PackedWeights::pack(bits, n, k, &codes).unwrap();
            let bias: Vec<i32> = (0..n).map(|_| rng.range(-1000, 1000) as i32).collect();
            let requant: Vec<Requant> = (0..n)
                .map(|j| Requant::from_real(0.0004 * (j as f64 + 1.0)).unwrap())
                .collect();
            let p = OutputParams {
                bias: &bias,
                requant: &requant,
                zero_point: 3,
                qmin: 3,
                qmax: 255,
            };
            let mut want_acc = vec![0i32; m * n];
            reference::gemm_u8i8_i32(&a, m, k, &w, &bias, &mut want_acc);
            let mut want = vec![0u8; m * n];
            reference::gemm_u8i8_u8(&a, m, k, &w, &p, &mut want);
            for isa in Isa::available() {
                let pw = PrepackedWeights::with_isa(isa, w.clone()).unwrap();
                let (mut acc, mut out) = (vec![0i32; m * n], vec![0u8; m * n]);
                pool.install(|| {
                    kernels::gemm_acc_prepacked(&a, m, k, &pw, &bias, &mut acc).unwrap();
                    kernels::gemm_requant_prepacked(&a, m, k, &pw, &p, &mut out).unwrap();
                });
                let what = format!("{} {bits}-bit, {threads} threads", isa.name());
                assert!(acc == want_acc, "{what}: accumulators differ");
                assert!(out == want, "{what}: requantized outputs differ");
            }
        }
    }
}
