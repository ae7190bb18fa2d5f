//! Causal grouped-query attention on the CPU, vectorised: the reference's algorithm (scores, max, exp,
//! weighted sum of values, one division; `reference::model::attention`) with each query-key dot product
//! summed in 16 interleaved partial sums, which the compiler keeps in SIMD registers, instead of one serial
//! chain of `head_dim` dependent adds. The sum order is fixed (lane `d % 16`, then a pairwise tree), so results
//! do not depend on the CPU; they stay within the reference's documented bound of the float64 answer. With
//! f32 operands on an AVX-512 CPU (a model's KV cache) the same body runs in one `target_feature` function
//! with the value sums held in registers: the same bits, about 30% less time per decode step's attention.
//!
//! A block of query rows (prefill) takes two GEMMs per head instead: scores `S = Q K^T` and outputs
//! `O = P V` through the register-blocked float GEMM, with the causal mask and the softmax between them, heads
//! in parallel.
//! Dot products of one key at a time per (row, head) made attention a third of a 370-token SmolLM2 prefill;
//! as matrix products each key row is read once per head and block of rows. The rows go in causal blocks of
//! 128, each multiplied only with the keys its last row sees (a 680-token prefill's attention 525-534 ->
//! 369-394 ms).

use super::gemm::gemm_nt;
use crate::backend::cpu::reference::model::{attention_with, softmax_weights};
use crate::tensor::Float;
use rayon::prelude::*;

/// Query rows from which attention runs as GEMMs.
const GEMM_MIN_ROWS: usize = 16;

/// Query rows per causal block of the GEMM route: each block multiplies only the keys its last row sees.
const ROW_BLOCK: usize = 128;

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
    #[cfg(target_arch = "x86_64")]
    if nq >= GEMM_MIN_ROWS
        && kv_len > 0
        && n_kv_heads > 0
        && head_dim.is_multiple_of(LANES)
        && super::isa() == super::Isa::Avx512
    {
        let out = match as_f32(q, k, v) {
            Some((q, k, v)) => fused::attention(
                q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale,
            ),
            None => {
                // f16/bf16: the queries and the cache rows the prompt sees, widened once (exact), so the
                // fused kernel runs on f32; O(rows) conversions against O(rows^2) products.
                let seen = (pos_start + nq).min(kv_len) * n_kv_heads * head_dim;
                let wide = |x: &[T]| x.iter().map(|v| v.to_f32()).collect::<Vec<f32>>();
                let (q, k, v) = (wide(q), wide(&k[..seen]), wide(&v[..seen]));
                fused::attention(
                    &q, &k, &v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale,
                )
            }
        };
        return out.into_iter().map(T::from_f32).collect();
    }
    if nq >= GEMM_MIN_ROWS && kv_len > 0 && n_kv_heads > 0 {
        return attention_gemm(
            q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale,
        );
    }
    #[cfg(target_arch = "x86_64")]
    if let Some((q, k, v)) = as_f32(q, k, v)
        && super::isa() == super::Isa::Avx512
        && head_dim.is_multiple_of(LANES)
    {
        let out = avx512::attention(
            q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale,
        );
        // `T` is f32 here: the conversion is the identity.
        return out.into_iter().map(T::from_f32).collect();
    }
    attention_with(
        q, k, v, n_heads, n_kv_heads, head_dim, kv_len, pos_start, scale, dot,
    )
}

/// The three operands as f32 slices when `T` is f32.
#[cfg(target_arch = "x86_64")]
fn as_f32<'a, T: Float>(
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
) -> Option<(&'a [f32], &'a [f32], &'a [f32])> {
    Some((
        T::as_f32_slice(q)?,
        T::as_f32_slice(k)?,
        T::as_f32_slice(v)?,
    ))
}

/// [`attention_with`]'s body with [`dot`] for f32 rows of whole 16-lane chunks, in AVX-512 registers: the same
/// multiplications and additions in the same order (a mul and an add, never a fused fma), so the same bits
/// as the portable kernel. Lane `l` of one register holds [`dot`]'s partial sum `l`, and the tree adds the
/// upper half of the lanes to the lower half four times; the value sums `o_d += p_j v_jd` stay in registers
/// across the keys (up to 64 columns at a time) instead of a load and a store per key.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::softmax_weights;
    use crate::backend::cpu::reference::model::for_each_attention_task;
    use std::arch::x86_64::*;

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention<'a>(
        q: &[f32],
        k: &'a [f32],
        v: &'a [f32],
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        kv_len: usize,
        pos_start: usize,
        scale: f32,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; q.len()];
        let kv_row = n_kv_heads * head_dim;
        let rows = |c: &'a [f32], j: usize, off: usize| &c[j * kv_row + off..][..head_dim];
        for_each_attention_task(
            &mut out,
            n_heads,
            n_kv_heads,
            head_dim,
            kv_len,
            pos_start,
            Vec::new,
            |scores, o, row, n_keys, off| {
                let qv = &q[row * head_dim..(row + 1) * head_dim];
                // SAFETY: `isa()` reported AVX-512, and every row is `head_dim` long, a multiple of 16
                // (checked by the caller; `rows` checks the bounds).
                unsafe {
                    one_row(
                        o,
                        qv,
                        |j| rows(k, j, off),
                        |j| rows(v, j, off),
                        n_keys,
                        scale,
                        scores,
                    )
                };
            },
        );
        out
    }

    /// One (query row, head) output `o` over `n_keys` keys and values: scores, softmax weights, weighted values.
    /// Needs AVX-512 F; rows of `o.len()`, a multiple of 16.
    #[target_feature(enable = "avx512f")]
    fn one_row<'a>(
        o: &mut [f32],
        qv: &[f32],
        key: impl Fn(usize) -> &'a [f32],
        value: impl Fn(usize) -> &'a [f32],
        n_keys: usize,
        scale: f32,
        scores: &mut Vec<f32>,
    ) {
        scores.clear();
        scores.extend((0..n_keys).map(|j| dot(qv, key(j)) * scale));
        let l = softmax_weights(scores);
        weighted_values(o, scores, value, l);
    }

    /// `a . b` as [`super::dot`] sums it. Needs AVX-512 F; `a` and `b` of one length, a multiple of 16.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        for (x, y) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
            // SAFETY: 16 floats each.
            let (x, y) = unsafe { (_mm512_loadu_ps(x.as_ptr()), _mm512_loadu_ps(y.as_ptr())) };
            acc = _mm512_add_ps(acc, _mm512_mul_ps(x, y));
        }
        // acc[i] += acc[i + 8], then + 4, + 2, + 1.
        let h8 = _mm256_add_ps(
            _mm512_castps512_ps256(acc),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc))),
        );
        let h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps::<1>(h8));
        let h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
        _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)))
    }

    /// `o_d = (sum_j p_j value(j)_d, j ascending, from 0.0) / l`, 64 columns at a time. Needs AVX-512 F;
    /// `o` and every value row of one length, a multiple of 16.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn weighted_values<'a>(o: &mut [f32], p: &[f32], value: impl Fn(usize) -> &'a [f32], l: f32) {
        let l = _mm512_set1_ps(l);
        for c0 in (0..o.len()).step_by(64) {
            let n = ((o.len() - c0) / 16).min(4);
            let mut acc = [_mm512_setzero_ps(); 4];
            for (j, &pj) in p.iter().enumerate() {
                let (pj, row) = (_mm512_set1_ps(pj), &value(j)[c0..c0 + 16 * n]);
                let term = |t: usize| {
                    // SAFETY: `row` holds 16 * n floats and t < n.
                    _mm512_mul_ps(pj, unsafe { _mm512_loadu_ps(row.as_ptr().add(16 * t)) })
                };
                // Four registers unrolled (the common case: head_dim 64 or 128) keep the sums in registers.
                if n == 4 {
                    acc[0] = _mm512_add_ps(acc[0], term(0));
                    acc[1] = _mm512_add_ps(acc[1], term(1));
                    acc[2] = _mm512_add_ps(acc[2], term(2));
                    acc[3] = _mm512_add_ps(acc[3], term(3));
                } else {
                    for (t, a) in acc.iter_mut().enumerate().take(n) {
                        *a = _mm512_add_ps(*a, term(t));
                    }
                }
            }
            for (a, dst) in acc.iter().zip(o[c0..c0 + 16 * n].chunks_exact_mut(16)) {
                // SAFETY: 16 floats.
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), _mm512_div_ps(*a, l)) };
            }
        }
    }
}

/// Prefill attention on AVX-512, fused: `fused.rs`.
#[cfg(target_arch = "x86_64")]
mod fused;

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
            // V_g^T row d, columns k0..: the values' component d, key by key.
            let value = |d: usize, k0: usize, o: &mut [f32]| {
                for (t, x) in o.iter_mut().enumerate() {
                    *x = v[(k0 + t) * kv_row + off + d].to_f32();
                }
            };
            // Blocks of query rows, each against the keys its last row sees: causal rows skip the masked
            // part of S and of P V (about half of the products of a prompt's prefill).
            let (mut o, mut sums) = (Vec::with_capacity(nq * head_dim), Vec::with_capacity(nq));
            for b0 in (0..nq).step_by(ROW_BLOCK) {
                let rows = ROW_BLOCK.min(nq - b0);
                let seen_by_block = (pos_start + b0 + rows).min(kv_len);
                let qb = &qh[b0 * head_dim..(b0 + rows) * head_dim];
                let mut p = gemm_nt(qb, rows, seen_by_block, head_dim, None, key, isa);
                sums.extend(
                    p.par_chunks_mut(seen_by_block)
                        .enumerate()
                        .map(|(i, row)| {
                            let n_keys = (pos_start + b0 + i + 1).min(kv_len);
                            let seen = &mut row[..n_keys];
                            for s in seen.iter_mut() {
                                *s *= scale;
                            }
                            let l = softmax_weights(seen);
                            row[n_keys..].fill(0.0);
                            l
                        })
                        .collect::<Vec<f32>>(),
                );
                o.extend(gemm_nt(&p, rows, head_dim, seen_by_block, None, value, isa));
            }
            (o, sums)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        super::super::test_data(n, seed, 3.0)
    }

    /// The AVX-512 body gives the portable body's bits (same operations, same order), whatever the head size
    /// (one to eight registers, so the four-register step and the shorter one), rows and grouping.
    #[test]
    fn avx512_body_gives_the_portable_bits() {
        if super::super::isa() != super::super::Isa::Avx512 {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        for (i, &(heads, kv_heads, hd, nq, kv_len, pos)) in [
            (9, 3, 64, 1, 70, 69),
            (4, 2, 128, 3, 40, 37),
            (2, 1, 16, 1, 5, 4),
            (6, 3, 48, 2, 33, 31),
            (3, 3, 80, 1, 129, 128),
        ]
        .iter()
        .enumerate()
        {
            let seed = 10 * i as u64;
            let q = data(nq * heads * hd, seed);
            let k = data((kv_len + 2) * kv_heads * hd, seed + 1);
            let v = data((kv_len + 2) * kv_heads * hd, seed + 2);
            let want = attention_with(&q, &k, &v, heads, kv_heads, hd, kv_len, pos, 0.125, dot);
            let got = attention(&q, &k, &v, heads, kv_heads, hd, kv_len, pos, 0.125);
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&got),
                bits(&want),
                "heads {heads}/{kv_heads} hd {hd} nq {nq}"
            );
        }
    }
}
