//! f32 matrix products for training, through `matrixmultiply::sgemm`.
//!
//! Every operand is described by (rows, cols, row stride, column stride), so transposed products (`x W^T`,
//! `G^T x`) read the stored matrices in place without copies. The wrappers check that every addressed element
//! lies inside its slice, which is what makes the `unsafe` call sound.
//!
//! Plain products (`alpha = 1`, `beta = 0`) whose B has contiguous rows go to the AVX2+FMA kernel of
//! [`super::kernels::gemm_nn_strided`] when the CPU has it (no packing, no nested threads); the rest to
//! matrixmultiply.
//!
//! Threading: the workspace enables matrixmultiply's `threading` feature, which is process-wide
//! (`MATMUL_NUM_THREADS`, default = physical cores). matrixmultiply splits work over blocks of C, each element of
//! C is still reduced by one thread in a fixed k order, so results do not depend on the thread count.

/// A strided view of a matrix operand.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    /// Backing storage.
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance in elements between rows.
    pub row_stride: usize,
    /// Distance in elements between columns.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `[rows, cols]` matrix, i.e. a `[cols, rows]` view of the same storage.
    pub fn row_major_t(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows: cols,
            cols: rows,
            row_stride: 1,
            col_stride: cols,
        }
    }

    /// The transposed view of this operand (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

/// One past the largest index addressed by a strided `[rows, cols]` operand, or 0 when it is empty.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(rs)?
        .checked_add((cols - 1).checked_mul(cs)?)?
        .checked_add(1)
}

/// Largest `m * n * k` [`sgemm`] hands to the unpacked AVX2 kernel.
const SMALL_GEMM_MACS: usize = 1 << 22;

/// `C = alpha * A B + beta * C` with C row-major `[a.rows, b.cols]` (leading dimension `ldc`).
///
/// When `beta == 0` the old contents of C are ignored (even NaN), as BLAS specifies.
///
/// # Panics
/// If the inner dimensions differ or an operand addresses elements outside its slice (a programming error in
/// the caller, never a data error: layer shapes are validated before they reach here).
pub fn sgemm(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: &mut [f32], ldc: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "sgemm: inner dimensions differ");
    let in_bounds = |v: &MatRef<'_>| {
        extent(v.rows, v.cols, v.row_stride, v.col_stride).is_some_and(|e| e <= v.data.len())
    };
    assert!(
        in_bounds(&a) && in_bounds(&b),
        "sgemm: operand out of bounds"
    );
    assert!(
        extent(m, n, ldc, 1).is_some_and(|e| e <= c.len()),
        "sgemm: output out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // matrixmultiply handles k == 0, but be explicit: C = beta * C.
        for row in 0..m {
            for v in &mut c[row * ldc..row * ldc + n] {
                *v = if beta == 0.0 { 0.0 } else { beta * *v };
            }
        }
        return;
    }
    // Small products (every one a layer of this crate's models issues) take the unpacked single-threaded AVX2
    // kernel; large ones (a 1024^3 product is 500x the largest) are worth matrixmultiply's cache blocking and
    // threads, and its threads split the output only, so results do not depend on the thread count.
    let small = m.saturating_mul(n).saturating_mul(k) <= SMALL_GEMM_MACS;
    if small && alpha == 1.0 && beta == 0.0 && super::kernels::gemm_nn_strided(a, b, c, ldc) {
        return;
    }
    // Strides are below isize::MAX because the extents above fit in slices.
    // SAFETY: every element addressed by (m, k, n) and the strides lies inside `a.data`, `b.data` and `c`
    // (checked above); `c` is uniquely borrowed, so it does not alias `a` or `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr(),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

/// Scalar reference of [`sgemm`] (f64 accumulation), for tests.
pub fn sgemm_reference(
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    assert_eq!(a.cols, b.rows, "sgemm_reference: inner dimensions differ");
    for i in 0..a.rows {
        for j in 0..b.cols {
            let mut acc = 0.0f64;
            for p in 0..a.cols {
                acc += f64::from(a.data[i * a.row_stride + p * a.col_stride])
                    * f64::from(b.data[p * b.row_stride + j * b.col_stride]);
            }
            let old = if beta == 0.0 {
                0.0
            } else {
                f64::from(beta) * f64::from(c[i * ldc + j])
            };
            c[i * ldc + j] = (f64::from(alpha) * acc + old) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn strided_transposed_products_match_the_reference() {
        let mut rng = Rng::new(11);
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 5, 7),
            (32, 784, 64),
            (17, 64, 10),
            (8, 3, 33),
        ] {
            let a = rng.uniform_vec(m * k, -1.0, 1.0);
            let bt = rng.uniform_vec(n * k, -1.0, 1.0); // stored [n, k], used as B = bt^T
            let mut c = rng.uniform_vec(m * n, -1.0, 1.0);
            let mut r = c.clone();
            let av = MatRef::row_major(&a, m, k);
            let bv = MatRef::row_major_t(&bt, n, k);
            sgemm(0.5, av, bv, 1.0, &mut c, n);
            sgemm_reference(0.5, av, bv, 1.0, &mut r, n);
            for (i, (x, y)) in c.iter().zip(&r).enumerate() {
                // f32 accumulation of k products of magnitude <= 1: error <= k * eps * sum|a b| ~ k * 6e-8.
                let tol = 1e-6 * (k as f32 + 1.0);
                assert!((x - y).abs() <= tol, "m={m} k={k} n={n} at {i}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn plain_products_match_the_reference_for_every_a_layout_and_tail() {
        let mut rng = Rng::new(12);
        // Dense dX shapes of LeNet / the MLP, and n around the vector width.
        for &(m, k, n) in &[
            (64, 120, 400),
            (64, 84, 120),
            (64, 10, 84),
            (32, 64, 784),
            (1, 1, 1),
            (7, 3, 9),
            (13, 5, 15),
            (6, 2, 17),
        ] {
            for a_transposed in [false, true] {
                let a = rng.uniform_vec(m * k, -1.0, 1.0);
                let bm = rng.uniform_vec(k * n, -1.0, 1.0);
                let av = if a_transposed {
                    MatRef::row_major_t(&a, k, m)
                } else {
                    MatRef::row_major(&a, m, k)
                };
                let bv = MatRef::row_major(&bm, k, n);
                let mut c = vec![f32::NAN; m * n];
                let mut r = vec![0.0; m * n];
                sgemm(1.0, av, bv, 0.0, &mut c, n);
                sgemm_reference(1.0, av, bv, 0.0, &mut r, n);
                for (i, (x, y)) in c.iter().zip(&r).enumerate() {
                    let tol = 1e-6 * (k as f32 + 1.0);
                    assert!(
                        (x - y).abs() <= tol,
                        "m={m} k={k} n={n} a_transposed={a_transposed} at {i}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn beta_zero_ignores_nan_in_the_output() {
        let a = [1.0, 2.0];
        let b = [3.0, 4.0];
        let mut c = [f32::NAN];
        sgemm(
            1.0,
            MatRef::row_major(&a, 1, 2),
            MatRef::row_major(&b, 2, 1),
            0.0,
            &mut c,
            1,
        );
        assert_eq!(c[0], 11.0);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn rejects_an_operand_larger_than_its_slice() {
        let a = [1.0; 3];
        let b = [1.0; 4];
        let mut c = [0.0; 4];
        sgemm(
            1.0,
            MatRef::row_major(&a, 2, 2),
            MatRef::row_major(&b, 2, 2),
            0.0,
            &mut c,
            2,
        );
    }
}
