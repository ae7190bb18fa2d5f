//! Prefill attention on AVX-512, fused (f16/bf16 operands widened first): per (head, block of 12 query rows) the scores
//! against the keys the block sees (keys transposed once per KV head into 16-key panels, a 12x16
//! register tile per panel), each row's softmax with a 16-lane polynomial `exp` (`activation`), and the
//! weighted values (6 rows x 64 columns in registers, value rows read in place), then one division per
//! output. The GEMM route (`mod.rs`) packed and transposed every operand through per-element callbacks,
//! allocated its products per head and block, and took libm's `expf` per score: a 370-token SmolLM2 prefill
//! spent 8 ms per layer there (20 GFLOP/s). Within the reference's bound (tests/model_ops.rs), not its bits.
//! The GEMM route is left for CPUs without AVX-512 and head sizes that are not a multiple of 16.

use super::super::activation::avx512::exp as exp16;
use super::LANES;
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Query rows per score tile: 12 accumulators of 16 keys.
const QK_ROWS: usize = 12;
/// Query rows per tile of weighted values: 6 rows x 4 registers of 16 columns.
const PV_ROWS: usize = 6;

#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
    kv_len: usize,
    pos_start: usize,
    scale: f32,
) -> Vec<f32> {
    let nq = q.len() / (n_heads * hd);
    let kv_row = n_kv_heads * hd;
    let group = n_heads / n_kv_heads;
    // Keys any row sees; only these cache rows are read.
    let n_keys = (pos_start + nq).min(kv_len);
    let panels = n_keys.div_ceil(LANES);
    // K^T per KV head as [panel][d][16 keys], keys past n_keys zero.
    let kt: Vec<Vec<f32>> = (0..n_kv_heads)
        .into_par_iter()
        .map(|g| {
            let mut t = vec![0.0f32; panels * hd * LANES];
            for j in 0..n_keys {
                let src = &k[j * kv_row + g * hd..][..hd];
                let base = (j / LANES) * hd * LANES + j % LANES;
                for (d, &x) in src.iter().enumerate() {
                    t[base + d * LANES] = x;
                }
            }
            t
        })
        .collect();
    let blocks = nq.div_ceil(QK_ROWS);
    let parts: Vec<Vec<f32>> = (0..n_heads * blocks)
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(scores, qb), t| {
                let (h, b) = (t / blocks, t % blocks);
                let r0 = b * QK_ROWS;
                let rows = QK_ROWS.min(nq - r0);
                let n_max = (pos_start + r0 + rows).min(kv_len);
                let width = n_max.div_ceil(LANES) * LANES;
                // The block's query rows, zero-padded to 12.
                qb.clear();
                qb.resize(QK_ROWS * hd, 0.0f32);
                for i in 0..rows {
                    qb[i * hd..(i + 1) * hd]
                        .copy_from_slice(&q[((r0 + i) * n_heads + h) * hd..][..hd]);
                }
                scores.clear();
                scores.resize(QK_ROWS * width, 0.0f32);
                let g = h / group;
                let mut l = [1.0f32; QK_ROWS];
                // SAFETY: `isa()` reported AVX-512 F (checked by the caller); the slices' lengths are
                // asserted inside.
                unsafe {
                    score_tile(qb, &kt[g], hd, width, scale, scores);
                    for (i, li) in l.iter_mut().enumerate().take(rows) {
                        let n_i = (pos_start + r0 + i + 1).min(kv_len);
                        *li = softmax_row(&mut scores[i * width..(i + 1) * width], n_i);
                    }
                }
                let mut o = vec![0.0f32; rows * hd];
                for i0 in (0..rows).step_by(PV_ROWS) {
                    let sub = PV_ROWS.min(rows - i0);
                    let n_sub = (pos_start + r0 + i0 + sub).min(kv_len);
                    for c0 in (0..hd).step_by(4 * LANES) {
                        let tile = PvTile {
                            p: &scores[i0 * width..],
                            width,
                            n_keys: n_sub,
                            v: &v[g * hd + c0..],
                            kv_row,
                            rows: sub,
                            l: &l[i0..],
                        };
                        let out = &mut o[i0 * hd + c0..];
                        // SAFETY: as above.
                        unsafe {
                            match ((hd - c0) / LANES).min(4) {
                                4 => weighted_values::<4>(&tile, out, hd),
                                3 => weighted_values::<3>(&tile, out, hd),
                                2 => weighted_values::<2>(&tile, out, hd),
                                _ => weighted_values::<1>(&tile, out, hd),
                            }
                        }
                    }
                }
                o
            },
        )
        .collect();
    let mut out = vec![0.0f32; q.len()];
    for (t, o) in parts.iter().enumerate() {
        let (h, r0) = (t / blocks, (t % blocks) * QK_ROWS);
        for (i, row) in o.chunks_exact(hd).enumerate() {
            out[((r0 + i) * n_heads + h) * hd..][..hd].copy_from_slice(row);
        }
    }
    out
}

/// `scores[i][j] = (q_i . k_j) * scale` for 12 query rows `qb` (`[12][hd]`) and the keys of `kt`'s first
/// `width / 16` panels.
#[target_feature(enable = "avx512f")]
fn score_tile(qb: &[f32], kt: &[f32], hd: usize, width: usize, scale: f32, scores: &mut [f32]) {
    let panels = width / LANES;
    assert!(
        qb.len() >= QK_ROWS * hd
            && kt.len() >= panels * hd * LANES
            && scores.len() >= QK_ROWS * width
    );
    let s = _mm512_set1_ps(scale);
    for p in 0..panels {
        let mut acc = [_mm512_setzero_ps(); QK_ROWS];
        // SAFETY: within the lengths asserted above.
        unsafe {
            let kp = kt.as_ptr().add(p * hd * LANES);
            for d in 0..hd {
                let kv = _mm512_loadu_ps(kp.add(d * LANES));
                for (i, a) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*qb.get_unchecked(i * hd + d));
                    *a = _mm512_fmadd_ps(x, kv, *a);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                let at = scores.as_mut_ptr().add(i * width + p * LANES);
                _mm512_storeu_ps(at, _mm512_mul_ps(*a, s));
            }
        }
    }
}

/// The softmax weights of one row's first `n` scores in place (`exp(s - max)`), zeros past them;
/// returns their sum. `row.len()` is a multiple of 16, at least `n`.
#[target_feature(enable = "avx512f")]
fn softmax_row(row: &mut [f32], n: usize) -> f32 {
    assert!(row.len().is_multiple_of(LANES) && row.len() >= n);
    let mask = |c: usize| -> __mmask16 {
        let left = n.saturating_sub(c * LANES).min(LANES);
        ((1u32 << left) - 1) as __mmask16
    };
    let chunks = row.len() / LANES;
    let p = row.as_mut_ptr();
    // SAFETY: every chunk is inside `row`.
    unsafe {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in 0..n.div_ceil(LANES) {
            m = _mm512_mask_max_ps(m, mask(c), m, _mm512_loadu_ps(p.add(c * LANES)));
        }
        let m = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        let mut sum = _mm512_setzero_ps();
        for c in 0..chunks {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(c * LANES)), m));
            let e = _mm512_maskz_mov_ps(mask(c), e);
            sum = _mm512_add_ps(sum, e);
            _mm512_storeu_ps(p.add(c * LANES), e);
        }
        _mm512_reduce_add_ps(sum)
    }
}

/// One tile of weighted values: `rows` (up to 6) rows of weights `p` (row stride `width`) over the first
/// `n_keys` value rows (`v`, row stride `kv_row`, starting at the tile's first column).
struct PvTile<'a> {
    p: &'a [f32],
    width: usize,
    n_keys: usize,
    v: &'a [f32],
    kv_row: usize,
    rows: usize,
    l: &'a [f32],
}

/// `out[i * ld + c] = (sum_j p_ij v_j[c]) / l_i` for `C * 16` columns.
#[target_feature(enable = "avx512f")]
fn weighted_values<const C: usize>(t: &PvTile, out: &mut [f32], ld: usize) {
    assert!(
        t.rows <= PV_ROWS
            && t.l.len() >= t.rows
            && t.p.len() >= (PV_ROWS - 1) * t.width + t.n_keys
            && t.n_keys <= t.width
            && (t.n_keys == 0 || t.v.len() >= (t.n_keys - 1) * t.kv_row + C * LANES)
            && out.len() >= (t.rows.max(1) - 1) * ld + C * LANES
    );
    let mut acc = [[_mm512_setzero_ps(); C]; PV_ROWS];
    // SAFETY: within the lengths asserted above (rows of `p` past `rows` are the padding's zeros).
    unsafe {
        for j in 0..t.n_keys {
            let vr = t.v.as_ptr().add(j * t.kv_row);
            let vv: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(vr.add(c * LANES)));
            for (i, a) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*t.p.get_unchecked(i * t.width + j));
                for c in 0..C {
                    a[c] = _mm512_fmadd_ps(w, vv[c], a[c]);
                }
            }
        }
        for (i, a) in acc.iter().enumerate().take(t.rows) {
            let l = _mm512_set1_ps(t.l[i]);
            for (c, x) in a.iter().enumerate() {
                _mm512_storeu_ps(
                    out.as_mut_ptr().add(i * ld + c * LANES),
                    _mm512_div_ps(*x, l),
                );
            }
        }
    }
}
