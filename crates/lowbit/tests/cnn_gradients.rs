//! Finite-difference gradient checks for the spatial layers (Conv2d, MaxPool2d, AvgPool2d, BatchNorm2d,
//! Dropout) and a small whole CNN.
//!
//! Same scheme and tolerances as `nn_gradients.rs`: central differences with step H on a scalar objective
//! accumulated in f64, |fd - analytic| <= ATOL + RTOL * |analytic|.
//! - Conv2d, the pools and dropout with a fixed mask are linear in each input, so the central difference has no
//!   truncation error; only f32 rounding (~2e-6 on objectives of magnitude <= ~10, / 2H -> ~1e-4) remains:
//!   ATOL = 5e-4.
//! - Max pooling is linear as long as no window's maximum changes; inputs are drawn with gaps of at least 5H
//!   between any two values, so a perturbation of H never reorders them.
//! - Batch norm is smooth; with unit-scale inputs and N >= 18 values per channel its third derivative is O(1),
//!   so the truncation error is ~H^2 = 1e-4, within ATOL.
//!
//! A wrong stride, a padding offset, a missing 1/N or a transposed weight index changes gradients by O(1).
mod common;

use common::grad::{central_difference, check, check_layer, random_tensor, H};
use lowbit::nn::{
    softmax_cross_entropy, AvgPool2d, BatchNorm2d, Conv2d, Dense, Dropout, Flatten, Layer,
    MaxPool2d, Model, Relu,
};
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;

/// Distinct values spaced 0.05 (= 5H) apart, shuffled: no perturbation of H can change an ordering.
fn distinct_tensor(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.05).collect();
    rng.shuffle(&mut v);
    Tensor::new(v, shape.to_vec())
}

#[test]
fn conv2d_gradients_match_finite_differences_with_stride_and_padding() {
    // (ic, oc, kernel, stride, padding, h, w): stride 2 with padding, non-square everything, kernel = input.
    let cases = [
        (2, 3, (3, 3), (2, 2), (1, 1), 7, 6),
        (1, 2, (5, 3), (1, 2), (2, 0), 6, 7),
        (3, 2, (2, 2), (1, 1), (0, 0), 4, 5),
        (2, 2, (3, 3), (3, 1), (1, 2), 5, 5),
        (1, 1, (4, 4), (1, 1), (0, 0), 4, 4),
    ];
    for (seed, &(ic, oc, k, s, p, h, w)) in cases.iter().enumerate() {
        let seed = seed as u64;
        let mut rng = Rng::new(seed);
        let mut conv = Conv2d::new(ic, oc, k, s, p, &mut rng);
        for b in &mut conv.bias {
            *b = rng.uniform_range(-1.0, 1.0);
        }
        let x = random_tensor(&mut rng, &[2, ic, h, w]);
        check_layer("conv2d", seed, Layer::Conv2d(conv), &x, false);
    }
}

#[test]
fn conv2d_matches_a_direct_convolution() {
    let mut rng = Rng::new(5);
    let (ic, oc, (kh, kw), (sh, sw), (ph, pw), h, w, b) = (3, 4, (3, 2), (2, 1), (1, 2), 7, 5, 3);
    let mut conv = Conv2d::new(ic, oc, (kh, kw), (sh, sw), (ph, pw), &mut rng);
    for v in &mut conv.bias {
        *v = rng.uniform_range(-1.0, 1.0);
    }
    let x = random_tensor(&mut rng, &[b, ic, h, w]);
    let y = conv.forward(&x, false).unwrap();
    let (oh, ow) = ((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1);
    assert_eq!(y.shape, vec![b, oc, oh, ow]);
    for n in 0..b {
        for o in 0..oc {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = f64::from(conv.bias[o]);
                    for c in 0..ic {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (iy, ix) = (
                                    (oy * sh + ky) as isize - ph as isize,
                                    (ox * sw + kx) as isize - pw as isize,
                                );
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = x.data[((n * ic + c) * h + iy as usize) * w + ix as usize];
                                let wv = conv.weight[o * ic * kh * kw + (c * kh + ky) * kw + kx];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    let got = y.data[((n * oc + o) * oh + oy) * ow + ox];
                    // f32 sum of <= 18 products of magnitude <= 1: error well below 1e-5.
                    assert!(
                        (f64::from(got) - acc).abs() < 1e-5,
                        "at ({n},{o},{oy},{ox}): {got} vs {acc}"
                    );
                }
            }
        }
    }
}

#[test]
fn conv2d_rejects_a_wrong_channel_count_and_a_kernel_larger_than_the_input() {
    let mut rng = Rng::new(1);
    let mut conv = Conv2d::new(2, 3, (5, 5), (1, 1), (0, 0), &mut rng);
    assert!(conv.forward(&Tensor::zeros(&[1, 3, 8, 8]), false).is_err());
    assert!(conv.forward(&Tensor::zeros(&[1, 2, 4, 8]), false).is_err());
    assert!(conv.forward(&Tensor::zeros(&[1, 2, 5, 5]), false).is_ok());
}

#[test]
fn maxpool2d_gradient_matches_finite_differences() {
    for (seed, &(k, s, h, w)) in [
        ((2, 2), (2, 2), 6, 8),
        ((3, 2), (1, 2), 5, 6),
        ((2, 2), (1, 1), 4, 4),
    ]
    .iter()
    .enumerate()
    {
        let mut rng = Rng::new(seed as u64);
        let x = distinct_tensor(&mut rng, &[2, 3, h, w]);
        check_layer(
            "maxpool2d",
            seed as u64,
            Layer::MaxPool2d(MaxPool2d::new(k, s)),
            &x,
            false,
        );
    }
}

#[test]
fn avgpool2d_and_global_pool_gradients_match_finite_differences() {
    let mut rng = Rng::new(3);
    let x = random_tensor(&mut rng, &[2, 3, 6, 5]);
    check_layer(
        "avgpool2d",
        3,
        Layer::AvgPool2d(AvgPool2d::new((2, 2), (2, 2))),
        &x,
        false,
    );
    check_layer(
        "avgpool2d 3x2/1",
        3,
        Layer::AvgPool2d(AvgPool2d::new((3, 2), (1, 1))),
        &x,
        false,
    );
    check_layer(
        "global avgpool",
        3,
        Layer::AvgPool2d(AvgPool2d::global()),
        &x,
        false,
    );
    let y = AvgPool2d::global().forward(&x, false).unwrap();
    assert_eq!(y.shape, vec![2, 3, 1, 1]);
    let mean: f32 = x.data[..30].iter().sum::<f32>() / 30.0;
    assert!((y.data[0] - mean).abs() < 1e-6);
}

#[test]
fn batchnorm2d_training_gradients_match_finite_differences() {
    for seed in 0..3u64 {
        let mut rng = Rng::new(seed);
        let mut bn = BatchNorm2d::new(3);
        for (g, b) in bn.gamma.iter_mut().zip(&mut bn.beta) {
            *g = rng.uniform_range(0.5, 1.5);
            *b = rng.uniform_range(-0.5, 0.5);
        }
        let x = random_tensor(&mut rng, &[2, 3, 3, 3]);
        check_layer("batchnorm2d", seed, Layer::BatchNorm2d(bn), &x, true);
    }
}

#[test]
fn batchnorm2d_normalizes_in_training_and_tracks_running_statistics_like_pytorch() {
    let mut bn = BatchNorm2d::new(1);
    // One channel, values 1..=4: mean 2.5, biased variance 1.25, unbiased 5/3.
    let x = Tensor::new(vec![1.0, 2.0, 3.0, 4.0], vec![2, 1, 1, 2]);
    let y = bn.forward(&x, true).unwrap();
    let s = 1.0 / (1.25f32 + 1e-5).sqrt();
    for (o, v) in y.data.iter().zip([1.0f32, 2.0, 3.0, 4.0]) {
        assert!((o - (v - 2.5) * s).abs() < 1e-6);
    }
    assert!((bn.running_mean[0] - 0.25).abs() < 1e-6);
    assert!((bn.running_var[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6);
    // Inference uses the running statistics.
    let y = bn.forward(&x, false).unwrap();
    let s = 1.0 / (bn.running_var[0] + 1e-5).sqrt();
    assert!((y.data[0] - (1.0 - 0.25) * s).abs() < 1e-6);
}

#[test]
fn dropout_gradient_matches_finite_differences_with_a_fixed_mask() {
    let mut rng = Rng::new(4);
    let x = random_tensor(&mut rng, &[3, 2, 4, 4]);
    let d = Dropout::new(0.4, 11).unwrap();
    let mut probe = d.clone();
    let y = probe.forward(&x, true);
    let zeros = y.data.iter().filter(|&&v| v == 0.0).count();
    // 96 draws at p = 0.4: 38 expected; 15..=60 holds with probability > 1 - 1e-6.
    assert!((15..=60).contains(&zeros), "{zeros} zeros");
    for (o, i) in y.data.iter().zip(&x.data) {
        assert!(*o == 0.0 || (o - i / 0.6).abs() < 1e-6);
    }
    assert_eq!(
        probe.forward(&x, false),
        x,
        "dropout is the identity in inference"
    );
    check_layer("dropout", 4, Layer::Dropout(d), &x, true);
}

/// Whole CNN: conv (stride 2, pad 1) -> ReLU -> maxpool -> conv -> ReLU -> global avgpool -> flatten -> dense.
/// Returns false (without checking) when the seed puts a ReLU input within 2H of its kink or the two largest
/// candidates of a maxpool window within 2H of each other (a perturbation of H moves any of these values by
/// at most H, so with the margin no branch changes). All-zero windows (every input clamped by the ReLU) are
/// fine: their gradient is 0 and stays 0.
fn check_small_cnn(seed: u64) -> bool {
    let mut rng = Rng::new(seed);
    let mut model = Model::sequential(
        "test cnn",
        [1, 6, 6],
        3,
        vec![
            Layer::Conv2d(Conv2d::new(1, 2, (3, 3), (2, 2), (1, 1), &mut rng)),
            Layer::Relu(Relu::new()),
            Layer::MaxPool2d(MaxPool2d::new((2, 2), (2, 2))),
            Layer::Conv2d(Conv2d::new(2, 4, (2, 2), (1, 1), (1, 1), &mut rng)),
            Layer::Relu(Relu::new()),
            Layer::AvgPool2d(AvgPool2d::global()),
            Layer::Flatten(Flatten::new()),
            Layer::Dense(Dense::new(4, 3, &mut rng)),
        ],
    );
    for l in model.layers_mut() {
        if let Layer::Conv2d(c) = l {
            // Doubled weights spread the pre-activations, so more seeds keep them clear of the kink.
            for w in &mut c.weight {
                *w *= 2.0;
            }
            for b in &mut c.bias {
                *b = rng.uniform_range(-0.3, 0.3);
            }
        }
    }
    let x = random_tensor(&mut rng, &[2, 1, 6, 6]);
    let labels = [0u8, 2];
    // Margins on the branch points.
    let mut h = x.clone();
    for l in model.layers_mut() {
        if matches!(l, Layer::Relu(_)) && h.data.iter().any(|v| v.abs() <= 2.0 * H) {
            return false;
        }
        if matches!(l, Layer::MaxPool2d(_)) {
            let [b, c, hh, ww] = h.shape[..] else {
                return false;
            };
            for plane in 0..b * c {
                for oy in 0..hh / 2 {
                    for ox in 0..ww / 2 {
                        // Window (oy, ox) of a 2x2 / stride 2 pool (a trailing odd row or column is unused).
                        let mut v: Vec<f32> = (0..4)
                            .map(|j| {
                                h.data[plane * hh * ww + (2 * oy + j / 2) * ww + 2 * ox + j % 2]
                            })
                            .collect();
                        v.sort_by(|a, b| b.total_cmp(a));
                        if v[0] > 0.0 && v[0] - v[1] <= 2.0 * H {
                            return false;
                        }
                    }
                }
            }
        }
        h = l.forward(&h, false).unwrap();
    }
    let logits = model.forward(&x, true).unwrap();
    let out = softmax_cross_entropy(&logits, &labels).unwrap();
    let dx = model.backward_with_input_grad(&out.grad).unwrap();
    let analytic: Vec<Vec<f32>> = model.params_mut().iter().map(|p| p.grad.to_vec()).collect();
    assert_eq!(analytic.len(), 6);
    let loss = |m: &mut Model, x: &Tensor| {
        let logits = m.forward(x, false).unwrap();
        f64::from(softmax_cross_entropy(&logits, &labels).unwrap().loss)
    };
    for (p, grads) in analytic.iter().enumerate() {
        let mut st = (model.clone(), x.clone());
        for (i, &g) in grads.iter().enumerate() {
            let fd = central_difference(
                &mut st,
                i,
                |s| s.0.params_mut().remove(p).value,
                |s| loss(&mut s.0, &s.1),
            );
            check(&format!("cnn param {p}"), seed, i, fd, g);
        }
    }
    let mut st = (model, x.clone());
    for i in 0..x.len() {
        let fd = central_difference(&mut st, i, |s| &mut s.1.data, |s| loss(&mut s.0, &s.1));
        check("cnn dX", seed, i, fd, dx.data[i]);
    }
    true
}

#[test]
fn small_cnn_gradients_match_finite_differences() {
    let checked = (0..200u64).filter(|&s| check_small_cnn(s)).take(2).count();
    assert_eq!(
        checked, 2,
        "fewer than 2 of 200 seeds kept the branch points clear"
    );
}
