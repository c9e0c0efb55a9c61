//! The Winograd F(2x2, 3x3) convolution (its scalar path and every available SIMD tier) equals the normative
//! channel-pair-plane reference bit for bit, on random 3x3 stride-1 geometries: odd channel counts, 1 included,
//! sizes 1 to 12 (widths to 40) with odd output edges, padding 0 to 2, pad codes, zero points and weights at their extremes,
//! per-tensor and per-channel requantization, with and without a fused residual Add; plus hand-checked cases and
//! the overflow bound at its limit.
use lowbit_runtime::kernels::conv_planes::{reference as planes_reference, PlaneConv, Residual};
use lowbit_runtime::kernels::depthwise::GroupedConvGeometry;
use lowbit_runtime::kernels::eltwise::AddQuant;
use lowbit_runtime::kernels::winograd::{
    reference, winograd_applies, winograd_conv_requant, WinogradConv, MAX_WINOGRAD_C_IN,
};
use lowbit_runtime::kernels::{Isa, OutputParams};
use lowbit_runtime::pack::{PackedWeights, Packing};
use lowbit_runtime::qparams::{AddParams, Requant};
use lowbit_runtime::testutil::Rng;
use proptest::prelude::*;

fn geometry(rng: &mut Rng) -> GroupedConvGeometry {
    loop {
        let g = GroupedConvGeometry {
            c_in: [1, 2, 3, 5, 7, 8, 13, 16, 17][rng.range(0, 8) as usize],
            h: rng.range(1, 12) as usize,
            // One case in four wide enough for whole 8-tile vectors in a tile row (16-byte row stores).
            w: match rng.range(0, 3) {
                0 => rng.range(13, 40),
                _ => rng.range(1, 12),
            } as usize,
            c_out: [1, 2, 3, 5, 6, 7, 11, 13, 16, 17][rng.range(0, 9) as usize],
            kh: 3,
            kw: 3,
            stride: (1, 1),
            padding: (rng.range(0, 2) as usize, rng.range(0, 2) as usize),
            groups: 1,
        };
        if g.validate().is_ok() {
            return g;
        }
    }
}

/// Runs every Winograd tier and the scalar path against the planes reference; panics with the first differing
/// index, both codes and the case's parameters.
#[allow(clippy::too_many_arguments)]
fn assert_matches_planes(
    what: &str,
    g: GroupedConvGeometry,
    w: &PackedWeights,
    x: &[u8],
    pad: u8,
    bias: &[i32],
    p: &OutputParams,
    residual: Option<Residual<'_>>,
) {
    let n = g.c_out * g.oh() * g.ow();
    let planes = PlaneConv::new(Isa::Reference, g, w).expect("int8 weights");
    let mut expected = vec![0u8; n];
    planes_reference::plane_conv_requant(&g, &planes, x, pad, bias, p, residual, &mut expected);
    let compare = |tier: &str, out: &[u8]| {
        if let Some(i) = out.iter().zip(&expected).position(|(a, b)| a != b) {
            panic!(
                "{what}: {tier}: index {i}: expected {} got {} on {g:?}, pad {pad}, zp {}, qmin {}, requant {:?}, \
                 residual {}",
                expected[i],
                out[i],
                p.zero_point,
                p.qmin,
                p.requant,
                residual.is_some()
            );
        }
    };
    for isa in Isa::available() {
        let conv = WinogradConv::new(isa, g, w).expect("eligible");
        for split in [false, true] {
            let mut out = vec![0u8; n];
            winograd_conv_requant(&conv, x, pad, bias, p, residual, split, &mut out)
                .expect("checked");
            compare(&format!("{:?} split {split}", conv.isa()), &out);
        }
        let mut scalar = vec![0u8; n];
        reference::winograd_conv_requant(&conv, x, pad, bias, p, residual, &mut scalar);
        compare("scalar", &scalar);
    }
}

fn check(seed: u64) {
    let mut rng = Rng(seed);
    let g = geometry(&mut rng);
    let extreme = rng.range(0, 3);
    let x: Vec<u8> = (0..g.c_in * g.h * g.w)
        .map(|_| match extreme {
            0 => 255,
            _ => rng.range(0, 255) as u8,
        })
        .collect();
    let pad = [0u8, 255, 128, 7][rng.range(0, 3) as usize];
    let codes: Vec<i8> = (0..g.c_out * g.taps())
        .map(|_| match extreme {
            0 | 1 => [-127i8, 127][rng.range(0, 1) as usize],
            _ => rng.range(-127, 127) as i8,
        })
        .collect();
    let w = PackedWeights::pack(8, g.c_out, g.taps(), &codes).expect("valid codes");
    let bias: Vec<i32> = (0..g.c_out)
        .map(|_| rng.range(-1 << 20, 1 << 20) as i32)
        .collect();
    let channels = if rng.range(0, 1) == 0 { 1 } else { g.c_out };
    let any_shift = rng.range(0, 1) == 1;
    let requant: Vec<Requant> = (0..channels)
        .map(|_| match any_shift {
            false => Requant::from_real(rng.float(1e-5, 0.05)).expect("in range"),
            true => Requant {
                multiplier: rng.range(1 << 30, (1i64 << 31) - 1) as i32,
                shift: rng.range(-30, 31) as i32,
            },
        })
        .collect();
    let zero_point = [0, 255, 128, 3][rng.range(0, 3) as usize];
    let p = OutputParams {
        bias: &[],
        requant: &requant,
        zero_point,
        qmin: if rng.range(0, 1) == 0 { 0 } else { zero_point },
        qmax: 255,
    };
    let n = g.c_out * g.oh() * g.ow();
    let residual_codes: Vec<u8> = (0..n).map(|_| rng.range(0, 255) as u8).collect();
    let zero_point_out = [0, 255, 60][rng.range(0, 2) as usize];
    let add = AddQuant {
        params: AddParams::from_scales(
            rng.float(0.001, 0.1) as f32,
            rng.float(0.001, 0.1) as f32,
            rng.float(0.001, 0.1) as f32,
        )
        .expect("ratios in range"),
        zero_point_a: [0, 255, 100][rng.range(0, 2) as usize],
        zero_point_b: [0, 255, 31][rng.range(0, 2) as usize],
        zero_point_out,
        qmin: if rng.range(0, 1) == 0 {
            0
        } else {
            zero_point_out
        },
        qmax: 255,
    };
    let residual = (rng.range(0, 1) == 1).then_some(Residual {
        codes: &residual_codes,
        quant: &add,
    });
    assert_matches_planes(&format!("seed {seed}"), g, &w, &x, pad, &bias, &p, residual);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn winograd_convolution_equals_the_planes_reference_on_every_tier(seed in any::<u64>()) {
        check(seed);
    }
}

fn geo(c_in: usize, h: usize, w: usize, c_out: usize, pad: usize) -> GroupedConvGeometry {
    GroupedConvGeometry {
        c_in,
        h,
        w,
        c_out,
        kh: 3,
        kw: 3,
        stride: (1, 1),
        padding: (pad, pad),
        groups: 1,
    }
}

#[test]
fn a_hand_computed_4x4_convolution_gives_the_expected_codes() {
    // x = 0..16 row-major, weights all 1: the 3x3 window sums are 45, 54, 81 and 90; plus bias 2, times 1/2 with
    // rounding half toward +infinity: 24, 28, 42, 46; plus zero point 10.
    let g = geo(1, 4, 4, 1, 0);
    let x: Vec<u8> = (0..16).collect();
    let w = PackedWeights::pack(8, 1, 9, &[1; 9]).expect("valid codes");
    let requant = [Requant::from_real(0.5).expect("in range")];
    let p = OutputParams {
        bias: &[],
        requant: &requant,
        zero_point: 10,
        qmin: 0,
        qmax: 255,
    };
    for isa in Isa::available() {
        let conv = WinogradConv::new(isa, g, &w).expect("eligible");
        let mut out = [0u8; 4];
        winograd_conv_requant(&conv, &x, 0, &[2], &p, None, false, &mut out).expect("checked");
        assert_eq!(out, [34, 38, 52, 56], "{isa:?}");
    }
}

#[test]
fn a_single_pixel_with_padding_reads_the_pad_code_around_it() {
    // One 1x1 input of 3 surrounded by pad code 5; weights: centre 2, the other eight -1. Sum: 2*3 - 8*5 = -34;
    // times 1/2 = -17 plus zero point 100.
    let g = geo(1, 1, 1, 1, 1);
    let mut codes = [-1i8; 9];
    codes[4] = 2;
    let w = PackedWeights::pack(8, 1, 9, &codes).expect("valid codes");
    let requant = [Requant::from_real(0.5).expect("in range")];
    let p = OutputParams {
        bias: &[],
        requant: &requant,
        zero_point: 100,
        qmin: 0,
        qmax: 255,
    };
    for isa in Isa::available() {
        let conv = WinogradConv::new(isa, g, &w).expect("eligible");
        let mut out = [0u8; 1];
        winograd_conv_requant(&conv, &[3], 5, &[0], &p, None, false, &mut out).expect("checked");
        assert_eq!(out, [83], "{isa:?}");
    }
}

#[test]
fn the_overflow_bound_holds_at_its_largest_channel_count() {
    // Every input 255 and every weight 127 (or -127): the largest |Y| the bound admits, one 2x2 tile per output
    // corner and odd edges (5x5 output with padding 1). A requantization of 2^-25 keeps the codes inside
    // the range, so a lost high bit would show.
    let c_in = MAX_WINOGRAD_C_IN;
    let g = geo(c_in, 5, 5, 2, 1);
    let x = vec![255u8; c_in * 25];
    let mut codes = vec![127i8; c_in * 9];
    codes.extend(vec![-127i8; c_in * 9]);
    let w = PackedWeights::pack(8, 2, c_in * 9, &codes).expect("valid codes");
    let requant = [Requant::from_real(2f64.powi(-25)).expect("in range")];
    let p = OutputParams {
        bias: &[],
        requant: &requant,
        zero_point: 128,
        qmin: 0,
        qmax: 255,
    };
    assert_matches_planes("largest c_in", g, &w, &x, 255, &[0, 0], &p, None);
    // The pad code 0 gives different sums at the border: corners, edges and centre all differ.
    assert_matches_planes("largest c_in, pad 0", g, &w, &x, 0, &[7, -7], &p, None);
}

#[test]
fn winograd_applies_only_to_3x3_stride_1_single_group_convolutions_within_the_bound() {
    let g = geo(16, 8, 8, 16, 1);
    assert!(winograd_applies(&g));
    assert!(winograd_applies(&GroupedConvGeometry {
        c_in: MAX_WINOGRAD_C_IN,
        ..g
    }));
    assert!(!winograd_applies(&GroupedConvGeometry {
        c_in: MAX_WINOGRAD_C_IN + 1,
        ..g
    }));
    assert!(!winograd_applies(&GroupedConvGeometry {
        stride: (2, 2),
        ..g
    }));
    assert!(!winograd_applies(&GroupedConvGeometry {
        stride: (1, 2),
        ..g
    }));
    assert!(!winograd_applies(&GroupedConvGeometry {
        kh: 5,
        kw: 5,
        ..g
    }));
    assert!(!winograd_applies(&GroupedConvGeometry { kw: 1, ..g }));
    assert!(!winograd_applies(&GroupedConvGeometry { groups: 2, ..g }));
    // The bound: 4 * c_in * 9 * 255 * 128 fits an i32 exactly up to MAX_WINOGRAD_C_IN.
    let worst = |c: usize| 4 * c as i64 * 9 * 255 * 128;
    assert!(worst(MAX_WINOGRAD_C_IN) <= i32::MAX as i64);
    assert!(worst(MAX_WINOGRAD_C_IN + 1) > i32::MAX as i64);
}

#[test]
fn winograd_convolution_rejects_bad_weights_geometries_and_lengths() {
    let g = geo(2, 4, 4, 2, 0);
    let w4 = PackedWeights::pack(4, 2, 18, &[1; 36]).expect("valid codes");
    assert_eq!(w4.packing, Packing::I4x2);
    assert!(WinogradConv::new(Isa::Reference, g, &w4).is_err());
    let w8 = PackedWeights::pack(8, 2, 18, &[1; 36]).expect("valid codes");
    assert!(WinogradConv::new(Isa::Reference, GroupedConvGeometry { c_out: 3, ..g }, &w8).is_err());
    assert!(WinogradConv::new(
        Isa::Reference,
        GroupedConvGeometry {
            stride: (2, 2),
            ..g
        },
        &w8
    )
    .is_err());
    let wide = PackedWeights::pack(8, 2, 50, &[1; 100]).expect("valid codes");
    assert!(WinogradConv::new(
        Isa::Reference,
        GroupedConvGeometry { kh: 5, kw: 5, ..g },
        &wide
    )
    .is_err());
    let requant = [Requant::from_real(0.01).expect("in range")];
    let p = OutputParams {
        bias: &[],
        requant: &requant,
        zero_point: 0,
        qmin: 0,
        qmax: 255,
    };
    let add = AddQuant {
        params: AddParams::from_scales(0.1, 0.1, 0.1).expect("in range"),
        zero_point_a: 0,
        zero_point_b: 0,
        zero_point_out: 0,
        qmin: 0,
        qmax: 255,
    };
    let short = [0u8; 7];
    let r = Residual {
        codes: &short,
        quant: &add,
    };
    for isa in Isa::available() {
        let conv = WinogradConv::new(isa, g, &w8).expect("eligible");
        let mut out = vec![0u8; 8];
        assert!(
            winograd_conv_requant(&conv, &[0; 31], 0, &[0, 0], &p, None, false, &mut out).is_err()
        );
        assert!(
            winograd_conv_requant(&conv, &[0; 32], 0, &[0], &p, None, false, &mut out).is_err()
        );
        assert!(
            winograd_conv_requant(&conv, &[0; 32], 0, &[0, 0], &p, None, false, &mut out[..7])
                .is_err()
        );
        assert!(
            winograd_conv_requant(&conv, &[0; 32], 0, &[0, 0], &p, Some(r), false, &mut out)
                .is_err()
        );
        let three = [requant[0]; 3];
        let bad = OutputParams {
            requant: &three,
            ..p
        };
        assert!(
            winograd_conv_requant(&conv, &[0; 32], 0, &[0, 0], &bad, None, false, &mut out)
                .is_err()
        );
        assert!(
            winograd_conv_requant(&conv, &[0; 32], 0, &[0, 0], &p, None, false, &mut out).is_ok()
        );
    }
}

#[test]
fn resnet_shapes_equal_the_planes_reference() {
    for (i, (c_in, hw, c_out)) in [(3, 32, 16), (16, 32, 16), (32, 16, 32), (64, 8, 64)]
        .into_iter()
        .enumerate()
    {
        let g = geo(c_in, hw, hw, c_out, 1);
        let mut rng = Rng(200 + i as u64);
        let x: Vec<u8> = (0..c_in * hw * hw)
            .map(|_| rng.range(0, 255) as u8)
            .collect();
        let codes: Vec<i8> = (0..c_out * g.taps())
            .map(|_| rng.range(-127, 127) as i8)
            .collect();
        let w = PackedWeights::pack(8, c_out, g.taps(), &codes).expect("valid codes");
        let bias: Vec<i32> = (0..c_out).map(|_| rng.range(-5000, 5000) as i32).collect();
        let requant = vec![Requant::from_real(2e-4).expect("in range")];
        let p = OutputParams {
            bias: &[],
            requant: &requant,
            zero_point: 120,
            qmin: 0,
            qmax: 255,
        };
        assert_matches_planes(&format!("resnet {i}"), g, &w, &x, 7, &bias, &p, None);
    }
}
