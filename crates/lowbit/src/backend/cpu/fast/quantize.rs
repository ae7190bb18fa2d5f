//! Vectorised blockwise quantizers and dequantizers, byte-identical to the reference.
//!
//! Per value the 4-bit quantizers do one FTZ multiply by the block's `rcp_approx` and a count of thresholds
//! (compares, no branches): the reference's arithmetic, in the same order, 8 lanes at a time. NaN compares
//! false everywhere and so lands on code 0, as in the reference.

use super::{Isa, task_len};
use crate::backend::BlockCodes;
use crate::backend::cpu::fast::gemv4::scaled_table;
use crate::format::float::{ftz, mul_ftz};
use crate::format::fourbit::nibble;
use crate::format::{Codebook8, FourBitType, rcp_approx};
use crate::tensor::{DType, Float, FloatVec};
use rayon::prelude::*;

/// Blocks per rayon task for blocks of `blocksize` values of `bytes` each.
fn blocks_per_task(n: usize, blocksize: usize, bytes: usize) -> usize {
    task_len(n.div_ceil(blocksize), blocksize * bytes)
}

/// Widens a block to f32 into `buf` (exact), returning it.
fn widen<'a, T: Float>(block: &[T], buf: &'a mut Vec<f32>) -> &'a [f32] {
    buf.clear();
    buf.extend(block.iter().map(|v| v.to_f32()));
    buf
}

/// `max |x|` ignoring NaN, as the reference's fold.
fn absmax(x: &[f32], isa: Isa) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 was detected by `isa()`.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::absmax(x) },
        _ => x.iter().fold(0.0f32, |m, v| m.max(v.abs())),
    }
}

pub fn quantize_4bit<T: Float>(
    x: &[T],
    quant_type: FourBitType,
    blocksize: usize,
    isa: Isa,
) -> BlockCodes {
    let mut codes = vec![0u8; x.len().div_ceil(2)];
    let per = blocks_per_task(x.len(), blocksize, 4);
    let absmax: Vec<f32> = x
        .par_chunks(blocksize * per)
        .zip(codes.par_chunks_mut(blocksize / 2 * per))
        .flat_map_iter(|(xs, out)| {
            let mut buf = Vec::with_capacity(blocksize);
            let mut amaxes = Vec::with_capacity(per);
            for (block, out) in xs.chunks(blocksize).zip(out.chunks_mut(blocksize / 2)) {
                let block = widen(block, &mut buf);
                let amax = absmax(block, isa);
                quantize_4bit_block(block, rcp_approx(amax), quant_type, out, isa);
                amaxes.push(amax);
            }
            amaxes
        })
        .collect();
    BlockCodes { codes, absmax }
}

fn quantize_4bit_block(x: &[f32], r: f32, qt: FourBitType, out: &mut [u8], isa: Isa) {
    let done = match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 was detected by `isa()`.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::quantize_4bit(x, r, qt, out) },
        _ => 0,
    };
    let q = |v: f32| qt.quantize_value(mul_ftz(v, r));
    for (byte, pair) in out[done / 2..].iter_mut().zip(x[done..].chunks(2)) {
        // An odd last value pairs with a padding 0.0 scaled by the same reciprocal.
        *byte = (q(pair[0]) << 4) | q(pair.get(1).copied().unwrap_or(0.0));
    }
}

pub fn dequantize_4bit(
    packed: &[u8],
    absmax: &[f32],
    quant_type: FourBitType,
    blocksize: usize,
    n: usize,
    dtype: DType,
    isa: Isa,
) -> FloatVec {
    let table = quant_type.dequant_table();
    let mut out = vec![0.0f32; n];
    let per = blocks_per_task(n, blocksize, 4);
    out.par_chunks_mut(blocksize * per)
        .enumerate()
        .for_each(|(c, os)| {
            dequant_span(
                packed,
                absmax,
                table,
                blocksize,
                c * blocksize * per,
                os,
                isa,
            )
        });
    FloatVec::from_f32(out, dtype)
}

/// Dequantizes the values `start..start + out.len()` of a packed 4-bit tensor into `out`.
pub(crate) fn dequant_span(
    packed: &[u8],
    absmax: &[f32],
    table: &[f32; 16],
    blocksize: usize,
    start: usize,
    out: &mut [f32],
    isa: Isa,
) {
    let mut k = 0;
    // One division per span; blocks then follow one another.
    let mut b = start / blocksize;
    while k < out.len() {
        let end = ((b + 1) * blocksize - start).min(out.len());
        let t = scaled_table(table, absmax[b]);
        // The SIMD loop needs a byte boundary: one scalar value first when the span starts mid-byte.
        let mut j = k;
        if (start + j) % 2 == 1 {
            out[j] = t[nibble(packed, start + j) as usize];
            j += 1;
        }
        let done = match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 was detected by `isa()`.
            Isa::Avx2 | Isa::Avx512 => unsafe {
                avx2::dequantize_4bit(&packed[(start + j) / 2..], &t, &mut out[j..end])
            },
            _ => 0,
        };
        for (i, v) in out[j + done..end].iter_mut().enumerate() {
            *v = t[nibble(packed, start + j + done + i) as usize];
        }
        k = end;
        b += 1;
    }
}

/// `#{j : m_j < s}` over the 255 sorted midpoints, branch-free, plus the reference's tie rule (a value on an
/// odd midpoint goes up to the even index). NaN compares false everywhere and gives 0.
#[inline]
fn code8(s: f32, m: &[f32; 255]) -> u8 {
    let mut base = 0usize;
    let mut step = 128;
    while step > 0 {
        base += step * (m[base + step - 1] < s) as usize;
        step /= 2;
    }
    let tie = base < 255 && m[base.min(254)] == s && base % 2 == 1;
    (base + tie as usize) as u8
}

pub fn quantize_blockwise<T: Float>(
    x: &[T],
    code: &Codebook8,
    blocksize: usize,
    isa: Isa,
) -> BlockCodes {
    let mut codes = vec![0u8; x.len()];
    let per = blocks_per_task(x.len(), blocksize, 5);
    let absmax: Vec<f32> = x
        .par_chunks(blocksize * per)
        .zip(codes.par_chunks_mut(blocksize * per))
        .flat_map_iter(|(xs, out)| {
            let mut buf = Vec::with_capacity(blocksize);
            let mut amaxes = Vec::with_capacity(per);
            for (block, out) in xs.chunks(blocksize).zip(out.chunks_mut(blocksize)) {
                let block = widen(block, &mut buf);
                let amax = absmax(block, isa);
                let r = rcp_approx(amax);
                let done = match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX-512 F/BW/VL detected by `isa()`.
                    Isa::Avx512 => unsafe { avx512::quantize_8bit(block, r, &code.midpoints, out) },
                    _ => 0,
                };
                for (o, &v) in out.iter_mut().zip(block).skip(done) {
                    *o = code8(mul_ftz(v, r), &code.midpoints);
                }
                amaxes.push(amax);
            }
            amaxes
        })
        .collect();
    BlockCodes { codes, absmax }
}

pub fn dequantize_blockwise(
    q: &[u8],
    absmax: &[f32],
    code: &[f32; 256],
    blocksize: usize,
    dtype: DType,
) -> FloatVec {
    let mut out = vec![0.0f32; q.len()];
    let per = blocks_per_task(q.len(), blocksize, 5);
    out.par_chunks_mut(blocksize * per)
        .zip(q.par_chunks(blocksize * per))
        .enumerate()
        .for_each(|(c, (os, qs))| {
            for (j, (o, qb)) in os
                .chunks_mut(blocksize)
                .zip(qs.chunks(blocksize))
                .enumerate()
            {
                let a = absmax[c * per + j];
                for (o, &qv) in o.iter_mut().zip(qb) {
                    *o = ftz(code[qv as usize] * a);
                }
            }
        });
    FloatVec::from_f32(out, dtype)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::backend::cpu::fast::gemv4::avx2::{ftz, lookup16};
    use crate::format::FourBitType;
    use crate::format::codebook::{FP4_BITS_BY_RANK, FP4_THRESHOLDS, NF4_THRESHOLDS};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    pub(super) fn absmax(x: &[f32]) -> f32 {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let mut m = _mm256_setzero_ps();
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            // SAFETY: `c` has 8 floats. `max_ps(v, m)` returns `m` when `v` is NaN: NaN is ignored.
            let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            m = _mm256_max_ps(_mm256_and_ps(v, abs), m);
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        let m = lanes.iter().fold(0.0f32, |a, &v| a.max(v));
        chunks.remainder().iter().fold(m, |a, v| a.max(v.abs()))
    }

    /// Codes for 8 scaled values, one per i32 lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn codes(s: __m256, qt: FourBitType) -> __m256i {
        match qt {
            FourBitType::Nf4 => {
                let mut c = _mm256_setzero_si256();
                for t in NF4_THRESHOLDS {
                    let lt = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_set1_ps(t), s);
                    c = _mm256_sub_epi32(c, _mm256_castps_si256(lt));
                }
                c
            }
            FourBitType::Fp4 => {
                let sign = _mm256_set1_ps(-0.0);
                let a = _mm256_andnot_ps(sign, s);
                let mut rank = _mm256_setzero_si256();
                for t in FP4_THRESHOLDS {
                    let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(a, _mm256_set1_ps(t));
                    rank = _mm256_sub_epi32(rank, _mm256_castps_si256(gt));
                }
                let bits = FP4_BITS_BY_RANK.map(|b| b as i32);
                // SAFETY: 8 i32.
                let lut = unsafe { _mm256_loadu_si256(bits.as_ptr() as *const __m256i) };
                let low = _mm256_permutevar8x32_epi32(lut, rank);
                let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(s, _mm256_setzero_ps());
                _mm256_or_si256(
                    low,
                    _mm256_and_si256(_mm256_castps_si256(neg), _mm256_set1_epi32(8)),
                )
            }
        }
    }

    /// Quantizes whole groups of 8 values; returns how many values it did (a multiple of 8).
    #[target_feature(enable = "avx2")]
    pub(super) fn quantize_4bit(x: &[f32], r: f32, qt: FourBitType, out: &mut [u8]) -> usize {
        let n = (x.len() / 8 * 8).min(out.len() * 2 / 8 * 8);
        let rv = _mm256_set1_ps(r);
        let pick = _mm256_setr_epi8(
            0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, //
            0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        );
        let mut i = 0;
        while i < n {
            // SAFETY: i + 8 <= n <= x.len().
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
            let c = codes(ftz(_mm256_mul_ps(ftz(v), rv)), qt);
            // Per 64-bit pair (even, odd): (even << 4) | odd in the low byte.
            let pair = _mm256_or_si256(_mm256_slli_epi64::<4>(c), _mm256_srli_epi64::<32>(c));
            let bytes = _mm256_shuffle_epi8(pair, pick);
            let lo = _mm256_extract_epi16::<0>(bytes) as u16;
            let hi = _mm256_extract_epi16::<8>(bytes) as u16;
            out[i / 2..i / 2 + 2].copy_from_slice(&lo.to_le_bytes());
            out[i / 2 + 2..i / 2 + 4].copy_from_slice(&hi.to_le_bytes());
            i += 8;
        }
        n
    }

    /// Dequantizes whole groups of 16 values of one block; returns how many it did.
    #[target_feature(enable = "avx2")]
    pub(super) fn dequantize_4bit(bytes: &[u8], t: &[f32; 16], out: &mut [f32]) -> usize {
        let n = (out.len() / 16 * 16).min(bytes.len() * 2 / 16 * 16);
        // SAFETY: `t` has 16 floats.
        let (lo, hi) = unsafe {
            (
                _mm256_loadu_ps(t.as_ptr()),
                _mm256_loadu_ps(t.as_ptr().add(8)),
            )
        };
        let mut i = 0;
        while i < n {
            // SAFETY: i / 2 + 8 <= bytes.len() and i + 16 <= out.len().
            unsafe {
                let q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    bytes.as_ptr().add(i / 2) as *const __m128i
                ));
                let wh = lookup16(lo, hi, _mm256_srli_epi32::<4>(q));
                let wl = lookup16(lo, hi, q);
                // Interleave back to element order: hi0 lo0 hi1 lo1 ...
                let a = _mm256_unpacklo_ps(wh, wl);
                let b = _mm256_unpackhi_ps(wh, wl);
                _mm256_storeu_ps(
                    out.as_mut_ptr().add(i),
                    _mm256_permute2f128_ps::<0x20>(a, b),
                );
                _mm256_storeu_ps(
                    out.as_mut_ptr().add(i + 8),
                    _mm256_permute2f128_ps::<0x31>(a, b),
                );
            }
            i += 16;
        }
        n
    }
}

/// 8-bit codes 16 at a time without a per-value search: the 255 midpoints held as 16 registers
/// `col[j][i] = m[16i + j]`. A coarse count over the pivots `m[16i + 15]` picks the row `c`, one `permutexvar`
/// per column fetches `m[16c + j]`, and counting `< s` there finishes `#{m < s}`. Sorted midpoints make
/// `m[count] == s` equivalent to "some fetched midpoint equals s", which is all the tie rule needs.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::format::float::FLT_MIN;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) fn quantize_8bit(x: &[f32], r: f32, m: &[f32; 255], out: &mut [u8]) -> usize {
        let n = x.len().min(out.len()) / 16 * 16;
        let col: [__m512; 16] = std::array::from_fn(|j| {
            let v: [f32; 16] =
                std::array::from_fn(|i| m.get(16 * i + j).copied().unwrap_or(f32::NAN));
            // SAFETY: 16 floats.
            unsafe { _mm512_loadu_ps(v.as_ptr()) }
        });
        let pivots: [__m512; 15] = std::array::from_fn(|i| _mm512_set1_ps(m[16 * i + 15]));
        let rv = _mm512_set1_ps(r);
        let one = _mm512_set1_epi32(1);
        let sign = _mm512_set1_epi32(i32::MIN);
        let ftz = |v: __m512| {
            let tiny = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(v), _mm512_set1_ps(FLT_MIN));
            _mm512_mask_blend_ps(
                tiny,
                v,
                _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), sign)),
            )
        };
        let mut i = 0;
        while i < n {
            // SAFETY: i + 16 <= n <= x.len().
            let v = unsafe { _mm512_loadu_ps(x.as_ptr().add(i)) };
            let s = ftz(_mm512_mul_ps(ftz(v), rv));
            let mut c = _mm512_setzero_si512();
            for p in &pivots {
                let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(*p, s);
                c = _mm512_mask_add_epi32(c, lt, c, one);
            }
            let mut count = _mm512_slli_epi32::<4>(c);
            let mut eq: __mmask16 = 0;
            for cj in &col {
                let mj = _mm512_permutexvar_ps(c, *cj);
                let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(mj, s);
                count = _mm512_mask_add_epi32(count, lt, count, one);
                eq |= _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(mj, s);
            }
            let odd = _mm512_test_epi32_mask(count, one);
            let count = _mm512_mask_add_epi32(count, eq & odd, count, one);
            // SAFETY: i + 16 <= out.len().
            unsafe {
                _mm_storeu_si128(
                    out.as_mut_ptr().add(i) as *mut __m128i,
                    _mm512_cvtepi32_epi8(count),
                )
            };
            i += 16;
        }
        n
    }
}
