//! Weight codes packed at their bit width. Packing is along K within each output row; each row starts on a byte.
//!
//! Bit order (normative): `I4x2` stores element `2i` in the low nibble and `2i+1` in the high nibble of byte `i`,
//! two's complement; `I2x4` stores element `4i+j` in bits `2j..2j+2`, two's complement; `B1x8` stores element
//! `8i+j` in bit `j`, 1 meaning +1 and 0 meaning -1. Padding codes at a row's end are 0 (for `B1x8`: bit 0).
use crate::error::QuantError;
use crate::qparams::weight_code_range;
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

impl Packing {
    /// The storage layout for a logical bit width: 1 -> `B1x8`, 2 -> `I2x4`, 3..=4 -> `I4x2`, 5..=8 -> `I8`.
    pub fn for_bits(bits: u32) -> Result<Packing, QuantError> {
        match bits {
            1 => Ok(Packing::B1x8),
            2 => Ok(Packing::I2x4),
            3..=4 => Ok(Packing::I4x2),
            5..=8 => Ok(Packing::I8),
            _ => Err(QuantError::InvalidBitWidth { bits }),
        }
    }

    /// Codes stored in one byte (1, 2, 4 or 8).
    pub fn codes_per_byte(self) -> usize {
        match self {
            Packing::I8 => 1,
            Packing::I4x2 => 2,
            Packing::I2x4 => 4,
            Packing::B1x8 => 8,
        }
    }

    /// Bits of storage per code (8, 4, 2 or 1).
    pub fn storage_bits(self) -> u32 {
        8 / self.codes_per_byte() as u32
    }
}

/// Bytes of one packed row of `cols` codes: `ceil(cols / codes_per_byte)`.
pub fn row_bytes(packing: Packing, cols: usize) -> usize {
    cols.div_ceil(packing.codes_per_byte())
}

/// Decodes code `j` (0-based within its byte) of a packed byte. Normative bit order, see the module doc.
#[inline]
pub fn decode(packing: Packing, byte: u8, j: usize) -> i8 {
    match packing {
        Packing::I8 => byte as i8,
        // Shift the nibble / crumb to the top, then arithmetic-shift back down to sign-extend.
        Packing::I4x2 => ((byte >> (4 * j)) << 4) as i8 >> 4,
        Packing::I2x4 => ((byte >> (2 * j)) << 6) as i8 >> 6,
        Packing::B1x8 => {
            if (byte >> j) & 1 == 1 {
                1
            } else {
                -1
            }
        }
    }
}

fn code_error(bits: u32, r: usize, c: usize, code: i32, lo: i32, hi: i32) -> QuantError {
    QuantError::InvalidQParams {
        tensor: "weights".to_string(),
        reason: format!("{bits}-bit code {code} at row {r}, col {c} is outside [{lo}, {hi}]"),
    }
}

impl PackedWeights {
    /// Packs `rows x cols` codes (row-major, one output row of K codes after another) at `bits` bits.
    ///
    /// Every code must lie in [`crate::qparams::weight_code_range`]`(bits)`; binary (`bits == 1`) codes must be
    /// exactly -1 or +1.
    pub fn pack(bits: u32, rows: usize, cols: usize, codes: &[i8]) -> Result<Self, QuantError> {
        let packing = Packing::for_bits(bits)?;
        let (lo, hi) = weight_code_range(bits)?;
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| QuantError::ShapeMismatch {
                context: "PackedWeights::pack".to_string(),
                detail: format!("{rows} x {cols} overflows usize"),
            })?;
        if codes.len() != n {
            return Err(QuantError::ShapeMismatch {
                context: "PackedWeights::pack".to_string(),
                detail: format!(
                    "expected {rows} x {cols} = {n} codes, found {}",
                    codes.len()
                ),
            });
        }
        let rb = row_bytes(packing, cols);
        let per = packing.codes_per_byte();
        let sb = packing.storage_bits();
        let mask = ((1u16 << sb) - 1) as u8;
        let mut data = vec![0u8; rows * rb];
        for r in 0..rows {
            let src = &codes[r * cols..(r + 1) * cols];
            let dst = &mut data[r * rb..(r + 1) * rb];
            for (c, &q) in src.iter().enumerate() {
                let q32 = q as i32;
                if q32 < lo || q32 > hi || (bits == 1 && q32 == 0) {
                    return Err(code_error(bits, r, c, q32, lo, hi));
                }
                let stored = match packing {
                    Packing::B1x8 => u8::from(q > 0),
                    _ => (q as u8) & mask,
                };
                dst[c / per] |= stored << (sb as usize * (c % per));
            }
        }
        Ok(Self {
            bits,
            packing,
            rows,
            cols,
            data,
        })
    }

    /// Bytes of one packed row.
    pub fn row_bytes(&self) -> usize {
        row_bytes(self.packing, self.cols)
    }

    /// The packed bytes of row `r`. Panics if `r >= rows` or the data is shorter than `validate` requires.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Decodes row `r` into `out[..cols]`. Panics if `r >= rows` or `out.len() < cols`.
    pub fn unpack_row(&self, r: usize, out: &mut [i8]) {
        let row = self.row(r);
        let out = &mut out[..self.cols];
        // One loop per packing, without a division per code: engine loading unpacks every row several times.
        match self.packing {
            Packing::I8 => {
                for (o, &b) in out.iter_mut().zip(row) {
                    *o = b as i8;
                }
            }
            packing => {
                for (codes, &b) in out.chunks_mut(packing.codes_per_byte()).zip(row) {
                    for (j, o) in codes.iter_mut().enumerate() {
                        *o = decode(packing, b, j);
                    }
                }
            }
        }
    }

    /// The code at row `r`, column `c`. Panics if out of bounds.
    pub fn code(&self, r: usize, c: usize) -> i8 {
        assert!(c < self.cols, "column {c} out of bounds ({})", self.cols);
        let per = self.packing.codes_per_byte();
        decode(self.packing, self.row(r)[c / per], c % per)
    }

    /// Checks the invariants kernels rely on: bit width in 1..=8 and matching `packing`, data length
    /// `rows * row_bytes`, every code inside its range, and padding bits at each row's end zero.
    pub fn validate(&self) -> Result<(), QuantError> {
        let packing = Packing::for_bits(self.bits)?;
        if packing != self.packing {
            return Err(QuantError::InvalidQParams {
                tensor: "weights".to_string(),
                reason: format!(
                    "{}-bit codes need {:?}, found {:?}",
                    self.bits, packing, self.packing
                ),
            });
        }
        let rb = row_bytes(packing, self.cols);
        let expected = self.rows.checked_mul(rb);
        if expected != Some(self.data.len()) {
            return Err(QuantError::ShapeMismatch {
                context: "PackedWeights::validate".to_string(),
                detail: format!(
                    "{} rows x {} bytes expected, found {} bytes",
                    self.rows,
                    rb,
                    self.data.len()
                ),
            });
        }
        let (lo, hi) = weight_code_range(self.bits)?;
        // Int8 codes have no padding bits: one pass over the bytes (vectorized) settles the common case, and the
        // loop below runs only to name the first bad code.
        if packing == Packing::I8 {
            let (min, max) = self.data.iter().fold((i8::MAX, i8::MIN), |(min, max), &b| {
                (min.min(b as i8), max.max(b as i8))
            });
            if self.data.is_empty() || (lo <= i32::from(min) && i32::from(max) <= hi) {
                return Ok(());
            }
        }
        let per = packing.codes_per_byte();
        let sb = packing.storage_bits() as usize;
        for r in 0..self.rows {
            let row = &self.data[r * rb..(r + 1) * rb];
            for (b, &byte) in row.iter().enumerate() {
                for j in 0..per {
                    let c = b * per + j;
                    let stored = (byte >> (sb * j)) & (((1u16 << sb) - 1) as u8);
                    if c >= self.cols {
                        if stored != 0 {
                            return Err(QuantError::InvalidQParams {
                                tensor: "weights".to_string(),
                                reason: format!("nonzero padding bits in row {r}"),
                            });
                        }
                        continue;
                    }
                    let q = decode(packing, byte, j) as i32;
                    if q < lo || q > hi {
                        return Err(code_error(self.bits, r, c, q, lo, hi));
                    }
                }
            }
        }
        Ok(())
    }
}
