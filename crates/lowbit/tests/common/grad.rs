//! Finite-difference gradient checking shared by the gradient tests (tolerances explained in
//! `tests/nn_gradients.rs`): central differences of step `H` on an f64 objective, accepted when
//! `|fd - analytic| <= ATOL + RTOL * |analytic|`.
use lowbit::nn::{BatchNorm2d, Layer};
use lowbit::rng::Rng;
use lowbit::tensor::Tensor;

/// Perturbation of one input.
pub const H: f32 = 1e-2;
/// Absolute tolerance (f32 rounding of the objective, divided by 2H).
pub const ATOL: f64 = 5e-4;
/// Relative tolerance (f32 accumulation-order differences).
pub const RTOL: f64 = 1e-3;

/// Uniform values in `[lo, hi)`.
pub fn random_tensor_in(rng: &mut Rng, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        (0..n).map(|_| rng.uniform_range(lo, hi)).collect(),
        shape.to_vec(),
    )
}

/// Uniform values in `[-1, 1)`.
pub fn random_tensor(rng: &mut Rng, shape: &[usize]) -> Tensor {
    random_tensor_in(rng, shape, -1.0, 1.0)
}

/// A batch norm of `channels` with gamma in [0.5, 1.5) (away from 0), beta in [-0.5, 0.5) and non-trivial
/// running statistics (mean in [-0.3, 0.3), variance in [0.3, 2)), drawn channel by channel.
pub fn random_batch_norm(rng: &mut Rng, channels: usize) -> BatchNorm2d {
    let mut bn = BatchNorm2d::new(channels);
    for c in 0..channels {
        bn.gamma[c] = rng.uniform_range(0.5, 1.5);
        bn.beta[c] = rng.uniform_range(-0.5, 0.5);
        bn.running_mean[c] = rng.uniform_range(-0.3, 0.3);
        bn.running_var[c] = rng.uniform_range(0.3, 2.0);
    }
    bn
}

/// Objective `sum(y * r)` in f64: its gradient w.r.t. y is exactly r.
pub fn dot(y: &Tensor, r: &Tensor) -> f64 {
    y.data
        .iter()
        .zip(&r.data)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum()
}

/// Asserts that the finite difference `fd` matches `analytic` within the tolerances.
pub fn check(what: &str, seed: u64, index: usize, fd: f64, analytic: f32) {
    let analytic = f64::from(analytic);
    let err = (fd - analytic).abs();
    assert!(
        err <= ATOL + RTOL * analytic.abs(),
        "{what}[{index}] (seed {seed}): finite difference {fd}, analytic {analytic}, error {err}"
    );
}

/// Central difference of `f` w.r.t. element `i` of the buffer selected by `get`.
pub fn central_difference<T>(
    state: &mut T,
    i: usize,
    get: impl Fn(&mut T) -> &mut [f32],
    f: impl Fn(&mut T) -> f64,
) -> f64 {
    let old = get(state)[i];
    get(state)[i] = old + H;
    let plus = f(state);
    get(state)[i] = old - H;
    let minus = f(state);
    get(state)[i] = old;
    (plus - minus) / (2.0 * f64::from(H))
}

/// Checks dX and every parameter gradient of `layer` on `x`, with objective `sum(y * r)`; `train` selects the
/// mode of the perturbed forwards (batch norm must use batch statistics in both).
pub fn check_layer(what: &str, seed: u64, layer: Layer, x: &Tensor, train: bool) {
    let mut rng = Rng::new(seed ^ 0xABC);
    let mut l = layer.clone();
    let y = l.forward(x, true).unwrap();
    let r = random_tensor(&mut rng, &y.shape);
    let dx = l.backward(&r).unwrap();
    assert_eq!(dx.shape, x.shape, "{what}: dX shape");
    let grads: Vec<Vec<f32>> = l.params_mut().iter().map(|p| p.grad.to_vec()).collect();
    // Each perturbed forward starts from the unchanged layer (same dropout mask, same running statistics).
    let objective = |st: &mut (Layer, Tensor)| {
        let mut fresh = st.0.clone();
        dot(&fresh.forward(&st.1, train).unwrap(), &r)
    };
    for (p, g) in grads.iter().enumerate() {
        let mut st = (layer.clone(), x.clone());
        for (i, &gv) in g.iter().enumerate() {
            let fd =
                central_difference(&mut st, i, |s| s.0.params_mut().remove(p).value, objective);
            check(&format!("{what} param {p}"), seed, i, fd, gv);
        }
    }
    let mut st = (layer, x.clone());
    for i in 0..x.len() {
        let fd = central_difference(&mut st, i, |s| &mut s.1.data, objective);
        check(&format!("{what} dX"), seed, i, fd, dx.data[i]);
    }
}

/// Checks the gradient of every input of a (multi-input) layer against central differences, with objective
/// `sum(y * r)`. `forward(layer, inputs, train)` and `backward(layer, grad)` (one gradient per input, in order)
/// adapt the layer's own methods; each perturbed forward starts from a clone of the unchanged `layer`.
pub fn check_inputs<L: Clone>(
    what: &str,
    seed: u64,
    layer: &L,
    inputs: &[Tensor],
    forward: impl Fn(&mut L, &[&Tensor], bool) -> Tensor,
    backward: impl Fn(&mut L, &Tensor) -> Vec<Tensor>,
) {
    let mut rng = Rng::new(seed ^ 0x1A9);
    let mut l = layer.clone();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let y = forward(&mut l, &refs, true);
    let r = random_tensor(&mut rng, &y.shape);
    let grads = backward(&mut l, &r);
    assert_eq!(grads.len(), inputs.len(), "{what}: one gradient per input");
    let objective = |st: &mut Vec<Tensor>| {
        let refs: Vec<&Tensor> = st.iter().collect();
        dot(&forward(&mut layer.clone(), &refs, false), &r)
    };
    for (n, g) in grads.iter().enumerate() {
        assert_eq!(
            g.shape, inputs[n].shape,
            "{what}: shape of input {n}'s gradient"
        );
        let mut st = inputs.to_vec();
        for (i, &gv) in g.data.iter().enumerate() {
            let fd = central_difference(&mut st, i, |s| &mut s[n].data, objective);
            check(&format!("{what} d(input {n})"), seed, i, fd, gv);
        }
    }
}
