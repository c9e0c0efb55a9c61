//! Sub-byte (4/2/1-bit) prepacked weights: the in-register SIMD expansion of the panel layout equals the
//! normative reference bit for bit, over loop tails of every chunk size (16, 32 and 8 codes for 4, 2 and 1 bit),
//! row groups of 4, ragged 8-column panels and extreme codes, activations and zero points.
use lowbit_runtime::kernels::{self, reference, Isa, OutputParams, PrepackedWeights};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::{weight_code_range, Requant};
use lowbit_runtime::testutil::Rng;
use proptest::prelude::*;

/// K around every chunk size (8, 16, 32 codes) and quad (4), plus a prime and the MLP's 784.
const KS: &[usize] = &[
    1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 97, 255, 257, 784,
];
/// M around the 4-row group: 1 (batch-1 path) to 9, and larger ragged counts.
const MS: &[usize] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 31];
/// N around the 8-column panel, and the MLP's 64 and 10.
const NS: &[usize] = &[1, 2, 3, 7, 8, 9, 10, 15, 16, 17, 64];

struct Case {
    a: Vec<u8>,
    w: PackedWeights,
    bias: Vec<i32>,
    requant: Vec<Requant>,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
}

fn make_case(bits: u32, seed: u64, m: usize, k: usize, n: usize) -> Case {
    let mut rng = Rng(seed);
    let a_mode = rng.range(0, 3);
    let a: Vec<u8> = (0..m * k)
        .map(|_| match a_mode {
            0 => 255,
            1 => [0u8, 255][rng.range(0, 1) as usize],
            _ => rng.range(0, 255) as u8,
        })
        .collect();
    let (lo, hi) = weight_code_range(bits).unwrap();
    let w_mode = rng.range(0, 3);
    let codes: Vec<i8> = (0..n * k)
        .map(|_| {
            let q = match w_mode {
                0 => lo,
                1 => [lo, hi][rng.range(0, 1) as usize],
                _ => rng.range(lo as i64, hi as i64) as i32,
            };
            if bits == 1 && q == 0 {
                -1
            } else {
                q as i8
            }
        })
        .collect();
    let w = PackedWeights::pack(bits, n, k, &codes).unwrap();
    let bias: Vec<i32> = (0..n)
        .map(|_| match rng.range(0, 5) {
            0 => i32::MAX,
            1 => i32::MIN,
            _ => rng.range(-(1 << 20), 1 << 20) as i32,
        })
        .collect();
    let nrq = if rng.range(0, 1) == 0 { 1 } else { n };
    let requant: Vec<Requant> = (0..nrq)
        .map(|_| Requant {
            multiplier: rng.range(1 << 30, (1i64 << 31) - 1) as i32,
            shift: rng.range(-30, 31) as i32,
        })
        .collect();
    let zero_point = [0, 255, rng.range(0, 255) as i32][rng.range(0, 2) as usize];
    let (qmin, qmax) = [(0, 255), (zero_point, 255)][rng.range(0, 1) as usize];
    Case {
        a,
        w,
        bias,
        requant,
        zero_point,
        qmin,
        qmax,
    }
}

fn check(bits: u32, seed: u64, m: usize, k: usize, n: usize) {
    let c = make_case(bits, seed, m, k, n);
    let p = OutputParams {
        bias: &c.bias,
        requant: &c.requant,
        zero_point: c.zero_point,
        qmin: c.qmin,
        qmax: c.qmax,
    };
    let mut want_acc = vec![0i32; m * n];
    reference::gemm_u8i8_i32(&c.a, m, k, &c.w, &c.bias, &mut want_acc);
    let mut want = vec![0u8; m * n];
    reference::gemm_u8i8_u8(&c.a, m, k, &c.w, &p, &mut want);
    for isa in Isa::available() {
        let pw = PrepackedWeights::with_isa(isa, c.w.clone()).unwrap();
        let mut got_acc = vec![7i32; m * n];
        kernels::gemm_acc_prepacked(&c.a, m, k, &pw, &c.bias, &mut got_acc).unwrap();
        for (idx, (e, g)) in want_acc.iter().zip(&got_acc).enumerate() {
            assert_eq!(
                e,
                g,
                "{} sub-byte {bits}-bit acc (panelized {}): index {idx} (row {}, col {}) expected {e} got {g}, \
                 m/k/n = {m}/{k}/{n}, seed {seed}",
                isa.name(),
                pw.is_panelized(),
                idx / n,
                idx % n
            );
        }
        let mut got = vec![7u8; m * n];
        kernels::gemm_requant_prepacked(&c.a, m, k, &pw, &p, &mut got).unwrap();
        for (idx, (e, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                e, g,
                "{} sub-byte {bits}-bit requant: index {idx} expected {e} got {g}, m/k/n = {m}/{k}/{n}, \
                 zero point {}, clamp [{}, {}], seed {seed}",
                isa.name(), c.zero_point, c.qmin, c.qmax
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn prepacked_sub_byte_kernels_match_reference_over_tails_and_extremes(
        seed: u64,
        bits in prop::sample::select(vec![1u32, 2, 3, 4]),
        m in prop::sample::select(MS.to_vec()),
        k in prop::sample::select(KS.to_vec()),
        n in prop::sample::select(NS.to_vec()),
    ) {
        check(bits, seed, m, k, n);
    }
}

#[test]
fn sub_byte_prepacked_batches_that_take_the_rayon_path_match_reference() {
    // 64 x 784 x 64 = 3.2M MACs: above the kernels' split threshold, with 4-row groups per block.
    for (bits, seed) in [(4u32, 21u64), (2, 22), (1, 23)] {
        check(bits, seed, 64, 784, 64);
    }
}

#[test]
fn sub_byte_panels_stay_packed_at_their_width() {
    // The prepared layout may add padding to whole 8-column panels and chunks, never an int8 copy.
    for (bits, k, n) in [
        (4u32, 784usize, 64usize),
        (2, 784, 64),
        (1, 784, 64),
        (4, 33, 9),
    ] {
        let c = make_case(bits, 5, 1, k, n);
        for isa in Isa::available() {
            let pw = PrepackedWeights::with_isa(isa, c.w.clone()).unwrap();
            if !pw.is_panelized() {
                assert_eq!(pw.prepared_bytes(), 0, "{}", isa.name());
                continue;
            }
            // Storage bits 4, 2, 1 for 3/4-, 2- and 1-bit codes; chunks of 4 quads' worth of one byte each.
            let storage_bits = if bits >= 3 { 4 } else { bits as usize };
            let chunk_codes = 4 * 8 / storage_bits;
            let padded =
                n.div_ceil(8) * 8 * k.div_ceil(chunk_codes) * chunk_codes * storage_bits / 8;
            assert_eq!(
                pw.prepared_bytes(),
                padded,
                "{} {bits}-bit {n}x{k}: packed {} bytes",
                isa.name(),
                c.w.data.len()
            );
            assert!(
                k < 64 || pw.prepared_bytes() <= c.w.data.len() * 5 / 4,
                "{} {bits}-bit {n}x{k}: prepared {} bytes is not the packed size ({})",
                isa.name(),
                pw.prepared_bytes(),
                c.w.data.len()
            );
        }
    }
}
