//! BitNet b1.58 kernels (FORMATS.md §9).

use crate::backend::PackedTernary;
use crate::format::ternary::{
    activation_scale, packed_rows, quantize_activation, rescale, ternarize, unpack_value,
};
use crate::tensor::Floats;
use rayon::prelude::*;

pub fn quantize(w: Floats, rows: usize, cols: usize, weight_scale: f32) -> Vec<u8> {
    // Packed row r holds source rows r, R + r, 2R + r, 3R + r (transformers' `pack_weights`), so packed rows
    // are independent and run in parallel; `format::ternary::pack` is the same layout, sequentially.
    let r_rows = packed_rows(rows);
    let mut packed = vec![0u8; r_rows * cols];
    packed
        .par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(r, out)| {
            for i in 0..4 {
                let row = i * r_rows + r;
                if row >= rows {
                    break;
                }
                for (c, o) in out.iter_mut().enumerate() {
                    let t = ternarize(w.get_f32(row * cols + c), weight_scale);
                    *o |= ((t + 1) as u8) << (2 * i);
                }
            }
        });
    packed
}

pub fn act_quant(x: Floats, rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    if cols == 0 {
        // Empty rows still have a scale (that of absmax 0), one per row.
        return (Vec::new(), vec![activation_scale(0.0); rows]);
    }
    let xf = x.to_f32_vec();
    let mut q = vec![0i8; rows * cols];
    let scales: Vec<f32> = xf
        .par_chunks(cols.max(1))
        .zip(q.par_chunks_mut(cols.max(1)))
        .map(|(row, qrow)| {
            let s = activation_scale(row.iter().fold(0.0f32, |m, v| m.max(v.abs())));
            for (qv, &v) in qrow.iter_mut().zip(row) {
                *qv = quantize_activation(v, s);
            }
            s
        })
        .collect();
    (q, scales)
}

pub fn matmul(
    xq: &[i8],
    x_scale: &[f32],
    batch: usize,
    w: PackedTernary,
    bias: Option<Floats>,
) -> Vec<f32> {
    let (rows, cols) = (w.rows, w.cols);
    let r_rows = packed_rows(rows);
    let mut y = vec![0.0f32; batch * rows];
    y.par_chunks_mut(rows.max(1))
        .enumerate()
        .for_each(|(b, yrow)| {
            let xr = &xq[b * cols..(b + 1) * cols];
            for (o, yv) in yrow.iter_mut().enumerate() {
                let acc: i32 = (0..cols)
                    .map(|k| xr[k] as i32 * unpack_value(w.packed, r_rows, cols, o, k) as i32)
                    .sum();
                let bias = bias.map_or(0.0, |bb| bb.get_f32(o));
                *yv = rescale(acc, x_scale[b], w.weight_scale) + bias;
            }
        });
    y
}
