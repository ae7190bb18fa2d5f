//! LLM.int8() kernels (FORMATS.md §7).

use crate::backend::Int8Rows;
use crate::format::float::mul_ftz;
use crate::format::int8::mm_dequant_output;
use crate::format::rcp::fdividef_127;
use crate::tensor::Floats;
use half::f16;
use rayon::prelude::*;

pub fn vectorwise_quant(a: Floats, rows: usize, cols: usize, threshold: f32) -> Int8Rows {
    let af = a.to_f32_vec();
    // Inliers are `|a| < threshold`; everything else (NaN included) is an outlier.
    let outlier = |v: f32| threshold > 0.0 && (v.abs() >= threshold || v.is_nan());
    let mut q = vec![0i8; rows * cols];
    let row_stats: Vec<f32> = af
        .par_chunks(cols.max(1))
        .zip(q.par_chunks_mut(cols.max(1)))
        .map(|(row, qrow)| {
            let amax = row
                .iter()
                .filter(|v| !outlier(**v))
                .fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = fdividef_127(amax);
            for (qv, &v) in qrow.iter_mut().zip(row) {
                let p = mul_ftz(v, scale);
                // `__float2int_rn`; NaN (0 * inf for an all-zero row) gives 0.
                *qv = if outlier(v) || p.is_nan() {
                    0
                } else {
                    p.round_ties_even() as i8
                };
            }
            amax
        })
        .collect();
    let outlier_cols = (threshold > 0.0).then(|| {
        let cols_with: Vec<i64> = (0..cols)
            .filter(|&c| (0..rows).any(|r| outlier(af[r * cols + c])))
            .map(|c| c as i64)
            .collect();
        if rows > 1 {
            for &c in &cols_with {
                for r in 0..rows {
                    q[r * cols + c as usize] = 0;
                }
            }
        }
        cols_with
    });
    Int8Rows {
        q,
        row_stats,
        outlier_cols,
    }
}

pub fn vectorwise_dequant(q: &[i8], row_stats: &[f32], cols: usize) -> Vec<f32> {
    const INV_127: f32 = 1.0 / 127.0;
    q.iter()
        .enumerate()
        .map(|(i, &v)| v as f32 * row_stats[i / cols] * INV_127)
        .collect()
}

pub fn linear_matmul(a: &[i8], b: &[i8], m: usize, n: usize, k: usize) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    c.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(i, crow)| {
            let ar = &a[i * k..(i + 1) * k];
            for (j, cv) in crow.iter_mut().enumerate() {
                let br = &b[j * k..(j + 1) * k];
                *cv = ar.iter().zip(br).map(|(&x, &y)| x as i32 * y as i32).sum();
            }
        });
    c
}

pub fn mm_dequant(
    c: &[i32],
    row_stats: &[f32],
    col_stats: &[f32],
    bias: Option<Floats>,
) -> Vec<f16> {
    let n = col_stats.len();
    c.par_iter()
        .enumerate()
        .map(|(i, &v)| {
            let (r, j) = (i / n, i % n);
            let t = (v as f32 * row_stats[r]) * col_stats[j];
            let b = bias.map_or(0.0, |b| b.get_f32(j));
            mm_dequant_output(t, b)
        })
        .collect()
}
