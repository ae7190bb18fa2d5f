//! Floating-point ops around the quantized layers: matmul (nn.Linear layout), softmax, RMSNorm.
//! Accumulation is float32 with 8 interleaved partial sums; reductions over a row use float64.

use super::par_min_chunks;
use crate::tensor::{FloatVec, Floats};
use rayon::prelude::*;

pub fn matmul(
    x: Floats,
    w: Floats,
    bias: Option<Floats>,
    m: usize,
    n: usize,
    k: usize,
) -> FloatVec {
    let xf = x.to_f32_vec();
    let wf = w.to_f32_vec();
    let bf = bias.map(|b| b.to_f32_vec());
    let mut y = vec![0.0f32; m * n];
    y.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(i, yrow)| {
            let xr = &xf[i * k..(i + 1) * k];
            for (j, yv) in yrow.iter_mut().enumerate() {
                let wr = &wf[j * k..(j + 1) * k];
                let mut acc = [0.0f32; 8];
                for (t, (a, b)) in xr.iter().zip(wr).enumerate() {
                    acc[t % 8] += a * b;
                }
                *yv = acc.iter().sum::<f32>() + bf.as_ref().map_or(0.0, |b| b[j]);
            }
        });
    FloatVec::from_f32(y, x.dtype())
}

pub fn softmax(x: Floats, cols: usize) -> FloatVec {
    let mut y = x.to_f32_vec();
    y.par_chunks_mut(cols.max(1))
        .with_min_len(par_min_chunks(cols))
        .for_each(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut sum = 0.0f64;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v as f64;
            }
            let inv = (1.0 / sum) as f32;
            row.iter_mut().for_each(|v| *v *= inv);
        });
    FloatVec::from_f32(y, x.dtype())
}

pub fn rms_norm(x: Floats, weight: Floats, eps: f32, cols: usize) -> FloatVec {
    let mut y = x.to_f32_vec();
    let wf = weight.to_f32_vec();
    y.par_chunks_mut(cols.max(1))
        .with_min_len(par_min_chunks(cols))
        .for_each(|row| {
            let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / cols as f64;
            let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
            row.iter_mut()
                .zip(&wf)
                .for_each(|(v, &w)| *v = *v * inv * w);
        });
    FloatVec::from_f32(y, x.dtype())
}
