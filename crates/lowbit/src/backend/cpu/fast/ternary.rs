//! Ternary (BitNet b1.58) GEMV/GEMM on transformers' 2-bit packing with int8 activations, exact in i32.
//!
//! A packed byte at `[r, c]` holds column c of the four rows r, R+r, 2R+r, 3R+r as `t + 1` in {0, 1, 2}. So
//! `Σ x·t = Σ x·(t+1) − Σ x`: the unsigned 2-bit fields multiply the signed activations directly
//! (`maddubs`, at most 2·2·128 per i16 pair, no saturation) and one activation sum per token corrects them.
//! Each pass over a packed row feeds four outputs, so each activation load serves four weight rows.

use super::{Isa, task_len};
use crate::backend::PackedTernary;
use crate::format::ternary::{packed_rows, rescale};
use crate::tensor::Floats;
use rayon::prelude::*;

/// `y = (xq @ unpack(W)^T) / (x_scale * weight_scale) (+ bias)`, `[batch, rows]`.
pub fn matmul(
    xq: &[i8],
    x_scale: &[f32],
    batch: usize,
    w: PackedTernary,
    bias: Option<Floats>,
    isa: Isa,
) -> Vec<f32> {
    let (rows, cols) = (w.rows, w.cols);
    let r_rows = packed_rows(rows);
    let x_sums: Vec<i32> = (0..batch)
        .map(|b| xq[b * cols..(b + 1) * cols].iter().map(|&v| v as i32).sum())
        .collect();
    // Each task owns a range of packed rows and all tokens: the packed rows stay in cache across the batch.
    let chunk = task_len(r_rows, cols * batch.max(1));
    let parts: Vec<(usize, Vec<[i32; 4]>)> = (0..r_rows.div_ceil(chunk))
        .into_par_iter()
        .map(|t| {
            let (r0, r1) = (t * chunk, ((t + 1) * chunk).min(r_rows));
            let mut out = Vec::with_capacity((r1 - r0) * batch);
            for r in r0..r1 {
                let wr = &w.packed[r * cols..(r + 1) * cols];
                for b in 0..batch {
                    let xr = &xq[b * cols..(b + 1) * cols];
                    let d = dot4(wr, xr, isa);
                    out.push(d.map(|v| v - x_sums[b]));
                }
            }
            (r0, out)
        })
        .collect();
    let mut y = vec![0.0f32; batch * rows];
    for (r0, out) in parts {
        for (n, acc) in out.iter().enumerate() {
            let (r, b) = (r0 + n / batch.max(1), n % batch.max(1));
            for (i, &a) in acc.iter().enumerate() {
                let o = i * r_rows + r;
                if o < rows {
                    let bias = bias.map_or(0.0, |bb| bb.get_f32(o));
                    y[b * rows + o] = rescale(a, x_scale[b], w.weight_scale) + bias;
                }
            }
        }
    }
    y
}

/// `Σ_c x[c] · field_i(w[c])` for the four 2-bit fields i of each byte (fields still offset by +1).
fn dot4(w: &[u8], x: &[i8], isa: Isa) -> [i32; 4] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 was detected by `isa()`.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::dot4(w, x) },
        _ => dot4_portable(w, x),
    }
}

fn dot4_portable(w: &[u8], x: &[i8]) -> [i32; 4] {
    let mut acc = [0i32; 4];
    for (&b, &v) in w.iter().zip(x) {
        for (i, a) in acc.iter_mut().enumerate() {
            *a += ((b >> (2 * i)) & 3) as i32 * v as i32;
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn dot4(w: &[u8], x: &[i8]) -> [i32; 4] {
        let n = w.len().min(x.len());
        let three = _mm256_set1_epi8(3);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 4];
        let mut c = 0;
        while c + 32 <= n {
            // SAFETY: c + 32 <= n bytes of both slices.
            let (wb, xv) = unsafe {
                (
                    _mm256_loadu_si256(w.as_ptr().add(c) as *const __m256i),
                    _mm256_loadu_si256(x.as_ptr().add(c) as *const __m256i),
                )
            };
            let f = [
                _mm256_and_si256(wb, three),
                _mm256_and_si256(_mm256_srli_epi16::<2>(wb), three),
                _mm256_and_si256(_mm256_srli_epi16::<4>(wb), three),
                _mm256_and_si256(_mm256_srli_epi16::<6>(wb), three),
            ];
            for i in 0..4 {
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(f[i], xv), ones);
                acc[i] = _mm256_add_epi32(acc[i], p);
            }
            c += 32;
        }
        let mut out = [
            hsum_i32(acc[0]),
            hsum_i32(acc[1]),
            hsum_i32(acc[2]),
            hsum_i32(acc[3]),
        ];
        for (&b, &v) in w[c..n].iter().zip(&x[c..n]) {
            for (i, o) in out.iter_mut().enumerate() {
                *o += ((b >> (2 * i)) & 3) as i32 * v as i32;
            }
        }
        out
    }
}
