//! Batch-1 4-bit GEMV: nibble unpack, codebook lookup, block scale and FMA straight from the packed bytes.
//!
//! Per block the 16-entry table is pre-multiplied by the block's absmax (with the reference's FTZ), so each
//! weight is one lookup: exactly the reference's `ftz(table[q] * absmax)`. x is de-interleaved once per call
//! (even columns, then odd columns, per group of 16) so the high and low nibbles of 8 bytes meet their
//! activations without any shuffle.

use super::{Isa, task_len};
use crate::backend::Packed4bit;
use crate::format::float::ftz;
use crate::format::fourbit::nibble;
use crate::tensor::{FloatVec, Floats};
use rayon::prelude::*;

/// `y = W x + bias` in x's dtype.
pub fn gemv(x: Floats, w: Packed4bit, bias: Option<Floats>, isa: Isa) -> FloatVec {
    let xf = x.to_f32_vec();
    let mut y = vec![0.0f32; w.rows];
    let simd = isa == Isa::Avx2 && w.cols.is_multiple_of(16) && w.blocksize.is_multiple_of(16);
    let xd = if simd {
        deinterleave16(&xf)
    } else {
        Vec::new()
    };
    let chunk = task_len(w.rows, w.cols / 2);
    y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
        for (i, yv) in ys.iter_mut().enumerate() {
            let r = c * chunk + i;
            let dot = if simd {
                row_dot_avx2(&w, r, &xd)
            } else {
                row_dot_portable(&w, r, &xf)
            };
            *yv = dot + bias.map_or(0.0, |b| b.get_f32(r));
        }
    });
    FloatVec::from_f32(y, x.dtype())
}

/// Per group of 16 columns: the 8 even columns, then the 8 odd ones (high nibbles, then low nibbles).
fn deinterleave16(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for (o, g) in out.chunks_exact_mut(16).zip(x.chunks_exact(16)) {
        for t in 0..8 {
            o[t] = g[2 * t];
            o[8 + t] = g[2 * t + 1];
        }
    }
    out
}

/// The reference's 16 dequantized values for one block.
#[inline]
pub(crate) fn scaled_table(table: &[f32; 16], absmax: f32) -> [f32; 16] {
    table.map(|t| ftz(t * absmax))
}

fn row_dot_portable(w: &Packed4bit, r: usize, x: &[f32]) -> f32 {
    let table = w.quant_type.dequant_table();
    let start = r * w.cols;
    let mut acc = [0.0f32; 8];
    let mut k = 0;
    while k < w.cols {
        let b = (start + k) / w.blocksize;
        let end = ((b + 1) * w.blocksize - start).min(w.cols);
        let t = scaled_table(table, w.absmax[b]);
        for kk in k..end {
            acc[kk % 8] += x[kk] * t[nibble(w.packed, start + kk) as usize];
        }
        k = end;
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
fn row_dot_avx2(w: &Packed4bit, r: usize, xd: &[f32]) -> f32 {
    // SAFETY: only reached when `isa()` reported AVX2 + FMA; slices are bounds-checked inside.
    unsafe { avx2::row_dot(w, r, xd) }
}

#[cfg(not(target_arch = "x86_64"))]
fn row_dot_avx2(_: &Packed4bit, _: usize, _: &[f32]) -> f32 {
    unreachable!("AVX2 is never selected off x86-64")
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::scaled_table;
    use crate::backend::Packed4bit;
    use std::arch::x86_64::*;

    /// 16-entry lookup: `permutevar8x32` on both halves of the table, bit 3 of the index selects the half.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn lookup16(lo: __m256, hi: __m256, idx: __m256i) -> __m256 {
        let sel = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx));
        _mm256_blendv_ps(
            _mm256_permutevar8x32_ps(lo, idx),
            _mm256_permutevar8x32_ps(hi, idx),
            sel,
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Needs `cols % 16 == 0` and `blocksize % 16 == 0`: every group of 16 lies in one block and one row.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn row_dot(w: &Packed4bit, r: usize, xd: &[f32]) -> f32 {
        let table = w.quant_type.dequant_table();
        let start = r * w.cols;
        let bytes = &w.packed[start / 2..(start + w.cols) / 2];
        let xd = &xd[..w.cols];
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut k = 0;
        while k < w.cols {
            let b = (start + k) / w.blocksize;
            let end = ((b + 1) * w.blocksize - start).min(w.cols);
            let t = scaled_table(table, w.absmax[b]);
            // SAFETY: `t` has 16 floats; loads below stay inside `bytes` / `xd` (k..end, end <= cols).
            let (lo, hi) = unsafe {
                (
                    _mm256_loadu_ps(t.as_ptr()),
                    _mm256_loadu_ps(t.as_ptr().add(8)),
                )
            };
            let mut kk = k;
            while kk + 32 <= end {
                for u in 0..2 {
                    let g = kk + 16 * u;
                    let (q, xe, xo) = unsafe {
                        (
                            _mm_loadl_epi64(bytes.as_ptr().add(g / 2) as *const __m128i),
                            _mm256_loadu_ps(xd.as_ptr().add(g)),
                            _mm256_loadu_ps(xd.as_ptr().add(g + 8)),
                        )
                    };
                    let q = _mm256_cvtepu8_epi32(q);
                    let wh = lookup16(lo, hi, _mm256_srli_epi32::<4>(q));
                    let wl = lookup16(lo, hi, q);
                    acc[2 * u] = _mm256_fmadd_ps(wh, xe, acc[2 * u]);
                    acc[2 * u + 1] = _mm256_fmadd_ps(wl, xo, acc[2 * u + 1]);
                }
                kk += 32;
            }
            while kk < end {
                let (q, xe, xo) = unsafe {
                    (
                        _mm_loadl_epi64(bytes.as_ptr().add(kk / 2) as *const __m128i),
                        _mm256_loadu_ps(xd.as_ptr().add(kk)),
                        _mm256_loadu_ps(xd.as_ptr().add(kk + 8)),
                    )
                };
                let q = _mm256_cvtepu8_epi32(q);
                acc[0] = _mm256_fmadd_ps(lookup16(lo, hi, _mm256_srli_epi32::<4>(q)), xe, acc[0]);
                acc[1] = _mm256_fmadd_ps(lookup16(lo, hi, q), xo, acc[1]);
                kk += 16;
            }
            k = end;
        }
        hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }
}
