//! Int8-activation GEMVs (`format::q8`): 4-bit codes or Q8 weight blocks times activations quantized to int8
//! per block of 64, as exact integer dot products (AVX-512 VNNI `vpdpbusd`), one float scale per block.
//!
//! Per block of 64 weights the VNNI kernel does 2 table shuffles (4-bit) and 2 `vpdpbusd` on 32-byte
//! registers, against 4 `vpermps` and 4 FMAs on 64-byte registers for the float GEMV (`gemv4`). Without VNNI
//! each row is `format::q8::dot_reference`, the definition itself; the VNNI kernel computes the same integers
//! and the same float operations in the same order, so both give the same bits.

use super::task_len;
use crate::backend::Packed4bit;
use crate::format::fourbit::nibble;
use crate::format::q8::{
    Q8_BLOCK, Q8_LANES, Q8Activations, codebook_u8, dot_reference, fits_4bit, fourbit_xscales,
    position,
};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Activations ready for the row kernels: codes, the per-lane offset corrections and the block scales.
struct Prepared {
    a: Q8Activations,
    /// `-128 * Σ xq` over each lane's 8 values: removes the weights' +128 offset from `vpdpbusd`'s sums.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    corr: Vec<i32>,
    /// Activation side of each block scale (`xscale`, or `xscale / 127` for 4-bit codes).
    xs: Vec<f32>,
}

impl Prepared {
    fn new(x: &[f32], fourbit: bool) -> Prepared {
        let a = Q8Activations::quantize(x);
        let corr =
            a.q.chunks_exact(Q8_BLOCK)
                .flat_map(|b| {
                    (0..Q8_LANES).map(move |j| {
                        let lane = |h: usize| b[h * 32 + 4 * j..h * 32 + 4 * j + 4].iter();
                        -128 * lane(0).chain(lane(1)).map(|&v| v as i32).sum::<i32>()
                    })
                })
                .collect();
        let xs = if fourbit {
            fourbit_xscales(&a)
        } else {
            a.scale.clone()
        };
        Prepared { a, corr, xs }
    }

    #[cfg(target_arch = "x86_64")]
    fn blocks(&self) -> usize {
        self.xs.len()
    }
}

/// Whether this CPU runs the VNNI kernel (AVX-512 F/BW/VL + VNNI), detected once.
pub fn has_vnni() -> bool {
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            super::isa() == super::Isa::Avx512 && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `y = dequant(W) x + bias` for one activation row, x quantized to int8 blocks. Needs
/// `fits_4bit(w.cols, w.blocksize)` and a blocksize that is a power of two.
pub fn gemv_4bit(x: &[f32], w: Packed4bit, bias: Option<&[f32]>, vnni: bool) -> Vec<f32> {
    debug_assert!(fits_4bit(w.cols, w.blocksize) && w.blocksize.is_power_of_two());
    let p = Prepared::new(x, true);
    let table = codebook_u8(w.quant_type.dequant_table());
    let shift = (w.blocksize / Q8_BLOCK).trailing_zeros();
    let row_bytes = w.cols / 2;
    rows_par(w.rows, row_bytes, bias, |r| {
        let bytes = &w.packed[r * row_bytes..(r + 1) * row_bytes];
        let first = r * (w.cols / Q8_BLOCK);
        let scale = |b: usize| w.absmax[(first + b) >> shift] * p.xs[b];
        let code = |e: usize| table[nibble(bytes, e) as usize];
        if vnni {
            vnni_row(Source::FourBit(bytes, &table), scale, &p)
        } else {
            portable_row(code, scale, &p)
        }
    })
}

/// `y = W x + bias` for a Q8 weight (`format::q8::Q8Weight`'s codes and scales) and one activation row.
pub fn gemv_q8(
    x: &[f32],
    codes: &[u8],
    scales: &[f32],
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
    vnni: bool,
) -> Vec<f32> {
    let p = Prepared::new(x, false);
    let nb = cols / Q8_BLOCK;
    rows_par(rows, cols, bias, |r| {
        let c = &codes[r * cols..(r + 1) * cols];
        let scale = |b: usize| scales[r * nb + b] * p.xs[b];
        // Codes are stored in the even-then-odd order per block; `code` takes natural column order.
        let code = |e: usize| c[position(e)];
        if vnni {
            vnni_row(Source::Q8(c), scale, &p)
        } else {
            portable_row(code, scale, &p)
        }
    })
}

/// Output rows in parallel, `row(r)` plus the bias.
fn rows_par(
    rows: usize,
    row_bytes: usize,
    bias: Option<&[f32]>,
    row: impl Fn(usize) -> f32 + Sync,
) -> Vec<f32> {
    let mut y = vec![0.0f32; rows];
    let chunk = task_len(rows, row_bytes);
    y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
        for (i, v) in ys.iter_mut().enumerate() {
            let r = c * chunk + i;
            *v = row(r) + bias.map_or(0.0, |b| b[r]);
        }
    });
    y
}

/// The portable kernel: `format::q8`'s definition itself.
fn portable_row(code: impl Fn(usize) -> u8, scale: impl Fn(usize) -> f32, p: &Prepared) -> f32 {
    dot_reference(code, scale, &p.a)
}

/// A row's weights for the VNNI kernel.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Source<'a> {
    /// Packed nibbles (32 bytes per block) and the codebook's offset int8 image.
    FourBit(&'a [u8], &'a [u8; 16]),
    /// Offset codes, 64 per block, even columns then odd ones.
    Q8(&'a [u8]),
}

#[cfg(target_arch = "x86_64")]
fn vnni_row(src: Source, scale: impl Fn(usize) -> f32, p: &Prepared) -> f32 {
    // SAFETY: callers pass `vnni = true` only when `has_vnni()` reported the features.
    unsafe { avx512::row(src, scale, p) }
}

#[cfg(not(target_arch = "x86_64"))]
fn vnni_row(_: Source, _: impl Fn(usize) -> f32, _: &Prepared) -> f32 {
    unreachable!("VNNI is never selected off x86-64")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Prepared, Q8_BLOCK, Source};
    use std::arch::x86_64::*;

    /// Needs `has_vnni()`; every slice holds whole blocks (checked by the indexing below).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    pub(super) fn row(src: Source, scale: impl Fn(usize) -> f32, p: &Prepared) -> f32 {
        // The weight kind as a constant, so the block loop has no branch on it.
        match src {
            Source::FourBit(b, t) => row_of::<true>(b, t, scale, p),
            Source::Q8(c) => row_of::<false>(c, &[0; 16], scale, p),
        }
    }

    /// One row of packed nibbles with the codebook image `table` (`Q4`), or of Q8 codes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    fn row_of<const Q4: bool>(
        bytes: &[u8],
        table: &[u8; 16],
        scale: impl Fn(usize) -> f32,
        p: &Prepared,
    ) -> f32 {
        let nb = p.blocks();
        let xq = &p.a.q[..nb * Q8_BLOCK];
        let corr = &p.corr[..nb * 8];
        let bytes = &bytes[..nb * if Q4 { 32 } else { Q8_BLOCK }];
        // SAFETY: 16 bytes.
        let table = _mm256_broadcastsi128_si256(unsafe {
            _mm_loadu_si128(table.as_ptr() as *const __m128i)
        });
        let low = _mm256_set1_epi8(0x0f);
        // One block into accumulator `$acc` (a macro rather than a closure or an indexed array, so both
        // accumulators stay in registers).
        macro_rules! block {
            ($b:expr, $acc:ident) => {{
                let b = $b;
                // SAFETY: block b's 32 or 64 code bytes, 64 activation bytes and 8 corrections are in
                // bounds (the slices above hold nb whole blocks).
                let (hi, lo, xe, xo, c) = unsafe {
                    let (hi, lo) = match Q4 {
                        true => {
                            let q = _mm256_loadu_si256(bytes.as_ptr().add(32 * b) as *const __m256i);
                            let h = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
                            let l = _mm256_and_si256(q, low);
                            (
                                _mm256_shuffle_epi8(table, h),
                                _mm256_shuffle_epi8(table, l),
                            )
                        }
                        false => {
                            let at = bytes.as_ptr().add(Q8_BLOCK * b);
                            (
                                _mm256_loadu_si256(at as *const __m256i),
                                _mm256_loadu_si256(at.add(32) as *const __m256i),
                            )
                        }
                    };
                    let xa = xq.as_ptr().add(Q8_BLOCK * b);
                    (
                        hi,
                        lo,
                        _mm256_loadu_si256(xa as *const __m256i),
                        _mm256_loadu_si256(xa.add(32) as *const __m256i),
                        _mm256_loadu_si256(corr.as_ptr().add(8 * b) as *const __m256i),
                    )
                };
                let i = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(c, hi, xe), lo, xo);
                $acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(scale(b)), $acc);
            }};
        }
        let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for pair in 0..nb / 2 {
            block!(2 * pair, even);
            block!(2 * pair + 1, odd);
        }
        if nb % 2 == 1 {
            block!(nb - 1, even);
        }
        // format::q8::finish, in registers: ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
        let l = _mm256_add_ps(even, odd);
        let v = _mm_add_ps(_mm256_castps256_ps128(l), _mm256_extractf128_ps::<1>(l));
        let u = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::FourBitType;
    use crate::format::q8::Q8Weight;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        super::super::test_data(n, seed, 4.0)
    }

    #[test]
    fn both_kernels_give_the_definitions_bits() {
        let (rows, cols) = (37, 320);
        let x = data(cols, 1);
        let packed: Vec<u8> = data(rows * cols / 2, 2)
            .iter()
            .map(|v| (v.to_bits() >> 7) as u8)
            .collect();
        let absmax: Vec<f32> = data((rows * cols).div_ceil(128), 3)
            .iter()
            .map(|v| v.abs())
            .collect();
        let w = Packed4bit {
            packed: &packed,
            absmax: &absmax,
            quant_type: FourBitType::Nf4,
            blocksize: 128,
            rows,
            cols,
        };
        let qx = Q8Activations::quantize(&x);
        let xs = fourbit_xscales(&qx);
        let table = codebook_u8(FourBitType::Nf4.dequant_table());
        let want: Vec<f32> = (0..rows)
            .map(|r| {
                let code = |e: usize| table[nibble(&packed, r * cols + e) as usize];
                dot_reference(code, |b| absmax[(r * cols + b * 64) / 128] * xs[b], &qx)
            })
            .collect();
        let dense = Q8Weight::quantize(&data(rows * cols, 4), rows, cols);
        let want_q8: Vec<f32> = (0..rows)
            .map(|r| {
                let c = &dense.codes[r * cols..(r + 1) * cols];
                let code = |e: usize| c[position(e)];
                dot_reference(code, |b| dense.scales[r * 5 + b] * qx.scale[b], &qx)
            })
            .collect();
        let mut kernels = vec![false];
        if has_vnni() {
            kernels.push(true);
        } else {
            eprintln!("skipped the VNNI kernel: this CPU has no AVX-512 VNNI");
        }
        for vnni in kernels {
            let got = gemv_4bit(&x, w, None, vnni);
            assert_eq!(bits(&got), bits(&want), "4-bit, vnni {vnni}");
            let got = gemv_q8(&x, &dense.codes, &dense.scales, rows, cols, None, vnni);
            assert_eq!(bits(&got), bits(&want_q8), "q8, vnni {vnni}");
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }
}
