//! Exact widening of f16/bf16 spans to f32, the bits `half`'s `to_f32` gives (NaNs quieted, payloads kept):
//! how the dense GEMM reads a weight stored in half precision without a widened copy of the whole matrix.
//! Widening is exact, so a kernel that widens its operand here and then runs the f32 arithmetic produces the
//! f32 path's bits.

use super::Isa;
use crate::tensor::Floats;

/// `out[t] = w[start + t]` widened to f32, for `t < out.len()`.
pub fn widen_span(w: Floats, start: usize, out: &mut [f32], isa: Isa) {
    let end = start + out.len();
    match w {
        Floats::F32(s) => out.copy_from_slice(&s[start..end]),
        Floats::BF16(s) => bf16(bytemuck::cast_slice(&s[start..end]), out, isa),
        Floats::F16(s) => f16(bytemuck::cast_slice(&s[start..end]), out, isa),
    }
}

fn bf16(src: &[u16], out: &mut [f32], isa: Isa) {
    assert_eq!(src.len(), out.len());
    let done = match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F/BW/VL detected by `isa()`; lengths asserted equal above.
        Isa::Avx512 => unsafe { avx512::bf16(src, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 detected by `isa()`; lengths asserted equal above.
        Isa::Avx2 => unsafe { avx2::bf16(src, out) },
        _ => 0,
    };
    for (o, &h) in out[done..].iter_mut().zip(&src[done..]) {
        *o = half::bf16::from_bits(h).to_f32();
    }
}

fn f16(src: &[u16], out: &mut [f32], isa: Isa) {
    assert_eq!(src.len(), out.len());
    let done = match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F detected by `isa()`; lengths asserted equal above.
        Isa::Avx512 => unsafe { avx512::f16(src, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: F16C detected by `isa()` with AVX2; lengths asserted equal above.
        Isa::Avx2 => unsafe { avx2::f16(src, out) },
        _ => 0,
    };
    for (o, &h) in out[done..].iter_mut().zip(&src[done..]) {
        *o = half::f16::from_bits(h).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Widens whole groups of 8; returns how many elements were written. Caller: `src.len() == out.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn bf16(src: &[u16], out: &mut [f32]) -> usize {
        let n = src.len() / 8 * 8;
        let (abs_mask, inf, quiet) = (
            _mm256_set1_epi32(0x7fff),
            _mm256_set1_epi32(0x7f80),
            _mm256_set1_epi32(0x40),
        );
        for i in (0..n).step_by(8) {
            // SAFETY: i + 8 <= n <= both lengths.
            unsafe {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(src.as_ptr().add(i).cast()));
                // NaN (|h| above infinity's bits): set the quiet bit, as `half` does.
                let nan = _mm256_cmpgt_epi32(_mm256_and_si256(h, abs_mask), inf);
                let h = _mm256_or_si256(h, _mm256_and_si256(nan, quiet));
                let f = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), f);
            }
        }
        n
    }

    /// Widens whole groups of 8 through F16C (exact; NaNs quieted with their payload, as `half` does).
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn f16(src: &[u16], out: &mut [f32]) -> usize {
        let n = src.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: i + 8 <= n <= both lengths.
            unsafe {
                let f = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i).cast()));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), f);
            }
        }
        n
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Widens whole groups of 16; returns how many elements were written. Caller: `src.len() == out.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn bf16(src: &[u16], out: &mut [f32]) -> usize {
        let n = src.len() / 16 * 16;
        let (abs_mask, inf, quiet) = (
            _mm512_set1_epi32(0x7fff),
            _mm512_set1_epi32(0x7f80),
            _mm512_set1_epi32(0x40),
        );
        for i in (0..n).step_by(16) {
            // SAFETY: i + 16 <= n <= both lengths.
            unsafe {
                let h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(src.as_ptr().add(i).cast()));
                let nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(h, abs_mask), inf);
                let h = _mm512_mask_or_epi32(h, nan, h, quiet);
                let f = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h));
                _mm512_storeu_ps(out.as_mut_ptr().add(i), f);
            }
        }
        n
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn f16(src: &[u16], out: &mut [f32]) -> usize {
        let n = src.len() / 16 * 16;
        for i in (0..n).step_by(16) {
            // SAFETY: i + 16 <= n <= both lengths.
            unsafe {
                let f = _mm512_cvtph_ps(_mm256_loadu_si256(src.as_ptr().add(i).cast()));
                _mm512_storeu_ps(out.as_mut_ptr().add(i), f);
            }
        }
        n
    }
}
