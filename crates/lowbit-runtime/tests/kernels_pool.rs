//! Pooling: every available tier equals the scalar reference bit for bit, and the reference equals formulas written
//! out independently here (the engine's AvgPool2d with the window equal to the whole map; max pool over a copy
//! padded with code 0). Planes of 1 to 300 codes around the 32-code vector step, 7x7 and 8x8 heads, widths 1 to 40,
//! kernels 1 to 7, strides 1 to 3, paddings 0 to 3, zero points and codes at 0 and 255.
use lowbit_runtime::kernels::pool::{
    global_avg_pool_u8, global_avg_pool_u8_with, max_pool_u8, max_pool_u8_with, reference,
    AvgPoolQuant, PoolGeometry, MAX_AVG_POOL_ELEMS,
};
use lowbit_runtime::kernels::Isa;
use lowbit_runtime::qparams::{requantize, QParams, Requant};
use lowbit_runtime::testutil::{assert_same, Rng};
use lowbit_runtime::QuantError;
use proptest::prelude::*;

fn codes(rng: &mut Rng, n: usize) -> Vec<u8> {
    match rng.range(0, 3) {
        0 => vec![255; n],
        1 => (0..n)
            .map(|_| [0u8, 255][rng.range(0, 1) as usize])
            .collect(),
        _ => rng.bytes(n),
    }
}

fn check_global_avg(seed: u64) {
    let mut rng = Rng(seed);
    let n = if rng.range(0, 1) == 0 {
        [1, 4, 16, 31, 32, 33, 49, 63, 64, 65, 96, 196, 256][rng.range(0, 12) as usize]
    } else {
        rng.range(1, 300) as usize
    };
    let planes = rng.range(1, 70) as usize;
    let x = codes(&mut rng, planes * n);
    let zp = |rng: &mut Rng| [0, 255, rng.range(0, 255) as i32][rng.range(0, 2) as usize];
    let input = QParams::new(rng.float(1e-3, 0.1) as f32, zp(&mut rng)).expect("valid");
    let output = QParams::new(rng.float(1e-3, 0.1) as f32, zp(&mut rng)).expect("valid");
    let q = AvgPoolQuant::new(input, output, n, 255).expect("valid");
    // The engine's AvgPool2d formula, window = the whole plane.
    let rq = Requant::from_real(input.scale as f64 / (output.scale as f64 * n as f64))
        .expect("in range");
    assert_eq!(q.requant, rq);
    let formula: Vec<u8> = x
        .chunks_exact(n)
        .map(|p| {
            let sum: i32 = p.iter().map(|&v| v as i32 - input.zero_point).sum();
            requantize(sum, rq, output.zero_point, 0, 255) as u8
        })
        .collect();
    let mut expected = vec![0u8; planes];
    reference::global_avg_pool_u8(&x, n, &q, &mut expected);
    let ctx = |what: &str| format!("{what}: {planes} planes of {n}, {q:?}, seed {seed}");
    assert_same(&formula, &expected, ctx("reference"));
    for isa in Isa::available() {
        let mut got = vec![0u8; planes];
        global_avg_pool_u8_with(isa, &x, planes, n, &q, &mut got).expect("checked shapes");
        assert_same(&expected, &got, ctx(isa.name()));
    }
}

fn pool_geometry(rng: &mut Rng) -> PoolGeometry {
    let kh = rng.range(1, 7) as usize;
    let kw = if rng.range(0, 2) == 0 {
        kh
    } else {
        rng.range(1, 7) as usize
    };
    let ph = rng.range(0, (kh as i64 - 1).min(3)) as usize;
    let pw = rng.range(0, (kw as i64 - 1).min(3)) as usize;
    let w = if rng.range(0, 1) == 0 {
        [1, 2, 3, 5, 7, 8, 13, 16, 17, 31, 32, 33, 37, 40][rng.range(0, 13) as usize]
    } else {
        rng.range(1, 40) as usize
    };
    PoolGeometry {
        h: rng.range(1, 12) as usize,
        w,
        kh,
        kw,
        stride: (rng.range(1, 3) as usize, rng.range(1, 3) as usize),
        padding: (ph, pw),
    }
}

/// Max over the window of a copy padded with code 0 (which never wins over an in-bounds code).
fn padded_max_pool(x: &[u8], planes: usize, g: &PoolGeometry) -> Vec<u8> {
    let (hp, wp) = (g.h + 2 * g.padding.0, g.w + 2 * g.padding.1);
    let (oh, ow) = ((hp - g.kh) / g.stride.0 + 1, (wp - g.kw) / g.stride.1 + 1);
    let mut out = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        let mut xpad = vec![0u8; hp * wp];
        for y in 0..g.h {
            for xx in 0..g.w {
                xpad[(y + g.padding.0) * wp + xx + g.padding.1] = x[(p * g.h + y) * g.w + xx];
            }
        }
        for oy in 0..oh {
            for ox in 0..ow {
                let window = (0..g.kh).flat_map(|ky| (0..g.kw).map(move |kx| (ky, kx)));
                let m = window
                    .map(|(ky, kx)| xpad[(oy * g.stride.0 + ky) * wp + ox * g.stride.1 + kx])
                    .max();
                out.push(m.unwrap_or(0));
            }
        }
    }
    out
}

fn check_max_pool(seed: u64) {
    let mut rng = Rng(seed);
    let mut g = pool_geometry(&mut rng);
    // Grow the input until the kernel fits.
    g.h = g.h.max(g.kh.saturating_sub(2 * g.padding.0));
    g.w = g.w.max(g.kw.saturating_sub(2 * g.padding.1));
    g.validate().expect("the generator builds valid geometries");
    let planes = rng.range(1, 5) as usize;
    let x = codes(&mut rng, planes * g.h * g.w);
    let (oh, ow) = (g.oh(), g.ow());
    let mut expected = vec![0u8; planes * oh * ow];
    reference::max_pool_u8(&x, planes, &g, &mut expected);
    let ctx =
        |what: &str| format!("{what}: {planes} planes, {g:?} (oh {oh}, ow {ow}), seed {seed}");
    assert_same(
        &padded_max_pool(&x, planes, &g),
        &expected,
        ctx("reference"),
    );
    for isa in Isa::available() {
        let mut got = vec![0u8; expected.len()];
        max_pool_u8_with(isa, &x, planes, &g, &mut got).expect("checked shapes");
        assert_same(&expected, &got, ctx(isa.name()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn global_average_pool_equals_reference_on_every_tier(seed in any::<u64>()) {
        check_global_avg(seed);
    }

    #[test]
    fn max_pool_equals_reference_on_every_tier(seed in any::<u64>()) {
        check_max_pool(seed);
    }
}

#[test]
fn global_average_pool_of_a_constant_plane_is_that_constant_on_equal_scales() {
    let qp = QParams::new(0.02, 7).expect("valid");
    for n in [1, 49, 64, 1000] {
        let q = AvgPoolQuant::new(qp, qp, n, 255).expect("valid");
        let x: Vec<u8> = (0..=255u8)
            .flat_map(|v| std::iter::repeat_n(v, n))
            .collect();
        let mut out = vec![0u8; 256];
        global_avg_pool_u8(&x, 256, n, &q, &mut out).expect("checked shapes");
        assert_eq!(out, (0..=255u8).collect::<Vec<_>>(), "plane of {n}");
    }
}

#[test]
fn average_pool_rejects_empty_or_huge_planes_wrong_lengths_and_bad_parameters() {
    let qp = QParams::new(0.02, 7).expect("valid");
    let q = AvgPoolQuant::new(qp, qp, 4, 255).expect("valid");
    let mut out = vec![0u8; 2];
    let shape = |r| matches!(r, Err(QuantError::ShapeMismatch { .. }));
    assert!(shape(global_avg_pool_u8(&[0; 8], 2, 0, &q, &mut out)));
    assert!(shape(global_avg_pool_u8(
        &[],
        0,
        MAX_AVG_POOL_ELEMS + 1,
        &q,
        &mut []
    )));
    assert!(shape(global_avg_pool_u8(&[0; 7], 2, 4, &q, &mut out)));
    assert!(shape(global_avg_pool_u8(&[0; 8], 2, 4, &q, &mut out[..1])));
    assert!(AvgPoolQuant::new(qp, qp, 0, 255).is_err());
    let bad = AvgPoolQuant {
        zero_point_in: 256,
        ..q
    };
    assert!(matches!(
        global_avg_pool_u8(&[0; 8], 2, 4, &bad, &mut out),
        Err(QuantError::InvalidQParams { .. })
    ));
    let bad = AvgPoolQuant { qmax: 300, ..q };
    assert!(matches!(
        global_avg_pool_u8(&[0; 8], 2, 4, &bad, &mut out),
        Err(QuantError::InvalidQParams { .. })
    ));
    let bad = AvgPoolQuant {
        requant: Requant {
            multiplier: 5,
            shift: 0,
        },
        ..q
    };
    assert!(matches!(
        global_avg_pool_u8(&[0; 8], 2, 4, &bad, &mut out),
        Err(QuantError::MultiplierOutOfRange { .. })
    ));
}

#[test]
fn max_pool_rejects_invalid_geometries_and_wrong_lengths() {
    let ok = PoolGeometry {
        h: 4,
        w: 4,
        kh: 2,
        kw: 2,
        stride: (2, 2),
        padding: (0, 0),
    };
    let mut out = vec![0u8; 4];
    assert!(max_pool_u8(&[0; 16], 1, &ok, &mut out).is_ok());
    let shape = |r| matches!(r, Err(QuantError::ShapeMismatch { .. }));
    for bad in [
        PoolGeometry { kh: 0, ..ok },
        PoolGeometry {
            stride: (2, 0),
            ..ok
        },
        PoolGeometry {
            padding: (2, 0),
            ..ok
        },
        PoolGeometry {
            kw: 6,
            padding: (0, 0),
            ..ok
        },
        PoolGeometry { h: 1 << 17, ..ok },
    ] {
        assert!(shape(max_pool_u8(&[0; 16], 1, &bad, &mut out)), "{bad:?}");
    }
    assert!(shape(max_pool_u8(&[0; 15], 1, &ok, &mut out)));
    assert!(shape(max_pool_u8(&[0; 16], 1, &ok, &mut out[..3])));
}
