//! Multi-row 4-bit GEMV: each activation row gets exactly the sums of the batch-1 GEMV ([`gemv4`]): the
//! same kernel path, accumulator lanes, order of FMAs per lane and final reduction. Only the weight decode
//! (nibble unpack, table lookup) is shared by a group of rows. So the bytes of a row never depend on the
//! batch around it, and a batch the runtime splits into chunks (memory budget, out-of-memory) reproduces
//! the unsplit result.
//!
//! Each rayon task owns a range of weight rows; a tile of [`TILE`] weight rows walks the columns in slices
//! ([`slice_cols`]), and each group of activation rows (their slices stay in L1) meets every weight row of
//! the tile. Between slices a row's partial sums wait in a [`Lanes`] of the tile's buffer, in the GEMV's
//! register layout; they are reduced once the tile has seen every column.

use super::gemv4::{self, PORTABLE_LANES, Path, deinterleave, scaled_table};
use super::{Isa, task_len};
use crate::backend::Packed4bit;
use crate::format::fourbit::nibble;
use crate::tensor::{FloatVec, Floats};
use rayon::prelude::*;

/// Bytes of a group's activation slices: they stay in L1 across a tile.
const SLICE_BYTES: usize = 16 * 1024;
/// Most columns per slice (one row): long slices spread each call's fixed cost (block search, lane loads and
/// stores) over more work when few rows share it.
const KC_MAX: usize = SLICE_BYTES / 4;

/// Columns per slice for a group of `rows` activation rows: a multiple of 64 (every kernel's column group
/// divides it, so slices start where the GEMV's groups do).
fn slice_cols(rows: usize) -> usize {
    (SLICE_BYTES / (4 * rows.max(1)) / 64 * 64).clamp(64, KC_MAX)
}
/// Weight rows per tile: each activation slice loaded into L1 serves this many weight rows.
const TILE: usize = 8;

/// One (weight row, activation row) pair's partial sums in the GEMV's accumulator layout: AVX-512 two
/// registers of 16 lanes, AVX2 four of 8, portable the first [`PORTABLE_LANES`] floats.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Lanes([f32; 32]);

impl Lanes {
    const ZERO: Lanes = Lanes([0.0; 32]);
}

impl Path {
    /// Activation rows one kernel call serves per decode: the AVX-512 kernel keeps 2 registers per row (16
    /// of 32), the AVX2 one 2 per row per pass (8 of 16); the portable one decodes into a buffer.
    fn rows_per_group(self) -> usize {
        match self {
            Path::Avx512 => 8,
            Path::Avx2 => 4,
            Path::Portable => 8,
        }
    }
}

/// `y[batch, rows] = x[batch, cols] @ dequant(W)^T + bias` in x's dtype; row `i` of y is bit for bit
/// `gemv4::gemv` of row `i` of x.
pub fn matmul_4bit(
    x: Floats,
    batch: usize,
    w: Packed4bit,
    bias: Option<Floats>,
    isa: Isa,
) -> FloatVec {
    let (n, m, cols) = (w.rows, batch, w.cols);
    let path = Path::select(isa, cols, w.blocksize);
    let xf = x.to_f32_vec();
    // Whole rows: `cols` is a multiple of the group whenever the path has one.
    let xd = match path.group() {
        Some(g) => deinterleave(&xf, g),
        None => xf,
    };
    let group = path.rows_per_group();
    let kc = slice_cols(group.min(m));
    // Dot products as [n][m]: each task writes its weight rows.
    let mut dots = vec![0.0f32; n * m];
    if n > 0 && m > 0 {
        let chunk = task_len(n, cols / 2);
        dots.par_chunks_mut(chunk * m)
            .enumerate()
            .for_each(|(c, part)| {
                let rows = part.len() / m;
                let mut buf = vec![Lanes::ZERO; TILE.min(rows) * m];
                for t0 in (0..rows).step_by(TILE) {
                    let t1 = (t0 + TILE).min(rows);
                    let lanes = &mut buf[..(t1 - t0) * m];
                    lanes.fill(Lanes::ZERO);
                    for k0 in (0..cols).step_by(kc) {
                        let k1 = (k0 + kc).min(cols);
                        for g0 in (0..m).step_by(group) {
                            let g1 = (g0 + group).min(m);
                            let xg = &xd[g0 * cols..g1 * cols];
                            for t in 0..t1 - t0 {
                                let acc = &mut lanes[t * m + g0..t * m + g1];
                                span(path, &w, c * chunk + t0 + t, k0, k1, xg, acc);
                            }
                        }
                    }
                    for (d, l) in part[t0 * m..t1 * m].iter_mut().zip(lanes.iter()) {
                        *d = finish(path, l);
                    }
                }
            });
    }
    let y = (0..m)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| dots[j * m + i] + bias.map_or(0.0, |b| b.get_f32(j)))
        .collect();
    FloatVec::from_f32(y, x.dtype())
}

/// Adds columns `k0..k1` of weight row `r` times each activation row of `xg` (row stride `cols`, laid out
/// for `path`) to that row's lanes in `acc`.
fn span(path: Path, w: &Packed4bit, r: usize, k0: usize, k1: usize, xg: &[f32], acc: &mut [Lanes]) {
    match path {
        Path::Portable => span_portable(w, r, k0, k1, xg, acc),
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 | Path::Avx512 => {
            let start = r * w.cols;
            assert!(
                k1 <= w.cols
                    && w.packed.len() >= (start + k1) / 2
                    && xg.len() >= acc.len() * w.cols,
                "4-bit multi-row span out of bounds"
            );
            // SAFETY: the path was chosen from an `Isa` this CPU reported (AVX2 + FMA, or AVX-512 F/BW/VL
            // for `Avx512`) and its shape conditions (cols and blocksize multiples of its group); the kernels
            // read bytes (start + k0)/2 .. (start + k1)/2 and x columns k0..k1 of `acc.len()` rows, asserted
            // above.
            unsafe {
                if path == Path::Avx512 {
                    avx512_span(w, r, k0, k1, xg, acc)
                } else {
                    avx2_span(w, r, k0, k1, xg, acc)
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("SIMD paths are never selected off x86-64"),
    }
}

/// The row's lanes reduced as the GEMV reduces its accumulators.
fn finish(path: Path, l: &Lanes) -> f32 {
    match path {
        Path::Portable => gemv4::portable_finish(&std::array::from_fn(|i| l.0[i])),
        // SAFETY: as in `span`: the path implies the instruction set.
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => unsafe { simd::avx2_finish(l) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => unsafe { simd::avx512_finish(l) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("SIMD paths are never selected off x86-64"),
    }
}

/// Runs `f(k, end, block, run_start)` for each run `k..end` of columns of row `r` inside `k0..k1` that lies
/// in one block; `run_start` is where the GEMV starts that run (the block's start, or the row's).
#[inline(always)]
fn block_runs(
    w: &Packed4bit,
    r: usize,
    k0: usize,
    k1: usize,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let start = r * w.cols;
    let mut k = k0;
    // One division per span; blocks then follow one another.
    let mut b = (start + k0) / w.blocksize;
    while k < k1 {
        let end = ((b + 1) * w.blocksize - start).min(k1);
        f(k, end, b, (b * w.blocksize).max(start) - start);
        k = end;
        b += 1;
    }
}

/// The GEMV's portable kernel: column `k` into lane `k % 8`, product then sum; the span's weights are
/// decoded once into a buffer for all rows.
fn span_portable(w: &Packed4bit, r: usize, k0: usize, k1: usize, x: &[f32], acc: &mut [Lanes]) {
    let table = w.quant_type.dequant_table();
    let start = r * w.cols;
    let mut wv = [0.0f32; KC_MAX];
    block_runs(w, r, k0, k1, |k, end, b, _| {
        let t = scaled_table(table, w.absmax[b]);
        for kk in k..end {
            wv[kk - k0] = t[nibble(w.packed, start + kk) as usize];
        }
    });
    let wv = &wv[..k1 - k0];
    for (i, a) in acc.iter_mut().enumerate() {
        let xr = &x[i * w.cols + k0..i * w.cols + k1];
        let lanes = &mut a.0[..PORTABLE_LANES];
        // k0 is a multiple of 8 (slices are), so lane j of each chunk is lane (k0 + j) % 8.
        let (xc, xt) = xr.split_at(xr.len() / PORTABLE_LANES * PORTABLE_LANES);
        let (wc, wt) = wv.split_at(xc.len());
        for (xs, ws) in xc
            .chunks_exact(PORTABLE_LANES)
            .zip(wc.chunks_exact(PORTABLE_LANES))
        {
            for j in 0..PORTABLE_LANES {
                lanes[j] += xs[j] * ws[j];
            }
        }
        for (j, (&xv, &wv)) in xt.iter().zip(wt).enumerate() {
            lanes[j] += xv * wv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn avx2_span(w: &Packed4bit, r: usize, k0: usize, k1: usize, xg: &[f32], acc: &mut [Lanes]) {
    // SAFETY: forwarded from `span`.
    unsafe {
        match acc.len() {
            1 => simd::avx2_span::<1>(w, r, k0, k1, xg, acc),
            2 => simd::avx2_span::<2>(w, r, k0, k1, xg, acc),
            3 => simd::avx2_span::<3>(w, r, k0, k1, xg, acc),
            _ => simd::avx2_span::<4>(w, r, k0, k1, xg, acc),
        }
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn avx512_span(
    w: &Packed4bit,
    r: usize,
    k0: usize,
    k1: usize,
    xg: &[f32],
    acc: &mut [Lanes],
) {
    // SAFETY: forwarded from `span`.
    unsafe {
        match acc.len() {
            1 => simd::avx512_span::<1>(w, r, k0, k1, xg, acc),
            2 => simd::avx512_span::<2>(w, r, k0, k1, xg, acc),
            3 => simd::avx512_span::<3>(w, r, k0, k1, xg, acc),
            4 => simd::avx512_span::<4>(w, r, k0, k1, xg, acc),
            5 => simd::avx512_span::<5>(w, r, k0, k1, xg, acc),
            6 => simd::avx512_span::<6>(w, r, k0, k1, xg, acc),
            7 => simd::avx512_span::<7>(w, r, k0, k1, xg, acc),
            _ => simd::avx512_span::<8>(w, r, k0, k1, xg, acc),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::super::gemv4::avx2::{self, ftz, lookup16};
    use super::super::gemv4::avx512;
    use super::{Lanes, block_runs};
    use crate::backend::Packed4bit;
    use std::arch::x86_64::*;

    /// The GEMV's AVX2 kernel for M rows. Within a block run it sends the 16-column groups alternately to
    /// accumulator pairs (0, 1) and (2, 3), counted from the run's start; here each pair gets its own pass
    /// over the span, so a row needs 2 registers at a time and 4 rows fit. Needs `cols`, `blocksize` and
    /// `k0` multiples of 16; the caller checks the bounds.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_span<const M: usize>(
        w: &Packed4bit,
        r: usize,
        k0: usize,
        k1: usize,
        xg: &[f32],
        out: &mut [Lanes],
    ) {
        let table = w.quant_type.dequant_table();
        let start = r * w.cols;
        let (bp, xp) = (w.packed.as_ptr(), xg.as_ptr());
        // SAFETY: the table has 16 floats.
        let (tlo, thi) = unsafe {
            (
                _mm256_loadu_ps(table.as_ptr()),
                _mm256_loadu_ps(table.as_ptr().add(8)),
            )
        };
        for pair in 0..2 {
            let mut acc = [[_mm256_setzero_ps(); 2]; M];
            for (a, l) in acc.iter_mut().zip(out.iter()) {
                // SAFETY: a `Lanes` holds 32 floats.
                unsafe {
                    a[0] = _mm256_loadu_ps(l.0.as_ptr().add(16 * pair));
                    a[1] = _mm256_loadu_ps(l.0.as_ptr().add(16 * pair + 8));
                }
            }
            block_runs(w, r, k0, k1, |k, end, b, run_start| {
                let a = _mm256_set1_ps(w.absmax[b]);
                let (lo, hi) = (ftz(_mm256_mul_ps(tlo, a)), ftz(_mm256_mul_ps(thi, a)));
                // The first group at or after k that goes to this pair.
                let mut kk = k + 16 * (((k - run_start) / 16 + pair) % 2);
                while kk < end {
                    // SAFETY: kk + 16 <= end <= k1 (all multiples of 16): 8 bytes at (start + kk) / 2 and
                    // 16 floats per row are in bounds.
                    unsafe {
                        let q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            bp.add((start + kk) / 2) as *const __m128i
                        ));
                        let wh = lookup16(lo, hi, _mm256_srli_epi32::<4>(q));
                        let wl = lookup16(lo, hi, q);
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let x = xp.add(i * w.cols + kk);
                            acc[0] = _mm256_fmadd_ps(wh, _mm256_loadu_ps(x), acc[0]);
                            acc[1] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(x.add(8)), acc[1]);
                        }
                    }
                    kk += 32;
                }
            });
            for (a, l) in acc.iter().zip(out.iter_mut()) {
                // SAFETY: a `Lanes` holds 32 floats.
                unsafe {
                    _mm256_storeu_ps(l.0.as_mut_ptr().add(16 * pair), a[0]);
                    _mm256_storeu_ps(l.0.as_mut_ptr().add(16 * pair + 8), a[1]);
                }
            }
        }
    }

    /// The GEMV's AVX-512 kernel for M rows: per 32 columns one decode, two FMAs per row (even columns into
    /// the first register, odd into the second). Needs `cols`, `blocksize` and `k0` multiples of 32; the
    /// caller checks the bounds.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn avx512_span<const M: usize>(
        w: &Packed4bit,
        r: usize,
        k0: usize,
        k1: usize,
        xg: &[f32],
        out: &mut [Lanes],
    ) {
        let start = r * w.cols;
        let (bp, xp) = (w.packed.as_ptr(), xg.as_ptr());
        // SAFETY: the table has 16 floats.
        let table = unsafe { _mm512_loadu_ps(w.quant_type.dequant_table().as_ptr()) };
        let mut acc = [[_mm512_setzero_ps(); 2]; M];
        for (a, l) in acc.iter_mut().zip(out.iter()) {
            // SAFETY: a `Lanes` holds 32 floats.
            unsafe {
                a[0] = _mm512_loadu_ps(l.0.as_ptr());
                a[1] = _mm512_loadu_ps(l.0.as_ptr().add(16));
            }
        }
        block_runs(w, r, k0, k1, |k, end, b, _| {
            let t = avx512::scaled_table(table, w.absmax[b]);
            let mut kk = k;
            while kk < end {
                // SAFETY: kk + 32 <= end <= k1 (all multiples of 32): 16 bytes at (start + kk) / 2 and 32
                // floats per row are in bounds.
                unsafe {
                    let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                        bp.add((start + kk) / 2) as *const __m128i
                    ));
                    let wh = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(q), t);
                    let wl = _mm512_permutexvar_ps(q, t);
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let x = xp.add(i * w.cols + kk);
                        acc[0] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(x), acc[0]);
                        acc[1] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(x.add(16)), acc[1]);
                    }
                }
                kk += 32;
            }
        });
        for (a, l) in acc.iter().zip(out.iter_mut()) {
            // SAFETY: a `Lanes` holds 32 floats.
            unsafe {
                _mm512_storeu_ps(l.0.as_mut_ptr(), a[0]);
                _mm512_storeu_ps(l.0.as_mut_ptr().add(16), a[1]);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_finish(l: &Lanes) -> f32 {
        // SAFETY: a `Lanes` holds 32 floats.
        let acc = unsafe { std::array::from_fn(|s| _mm256_loadu_ps(l.0.as_ptr().add(8 * s))) };
        avx2::finish(acc)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn avx512_finish(l: &Lanes) -> f32 {
        // SAFETY: a `Lanes` holds 32 floats.
        let acc = unsafe { std::array::from_fn(|s| _mm512_loadu_ps(l.0.as_ptr().add(16 * s))) };
        avx512::finish(acc)
    }
}
