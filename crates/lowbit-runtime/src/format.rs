//! The `.lbq` deployable model file.
