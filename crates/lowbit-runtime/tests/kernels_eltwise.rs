//! Element-wise kernels (residual Add, Rescale, Lut): every available tier equals the scalar reference bit for bit,
//! the reference equals the formula written out here in i64, and the fixed-point parameters built from scales
//! approximate the real arithmetic within the bound their construction guarantees. Lengths cross the 32-code vector
//! step and its tail; codes, zero points, multipliers and shifts sit at their bounds.
use lowbit_runtime::kernels::eltwise::{
    add_u8, add_u8_with, lut_u8, lut_u8_in_place_with, lut_u8_with, reference, rescale_u8,
    rescale_u8_with, unary_table, AddQuant, RescaleQuant,
};
use lowbit_runtime::kernels::Isa;
use lowbit_runtime::qparams::{AddParams, QParams, Rescale};
use lowbit_runtime::testutil::{assert_same, Rng};
use lowbit_runtime::QuantError;
use proptest::prelude::*;

/// Lengths around the 32-code step: tails of every size, primes, and a few steps plus a tail.
fn length(rng: &mut Rng) -> usize {
    const LENS: &[usize] = &[
        1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 37, 63, 64, 65, 97, 127, 128, 129, 200, 1031,
    ];
    if rng.range(0, 3) == 0 {
        rng.range(1, 300) as usize
    } else {
        LENS[rng.range(0, LENS.len() as i64 - 1) as usize]
    }
}

/// Codes: uniform, all at 0 or 255, or only the two extremes.
fn codes(rng: &mut Rng, n: usize) -> Vec<u8> {
    match rng.range(0, 4) {
        0 => vec![0; n],
        1 => vec![255; n],
        2 => (0..n)
            .map(|_| [0u8, 255][rng.range(0, 1) as usize])
            .collect(),
        _ => rng.bytes(n),
    }
}

fn zero_point(rng: &mut Rng) -> i32 {
    [0, 255, 128, rng.range(0, 255) as i32][rng.range(0, 3) as usize]
}

fn multiplier(rng: &mut Rng) -> i32 {
    [0, 1, 16384, 32767, rng.range(0, 32767) as i32][rng.range(0, 4) as usize]
}

fn shift(rng: &mut Rng) -> u32 {
    [0, 1, 14, 15, 30, rng.range(0, 30) as u32][rng.range(0, 5) as usize]
}

/// `(qmin, qmax)`: full range, a fused ReLU at the output zero point, or a random clip.
fn range(rng: &mut Rng, zp_out: i32) -> (i32, i32) {
    match rng.range(0, 3) {
        0 => (0, 255),
        1 => (zp_out, 255),
        _ => {
            let a = rng.range(0, 255) as i32;
            let b = rng.range(0, 255) as i32;
            (a.min(b), a.max(b))
        }
    }
}

/// The module doc's formula in i64, independent of `qparams`.
fn rshift_round_i64(v: i64, n: u32) -> i64 {
    if n == 0 {
        v
    } else {
        (v + (1 << (n - 1))) >> n
    }
}

fn add_quant(rng: &mut Rng) -> AddQuant {
    let zero_point_out = zero_point(rng);
    let (qmin, qmax) = range(rng, zero_point_out);
    AddQuant {
        params: AddParams {
            multiplier_a: multiplier(rng),
            multiplier_b: multiplier(rng),
            shift: shift(rng),
        },
        zero_point_a: zero_point(rng),
        zero_point_b: zero_point(rng),
        zero_point_out,
        qmin,
        qmax,
    }
}

fn check_add(seed: u64) {
    let mut rng = Rng(seed);
    let n = length(&mut rng);
    let (a, b) = (codes(&mut rng, n), codes(&mut rng, n));
    let q = add_quant(&mut rng);
    let p = q.params;
    let formula: Vec<u8> = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| {
            let v = (x as i64 - q.zero_point_a as i64) * p.multiplier_a as i64
                + (y as i64 - q.zero_point_b as i64) * p.multiplier_b as i64;
            (q.zero_point_out as i64 + rshift_round_i64(v, p.shift))
                .clamp(q.qmin as i64, q.qmax as i64) as u8
        })
        .collect();
    let mut expected = vec![0u8; n];
    reference::add_u8(&a, &b, &q, &mut expected);
    assert_same(
        &formula,
        &expected,
        format_args!("reference add, n {n}, {q:?}, seed {seed}"),
    );
    for isa in Isa::available() {
        let mut got = vec![0u8; n];
        add_u8_with(isa, &a, &b, &q, &mut got).expect("valid add");
        assert_same(
            &expected,
            &got,
            format_args!("{isa:?} add, n {n}, {q:?}, seed {seed}"),
        );
    }
}

fn check_rescale(seed: u64) {
    let mut rng = Rng(seed);
    let n = length(&mut rng);
    let x = codes(&mut rng, n);
    let zero_point_out = zero_point(&mut rng);
    let (qmin, qmax) = range(&mut rng, zero_point_out);
    let q = RescaleQuant {
        params: Rescale {
            multiplier: multiplier(&mut rng),
            shift: shift(&mut rng),
        },
        zero_point_in: zero_point(&mut rng),
        zero_point_out,
        qmin,
        qmax,
    };
    let formula: Vec<u8> = x
        .iter()
        .map(|&v| {
            let d = (v as i64 - q.zero_point_in as i64) * q.params.multiplier as i64;
            (q.zero_point_out as i64 + rshift_round_i64(d, q.params.shift))
                .clamp(q.qmin as i64, q.qmax as i64) as u8
        })
        .collect();
    let mut expected = vec![0u8; n];
    reference::rescale_u8(&x, &q, &mut expected);
    assert_same(
        &formula,
        &expected,
        format_args!("reference rescale, n {n}, {q:?}, seed {seed}"),
    );
    for isa in Isa::available() {
        let mut got = vec![0u8; n];
        rescale_u8_with(isa, &x, &q, &mut got).expect("valid rescale");
        assert_same(
            &expected,
            &got,
            format_args!("{isa:?} rescale, n {n}, {q:?}, seed {seed}"),
        );
    }
}

fn check_lut(seed: u64) {
    let mut rng = Rng(seed);
    let n = length(&mut rng);
    let x = codes(&mut rng, n);
    let mut table = [0u8; 256];
    table.copy_from_slice(&rng.bytes(256));
    let expected: Vec<u8> = x.iter().map(|&v| table[v as usize]).collect();
    let mut reference_out = vec![0u8; n];
    reference::lut_u8(&x, &table, &mut reference_out);
    assert_same(
        &expected,
        &reference_out,
        format_args!("reference lut, n {n}, seed {seed}"),
    );
    for isa in Isa::available() {
        let mut got = vec![0u8; n];
        lut_u8_with(isa, &x, &table, &mut got).expect("equal lengths");
        assert_same(
            &expected,
            &got,
            format_args!("{isa:?} lut, n {n}, seed {seed}"),
        );
        let mut in_place = x.clone();
        lut_u8_in_place_with(isa, &mut in_place, &table);
        assert_same(
            &expected,
            &in_place,
            format_args!("{isa:?} lut in place, n {n}, seed {seed}"),
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn add_equals_reference_on_every_tier(seed in any::<u64>()) {
        check_add(seed);
    }

    #[test]
    fn rescale_equals_reference_on_every_tier(seed in any::<u64>()) {
        check_rescale(seed);
    }

    #[test]
    fn lut_equals_reference_on_every_tier(seed in any::<u64>()) {
        check_lut(seed);
    }
}

#[test]
fn every_code_pair_adds_like_the_reference_at_the_extreme_parameters() {
    // All 65,536 code pairs in one call, for multipliers and shifts at their bounds.
    let a: Vec<u8> = (0..=255u8)
        .flat_map(|x| std::iter::repeat_n(x, 256))
        .collect();
    let b: Vec<u8> = (0..256).flat_map(|_| 0..=255u8).collect();
    for (ma, mb, shift) in [
        (32767, 32767, 0),
        (32767, 32767, 30),
        (0, 32767, 15),
        (1, 0, 1),
        (16384, 12345, 14),
    ] {
        for (zpa, zpb, zpo) in [(0, 0, 0), (255, 255, 255), (0, 255, 128)] {
            let q = AddQuant {
                params: AddParams {
                    multiplier_a: ma,
                    multiplier_b: mb,
                    shift,
                },
                zero_point_a: zpa,
                zero_point_b: zpb,
                zero_point_out: zpo,
                qmin: 0,
                qmax: 255,
            };
            let mut expected = vec![0u8; a.len()];
            reference::add_u8(&a, &b, &q, &mut expected);
            let mut got = vec![0u8; a.len()];
            add_u8(&a, &b, &q, &mut got).expect("valid add");
            assert_same(&expected, &got, format_args!("all pairs, {q:?}"));
        }
    }
}

/// From scales, the integer Add is within `0.5 + (|da| + |db|) * 2^-(shift + 1)` of the real sum before clamping:
/// half a code from the final rounding, and each multiplier within half a step `2^-shift` of its ratio.
#[test]
fn add_params_from_scales_approximate_the_real_sum_within_the_derived_bound() {
    let mut rng = Rng(11);
    for case in 0..2000 {
        let s_a = rng.float(1e-4, 1.0) as f32;
        let s_b = rng.float(1e-4, 1.0) as f32;
        let s_out = rng.float(1e-3, 1.0) as f32;
        let Ok(p) = AddParams::from_scales(s_a, s_b, s_out) else {
            continue;
        };
        let (ra, rb) = (s_a as f64 / s_out as f64, s_b as f64 / s_out as f64);
        for _ in 0..20 {
            let da = rng.range(-255, 255) as i32;
            let db = rng.range(-255, 255) as i32;
            let got = p.apply(da, db) as f64;
            let real = da as f64 * ra + db as f64 * rb;
            let bound =
                0.5 + (da.abs() + db.abs()) as f64 * (2f64).powi(-(p.shift as i32) - 1) + 1e-9;
            assert!(
                (got - real).abs() <= bound,
                "case {case}: {p:?} da {da} db {db}: {got} vs {real}"
            );
        }
    }
}

#[test]
fn unary_table_of_a_clip_on_unchanged_parameters_is_an_exact_clamp() {
    let qp = QParams::new(0.05, 20).expect("valid");
    // ReLU6: real [0, 6] is codes [20, 140].
    let table = unary_table(qp, qp, 0, 255, |x| x.clamp(0.0, 6.0)).expect("valid");
    for q in 0..=255u8 {
        assert_eq!(table[q as usize], q.clamp(20, 140), "code {q}");
    }
    let x: Vec<u8> = (0..=255).collect();
    let mut out = vec![0u8; 256];
    lut_u8(&x, &table, &mut out).expect("equal lengths");
    assert_eq!(out, x.iter().map(|&q| q.clamp(20, 140)).collect::<Vec<_>>());
}

#[test]
fn add_rejects_mismatched_lengths_and_invalid_parameters() {
    let q = AddQuant {
        params: AddParams {
            multiplier_a: 1,
            multiplier_b: 1,
            shift: 0,
        },
        zero_point_a: 0,
        zero_point_b: 0,
        zero_point_out: 0,
        qmin: 0,
        qmax: 255,
    };
    let mut out = vec![0u8; 4];
    let shape = |r| matches!(r, Err(QuantError::ShapeMismatch { .. }));
    assert!(shape(add_u8(&[0; 4], &[0; 3], &q, &mut out)));
    assert!(shape(add_u8(&[0; 3], &[0; 3], &q, &mut out)));
    let bad_mult = AddQuant {
        params: AddParams {
            multiplier_a: 32768,
            ..q.params
        },
        ..q
    };
    assert!(matches!(
        add_u8(&[0; 4], &[0; 4], &bad_mult, &mut out),
        Err(QuantError::MultiplierOutOfRange { .. })
    ));
    let bad_shift = AddQuant {
        params: AddParams {
            shift: 31,
            ..q.params
        },
        ..q
    };
    assert!(matches!(
        add_u8(&[0; 4], &[0; 4], &bad_shift, &mut out),
        Err(QuantError::MultiplierOutOfRange { .. })
    ));
    let invalid = |r| matches!(r, Err(QuantError::InvalidQParams { .. }));
    for bad in [
        AddQuant {
            zero_point_a: 256,
            ..q
        },
        AddQuant {
            zero_point_b: -1,
            ..q
        },
        AddQuant {
            zero_point_out: 300,
            ..q
        },
        AddQuant {
            qmin: 10,
            qmax: 9,
            ..q
        },
        AddQuant { qmax: 256, ..q },
        AddQuant { qmin: -1, ..q },
    ] {
        assert!(invalid(add_u8(&[0; 4], &[0; 4], &bad, &mut out)), "{bad:?}");
    }
}

#[test]
fn rescale_and_lut_reject_mismatched_lengths_and_invalid_parameters() {
    let q = RescaleQuant {
        params: Rescale {
            multiplier: 1,
            shift: 0,
        },
        zero_point_in: 0,
        zero_point_out: 0,
        qmin: 0,
        qmax: 255,
    };
    let mut out = vec![0u8; 4];
    assert!(matches!(
        rescale_u8(&[0; 5], &q, &mut out),
        Err(QuantError::ShapeMismatch { .. })
    ));
    let bad = RescaleQuant {
        params: Rescale {
            multiplier: -1,
            shift: 0,
        },
        ..q
    };
    assert!(matches!(
        rescale_u8(&[0; 4], &bad, &mut out),
        Err(QuantError::MultiplierOutOfRange { .. })
    ));
    let bad = RescaleQuant {
        zero_point_in: 256,
        ..q
    };
    assert!(matches!(
        rescale_u8(&[0; 4], &bad, &mut out),
        Err(QuantError::InvalidQParams { .. })
    ));
    assert!(matches!(
        lut_u8(&[0; 3], &[0; 256], &mut out),
        Err(QuantError::ShapeMismatch { .. })
    ));
    let qp = QParams::new(0.1, 0).expect("valid");
    let bad_zp = QParams {
        zero_point: 256,
        ..qp
    };
    assert!(matches!(
        unary_table(bad_zp, qp, 0, 255, |x| x),
        Err(QuantError::InvalidQParams { .. })
    ));
    assert!(matches!(
        unary_table(qp, qp, 5, 4, |x| x),
        Err(QuantError::InvalidQParams { .. })
    ));
}
