//! Int8-activation products of several rows (a prefill) on Q8 weights: `format::q8`'s batched arithmetic
//! ([`dot_blocks_reference`]) as a tiled VNNI kernel whose 16 SIMD lanes are 16 output features (4-bit
//! weights, stored in that layout already, take `q4_lanes.rs`).
//!
//! The one-row kernel (`q8.rs`) keeps a row's 64 products in 8 lanes and spends a conversion and an FMA on
//! every 64 of them; a tile of rows that did the same made prefill slower than the float GEMM. Here a
//! weight's block is repacked once per call so that one 64-byte register holds 4 codes of each of 16 rows,
//! and one activation dword is broadcast against it: 16 `vpdpbusd` per block make 16 rows' whole 64-value
//! dot products, so the conversion and the scale's FMA come once per 1,024 products, and each weight
//! register serves 4 activation rows (llama.cpp's repacked Q4_0 GEMM works the same way). The sums are
//! exact integers; the float steps are the definition's, so the kernel gives its bits.

use super::q8::Prepared;
#[cfg(target_arch = "x86_64")]
use super::q8::has_vnni;
use super::task_len;
use crate::format::q8::{Q8_BLOCK, Q8Activations, dot_blocks_reference, position};
use rayon::prelude::*;

/// Output features per register: one 32-bit lane each.
#[cfg(target_arch = "x86_64")]
const LANES: usize = 16;
/// Activation rows per microtile.
#[cfg(target_arch = "x86_64")]
const MR: usize = 4;
/// Registers of output features per microtile (2 x 16 rows).
#[cfg(target_arch = "x86_64")]
const NW: usize = 2;
/// Bytes of one lane group's block in a packed panel: 16 rows x 64 codes.
#[cfg(target_arch = "x86_64")]
const PANEL_BLOCK: usize = LANES * Q8_BLOCK;

/// A `format::q8::Q8Weight`'s codes and scales as the product reads them.
#[derive(Clone, Copy)]
pub struct Q8View<'a> {
    pub codes: &'a [u8],
    pub scales: &'a [f32],
    pub rows: usize,
    pub cols: usize,
}

impl Q8View<'_> {
    /// Row `r`'s block `b`: 64 offset codes in the even-then-odd layout of `Q8Activations`.
    #[cfg(target_arch = "x86_64")]
    fn block_codes(&self, r: usize, b: usize) -> &[u8] {
        &self.codes[r * self.cols + b * Q8_BLOCK..][..Q8_BLOCK]
    }

    /// Row `r`'s block `b` scale `d`.
    fn block_scale(&self, r: usize, b: usize) -> f32 {
        self.scales[r * (self.cols / Q8_BLOCK) + b]
    }

    /// The definition's code of row `r`'s column `e` (natural order), for the portable path.
    fn code(&self, r: usize, e: usize) -> u8 {
        self.codes[r * self.cols + position(e)]
    }
}

/// The activation rows, quantized: codes, each block's offset correction `-128 Σ xq` and scale's
/// activation side.
pub(super) struct Rows {
    pub(super) q: Q8Activations,
    pub(super) corr: Vec<i32>,
    pub(super) xs: Vec<f32>,
}

impl Rows {
    pub(super) fn new(x: &[f32], m: usize, k: usize, fourbit: bool) -> Rows {
        let nb = k / Q8_BLOCK;
        let chunk = task_len(m, k * 4);
        if m <= chunk {
            // One task (a decode step): quantize here and keep the vectors, no pool round trip or copies.
            return Rows::from(Prepared::new(x, fourbit));
        }
        let parts: Vec<Prepared> = x
            .par_chunks(chunk * k)
            .map(|c| Prepared::new(c, fourbit))
            .collect();
        let mut rows = Rows {
            q: Q8Activations {
                q: Vec::with_capacity(m * k),
                scale: Vec::with_capacity(m * nb),
            },
            corr: Vec::with_capacity(m * nb),
            xs: Vec::with_capacity(m * nb),
        };
        for p in parts {
            rows.q.q.extend_from_slice(&p.a.q);
            rows.q.scale.extend_from_slice(&p.a.scale);
            rows.xs.extend_from_slice(&p.xs);
            rows.corr.extend(block_corrections(&p));
        }
        rows
    }
}

impl From<Prepared> for Rows {
    fn from(p: Prepared) -> Rows {
        let corr = block_corrections(&p).collect();
        Rows {
            q: p.a,
            corr,
            xs: p.xs,
        }
    }
}

/// Each block's offset correction: the sum of its lanes' (8 per block on either path).
fn block_corrections(p: &Prepared) -> impl Iterator<Item = i32> + '_ {
    let per_block = p.corr.len() / p.a.scale.len().max(1);
    p.corr
        .chunks_exact(per_block.max(1))
        .map(|c| c.iter().sum::<i32>())
}

/// `y = x W^T + bias` for `m` rows of x with int8 activations, by [`dot_blocks_reference`]'s arithmetic.
/// Needs the width to be a whole number of blocks.
pub fn gemm(x: &[f32], m: usize, w: Q8View, bias: Option<&[f32]>, vnni: bool) -> Vec<f32> {
    let (n, k) = (w.rows, w.cols);
    debug_assert!(k.is_multiple_of(Q8_BLOCK) && x.len() == m * k);
    let rows = Rows::new(x, m, k, false);
    let mut y = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return y;
    }
    #[cfg(target_arch = "x86_64")]
    if vnni && has_vnni() {
        tiled(&rows, m, w, &mut y);
        add_bias(&mut y, n, bias);
        return y;
    }
    let _ = vnni;
    portable_blocks(
        &rows,
        n,
        k,
        |j, e| w.code(j, e),
        |j, b| w.block_scale(j, b),
        &mut y,
    );
    add_bias(&mut y, n, bias);
    y
}

/// Adds `bias` to every row of `y` (rows of `n`).
pub(super) fn add_bias(y: &mut [f32], n: usize, bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(n.max(1)) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
}

/// The definition itself for `[m, n]` outputs, rows in parallel: `code(j, e)` is output row `j`'s offset
/// code of column `e`, `scale(j, b)` the weight side of its block `b` scale. The portable path of every
/// int8-activation product of several rows.
pub(super) fn portable_blocks(
    rows: &Rows,
    n: usize,
    k: usize,
    code: impl Fn(usize, usize) -> u8 + Sync,
    scale: impl Fn(usize, usize) -> f32 + Sync,
    y: &mut [f32],
) {
    let nb = k / Q8_BLOCK;
    y.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, yr)| {
        let a = Q8Activations {
            q: rows.q.q[i * k..(i + 1) * k].to_vec(),
            scale: rows.q.scale[i * nb..(i + 1) * nb].to_vec(),
        };
        for (j, v) in yr.iter_mut().enumerate() {
            let s = |b: usize| scale(j, b) * rows.xs[i * nb + b];
            *v = dot_blocks_reference(|e| code(j, e), s, &a);
        }
    });
}

/// Copies per-task column blocks (`(first column, [m, width] values)`, the last ones past `n` dropped) into
/// `y` `[m, n]`.
#[cfg(target_arch = "x86_64")]
pub(super) fn scatter_columns(parts: Vec<(usize, Vec<f32>)>, m: usize, n: usize, y: &mut [f32]) {
    for (j0, c) in parts {
        let width = c.len() / m;
        let cols = width.min(n - j0);
        for i in 0..m {
            y[i * n + j0..i * n + j0 + cols].copy_from_slice(&c[i * width..i * width + cols]);
        }
    }
}

/// Packs output rows `r0..r0 + 16 * groups` into lane-group panels: for group g and block b, 16 dwords
/// per 4-code step (`[step][lane][4]`), and the 16 rows' block scales. Rows past the weight are zero codes
/// (128) with scale 0.
#[cfg(target_arch = "x86_64")]
fn pack(w: Q8View, r0: usize, groups: usize, panel: &mut Vec<u8>, scales: &mut Vec<f32>) {
    let (n, k) = (w.rows, w.cols);
    let nb = k / Q8_BLOCK;
    panel.clear();
    panel.resize(groups * nb * PANEL_BLOCK, 128);
    scales.clear();
    scales.resize(groups * nb * LANES, 0.0);
    for g in 0..groups {
        for lane in 0..LANES {
            let r = r0 + g * LANES + lane;
            if r >= n {
                break;
            }
            for b in 0..nb {
                let codes = w.block_codes(r, b);
                let at = (g * nb + b) * PANEL_BLOCK + lane * 4;
                for (step, four) in codes.chunks_exact(4).enumerate() {
                    panel[at + step * LANES * 4..][..4].copy_from_slice(four);
                }
                scales[(g * nb + b) * LANES + lane] = w.block_scale(r, b);
            }
        }
    }
}

/// Tasks own runs of `NW * 16` output rows: each packs its rows once and runs every activation tile over
/// them (the panel, 2 KiB per block, stays in L1 for the 4 rows' products).
#[cfg(target_arch = "x86_64")]
fn tiled(rows: &Rows, m: usize, w: Q8View, y: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    let nb = k / Q8_BLOCK;
    let tile_rows = NW * LANES;
    let tiles = n.div_ceil(tile_rows);
    let per_task = task_len(tiles, k * tile_rows / 2);
    let parts: Vec<(usize, Vec<f32>)> = (0..tiles.div_ceil(per_task))
        .into_par_iter()
        .map(|t| {
            let (t0, t1) = (t * per_task, ((t + 1) * per_task).min(tiles));
            let width = (t1 - t0) * tile_rows;
            let mut c = vec![0.0f32; m * width];
            let (mut panel, mut scales) = (Vec::new(), Vec::new());
            pack(w, t0 * tile_rows, (t1 - t0) * NW, &mut panel, &mut scales);
            for tt in 0..t1 - t0 {
                for i0 in (0..m).step_by(MR) {
                    let r = MR.min(m - i0);
                    let at = |g: usize| (tt * NW + g) * nb;
                    let args = Tile {
                        nb,
                        panels: [&panel[at(0) * PANEL_BLOCK..], &panel[at(1) * PANEL_BLOCK..]],
                        scales: [&scales[at(0) * LANES..], &scales[at(1) * LANES..]],
                        xq: &rows.q.q[i0 * k..(i0 + r) * k],
                        corr: &rows.corr[i0 * nb..(i0 + r) * nb],
                        xs: &rows.xs[i0 * nb..(i0 + r) * nb],
                    };
                    let out = &mut c[i0 * width + tt * tile_rows..];
                    // SAFETY: `has_vnni()` reported the features; `Tile::check` holds (asserted inside).
                    unsafe {
                        match r {
                            4 => avx512::tile::<4>(&args, out, width),
                            3 => avx512::tile::<3>(&args, out, width),
                            2 => avx512::tile::<2>(&args, out, width),
                            _ => avx512::tile::<1>(&args, out, width),
                        }
                    }
                }
            }
            (t0 * tile_rows, c)
        })
        .collect();
    scatter_columns(parts, m, n, y);
}

/// One microtile's operands: `R` activation rows against `NW` packed lane groups, over `nb` blocks.
#[cfg(target_arch = "x86_64")]
struct Tile<'a> {
    nb: usize,
    panels: [&'a [u8]; NW],
    scales: [&'a [f32]; NW],
    xq: &'a [i8],
    corr: &'a [i32],
    xs: &'a [f32],
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{LANES, NW, PANEL_BLOCK, Q8_BLOCK, Tile};
    use std::arch::x86_64::*;

    /// `out[i * ldc + 16 g + lane] = Σ_b fma(d_b, s_b, ·)` for the tile's `R` rows and `NW * 16` features.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn tile<const R: usize>(t: &Tile, out: &mut [f32], ldc: usize) {
        let nb = t.nb;
        assert!(
            t.panels.iter().all(|p| p.len() >= nb * PANEL_BLOCK)
                && t.scales.iter().all(|s| s.len() >= nb * LANES)
                && t.xq.len() >= R * nb * Q8_BLOCK
                && t.corr.len() >= R * nb
                && t.xs.len() >= R * nb
                && out.len() >= (R - 1) * ldc + NW * LANES
        );
        let mut f = [[_mm512_setzero_ps(); NW]; R];
        for b in 0..nb {
            // SAFETY: every offset below is inside the lengths asserted above.
            unsafe {
                let mut acc: [[__m512i; NW]; R] = std::array::from_fn(|i| {
                    [_mm512_set1_epi32(*t.corr.get_unchecked(i * nb + b)); NW]
                });
                let p0 = t.panels[0].as_ptr().add(b * PANEL_BLOCK);
                let p1 = t.panels[1].as_ptr().add(b * PANEL_BLOCK);
                for step in 0..Q8_BLOCK / 4 {
                    let w0 = _mm512_loadu_si512(p0.add(step * 64) as *const _);
                    let w1 = _mm512_loadu_si512(p1.add(step * 64) as *const _);
                    for (i, a) in acc.iter_mut().enumerate() {
                        let at = t.xq.as_ptr().add((i * nb + b) * Q8_BLOCK + 4 * step);
                        let x = _mm512_set1_epi32((at as *const i32).read_unaligned());
                        a[0] = _mm512_dpbusd_epi32(a[0], w0, x);
                        a[1] = _mm512_dpbusd_epi32(a[1], w1, x);
                    }
                }
                let s0 = _mm512_loadu_ps(t.scales[0].as_ptr().add(b * LANES));
                let s1 = _mm512_loadu_ps(t.scales[1].as_ptr().add(b * LANES));
                for (i, (fi, a)) in f.iter_mut().zip(&acc).enumerate() {
                    let x = _mm512_set1_ps(*t.xs.get_unchecked(i * nb + b));
                    fi[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[0]), _mm512_mul_ps(s0, x), fi[0]);
                    fi[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[1]), _mm512_mul_ps(s1, x), fi[1]);
                }
            }
        }
        for (i, fi) in f.iter().enumerate() {
            for (g, v) in fi.iter().enumerate() {
                // SAFETY: inside `out` (asserted above).
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(i * ldc + g * LANES), *v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::q8::has_vnni;
    use super::*;
    use crate::format::q8::Q8Weight;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// Every output against the definition, with row and feature counts that leave partial microtiles.
    #[test]
    fn both_kernels_give_the_batched_definitions_bits() {
        let seed = super::super::test_seed();
        let data = |n, s| super::super::test_data(n, seed ^ s, 4.0);
        let (n, k) = (53, 320);
        let dense = Q8Weight::quantize(&data(n * k, 4), n, k);
        let w = Q8View {
            codes: &dense.codes,
            scales: &dense.scales,
            rows: n,
            cols: k,
        };
        let bias = data(n, 5);
        for m in [2, 7, 9] {
            let x = data(m * k, 6 + m as u64);
            let mut want = Vec::new();
            for xr in x.chunks_exact(k) {
                let a = Q8Activations::quantize(xr);
                for (r, bias_r) in bias.iter().enumerate() {
                    let code = |e: usize| dense.codes[r * k + position(e)];
                    let s = |b: usize| dense.scales[r * 5 + b] * a.scale[b];
                    want.push(dot_blocks_reference(code, s, &a) + bias_r);
                }
            }
            let mut kernels = vec![false];
            if has_vnni() {
                kernels.push(true);
            } else {
                eprintln!("skipped the VNNI kernel: this CPU has no AVX-512 VNNI");
            }
            for vnni in kernels {
                let got = gemm(&x, m, w, Some(&bias), vnni);
                assert_eq!(bits(&got), bits(&want), "m {m}, vnni {vnni}, seed {seed}");
            }
        }
    }
}
