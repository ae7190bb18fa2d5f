//! Reference kernels: the executable spec every other backend is tested against.

pub mod blockwise;
pub mod dense;
pub mod fourbit;
pub mod int8;
pub mod model;
pub mod ternary;

use crate::format::float::mul_ftz;

/// Elements of work below which an element-wise or row-wise op runs on the calling thread: waking the
/// thread pool costs tens of microseconds (more on a busy machine), which for the small ops of a decode step
/// (one row of a few thousand elements) is many times the work itself. Results do not depend on it: every
/// element or row is computed the same way on whichever thread runs it.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 15;

/// Chunks of `chunk_elems` elements each parallel task takes at least (see [`PAR_MIN_ELEMS`]).
pub(crate) fn par_min_chunks(chunk_elems: usize) -> usize {
    (PAR_MIN_ELEMS / chunk_elems.max(1)).max(1)
}
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
