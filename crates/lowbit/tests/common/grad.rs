//! Finite-difference gradient checking shared by the gradient tests (tolerances explained in
//! `tests/nn_gradients.rs`): central differences of step `H` on an f64 objective, accepted when
//! `|fd - analytic| <= ATOL + RTOL * |analytic|`.
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
