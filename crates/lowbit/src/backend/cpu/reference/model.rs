//! Reference ops of a transformer forward pass (Llama family): embedding gather, RoPE, SwiGLU/GELU, residual
//! add, causal grouped-query attention over a KV cache, KV-cache row writes. Inputs of any [`Float`] dtype are
//! widened exactly, arithmetic is float32, outputs are narrowed to the input dtype with round-to-nearest-even.
//!
//! Shapes are the caller's to validate (the op layer does it once); these loops assume consistent lengths.

use super::{PAR_MIN_ELEMS, par_min_chunks};
use crate::format::activation::{self, GeluKind};
use crate::format::rope::RopeLayout;
use crate::tensor::Float;
use rayon::prelude::*;

/// Rows of `table` (`[vocab, dim]`) picked by `ids`: `[ids.len(), dim]`, bit-exact. Every id must be below
/// `vocab`.
pub fn embedding<T: Float>(table: &[T], dim: usize, ids: &[u32]) -> Vec<T> {
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        let start = id as usize * dim;
        out.extend_from_slice(&table[start..start + dim]);
    }
    out
}

/// Rotates the first `rotary_dim` elements of every head of `x` (`[tokens, heads, head_dim]`); elements past
/// `rotary_dim` are copied unchanged. Token `t` uses row `pos_start + t` of `cos` and `sin`
/// (`[n_pos, rotary_dim / 2]`, from [`crate::format::rope::cos_sin_table`]). For a pair `(a, b)` with
/// angle index `i`: `a' = a c - b s`, `b' = b c + a s` in float32.
#[allow(clippy::too_many_arguments)]
pub fn rope<T: Float>(
    x: &[T],
    heads: usize,
    head_dim: usize,
    rotary_dim: usize,
    cos: &[f32],
    sin: &[f32],
    pos_start: usize,
    layout: RopeLayout,
) -> Vec<T> {
    let half = rotary_dim / 2;
    let row_len = heads * head_dim;
    let mut out = x.to_vec();
    if row_len == 0 {
        return out;
    }
    out.par_chunks_mut(row_len)
        .with_min_len(par_min_chunks(row_len))
        .enumerate()
        .for_each(|(t, row)| {
            let table = (pos_start + t) * half;
            let (c, s) = (&cos[table..table + half], &sin[table..table + half]);
            for head in row.chunks_mut(head_dim) {
                for i in 0..half {
                    let (ia, ib) = match layout {
                        RopeLayout::Halves => (i, i + half),
                        RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                    };
                    let (a, b) = (head[ia].to_f32(), head[ib].to_f32());
                    head[ia] = T::from_f32(a * c[i] - b * s[i]);
                    head[ib] = T::from_f32(b * c[i] + a * s[i]);
                }
            }
        });
    out
}

fn map2<T: Float>(a: &[T], b: &[T], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<T> {
    a.par_iter()
        .with_min_len(PAR_MIN_ELEMS)
        .zip(b)
        .map(|(&x, &y)| T::from_f32(f(x.to_f32(), y.to_f32())))
        .collect()
}

/// SwiGLU's `silu(gate) * up`, element-wise ([`activation::silu_mul`]).
pub fn silu_mul<T: Float>(gate: &[T], up: &[T]) -> Vec<T> {
    map2(gate, up, activation::silu_mul)
}

/// BitNet's `relu(gate)^2 * up`, element-wise ([`activation::relu2_mul`]).
pub fn relu2_mul<T: Float>(gate: &[T], up: &[T]) -> Vec<T> {
    map2(gate, up, activation::relu2_mul)
}

/// GELU, element-wise ([`activation::gelu`]).
pub fn gelu<T: Float>(x: &[T], kind: GeluKind) -> Vec<T> {
    x.par_iter()
        .with_min_len(PAR_MIN_ELEMS)
        .map(|&v| T::from_f32(activation::gelu(v.to_f32(), kind)))
        .collect()
}

/// `a + b`, element-wise (residual connections).
pub fn add<T: Float>(a: &[T], b: &[T]) -> Vec<T> {
    map2(a, b, |x, y| x + y)
}

/// Causal grouped-query attention of `q` (`[nq, n_heads, head_dim]`) over the first `kv_len` rows of the
/// caches `k`, `v` (`[kv_capacity, n_kv_heads, head_dim]`); returns `[nq, n_heads, head_dim]`.
///
/// Query row `i` sits at position `pos_start + i` and sees cache rows `0..=min(pos_start + i, kv_len - 1)`;
/// head `h` reads kv head `h / (n_heads / n_kv_heads)`. The float32 order (the spec the GPU is held to):
/// `s_j = (sum_d q_d k_jd, d ascending) * scale`; `m = max_j s_j`; `p_j = exp(s_j - m)`;
/// `l = sum_j p_j` and `o_d = sum_j p_j v_jd` (j ascending); output `o_d / l`. With `kv_len == 0` the
/// output is zero.
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
    let serial = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0.0f32, |acc, (&x, &y)| acc + x * y);
    attention_with(
        q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale, serial,
    )
}

/// Runs `task(scratch, o, row, n_keys, off)` for every (query row, head) output `o` (`head_dim` values of
/// `out`, in `[nq, n_heads, head_dim]` order) that sees a key, in parallel: `n_keys` cache rows (query row
/// `i` sits at position `pos_start + i`: causal) of the kv head that starts at `off` in a cache row. A task
/// reads up to `kv_len` keys and values of `head_dim` elements; its scratch comes from `init` once per rayon
/// split, not per task (a decode step runs one task per head in every layer). The attention bodies (this
/// module's and the fast CPU kernel's) share this, so the causal rule and the parallel split are one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn for_each_attention_task<T: Send, S>(
    out: &mut [T],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    kv_len: usize,
    pos_start: usize,
    init: impl Fn() -> S + Sync + Send,
    task: impl Fn(&mut S, &mut [T], usize, usize, usize) + Sync + Send,
) {
    if head_dim == 0 || n_heads == 0 {
        return;
    }
    let group = n_heads / n_kv_heads;
    out.par_chunks_mut(head_dim)
        .with_min_len(par_min_chunks(2 * kv_len.max(1) * head_dim))
        .enumerate()
        .for_each_init(init, |scratch, (row, o)| {
            let (i, h) = (row / n_heads, row % n_heads);
            let n_keys = (pos_start + i + 1).min(kv_len);
            if n_keys > 0 {
                task(scratch, o, row, n_keys, (h / group) * head_dim);
            }
        });
}

/// [`attention`] with the query-key dot product `dot(q_row, k_row)` (both widened to f32) supplied: the
/// reference sums it serially, the fast CPU kernel (`fast::attention`) in interleaved partial sums; every other
/// step is this one body.
#[allow(clippy::too_many_arguments)]
pub fn attention_with<T: Float>(
    q: &[T],
    k: &[T],
    v: &[T],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    kv_len: usize,
    pos_start: usize,
    scale: f32,
    dot: impl Fn(&[f32], &[f32]) -> f32 + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); q.len()];
    let kv_row = n_kv_heads * head_dim;
    for_each_attention_task(
        &mut out,
        n_heads,
        n_kv_heads,
        head_dim,
        kv_len,
        pos_start,
        || (Vec::new(), vec![0.0f32; head_dim], Vec::new(), Vec::new()),
        |(qv, kf, scores, acc), o, row, n_keys, off| {
            qv.clear();
            qv.extend(
                q[row * head_dim..(row + 1) * head_dim]
                    .iter()
                    .map(|x| x.to_f32()),
            );
            scores.clear();
            scores.extend((0..n_keys).map(|j| {
                let kr = &k[j * kv_row + off..j * kv_row + off + head_dim];
                let kr = match T::as_f32_slice(kr) {
                    Some(f) => f,
                    None => {
                        for (d, x) in kf.iter_mut().zip(kr) {
                            *d = x.to_f32();
                        }
                        &kf[..]
                    }
                };
                dot(qv, kr) * scale
            }));
            let l = softmax_weights(scores);
            acc.clear();
            acc.resize(head_dim, 0.0f32);
            for (j, &p) in scores.iter().enumerate() {
                let vr = &v[j * kv_row + off..j * kv_row + off + head_dim];
                for (a, x) in acc.iter_mut().zip(vr) {
                    *a += p * x.to_f32();
                }
            }
            for (o, a) in o.iter_mut().zip(acc.iter()) {
                *o = T::from_f32(a / l);
            }
        },
    );
    out
}

/// Attention's softmax step on one row of scores, in place: `p_j = exp(s_j - m)` with `m = max_j s_j`, and
/// their sum `l` in ascending `j` (the caller divides by it last).
pub(crate) fn softmax_weights(scores: &mut [f32]) -> f32 {
    let m = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut l = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - m).exp();
        l += *s;
    }
    l
}

/// Writes `src` (whole rows of `row_len`) into `dst` starting at row `dst_row`: a KV-cache append. The rows
/// must fit.
pub fn copy_rows<T: Copy>(dst: &mut [T], row_len: usize, dst_row: usize, src: &[T]) {
    let start = dst_row * row_len;
    dst[start..start + src.len()].copy_from_slice(src);
}
