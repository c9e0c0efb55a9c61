//! The channel-pair-plane convolution (every available tier, and its scalar reference) equals an independent
//! im2col + reference GEMM + requantization (+ the reference residual Add) bit for bit, on random geometries:
//! odd channel counts, channel blocks of every size, strides 1 to 3, padding, output rows off the 8-lane vector,
//! pad codes, zero points and weights at their extremes, per-tensor and per-channel requantization, fused ReLU.
use lowbit_runtime::kernels::conv_planes::{
    plane_conv_requant, reference, PlaneConv, Residual, Scheme, MAX_QUAD_TILE_CHANNELS,
    MAX_TILE_CHANNELS,
};
use lowbit_runtime::kernels::depthwise::GroupedConvGeometry;
use lowbit_runtime::kernels::eltwise::{reference::add_code, AddQuant};
use lowbit_runtime::kernels::{Isa, OutputParams};
use lowbit_runtime::pack::PackedWeights;
use lowbit_runtime::qparams::{requantize, AddParams, Requant};
use lowbit_runtime::testutil::{im2col_conv_acc, Rng};
use proptest::prelude::*;

fn geometry(rng: &mut Rng) -> GroupedConvGeometry {
    loop {
        let kh = rng.range(1, 5) as usize;
        let kw = rng.range(1, 5) as usize;
        let g = GroupedConvGeometry {
            c_in: [1, 2, 3, 4, 5, 7, 8, 13, 16][rng.range(0, 8) as usize],
            h: rng.range(1, 14) as usize,
            w: rng.range(1, 21) as usize,
            c_out: [1, 2, 3, 5, 6, 7, 11, 12, 13, 16, 17][rng.range(0, 10) as usize],
            kh,
            kw,
            stride: (rng.range(1, 3) as usize, rng.range(1, 3) as usize),
            padding: (rng.range(0, 2) as usize, rng.range(0, 2) as usize),
            groups: 1,
        };
        if g.validate().is_ok() {
            return g;
        }
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
            1 => [-127i8, 127][rng.range(0, 1) as usize],
            _ => rng.range(-127, 127) as i8,
        })
        .collect();
    let w = PackedWeights::pack(8, g.c_out, g.taps(), &codes).expect("valid codes");
    let bias: Vec<i32> = (0..g.c_out)
        .map(|_| rng.range(-1 << 20, 1 << 20) as i32)
        .collect();
    let channels = if rng.range(0, 1) == 0 { 1 } else { g.c_out };
    // Scales of real layers (total shift past 32: the output stage's short path), or any legal multiplier and
    // shift (ratios from 2^-62 to 2^30: both paths, mixed across channels).
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
    let qmin = if rng.range(0, 1) == 0 { 0 } else { zero_point };
    let p = OutputParams {
        bias: &[],
        requant: &requant,
        zero_point,
        qmin,
        qmax: 255,
    };
    let n = g.c_out * g.oh() * g.ow();
    let with_residual = rng.range(0, 1) == 1;
    let residual_codes: Vec<u8> = (0..n).map(|_| rng.range(0, 255) as u8).collect();
    let add = AddQuant {
        params: AddParams::from_scales(
            rng.float(0.001, 0.1) as f32,
            rng.float(0.001, 0.1) as f32,
            rng.float(0.001, 0.1) as f32,
        )
        .expect("ratios in range"),
        zero_point_a: [0, 255, 100][rng.range(0, 2) as usize],
        zero_point_b: [0, 255, 31][rng.range(0, 2) as usize],
        zero_point_out: [0, 255, 60][rng.range(0, 2) as usize],
        qmin: 0,
        qmax: 255,
    };
    let add = AddQuant {
        qmin: if rng.range(0, 1) == 0 {
            0
        } else {
            add.zero_point_out
        },
        ..add
    };
    let residual = with_residual.then_some(Residual {
        codes: &residual_codes,
        quant: &add,
    });
    let acc = im2col_conv_acc(&g, &x, pad, &w, &bias);
    let positions = g.oh() * g.ow();
    let expected: Vec<u8> = acc
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let c = i / positions.max(1);
            let q = requantize(a, p.requant_for(c), zero_point, qmin, 255) as u8;
            match residual {
                Some(r) => add_code(q, r.codes[i], r.quant),
                None => q,
            }
        })
        .collect();
    for isa in Isa::available() {
        let conv = PlaneConv::new(isa, g, &w).expect("int8 weights");
        for split in [false, true] {
            let mut out = vec![0u8; n];
            plane_conv_requant(&conv, &x, pad, &bias, &p, residual, split, &mut out)
                .expect("checked");
            if let Some(i) = out.iter().zip(&expected).position(|(a, b)| a != b) {
                panic!(
                    "{isa:?} seed {seed}: index {i}: expected {} got {} on {g:?}, pad {pad}, zp {zero_point}, \
                     qmin {qmin}, residual {with_residual}, split {split}",
                    expected[i], out[i]
                );
            }
        }
        let mut out_ref = vec![0u8; n];
        reference::plane_conv_requant(&g, &conv, &x, pad, &bias, &p, residual, &mut out_ref);
        assert_eq!(out_ref, expected, "scalar reference, seed {seed}, {g:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn plane_convolution_equals_im2col_reference_on_every_tier(seed in any::<u64>()) {
        check(seed);
    }
}

#[test]
fn resnet_shapes_equal_the_im2col_reference() {
    // The CIFAR ResNet's convolutions: 3 -> 16 at 32x32, 16 -> 16, the stride-2 transitions, 64 -> 64 at 8x8.
    for (i, (c_in, hw, c_out, stride)) in [
        (3, 32, 16, 1),
        (16, 32, 16, 1),
        (16, 32, 32, 2),
        (32, 16, 64, 2),
        (64, 8, 64, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let g = GroupedConvGeometry {
            c_in,
            h: hw,
            w: hw,
            c_out,
            kh: 3,
            kw: 3,
            stride: (stride, stride),
            padding: (1, 1),
            groups: 1,
        };
        let mut rng = Rng(100 + i as u64);
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
        let acc = im2col_conv_acc(&g, &x, 7, &w, &bias);
        let expected: Vec<u8> = acc
            .iter()
            .map(|&a| requantize(a, requant[0], 120, 0, 255) as u8)
            .collect();
        for isa in Isa::available() {
            let conv = PlaneConv::new(isa, g, &w).expect("int8 weights");
            let mut out = vec![0u8; expected.len()];
            for split in [false, true] {
                plane_conv_requant(&conv, &x, 7, &bias, &p, None, split, &mut out)
                    .expect("checked");
                assert_eq!(out, expected, "{isa:?} {g:?} split {split}");
            }
        }
    }
}

#[test]
fn output_channels_go_in_the_fewest_tiles_of_at_most_six() {
    // Block sizes and coverage are checked by the equivalence tests above (every channel's codes); here the count.
    for c_out in [1usize, 5, 6, 7, 12, 13, 16, 17, 32, 64] {
        let w = PackedWeights::pack(8, c_out, 9, &vec![1; c_out * 9]).expect("valid codes");
        let g = GroupedConvGeometry {
            c_in: 1,
            h: 5,
            w: 5,
            c_out,
            kh: 3,
            kw: 3,
            stride: (1, 1),
            padding: (1, 1),
            groups: 1,
        };
        let conv = PlaneConv::new(Isa::Reference, g, &w).expect("int8 weights");
        let blocks = format!("({} channel blocks)", c_out.div_ceil(MAX_TILE_CHANNELS));
        assert!(conv.path().contains(&blocks), "{c_out}: {}", conv.path());
    }
}

#[test]
fn the_vnni_tier_reads_channel_quads_and_the_others_pairs() {
    // The equivalence tests above run every available tier; this pins which scheme each one ran.
    let c_out = 16;
    let w = PackedWeights::pack(8, c_out, 5 * 9, &vec![1; c_out * 5 * 9]).expect("valid codes");
    let g = GroupedConvGeometry {
        c_in: 5,
        h: 8,
        w: 8,
        c_out,
        kh: 3,
        kw: 3,
        stride: (1, 1),
        padding: (1, 1),
        groups: 1,
    };
    for isa in Isa::available() {
        let conv = PlaneConv::new(isa, g, &w).expect("int8 weights");
        let (scheme, blocks) = match isa {
            Isa::Avx512Vnni => (Scheme::Quads, c_out.div_ceil(MAX_QUAD_TILE_CHANNELS)),
            _ => (Scheme::Pairs, c_out.div_ceil(MAX_TILE_CHANNELS)),
        };
        assert_eq!(conv.scheme(), scheme, "{isa:?}");
        assert!(
            conv.path().contains(&format!("({blocks} channel blocks)")),
            "{isa:?}: {}",
            conv.path()
        );
    }
    if !Isa::Avx512Vnni.is_available() {
        eprintln!("note: no AVX-512 VNNI on this CPU, the quad kernel was not run");
    }
}

#[test]
fn plane_convolution_rejects_bad_weights_groups_and_lengths() {
    let g = GroupedConvGeometry {
        c_in: 2,
        h: 4,
        w: 4,
        c_out: 2,
        kh: 3,
        kw: 3,
        stride: (1, 1),
        padding: (0, 0),
        groups: 1,
    };
    let w4 = PackedWeights::pack(4, 2, 18, &[1; 36]).expect("valid codes");
    assert!(PlaneConv::new(Isa::Reference, g, &w4).is_err());
    let w8 = PackedWeights::pack(8, 2, 18, &[1; 36]).expect("valid codes");
    assert!(PlaneConv::new(Isa::Reference, GroupedConvGeometry { groups: 2, ..g }, &w8).is_err());
    assert!(PlaneConv::new(Isa::Reference, GroupedConvGeometry { c_out: 3, ..g }, &w8).is_err());
    assert!(PlaneConv::new(Isa::Reference, GroupedConvGeometry { kh: 5, ..g }, &w8).is_err());
    let conv = PlaneConv::new(Isa::Reference, g, &w8).expect("int8 weights");
    let requant = [Requant::from_real(0.01).expect("in range")];
    let p = OutputParams {
        bias: &[],
        requant: &requant,
        zero_point: 0,
        qmin: 0,
        qmax: 255,
    };
    let mut out = vec![0u8; 8];
    assert!(plane_conv_requant(&conv, &[0; 31], 0, &[0, 0], &p, None, false, &mut out).is_err());
    assert!(plane_conv_requant(&conv, &[0; 32], 0, &[0], &p, None, false, &mut out).is_err());
    assert!(
        plane_conv_requant(&conv, &[0; 32], 0, &[0, 0], &p, None, false, &mut out[..7]).is_err()
    );
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
    assert!(plane_conv_requant(&conv, &[0; 32], 0, &[0, 0], &p, Some(r), false, &mut out).is_err());
    assert!(plane_conv_requant(&conv, &[0; 32], 0, &[0, 0], &p, None, false, &mut out).is_ok());
}
