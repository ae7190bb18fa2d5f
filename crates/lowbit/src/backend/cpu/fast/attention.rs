//! Causal grouped-query attention on the CPU, vectorised: the reference's algorithm (scores, max, exp,
//! weighted sum of values, one division; `reference::model::attention`) with each query-key dot product
//! summed in 16 interleaved partial sums, which the compiler keeps in SIMD registers, instead of one serial
//! chain of `head_dim` dependent adds. The sum order is fixed (lane `d % 16`, then a pairwise tree), so results
//! do not depend on the CPU; they stay within the reference's documented bound of the float64 answer.

use crate::backend::cpu::reference::model::attention_with;
use crate::tensor::Float;

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
    attention_with(
        q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale, dot,
    )
}
