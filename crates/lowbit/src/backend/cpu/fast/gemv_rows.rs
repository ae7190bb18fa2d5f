//! Multi-row GEMV: 2–32 activation rows through a quantized weight, reading each weight byte once for all
//! rows. Small batches (several sequences decoded together, speculative decoding, short prompts) are memory
//! bound like batch 1; the GEMM path dequantizes and packs the whole weight, which costs ~14x a GEMV there.
//!
//! One driver ([`tiled`]) serves the integer formats (int8, ternary): each task owns a range of weight rows;
//! within it a tile of [`TILE`] weight rows walks the columns in [`KC`]-wide slices, and each slice of up to
//! [`GROUP_INT`] activation rows (kept in L1) meets every weight row of the tile while the kernel holds the
//! group's accumulators in registers. Their sums are exact integers, so any grouping gives the same bytes.
//! 4-bit weights have float sums and their own driver, [`super::gemv4_rows`], which keeps each row's sums
//! in the batch-1 GEMV's order.

use super::{Isa, task_len};
use crate::backend::PackedTernary;
use crate::format::ternary::{packed_rows, rescale};
use crate::tensor::Floats;
use rayon::prelude::*;

/// Which kernel a quantized linear layer runs for a number of activation rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearPath {
    /// The batch-1 kernel.
    Gemv,
    /// This module: one pass over the weight for all rows.
    GemvRows,
    /// The tiled GEMM (dequantize and pack W, register-blocked microkernel).
    Gemm,
}

/// The weight format of a quantized linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightKind {
    FourBit,
    Int8,
    Ternary,
}

/// Largest row count that runs the multi-row GEMV; above it the GEMM path. 4-bit: batch 1 takes the GEMV,
/// 2–32 rows [`super::gemv4_rows`], whose rows are bit for bit the GEMV's, so a batch the runtime splits
/// into chunks of up to 32 rows (memory budget, out-of-memory) reproduces the unsplit bytes. On the 2-core
/// AVX-512 host (docs/PERFORMANCE.md, 2026-12-02) it beat the GEMM at every row count up to 32 (NF4
/// 4096×14336, one thread: 63 ms against 92 ms at 32 rows) and lost from about 40–48 rows (181 against
/// 121 ms at 48): both are FMA bound there, and the GEMM's microkernel uses the FMA units better. Above 32
/// rows the GEMM's sums differ from the GEMV's, so a chunk split off such a batch matches only to rounding.
pub const ROWS_MAX_4BIT: usize = 32;
/// int8 (`int8_linear_matmul`): the row-parallel kernel reads the whole weight once per activation row.
pub const ROWS_MAX_INT8: usize = 32;
/// Ternary: the existing kernel already streams each packed row once per task; the multi-row kernel saves
/// the 2-bit field extraction per token.
pub const ROWS_MAX_TERNARY: usize = 32;

/// The kernel for `rows` activation rows of a `kind` weight on this CPU.
pub fn pick_linear_path(kind: WeightKind, rows: usize) -> LinearPath {
    let max = match kind {
        WeightKind::FourBit => ROWS_MAX_4BIT,
        WeightKind::Int8 => ROWS_MAX_INT8,
        WeightKind::Ternary => ROWS_MAX_TERNARY,
    };
    match rows {
        // 4-bit has a dedicated batch-1 GEMV; int8 and ternary use the multi-row kernel for one row too.
        1 if kind == WeightKind::FourBit => LinearPath::Gemv,
        r if r <= max => LinearPath::GemvRows,
        _ => LinearPath::Gemm,
    }
}

/// Activation rows whose accumulators one integer kernel call keeps in registers.
pub const GROUP_INT: usize = 4;
/// Columns per slice: a group's activation slices (8 rows x 512 f32 = 16 KiB) stay in L1 across a tile.
const KC: usize = 512;
/// Weight rows per tile: each activation slice loaded into L1 serves this many weight rows.
const TILE: usize = 8;

/// Runs `kernel(j, k0, k1, g0, acc)` for every weight row `j < n`, column slice `k0..k1` and activation group
/// (of up to `group` rows) starting at `g0`, where `acc` is row j's accumulators for activation rows `g0..g0 + acc.len()`. Returns the
/// accumulators as `[n][m]`.
fn tiled<T: Copy + Default + Send>(
    n: usize,
    m: usize,
    k: usize,
    bytes_per_row: usize,
    group: usize,
    kernel: impl Fn(usize, usize, usize, usize, &mut [T]) + Sync,
) -> Vec<T> {
    let mut acc = vec![T::default(); n * m];
    if n == 0 || m == 0 {
        return acc;
    }
    let chunk = task_len(n, bytes_per_row);
    acc.par_chunks_mut(chunk * m)
        .enumerate()
        .for_each(|(c, part)| {
            let rows = part.len() / m;
            for t0 in (0..rows).step_by(TILE) {
                let t1 = (t0 + TILE).min(rows);
                for k0 in (0..k).step_by(KC) {
                    let k1 = (k0 + KC).min(k);
                    for g0 in (0..m).step_by(group) {
                        let g1 = (g0 + group).min(m);
                        for t in t0..t1 {
                            kernel(c * chunk + t, k0, k1, g0, &mut part[t * m + g0..t * m + g1]);
                        }
                    }
                }
            }
        });
    acc
}

/// `[n][m]` to `[m][n]` with `f(j, value)` applied.
fn transpose<T: Copy, U>(
    acc: &[T],
    n: usize,
    m: usize,
    f: impl Fn(usize, usize, T) -> U,
) -> Vec<U> {
    (0..m)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| f(i, j, acc[j * m + i]))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// 4-bit (NF4 / FP4): its own driver, which keeps each row's sums in the batch-1 GEMV's order.

pub use super::gemv4_rows::matmul_4bit;

// ---------------------------------------------------------------------------------------------------------
// int8

/// Exact `C[m, n] = A[m, k] @ B[n, k]^T` in i32 for few rows of A (activations) and many of B (the weight).
pub fn int8_linear_matmul(a: &[i8], b: &[i8], m: usize, n: usize, k: usize, isa: Isa) -> Vec<i32> {
    // Activations widened once: the kernel then multiplies i16 pairs with `madd` (exact, see fast::int8).
    let a16: Vec<i16> = a[..m * k].iter().map(|&v| v as i16).collect();
    let simd = isa.has_avx2();
    let acc = tiled(n, m, k, k, GROUP_INT, |j, k0, k1, g0, acc: &mut [i32]| {
        let br = &b[j * k..(j + 1) * k];
        let ag = &a16[g0 * k..(g0 + acc.len()) * k];
        if simd {
            span_int8_simd(br, k0, k1, ag, k, acc);
        } else {
            for (i, o) in acc.iter_mut().enumerate() {
                let ar = &ag[i * k..(i + 1) * k];
                *o += (k0..k1).map(|p| ar[p] as i32 * br[p] as i32).sum::<i32>();
            }
        }
    });
    transpose(&acc, n, m, |_, _, v| v)
}

fn span_int8_simd(br: &[i8], k0: usize, k1: usize, ag: &[i16], k: usize, acc: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(br.len() >= k1 && ag.len() >= acc.len() * k && k1 <= k);
        // SAFETY: AVX2 detected; bounds asserted above (columns k0..k1 of each row).
        unsafe {
            match acc.len() {
                1 => avx2::span_int8::<1>(br, k0, k1, ag, k, acc),
                2 => avx2::span_int8::<2>(br, k0, k1, ag, k, acc),
                3 => avx2::span_int8::<3>(br, k0, k1, ag, k, acc),
                _ => avx2::span_int8::<4>(br, k0, k1, ag, k, acc),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (br, k0, k1, ag, k, acc);
        unreachable!("AVX2 is never selected off x86-64")
    }
}

// ---------------------------------------------------------------------------------------------------------
// Ternary

/// `y = (xq @ unpack(W)^T) / (x_scale * weight_scale) (+ bias)`, `[batch, rows]`, exact in i32 (as
/// `fast::ternary::matmul`, whose layout notes apply).
pub fn ternary_matmul(
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
    let simd = isa.has_avx2();
    let acc = tiled(
        r_rows,
        batch,
        cols,
        cols,
        GROUP_INT,
        |r, k0, k1, g0, acc: &mut [[i32; 4]]| {
            let wr = &w.packed[r * cols..(r + 1) * cols];
            let xg = &xq[g0 * cols..(g0 + acc.len()) * cols];
            if simd {
                span_ternary_simd(wr, k0, k1, xg, cols, acc);
            } else {
                for (i, o) in acc.iter_mut().enumerate() {
                    let xr = &xg[i * cols..(i + 1) * cols];
                    for c in k0..k1 {
                        for (f, of) in o.iter_mut().enumerate() {
                            *of += ((wr[c] >> (2 * f)) & 3) as i32 * xr[c] as i32;
                        }
                    }
                }
            }
        },
    );
    let mut y = vec![0.0f32; batch * rows];
    for (b, yr) in y.chunks_mut(rows.max(1)).enumerate() {
        for (o, yv) in yr.iter_mut().enumerate() {
            // Output o is field o / R of packed row o % R; fields hold t + 1, so subtract Σx once.
            let a = acc[(o % r_rows) * batch + b][o / r_rows] - x_sums[b];
            *yv = rescale(a, x_scale[b], w.weight_scale) + bias.map_or(0.0, |bb| bb.get_f32(o));
        }
    }
    y
}

fn span_ternary_simd(wr: &[u8], k0: usize, k1: usize, xg: &[i8], k: usize, acc: &mut [[i32; 4]]) {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(wr.len() >= k1 && xg.len() >= acc.len() * k && k1 <= k);
        // SAFETY: AVX2 detected; bounds asserted above (columns k0..k1 of each row).
        unsafe {
            match acc.len() {
                1 => avx2::span_ternary::<1>(wr, k0, k1, xg, k, acc),
                2 => avx2::span_ternary::<2>(wr, k0, k1, xg, k, acc),
                3 => avx2::span_ternary::<3>(wr, k0, k1, xg, k, acc),
                _ => avx2::span_ternary::<4>(wr, k0, k1, xg, k, acc),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (wr, k0, k1, xg, k, acc);
        unreachable!("AVX2 is never selected off x86-64")
    }
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

    /// M widened activation rows (row stride `k`) against columns `k0..k1` of one int8 weight row: each 16
    /// weights are widened once and feed M `madd`s. The caller checks the slice bounds.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn span_int8<const M: usize>(
        br: &[i8],
        k0: usize,
        k1: usize,
        ag: &[i16],
        k: usize,
        out: &mut [i32],
    ) {
        let (bp, ap) = (br.as_ptr(), ag.as_ptr());
        let mut acc = [_mm256_setzero_si256(); M];
        let mut p = k0;
        while p + 16 <= k1 {
            // SAFETY: p + 16 <= k1: 16 weight bytes and 16 i16 per activation row are in bounds.
            unsafe {
                let bv = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp.add(p) as *const __m128i));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_loadu_si256(ap.add(i * k + p) as *const __m256i);
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(av, bv));
                }
            }
            p += 16;
        }
        for (i, (o, acc)) in out.iter_mut().zip(&acc).enumerate() {
            let tail: i32 = (p..k1).map(|c| ag[i * k + c] as i32 * br[c] as i32).sum();
            *o += hsum_i32(*acc) + tail;
        }
    }

    /// M int8 activation rows (row stride `k`) against columns `k0..k1` of one packed ternary row: the four
    /// 2-bit fields of each 32 bytes are extracted once and feed 4·M `maddubs` (at most 2·2·128 per i16 pair:
    /// no saturation). Sums are of the fields `t + 1`; the caller subtracts Σx. The caller checks bounds.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn span_ternary<const M: usize>(
        wr: &[u8],
        k0: usize,
        k1: usize,
        xg: &[i8],
        k: usize,
        out: &mut [[i32; 4]],
    ) {
        let (wp, xp) = (wr.as_ptr(), xg.as_ptr());
        let three = _mm256_set1_epi8(3);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 4]; M];
        let mut c = k0;
        while c + 32 <= k1 {
            // SAFETY: c + 32 <= k1: 32 bytes of the weight row and of each activation row are in bounds.
            unsafe {
                let wb = _mm256_loadu_si256(wp.add(c) as *const __m256i);
                let f = [
                    _mm256_and_si256(wb, three),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(wb), three),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(wb), three),
                    _mm256_and_si256(_mm256_srli_epi16::<6>(wb), three),
                ];
                for (i, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_si256(xp.add(i * k + c) as *const __m256i);
                    for (a, f) in acc.iter_mut().zip(&f) {
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*f, xv), ones);
                        *a = _mm256_add_epi32(*a, p);
                    }
                }
            }
            c += 32;
        }
        for (i, (o, acc)) in out.iter_mut().zip(&acc).enumerate() {
            for (f, (of, a)) in o.iter_mut().zip(acc).enumerate() {
                let tail: i32 = (c..k1)
                    .map(|cc| ((wr[cc] >> (2 * f)) & 3) as i32 * xg[i * k + cc] as i32)
                    .sum();
                *of += hsum_i32(*a) + tail;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossover_picks_gemv_rows_then_gemm() {
        use LinearPath::*;
        assert_eq!(pick_linear_path(WeightKind::FourBit, 1), Gemv);
        // No rows: an empty result, never the GEMV (which assumes one row of x).
        assert_eq!(pick_linear_path(WeightKind::FourBit, 0), GemvRows);
        assert_eq!(pick_linear_path(WeightKind::Int8, 1), GemvRows);
        assert_eq!(pick_linear_path(WeightKind::Ternary, 1), GemvRows);
        for kind in [WeightKind::FourBit, WeightKind::Int8, WeightKind::Ternary] {
            for rows in 2..=32 {
                assert_eq!(pick_linear_path(kind, rows), GemvRows, "{kind:?} {rows}");
            }
            for rows in [33, 48, 512] {
                assert_eq!(pick_linear_path(kind, rows), Gemm, "{kind:?} {rows}");
            }
        }
        assert_eq!(
            pick_linear_path(WeightKind::FourBit, ROWS_MAX_4BIT + 1),
            Gemm
        );
        assert_eq!(pick_linear_path(WeightKind::Int8, ROWS_MAX_INT8 + 1), Gemm);
        assert_eq!(
            pick_linear_path(WeightKind::Ternary, ROWS_MAX_TERNARY + 1),
            Gemm
        );
    }
}
