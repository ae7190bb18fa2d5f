//! NF4 and FP4: per-value quantizers of the CUDA kernels and bitsandbytes' nibble packing (FORMATS.md §3).

use super::codebook::{
    FP4_BITS_BY_RANK, FP4_CODE, FP4_DEQUANT, FP4_THRESHOLDS, NF4_CODE, NF4_THRESHOLDS,
};
use std::fmt;
use std::str::FromStr;

/// The two 4-bit data types of bitsandbytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FourBitType {
    Nf4,
    Fp4,
}

impl FourBitType {
    pub fn name(self) -> &'static str {
        match self {
            FourBitType::Nf4 => "nf4",
            FourBitType::Fp4 => "fp4",
        }
    }

    /// The table stored as `quant_map` in checkpoints.
    pub fn quant_map(self) -> &'static [f32; 16] {
        match self {
            FourBitType::Nf4 => &NF4_CODE,
            FourBitType::Fp4 => &FP4_CODE,
        }
    }

    /// The table the dequantizer multiplies by absmax (FP4 has -0.0 at nibble 8 here).
    pub fn dequant_table(self) -> &'static [f32; 16] {
        match self {
            FourBitType::Nf4 => &NF4_CODE,
            FourBitType::Fp4 => &FP4_DEQUANT,
        }
    }

    /// The nibble for an already scaled value `s = x * rcp(absmax)`.
    #[inline(always)]
    pub fn quantize_value(self, s: f32) -> u8 {
        match self {
            FourBitType::Nf4 => quantize_nf4(s),
            FourBitType::Fp4 => quantize_fp4(s),
        }
    }
}

impl fmt::Display for FourBitType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FourBitType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "nf4" => Ok(FourBitType::Nf4),
            "fp4" => Ok(FourBitType::Fp4),
            _ => Err(crate::Error::UnknownFormat {
                got: s.to_string(),
                known: "nf4, fp4",
            }),
        }
    }
}

/// `dQuantizeNF4`: number of thresholds strictly below `s` (a value on a threshold goes down); NaN -> 0.
#[inline(always)]
pub fn quantize_nf4(s: f32) -> u8 {
    if s.is_nan() {
        return 0;
    }
    NF4_THRESHOLDS.iter().map(|&t| (t < s) as u8).sum()
}

/// `dQuantizeFP4`: sign bit iff `s < 0` (so -0.0 and NaN are positive); magnitude rank by strict `>`.
#[inline(always)]
pub fn quantize_fp4(s: f32) -> u8 {
    if s.is_nan() {
        return 0;
    }
    let a = s.abs();
    let rank: usize = FP4_THRESHOLDS.iter().map(|&t| (a > t) as usize).sum();
    FP4_BITS_BY_RANK[rank] | if s < 0.0 { 0b1000 } else { 0 }
}

/// Bytes needed for `n` packed nibbles.
pub fn packed_len(n: usize) -> usize {
    n.div_ceil(2)
}

/// Nibble `i` of a packed buffer: element 2k is the high nibble of byte k, element 2k+1 the low nibble.
#[inline(always)]
pub fn nibble(packed: &[u8], i: usize) -> u8 {
    let b = packed[i / 2];
    if i.is_multiple_of(2) {
        b >> 4
    } else {
        b & 0x0F
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_code_values_quantize_to_their_index() {
        for (i, &v) in NF4_CODE.iter().enumerate() {
            assert_eq!(quantize_nf4(v) as usize, i);
        }
    }

    #[test]
    fn fp4_signs() {
        assert_eq!(quantize_fp4(-0.0), 0);
        assert_eq!(quantize_fp4(f32::NAN), 0);
        assert_eq!(quantize_fp4(-1.0), 0b1011);
        assert_eq!(quantize_fp4(1.0), 0b0011);
        assert_eq!(quantize_fp4(-1e-6), 0b1000);
    }
}
