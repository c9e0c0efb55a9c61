//! The products that dominate MLP and CNN training, with a scalar reference and an AVX2+FMA kernel each.
//!
//! - [`gemm_abt`]: `C[m, n] (+)= A[m, k] B[n, k]^T` — dot products along contiguous rows. Dense forward
//!   (`y = x W^T`, W stored `[out, in]`).
//! - [`gemm_atb`]: `C[m, n] = A[kk, m]^T B[kk, n]` — rank-1 updates over kk. Dense weight gradient
//!   (`dW = G^T x`, kk = batch); conv forward (`Y_s = W col_s` with `W^T` stored) and conv dcol (`W^T dY_s`).
//! - [`gemm_abt_batched`]: `gemm_abt` summed over a group of samples. Conv weight gradient.
//! - [`gemm_nn_strided`]: `C = A B` with any A strides and contiguous B rows, for [`super::gemm::sgemm`]'s plain
//!   products (dense dX). Partial last vectors of columns (or of k) use masked loads and stores, not scalar
//!   loops.
//!
//! Why not matrixmultiply for these: at training shapes it packs both operands for a product that is over in
//! microseconds. Measured with `tests/nn_speed_parts.rs` (AMD EPYC, 2 shared cores, AVX2+FMA, single thread, min
//! of 20 x 50 calls, 2026-11-27): forward 32x784x64 55-73 us with matrixmultiply vs 35 us here; dW 64x32x784
//! 43-53 us vs 37 us here. Neither kernel packs: the rows they read are contiguous already.
//!
//! Results differ from the reference only in summation order (f32); both are deterministic for a given ISA.
//! The tier is [`crate::kernel_tiers::Family::TrainGemm`]'s: `avx2` (AVX2 + FMA) unless `LOWBIT_ISA=reference`
//! or the CPU lacks it.
//!
//! (Over 800 lines on purpose: each AVX2+FMA kernel sits beside the scalar reference it must match.)
use super::gemm::MatRef;
use crate::kernel_tiers::Family;
pub use lowbit_runtime::isa::Isa;

/// The tier [`gemm_abt`], [`gemm_atb`] and the other training kernels run: [`Isa::Avx2`] (AVX2 + FMA kernels) or
/// [`Isa::Reference`] (portable), chosen once per process.
pub fn isa() -> Isa {
    Family::TrainGemm.tier()
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
        // SAFETY: isa() returns Avx2 only when the CPU has AVX2 and FMA; lengths were checked above.
        Isa::Avx2 => unsafe { avx2::gemm_abt__avx2_fma(m, k, n, a, b, c, accumulate) },
        _ => {
            use super::gemm::sgemm;
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
        Isa::Avx2 => unsafe { avx2::gemm_atb__avx2_fma(kk, m, n, a, b, c) },
        _ => {
            use super::gemm::sgemm;
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

/// `C = A B` (C row-major with leading dimension `ldc`, overwritten) through the AVX2+FMA kernel, when the CPU
/// has it and B's rows are contiguous (`b.col_stride == 1`); returns `false`, leaving C untouched, otherwise.
///
/// This serves [`super::gemm::sgemm`]'s plain products (dense dX = G W). matrixmultiply would pack both
/// operands and, with its `threading` feature, start its own threads inside rayon's: at LeNet's 64x84x120 that
/// took 0.5-9 ms per call on the shared 2-core machine, against tens of microseconds here.
///
/// # Panics
/// If an operand addresses elements outside its slice.
pub fn gemm_nn_strided(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize) -> bool {
    let (m, kk, n) = (a.rows, a.cols, b.cols);
    assert_eq!(kk, b.rows, "gemm_nn_strided: inner dimensions differ");
    if b.col_stride != 1 || m == 0 || n == 0 {
        return false;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            Some(0)
        } else {
            (rows - 1)
                .checked_mul(rs)?
                .checked_add((cols - 1).checked_mul(cs)?)?
                .checked_add(1)
        }
    };
    assert!(
        last(m, kk, a.row_stride, a.col_stride).is_some_and(|e| e <= a.data.len())
            && last(kk, n, b.row_stride, 1).is_some_and(|e| e <= b.data.len())
            && last(m, n, ldc, 1).is_some_and(|e| e <= c.len()),
        "gemm_nn_strided: operand out of bounds"
    );
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            let st = avx2::NnStrides {
                a_rs: a.row_stride,
                a_cs: a.col_stride,
                ldc,
            };
            // SAFETY: the CPU has AVX2 and FMA (isa()); every addressed element lies inside its slice (checked
            // above); `c` is uniquely borrowed, so it overlaps neither `a` nor `b`.
            unsafe {
                avx2::gemm_nn__avx2_fma(
                    m,
                    kk,
                    n,
                    a.data.as_ptr(),
                    b.data.as_ptr(),
                    c.as_mut_ptr(),
                    st,
                    avx2::Ld(b.row_stride),
                )
            };
            true
        }
        _ => false,
    }
}

/// `C[m, n] (+)= sum_s A_s[m, k] * B_s[n, k]^T` over `batch` pairs of dense row-major matrices stored one after
/// the other (`A_s` at `a[s*m*k..]`, `B_s` at `b[s*n*k..]`); C has leading dimension n.
///
/// Convolution weight gradient over a group of samples: `dW[oc, K] = sum_s dY_s[oc, P] col_s[K, P]^T`. Summing
/// the batch inside the kernel keeps each output in one register lane set until the end (one horizontal sum per
/// output instead of one per sample). Each output is reduced in a fixed order (lanes over s then p, then a fixed
/// horizontal sum), so results do not depend on threads.
///
/// # Panics
/// If a slice is shorter than its shape.
#[allow(clippy::too_many_arguments)]
pub fn gemm_abt_batched(
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    accumulate: bool,
) {
    check(
        "gemm_abt_batched",
        a.len(),
        b.len(),
        c.len(),
        [batch * m * k, batch * n * k, m * n],
    );
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() returns Avx2 only when the CPU has AVX2 and FMA; lengths were checked above.
        Isa::Avx2 => unsafe {
            avx2::gemm_abt_batched__avx2_fma(batch, m, k, n, a, b, c, accumulate)
        },
        _ => reference::gemm_abt_batched(batch, m, k, n, a, b, c, accumulate),
    }
}

/// `C[m, n] = A[kk, m]^T B[kk, n]` (C overwritten) where row p of B is `b[b_off[p]..b_off[p] + n]`.
///
/// Convolution forward by implicit im2col: with stride 1, row `(ic, ky, kx)` of a sample's im2col, taken over
/// output positions `oy * Wp + ox` of the padded width `Wp`, is the padded input read from
/// `ic*Hp*Wp + ky*Wp + kx` on, so the product reads the input in place (columns with `ox >= ow` are computed
/// and discarded). Same reduction order per element as [`gemm_atb`].
///
/// # Panics
/// If `b_off` has fewer than kk offsets or an operand addresses elements outside its slice.
pub fn gemm_atb_rows(
    kk: usize,
    m: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    b_off: &[usize],
    c: &mut [f32],
) {
    assert!(
        a.len() >= kk * m
            && c.len() >= m * n
            && b_off.len() >= kk
            && b_off[..kk]
                .iter()
                .all(|&o| o.checked_add(n).is_some_and(|e| e <= b.len())),
        "gemm_atb_rows: operand out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            let st = avx2::NnStrides {
                a_rs: 1,
                a_cs: m,
                ldc: n,
            };
            // SAFETY: the CPU has AVX2 and FMA (isa()); every A[i, p] = a[p*m + i], B[p, j] = b[b_off[p] + j]
            // and C[i, j] = c[i*n + j] lies inside its slice (checked above); `c` is uniquely borrowed.
            unsafe {
                avx2::gemm_nn__avx2_fma(
                    m,
                    kk,
                    n,
                    a.as_ptr(),
                    b.as_ptr(),
                    c.as_mut_ptr(),
                    st,
                    avx2::Offsets(b_off.as_ptr()),
                )
            }
        }
        _ => reference::gemm_atb_rows(kk, m, n, a, b, b_off, c),
    }
}

/// `C[m, n] = sum_t A_t[m, k] B_t[n, k]^T` (C overwritten) where `A_t` is row-major at `a[t*a_bs..]` and row j of
/// `B_t` is `b[t*b_bs + b_off[j]..][..k]`.
///
/// Convolution weight gradient by implicit im2col (see [`gemm_atb_rows`]): `A_t` is the output gradient laid
/// out at the padded width with zeros in the discarded columns, `B_t` the padded input of sample t. Same tiles
/// and reduction order as [`gemm_abt_batched`].
///
/// # Panics
/// If `b_off` has fewer than n offsets or an operand addresses elements outside its slice.
#[allow(clippy::too_many_arguments)]
pub fn gemm_abt_batched_rows(
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_bs: usize,
    b: &[f32],
    b_bs: usize,
    b_off: &[usize],
    c: &mut [f32],
) {
    let last = batch.saturating_sub(1);
    assert!(
        c.len() >= m * n
            && b_off.len() >= n
            && (batch == 0
                || (last * a_bs + m * k <= a.len()
                    && b_off[..n].iter().all(|&o| last * b_bs + o + k <= b.len()))),
        "gemm_abt_batched_rows: operand out of bounds"
    );
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() returns Avx2 only when the CPU has AVX2 and FMA; bounds were checked above.
        Isa::Avx2 => unsafe {
            avx2::gemm_abt_batched_rows__avx2_fma(batch, m, k, n, a, a_bs, b, b_bs, b_off, c)
        },
        _ => reference::gemm_abt_batched_rows(batch, m, k, n, a, a_bs, b, b_bs, b_off, c),
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

    /// See [`super::gemm_abt_batched`].
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_abt_batched(
        batch: usize,
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
                let mut s = 0.0f32;
                for t in 0..batch {
                    let (ar, br) = ((t * m + i) * k, (t * n + j) * k);
                    s += (0..k).map(|p| a[ar + p] * b[br + p]).sum::<f32>();
                }
                c[i * n + j] = if accumulate { c[i * n + j] + s } else { s };
            }
        }
    }

    /// See [`super::gemm_atb_rows`].
    pub fn gemm_atb_rows(
        kk: usize,
        m: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        b_off: &[usize],
        c: &mut [f32],
    ) {
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..kk).map(|p| a[p * m + i] * b[b_off[p] + j]).sum();
            }
        }
    }

    /// See [`super::gemm_abt_batched_rows`].
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_abt_batched_rows(
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        a_bs: usize,
        b: &[f32],
        b_bs: usize,
        b_off: &[usize],
        c: &mut [f32],
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f32;
                for t in 0..batch {
                    let (ar, br) = (t * a_bs + i * k, t * b_bs + b_off[j]);
                    s += (0..k).map(|p| a[ar + p] * b[br + p]).sum::<f32>();
                }
                c[i * n + j] = s;
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

    /// # Safety
    /// The CPU must support AVX2 and FMA.
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
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` is readable for `MR` rows and `b` for `NR` rows of `k` floats
    /// (stride `k`); `c` is readable and writable for `MR` rows of `NR` floats (stride `ldc`).
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
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
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
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
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
    }

    /// Element strides of `C[m, n] = A[m, kk] B[kk, n]`: `A[i, p]` at `i*a_rs + p*a_cs`, `C[i, j]` at
    /// `i*ldc + j` (B's rows are given by a [`BRows`]).
    #[derive(Clone, Copy)]
    pub struct NnStrides {
        pub a_rs: usize,
        pub a_cs: usize,
        pub ldc: usize,
    }

    /// Where row p of B starts, relative to the B pointer a tile is given: `p * ldb` for a plain matrix, or a
    /// per-row offset for the rows of an implicit im2col (the shifted windows of a padded input plane).
    pub trait BRows: Copy {
        /// Element offset of row `p`.
        ///
        /// # Safety
        /// `p` must be a row of the product (`p < kk`).
        unsafe fn row(self, p: usize) -> usize;
    }

    /// Rows `ldb` elements apart.
    #[derive(Clone, Copy)]
    pub struct Ld(pub usize);

    impl BRows for Ld {
        #[inline(always)]
        unsafe fn row(self, p: usize) -> usize {
            p * self.0
        }
    }

    /// Row `p` at `offsets[p]` (the pointer addresses at least `kk` offsets).
    #[derive(Clone, Copy)]
    pub struct Offsets(pub *const usize);

    impl BRows for Offsets {
        #[inline(always)]
        unsafe fn row(self, p: usize) -> usize {
            // SAFETY: `p < kk` (the trait's contract) and the pointer addresses at least `kk` offsets (this type's).
            unsafe { *self.0.add(p) }
        }
    }

    /// One MR x (NV * 8) tile of `C = A B`: `a` = &A[i0, 0], `b` = &B[0, j0], `c` = &C[i0, j0].
    ///
    /// Registers: MR * NV accumulators + NV B vectors + 1 broadcast = 15 for MR = 6, NV = 2. (3 x 4 and 4 x 3
    /// need 16-17 registers, and LLVM spilled one accumulator to the stack: 73 us for 64x32x784.)
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; for `p < kk` and `r < MR`, `a[r * st.a_rs + p * st.a_cs]` is readable,
    /// `b` row `rows.row(p)` is readable for `NV * 8` floats and `c` is writable for `MR` rows of `NV * 8` floats
    /// (stride `st.ldc`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn nn_tile<const MR: usize, const NV: usize, R: BRows>(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        kk: usize,
        st: NnStrides,
        rows: R,
    ) {
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NV]; MR];
            for p in 0..kk {
                let mut bv = [_mm256_setzero_ps(); NV];
                let bp = b.add(rows.row(p));
                for (v, bq) in bv.iter_mut().enumerate() {
                    *bq = _mm256_loadu_ps(bp.add(v * 8));
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(r * st.a_rs + p * st.a_cs));
                    for (acc_rv, &bq) in acc_r.iter_mut().zip(&bv) {
                        *acc_rv = _mm256_fmadd_ps(av, bq, *acc_rv);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                for (v, &x) in acc_r.iter().enumerate() {
                    _mm256_storeu_ps(c.add(r * st.ldc + v * 8), x);
                }
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
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
            let st = NnStrides {
                a_rs: 1,
                a_cs: m,
                ldc: n,
            };
            gemm_nn__avx2_fma(m, kk, n, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), st, Ld(n));
        }
    }

    /// `C[m, n] = A[m, kk] B[kk, n]` with the strides of `st`, B's row p at `bp + rows.row(p)` (B and C rows
    /// contiguous). C is overwritten.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; every `A[i, p]`, `B[p, j]` and `C[i, j]` addressed through `st` and
    /// `rows` (i < m, p < kk, j < n) must lie inside its allocation, and C must not overlap A or B.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_nn__avx2_fma<R: BRows>(
        m: usize,
        kk: usize,
        n: usize,
        ap: *const f32,
        bp: *const f32,
        cp: *mut f32,
        st: NnStrides,
        rows: R,
    ) {
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
            let n8 = n / 8 * 8;
            // Column blocks outermost: a kk x 16 panel of B (2 KB at kk = 32) stays in L1 across all row tiles.
            let mut j = 0;
            while j < n8 {
                let nv = ((n8 - j) / 8).min(2);
                let mut i = 0;
                while i < m {
                    let mr = (m - i).min(6);
                    let (a0, b0, c0) = (ap.add(i * st.a_rs), bp.add(j), cp.add(i * st.ldc + j));
                    macro_rules! tile {
                    ($($mr:literal, $nv:literal);*) => {
                        match (mr, nv) {
                            $(($mr, $nv) => nn_tile::<$mr, $nv, R>(a0, b0, c0, kk, st, rows),)*
                            _ => unreachable!(),
                        }
                    };
                }
                    tile!(6, 2; 6, 1; 5, 2; 5, 1; 4, 2; 4, 1; 3, 2; 3, 1; 2, 2; 2, 1; 1, 2; 1, 1);
                    i += mr;
                }
                j += nv * 8;
            }
            // Columns past the last multiple of 8: one masked vector, same summation order (p ascending). A scalar
            // tail here cost as much as the vector body for convolution planes of 100 columns (conv2 of LeNet).
            if n8 < n {
                let mask = tail_mask(n - n8);
                let mut i = 0;
                while i < m {
                    let mr = (m - i).min(6);
                    let (a0, b0, c0) = (ap.add(i * st.a_rs), bp.add(n8), cp.add(i * st.ldc + n8));
                    match mr {
                        6 => nn_tile_masked::<6, R>(a0, b0, c0, kk, st, rows, mask),
                        5 => nn_tile_masked::<5, R>(a0, b0, c0, kk, st, rows, mask),
                        4 => nn_tile_masked::<4, R>(a0, b0, c0, kk, st, rows, mask),
                        3 => nn_tile_masked::<3, R>(a0, b0, c0, kk, st, rows, mask),
                        2 => nn_tile_masked::<2, R>(a0, b0, c0, kk, st, rows, mask),
                        _ => nn_tile_masked::<1, R>(a0, b0, c0, kk, st, rows, mask),
                    }
                    i += mr;
                }
            }
        }
    }

    /// Lanes `0..rem` all ones, the rest zero (`rem` in 1..=7).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tail_mask(rem: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(rem as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// [`nn_tile`] for the last, partial vector of columns: only lanes set in `mask` are read or written
    /// (masked-off lanes of `vmaskmovps` never access memory, so they may lie past the end of `b` or `c`).
    ///
    /// # Safety
    /// As [`nn_tile`] with `NV = 1`, except that only the lanes set in `mask` of `b` and `c` need be
    /// accessible.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn nn_tile_masked<const MR: usize, R: BRows>(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        kk: usize,
        st: NnStrides,
        rows: R,
        mask: __m256i,
    ) {
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); MR];
            for p in 0..kk {
                let bv = _mm256_maskload_ps(b.add(rows.row(p)), mask);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(r * st.a_rs + p * st.a_cs));
                    *acc_r = _mm256_fmadd_ps(av, bv, *acc_r);
                }
            }
            for (r, &x) in acc.iter().enumerate() {
                _mm256_maskstore_ps(c.add(r * st.ldc), mask, x);
            }
        }
    }

    /// One MR x NR tile of `C (+)= sum_t A_t B_t^T`: `a` = row i0 of A_0 (row stride k), row j0 + q of B_0 at
    /// `b + b_rows[q]` (the next pair starts `a_bs`, `b_bs` elements further), `c` = &C[i0, j0].
    ///
    /// Registers: 12 accumulators + 3 B vectors + 1 A vector for MR = 4, NR = 3; the k tail is one masked step
    /// (masked-off lanes load as 0 and add nothing). 7 loads per 12 FMAs; a 6 x 2 tile (8 loads per 12 FMAs,
    /// fewer passes over B) took ~25% more of the LeNet step's profile.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; for each sample `s < batch`, `a + s * a_bs` is readable for `MR` rows and
    /// `b + s * b_bs + b_rows[j]` for `k` floats (`j < NR`); `c` is readable and writable for `MR` rows of `NR`
    /// floats (stride `ldc`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn abt_batched_tile<const MR: usize, const NR: usize>(
        batch: usize,
        a: *const f32,
        a_bs: usize,
        b: *const f32,
        b_rows: [usize; NR],
        b_bs: usize,
        c: *mut f32,
        k: usize,
        ldc: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NR]; MR];
            let k8 = k / 8 * 8;
            for t in 0..batch {
                let (at, bt) = (a.add(t * a_bs), b.add(t * b_bs));
                let mut p = 0;
                while p < k8 {
                    let mut bv = [_mm256_setzero_ps(); NR];
                    for (q, v) in bv.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(bt.add(b_rows[q] + p));
                    }
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let av = _mm256_loadu_ps(at.add(r * k + p));
                        for (acc_rq, &bq) in acc_r.iter_mut().zip(&bv) {
                            *acc_rq = _mm256_fmadd_ps(av, bq, *acc_rq);
                        }
                    }
                    p += 8;
                }
                if k8 < k {
                    let mask = tail_mask(k - k8);
                    let mut bv = [_mm256_setzero_ps(); NR];
                    for (q, v) in bv.iter_mut().enumerate() {
                        *v = _mm256_maskload_ps(bt.add(b_rows[q] + k8), mask);
                    }
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let av = _mm256_maskload_ps(at.add(r * k + k8), mask);
                        for (acc_rq, &bq) in acc_r.iter_mut().zip(&bv) {
                            *acc_rq = _mm256_fmadd_ps(av, bq, *acc_rq);
                        }
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                for (q, &v) in acc_r.iter().enumerate() {
                    let s = hsum(v);
                    let dst = c.add(r * ldc + q);
                    *dst = if accumulate { *dst + s } else { s };
                }
            }
        }
    }

    /// AVX2+FMA [`super::gemm_abt_batched`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a`, `b`, `c` must hold at least batch*m*k, batch*n*k, m*n elements.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_abt_batched__avx2_fma(
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        accumulate: bool,
    ) {
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
            abt_batched_tiles(batch, m, k, n, a, m * k, b, n * k, |j| j * k, c, accumulate);
        }
    }

    /// The tile loop of both batched `A B^T` kernels: 4 x 3 tiles (smaller at the edges) with B's row `j` at
    /// `b_row(j)`.
    ///
    /// # Safety
    /// As [`gemm_abt_batched_rows__avx2_fma`], with `b_row` in place of `b_off`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn abt_batched_tiles(
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        a_bs: usize,
        b: &[f32],
        b_bs: usize,
        b_row: impl Fn(usize) -> usize,
        c: &mut [f32],
        accumulate: bool,
    ) {
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
            let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(4);
                let mut j = 0;
                while j < n {
                    let nr = (n - j).min(3);
                    let (a0, c0) = (ap.add(i * k), cp.add(i * n + j));
                    let off = |q: usize| b_row(j + q.min(nr - 1));
                    macro_rules! tile {
                    ($($mr:literal, $nr:literal);*) => {
                        match (mr, nr) {
                            $(($mr, $nr) => abt_batched_tile::<$mr, $nr>(
                                batch, a0, a_bs, bp, std::array::from_fn(off), b_bs, c0, k, n, accumulate
                            ),)*
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
    }

    /// AVX2+FMA [`super::gemm_abt_batched_rows`]: the tiles and reduction order of
    /// [`gemm_abt_batched__avx2_fma`], with B's row j at `b_off[j]`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` must hold `(batch-1)*a_bs + m*k` elements, `b_off` at least n
    /// offsets with `(batch-1)*b_bs + b_off[j] + k <= b.len()`, and `c` m*n elements.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_abt_batched_rows__avx2_fma(
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        a_bs: usize,
        b: &[f32],
        b_bs: usize,
        b_off: &[usize],
        c: &mut [f32],
    ) {
        // SAFETY: the caller upholds this function's `# Safety` contract (the CPU feature it enables; the
        // bounds it lists), which is what the intrinsics and pointer accesses below rely on.
        unsafe {
            abt_batched_tiles(batch, m, k, n, a, a_bs, b, b_bs, |j| b_off[j], c, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Every element of `got` within `tol` of `want`; the message names the tier, `ctx()` and the index.
    fn assert_near(got: &[f32], want: &[f32], tol: f32, ctx: impl Fn() -> String) {
        assert_eq!(got.len(), want.len());
        for (i, (x, y)) in got.iter().zip(want).enumerate() {
            assert!(
                (x - y).abs() <= tol,
                "isa {:?} {} at {i}: {x} vs {y}",
                isa(),
                ctx()
            );
        }
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
                let a = rng.uniform_vec(m * k, -1.0, 1.0);
                let b = rng.uniform_vec(n * k, -1.0, 1.0);
                let c0 = rng.uniform_vec(m * n, -1.0, 1.0);
                let (mut c, mut r) = (c0.clone(), c0);
                gemm_abt(m, k, n, &a, &b, &mut c, accumulate);
                reference::gemm_abt(m, k, n, &a, &b, &mut r, accumulate);
                assert_near(&c, &r, tol(k), || format!("m={m} k={k} n={n}"));
            }
        }
    }

    #[test]
    fn gemm_atb_matches_reference_on_tails_and_training_shapes() {
        let mut rng = Rng::new(22);
        for &(kk, m, n) in SHAPES.iter().chain(&[
            (32, 64, 784),
            (32, 10, 64),
            (3, 5, 40),
            (6, 4, 57),
            (150, 16, 100),
            (16, 150, 100),
            (25, 6, 784),
            (4, 13, 15),
            (2, 7, 1),
        ]) {
            let a = rng.uniform_vec(kk * m, -1.0, 1.0);
            let b = rng.uniform_vec(kk * n, -1.0, 1.0);
            let mut c = vec![f32::NAN; m * n]; // overwritten, never read
            let mut r = vec![0.0; m * n];
            gemm_atb(kk, m, n, &a, &b, &mut c);
            reference::gemm_atb(kk, m, n, &a, &b, &mut r);
            assert_near(&c, &r, tol(kk), || format!("kk={kk} m={m} n={n}"));
        }
    }

    #[test]
    fn gemm_abt_batched_matches_reference_on_tails_and_convolution_shapes() {
        let mut rng = Rng::new(23);
        // (batch, m, k, n): LeNet dW shapes (oc, P, K) and k around the vector width.
        for &(batch, m, k, n) in &[
            (1, 1, 1, 1),
            (3, 6, 784, 25),
            (2, 16, 100, 150),
            (4, 5, 7, 9),
            (2, 4, 8, 3),
            (3, 3, 9, 4),
            (1, 7, 15, 13),
            (5, 2, 16, 7),
            (2, 9, 17, 5),
        ] {
            for accumulate in [false, true] {
                let a = rng.uniform_vec(batch * m * k, -1.0, 1.0);
                let b = rng.uniform_vec(batch * n * k, -1.0, 1.0);
                let c0 = rng.uniform_vec(m * n, -1.0, 1.0);
                let (mut c, mut r) = (c0.clone(), c0);
                gemm_abt_batched(batch, m, k, n, &a, &b, &mut c, accumulate);
                reference::gemm_abt_batched(batch, m, k, n, &a, &b, &mut r, accumulate);
                assert_near(&c, &r, tol(batch * k), || {
                    format!("batch={batch} m={m} k={k} n={n}")
                });
            }
        }
    }

    /// Row offsets of an implicit im2col over a `[c, hp, wp]` input with a `kh x kw` kernel (stride 1), and the
    /// number of columns `(hp-kh)*wp + wp-kw+1` the products run over.
    fn window_rows(c: usize, hp: usize, wp: usize, kh: usize, kw: usize) -> (Vec<usize>, usize) {
        let mut off = Vec::new();
        for ic in 0..c {
            for ky in 0..kh {
                for kx in 0..kw {
                    off.push(ic * hp * wp + ky * wp + kx);
                }
            }
        }
        (off, (hp - kh) * wp + wp - kw + 1)
    }

    #[test]
    fn gemm_atb_rows_matches_reference_on_overlapping_window_rows() {
        let mut rng = Rng::new(25);
        // (c, hp, wp, kh, kw, m): LeNet conv1 (padded 32x32, 6 outputs) and conv2, odd tails, one column.
        for &(c, hp, wp, kh, kw, m) in &[
            (1, 32, 32, 5, 5, 6),
            (6, 14, 14, 5, 5, 16),
            (2, 7, 9, 3, 3, 5),
            (1, 3, 3, 3, 3, 7),
            (3, 5, 4, 2, 4, 13),
        ] {
            let (off, n) = window_rows(c, hp, wp, kh, kw);
            let kk = off.len();
            let a = rng.uniform_vec(kk * m, -1.0, 1.0);
            let b = rng.uniform_vec(c * hp * wp, -1.0, 1.0);
            let mut got = vec![f32::NAN; m * n];
            let mut want = vec![0.0; m * n];
            gemm_atb_rows(kk, m, n, &a, &b, &off, &mut got);
            reference::gemm_atb_rows(kk, m, n, &a, &b, &off, &mut want);
            assert_near(&got, &want, tol(kk), || {
                format!("c={c} hp={hp} wp={wp} m={m}")
            });
        }
    }

    #[test]
    fn gemm_abt_batched_rows_matches_reference_on_overlapping_window_rows() {
        let mut rng = Rng::new(26);
        // (batch, c, hp, wp, kh, kw, m)
        for &(batch, c, hp, wp, kh, kw, m) in &[
            (8, 1, 32, 32, 5, 5, 6),
            (3, 6, 14, 14, 5, 5, 16),
            (2, 2, 7, 9, 3, 3, 5),
            (1, 1, 3, 3, 3, 3, 7),
            (5, 3, 5, 4, 2, 4, 13),
        ] {
            let (off, k) = window_rows(c, hp, wp, kh, kw);
            let n = off.len();
            let (a_bs, b_bs) = (m * k + 3, c * hp * wp + 5);
            let a = rng.uniform_vec(batch * a_bs, -1.0, 1.0);
            let b = rng.uniform_vec(batch * b_bs, -1.0, 1.0);
            let mut got = vec![f32::NAN; m * n];
            let mut want = vec![0.0; m * n];
            gemm_abt_batched_rows(batch, m, k, n, &a, a_bs, &b, b_bs, &off, &mut got);
            reference::gemm_abt_batched_rows(batch, m, k, n, &a, a_bs, &b, b_bs, &off, &mut want);
            assert_near(&got, &want, tol(batch * k), || {
                format!("batch={batch} c={c} hp={hp} wp={wp} m={m}")
            });
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn gemm_atb_rows_rejects_a_row_offset_past_the_end_of_b() {
        let (a, b) = ([1.0; 2], [1.0; 4]);
        let mut c = [0.0; 3];
        gemm_atb_rows(2, 1, 3, &a, &b, &[0, 2], &mut c);
    }

    #[test]
    fn gemm_abt_batched_of_one_pair_equals_gemm_abt_reference() {
        let mut rng = Rng::new(24);
        let (m, k, n) = (5, 13, 6);
        let a = rng.uniform_vec(m * k, -1.0, 1.0);
        let b = rng.uniform_vec(n * k, -1.0, 1.0);
        let mut c = vec![0.0; m * n];
        let mut r = vec![0.0; m * n];
        reference::gemm_abt_batched(1, m, k, n, &a, &b, &mut c, false);
        reference::gemm_abt(m, k, n, &a, &b, &mut r, false);
        assert_eq!(c, r);
    }

    #[test]
    fn the_avx2_path_is_exercised_when_the_cpu_has_it() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::env::var("LOWBIT_ISA").is_err()
        {
            assert_eq!(isa(), Isa::Avx2);
            return;
        }
        eprintln!(
            "AVX2+FMA not available or capped by LOWBIT_ISA: only the portable path was tested"
        );
    }
}
