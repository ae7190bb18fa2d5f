//! NF4 / FP4 quantization, dequantization and the 4-bit linear kernels (FORMATS.md §3, §6).

use super::{block_absmax, block_rcp, scaled};
use crate::backend::{BlockCodes, Packed4bit};
use crate::format::FourBitType;
use crate::format::float::ftz;
use crate::format::fourbit::nibble;
use crate::tensor::{DType, Float, FloatVec, Floats};
use rayon::prelude::*;

pub fn quantize<T: Float>(x: &[T], quant_type: FourBitType, blocksize: usize) -> BlockCodes {
    let n = x.len();
    let mut codes = vec![0u8; n.div_ceil(2)];
    // Block sizes are even, so each block owns whole bytes.
    let absmax: Vec<f32> = x
        .par_chunks(blocksize)
        .zip(codes.par_chunks_mut(blocksize / 2))
        .map(|(block, out)| {
            let amax = block_absmax(block);
            let r = block_rcp(amax);
            let q = |v: f32| quant_type.quantize_value(scaled(v, r));
            for (byte, pair) in out.iter_mut().zip(block.chunks(2)) {
                let hi = q(pair[0].to_f32());
                // An odd last value pairs with a padding 0.0 scaled by the same reciprocal.
                let lo = q(pair.get(1).map_or(0.0, |v| v.to_f32()));
                *byte = (hi << 4) | lo;
            }
            amax
        })
        .collect();
    BlockCodes { codes, absmax }
}

pub fn dequantize(
    packed: &[u8],
    absmax: &[f32],
    quant_type: FourBitType,
    blocksize: usize,
    n: usize,
    dtype: DType,
) -> FloatVec {
    let table = quant_type.dequant_table();
    let mut out = vec![0.0f32; n];
    out.par_chunks_mut(blocksize)
        .enumerate()
        .for_each(|(b, o)| {
            let a = absmax[b];
            for (j, o) in o.iter_mut().enumerate() {
                *o = ftz(table[nibble(packed, b * blocksize + j) as usize] * a);
            }
        });
    FloatVec::from_f32(out, dtype)
}

/// Dequantized weight element `i` (flat index) as float32.
#[inline(always)]
fn weight_at(w: &Packed4bit, table: &[f32; 16], i: usize) -> f32 {
    ftz(table[nibble(w.packed, i) as usize] * w.absmax[i / w.blocksize])
}

/// Dot product with 8 interleaved float32 accumulators (the order a SIMD loop uses).
#[inline]
fn dot(n: usize, mut term: impl FnMut(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    for i in 0..n {
        acc[i % 8] += term(i);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

fn bias_at(bias: Option<Floats>, j: usize) -> f32 {
    bias.map_or(0.0, |b| b.get_f32(j))
}

pub fn gemv(x: Floats, w: Packed4bit, bias: Option<Floats>) -> FloatVec {
    let table = w.quant_type.dequant_table();
    let xf = x.to_f32_vec();
    let y: Vec<f32> = (0..w.rows)
        .into_par_iter()
        .map(|r| {
            let base = r * w.cols;
            dot(w.cols, |k| xf[k] * weight_at(&w, table, base + k)) + bias_at(bias, r)
        })
        .collect();
    FloatVec::from_f32(y, x.dtype())
}

/// Rows of W dequantized together: big enough to reuse across the batch, small enough for L2.
const ROW_TILE: usize = 16;

pub fn matmul(x: Floats, batch: usize, w: Packed4bit, bias: Option<Floats>) -> FloatVec {
    let table = w.quant_type.dequant_table();
    let xf = x.to_f32_vec();
    let (rows, cols) = (w.rows, w.cols);
    // Tiles of output columns (weight rows); each task dequantizes its tile once and reuses it for every batch row.
    let tiles: Vec<(usize, Vec<f32>)> = (0..rows.div_ceil(ROW_TILE))
        .into_par_iter()
        .map(|t| {
            let r0 = t * ROW_TILE;
            let r1 = (r0 + ROW_TILE).min(rows);
            let wt: Vec<f32> = (r0 * cols..r1 * cols)
                .map(|i| weight_at(&w, table, i))
                .collect();
            let mut out = vec![0.0f32; batch * (r1 - r0)];
            for b in 0..batch {
                let xr = &xf[b * cols..(b + 1) * cols];
                for r in r0..r1 {
                    let wr = &wt[(r - r0) * cols..(r - r0 + 1) * cols];
                    out[b * (r1 - r0) + (r - r0)] = dot(cols, |k| xr[k] * wr[k]) + bias_at(bias, r);
                }
            }
            (r0, out)
        })
        .collect();
    let mut y = vec![0.0f32; batch * rows];
    for (r0, out) in tiles {
        let width = out.len() / batch.max(1);
        for b in 0..batch {
            y[b * rows + r0..b * rows + r0 + width]
                .copy_from_slice(&out[b * width..(b + 1) * width]);
        }
    }
    FloatVec::from_f32(y, x.dtype())
}
