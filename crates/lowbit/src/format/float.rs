//! Float rules of bitsandbytes' `--use_fast_math` CUDA build (FORMATS.md §0).

/// Smallest normal f32.
pub const FLT_MIN: f32 = f32::MIN_POSITIVE;

/// Flush to zero: a float32 value below 2^-126 in magnitude becomes a zero of the same sign.
#[inline(always)]
pub fn ftz(x: f32) -> f32 {
    if x.abs() < FLT_MIN {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// `x * r` as an FTZ multiply: subnormal inputs count as zero and a subnormal product flushes to zero.
#[inline(always)]
pub fn mul_ftz(x: f32, r: f32) -> f32 {
    ftz(ftz(x) * r)
}
