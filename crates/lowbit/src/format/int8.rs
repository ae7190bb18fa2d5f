//! LLM.int8() constants (FORMATS.md §7).

/// The CUDA `int8_mm_dequant` constant, about 1/127^2. (bitsandbytes' CPU path uses 6.200124e-05.)
#[allow(clippy::excessive_precision)]
pub const MM_DEQUANT_SCALE: f32 = 6.200012e-05;

/// Default outlier threshold of `Linear8bitLt`.
pub const DEFAULT_THRESHOLD: f32 = 6.0;

/// `weight_format` value for the row-major layout, the only one bitsandbytes still reads.
pub const WEIGHT_FORMAT_ROW: u8 = 0;
