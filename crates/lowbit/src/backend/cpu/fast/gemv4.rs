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
    let path = Path::select(isa, w.cols, w.blocksize);
    let xd = match path.group() {
        Some(g) => deinterleave(&xf, g),
        None => Vec::new(),
    };
    let chunk = task_len(w.rows, w.cols / 2);
    y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
        for (i, yv) in ys.iter_mut().enumerate() {
            let r = c * chunk + i;
            let dot = match path {
                Path::Avx512 => row_dot_avx512(&w, r, &xd),
                Path::Avx2 => row_dot_avx2(&w, r, &xd),
                Path::Portable => row_dot_portable(&w, r, &xf),
            };
            *yv = dot + bias.map_or(0.0, |b| b.get_f32(r));
        }
    });
    FloatVec::from_f32(y, x.dtype())
}

/// Which row kernel a call uses: SIMD needs whole groups (16 or 32 values) inside one block and one row.
/// The multi-row GEMV (`gemv4_rows`) picks the same one, so each of its rows repeats this GEMV's sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Path {
    Portable,
    Avx2,
    Avx512,
}

impl Path {
    pub(super) fn select(isa: Isa, cols: usize, blocksize: usize) -> Path {
        let fits = |g: usize| cols.is_multiple_of(g) && blocksize.is_multiple_of(g);
        match isa {
            Isa::Avx512 if fits(32) => Path::Avx512,
            Isa::Avx512 | Isa::Avx2 if fits(16) => Path::Avx2,
            _ => Path::Portable,
        }
    }

    /// The de-interleave group of x (see [`deinterleave`]); the portable kernel reads x as it is.
    pub(super) fn group(self) -> Option<usize> {
        match self {
            Path::Avx512 => Some(32),
            Path::Avx2 => Some(16),
            Path::Portable => None,
        }
    }
}

/// Partial sums the portable row kernel keeps: column `k` goes to lane `k % PORTABLE_LANES`.
pub(super) const PORTABLE_LANES: usize = 8;

/// The portable kernel's final sum of its lanes.
#[inline]
pub(super) fn portable_finish(acc: &[f32; PORTABLE_LANES]) -> f32 {
    acc.iter().sum()
}

/// Per group of `g` columns: the even columns, then the odd ones (high nibbles, then low nibbles).
pub(super) fn deinterleave(x: &[f32], g: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for (o, grp) in out.chunks_exact_mut(g).zip(x.chunks_exact(g)) {
        for t in 0..g / 2 {
            o[t] = grp[2 * t];
            o[g / 2 + t] = grp[2 * t + 1];
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
    let mut acc = [0.0f32; PORTABLE_LANES];
    let mut k = 0;
    // One division per row; blocks then follow one another.
    let mut b = start / w.blocksize;
    while k < w.cols {
        let end = ((b + 1) * w.blocksize - start).min(w.cols);
        let t = scaled_table(table, w.absmax[b]);
        for kk in k..end {
            acc[kk % PORTABLE_LANES] += x[kk] * t[nibble(w.packed, start + kk) as usize];
        }
        k = end;
        b += 1;
    }
    portable_finish(&acc)
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
fn row_dot_avx512(w: &Packed4bit, r: usize, xd: &[f32]) -> f32 {
    // SAFETY: only reached when `isa()` reported AVX-512 F/BW/VL; slices are bounds-checked inside.
    unsafe { avx512::row_dot(w, r, xd) }
}

#[cfg(not(target_arch = "x86_64"))]
fn row_dot_avx512(_: &Packed4bit, _: usize, _: &[f32]) -> f32 {
    unreachable!("AVX-512 is never selected off x86-64")
}

/// One `permutexvar` is a whole 16-entry lookup: 32 weights (16 bytes) cost 3 shuffle-port operations.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use crate::backend::Packed4bit;
    use crate::format::float::FLT_MIN;
    use std::arch::x86_64::*;

    /// Needs `cols % 32 == 0` and `blocksize % 32 == 0`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn row_dot(w: &Packed4bit, r: usize, xd: &[f32]) -> f32 {
        let start = r * w.cols;
        let bytes = &w.packed[start / 2..(start + w.cols) / 2];
        let xd = &xd[..w.cols];
        // SAFETY: the table has 16 floats.
        let table = unsafe { _mm512_loadu_ps(w.quant_type.dequant_table().as_ptr()) };
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut k = 0;
        // One division per row; blocks then follow one another.
        let mut b = start / w.blocksize;
        while k < w.cols {
            let end = ((b + 1) * w.blocksize - start).min(w.cols);
            let t = scaled_table(table, w.absmax[b]);
            let mut kk = k;
            while kk < end {
                // SAFETY: kk + 32 <= end <= cols: 16 bytes of `bytes` and 32 floats of `xd`.
                let (q, xe, xo) = unsafe {
                    (
                        _mm_loadu_si128(bytes.as_ptr().add(kk / 2) as *const __m128i),
                        _mm512_loadu_ps(xd.as_ptr().add(kk)),
                        _mm512_loadu_ps(xd.as_ptr().add(kk + 16)),
                    )
                };
                let q = _mm512_cvtepu8_epi32(q);
                let wh = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(q), t);
                let wl = _mm512_permutexvar_ps(q, t);
                acc[0] = _mm512_fmadd_ps(wh, xe, acc[0]);
                acc[1] = _mm512_fmadd_ps(wl, xo, acc[1]);
                kk += 32;
            }
            k = end;
            b += 1;
        }
        finish(acc)
    }

    /// The block's 16 dequantized values, the reference's `ftz(table[q] * absmax)`, as one register.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(in super::super) fn scaled_table(table: __m512, absmax: f32) -> __m512 {
        let t = _mm512_mul_ps(table, _mm512_set1_ps(absmax));
        let tiny = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(t), _mm512_set1_ps(FLT_MIN));
        let sign = _mm512_set1_epi32(i32::MIN);
        let signed_zero = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(t), sign));
        _mm512_mask_blend_ps(tiny, t, signed_zero)
    }

    /// The final sum of a row's two accumulators (even columns, odd columns) in a fixed order: halves added
    /// pairwise down to 8 lanes, then the AVX2 kernel's `hsum` (not `_mm512_reduce_add_ps`, an unordered
    /// reduction whose order the compiler may pick per call site). The multi-row kernel ends each row with it.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(in super::super) fn finish(acc: [__m512; 2]) -> f32 {
        let s = _mm512_add_ps(acc[0], acc[1]);
        let lo = _mm512_castps512_ps256(s);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s)));
        super::avx2::hsum(_mm256_add_ps(lo, hi))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use crate::backend::Packed4bit;
    use crate::format::float::FLT_MIN;
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

    /// Flush-to-zero keeping the sign: `|v| < FLT_MIN` becomes `±0` (the reference's `ftz`).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn ftz(v: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_andnot_ps(sign, v), _mm256_set1_ps(FLT_MIN));
        _mm256_blendv_ps(v, _mm256_and_ps(v, sign), tiny)
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
        // SAFETY: the table has 16 floats.
        let (tlo, thi) = unsafe {
            (
                _mm256_loadu_ps(table.as_ptr()),
                _mm256_loadu_ps(table.as_ptr().add(8)),
            )
        };
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut k = 0;
        // One division per row; blocks then follow one another.
        let mut b = start / w.blocksize;
        while k < w.cols {
            let end = ((b + 1) * w.blocksize - start).min(w.cols);
            // The reference's `ftz(table[q] * absmax)` for all 16 codes at once.
            let a = _mm256_set1_ps(w.absmax[b]);
            let (lo, hi) = (ftz(_mm256_mul_ps(tlo, a)), ftz(_mm256_mul_ps(thi, a)));
            // SAFETY (loads below): they stay inside `bytes` / `xd` (k..end, end <= cols).
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
            b += 1;
        }
        finish(acc)
    }

    /// The final sum of a row's four accumulators; the multi-row kernel ends each row with it.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn finish(acc: [__m256; 4]) -> f32 {
        hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }
}
