//! The float layers of graph models (residual Add, channel Concat, zero Pad, strided Slice, Clip / ReLU6) and
//! the shape inference of every layer: finite-difference gradients for every input, forward values against
//! direct indexing, and typed shape errors.
//!
//! Tolerances as in `nn_gradients.rs` (`common::grad`): all these layers are linear in each input (Clip away
//! from its bounds), so central differences have no truncation error and only f32 rounding of the objective
//! remains (ATOL = 5e-4).
mod common;

use common::grad::{check_inputs, random_tensor, random_tensor_in, H};
use lowbit::error::Error;
use lowbit::nn::{
    Add, AvgPool2d, AxisSlice, BatchNorm2d, Clip, Concat, Conv2d, Dense, Dropout, Flatten,
    MaxPool2d, Pad, Relu, Slice,
};
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;

/// `check_inputs` for a single-input layer given its forward and backward.
fn check_single<L: Clone>(
    what: &str,
    seed: u64,
    layer: &L,
    x: &Tensor,
    forward: impl Fn(&mut L, &Tensor, bool) -> Tensor,
    backward: impl Fn(&mut L, &Tensor) -> Tensor,
) {
    check_inputs(
        what,
        seed,
        layer,
        std::slice::from_ref(x),
        |l, xs, train| forward(l, xs[0], train),
        |l, g| vec![backward(l, g)],
    );
}

/// Element `[b, c, y, x]` of an NCHW tensor.
fn at(t: &Tensor, b: usize, c: usize, y: usize, x: usize) -> f32 {
    let [_, cs, hs, ws] = t.shape[..] else {
        panic!("not NCHW: {:?}", t.shape)
    };
    t.data[((b * cs + c) * hs + y) * ws + x]
}

fn is_shape_error<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::Shape(_)))
}

#[test]
fn add_sums_elementwise_and_its_gradients_match_finite_differences_for_both_inputs() {
    for (seed, shape) in [vec![2, 3, 4, 5], vec![3, 7]].into_iter().enumerate() {
        let seed = seed as u64;
        let mut rng = Rng::new(seed);
        let (a, b) = (
            random_tensor(&mut rng, &shape),
            random_tensor(&mut rng, &shape),
        );
        let y = Add::new().forward(&[&a, &b], false).unwrap();
        assert_eq!(y.shape, shape);
        for i in 0..y.len() {
            assert_eq!(y.data[i], a.data[i] + b.data[i], "at {i}");
        }
        check_inputs(
            "add",
            seed,
            &Add::new(),
            &[a, b],
            |l, xs, train| l.forward(xs, train).unwrap(),
            |l, g| l.backward(g).unwrap(),
        );
    }
}

#[test]
fn concat_places_inputs_in_order_along_the_channels() {
    let mut rng = Rng::new(3);
    let xs: Vec<Tensor> = [1, 3, 2]
        .iter()
        .map(|&c| random_tensor(&mut rng, &[2, c, 3, 4]))
        .collect();
    let refs: Vec<&Tensor> = xs.iter().collect();
    let y = Concat::new().forward(&refs, false).unwrap();
    assert_eq!(y.shape, vec![2, 6, 3, 4]);
    let first_channel = [0, 1, 4];
    for b in 0..2 {
        for (x, &c0) in xs.iter().zip(&first_channel) {
            for c in 0..x.shape[1] {
                for i in 0..3 {
                    for j in 0..4 {
                        assert_eq!(at(&y, b, c0 + c, i, j), at(x, b, c, i, j));
                    }
                }
            }
        }
    }
}

#[test]
fn concat_gradients_match_finite_differences_for_every_input() {
    let mut rng = Rng::new(4);
    // Three NCHW inputs of different channel counts, a single input, and flat [B, features] inputs.
    let cases: Vec<Vec<Tensor>> = vec![
        [2, 1, 3]
            .iter()
            .map(|&c| random_tensor(&mut rng, &[2, c, 3, 2]))
            .collect(),
        vec![random_tensor(&mut rng, &[3, 2, 2, 2])],
        vec![
            random_tensor(&mut rng, &[2, 3]),
            random_tensor(&mut rng, &[2, 5]),
        ],
    ];
    for (seed, inputs) in cases.iter().enumerate() {
        check_inputs(
            "concat",
            seed as u64,
            &Concat::new(),
            inputs,
            |l, xs, train| l.forward(xs, train).unwrap(),
            |l, g| l.backward(g).unwrap(),
        );
    }
}

#[test]
fn pad_surrounds_the_input_with_zeros_and_its_gradient_matches_finite_differences() {
    let cases = [
        Pad::spatial(1, 2, 0, 3),
        Pad::channels(2, 1),
        Pad::new((1, 0), (0, 1), (2, 1)),
    ];
    for (seed, pad) in cases.iter().enumerate() {
        let mut rng = Rng::new(10 + seed as u64);
        let x = random_tensor(&mut rng, &[2, 3, 3, 4]);
        let y = pad.clone().forward(&x, false).unwrap();
        let (c2, h2, w2) = (
            3 + pad.front + pad.back,
            3 + pad.top + pad.bottom,
            4 + pad.left + pad.right,
        );
        assert_eq!(y.shape, vec![2, c2, h2, w2]);
        for b in 0..2 {
            for c in 0..c2 {
                for i in 0..h2 {
                    for j in 0..w2 {
                        let inside = (pad.front..pad.front + 3).contains(&c)
                            && (pad.top..pad.top + 3).contains(&i)
                            && (pad.left..pad.left + 4).contains(&j);
                        let want = if inside {
                            at(&x, b, c - pad.front, i - pad.top, j - pad.left)
                        } else {
                            0.0
                        };
                        assert_eq!(at(&y, b, c, i, j), want, "case {seed} at {b},{c},{i},{j}");
                    }
                }
            }
        }
        check_single(
            "pad",
            seed as u64,
            pad,
            &x,
            |l, x, train| l.forward(x, train).unwrap(),
            |l, g| l.backward(g).unwrap(),
        );
    }
}

#[test]
fn slice_takes_strided_ranges_and_its_gradient_matches_finite_differences() {
    let cases = [
        Slice::subsample(2, 2),
        Slice::new(
            AxisSlice::new(1, 3, 1),
            AxisSlice::all(),
            AxisSlice::new(1, 5, 3),
        ),
        Slice::new(
            AxisSlice::every(2),
            AxisSlice::new(2, 100, 2),
            AxisSlice::new(4, 5, 1),
        ),
    ];
    for (seed, slice) in cases.iter().enumerate() {
        let mut rng = Rng::new(20 + seed as u64);
        // Odd sizes: a step of 2 over 5 rows takes 3 of them.
        let x = random_tensor(&mut rng, &[2, 3, 5, 5]);
        let y = slice.clone().forward(&x, false).unwrap();
        let idx = |s: &AxisSlice, n: usize| -> Vec<usize> {
            (s.start..s.end.min(n)).step_by(s.step).collect()
        };
        let (cs, rs, ks) = (
            idx(&slice.channels, 3),
            idx(&slice.rows, 5),
            idx(&slice.cols, 5),
        );
        assert_eq!(y.shape, vec![2, cs.len(), rs.len(), ks.len()]);
        for b in 0..2 {
            for (ci, &c) in cs.iter().enumerate() {
                for (ri, &r) in rs.iter().enumerate() {
                    for (ki, &k) in ks.iter().enumerate() {
                        assert_eq!(at(&y, b, ci, ri, ki), at(&x, b, c, r, k));
                    }
                }
            }
        }
        check_single(
            "slice",
            seed as u64,
            slice,
            &x,
            |l, x, train| l.forward(x, train).unwrap(),
            |l, g| l.backward(g).unwrap(),
        );
    }
}

#[test]
fn option_a_shortcut_subsamples_then_zero_pads_the_channels() {
    // 4 -> 8 channels at half resolution, as between CIFAR ResNet stages (16 -> 32 there).
    let mut rng = Rng::new(30);
    let x = random_tensor(&mut rng, &[2, 4, 6, 6]);
    let mut sub = Slice::subsample(2, 2);
    let mut pad = Pad::channels(2, 2);
    let y = pad.forward(&sub.forward(&x, true).unwrap(), true).unwrap();
    assert_eq!(y.shape, vec![2, 8, 3, 3]);
    for b in 0..2 {
        for c in 0..8 {
            for i in 0..3 {
                for j in 0..3 {
                    let want = if (2..6).contains(&c) {
                        at(&x, b, c - 2, 2 * i, 2 * j)
                    } else {
                        0.0
                    };
                    assert_eq!(at(&y, b, c, i, j), want);
                }
            }
        }
    }
    let g = random_tensor(&mut rng, &y.shape);
    let dx = sub.backward(&pad.backward(&g).unwrap()).unwrap();
    assert_eq!(dx.shape, x.shape);
    assert_eq!(at(&dx, 1, 1, 2, 4), at(&g, 1, 3, 1, 2));
    assert_eq!(at(&dx, 1, 1, 1, 4), 0.0, "odd rows were not taken");
}

/// Values in [-2, 8) at least 5H away from ReLU6's bounds 0 and 6, so no perturbation crosses them.
fn clear_of_bounds(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let mut x = random_tensor_in(rng, shape, -2.0, 8.0);
    for v in &mut x.data {
        for bound in [0.0f32, 6.0] {
            if (*v - bound).abs() < 5.0 * H {
                *v = bound + if *v < bound { -0.5 } else { 0.5 };
            }
        }
    }
    x
}

#[test]
fn clip_gradient_matches_finite_differences_away_from_its_bounds() {
    for (seed, clip) in [Clip::relu6(), Clip::new(-1.0, 2.5).unwrap()]
        .iter()
        .enumerate()
    {
        let mut rng = Rng::new(40 + seed as u64);
        let mut x = clear_of_bounds(&mut rng, &[3, 2, 4, 4]);
        for v in &mut x.data {
            // Keep Clip(-1, 2.5)'s bounds clear too.
            for bound in [clip.min, clip.max] {
                if (*v - bound).abs() < 5.0 * H {
                    *v = bound + 0.5;
                }
            }
        }
        let dx = {
            let mut l = clip.clone();
            l.forward(&x, true).unwrap();
            l.backward(&Tensor::new(vec![1.0; x.len()], x.shape.clone()))
                .unwrap()
        };
        assert!(
            dx.data.contains(&0.0) && dx.data.contains(&1.0),
            "both sides taken"
        );
        check_single(
            "clip",
            seed as u64,
            clip,
            &x,
            |l, x, train| l.forward(x, train).unwrap(),
            |l, g| l.backward(g).unwrap(),
        );
    }
}

#[test]
fn relu6_clamps_to_0_and_6_passes_nan_and_no_gradient_on_its_bounds() {
    let x = Tensor::new(
        vec![-3.0, 0.0, 0.5, 6.0, 7.5, f32::NAN, 5.99, -0.0],
        vec![1, 8],
    );
    let mut relu6 = Clip::relu6();
    let y = relu6.forward(&x, true).unwrap();
    assert_eq!(y.data[..5], [0.0, 0.0, 0.5, 6.0, 6.0]);
    assert!(y.data[5].is_nan());
    assert_eq!(y.data[6], 5.99);
    let dx = relu6
        .backward(&Tensor::new(vec![1.0; 8], vec![1, 8]))
        .unwrap();
    // Exactly on a bound the value is clipped: gradient 0 there, as for x outside.
    assert_eq!(dx.data, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
}

#[test]
fn avgpool_gradients_match_finite_differences_on_overlapping_windows_and_odd_global_planes() {
    let mut rng = Rng::new(50);
    let x = random_tensor(&mut rng, &[2, 2, 7, 5]);
    for (seed, pool) in [
        AvgPool2d::new((3, 3), (2, 2)),
        AvgPool2d::new((2, 3), (3, 1)),
        AvgPool2d::global(),
    ]
    .iter()
    .enumerate()
    {
        check_single(
            "avgpool2d",
            seed as u64,
            pool,
            &x,
            |l, x, train| l.forward(x, train).unwrap(),
            |l, g| l.backward(g).unwrap(),
        );
    }
}

#[test]
fn output_shapes_agree_with_the_forward_passes_of_every_layer() {
    let mut rng = Rng::new(60);
    let x = random_tensor(&mut rng, &[2, 4, 7, 6]);
    let sample = &x.shape[1..];
    let per_sample = |t: &Tensor| t.shape[1..].to_vec();
    let mut conv = Conv2d::new(4, 3, (3, 2), (2, 1), (1, 0), &mut rng);
    assert_eq!(
        conv.output_shape(sample).unwrap(),
        per_sample(&conv.forward(&x, false).unwrap())
    );
    let mut dw = Conv2d::depthwise(4, 2, (3, 3), (2, 2), (1, 1), &mut rng).unwrap();
    assert_eq!(
        dw.output_shape(sample).unwrap(),
        per_sample(&dw.forward(&x, false).unwrap())
    );
    let mut grouped = Conv2d::new_grouped(4, 6, (1, 3), (1, 1), (0, 1), 2, &mut rng).unwrap();
    assert_eq!(
        grouped.output_shape(sample).unwrap(),
        per_sample(&grouped.forward(&x, false).unwrap())
    );
    let mut max = MaxPool2d::new((3, 2), (2, 2));
    assert_eq!(
        max.output_shape(sample).unwrap(),
        per_sample(&max.forward(&x, false).unwrap())
    );
    for mut avg in [AvgPool2d::new((2, 2), (2, 2)), AvgPool2d::global()] {
        assert_eq!(
            avg.output_shape(sample).unwrap(),
            per_sample(&avg.forward(&x, false).unwrap())
        );
    }
    let mut bn = BatchNorm2d::new(4);
    assert_eq!(
        bn.output_shape(sample).unwrap(),
        per_sample(&bn.forward(&x, false).unwrap())
    );
    let mut relu = Relu::new();
    assert_eq!(
        relu.output_shape(sample).unwrap(),
        per_sample(&relu.forward(&x, false))
    );
    let mut drop = Dropout::new(0.5, 1).unwrap();
    assert_eq!(
        drop.output_shape(sample).unwrap(),
        per_sample(&drop.forward(&x, true))
    );
    let mut clip = Clip::relu6();
    assert_eq!(
        clip.output_shape(sample).unwrap(),
        per_sample(&clip.forward(&x, false).unwrap())
    );
    let mut flat = Flatten::new();
    let flat_y = flat.forward(&x);
    assert_eq!(flat.output_shape(sample).unwrap(), per_sample(&flat_y));
    let mut dense = Dense::new(168, 5, &mut rng);
    assert_eq!(dense.output_shape(sample).unwrap(), vec![5]);
    assert_eq!(
        dense.output_shape(&[168]).unwrap(),
        per_sample(&dense.forward(&flat_y, false).unwrap())
    );
    let mut pad = Pad::new((1, 2), (0, 1), (3, 0));
    assert_eq!(
        pad.output_shape(sample).unwrap(),
        per_sample(&pad.forward(&x, false).unwrap())
    );
    let mut slice = Slice::new(
        AxisSlice::new(1, 4, 2),
        AxisSlice::every(3),
        AxisSlice::new(0, 5, 2),
    );
    assert_eq!(
        slice.output_shape(sample).unwrap(),
        per_sample(&slice.forward(&x, false).unwrap())
    );
    let x2 = random_tensor(&mut rng, &[2, 3, 7, 6]);
    assert_eq!(
        Add::new().output_shape(&[sample, sample]).unwrap(),
        per_sample(&Add::new().forward(&[&x, &x], false).unwrap())
    );
    assert_eq!(
        Concat::new()
            .output_shape(&[sample, &x2.shape[1..]])
            .unwrap(),
        per_sample(&Concat::new().forward(&[&x, &x2], false).unwrap())
    );
}

#[test]
fn multi_input_layers_reject_wrong_input_counts_and_shapes_with_shape_errors() {
    let mut rng = Rng::new(70);
    let a = random_tensor(&mut rng, &[2, 3, 4, 4]);
    let b = random_tensor(&mut rng, &[2, 3, 4, 5]);
    let c = random_tensor(&mut rng, &[3, 3, 4, 4]);
    let mut add = Add::new();
    assert!(is_shape_error(add.forward(&[&a], false)));
    assert!(is_shape_error(add.forward(&[&a, &a, &a], false)));
    assert!(is_shape_error(add.forward(&[&a, &b], false)));
    assert!(is_shape_error(add.output_shape(&[&[3, 4, 4], &[3, 4, 5]])));
    assert!(is_shape_error(add.output_shape(&[&[3, 4, 4]])));
    let mut concat = Concat::new();
    assert!(is_shape_error(concat.forward(&[], false)));
    assert!(
        is_shape_error(concat.forward(&[&a, &b], false)),
        "different widths"
    );
    assert!(
        is_shape_error(concat.forward(&[&a, &c], false)),
        "different batches"
    );
    assert!(is_shape_error(concat.output_shape(&[])));
    assert!(is_shape_error(concat.output_shape(&[&[3, 4, 4], &[3, 4]])));
    // A tensor whose data does not match its shape.
    let broken = Tensor {
        data: vec![0.0; 5],
        shape: vec![2, 3, 4, 4],
    };
    assert!(is_shape_error(add.forward(&[&broken, &broken], false)));
    assert!(is_shape_error(concat.forward(&[&broken], false)));
}

#[test]
fn single_input_graph_layers_reject_bad_shapes_and_bad_settings_with_typed_errors() {
    let mut rng = Rng::new(71);
    let flat = random_tensor(&mut rng, &[2, 12]);
    let x = random_tensor(&mut rng, &[2, 3, 4, 4]);
    assert!(is_shape_error(
        Pad::spatial(1, 1, 1, 1).forward(&flat, false)
    ));
    assert!(is_shape_error(Pad::channels(1, 1).output_shape(&[3, 4])));
    assert!(is_shape_error(
        Pad::new((usize::MAX, 1), (0, 0), (0, 0)).output_shape(&[3, 4, 4])
    ));
    assert!(is_shape_error(Slice::subsample(2, 2).forward(&flat, false)));
    // Empty selections and a zero step.
    for s in [
        Slice::new(AxisSlice::new(3, 9, 1), AxisSlice::all(), AxisSlice::all()),
        Slice::new(AxisSlice::all(), AxisSlice::new(2, 2, 1), AxisSlice::all()),
        Slice::new(AxisSlice::all(), AxisSlice::all(), AxisSlice::every(0)),
    ] {
        assert!(is_shape_error(s.clone().forward(&x, false)), "{s:?}");
        assert!(is_shape_error(s.output_shape(&[3, 4, 4])), "{s:?}");
    }
    for (lo, hi) in [(1.0, 1.0), (2.0, 1.0), (f32::NAN, 1.0)] {
        assert!(
            matches!(Clip::new(lo, hi), Err(Error::InvalidOption { .. })),
            "{lo}, {hi}"
        );
    }
    assert!(Clip::new(f32::NEG_INFINITY, 6.0).is_ok());
    // Backward without a training forward, or with the wrong gradient shape.
    let g = random_tensor(&mut rng, &[2, 3, 4, 4]);
    assert!(is_shape_error(Add::new().backward(&g)));
    assert!(is_shape_error(Concat::new().backward(&g)));
    assert!(is_shape_error(Pad::channels(1, 1).backward(&g)));
    assert!(is_shape_error(Slice::subsample(2, 2).backward(&g)));
    assert!(is_shape_error(Clip::relu6().backward(&g)));
    let mut pad = Pad::channels(1, 1);
    pad.forward(&x, true).unwrap();
    assert!(is_shape_error(pad.backward(&g)));
    let mut add = Add::new();
    add.forward(&[&x, &x], false).unwrap();
    assert!(
        is_shape_error(add.backward(&g)),
        "an inference forward keeps nothing for backward"
    );
}

#[test]
fn existing_layers_shape_inference_rejects_what_their_forward_rejects() {
    let mut rng = Rng::new(72);
    let conv = Conv2d::new(3, 4, (5, 5), (1, 1), (0, 0), &mut rng);
    assert!(is_shape_error(conv.output_shape(&[2, 8, 8])), "channels");
    assert!(
        is_shape_error(conv.output_shape(&[3, 4, 8])),
        "kernel larger than the input"
    );
    assert!(is_shape_error(conv.output_shape(&[3, 8])), "not [C, H, W]");
    assert!(is_shape_error(
        MaxPool2d::new((3, 3), (1, 1)).output_shape(&[1, 2, 5])
    ));
    assert!(is_shape_error(AvgPool2d::global().output_shape(&[4])));
    assert!(is_shape_error(BatchNorm2d::new(3).output_shape(&[4, 2, 2])));
    assert!(is_shape_error(
        Dense::new(12, 2, &mut rng).output_shape(&[3, 5])
    ));
    assert!(is_shape_error(
        Flatten::new().output_shape(&[usize::MAX, 2])
    ));
    assert!(is_shape_error(
        Conv2d::new(1, 1, (3, 3), (1, 1), (usize::MAX, 0), &mut rng).output_shape(&[1, 4, 4])
    ));
}
