//! Reference kernels: the executable spec every other backend is tested against.

pub mod blockwise;
pub mod dense;
pub mod fourbit;
pub mod int8;
pub mod model;
pub mod ternary;

use crate::format::float::mul_ftz;
use crate::format::rcp_approx;
use crate::tensor::Float;

/// `max |x|` over a block (NaN ignored, as CUDA's `fmaxf`).
#[inline]
pub(crate) fn block_absmax<T: Float>(block: &[T]) -> f32 {
    block.iter().fold(0.0f32, |m, v| m.max(v.to_f32().abs()))
}

/// The kernels' scaled value `ftz(float32(x) * rcp(absmax))`.
#[inline(always)]
pub(crate) fn scaled(x: f32, r: f32) -> f32 {
    mul_ftz(x, r)
}

/// `rcp(absmax)` for a block.
#[inline(always)]
pub(crate) fn block_rcp(absmax: f32) -> f32 {
    rcp_approx(absmax)
}
