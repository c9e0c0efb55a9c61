//! Scalar reference kernels (normative).
