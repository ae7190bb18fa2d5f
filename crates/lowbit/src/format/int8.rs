//! LLM.int8() constants (FORMATS.md §7).

/// The CUDA `int8_mm_dequant` constant, about 1/127^2. (bitsandbytes' CPU path uses 6.200124e-05.)
#[allow(clippy::excessive_precision)]
pub const MM_DEQUANT_SCALE: f32 = 6.200012e-05;

/// The last step of `int8_mm_dequant` for the product `t = (f32(c) * row_stat) * col_stat`: one fused
/// multiply-add with the scale and bias (CUDA's `fmaf`, one rounding), then round to f16.
#[inline]
pub fn mm_dequant_output(t: f32, bias: f32) -> half::f16 {
    half::f16::from_f32(t.mul_add(MM_DEQUANT_SCALE, bias))
}

/// Default outlier threshold of `Linear8bitLt`.
pub const DEFAULT_THRESHOLD: f32 = 6.0;

/// `weight_format` value for the row-major layout, the only one bitsandbytes still reads.
pub const WEIGHT_FORMAT_ROW: u8 = 0;
