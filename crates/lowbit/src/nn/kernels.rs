//! The two products that dominate MLP training, with a scalar reference and an AVX2+FMA kernel each.
//!
//! - [`gemm_abt`]: `C[m, n] (+)= A[m, k] B[n, k]^T` — dot products along contiguous rows. Dense forward
//!   (`y = x W^T`, W stored `[out, in]`).
//! - [`gemm_atb`]: `C[m, n] = A[kk, m]^T B[kk, n]` — rank-1 updates over kk. Dense weight gradient
//!   (`dW = G^T x`, kk = batch).
//!
//! Why not matrixmultiply for these: at training shapes it packs both operands for a product that is over in
//! microseconds. Measured with `tests/nn_speed_parts.rs` (AMD EPYC, 2 shared cores, AVX2+FMA, single thread, min
//! of 20 x 50 calls, 2026-11-27): forward 32x784x64 55-73 us with matrixmultiply vs 35 us here; dW 64x32x784
//! 43-53 us vs 37 us here. Neither kernel packs: the rows they read are contiguous already.
//!
//! Results differ from the reference only in summation order (f32); both are deterministic for a given ISA.
//! `LOWBIT_ISA=reference` forces the portable path.
use std::sync::OnceLock;

/// Which implementation [`gemm_abt`] and [`gemm_atb`] use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable path (matrixmultiply for the products).
    Reference,
    /// AVX2 + FMA kernels (x86-64).
    Avx2Fma,
}

/// The ISA chosen once per process: the best the CPU supports, capped by `LOWBIT_ISA=reference`.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        if std::env::var("LOWBIT_ISA").is_ok_and(|v| v.eq_ignore_ascii_case("reference")) {
            return Isa::Reference;
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2Fma;
        }
        Isa::Reference
    })
}

fn check(what: &str, a_len: usize, b_len: usize, c_len: usize, need: [usize; 3]) {
    assert!(
        a_len >= need[0] && b_len >= need[1] && c_len >= need[2],
        "{what}: operand out of bounds"
    );
}

/// `C[m, n] (+)= A[m, k] * B[n, k]^T`, all row-major and dense (C has leading dimension n).
///
/// # Panics
/// If a slice is shorter than its shape (a caller bug; layer shapes are validated before).
pub fn gemm_abt(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    check("gemm_abt", a.len(), b.len(), c.len(), [m * k, n * k, m * n]);
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() returns Avx2Fma only when the CPU has AVX2 and FMA; lengths were checked above.
        Isa::Avx2Fma => unsafe { avx2::gemm_abt__avx2_fma(m, k, n, a, b, c, accumulate) },
        _ => {
            use super::gemm::{sgemm, MatRef};
            let beta = if accumulate { 1.0 } else { 0.0 };
            sgemm(
                1.0,
                MatRef::row_major(a, m, k),
                MatRef::row_major_t(b, n, k),
                beta,
                c,
                n,
            );
        }
    }
}

/// `C[m, n] = A[kk, m]^T * B[kk, n]`, all row-major and dense (C is overwritten).
///
/// # Panics
/// If a slice is shorter than its shape.
pub fn gemm_atb(kk: usize, m: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    check(
        "gemm_atb",
        a.len(),
        b.len(),
        c.len(),
        [kk * m, kk * n, m * n],
    );
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in gemm_abt.
        Isa::Avx2Fma => unsafe { avx2::gemm_atb__avx2_fma(kk, m, n, a, b, c) },
        _ => {
            use super::gemm::{sgemm, MatRef};
            sgemm(
                1.0,
                MatRef::row_major_t(a, kk, m),
                MatRef::row_major(b, kk, n),
                0.0,
                c,
                n,
            );
        }
    }
}

/// Scalar references (plain loops, f32 accumulation in index order). Normative for shapes and semantics; the
/// fast paths may differ by summation order only.
pub mod reference {
    /// See [`super::gemm_abt`].
    pub fn gemm_abt(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        accumulate: bool,
    ) {
        for i in 0..m {
            for j in 0..n {
                let s: f32 = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
                c[i * n + j] = if accumulate { c[i * n + j] + s } else { s };
            }
        }
    }

    /// See [`super::gemm_atb`].
    pub fn gemm_atb(kk: usize, m: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..kk).map(|p| a[p * m + i] * b[p * n + j]).sum();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(non_snake_case)] // XNNPACK-style kernel names: stem__isa
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// One MR x NR tile of `C (+)= A B^T`: `a` = row i0 of A, `b` = row j0 of B (both stride k), `c` = &C[i0, j0].
    ///
    /// Registers: MR * NR accumulators + NR B vectors + 1 A vector <= 16 for MR = 4, NR = 3.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn abt_tile<const MR: usize, const NR: usize>(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        k: usize,
        ldc: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        let k8 = k / 8 * 8;
        let mut p = 0;
        while p < k8 {
            let mut bv = [_mm256_setzero_ps(); NR];
            for (q, v) in bv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(b.add(q * k + p));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm256_loadu_ps(a.add(r * k + p));
                for (acc_rq, &bq) in acc_r.iter_mut().zip(&bv) {
                    *acc_rq = _mm256_fmadd_ps(av, bq, *acc_rq);
                }
            }
            p += 8;
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (q, &v) in acc_r.iter().enumerate() {
                let mut s = hsum(v);
                for t in k8..k {
                    s += *a.add(r * k + t) * *b.add(q * k + t);
                }
                let dst = c.add(r * ldc + q);
                *dst = if accumulate { *dst + s } else { s };
            }
        }
    }

    /// AVX2+FMA [`super::gemm_abt`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a`, `b`, `c` must hold at least m*k, n*k, m*n elements.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm_abt__avx2_fma(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        accumulate: bool,
    ) {
        let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(4);
            let mut j = 0;
            while j < n {
                let nr = (n - j).min(3);
                let (a0, b0, c0) = (ap.add(i * k), bp.add(j * k), cp.add(i * n + j));
                macro_rules! tile {
                    ($($mr:literal, $nr:literal);*) => {
                        match (mr, nr) {
                            $(($mr, $nr) => abt_tile::<$mr, $nr>(a0, b0, c0, k, n, accumulate),)*
                            _ => unreachable!(),
                        }
                    };
                }
                tile!(4, 3; 4, 2; 4, 1; 3, 3; 3, 2; 3, 1; 2, 3; 2, 2; 2, 1; 1, 3; 1, 2; 1, 1);
                j += nr;
            }
            i += mr;
        }
    }

    /// One MR x (NV * 8) tile of `C = A^T B`: `a` = &A[0, i0] (stride m), `b` = &B[0, j0] (stride n),
    /// `c` = &C[i0, j0] (stride n).
    ///
    /// Registers: MR * NV accumulators + NV B vectors + 1 broadcast = 15 for MR = 6, NV = 2. (3 x 4 and 4 x 3
    /// need 16-17 registers, and LLVM spilled one accumulator to the stack: 73 us for 64x32x784.)
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn atb_tile<const MR: usize, const NV: usize>(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        kk: usize,
        m: usize,
        n: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); NV]; MR];
        for p in 0..kk {
            let mut bv = [_mm256_setzero_ps(); NV];
            for (v, bq) in bv.iter_mut().enumerate() {
                *bq = _mm256_loadu_ps(b.add(p * n + v * 8));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(p * m + r));
                for (acc_rv, &bq) in acc_r.iter_mut().zip(&bv) {
                    *acc_rv = _mm256_fmadd_ps(av, bq, *acc_rv);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, &x) in acc_r.iter().enumerate() {
                _mm256_storeu_ps(c.add(r * n + v * 8), x);
            }
        }
    }

    /// AVX2+FMA [`super::gemm_atb`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a`, `b`, `c` must hold at least kk*m, kk*n, m*n elements.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm_atb__avx2_fma(
        kk: usize,
        m: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
    ) {
        let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        let n8 = n / 8 * 8;
        // Column blocks outermost: a kk x 16 panel of B (2 KB at kk = 32) stays in L1 across all row tiles.
        let mut j = 0;
        while j < n8 {
            let nv = ((n8 - j) / 8).min(2);
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(6);
                let (a0, b0, c0) = (ap.add(i), bp.add(j), cp.add(i * n + j));
                macro_rules! tile {
                    ($($mr:literal, $nv:literal);*) => {
                        match (mr, nv) {
                            $(($mr, $nv) => atb_tile::<$mr, $nv>(a0, b0, c0, kk, m, n),)*
                            _ => unreachable!(),
                        }
                    };
                }
                tile!(6, 2; 6, 1; 5, 2; 5, 1; 4, 2; 4, 1; 3, 2; 3, 1; 2, 2; 2, 1; 1, 2; 1, 1);
                i += mr;
            }
            j += nv * 8;
        }
        // Columns past the last multiple of 8: scalar, same summation order (p ascending).
        for i in 0..m {
            for jj in n8..n {
                let mut s = 0.0f32;
                for p in 0..kk {
                    s += *ap.add(p * m + i) * *bp.add(p * n + jj);
                }
                *cp.add(i * n + jj) = s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.uniform_range(-1.0, 1.0)).collect()
    }

    /// f32 sums of k products of magnitude <= 1 in two different orders differ by at most ~2 k eps.
    fn tol(k: usize) -> f32 {
        2.0 * k as f32 * f32::EPSILON + 1e-6
    }

    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (32, 784, 64),
        (32, 64, 10),
        (5, 7, 9),
        (4, 8, 3),
        (3, 17, 33),
        (13, 9, 25),
        (7, 1, 31),
        (2, 16, 8),
    ];

    #[test]
    fn gemm_abt_matches_reference_on_tails_and_training_shapes() {
        let mut rng = Rng::new(21);
        for &(m, k, n) in SHAPES {
            for accumulate in [false, true] {
                let a = random(&mut rng, m * k);
                let b = random(&mut rng, n * k);
                let c0 = random(&mut rng, m * n);
                let (mut c, mut r) = (c0.clone(), c0);
                gemm_abt(m, k, n, &a, &b, &mut c, accumulate);
                reference::gemm_abt(m, k, n, &a, &b, &mut r, accumulate);
                for (i, (x, y)) in c.iter().zip(&r).enumerate() {
                    assert!(
                        (x - y).abs() <= tol(k),
                        "isa {:?} m={m} k={k} n={n} at {i}: {x} vs {y}",
                        isa()
                    );
                }
            }
        }
    }

    #[test]
    fn gemm_atb_matches_reference_on_tails_and_training_shapes() {
        let mut rng = Rng::new(22);
        for &(kk, m, n) in
            SHAPES
                .iter()
                .chain(&[(32, 64, 784), (32, 10, 64), (3, 5, 40), (6, 4, 57)])
        {
            let a = random(&mut rng, kk * m);
            let b = random(&mut rng, kk * n);
            let mut c = vec![f32::NAN; m * n]; // overwritten, never read
            let mut r = vec![0.0; m * n];
            gemm_atb(kk, m, n, &a, &b, &mut c);
            reference::gemm_atb(kk, m, n, &a, &b, &mut r);
            for (i, (x, y)) in c.iter().zip(&r).enumerate() {
                assert!(
                    (x - y).abs() <= tol(kk),
                    "isa {:?} kk={kk} m={m} n={n} at {i}: {x} vs {y}",
                    isa()
                );
            }
        }
    }

    #[test]
    fn the_avx2_path_is_exercised_when_the_cpu_has_it() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::env::var("LOWBIT_ISA").is_err()
        {
            assert_eq!(isa(), Isa::Avx2Fma);
            return;
        }
        eprintln!(
            "AVX2+FMA not available or capped by LOWBIT_ISA: only the portable path was tested"
        );
    }
}
