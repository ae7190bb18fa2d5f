//! LLM.int8() integer GEMM `C[m, n] = A[m, k] @ B[n, k]^T`, exact in i32.
//!
//! int8 × int8 products are widened to i16 and summed in pairs by `madd_epi16` (|pair| ≤ 2·128·128 fits
//! i32). `maddubs` would be faster but saturates at ±32767 and needs an unsigned operand, so it is not exact
//! for −128·−128 pairs. Four B rows share each A load.

use super::{Isa, task_len};
use rayon::prelude::*;

pub fn linear_matmul(a: &[i8], b: &[i8], m: usize, n: usize, k: usize, isa: Isa) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    let chunk = task_len(m, n * k);
    c.par_chunks_mut(n.max(1) * chunk)
        .enumerate()
        .for_each(|(t, cs)| {
            for (ii, crow) in cs.chunks_mut(n.max(1)).enumerate() {
                let i = t * chunk + ii;
                let ar = &a[i * k..(i + 1) * k];
                let mut j = 0;
                while j + 4 <= n {
                    let rows = [0, 1, 2, 3].map(|d| &b[(j + d) * k..(j + d + 1) * k]);
                    crow[j..j + 4].copy_from_slice(&dot4(ar, rows, isa));
                    j += 4;
                }
                for (jj, cv) in crow.iter_mut().enumerate().skip(j) {
                    *cv = dot(ar, &b[jj * k..(jj + 1) * k]);
                }
            }
        });
    c
}

fn dot(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

fn dot4(a: &[i8], b: [&[i8]; 4], isa: Isa) -> [i32; 4] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 detected by `isa()`.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::dot4(a, b) },
        _ => b.map(|r| dot(a, r)),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    pub(super) fn dot4(a: &[i8], b: [&[i8]; 4]) -> [i32; 4] {
        let k = b.iter().fold(a.len(), |m, r| m.min(r.len()));
        let mut acc = [_mm256_setzero_si256(); 4];
        let mut p = 0;
        while p + 16 <= k {
            // SAFETY: p + 16 <= k bytes in every slice.
            unsafe {
                let av = _mm256_cvtepi8_epi16(_mm_loadu_si128(a.as_ptr().add(p) as *const __m128i));
                for (acc, r) in acc.iter_mut().zip(&b) {
                    let bv =
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(r.as_ptr().add(p) as *const __m128i));
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(av, bv));
                }
            }
            p += 16;
        }
        let mut out = [0i32; 4];
        for (o, (acc, r)) in out.iter_mut().zip(acc.iter().zip(&b)) {
            let mut lanes = [0i32; 8];
            // SAFETY: 8 i32.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, *acc) };
            *o = lanes.iter().sum::<i32>() + super::dot(&a[p..k], &r[p..k]);
        }
        out
    }
}
