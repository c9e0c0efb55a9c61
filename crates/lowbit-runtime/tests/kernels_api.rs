//! Packing round trips, `PackedWeights::validate`, and the entry-point checks of the kernel API.
use lowbit_runtime::kernels::{self, OutputParams};
use lowbit_runtime::pack::{row_bytes, PackedWeights, Packing};
use lowbit_runtime::qparams::{weight_code_range, Requant};
use lowbit_runtime::QuantError;
use proptest::prelude::*;

fn codes_strategy() -> impl Strategy<Value = (u32, usize, usize, Vec<i8>)> {
    (1u32..=8, 0usize..6, 0usize..40).prop_flat_map(|(bits, rows, cols)| {
        let (lo, hi) = weight_code_range(bits).unwrap();
        let code = if bits == 1 {
            prop::sample::select(vec![-1i8, 1]).boxed()
        } else {
            (lo as i8..=hi as i8).boxed()
        };
        (
            Just(bits),
            Just(rows),
            Just(cols),
            prop::collection::vec(code, rows * cols),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn pack_then_unpack_returns_the_codes((bits, rows, cols, codes) in codes_strategy()) {
        let w = PackedWeights::pack(bits, rows, cols, &codes).unwrap();
        prop_assert_eq!(w.packing, Packing::for_bits(bits).unwrap());
        prop_assert_eq!(w.data.len(), rows * row_bytes(w.packing, cols));
        prop_assert!(w.validate().is_ok());
        let mut row = vec![0i8; cols];
        for r in 0..rows {
            w.unpack_row(r, &mut row);
            prop_assert_eq!(&row[..], &codes[r * cols..(r + 1) * cols]);
            for c in 0..cols {
                prop_assert_eq!(w.code(r, c), codes[r * cols + c]);
            }
        }
    }
}

#[test]
fn bit_order_is_the_documented_one() {
    let w = PackedWeights::pack(4, 1, 3, &[1, -2, 7]).unwrap();
    assert_eq!(w.data, vec![0xE1, 0x07]);
    let w = PackedWeights::pack(2, 1, 5, &[1, -1, 0, 1, -1]).unwrap();
    assert_eq!(w.data, vec![0b01_00_11_01, 0b11]);
    let w = PackedWeights::pack(1, 1, 9, &[1, -1, -1, 1, 1, 1, 1, 1, 1]).unwrap();
    assert_eq!(w.data, vec![0b1111_1001, 0b1]);
}

#[test]
fn pack_rejects_codes_outside_the_range_and_binary_zero() {
    assert!(matches!(
        PackedWeights::pack(4, 1, 1, &[-8]),
        Err(QuantError::InvalidQParams { .. })
    ));
    assert!(matches!(
        PackedWeights::pack(8, 1, 1, &[-128]),
        Err(QuantError::InvalidQParams { .. })
    ));
    assert!(matches!(
        PackedWeights::pack(2, 1, 1, &[2]),
        Err(QuantError::InvalidQParams { .. })
    ));
    assert!(matches!(
        PackedWeights::pack(1, 1, 1, &[0]),
        Err(QuantError::InvalidQParams { .. })
    ));
    assert!(matches!(
        PackedWeights::pack(9, 1, 1, &[0]),
        Err(QuantError::InvalidBitWidth { bits: 9 })
    ));
    assert!(matches!(
        PackedWeights::pack(8, 2, 2, &[0; 3]),
        Err(QuantError::ShapeMismatch { .. })
    ));
}

#[test]
fn validate_rejects_each_kind_of_corruption() {
    let good = PackedWeights::pack(4, 2, 3, &[1, 2, 3, -1, -2, -3]).unwrap();
    assert!(good.validate().is_ok());
    // 4-bit code -8 (nibble 0x8) is outside [-7, 7].
    let mut w = good.clone();
    w.data[0] = 0x08;
    assert!(matches!(
        w.validate(),
        Err(QuantError::InvalidQParams { .. })
    ));
    // Nonzero padding nibble.
    let mut w = good.clone();
    w.data[1] |= 0x10;
    assert!(matches!(
        w.validate(),
        Err(QuantError::InvalidQParams { .. })
    ));
    let mut w = good.clone();
    w.data.pop();
    assert!(matches!(
        w.validate(),
        Err(QuantError::ShapeMismatch { .. })
    ));
    let mut w = good.clone();
    w.bits = 8;
    assert!(matches!(
        w.validate(),
        Err(QuantError::InvalidQParams { .. })
    ));
    let mut w = good.clone();
    w.bits = 0;
    assert!(matches!(
        w.validate(),
        Err(QuantError::InvalidBitWidth { bits: 0 })
    ));
    // 2-bit code -2 (bits 0b10) is outside [-1, 1].
    let mut w = PackedWeights::pack(2, 1, 4, &[0, 0, 0, 0]).unwrap();
    w.data[0] = 0b10;
    assert!(matches!(
        w.validate(),
        Err(QuantError::InvalidQParams { .. })
    ));
    let mut w = PackedWeights::pack(8, 1, 1, &[0]).unwrap();
    w.data[0] = 0x80;
    assert!(matches!(
        w.validate(),
        Err(QuantError::InvalidQParams { .. })
    ));
}

#[test]
fn kernel_entry_points_reject_mismatched_lengths() {
    let w = PackedWeights::pack(8, 2, 3, &[1, 2, 3, 4, 5, 6]).unwrap();
    let a = [1u8; 6];
    let mut out = [0i32; 4];
    assert!(kernels::gemm_acc(&a, 2, 3, &w, &[0, 0], &mut out).is_ok());
    assert_eq!(out, [6, 15, 6, 15]);
    let shape_err = |r: Result<(), QuantError>| matches!(r, Err(QuantError::ShapeMismatch { .. }));
    assert!(shape_err(kernels::gemm_acc(
        &a[..5],
        2,
        3,
        &w,
        &[0, 0],
        &mut out
    )));
    assert!(shape_err(kernels::gemm_acc(&a, 2, 3, &w, &[0], &mut out)));
    assert!(shape_err(kernels::gemm_acc(
        &a,
        2,
        3,
        &w,
        &[0, 0],
        &mut out[..3]
    )));
    assert!(shape_err(kernels::gemm_acc(
        &a,
        3,
        2,
        &w,
        &[0, 0],
        &mut out[..]
    )));
    assert!(shape_err(kernels::gemm_acc(
        &a,
        usize::MAX,
        3,
        &w,
        &[0, 0],
        &mut out
    )));
    assert!(shape_err(kernels::gemm_acc_b1b1(
        &[0u8; 2],
        2,
        3,
        &w,
        &[0, 0],
        &mut out
    )));
}

#[test]
fn requant_entry_point_rejects_bad_output_parameters() {
    let w = PackedWeights::pack(8, 2, 3, &[1, 2, 3, 4, 5, 6]).unwrap();
    let a = [1u8; 3];
    let mut out = [0u8; 2];
    let rq = Requant::from_real(0.5).unwrap();
    let ok = OutputParams {
        bias: &[0, 0],
        requant: &[rq],
        zero_point: 10,
        qmin: 0,
        qmax: 255,
    };
    assert!(kernels::gemm_requant(&a, 1, 3, &w, &ok, &mut out).is_ok());
    assert_eq!(out, [13, 18]);
    let bad_len = OutputParams {
        requant: &[rq, rq, rq],
        ..ok
    };
    assert!(matches!(
        kernels::gemm_requant(&a, 1, 3, &w, &bad_len, &mut out),
        Err(QuantError::ShapeMismatch { .. })
    ));
    let bad_clamp = OutputParams {
        qmin: 10,
        qmax: 256,
        ..ok
    };
    assert!(matches!(
        kernels::gemm_requant(&a, 1, 3, &w, &bad_clamp, &mut out),
        Err(QuantError::InvalidQParams { .. })
    ));
    let bad_rq = [Requant {
        multiplier: 5,
        shift: 0,
    }];
    let bad_mult = OutputParams {
        requant: &bad_rq,
        ..ok
    };
    assert!(matches!(
        kernels::gemm_requant(&a, 1, 3, &w, &bad_mult, &mut out),
        Err(QuantError::MultiplierOutOfRange { .. })
    ));
}
