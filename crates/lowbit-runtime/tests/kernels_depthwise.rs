//! Grouped and depthwise convolution: every available tier equals the scalar reference bit for bit, and the
//! reference equals the engine's formulation written out independently here (input padded with the zero point,
//! raw codes times weights, `bias - zp * sum w` folded into the bias). Geometries: depthwise with channel
//! multipliers 1 to 3, general groups, odd channel counts, widths 1 to 40 (primes included), kernels 1 to 7,
//! strides 1 to 3, paddings 0 to 3; zero points at 0 and 255, codes at 0 and 255, weights at -128, -127 and 127.
use lowbit_runtime::kernels::depthwise::{
    grouped_conv_acc, grouped_conv_requant, reference, GroupedConv, GroupedConvGeometry,
};
use lowbit_runtime::kernels::{Isa, OutputParams};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::{requantize, Requant};
use lowbit_runtime::testutil::{assert_same, Rng};
use lowbit_runtime::QuantError;
use proptest::prelude::*;

fn geometry(rng: &mut Rng) -> GroupedConvGeometry {
    let (groups, cig, cog) = match rng.range(0, 4) {
        // Depthwise, channel multiplier 1 (MobileNet) and 2-3.
        0 | 1 => {
            let c = rng.range(1, 13) as usize;
            (c, 1, 1)
        }
        2 => (rng.range(1, 7) as usize, 1, rng.range(2, 3) as usize),
        // General groups, and a plain convolution.
        3 => (
            rng.range(2, 5) as usize,
            rng.range(1, 3) as usize,
            rng.range(1, 3) as usize,
        ),
        _ => (1, rng.range(1, 3) as usize, rng.range(1, 4) as usize),
    };
    let w = if rng.range(0, 2) == 0 {
        [1, 2, 3, 5, 7, 8, 13, 15, 16, 17, 23, 31, 32, 33, 37, 40][rng.range(0, 15) as usize]
    } else {
        rng.range(1, 40) as usize
    };
    let h = rng.range(1, 10) as usize;
    let kh = rng.range(1, 7) as usize;
    let kw = if rng.range(0, 2) == 0 {
        kh
    } else {
        rng.range(1, 7) as usize
    };
    // Padding 0..=3 but enough for the kernel to fit.
    let pad_for = |len: usize, k: usize, rng: &mut Rng| {
        let need = k.saturating_sub(len).div_ceil(2);
        need.max(rng.range(0, 3) as usize)
    };
    let ph = pad_for(h, kh, rng);
    let pw = pad_for(w, kw, rng);
    GroupedConvGeometry {
        c_in: groups * cig,
        h,
        w,
        c_out: groups * cog,
        kh,
        kw,
        stride: (rng.range(1, 3) as usize, rng.range(1, 3) as usize),
        padding: (ph, pw),
        groups,
    }
}

/// The engine's formulation: the zero-point-padded sample, raw codes times weights, the zero-point correction in
/// the bias (wrapping).
fn folded_reference(g: &GroupedConvGeometry, x: &[u8], zp: u8, w: &[i8], bias: &[i32]) -> Vec<i32> {
    let (hp, wp) = (g.h + 2 * g.padding.0, g.w + 2 * g.padding.1);
    let mut xpad = vec![zp; g.c_in * hp * wp];
    for c in 0..g.c_in {
        for y in 0..g.h {
            for xx in 0..g.w {
                xpad[(c * hp + y + g.padding.0) * wp + xx + g.padding.1] =
                    x[(c * g.h + y) * g.w + xx];
            }
        }
    }
    let (oh, ow) = ((hp - g.kh) / g.stride.0 + 1, (wp - g.kw) / g.stride.1 + 1);
    let (cig, cog) = (g.c_in / g.groups, g.c_out / g.groups);
    let taps = cig * g.kh * g.kw;
    let mut out = vec![0i32; g.c_out * oh * ow];
    for oc in 0..g.c_out {
        let wrow = &w[oc * taps..(oc + 1) * taps];
        let wsum: i32 = wrow.iter().map(|&v| v as i32).sum();
        let b = bias[oc].wrapping_sub(zp as i32 * wsum);
        let ic0 = (oc / cog) * cig;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = b;
                for (t, &wt) in wrow.iter().enumerate() {
                    let (icg, ky, kx) = (t / (g.kh * g.kw), t / g.kw % g.kh, t % g.kw);
                    let v =
                        xpad[((ic0 + icg) * hp + oy * g.stride.0 + ky) * wp + ox * g.stride.1 + kx];
                    acc = acc.wrapping_add(v as i32 * wt as i32);
                }
                out[(oc * oh + oy) * ow + ox] = acc;
            }
        }
    }
    out
}

fn check(seed: u64) {
    let mut rng = Rng(seed);
    let g = geometry(&mut rng);
    g.validate().expect("the generator builds valid geometries");
    let n_in = g.c_in * g.h * g.w;
    let x: Vec<u8> = match rng.range(0, 3) {
        0 => vec![255; n_in],
        1 => (0..n_in)
            .map(|_| [0u8, 255][rng.range(0, 1) as usize])
            .collect(),
        _ => rng.bytes(n_in),
    };
    let zp = [0u8, 255, 128, rng.range(0, 255) as u8][rng.range(0, 3) as usize];
    let n_w = g.c_out * g.taps();
    let w: Vec<i8> = match rng.range(0, 3) {
        0 => (0..n_w)
            .map(|_| [-127i8, 127][rng.range(0, 1) as usize])
            .collect(),
        1 => (0..n_w)
            .map(|_| [-128i8, 127, 0][rng.range(0, 2) as usize])
            .collect(),
        _ => (0..n_w).map(|_| rng.range(-127, 127) as i8).collect(),
    };
    let bias: Vec<i32> = (0..g.c_out)
        .map(|_| match rng.range(0, 5) {
            // Near the i32 bounds the sums wrap; every tier must wrap the same way.
            0 => [i32::MAX, i32::MIN][rng.range(0, 1) as usize],
            _ => rng.range(-1 << 20, 1 << 20) as i32,
        })
        .collect();
    let (oh, ow) = (g.oh(), g.ow());
    let mut expected = vec![0i32; g.c_out * oh * ow];
    reference::grouped_conv_acc(&g, &x, zp, &w, &bias, &mut expected);
    let ctx = |what: &str| format!("{what} on {g:?} (oh {oh}, ow {ow}), zp {zp}, seed {seed}");
    assert_same(
        &folded_reference(&g, &x, zp, &w, &bias),
        &expected,
        ctx("reference"),
    );
    // Requantized output: per-channel or per-tensor, the output zero point and range anywhere.
    let requant: Vec<Requant> = (0..if rng.range(0, 1) == 0 { 1 } else { g.c_out })
        .map(|_| Requant::from_real(rng.float(1e-6, 0.05)).expect("in range"))
        .collect();
    let zero_point = rng.range(0, 255) as i32;
    let qmin = [0, zero_point][rng.range(0, 1) as usize];
    let p = OutputParams {
        bias: &bias,
        requant: &requant,
        zero_point,
        qmin,
        qmax: rng.range(qmin as i64, 255) as i32,
    };
    let positions = oh * ow;
    let expected_codes: Vec<u8> = expected
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            requantize(
                a,
                p.requant_for(i / positions),
                p.zero_point,
                p.qmin,
                p.qmax,
            ) as u8
        })
        .collect();
    for isa in Isa::available() {
        let conv = GroupedConv::new(isa, g, &w).expect("valid geometry and weights");
        let mut got = vec![0i32; expected.len()];
        grouped_conv_acc(&conv, &x, zp, &bias, &mut got).expect("checked shapes");
        assert_same(&expected, &got, ctx(isa.name()));
        let mut codes = vec![0u8; expected.len()];
        grouped_conv_requant(&conv, &x, zp, &p, &mut codes).expect("checked shapes");
        assert_same(
            &expected_codes,
            &codes,
            ctx(&format!("{} requant {p:?}", isa.name())),
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn grouped_convolution_equals_reference_on_every_tier(seed in any::<u64>()) {
        check(seed);
    }
}

#[test]
fn mobilenet_depthwise_layers_equal_reference_on_every_tier() {
    let mut rng = Rng(5);
    for (c, hw, stride, mult) in [
        (32, 32, 1, 1),
        (64, 16, 2, 1),
        (96, 8, 1, 1),
        (16, 15, 2, 2),
        (8, 7, 1, 6),
        (16, 32, 2, 1),
    ] {
        let mut g = GroupedConvGeometry::depthwise(c, hw, hw, 3, stride, 1);
        g.c_out = c * mult;
        let x = rng.bytes(c * hw * hw);
        let w: Vec<i8> = (0..g.c_out * 9)
            .map(|_| rng.range(-127, 127) as i8)
            .collect();
        let bias: Vec<i32> = (0..g.c_out)
            .map(|_| rng.range(-5000, 5000) as i32)
            .collect();
        let mut expected = vec![0i32; g.c_out * g.oh() * g.ow()];
        reference::grouped_conv_acc(&g, &x, 3, &w, &bias, &mut expected);
        for isa in Isa::available() {
            let conv = GroupedConv::new(isa, g, &w).expect("valid");
            if isa == Isa::Avx2 {
                // 16 columns per block for rows of 16 or more outputs, the wide grid below.
                let expected_path = if g.ow() >= 16 {
                    "avx2 rows"
                } else {
                    "avx2 wide grid"
                };
                assert_eq!(conv.path(), expected_path, "{g:?}");
            }
            let mut got = vec![0i32; expected.len()];
            grouped_conv_acc(&conv, &x, 3, &bias, &mut got).expect("checked shapes");
            assert_same(&expected, &got, format_args!("{isa:?} on {g:?}"));
        }
    }
}

#[test]
fn packed_weights_at_every_bit_width_prepare_the_same_convolution() {
    let g = GroupedConvGeometry::depthwise(6, 9, 11, 3, 2, 1);
    let mut rng = Rng(9);
    let x = rng.bytes(6 * 9 * 11);
    let bias = vec![17i32; 6];
    for bits in [8u32, 4, 2] {
        let q = (1i64 << (bits - 1)) - 1;
        let codes: Vec<i8> = (0..6 * 9).map(|_| rng.range(-q, q) as i8).collect();
        let packed = PackedWeights::pack(bits, 6, 9, &codes).expect("codes in range");
        for isa in Isa::available() {
            let from_codes = GroupedConv::new(isa, g, &codes).expect("valid");
            let from_packed = GroupedConv::from_packed(isa, g, &packed).expect("valid");
            assert_eq!(from_codes, from_packed, "{bits} bits on {isa:?}");
            let mut out = vec![0i32; 6 * g.oh() * g.ow()];
            grouped_conv_acc(&from_packed, &x, 0, &bias, &mut out).expect("checked shapes");
        }
    }
}

#[test]
fn invalid_geometries_are_rejected_with_a_shape_error() {
    let ok = GroupedConvGeometry::depthwise(4, 5, 5, 3, 1, 1);
    assert!(ok.validate().is_ok());
    for bad in [
        GroupedConvGeometry { c_in: 0, ..ok },
        GroupedConvGeometry { groups: 0, ..ok },
        GroupedConvGeometry {
            stride: (0, 1),
            ..ok
        },
        GroupedConvGeometry { kw: 0, ..ok },
        GroupedConvGeometry { groups: 3, ..ok },
        GroupedConvGeometry { c_out: 6, ..ok },
        GroupedConvGeometry { kh: 8, ..ok },
        GroupedConvGeometry { w: 1 << 17, ..ok },
        GroupedConvGeometry {
            padding: (usize::MAX / 2, 0),
            ..ok
        },
    ] {
        assert!(
            matches!(bad.validate(), Err(QuantError::ShapeMismatch { .. })),
            "{bad:?}"
        );
        assert!(
            GroupedConv::new(Isa::Reference, bad, &[0; 36]).is_err(),
            "{bad:?}"
        );
    }
}

#[test]
fn wrong_lengths_and_output_parameters_are_rejected() {
    let g = GroupedConvGeometry::depthwise(4, 5, 5, 3, 1, 1);
    fn shape<T>(r: Result<T, QuantError>) -> bool {
        matches!(r, Err(QuantError::ShapeMismatch { .. }))
    }
    assert!(shape(GroupedConv::new(Isa::Reference, g, &[0; 35])));
    let packed = PackedWeights::pack(8, 4, 8, &[0; 32]).expect("valid");
    assert!(shape(GroupedConv::from_packed(Isa::Reference, g, &packed)));
    for isa in Isa::available() {
        let conv = GroupedConv::new(isa, g, &[1; 36]).expect("valid");
        let (x, bias) = (vec![0u8; 100], vec![0i32; 4]);
        let mut out = vec![0i32; 100];
        assert!(grouped_conv_acc(&conv, &x, 0, &bias, &mut out).is_ok());
        assert!(shape(grouped_conv_acc(&conv, &x[1..], 0, &bias, &mut out)));
        assert!(shape(grouped_conv_acc(&conv, &x, 0, &bias[1..], &mut out)));
        assert!(shape(grouped_conv_acc(&conv, &x, 0, &bias, &mut out[1..])));
        let rq = [Requant::from_real(0.01).expect("in range"); 2];
        let mut codes = vec![0u8; 100];
        let p = OutputParams {
            bias: &bias,
            requant: &rq,
            zero_point: 0,
            qmin: 0,
            qmax: 255,
        };
        assert!(shape(grouped_conv_requant(&conv, &x, 0, &p, &mut codes)));
        let p = OutputParams {
            requant: &rq[..1],
            qmin: 9,
            qmax: 8,
            ..p
        };
        assert!(matches!(
            grouped_conv_requant(&conv, &x, 0, &p, &mut codes),
            Err(QuantError::InvalidQParams { .. })
        ));
    }
}
