//! The direct convolution (every available tier, and its scalar reference) equals an independent im2col followed
//! by the normative reference GEMM, bit for bit, on random geometries: channel counts across the 12-channel
//! block, odd and even kernel widths, padding, output widths off the 8-column group, pad codes and weights at
//! their extremes.
use lowbit_runtime::kernels::conv::{
    direct_conv_acc, max_pool_2x2_row, max_pool_requant, requant_channels, AccLayout, ConvAcc,
    ConvGeometry, DirectConv, Grid,
};
use lowbit_runtime::kernels::depthwise::GroupedConvGeometry;
use lowbit_runtime::kernels::{reference, Isa, OutputParams};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::{requantize, Requant};
use lowbit_runtime::testutil::{im2col_conv_acc, Rng};
use proptest::prelude::*;

/// im2col and the reference GEMM, NCHW (`testutil::im2col_conv_acc`): the engine's original convolution, written
/// out independently of `kernels::conv`.
fn im2col_reference(
    g: &ConvGeometry,
    x: &[u8],
    pad: u8,
    w: &PackedWeights,
    bias: &[i32],
) -> Vec<i32> {
    let grouped = GroupedConvGeometry {
        c_in: g.c_in,
        h: g.h,
        w: g.w,
        c_out: g.c_out,
        kh: g.kh,
        kw: g.kw,
        stride: (1, 1),
        padding: (g.pad_h, g.pad_w),
        groups: 1,
    };
    im2col_conv_acc(&grouped, x, pad, w, bias)
}

fn geometry(rng: &mut Rng) -> ConvGeometry {
    let kh = rng.range(1, 5) as usize;
    let kw = rng.range(1, 7) as usize;
    let pad_h = rng.range(0, (kh - 1) as i64) as usize;
    let pad_w = rng.range(0, (kw - 1) as i64) as usize;
    ConvGeometry {
        c_in: rng.range(1, 4) as usize,
        h: kh + rng.range(0, 12) as usize,
        w: kw + rng.range(0, 21) as usize,
        c_out: [1, 2, 5, 6, 11, 12, 13, 16, 25][rng.range(0, 8) as usize],
        kh,
        kw,
        pad_h,
        pad_w,
    }
}

fn check(seed: u64) {
    let mut rng = Rng(seed);
    let g = geometry(&mut rng);
    let extreme = rng.range(0, 3);
    let x: Vec<u8> = (0..g.c_in * g.h * g.w)
        .map(|_| {
            if extreme == 0 {
                255
            } else {
                rng.range(0, 255) as u8
            }
        })
        .collect();
    let pad = [0u8, 255, 128, 7][rng.range(0, 3) as usize];
    // Weight modes: full range (mostly the i16 scheme), extremes, within +-64 (the u8 quad scheme as is), and
    // bell-shaped trained-like codes (quads after re-pairing and flips).
    let mode = rng.range(0, 3);
    let codes: Vec<i8> = (0..g.c_out * g.k())
        .map(|_| match (extreme, mode) {
            (1, _) => [-127i8, 127][rng.range(0, 1) as usize],
            (_, 2) => rng.range(-64, 64) as i8,
            (_, 3) => {
                let v = (0..4).map(|_| rng.range(-90, 90)).sum::<i64>() / 3;
                v.clamp(-127, 127) as i8
            }
            _ => rng.range(-127, 127) as i8,
        })
        .collect();
    let w = PackedWeights::pack(8, g.c_out, g.k(), &codes).expect("valid codes");
    let bias: Vec<i32> = (0..g.c_out)
        .map(|_| rng.range(-1 << 20, 1 << 20) as i32)
        .collect();
    let expected = im2col_reference(&g, &x, pad, &w, &bias);
    for isa in Isa::available() {
        let conv = DirectConv::new(isa, g, &w).expect("int8 weights");
        let avx2 = matches!(isa, Isa::Avx2 | Isa::Avx512Vnni);
        if avx2 && extreme != 1 && mode == 2 && g.oh() * g.ow() > 0 {
            assert!(conv.path().contains("quads"), "{isa:?}: {}", conv.path());
        }
        let widened = DirectConv::widened(isa, g, &w).expect("int8 weights");
        assert_eq!(widened.path(), "direct i16");
        let wide = DirectConv::with_grid(isa, g, &w, Grid::Wide).expect("int8 weights");
        let compact = DirectConv::with_grid(isa, g, &w, Grid::Compact).expect("int8 weights");
        if compact.path().contains("quads") {
            // Rows of at least 8 outputs take the compact grid; narrower ones stay wide.
            assert_eq!(
                compact.path().contains("compact"),
                g.ow() >= 8,
                "{}",
                compact.path()
            );
            assert!(wide.path().contains("wide grid"), "{}", wide.path());
        }
        for conv in [conv, widened, wide, compact] {
            let mut out = vec![0i32; expected.len()];
            direct_conv_acc(&conv, &x, pad, &bias, &mut out).expect("checked shapes");
            assert_eq!(out, expected, "{isa:?} {} on {g:?}, pad {pad}", conv.path());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn direct_convolution_equals_im2col_reference_on_every_tier(seed in any::<u64>()) {
        check(seed);
    }
}

#[test]
fn lenet_first_convolution_equals_im2col_reference() {
    let g = ConvGeometry {
        c_in: 1,
        h: 28,
        w: 28,
        c_out: 6,
        kh: 5,
        kw: 5,
        pad_h: 2,
        pad_w: 2,
    };
    assert_eq!((g.oh(), g.ow()), (28, 28));
    let mut rng = Rng(7);
    let x: Vec<u8> = (0..784).map(|_| rng.range(0, 255) as u8).collect();
    let codes: Vec<i8> = (0..150).map(|_| rng.range(-127, 127) as i8).collect();
    let w = PackedWeights::pack(8, 6, 25, &codes).expect("valid codes");
    let bias = vec![-5, 0, 7, 1 << 20, -(1 << 20), 3];
    let expected = im2col_reference(&g, &x, 0, &w, &bias);
    for isa in Isa::available() {
        let conv = DirectConv::new(isa, g, &w).expect("int8 weights");
        let mut out = vec![0i32; expected.len()];
        direct_conv_acc(&conv, &x, 0, &bias, &mut out).expect("checked shapes");
        assert_eq!(out, expected, "{isa:?}");
    }
}

#[test]
fn direct_convolution_rejects_sub_byte_weights_and_wrong_lengths() {
    let g = ConvGeometry {
        c_in: 1,
        h: 4,
        w: 4,
        c_out: 2,
        kh: 3,
        kw: 3,
        pad_h: 0,
        pad_w: 0,
    };
    let w4 = PackedWeights::pack(4, 2, 9, &[1; 18]).expect("valid codes");
    assert!(DirectConv::new(Isa::Reference, g, &w4).is_err());
    let w8 = PackedWeights::pack(8, 2, 9, &[1; 18]).expect("valid codes");
    let conv = DirectConv::new(Isa::Reference, g, &w8).expect("int8 weights");
    let mut out = vec![0i32; 2 * 2 * 2];
    assert!(direct_conv_acc(&conv, &[0; 15], 0, &[0, 0], &mut out).is_err());
    assert!(direct_conv_acc(&conv, &[0; 16], 0, &[0], &mut out).is_err());
    assert!(direct_conv_acc(&conv, &[0; 16], 0, &[0, 0], &mut out[..7]).is_err());
    let wrong_geo = ConvGeometry { c_out: 3, ..g };
    assert!(DirectConv::new(Isa::Reference, wrong_geo, &w8).is_err());
    // Empty kernels or inputs are refused on every tier (padding alone would give a non-empty output).
    for empty in [
        ConvGeometry { kw: 0, ..g },
        ConvGeometry { kh: 0, ..g },
        ConvGeometry {
            h: 0,
            pad_h: 2,
            ..g
        },
        ConvGeometry {
            w: 0,
            pad_w: 2,
            ..g
        },
    ] {
        let w = PackedWeights::pack(8, 2, empty.k(), &vec![1; 2 * empty.k()]).expect("valid codes");
        for isa in Isa::available() {
            assert!(
                DirectConv::new(isa, empty, &w).is_err(),
                "{isa:?} {empty:?}"
            );
        }
    }
}

#[test]
fn per_channel_requantization_equals_the_reference_output_stage() {
    let mut rng = Rng(11);
    let (channels, positions) = (5, 37);
    let acc: Vec<i32> = (0..channels * positions)
        .map(|_| rng.range(-1 << 24, 1 << 24) as i32)
        .collect();
    let requant: Vec<Requant> = (0..channels)
        .map(|c| Requant::from_real(0.0003 * (c as f64 + 1.0)).expect("valid multiplier"))
        .collect();
    for (rq, zp, qmin, qmax) in [(&requant[..], 3, 3, 255), (&requant[..1], 0, 0, 15)] {
        let mut out = vec![0u8; acc.len()];
        requant_channels(&acc, channels, positions, rq, zp, qmin, qmax, &mut out).expect("checked");
        for c in 0..channels {
            let p = OutputParams {
                bias: &[],
                requant: &rq[if rq.len() == 1 { 0 } else { c }..][..1],
                zero_point: zp,
                qmin,
                qmax,
            };
            let mut expected = vec![0u8; positions];
            reference::requant_u8(
                &acc[c * positions..][..positions],
                positions,
                &p,
                &mut expected,
            );
            assert_eq!(
                &out[c * positions..][..positions],
                &expected[..],
                "channel {c}"
            );
        }
    }
    let mut out = vec![0u8; acc.len()];
    assert!(requant_channels(
        &acc,
        channels,
        positions,
        &requant[..2],
        0,
        0,
        255,
        &mut out
    )
    .is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn max_pool_row_equals_the_scalar_definition(
        a in proptest::collection::vec(any::<u8>(), 0..80),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let b: Vec<u8> = (0..a.len()).map(|_| rng.range(0, 255) as u8).collect();
        let n = a.len() / 2;
        let mut out = vec![0u8; n];
        max_pool_2x2_row(&a, &b, &mut out).expect("rows long enough");
        let expected: Vec<u8> = (0..n).map(|i| a[2 * i].max(a[2 * i + 1]).max(b[2 * i]).max(b[2 * i + 1])).collect();
        prop_assert_eq!(out, expected);
        prop_assert!(max_pool_2x2_row(&a, &b, &mut vec![0u8; n + 1]).is_err());
    }
}

/// A valid requantization (multiplier in `[2^30, 2^31)`, total shift in `1..=62`): mostly a real multiplier near
/// `2^-13`, which maps accumulators of `+-2^21` onto mid-range codes, sometimes anywhere in the range.
fn random_requant(rng: &mut Rng) -> Requant {
    let shift = if rng.range(0, 3) == 0 {
        rng.range(-30, 31)
    } else {
        rng.range(11, 15)
    };
    Requant {
        multiplier: rng.range(1 << 30, i32::MAX as i64) as i32,
        shift: shift as i32,
    }
}

/// Accumulators that hit the extremes often (`i32::MIN`, `i32::MAX`, any i32, values near 0), mostly `+-2^21`.
fn random_accumulators(rng: &mut Rng, n: usize) -> Vec<i32> {
    (0..n)
        .map(|_| match rng.range(0, 7) {
            0 => i32::MIN,
            1 => i32::MAX,
            2 => rng.range(-300, 300) as i32,
            3 => rng.next_u64() as i32,
            _ => rng.range(-1 << 21, 1 << 21) as i32,
        })
        .collect()
}

/// `(requant, zero point, qmin, qmax)`: per-channel or per-tensor, ReLU or not, 8 bits or fewer.
fn random_output_stage(rng: &mut Rng, channels: usize) -> (Vec<Requant>, i32, i32, i32) {
    let count = if rng.range(0, 1) == 0 { 1 } else { channels };
    let requant = (0..count).map(|_| random_requant(rng)).collect();
    let qmax = [255, 255, 15, 3][rng.range(0, 3) as usize];
    let zero_point = rng.range(0, qmax as i64) as i32;
    let qmin = if rng.range(0, 1) == 0 { zero_point } else { 0 };
    (requant, zero_point, qmin, qmax)
}

fn expected_code(acc: i32, requant: &[Requant], c: usize, zp: i32, qmin: i32, qmax: i32) -> u8 {
    let rq = requant[if requant.len() == 1 { 0 } else { c }];
    requantize(acc, rq, zp, qmin, qmax) as u8
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn channel_requantization_equals_requantize_for_every_row_length(
        channels in 0usize..6,
        positions in prop_oneof![0usize..=17, Just(25), Just(196)],
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let acc = random_accumulators(&mut rng, channels * positions);
        let (requant, zp, qmin, qmax) = random_output_stage(&mut rng, channels);
        let mut out = vec![0u8; acc.len()];
        requant_channels(&acc, channels, positions, &requant, zp, qmin, qmax, &mut out)
            .expect("valid arguments");
        for (i, (&a, &got)) in acc.iter().zip(&out).enumerate() {
            let c = i / positions;
            prop_assert_eq!(
                got,
                expected_code(a, &requant, c, zp, qmin, qmax),
                "index {} acc {} channel {} of {}x{}, zp {}, [{}, {}], requant {:?}",
                i, a, c, channels, positions, zp, qmin, qmax, requant
            );
        }
    }

    #[test]
    fn fused_pool_and_requantization_equals_the_definition_on_every_tier(
        channels in prop_oneof![1usize..=9, Just(16), Just(17)],
        h in 0usize..=11,
        w in prop_oneof![0usize..=20, Just(28), Just(33)],
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        // NCHW planes, a direct kernel's wide planes (longer rows, padded planes), and the GEMM's positions.
        let wide = (w + 4, h * (w + 4) + 9);
        let acc = random_accumulators(&mut rng, channels * wide.1.max(h * w));
        let (requant, zero_point, qmin, qmax) = random_output_stage(&mut rng, channels);
        let p = OutputParams { bias: &[], requant: &requant, zero_point, qmin, qmax };
        let (oh, ow) = (h / 2, w / 2);
        for layout in [
            AccLayout::Planes { row: w, plane: h * w },
            AccLayout::Planes { row: wide.0, plane: wide.1 },
            AccLayout::Positions,
        ] {
            let acc = match layout {
                AccLayout::Planes { plane, .. } => &acc[..channels * plane],
                AccLayout::Positions => &acc[..channels * h * w],
            };
            let at = |c: usize, y: usize, x: usize| match layout {
                AccLayout::Planes { row, plane } => acc[c * plane + y * row + x],
                AccLayout::Positions => acc[(y * w + x) * channels + c],
            };
            let mut expected = vec![0u8; channels * oh * ow];
            for c in 0..channels {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let window = [(0, 0), (0, 1), (1, 0), (1, 1)]
                            .map(|(dy, dx)| at(c, 2 * oy + dy, 2 * ox + dx));
                        let m = window.into_iter().max().expect("4 values");
                        expected[(c * oh + oy) * ow + ox] =
                            expected_code(m, &requant, c, zero_point, qmin, qmax);
                    }
                }
            }
            for isa in Isa::available() {
                let mut out = vec![0u8; expected.len()];
                let conv = ConvAcc { acc, layout, channels, height: h, width: w };
                max_pool_requant(isa, conv, &p, &mut out).expect("valid arguments");
                if let Some(i) = (0..out.len()).find(|&i| out[i] != expected[i]) {
                    prop_assert!(
                        false,
                        "{:?} {:?}: index {} expected {} got {}, {}x{}x{}, zp {}, [{}, {}], requant {:?}",
                        isa, layout, i, expected[i], out[i], channels, h, w, zero_point, qmin, qmax, requant
                    );
                }
            }
        }
    }
}

#[test]
fn fused_pool_and_requantization_rejects_wrong_lengths_and_parameters() {
    let requant = [Requant::from_real(0.01).expect("valid multiplier"); 3];
    let p = OutputParams {
        bias: &[],
        requant: &requant,
        zero_point: 0,
        qmin: 0,
        qmax: 255,
    };
    let acc = vec![0i32; 3 * 4 * 6];
    let run = |acc: &[i32], p: &OutputParams, out_len: usize| {
        let conv = ConvAcc {
            acc,
            layout: AccLayout::Planes { row: 6, plane: 24 },
            channels: 3,
            height: 4,
            width: 6,
        };
        max_pool_requant(Isa::Reference, conv, p, &mut vec![0u8; out_len])
    };
    assert!(run(&acc, &p, 3 * 2 * 3).is_ok());
    assert!(run(&acc[1..], &p, 3 * 2 * 3).is_err());
    assert!(run(&acc, &p, 3 * 2 * 3 + 1).is_err());
    let two = OutputParams {
        requant: &requant[..2],
        ..p
    };
    assert!(run(&acc, &two, 3 * 2 * 3).is_err());
    let inverted = OutputParams {
        qmin: 9,
        qmax: 8,
        ..p
    };
    assert!(run(&acc, &inverted, 3 * 2 * 3).is_err());
    // Rows shorter than the width, or planes shorter than their rows, are refused.
    for (row, plane) in [(5, 24), (6, 23)] {
        let conv = ConvAcc {
            acc: &acc,
            layout: AccLayout::Planes { row, plane },
            channels: 3,
            height: 4,
            width: 6,
        };
        assert!(max_pool_requant(Isa::Reference, conv, &p, &mut [0u8; 18]).is_err());
    }
}
