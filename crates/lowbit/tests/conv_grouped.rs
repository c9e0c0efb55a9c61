//! Grouped and depthwise convolutions: finite-difference gradients (scheme and tolerances of `cnn_gradients.rs`),
//! an f64 direct convolution, equality with independent per-group convolutions, batch-norm folding, the
//! fake-quantized weight path, thread-count independence and typed errors. The timing against the dense
//! convolution is an ignored test:
//! `cargo test --release -p lowbit --test conv_grouped -- --ignored --nocapture`
mod common;

use common::grad::{check_layer, random_batch_norm, random_tensor};
use lowbit::error::Error;
use lowbit::nn::{Conv2d, Layer};
use lowbit::quant::{ConvBn2d, WeightQuantKind, WeightQuantizer};
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;

/// (in, out, groups, kernel, stride, padding, h, w, batch): groups 2, depthwise, channel multiplier 2, groups 1,
/// strides 1-2 (and 3 once), paddings 0-2, odd and non-square sizes, a batch of 10 (two weight-gradient groups).
type Case = (
    usize,
    usize,
    usize,
    (usize, usize),
    (usize, usize),
    (usize, usize),
    usize,
    usize,
    usize,
);
const CASES: [Case; 9] = [
    (4, 6, 2, (3, 3), (1, 1), (1, 1), 5, 7, 2),
    (3, 3, 3, (3, 3), (2, 2), (1, 1), 7, 6, 2),
    (3, 6, 3, (3, 3), (1, 1), (2, 2), 5, 5, 2),
    (2, 4, 2, (3, 2), (2, 1), (0, 1), 7, 5, 2),
    (4, 4, 1, (3, 3), (2, 2), (1, 1), 5, 5, 2),
    (6, 4, 2, (1, 1), (2, 2), (0, 0), 5, 5, 2),
    (4, 4, 4, (5, 5), (1, 1), (2, 2), 5, 5, 2),
    (2, 2, 2, (3, 3), (1, 2), (0, 2), 3, 4, 10),
    (6, 9, 3, (2, 3), (3, 2), (1, 0), 8, 7, 3),
];

/// The layer of a case, with a random bias.
fn layer(seed: u64, case: &Case) -> Conv2d {
    let &(ic, oc, g, k, s, p, ..) = case;
    let mut rng = Rng::new(seed);
    let mut conv = Conv2d::new_grouped(ic, oc, k, s, p, g, &mut rng).unwrap();
    conv.bias = rng.uniform_vec(oc, -1.0, 1.0);
    conv
}

fn input(seed: u64, case: &Case) -> Tensor {
    let &(ic, .., h, w, b) = case;
    random_tensor(&mut Rng::new(seed + 1000), &[b, ic, h, w])
}

fn assert_near(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol, "{what} at {i}: {a} vs {b}");
    }
}

#[test]
fn grouped_and_depthwise_conv_gradients_match_finite_differences() {
    for (seed, case) in CASES.iter().enumerate() {
        let seed = seed as u64;
        let x = input(seed, case);
        check_layer(
            &format!("conv {case:?}"),
            seed,
            Layer::Conv2d(layer(seed, case)),
            &x,
            false,
        );
    }
}

#[test]
fn grouped_conv_matches_a_direct_f64_convolution() {
    for (seed, case) in CASES.iter().enumerate() {
        let seed = seed as u64;
        let &(ic, oc, g, (kh, kw), (sh, sw), (ph, pw), h, w, b) = case;
        let mut conv = layer(seed, case);
        let x = input(seed, case);
        let y = conv.forward(&x, false).unwrap();
        let (oh, ow) = ((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1);
        assert_eq!(y.shape, vec![b, oc, oh, ow]);
        let (cig, ocg) = (ic / g, oc / g);
        for n in 0..b {
            for o in 0..oc {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = f64::from(conv.bias[o]);
                        for ci in 0..cig {
                            let c = (o / ocg) * cig + ci;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let (iy, ix) = (
                                        (oy * sh + ky) as isize - ph as isize,
                                        (ox * sw + kx) as isize - pw as isize,
                                    );
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xv =
                                        x.data[((n * ic + c) * h + iy as usize) * w + ix as usize];
                                    let wv = conv.weight[((o * cig + ci) * kh + ky) * kw + kx];
                                    acc += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        let got = y.data[((n * oc + o) * oh + oy) * ow + ox];
                        // f32 sum of <= 28 products of magnitude <= 1 plus the bias: error well below 1e-5.
                        assert!(
                            (f64::from(got) - acc).abs() < 1e-5,
                            "case {seed} at ({n},{o},{oy},{ox}): {got} vs {acc}"
                        );
                    }
                }
            }
        }
    }
}

/// Channels `[from, from + n)` of every sample of `t` (`[B, C, H, W]`).
fn channels(t: &Tensor, from: usize, n: usize) -> Tensor {
    let [b, c, h, w] = t.shape[..] else {
        panic!("not NCHW")
    };
    let plane = h * w;
    let mut data = Vec::with_capacity(b * n * plane);
    for s in 0..b {
        data.extend_from_slice(&t.data[(s * c + from) * plane..(s * c + from + n) * plane]);
    }
    Tensor::new(data, vec![b, n, h, w])
}

#[test]
fn grouped_conv_equals_independent_per_group_convs_forward_and_backward() {
    for (seed, case) in CASES.iter().enumerate() {
        let seed = seed as u64;
        let &(ic, oc, g, k, s, p, ..) = case;
        let (cig, ocg) = (ic / g, oc / g);
        let kg = cig * k.0 * k.1;
        let mut conv = layer(seed, case);
        let x = input(seed, case);
        let y = conv.forward(&x, true).unwrap();
        let r = random_tensor(&mut Rng::new(seed + 7), &y.shape);
        let dx = conv.backward(&r).unwrap();
        for gi in 0..g {
            let mut part = Conv2d::from_weights(
                cig,
                ocg,
                k,
                s,
                p,
                conv.weight[gi * ocg * kg..(gi + 1) * ocg * kg].to_vec(),
                conv.bias[gi * ocg..(gi + 1) * ocg].to_vec(),
            );
            let yg = part.forward(&channels(&x, gi * cig, cig), true).unwrap();
            let dxg = part.backward(&channels(&r, gi * ocg, ocg)).unwrap();
            let what = |t: &str| format!("case {seed} group {gi} {t}");
            // Same sums (at most 28 terms of magnitude <= 1 per output; dW over B*OH*OW <= 700 products) in
            // possibly another order or rounding (the depthwise kernel is not the im2col product).
            assert_near(
                &what("y"),
                &channels(&y, gi * ocg, ocg).data,
                &yg.data,
                1e-5,
            );
            assert_near(
                &what("dx"),
                &channels(&dx, gi * cig, cig).data,
                &dxg.data,
                1e-5,
            );
            assert_near(
                &what("dW"),
                &conv.grad_weight[gi * ocg * kg..(gi + 1) * ocg * kg],
                &part.grad_weight,
                1e-4,
            );
            assert_near(
                &what("db"),
                &conv.grad_bias[gi * ocg..(gi + 1) * ocg],
                &part.grad_bias,
                1e-4,
            );
        }
    }
}

#[test]
fn groups_of_one_build_the_same_layer_as_the_dense_constructor() {
    let dense = Conv2d::new(3, 5, (3, 3), (1, 1), (1, 1), &mut Rng::new(9));
    let grouped = Conv2d::new_grouped(3, 5, (3, 3), (1, 1), (1, 1), 1, &mut Rng::new(9)).unwrap();
    assert_eq!(grouped.groups(), 1);
    assert_eq!(grouped.weight, dense.weight);
    assert_eq!(grouped.k(), 27);
    let dw = Conv2d::depthwise(4, 2, (3, 3), (1, 1), (1, 1), &mut Rng::new(9)).unwrap();
    assert_eq!(
        (dw.groups(), dw.out_channels, dw.k(), dw.weight.len()),
        (4, 8, 9, 72)
    );
}

#[test]
fn batch_norm_folding_of_a_grouped_conv_gives_the_same_inference_output() {
    for (seed, case) in CASES.iter().enumerate() {
        let seed = seed as u64;
        let mut conv = layer(seed, case);
        let mut bn = random_batch_norm(&mut Rng::new(seed + 50), case.1);
        let x = input(seed, case);
        let want = bn
            .forward(&conv.forward(&x, false).unwrap(), false)
            .unwrap();
        let mut folded = conv.clone();
        folded.fold_batchnorm(&bn).unwrap();
        let got = folded.forward(&x, false).unwrap();
        // Outputs of magnitude <= ~10, the fold rounds each weight once: a few ulps of 10.
        assert_near(
            &format!("case {seed} folded"),
            &got.data,
            &want.data,
            1e-5 * 10.0,
        );
        // The QAT layer with the norm folded in: its inference is exactly its folded convolution, groups kept.
        let mut convbn = ConvBn2d::new(conv.clone(), bn.clone(), None).unwrap();
        let fused = convbn.forward(&x, false).unwrap();
        let mut via = convbn.folded_conv().unwrap();
        assert_eq!(via.groups(), conv.groups());
        let via_y = via.forward(&x, false).unwrap();
        assert_eq!(
            fused.data, via_y.data,
            "case {seed}: ConvBn2d inference vs folded_conv"
        );
        assert_near(
            &format!("case {seed} ConvBn2d"),
            &fused.data,
            &want.data,
            1e-5 * 10.0,
        );
    }
}

#[test]
fn fake_quantized_grouped_weights_use_rows_of_output_channels_and_pass_straight_through() {
    for (seed, case) in CASES.iter().enumerate() {
        let seed = seed as u64;
        for per_channel in [false, true] {
            let mut conv = layer(seed, case);
            conv.weight_quant =
                Some(WeightQuantizer::new(WeightQuantKind::MinMax, 4, per_channel).unwrap());
            let x = input(seed, case);
            let y = conv.forward(&x, true).unwrap();
            let (oc, k) = (conv.out_channels, conv.k());
            let want_q = conv
                .weight_quant
                .as_ref()
                .unwrap()
                .fake_quantize(&conv.weight, oc, k);
            assert_eq!(
                conv.effective_weight(),
                &want_q[..],
                "case {seed}: rows = output channels, cols = k"
            );
            // The same layer in plain f32 holding the fake-quantized weights computes the same function and, the
            // min-max quantizer passing every gradient, the same weight gradient.
            let mut plain = layer(seed, case);
            plain.weight = want_q;
            let y_plain = plain.forward(&x, true).unwrap();
            assert_eq!(y.data, y_plain.data, "case {seed} forward");
            let r = random_tensor(&mut Rng::new(seed + 3), &y.shape);
            let dx = conv.backward(&r).unwrap();
            let dx_plain = plain.backward(&r).unwrap();
            assert_eq!(dx.data, dx_plain.data, "case {seed} dX");
            assert_eq!(conv.grad_weight, plain.grad_weight, "case {seed} dW");
        }
    }
}

/// Forward and backward of `conv` on `x` in a pool of `threads` threads: output, dX, dW, db.
fn run_in_pool(threads: usize, conv: &Conv2d, x: &Tensor) -> [Vec<f32>; 4] {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut c = conv.clone();
        let y = c.forward(x, true).unwrap();
        let g = Tensor::new(y.data.iter().map(|v| v.sin()).collect(), y.shape.clone());
        let dx = c.backward(&g).unwrap();
        [y.data, dx.data, c.grad_weight.clone(), c.grad_bias.clone()]
    })
}

#[test]
fn grouped_and_depthwise_results_do_not_depend_on_the_thread_count() {
    for (seed, (ic, oc, g)) in [(16, 16, 16), (8, 16, 8), (8, 12, 2)]
        .into_iter()
        .enumerate()
    {
        let mut rng = Rng::new(80 + seed as u64);
        let conv = Conv2d::new_grouped(ic, oc, (3, 3), (1, 1), (1, 1), g, &mut rng).unwrap();
        // 37 samples: four full weight-gradient groups of 8 and a partial one.
        let x = random_tensor(&mut rng, &[37, ic, 9, 9]);
        let one = run_in_pool(1, &conv, &x);
        for threads in [2, 3] {
            let many = run_in_pool(threads, &conv, &x);
            for (what, (a, b)) in ["y", "dX", "dW", "db"].iter().zip(one.iter().zip(&many)) {
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(a),
                    bits(b),
                    "groups {g}: {what} with {threads} threads"
                );
            }
        }
    }
}

fn is_shape_error<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
    matches!(r, Err(Error::Shape(_)))
}

#[test]
fn grouped_convs_reject_bad_groups_weights_and_shapes_with_shape_errors() {
    let mut rng = Rng::new(90);
    for (ic, oc, g) in [(4, 6, 3), (3, 4, 2), (4, 4, 0), (0, 4, 1)] {
        assert!(
            is_shape_error(Conv2d::new_grouped(
                ic,
                oc,
                (3, 3),
                (1, 1),
                (0, 0),
                g,
                &mut rng
            )),
            "{ic} {oc} {g}"
        );
    }
    assert!(is_shape_error(Conv2d::depthwise(
        4,
        usize::MAX,
        (3, 3),
        (1, 1),
        (0, 0),
        &mut rng
    )));
    assert!(
        is_shape_error(Conv2d::from_weights_grouped(
            4,
            4,
            (3, 3),
            (1, 1),
            (0, 0),
            2,
            vec![0.0; 4 * 4 * 9],
            vec![0.0; 4]
        )),
        "weights of an ungrouped layer"
    );
    assert!(
        is_shape_error(Conv2d::from_weights_grouped(
            4,
            4,
            (3, 3),
            (1, 1),
            (0, 0),
            4,
            vec![0.0; 36],
            vec![0.0; 3]
        )),
        "bias"
    );
    assert!(Conv2d::from_weights_grouped(
        4,
        4,
        (3, 3),
        (1, 1),
        (0, 0),
        4,
        vec![0.0; 36],
        vec![0.0; 4]
    )
    .is_ok());
    let mut dw = Conv2d::depthwise(4, 1, (3, 3), (2, 2), (1, 1), &mut rng).unwrap();
    assert!(
        is_shape_error(dw.forward(&Tensor::zeros(&[2, 3, 8, 8]), false)),
        "channels"
    );
    assert!(is_shape_error(dw.output_shape(&[3, 8, 8])));
    let g = Tensor::zeros(&[2, 4, 4, 4]);
    assert!(
        is_shape_error(dw.backward(&g)),
        "backward without a forward"
    );
    dw.forward(&Tensor::zeros(&[2, 4, 8, 8]), false).unwrap();
    assert!(
        is_shape_error(dw.backward(&g)),
        "backward after an inference forward"
    );
    dw.forward(&Tensor::zeros(&[2, 4, 8, 8]), true).unwrap();
    assert!(
        is_shape_error(dw.backward(&Tensor::zeros(&[2, 4, 4, 3]))),
        "gradient shape"
    );
    assert!(dw.backward(&g).is_ok());
    let mut grouped = Conv2d::new_grouped(4, 6, (3, 3), (1, 1), (0, 0), 2, &mut rng).unwrap();
    assert!(
        is_shape_error(grouped.forward(&Tensor::zeros(&[1, 4, 2, 8]), false)),
        "kernel larger than the input"
    );
    assert!(is_shape_error(
        grouped.backward(&Tensor::zeros(&[1, 6, 3, 3]))
    ));
}

/// Median of `reps` timings of forward + backward (training mode, input gradient included) in ms.
fn time_step(conv: &mut Conv2d, x: &Tensor, reps: usize) -> f64 {
    let y = conv.forward(x, true).unwrap();
    let g = Tensor::new(vec![0.01; y.len()], y.shape.clone());
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = std::time::Instant::now();
            let y = conv.forward(x, true).unwrap();
            std::hint::black_box(&y);
            std::hint::black_box(conv.backward(&g).unwrap());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

#[test]
#[ignore = "timing; run explicitly in release mode"]
fn depthwise_conv_time_against_the_dense_conv_at_batch_128() {
    let reps = 15;
    println!("forward + backward (with dX), batch 128, 14x14, 3x3, stride 1, padding 1; median of {reps}, {} rayon threads", rayon::current_num_threads());
    for c in [32, 64] {
        let mut rng = Rng::new(c as u64);
        let x = random_tensor(&mut rng, &[128, c, 14, 14]);
        let mut dw = Conv2d::depthwise(c, 1, (3, 3), (1, 1), (1, 1), &mut rng).unwrap();
        let mut dense = Conv2d::new(c, c, (3, 3), (1, 1), (1, 1), &mut rng);
        // Interleaved rounds so both see the same machine load.
        let (mut t_dw, mut t_dense) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            t_dw = t_dw.min(time_step(&mut dw, &x, reps));
            t_dense = t_dense.min(time_step(&mut dense, &x, reps));
        }
        let macs = |per_out: usize| 128.0 * (c * 14 * 14 * per_out) as f64 * 3.0; // forward, dW, dX
        println!(
            "C={c}: depthwise {t_dw:.2} ms ({:.2} GMAC/s), dense {t_dense:.2} ms ({:.2} GMAC/s), dense/depthwise time {:.1}x for {c}x the MACs",
            macs(9) / t_dw / 1e6,
            macs(9 * c) / t_dense / 1e6,
            t_dense / t_dw
        );
    }
}
