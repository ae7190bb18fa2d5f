//! Causal grouped-query attention on the CPU, vectorised: the reference's algorithm (scores, max, exp,
//! weighted sum of values, one division; `reference::model::attention`) with each query-key dot product
//! summed in 16 interleaved partial sums, which the compiler keeps in SIMD registers, instead of one serial
//! chain of `head_dim` dependent adds. The sum order is fixed (lane `d % 16`, then a pairwise tree), so results
//! do not depend on the CPU; they stay within the reference's documented bound of the float64 answer.
//!
//! A block of query rows (prefill) takes two GEMMs per head instead: scores `S = Q K^T` and outputs
//! `O = P V` through the register-blocked float GEMM, with the causal mask and the softmax between them, heads
//! in parallel.
//! Dot products of one key at a time per (row, head) made attention a third of a 370-token SmolLM2 prefill;
//! as matrix products each key row is read once per head and block of rows.

use super::gemm::gemm_nt;
use crate::backend::cpu::reference::model::{attention_with, softmax_weights};
use crate::tensor::Float;
use rayon::prelude::*;

/// Query rows from which attention runs as GEMMs.
const GEMM_MIN_ROWS: usize = 16;

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
/// `[nq, n_heads, head_dim]` over the first `kv_len` rows of `k`, `v` `[kv_capacity, n_kv_heads, head_dim]`,
/// through the same body with the interleaved [`dot`].
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
    let nq = q.len() / (n_heads * head_dim).max(1);
    if nq >= GEMM_MIN_ROWS && kv_len > 0 && n_kv_heads > 0 {
        return attention_gemm(
            q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale,
        );
    }
    attention_with(
        q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale, dot,
    )
}

/// [`attention`] for a block of `nq` query rows, heads in parallel: `S = Q_h K_g^T * scale` over the first
/// `kv_len` cache rows, the causal mask and softmax per row (`p_j = exp(s_j - m)` for the keys the row
/// sees, 0 past them, `l = sum_j p_j` in order), then `O = P V_g / l`. Only cache rows below `kv_len` are read.
#[allow(clippy::too_many_arguments)]
fn attention_gemm<T: Float>(
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
    let isa = super::isa();
    let nq = q.len() / (n_heads * head_dim);
    let group = n_heads / n_kv_heads;
    let kv_row = n_kv_heads * head_dim;
    // Heads in parallel (each product alone makes few tasks: k = head_dim, or head_dim output columns).
    let heads: Vec<(Vec<f32>, Vec<f32>)> = (0..n_heads)
        .into_par_iter()
        .map(|h| {
            let off = (h / group) * head_dim;
            let mut qh = vec![0.0f32; nq * head_dim];
            for (i, row) in qh.chunks_exact_mut(head_dim).enumerate() {
                let src = &q[(i * n_heads + h) * head_dim..][..head_dim];
                for (d, x) in row.iter_mut().zip(src) {
                    *d = x.to_f32();
                }
            }
            let key = |j: usize, k0: usize, o: &mut [f32]| {
                for (d, x) in o.iter_mut().zip(&k[j * kv_row + off + k0..]) {
                    *d = x.to_f32();
                }
            };
            let mut p = gemm_nt(&qh, nq, kv_len, head_dim, None, key, isa);
            let sums: Vec<f32> = p
                .par_chunks_mut(kv_len)
                .enumerate()
                .map(|(i, row)| {
                    let n_keys = (pos_start + i + 1).min(kv_len);
                    let seen = &mut row[..n_keys];
                    for s in seen.iter_mut() {
                        *s *= scale;
                    }
                    let l = softmax_weights(seen);
                    row[n_keys..].fill(0.0);
                    l
                })
                .collect();
            // V_g^T row d, columns k0..: the values' component d, key by key.
            let value = |d: usize, k0: usize, o: &mut [f32]| {
                for (t, x) in o.iter_mut().enumerate() {
                    *x = v[(k0 + t) * kv_row + off + d].to_f32();
                }
            };
            (gemm_nt(&p, nq, head_dim, kv_len, None, value, isa), sums)
        })
        .collect();
    let mut out = vec![T::default(); q.len()];
    for (h, (o, sums)) in heads.iter().enumerate() {
        for (i, (row, l)) in o.chunks_exact(head_dim).zip(sums).enumerate() {
            let dst = &mut out[(i * n_heads + h) * head_dim..][..head_dim];
            for (y, a) in dst.iter_mut().zip(row) {
                *y = T::from_f32(a / l);
            }
        }
    }
    out
}
