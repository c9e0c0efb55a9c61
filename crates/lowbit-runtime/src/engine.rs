//! Runs a [`crate::QuantModel`] integer-only.
