//! Integer kernels: a normative scalar reference, SIMD variants, and run-time dispatch.
pub mod reference;
