//! Max pooling against a naive reference: the 2x2 / stride 2 fast path and the general path must pick the same
//! maximum (first in row-major order on ties, NaN over numbers) and route gradients to it.
use lowbit::nn::MaxPool2d;
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;

/// Naive max pooling: output values and the flat input index (within the plane) of each window's maximum.
fn reference(x: &Tensor, k: (usize, usize), s: (usize, usize)) -> (Vec<f32>, Vec<usize>) {
    let [b, c, h, w] = x.shape[..] else {
        panic!("not NCHW")
    };
    let (oh, ow) = ((h - k.0) / s.0 + 1, (w - k.1) / s.1 + 1);
    let (mut y, mut arg) = (Vec::new(), Vec::new());
    for plane in x.data.chunks(h * w).take(b * c) {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<usize> = None;
                for ky in 0..k.0 {
                    for kx in 0..k.1 {
                        let i = (oy * s.0 + ky) * w + ox * s.1 + kx;
                        best = match best {
                            None => Some(i),
                            Some(j) if plane[j].is_nan() => Some(j),
                            Some(_) if plane[i].is_nan() => Some(i),
                            Some(j) if plane[i] > plane[j] => Some(i),
                            keep => keep,
                        };
                    }
                }
                let i = best.expect("window not empty");
                y.push(plane[i]);
                arg.push(i);
            }
        }
    }
    (y, arg)
}

/// Values from a small set so windows often tie; a few NaNs.
fn tie_heavy(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            let r = rng.uniform_range(0.0, 1.0);
            if r < 0.03 {
                f32::NAN
            } else {
                (r * 4.0).floor() - 2.0
            }
        })
        .collect();
    Tensor::new(data, shape.to_vec())
}

#[test]
fn max_pooling_matches_the_naive_reference_on_ties_nans_and_odd_sizes() {
    for seed in 0..6u64 {
        let mut rng = Rng::new(seed);
        for &(shape, k, s) in &[
            ([2, 3, 28, 28], (2, 2), (2, 2)),
            ([1, 2, 5, 7], (2, 2), (2, 2)),
            ([3, 1, 2, 2], (2, 2), (2, 2)),
            ([2, 2, 9, 8], (3, 3), (2, 2)),
            ([1, 3, 6, 6], (2, 2), (1, 1)),
        ] {
            let x = tie_heavy(&mut rng, &shape);
            let (want_y, want_arg) = reference(&x, k, s);
            let mut pool = MaxPool2d::new(k, s);
            let y = pool.forward(&x, true).unwrap();
            for (i, (a, b)) in y.data.iter().zip(&want_y).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan(),
                    "seed {seed} shape {shape:?} k {k:?} s {s:?} output {i}: {a} vs {b}"
                );
            }
            let eval = MaxPool2d::new(k, s).forward(&x, false).unwrap();
            assert_eq!(
                eval.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                y.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "inference output differs from training output"
            );
            // Gradient: output i sends (i + 1) to the input its maximum came from.
            let g = Tensor::new(
                (0..y.len()).map(|i| (i + 1) as f32).collect(),
                y.shape.clone(),
            );
            let dx = pool.backward(&g).unwrap();
            let [_, _, h, w] = shape;
            let op = y.len() / (shape[0] * shape[1]);
            let mut want_dx = vec![0.0f32; x.len()];
            for (i, &a) in want_arg.iter().enumerate() {
                want_dx[(i / op) * h * w + a] += (i + 1) as f32;
            }
            assert_eq!(
                dx.data, want_dx,
                "seed {seed} shape {shape:?} k {k:?} s {s:?}"
            );
        }
    }
}
