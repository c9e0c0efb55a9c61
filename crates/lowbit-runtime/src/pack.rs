//! Weight codes packed at their bit width. Packing is along K within each output row; each row starts on a byte.
//!
//! Bit order (normative): `I4x2` stores element `2i` in the low nibble and `2i+1` in the high nibble of byte `i`,
//! two's complement; `I2x4` stores element `4i+j` in bits `2j..2j+2`, two's complement; `B1x8` stores element
//! `8i+j` in bit `j`, 1 meaning +1 and 0 meaning -1. Padding codes at a row's end are 0 (for `B1x8`: bit 0).
use serde::{Deserialize, Serialize};

/// Storage layout of weight codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Packing {
    /// One i8 per code (bit widths 5..=8).
    I8,
    /// Two 4-bit codes per byte (bit widths 3..=4).
    I4x2,
    /// Four 2-bit codes per byte (ternary).
    I2x4,
    /// Eight 1-bit codes per byte (binary).
    B1x8,
}

/// Packed weight matrix: `rows` output rows of `cols` codes each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedWeights {
    /// Logical bit width of the codes (1..=8).
    pub bits: u32,
    /// Storage layout.
    pub packing: Packing,
    /// Number of rows (output channels).
    pub rows: usize,
    /// Codes per row (K).
    pub cols: usize,
    /// Packed bytes, `rows * row_bytes` long.
    pub data: Vec<u8>,
}
