//! Pad and Slice on NCHW codes: the row-copy implementations equal the element-by-element references, padding and
//! then slicing the padding away returns the input, and a slice takes exactly the indices its ranges name.
//! Batches of 1 to 3, widths 1 to 40, odd channel counts, paddings 0 to 3 per side, steps 1 to 3.
use lowbit_runtime::kernels::layout::{
    pad_u8, reference, slice_u8, AxisSlice, Padding, SampleShape, Slicing,
};
use lowbit_runtime::testutil::{assert_same, Rng};
use lowbit_runtime::QuantError;
use proptest::prelude::*;

fn shape(rng: &mut Rng) -> SampleShape {
    SampleShape {
        channels: [1, 2, 3, 5, 7, 16, rng.range(1, 9) as usize][rng.range(0, 6) as usize],
        height: rng.range(1, 12) as usize,
        width: [1, 2, 3, 13, 31, 32, 33, 40, rng.range(1, 40) as usize][rng.range(0, 8) as usize],
    }
}

fn axis(rng: &mut Rng, len: usize) -> AxisSlice {
    let start = rng.range(0, len as i64 - 1) as usize;
    let end = rng.range(start as i64 + 1, len as i64) as usize;
    AxisSlice {
        start,
        end,
        step: rng.range(1, 3) as usize,
    }
}

fn check_pad(seed: u64) {
    let mut rng = Rng(seed);
    let input = shape(&mut rng);
    let batch = rng.range(1, 3) as usize;
    let mut side = || rng.range(0, 3) as usize;
    let padding = Padding {
        channels_front: side(),
        channels_back: side(),
        top: side(),
        bottom: side(),
        left: side(),
        right: side(),
    };
    let output = padding.output_shape(input).expect("small shapes");
    let x = rng.bytes(batch * input.elems().expect("small"));
    let pad_code = [0u8, 255, rng.range(0, 255) as u8][rng.range(0, 2) as usize];
    let n_out = batch * output.elems().expect("small");
    let mut expected = vec![0u8; n_out];
    reference::pad_u8(&x, batch, input, &padding, pad_code, &mut expected);
    let ctx = format!("batch {batch} of {input:?}, {padding:?}, pad code {pad_code}, seed {seed}");
    let mut got = vec![0u8; n_out];
    pad_u8(&x, batch, input, &padding, pad_code, &mut got).expect("checked shapes");
    assert_same(&expected, &got, format_args!("pad: {ctx}"));
    // Slicing the padding away gives the input back; every other element is the pad code.
    let inner = Slicing {
        channels: AxisSlice {
            start: padding.channels_front,
            end: padding.channels_front + input.channels,
            step: 1,
        },
        height: AxisSlice {
            start: padding.top,
            end: padding.top + input.height,
            step: 1,
        },
        width: AxisSlice {
            start: padding.left,
            end: padding.left + input.width,
            step: 1,
        },
    };
    let mut back = vec![0u8; x.len()];
    slice_u8(&got, batch, output, &inner, &mut back).expect("checked shapes");
    assert_same(&x, &back, format_args!("unpad: {ctx}"));
    let (oc, oh, ow) = (output.channels, output.height, output.width);
    let border = (0..n_out).filter(|&i| {
        let (c, y, xx) = (i / (oh * ow) % oc, i / ow % oh, i % ow);
        !(inner.channels.start..inner.channels.end).contains(&c)
            || !(inner.height.start..inner.height.end).contains(&y)
            || !(inner.width.start..inner.width.end).contains(&xx)
    });
    for i in border {
        assert_eq!(got[i], pad_code, "border index {i}: {ctx}");
    }
}

fn check_slice(seed: u64) {
    let mut rng = Rng(seed);
    let input = shape(&mut rng);
    let batch = rng.range(1, 3) as usize;
    let slicing = Slicing {
        channels: axis(&mut rng, input.channels),
        height: axis(&mut rng, input.height),
        width: axis(&mut rng, input.width),
    };
    let output = slicing.output_shape(input).expect("valid ranges");
    let x = rng.bytes(batch * input.elems().expect("small"));
    // The indices the ranges name, by filtering every input index.
    let taken =
        |a: AxisSlice, i: usize| i >= a.start && i < a.end && (i - a.start).is_multiple_of(a.step);
    let (c, h, w) = (input.channels, input.height, input.width);
    let filtered: Vec<u8> = (0..x.len())
        .filter(|&i| {
            taken(slicing.channels, i / (h * w) % c)
                && taken(slicing.height, i / w % h)
                && taken(slicing.width, i % w)
        })
        .map(|i| x[i])
        .collect();
    let n_out = batch * output.elems().expect("small");
    let ctx = format!("batch {batch} of {input:?}, {slicing:?}, seed {seed}");
    let mut expected = vec![0u8; n_out];
    reference::slice_u8(&x, batch, input, &slicing, &mut expected);
    assert_same(&filtered, &expected, format_args!("reference slice: {ctx}"));
    let mut got = vec![0u8; n_out];
    slice_u8(&x, batch, input, &slicing, &mut got).expect("checked shapes");
    assert_same(&expected, &got, format_args!("slice: {ctx}"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn pad_equals_reference_and_round_trips_through_slice(seed in any::<u64>()) {
        check_pad(seed);
    }

    #[test]
    fn slice_equals_reference_and_takes_exactly_the_named_indices(seed in any::<u64>()) {
        check_slice(seed);
    }
}

#[test]
fn pad_of_an_empty_input_is_all_pad_code() {
    let input = SampleShape {
        channels: 0,
        height: 3,
        width: 3,
    };
    let padding = Padding {
        channels_front: 2,
        ..Padding::default()
    };
    let mut out = vec![1u8; 18];
    pad_u8(&[], 1, input, &padding, 9, &mut out).expect("checked shapes");
    assert_eq!(out, vec![9u8; 18]);
}

#[test]
fn pad_and_slice_reject_wrong_lengths_and_invalid_ranges() {
    let input = SampleShape {
        channels: 2,
        height: 3,
        width: 4,
    };
    let shape_err = |r| matches!(r, Err(QuantError::ShapeMismatch { .. }));
    let padding = Padding {
        left: 1,
        ..Padding::default()
    };
    assert!(shape_err(pad_u8(
        &[0; 23],
        1,
        input,
        &padding,
        0,
        &mut [0; 30]
    )));
    assert!(shape_err(pad_u8(
        &[0; 24],
        1,
        input,
        &padding,
        0,
        &mut [0; 29]
    )));
    let huge = Padding {
        top: usize::MAX,
        ..Padding::default()
    };
    assert!(shape_err(pad_u8(
        &[0; 24],
        1,
        input,
        &huge,
        0,
        &mut [0; 30]
    )));
    let full = Slicing {
        channels: AxisSlice::full(2),
        height: AxisSlice::full(3),
        width: AxisSlice::full(4),
    };
    assert!(slice_u8(&[0; 24], 1, input, &full, &mut [0; 24]).is_ok());
    assert!(shape_err(slice_u8(&[0; 24], 1, input, &full, &mut [0; 23])));
    assert!(shape_err(slice_u8(&[0; 25], 1, input, &full, &mut [0; 24])));
    for bad in [
        Slicing {
            channels: AxisSlice {
                start: 0,
                end: 3,
                step: 1,
            },
            ..full
        },
        Slicing {
            height: AxisSlice {
                start: 2,
                end: 2,
                step: 1,
            },
            ..full
        },
        Slicing {
            width: AxisSlice {
                start: 0,
                end: 4,
                step: 0,
            },
            ..full
        },
    ] {
        assert!(
            shape_err(slice_u8(&[0; 24], 1, input, &bad, &mut [0; 24])),
            "{bad:?}"
        );
    }
}
