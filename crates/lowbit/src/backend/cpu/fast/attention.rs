//! Causal grouped-query attention on the CPU, vectorised: the reference's algorithm (scores, max, exp,
//! weighted sum of values, one division; `reference::model::attention`) with each query-key dot product
//! summed in 16 interleaved partial sums, which the compiler keeps in SIMD registers, instead of one serial
//! chain of `head_dim` dependent adds. The sum order is fixed (lane `d % 16`, then a pairwise tree), so results
//! do not depend on the CPU; they stay within the reference's documented bound of the float64 answer.

use crate::backend::cpu::reference::par_min_chunks;
use crate::tensor::Float;
use rayon::prelude::*;

const LANES: usize = 16;

/// `sum_d a[d] * b[d]` over 16 interleaved partial sums, then a pairwise tree.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    for i in 0..ar.len() {
        acc[i] += ar[i] * br[i];
    }
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            acc[i] += acc[i + n];
        }
    }
    acc[0]
}

/// As [`reference::model::attention`](crate::backend::cpu::reference::model::attention): `q`
/// `[nq, n_heads, head_dim]` over the first `kv_len` rows of `k`, `v` `[kv_capacity, n_kv_heads, head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attention<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    kv_len: usize,
    pos_start: usize,
    scale: f32,
) -> Vec<T> {
    let mut out = vec![T::default(); q.len()];
    if head_dim == 0 || n_heads == 0 {
        return out;
    }
    let group = n_heads / n_kv_heads;
    let kv_row = n_kv_heads * head_dim;
    out.par_chunks_mut(head_dim)
        .with_min_len(par_min_chunks(2 * kv_len.max(1) * head_dim))
        .enumerate()
        .for_each(|(row, o)| {
            let (i, h) = (row / n_heads, row % n_heads);
            let n_keys = (pos_start + i + 1).min(kv_len);
            if n_keys == 0 {
                return;
            }
            let qv: Vec<f32> = q[row * head_dim..(row + 1) * head_dim]
                .iter()
                .map(|x| x.to_f32())
                .collect();
            let off = (h / group) * head_dim;
            let mut kf = vec![0.0f32; head_dim];
            let scores: Vec<f32> = (0..n_keys)
                .map(|j| {
                    let kr = &k[j * kv_row + off..j * kv_row + off + head_dim];
                    for (d, x) in kf.iter_mut().zip(kr) {
                        *d = x.to_f32();
                    }
                    dot(&qv, &kf) * scale
                })
                .collect();
            let m = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut acc = vec![0.0f32; head_dim];
            let mut l = 0.0f32;
            for (j, &s) in scores.iter().enumerate() {
                let p = (s - m).exp();
                l += p;
                let vr = &v[j * kv_row + off..j * kv_row + off + head_dim];
                for (a, x) in acc.iter_mut().zip(vr) {
                    *a += p * x.to_f32();
                }
            }
            for (o, a) in o.iter_mut().zip(&acc) {
                *o = T::from_f32(a / l);
            }
        });
    out
}
