//! Float GEMM `y[m, n] = x[m, k] @ W[n, k]^T` (nn.Linear layout) with a register-blocked microkernel.
//!
//! W arrives row by row through a callback, so the same driver serves dense weights (f32, or f16/bf16 widened
//! slice by slice) and 4-bit weights (dequantized tile by tile, never as a whole). Blocking: x is packed once into MR-row panels;
//! each task owns a range of W rows, and for each KC-slice packs them into NR-wide panels (L1-sized) and
//! runs the MR×NR microkernel over every x panel. Local C tiles are padded to whole microtiles, so the
//! microkernel has no edge cases; only the scatter into y trims them.

use super::{Isa, task_len};
use crate::tensor::Floats;
use rayon::prelude::*;

/// Microtile rows (tokens) and columns (output features): 12×16 floats = 12 AVX-512 accumulators, or two
/// 6×16 halves of 12 AVX2 accumulators each.
pub const MR: usize = 12;
pub const NR: usize = 16;
/// Depth of one packed slice: an NR-wide B panel of KC floats is 16 KiB (L1).
const KC: usize = 256;

/// Computes `x @ W^T + bias` where `fill_row(j, k0, out)` writes `W[j, k0..k0 + out.len()]` as f32.
pub fn gemm_nt(
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    bias: Option<Floats>,
    fill_row: impl Fn(usize, usize, &mut [f32]) + Sync,
    isa: Isa,
) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return y;
    }
    let m_tiles = m.div_ceil(MR);
    let ap = pack_a(x, m, k);
    // Each task covers whole NR panels of W rows; it reads its rows of W once and does 2·m·k flops per row.
    let rows_per_task = task_len(n.div_ceil(NR), k * 4 * NR).max(1) * NR;
    let parts: Vec<(usize, usize, Vec<f32>)> = (0..n.div_ceil(rows_per_task))
        .into_par_iter()
        .map(|t| {
            let (j0, j1) = (t * rows_per_task, ((t + 1) * rows_per_task).min(n));
            let n_tiles = (j1 - j0).div_ceil(NR);
            let ldc = n_tiles * NR;
            let mut c = vec![0.0f32; m_tiles * MR * ldc];
            // One packed panel at a time (16 KiB, stays in L1), used by every row tile before the next is
            // packed: packing the task's whole slice first wrote and re-read megabytes per slice, which for
            // one activation row cost more than the products.
            let mut bp = vec![0.0f32; NR * KC];
            let mut rows = vec![0.0f32; NR * KC];
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                for p in 0..n_tiles {
                    // Panel p holds rows j0 + p*NR .. + NR as [kc][NR]; missing rows are zero.
                    let (r0, r1) = (j0 + p * NR, (j0 + (p + 1) * NR).min(j1));
                    let tile = &mut rows[..NR * kc];
                    if r1 - r0 < NR {
                        tile.fill(0.0);
                    }
                    for j in r0..r1 {
                        let lane = j - r0;
                        fill_row(j, k0, &mut tile[lane * kc..(lane + 1) * kc]);
                    }
                    let panel = &mut bp[..NR * kc];
                    transpose_panel(tile, panel, kc, isa);
                    for mt in 0..m_tiles {
                        let a = &ap[mt * MR * k + k0 * MR..mt * MR * k + (k0 + kc) * MR];
                        let ct = &mut c[mt * MR * ldc + p * NR..];
                        microkernel(kc, a, panel, ct, ldc, (m - mt * MR).min(MR), isa);
                    }
                }
            }
            (j0, j1, c)
        })
        .collect();
    for (j0, j1, c) in parts {
        let ldc = (j1 - j0).div_ceil(NR) * NR;
        for i in 0..m {
            let yr = &mut y[i * n + j0..i * n + j1];
            for (jj, yv) in yr.iter_mut().enumerate() {
                *yv = c[i * ldc + jj] + bias.map_or(0.0, |b| b.get_f32(j0 + jj));
            }
        }
    }
    y
}

/// x as `[m_tiles][k][MR]`, rows past m zero.
fn pack_a(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let m_tiles = m.div_ceil(MR);
    let mut ap = vec![0.0f32; m_tiles * MR * k];
    ap.par_chunks_mut(MR * k.max(1))
        .enumerate()
        .for_each(|(mt, panel)| {
            for r in 0..MR.min(m - mt * MR) {
                let xr = &x[(mt * MR + r) * k..(mt * MR + r + 1) * k];
                for (kk, &v) in xr.iter().enumerate() {
                    panel[kk * MR + r] = v;
                }
            }
        });
    ap
}

/// `C[MR, NR] += A[MR, kc] · B[kc, NR]` with A as `[kc][MR]`, B as `[kc][NR]`, C row stride `ldc`.
/// `panel[kk * NR + lane] = rows[lane * kc + kk]`: NR rows of a slice into the microkernel's layout.
fn transpose_panel(rows: &[f32], panel: &mut [f32], kc: usize, isa: Isa) {
    assert!(rows.len() >= NR * kc && panel.len() >= NR * kc);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: AVX-512 detected by `isa()`; lengths asserted above.
        unsafe { avx512::transpose_panel(rows, panel, kc) };
        return;
    }
    let _ = isa;
    for kk in 0..kc {
        for lane in 0..NR {
            panel[kk * NR + lane] = rows[lane * kc + kk];
        }
    }
}

/// Accumulates the panel's products into `c` for its first `live` rows (the rest of the tile is padding: a
/// batch of one row does 1/12 of the work). Each output's arithmetic is the same whatever `live` is: one fma
/// chain over the slice, then one add into `c`, so a batch split into smaller ones gives the same bits.
fn microkernel(kc: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize, live: usize, isa: Isa) {
    assert!(a.len() >= kc * MR && b.len() >= kc * NR && c.len() >= (MR - 1) * ldc + NR);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 detected by `isa()`; lengths asserted above.
        Isa::Avx512 => unsafe {
            match live {
                1 => avx512::microkernel::<1>(kc, a, b, c, ldc),
                2 => avx512::microkernel::<2>(kc, a, b, c, ldc),
                3 | 4 => avx512::microkernel::<4>(kc, a, b, c, ldc),
                5..=8 => avx512::microkernel::<8>(kc, a, b, c, ldc),
                _ => avx512::microkernel::<MR>(kc, a, b, c, ldc),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 + FMA detected by `isa()`; lengths asserted above.
        Isa::Avx2 => unsafe {
            avx2::microkernel(kc, a, 0, b, c, ldc);
            if live > 6 {
                avx2::microkernel(kc, a, 6, b, &mut c[6 * ldc..], ldc);
            }
        },
        // The portable kernel computes the whole tile (`live` is an x86 speed-up only).
        _ => {
            let _ = live;
            microkernel_portable(kc, a, b, c, ldc)
        }
    }
}

fn microkernel_portable(kc: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..kc {
        let bv = &b[p * NR..(p + 1) * NR];
        for (i, row) in acc.iter_mut().enumerate() {
            let av = a[p * MR + i];
            for (o, &w) in row.iter_mut().zip(bv) {
                *o = av.mul_add(w, *o);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (o, v) in c[i * ldc..i * ldc + NR].iter_mut().zip(row) {
            *o += v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// Rows `row0..row0 + 6` of the MR-row panel. Caller guarantees `a.len() >= kc*MR`, `b.len() >= kc*NR`,
    /// `c.len() >= 5*ldc + NR`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn microkernel(
        kc: usize,
        a: &[f32],
        row0: usize,
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; 6];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for p in 0..kc {
            // SAFETY: p < kc, so the loads stay inside `a` and `b`.
            unsafe {
                let b0 = _mm256_loadu_ps(bp.add(p * NR));
                let b1 = _mm256_loadu_ps(bp.add(p * NR + 8));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ap.add(p * MR + row0 + i));
                    acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                }
            }
        }
        let cp = c.as_mut_ptr();
        for (i, acc) in acc.iter().enumerate() {
            // SAFETY: i*ldc + 16 <= c.len().
            unsafe {
                let p = cp.add(i * ldc);
                _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc[0]));
                _mm256_storeu_ps(p.add(8), _mm256_add_ps(_mm256_loadu_ps(p.add(8)), acc[1]));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{KC, MR, NR};
    use std::arch::x86_64::*;

    /// `panel[kk * NR + lane] = rows[lane * kc + kk]`, one 16-lane gather per column. Caller guarantees
    /// `rows.len() >= NR * kc`, `panel.len() >= NR * kc` and NR == 16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn transpose_panel(rows: &[f32], panel: &mut [f32], kc: usize) {
        let stride = kc as i32;
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(stride),
        );
        let (src, dst) = (rows.as_ptr(), panel.as_mut_ptr());
        for kk in 0..kc {
            // SAFETY: lane * kc + kk < NR * kc <= rows.len(); kk * NR + 16 <= panel.len().
            unsafe {
                let v = _mm512_i32gather_ps::<4>(idx, src.add(kk));
                _mm512_storeu_ps(dst.add(kk * NR), v);
            }
        }
    }

    /// `out[lane] = sum over KC slices of (fma chain over the slice of x[kk] * w[j0 + lane, kk])` for the
    /// `out.len() <= 16` rows from j0. Each step loads 16 contiguous columns of each row (bf16 as its 16 bits
    /// shifted up: exact) and transposes the 16x16 block in registers, so the fma chain sees one column of
    /// the panel per vector, in the order a packed panel gives it. Caller guarantees AVX-512, `x.len() >= k`
    /// and rows `j0..j0 + out.len()` inside `w`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn one_row_panel(
        x: &[f32],
        w: crate::tensor::Floats,
        j0: usize,
        k: usize,
        out: &mut [f32],
    ) {
        let lanes = out.len();
        let mut c = _mm512_setzero_ps();
        for k0 in (0..k).step_by(KC) {
            let k1 = (k0 + KC).min(k);
            let mut acc = _mm512_setzero_ps();
            for kk0 in (k0..k1).step_by(NR) {
                let cols = (k1 - kk0).min(NR);
                let mut rows = [_mm512_setzero_ps(); NR];
                for (i, r) in rows.iter_mut().enumerate().take(lanes) {
                    // SAFETY: columns kk0..kk0 + cols of row j0 + i lie in w (the caller's rows).
                    *r = unsafe { load_row(w, (j0 + i) * k + kk0, cols) };
                }
                let columns = transpose16(&rows);
                for (col, &xv) in columns.iter().zip(&x[kk0..kk0 + cols]) {
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(xv), *col, acc);
                }
            }
            c = _mm512_add_ps(c, acc);
        }
        let mut buf = [0.0f32; NR];
        // SAFETY: buf holds 16 floats.
        unsafe { _mm512_storeu_ps(buf.as_mut_ptr(), c) };
        out.copy_from_slice(&buf[..lanes]);
    }

    /// Elements `at..at + cols` (`cols <= 16`) of an f32 or bf16 slice as f32 lanes, the rest zero. Masked
    /// loads touch no element past `cols`. Caller guarantees AVX-512 and `at + cols <= w.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_row(w: crate::tensor::Floats, at: usize, cols: usize) -> __m512 {
        use crate::tensor::Floats;
        let mask = (u32::MAX >> (32 - cols)) as __mmask16;
        // SAFETY: the masked-in elements at..at + cols lie in w; masked-out ones are not accessed.
        unsafe {
            match w {
                Floats::F32(s) => _mm512_maskz_loadu_ps(mask, s.as_ptr().add(at)),
                Floats::BF16(s) => {
                    let v = _mm256_maskz_loadu_epi16(mask, s.as_ptr().add(at).cast());
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
                }
                Floats::F16(_) => unreachable!("f16 weights take the packed path"),
            }
        }
    }

    /// The transpose of 16 rows of 16 lanes: `out[c]` lane `r` is `rows[r]` lane `c`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn transpose16(rows: &[__m512; NR]) -> [__m512; NR] {
        // Pairs of rows interleaved, then pairs of pairs: u[4g + c] holds, in 128-bit lane l, column 4l + c of
        // rows 4g..4g + 4.
        let mut t = [_mm512_setzero_ps(); NR];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(rows[2 * i], rows[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(rows[2 * i], rows[2 * i + 1]);
        }
        let pd = _mm512_castps_pd;
        let ps = _mm512_castpd_ps;
        let mut u = [_mm512_setzero_ps(); NR];
        for g in 0..4 {
            let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
            u[4 * g] = ps(_mm512_unpacklo_pd(pd(a), pd(c)));
            u[4 * g + 1] = ps(_mm512_unpackhi_pd(pd(a), pd(c)));
            u[4 * g + 2] = ps(_mm512_unpacklo_pd(pd(b), pd(d)));
            u[4 * g + 3] = ps(_mm512_unpackhi_pd(pd(b), pd(d)));
        }
        // Then the 128-bit lanes: column 4l + c gathers lane l of u[c], u[4 + c], u[8 + c], u[12 + c].
        let mut out = [_mm512_setzero_ps(); NR];
        for c in 0..4 {
            let s0 = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
            let s1 = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
            let s2 = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
            let s3 = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
            out[c] = _mm512_shuffle_f32x4::<0x88>(s0, s2);
            out[4 + c] = _mm512_shuffle_f32x4::<0xDD>(s0, s2);
            out[8 + c] = _mm512_shuffle_f32x4::<0x88>(s1, s3);
            out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(s1, s3);
        }
        out
    }

    /// The first `R` rows of the panel. Caller guarantees `a.len() >= kc*MR`, `b.len() >= kc*NR`,
    /// `c.len() >= (MR-1)*ldc + NR`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn microkernel<const R: usize>(
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
    ) {
        let mut acc = [_mm512_setzero_ps(); R];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for p in 0..kc {
            // SAFETY: p < kc, so the loads stay inside `a` and `b`.
            unsafe {
                let bv = _mm512_loadu_ps(bp.add(p * NR));
                for (i, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(p * MR + i)), bv, *acc);
                }
            }
        }
        let cp = c.as_mut_ptr();
        for (i, acc) in acc.iter().enumerate() {
            // SAFETY: i*ldc + 16 <= c.len().
            unsafe {
                let p = cp.add(i * ldc);
                _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), *acc));
            }
        }
    }
}

/// 4-bit weights: each task dequantizes only the KC-slices of its own rows, just before packing them.
pub fn matmul_4bit(
    x: Floats,
    batch: usize,
    w: crate::backend::Packed4bit,
    bias: Option<Floats>,
    isa: Isa,
) -> crate::tensor::FloatVec {
    let xf = x.to_f32_vec();
    let table = w.quant_type.dequant_table();
    let fill = |j: usize, k0: usize, out: &mut [f32]| {
        super::quantize::dequant_span(
            w.packed,
            w.absmax,
            table,
            w.blocksize,
            j * w.cols + k0,
            out,
            isa,
        )
    };
    let y = gemm_nt(&xf, batch, w.rows, w.cols, bias, fill, isa);
    crate::tensor::FloatVec::from_f32(y, x.dtype())
}

/// Dense `x[m, k] @ w[n, k]^T + bias` in x's dtype; w may be f32, f16 or bf16 whatever x's dtype. A
/// half-precision weight is widened slice by slice as it is packed (SIMD, exact), never as a whole matrix,
/// so its products are the f32-widened weight's bits while half the weight bytes are read.
pub fn matmul(
    x: Floats,
    w: Floats,
    bias: Option<Floats>,
    m: usize,
    n: usize,
    k: usize,
    isa: Isa,
) -> crate::tensor::FloatVec {
    let xf = x.to_f32_vec();
    #[cfg(target_arch = "x86_64")]
    if m == 1 && k >= 1 && isa == Isa::Avx512 && !matches!(w, Floats::F16(_)) {
        let y = one_row_avx512(&xf, w, bias, n, k);
        return crate::tensor::FloatVec::from_f32(y, x.dtype());
    }
    let fill =
        |j: usize, k0: usize, out: &mut [f32]| super::widen::widen_span(w, j * k + k0, out, isa);
    let y = gemm_nt(&xf, m, n, k, bias, fill, isa);
    crate::tensor::FloatVec::from_f32(y, x.dtype())
}

/// One activation row against an f32 or bf16 weight (`k >= 1`): `gemm_nt`'s arithmetic for every output (an
/// fma chain over each KC slice, added into a zero-started sum, then the bias or 0.0 added) with each
/// 16-output panel's weights loaded straight from the stored rows and transposed in registers, instead of
/// widened and transposed into a packed panel in memory first (which cost more than the products for one
/// row, e.g. a language model's output head; so did a 16-lane gather per column).
#[cfg(target_arch = "x86_64")]
fn one_row_avx512(x: &[f32], w: Floats, bias: Option<Floats>, n: usize, k: usize) -> Vec<f32> {
    /// Outputs per parallel task: 64 panels.
    const TASK: usize = 64 * NR;
    let mut y = vec![0.0f32; n];
    y.par_chunks_mut(TASK).enumerate().for_each(|(t, ys)| {
        for (p, out) in ys.chunks_mut(NR).enumerate() {
            let j0 = t * TASK + p * NR;
            // SAFETY: AVX-512 was detected by the caller's `isa`; rows j0..j0 + out.len() lie in w.
            unsafe { avx512::one_row_panel(x, w, j0, k, out) };
            for (jj, o) in out.iter_mut().enumerate() {
                *o += bias.map_or(0.0, |b| b.get_f32(j0 + jj));
            }
        }
    });
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_panel_transpose_equals_the_portable_one() {
        let rows: Vec<f32> = (0..NR * KC).map(|i| i as f32 * 0.5 - 7.0).collect();
        for kc in [1, 37, KC] {
            let mut want = vec![0.0f32; NR * kc];
            transpose_panel(&rows[..NR * kc], &mut want, kc, Isa::Portable);
            for (kk, chunk) in want.chunks(NR).enumerate() {
                for (lane, &v) in chunk.iter().enumerate() {
                    assert_eq!(v, rows[lane * kc + kk]);
                }
            }
            let mut got = vec![f32::NAN; NR * kc];
            transpose_panel(&rows[..NR * kc], &mut got, kc, super::super::isa());
            assert_eq!(got, want, "kc {kc} on {:?}", super::super::isa());
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod one_row_tests {
    use super::*;
    use half::bf16;

    #[test]
    fn the_register_transpose_moves_every_lane() {
        if super::super::isa() != Isa::Avx512 {
            println!("skipped: no AVX-512 on this CPU");
            return;
        }
        let v: Vec<f32> = (0..NR * NR).map(|i| i as f32).collect();
        // SAFETY: AVX-512 is present (checked above); each load reads 16 floats of v.
        let got = unsafe {
            use std::arch::x86_64::*;
            let rows: [__m512; NR] =
                std::array::from_fn(|r| _mm512_loadu_ps(v.as_ptr().add(r * NR)));
            let cols = avx512::transpose16(&rows);
            let mut out = vec![0.0f32; NR * NR];
            for (c, col) in cols.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(c * NR), *col);
            }
            out
        };
        for c in 0..NR {
            for r in 0..NR {
                assert_eq!(got[c * NR + r], v[r * NR + c], "column {c} lane {r}");
            }
        }
    }

    /// The one-row kernel gives `gemm_nt`'s bits (the packed path every other row count takes), so a batch
    /// split down to single rows keeps its bytes.
    #[test]
    fn one_row_path_equals_the_packed_gemm_bit_for_bit() {
        if super::super::isa() != Isa::Avx512 {
            println!("skipped: no AVX-512 on this CPU");
            return;
        }
        let seed = super::super::test_seed();
        let mut rng = crate::synth::SplitMix64::new(seed);
        for (n, k) in [
            (3, 1),
            (1, 2),
            (5, 3),
            (16, 256),
            (20, 17),
            (37, 300),
            (70, 513),
            (33, 1000),
        ] {
            let mut x = vec![0.0f32; k];
            rng.fill_normal(&mut x, 1.0);
            let mut w32 = vec![0.0f32; n * k];
            rng.fill_normal(&mut w32, 0.1);
            let w16: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
            let mut b = vec![0.0f32; n];
            rng.fill_normal(&mut b, 1.0);
            for w in [Floats::F32(&w32), Floats::BF16(&w16)] {
                for bias in [None, Some(Floats::F32(&b))] {
                    let got = one_row_avx512(&x, w, bias, n, k);
                    let fill = |j: usize, k0: usize, out: &mut [f32]| {
                        super::super::widen::widen_span(w, j * k + k0, out, Isa::Avx512)
                    };
                    let want = gemm_nt(&x, 1, n, k, bias, fill, Isa::Avx512);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{n}x{k} {:?} bias {}",
                        w.dtype(),
                        bias.is_some()
                    );
                }
            }
        }
    }
}
