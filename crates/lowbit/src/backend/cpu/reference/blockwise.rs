//! 8-bit blockwise quantization (FORMATS.md §2).

use super::{block_absmax, block_rcp, scaled};
use crate::backend::BlockCodes;
use crate::format::Codebook8;
use crate::format::float::ftz;
use crate::tensor::{DType, Float, FloatVec};
use rayon::prelude::*;

/// Nearest code index for a scaled value: `#{j : m_j < s}`, a value exactly on a midpoint goes to the even
/// index (the CUDA binary search always ends on an even pivot). NaN -> 0.
#[inline]
pub fn quantize_value(s: f32, code: &Codebook8) -> u8 {
    if s.is_nan() {
        return 0;
    }
    let c = code.midpoints.partition_point(|&m| m < s);
    let tie_to_odd = c < 255 && code.midpoints[c] == s && c % 2 == 1;
    (c + tie_to_odd as usize) as u8
}

pub fn quantize<T: Float>(x: &[T], code: &Codebook8, blocksize: usize) -> BlockCodes {
    let mut codes = vec![0u8; x.len()];
    let absmax: Vec<f32> = x
        .par_chunks(blocksize)
        .zip(codes.par_chunks_mut(blocksize))
        .map(|(block, out)| {
            let amax = block_absmax(block);
            let r = block_rcp(amax);
            for (o, v) in out.iter_mut().zip(block) {
                *o = quantize_value(scaled(v.to_f32(), r), code);
            }
            amax
        })
        .collect();
    BlockCodes { codes, absmax }
}

pub fn dequantize(
    q: &[u8],
    absmax: &[f32],
    code: &[f32; 256],
    blocksize: usize,
    dtype: DType,
) -> FloatVec {
    let mut out = vec![0.0f32; q.len()];
    out.par_chunks_mut(blocksize)
        .zip(q.par_chunks(blocksize))
        .zip(absmax.par_iter())
        .for_each(|((o, qb), &a)| {
            for (o, &qv) in o.iter_mut().zip(qb) {
                *o = ftz(code[qv as usize] * a);
            }
        });
    FloatVec::from_f32(out, dtype)
}
