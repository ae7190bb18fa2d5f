//! Int8-activation products on 4-bit weights in the lanes layout (`format::q8::Q4Lanes`): 16 output rows per
//! register, one per 32-bit lane, so a block's 64 products of 16 rows are 16 `vpdpbusd` against broadcast
//! activation dwords, and the int-to-float conversion and the scale's FMA come once per 1,024 products.
//!
//! The row-major one-row kernel (`q8.rs`) keeps a row's block in 8 lanes and pays a conversion and an FMA
//! per 64 products, plus a horizontal sum and its scales' setup per row; on SmolLM2's 576-column rows that
//! overhead was as large as the products (one thread: 576x576 10.1 us there, 3.2 us here). One row (decode)
//! and several (prefill) follow the same arithmetic, `format::q8::dot_blocks_reference`, so they give the
//! same bits; the nibbles are turned into their int8 images in registers, so the weight stays 4-bit.

#[cfg(target_arch = "x86_64")]
use super::q8_gemm::scatter_columns;
use super::q8_gemm::{Rows, add_bias, portable_blocks};
#[cfg(target_arch = "x86_64")]
use super::task_len;
use crate::format::FourBitType;
use crate::format::q8::{
    LANE_BLOCK_BYTES, LANE_ROWS, Q8_BLOCK, codebook_u8, lanes_code, lanes_scale_index,
};
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;

/// A `Q4Lanes` weight as the kernels read it (an operand's slices).
#[derive(Clone, Copy)]
pub struct LanesView<'a> {
    pub packed: &'a [u8],
    pub scales: &'a [f32],
    pub quant_type: FourBitType,
    pub rows: usize,
    pub cols: usize,
}

impl LanesView<'_> {
    fn blocks(&self) -> usize {
        self.cols / Q8_BLOCK
    }

    fn groups(&self) -> usize {
        self.rows.div_ceil(LANE_ROWS)
    }

    fn code(&self, r: usize, c: usize) -> u8 {
        lanes_code(self.packed, self.cols, r, c)
    }

    fn scale(&self, r: usize, b: usize) -> f32 {
        self.scales[lanes_scale_index(self.cols, r, b)]
    }

    /// Whether the slices hold every group's blocks and scales.
    fn is_whole(&self) -> bool {
        let units = self.groups() * self.blocks();
        self.cols.is_multiple_of(Q8_BLOCK)
            && self.packed.len() >= units * LANE_BLOCK_BYTES
            && self.scales.len() >= units * LANE_ROWS
    }
}

/// `y = x W^T + bias` for `m` rows of x (`[m, cols]`), activations quantized to int8 blocks of 64.
pub fn linear(x: &[f32], m: usize, w: LanesView, bias: Option<&[f32]>, vnni: bool) -> Vec<f32> {
    let (n, k) = (w.rows, w.cols);
    assert!(
        w.is_whole() && x.len() == m * k,
        "a whole lanes weight and x"
    );
    let table = codebook_u8(w.quant_type.dequant_table());
    let rows = Rows::new(x, m, k, true);
    let mut y = vec![0.0f32; m * n];
    if m > 0 && n > 0 {
        #[cfg(target_arch = "x86_64")]
        let done = vnni && super::q8::has_vnni() && {
            if m == 1 {
                decode(&rows, w, &table, &mut y);
            } else {
                tiled(&rows, m, w, &table, &mut y);
            }
            true
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = {
            let _ = vnni;
            false
        };
        if !done {
            portable(&rows, w, &table, &mut y);
        }
    }
    add_bias(&mut y, n, bias);
    y
}

/// The definition itself, output rows in parallel.
fn portable(rows: &Rows, w: LanesView, table: &[u8; 16], y: &mut [f32]) {
    let code = |j: usize, e: usize| table[w.code(j, e) as usize];
    portable_blocks(rows, w.rows, w.cols, code, |j, b| w.scale(j, b), y);
}

/// One activation row: groups of 16 rows in parallel, 4 groups per pass of the kernel.
#[cfg(target_arch = "x86_64")]
fn decode(rows: &Rows, w: LanesView, table: &[u8; 16], y: &mut [f32]) {
    let (groups, nb) = (w.groups(), w.blocks());
    // Whole groups write into y itself; a partial last group goes through a padded copy.
    let mut padded = Vec::new();
    let out: &mut [f32] = if w.rows.is_multiple_of(LANE_ROWS) {
        y
    } else {
        padded.resize(groups * LANE_ROWS, 0.0f32);
        &mut padded
    };
    let chunk = task_len(groups, nb * LANE_BLOCK_BYTES);
    out.par_chunks_mut(chunk * LANE_ROWS)
        .enumerate()
        .for_each(|(c, out)| {
            let g0 = c * chunk;
            let n_groups = out.len() / LANE_ROWS;
            let mut g = 0;
            while g < n_groups {
                let take = (n_groups - g).min(avx512::DECODE_GROUPS);
                let args = avx512::Args {
                    nb,
                    packed: &w.packed[(g0 + g) * nb * LANE_BLOCK_BYTES..],
                    scales: &w.scales[(g0 + g) * nb * LANE_ROWS..],
                    table,
                };
                let o = &mut out[g * LANE_ROWS..];
                // SAFETY: `has_vnni()` reported the features; lengths are asserted inside.
                unsafe {
                    match take {
                        4 => avx512::decode::<4>(&args, rows, o),
                        3 => avx512::decode::<3>(&args, rows, o),
                        2 => avx512::decode::<2>(&args, rows, o),
                        _ => avx512::decode::<1>(&args, rows, o),
                    }
                }
                g += take;
            }
        });
    if !padded.is_empty() {
        y.copy_from_slice(&padded[..w.rows]);
    }
}

/// Several activation rows: tasks own pairs of groups (32 output rows) and run every 4-row tile of x over
/// them, the pair's panels staying in L1.
#[cfg(target_arch = "x86_64")]
fn tiled(rows: &Rows, m: usize, w: LanesView, table: &[u8; 16], y: &mut [f32]) {
    let (n, k, nb, groups) = (w.rows, w.cols, w.blocks(), w.groups());
    let pairs = groups.div_ceil(2);
    // An odd last group is paired with zero codes and zero scales.
    let zero_p = vec![0u8; nb * LANE_BLOCK_BYTES];
    let zero_s = vec![0.0f32; nb * LANE_ROWS];
    let group = |g: usize| -> (&[u8], &[f32]) {
        if g < groups {
            (
                &w.packed[g * nb * LANE_BLOCK_BYTES..],
                &w.scales[g * nb * LANE_ROWS..],
            )
        } else {
            (&zero_p, &zero_s)
        }
    };
    let per_task = task_len(pairs, 2 * nb * LANE_BLOCK_BYTES);
    let width_of = |p0: usize, p1: usize| (p1 - p0) * 2 * LANE_ROWS;
    let parts: Vec<(usize, Vec<f32>)> = (0..pairs.div_ceil(per_task))
        .into_par_iter()
        .map(|t| {
            let (p0, p1) = (t * per_task, ((t + 1) * per_task).min(pairs));
            let width = width_of(p0, p1);
            let mut c = vec![0.0f32; m * width];
            for p in p0..p1 {
                let (a, b) = (group(2 * p), group(2 * p + 1));
                let args = avx512::TileArgs {
                    nb,
                    packed: [a.0, b.0],
                    scales: [a.1, b.1],
                    table,
                };
                for i0 in (0..m).step_by(avx512::TILE_ROWS) {
                    let r = avx512::TILE_ROWS.min(m - i0);
                    let x = avx512::XRows {
                        q: &rows.q.q[i0 * k..(i0 + r) * k],
                        corr: &rows.corr[i0 * nb..(i0 + r) * nb],
                        xs: &rows.xs[i0 * nb..(i0 + r) * nb],
                    };
                    let out = &mut c[i0 * width + (p - p0) * 2 * LANE_ROWS..];
                    // SAFETY: `has_vnni()` reported the features; lengths are asserted inside.
                    unsafe {
                        match r {
                            4 => avx512::tile::<4>(&args, &x, out, width),
                            3 => avx512::tile::<3>(&args, &x, out, width),
                            2 => avx512::tile::<2>(&args, &x, out, width),
                            _ => avx512::tile::<1>(&args, &x, out, width),
                        }
                    }
                }
            }
            (p0 * 2 * LANE_ROWS, c)
        })
        .collect();
    scatter_columns(parts, m, n, y);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::q8_gemm::Rows;
    use super::{LANE_BLOCK_BYTES, LANE_ROWS, Q8_BLOCK};
    use std::arch::x86_64::*;

    /// Groups per pass of the one-row kernel: 4 x 2 independent accumulator chains.
    pub(super) const DECODE_GROUPS: usize = 4;
    /// Activation rows per tile of the several-row kernel (x 2 groups).
    pub(super) const TILE_ROWS: usize = 4;

    pub(super) struct Args<'a> {
        pub nb: usize,
        pub packed: &'a [u8],
        pub scales: &'a [f32],
        pub table: &'a [u8; 16],
    }

    pub(super) struct TileArgs<'a> {
        pub nb: usize,
        pub packed: [&'a [u8]; 2],
        pub scales: [&'a [f32]; 2],
        pub table: &'a [u8; 16],
    }

    pub(super) struct XRows<'a> {
        pub q: &'a [i8],
        pub corr: &'a [i32],
        pub xs: &'a [f32],
    }

    /// The codebook's int8 images of one register's high and low nibbles.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    fn images(w: __m512i, table: __m512i) -> (__m512i, __m512i) {
        let low = _mm512_set1_epi8(0x0f);
        let hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16::<4>(w), low));
        let lo = _mm512_shuffle_epi8(table, _mm512_and_si512(w, low));
        (hi, lo)
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn table_register(table: &[u8; 16]) -> __m512i {
        // SAFETY: 16 bytes.
        _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(table.as_ptr() as *const __m128i) })
    }

    /// `G` groups (16 rows each) against one activation row: `out[16 g + lane]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn decode<const G: usize>(a: &Args, x: &Rows, out: &mut [f32]) {
        let nb = a.nb;
        assert!(
            a.packed.len() >= G * nb * LANE_BLOCK_BYTES
                && a.scales.len() >= G * nb * LANE_ROWS
                && x.q.q.len() >= nb * Q8_BLOCK
                && x.corr.len() >= nb
                && x.xs.len() >= nb
                && out.len() >= G * LANE_ROWS
        );
        let table = table_register(a.table);
        let mut f = [_mm512_setzero_ps(); G];
        for b in 0..nb {
            // SAFETY: every offset is inside the lengths asserted above.
            unsafe {
                let c = _mm512_set1_epi32(*x.corr.get_unchecked(b));
                // Two chains per group (high and low nibbles), added exactly at the block's end.
                let mut acc = [[c, _mm512_setzero_si512()]; G];
                let xb = x.q.q.as_ptr().add(b * Q8_BLOCK) as *const i32;
                for t in 0..8 {
                    let xh = _mm512_set1_epi32(xb.add(t).read_unaligned());
                    let xl = _mm512_set1_epi32(xb.add(8 + t).read_unaligned());
                    for (g, ag) in acc.iter_mut().enumerate() {
                        let at = a
                            .packed
                            .as_ptr()
                            .add((g * nb + b) * LANE_BLOCK_BYTES + 64 * t);
                        let (hi, lo) = images(_mm512_loadu_si512(at as *const _), table);
                        ag[0] = _mm512_dpbusd_epi32(ag[0], hi, xh);
                        ag[1] = _mm512_dpbusd_epi32(ag[1], lo, xl);
                    }
                }
                let xs = _mm512_set1_ps(*x.xs.get_unchecked(b));
                for (g, (fg, ag)) in f.iter_mut().zip(&acc).enumerate() {
                    let s = _mm512_loadu_ps(a.scales.as_ptr().add((g * nb + b) * LANE_ROWS));
                    let d = _mm512_cvtepi32_ps(_mm512_add_epi32(ag[0], ag[1]));
                    *fg = _mm512_fmadd_ps(d, _mm512_mul_ps(s, xs), *fg);
                }
            }
        }
        for (g, v) in f.iter().enumerate() {
            // SAFETY: inside `out` (asserted above).
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(g * LANE_ROWS), *v) };
        }
    }

    /// `R` activation rows against two groups: `out[i * ldc + 16 g + lane]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn tile<const R: usize>(a: &TileArgs, x: &XRows, out: &mut [f32], ldc: usize) {
        let nb = a.nb;
        assert!(
            a.packed.iter().all(|p| p.len() >= nb * LANE_BLOCK_BYTES)
                && a.scales.iter().all(|s| s.len() >= nb * LANE_ROWS)
                && x.q.len() >= R * nb * Q8_BLOCK
                && x.corr.len() >= R * nb
                && x.xs.len() >= R * nb
                && out.len() >= (R - 1) * ldc + 2 * LANE_ROWS
        );
        let table = table_register(a.table);
        let mut f = [[_mm512_setzero_ps(); 2]; R];
        for b in 0..nb {
            // SAFETY: every offset is inside the lengths asserted above.
            unsafe {
                let mut acc: [[__m512i; 2]; R] = std::array::from_fn(|i| {
                    [_mm512_set1_epi32(*x.corr.get_unchecked(i * nb + b)); 2]
                });
                for t in 0..8 {
                    let at = |g: usize| a.packed[g].as_ptr().add(b * LANE_BLOCK_BYTES + 64 * t);
                    let (h0, l0) = images(_mm512_loadu_si512(at(0) as *const _), table);
                    let (h1, l1) = images(_mm512_loadu_si512(at(1) as *const _), table);
                    for (i, ai) in acc.iter_mut().enumerate() {
                        let xb = x.q.as_ptr().add((i * nb + b) * Q8_BLOCK) as *const i32;
                        let xh = _mm512_set1_epi32(xb.add(t).read_unaligned());
                        let xl = _mm512_set1_epi32(xb.add(8 + t).read_unaligned());
                        ai[0] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(ai[0], h0, xh), l0, xl);
                        ai[1] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(ai[1], h1, xh), l1, xl);
                    }
                }
                let s0 = _mm512_loadu_ps(a.scales[0].as_ptr().add(b * LANE_ROWS));
                let s1 = _mm512_loadu_ps(a.scales[1].as_ptr().add(b * LANE_ROWS));
                for (i, (fi, ai)) in f.iter_mut().zip(&acc).enumerate() {
                    let xs = _mm512_set1_ps(*x.xs.get_unchecked(i * nb + b));
                    fi[0] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[0]), _mm512_mul_ps(s0, xs), fi[0]);
                    fi[1] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai[1]), _mm512_mul_ps(s1, xs), fi[1]);
                }
            }
        }
        for (i, fi) in f.iter().enumerate() {
            for (g, v) in fi.iter().enumerate() {
                // SAFETY: inside `out` (asserted above).
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(i * ldc + g * LANE_ROWS), *v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::q8::{Q4Lanes, Q8Activations, dot_blocks_reference, fourbit_xscales};

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// Every output of one and of several rows against the definition on the bitsandbytes layout (codes
    /// read from the packed bytes, scales from absmax), with a blocksize spanning rows, a partial last group,
    /// an odd number of groups and partial row tiles; one row gives the bits of the same row in a batch.
    #[test]
    fn the_lanes_kernels_give_the_definitions_bits() {
        let seed = super::super::test_seed();
        let data = |n, s| super::super::test_data(n, seed ^ s, 4.0);
        for (n, k, bs) in [(53, 320, 128), (80, 192, 64), (7, 64, 64)] {
            let packed: Vec<u8> = data(n * k / 2, 2)
                .iter()
                .map(|v| (v.to_bits() >> 7) as u8)
                .collect();
            let absmax: Vec<f32> = data((n * k).div_ceil(bs), 3)
                .iter()
                .map(|v| v.abs())
                .collect();
            let q = Q4Lanes::from_4bit(&packed, &absmax, FourBitType::Nf4, bs, n, k);
            let w = LanesView {
                packed: &q.packed,
                scales: &q.scales,
                quant_type: q.quant_type,
                rows: n,
                cols: k,
            };
            let table = codebook_u8(FourBitType::Nf4.dequant_table());
            let bias = data(n, 5);
            for m in [1, 2, 6, 9] {
                let x = data(m * k, 6 + m as u64);
                let mut want = Vec::new();
                for xr in x.chunks_exact(k) {
                    let a = Q8Activations::quantize(xr);
                    let xs = fourbit_xscales(&a);
                    for r in 0..n {
                        let code = |e: usize| {
                            let i = r * k + e;
                            let byte = packed[i / 2];
                            table[if i.is_multiple_of(2) {
                                byte >> 4
                            } else {
                                byte & 15
                            } as usize]
                        };
                        let s = |b: usize| absmax[(r * k + b * 64) / bs] * xs[b];
                        want.push(dot_blocks_reference(code, s, &a) + bias[r]);
                    }
                }
                let mut kernels = vec![false];
                if super::super::q8::has_vnni() {
                    kernels.push(true);
                } else {
                    eprintln!("skipped the VNNI kernels: this CPU has no AVX-512 VNNI");
                }
                for vnni in kernels {
                    let got = linear(&x, m, w, Some(&bias), vnni);
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{n}x{k} bs {bs}, m {m}, vnni {vnni}, seed {seed}"
                    );
                    if m > 1 {
                        let one = linear(&x[k..2 * k], 1, w, Some(&bias), vnni);
                        assert_eq!(bits(&one), bits(&got[n..2 * n]), "row 1 alone, seed {seed}");
                    }
                }
            }
        }
    }
}
