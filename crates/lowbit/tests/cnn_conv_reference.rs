//! Conv2d against a naive direct convolution (f64), on shapes that hit the kernels' tails (planes not a multiple
//! of 8, channel counts not a multiple of the tiles, batches not a multiple of the backward sample groups), and
//! bit-identical results whatever the rayon thread count.
//!
//! No tolerance: inputs, weights and gradients are multiples of 1/8 in [-1, 1], so every product is a multiple of
//! 1/64 and every partial sum (at most 8624 terms here, |sum| < 2^13) is exact in f32 whatever the summation
//! order. Any difference from the f64 reference is a bug, not rounding.
use lowbit::nn::Conv2d;
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;

struct Case {
    batch: usize,
    c_in: usize,
    hw: (usize, usize),
    oc: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
}

const CASES: &[Case] = &[
    // LeNet conv1 and conv2 at a batch that leaves a partial sample group.
    Case {
        batch: 11,
        c_in: 1,
        hw: (28, 28),
        oc: 6,
        kernel: (5, 5),
        stride: (1, 1),
        padding: (2, 2),
    },
    Case {
        batch: 9,
        c_in: 6,
        hw: (14, 14),
        oc: 16,
        kernel: (5, 5),
        stride: (1, 1),
        padding: (0, 0),
    },
    // Strides, asymmetric kernel and padding, 7 output channels.
    Case {
        batch: 3,
        c_in: 3,
        hw: (9, 7),
        oc: 7,
        kernel: (3, 2),
        stride: (2, 1),
        padding: (1, 0),
    },
    Case {
        batch: 2,
        c_in: 2,
        hw: (5, 6),
        oc: 1,
        kernel: (1, 1),
        stride: (2, 3),
        padding: (0, 1),
    },
];

/// Multiples of 1/8 in [-1, 1].
fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.uniform_range(-8.0, 8.0)).round() / 8.0)
        .collect()
}

struct Reference {
    y: Vec<f64>,
    dw: Vec<f64>,
    db: Vec<f64>,
    dx: Vec<f64>,
}

/// Direct convolution and its gradients for upstream gradient `g`.
fn reference(c: &Case, x: &[f32], w: &[f32], bias: &[f32], g: &[f32]) -> Reference {
    let (h, wd) = c.hw;
    let (kh, kw) = c.kernel;
    let oh = (h + 2 * c.padding.0 - kh) / c.stride.0 + 1;
    let ow = (wd + 2 * c.padding.1 - kw) / c.stride.1 + 1;
    let k = c.c_in * kh * kw;
    let mut r = Reference {
        y: vec![0.0; c.batch * c.oc * oh * ow],
        dw: vec![0.0; c.oc * k],
        db: vec![0.0; c.oc],
        dx: vec![0.0; x.len()],
    };
    for s in 0..c.batch {
        for (o, &bo) in bias.iter().enumerate() {
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((s * c.oc + o) * oh + oy) * ow + ox;
                    let gv = f64::from(g[yi]);
                    let mut acc = f64::from(bo);
                    r.db[o] += gv;
                    for ic in 0..c.c_in {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * c.stride.0 + ky) as isize - c.padding.0 as isize;
                                let ix = (ox * c.stride.1 + kx) as isize - c.padding.1 as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((s * c.c_in + ic) * h + iy as usize) * wd + ix as usize;
                                let wi = o * k + (ic * kh + ky) * kw + kx;
                                acc += f64::from(w[wi]) * f64::from(x[xi]);
                                r.dw[wi] += gv * f64::from(x[xi]);
                                r.dx[xi] += gv * f64::from(w[wi]);
                            }
                        }
                    }
                    r.y[yi] = acc;
                }
            }
        }
    }
    r
}

fn exact(what: &str, case: usize, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what} case {case}: length");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            f64::from(a) == b,
            "{what} case {case} at {i}: got {a}, want {b}"
        );
    }
}

/// Forward and backward of a fresh layer; returns (y, dW, db, dX).
fn run(c: &Case, w: &[f32], bias: &[f32], x: &Tensor, g: &[f32]) -> [Vec<f32>; 4] {
    let mut conv = Conv2d::from_weights(
        c.c_in,
        c.oc,
        c.kernel,
        c.stride,
        c.padding,
        w.to_vec(),
        bias.to_vec(),
    );
    let y = conv.forward(x, true).unwrap();
    let eval = conv.clone().forward(x, false).unwrap();
    assert_eq!(eval.data, y.data, "inference and training forward differ");
    let dx = conv
        .backward(&Tensor::new(g.to_vec(), y.shape.clone()))
        .unwrap();
    [
        y.data,
        conv.grad_weight.clone(),
        conv.grad_bias.clone(),
        dx.data,
    ]
}

#[test]
fn conv2d_matches_a_direct_convolution_and_is_identical_across_thread_counts() {
    for (ci, c) in CASES.iter().enumerate() {
        let mut rng = Rng::new(100 + ci as u64);
        let k = c.c_in * c.kernel.0 * c.kernel.1;
        let w = random(&mut rng, c.oc * k);
        let bias = random(&mut rng, c.oc);
        let x = Tensor::new(
            random(&mut rng, c.batch * c.c_in * c.hw.0 * c.hw.1),
            vec![c.batch, c.c_in, c.hw.0, c.hw.1],
        );
        let oh = (c.hw.0 + 2 * c.padding.0 - c.kernel.0) / c.stride.0 + 1;
        let ow = (c.hw.1 + 2 * c.padding.1 - c.kernel.1) / c.stride.1 + 1;
        let g = random(&mut rng, c.batch * c.oc * oh * ow);
        let want = reference(c, &x.data, &w, &bias, &g);
        let mut runs = Vec::new();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            runs.push(pool.install(|| run(c, &w, &bias, &x, &g)));
        }
        let [y, dw, db, dx] = &runs[0];
        exact("y", ci, y, &want.y);
        exact("dW", ci, dw, &want.dw);
        exact("db", ci, db, &want.db);
        exact("dX", ci, dx, &want.dx);
        for (t, other) in runs.iter().enumerate().skip(1) {
            for (part, (a, b)) in ["y", "dW", "db", "dX"]
                .iter()
                .zip(runs[0].iter().zip(other))
            {
                let same = a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(
                    same,
                    "case {ci}: {part} differs between 1 and {} threads",
                    t + 1
                );
            }
        }
    }
}
