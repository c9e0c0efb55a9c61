//! Per-component timings of one training step (ignored by default; run in release with --nocapture).
use std::time::Instant;

use lowbit::nn::gemm::{sgemm, MatRef};
use lowbit::nn::kernels::{gemm_abt, gemm_atb, isa};
use lowbit::nn::{softmax_cross_entropy, Model};
use lowbit::optim::{Optimizer, OptimizerKind};
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;

/// Minimum over repeats of the mean time per call in microseconds: the minimum filters out other processes.
fn time_us(mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t = Instant::now();
        for _ in 0..50 {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / 50.0);
    }
    best
}

#[test]
#[ignore = "timing measurement; run explicitly in release mode"]
fn step_components() {
    let mut rng = Rng::new(3);
    let x: Vec<f32> = (0..32 * 784).map(|_| rng.uniform()).collect();
    let w: Vec<f32> = (0..64 * 784).map(|_| rng.normal()).collect();
    let g: Vec<f32> = (0..32 * 64).map(|_| rng.normal()).collect();
    let mut y = vec![0.0; 32 * 64];
    let mut dw = vec![0.0; 64 * 784];
    let fwd = time_us(|| {
        sgemm(
            1.0,
            MatRef::row_major(&x, 32, 784),
            MatRef::row_major_t(&w, 64, 784),
            1.0,
            &mut y,
            64,
        )
    });
    let bwd = time_us(|| {
        sgemm(
            1.0,
            MatRef::row_major_t(&g, 32, 64),
            MatRef::row_major(&x, 32, 784),
            0.0,
            &mut dw,
            784,
        )
    });
    println!("matrixmultiply 32x784x64 fwd: {fwd:.1} us; dW 64x32x784: {bwd:.1} us");
    let kf = time_us(|| gemm_abt(32, 784, 64, &x, &w, &mut y, true));
    let kb = time_us(|| gemm_atb(32, 64, 784, &g, &x, &mut dw));
    println!("kernels ({:?}) fwd: {kf:.1} us; dW: {kb:.1} us", isa());
    let mut model = Model::from_spec("mlp:784-64-10", 0).unwrap();
    let xt = Tensor::new(x.clone(), vec![32, 1, 28, 28]);
    let labels: Vec<u8> = (0..32).map(|i| (i % 10) as u8).collect();
    let f = time_us(|| {
        model.forward(&xt, true).unwrap();
    });
    let logits = model.forward(&xt, true).unwrap();
    let out = softmax_cross_entropy(&logits, &labels).unwrap();
    let b = time_us(|| model.backward(&out.grad).unwrap());
    let mut opt = Optimizer::new(OptimizerKind::adam(), 1e-3).unwrap();
    let a = time_us(|| opt.step(&mut model.params_mut()).unwrap());
    let l = time_us(|| {
        softmax_cross_entropy(&logits, &labels).unwrap();
    });
    println!("model forward {f:.1} us, backward {b:.1} us, adam {a:.1} us, loss {l:.1} us");
}
