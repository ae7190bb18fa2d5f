//! Int8-activation GEMVs on Q8 weight blocks (`format::q8`): activations quantized to int8 per block of 64,
//! exact integer dot products (AVX-512 VNNI `vpdpbusd`), one float scale per block; and the activation
//! quantizer every int8 kernel shares ([`Prepared`]). 4-bit weights take the lanes kernels (`q4_lanes.rs`).
//!
//! Per block of 64 weights the VNNI kernel does 2 `vpdpbusd` on 32-byte registers. Without VNNI each row is
//! `format::q8::dot_reference`, the definition itself; the VNNI kernel computes the same integers and the same
//! float operations in the same order, so both give the same bits.

use super::task_len;
use crate::format::q8::{
    Q8_BLOCK, Q8_LANES, Q8Activations, dot_reference, fourbit_xscales, position,
};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Activations ready for the row kernels: codes, the per-lane offset corrections and the block scales.
pub(super) struct Prepared {
    pub(super) a: Q8Activations,
    /// `-128 * Σ xq` over each lane's 8 values: removes the weights' +128 offset from `vpdpbusd`'s sums.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) corr: Vec<i32>,
    /// Activation side of each block scale (`xscale`, or `xscale / 127` for 4-bit codes).
    pub(super) xs: Vec<f32>,
}

impl Prepared {
    /// `x` holds whole blocks (one row, or several rows whose width is a multiple of the block).
    pub(super) fn new(x: &[f32], fourbit: bool) -> Prepared {
        #[cfg(target_arch = "x86_64")]
        if has_vnni() {
            // SAFETY: has_vnni() reported AVX-512 F/BW/VL and VNNI.
            let (a, corr) = unsafe { avx512::quantize(x) };
            return Prepared::with(a, corr, fourbit);
        }
        let a = Q8Activations::quantize(x);
        let corr = portable_corrections(&a);
        Prepared::with(a, corr, fourbit)
    }

    fn with(a: Q8Activations, corr: Vec<i32>, fourbit: bool) -> Prepared {
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

/// `-128 * Σ xq` over each lane's 8 values, lane by lane.
fn portable_corrections(a: &Q8Activations) -> Vec<i32> {
    a.q.chunks_exact(Q8_BLOCK)
        .flat_map(|b| {
            (0..Q8_LANES).map(move |j| {
                let lane = |h: usize| b[h * 32 + 4 * j..h * 32 + 4 * j + 4].iter();
                -128 * lane(0).chain(lane(1)).map(|&v| v as i32).sum::<i32>()
            })
        })
        .collect()
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
    rows_par(rows, cols, nb, bias, |r, s| {
        let c = &codes[r * cols..(r + 1) * cols];
        s.extend(
            scales[r * nb..(r + 1) * nb]
                .iter()
                .zip(&p.xs)
                .map(|(a, x)| a * x),
        );
        if vnni {
            vnni_row(c, s, &p)
        } else {
            // Codes are stored in the even-then-odd order per block; `code` takes natural column order.
            portable_row(|e: usize| c[position(e)], |b| s[b], &p)
        }
    })
}

/// Output rows in parallel, `row(r, scales)` plus the bias; `scales` is an empty buffer of `blocks`
/// capacity for the row's block scales, one allocation per task.
fn rows_par(
    rows: usize,
    row_bytes: usize,
    blocks: usize,
    bias: Option<&[f32]>,
    row: impl Fn(usize, &mut Vec<f32>) -> f32 + Sync,
) -> Vec<f32> {
    let mut y = vec![0.0f32; rows];
    let chunk = task_len(rows, row_bytes);
    y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
        let mut scales = Vec::with_capacity(blocks);
        for (i, v) in ys.iter_mut().enumerate() {
            let r = c * chunk + i;
            scales.clear();
            *v = row(r, &mut scales) + bias.map_or(0.0, |b| b[r]);
        }
    });
    y
}

/// The portable kernel: `format::q8`'s definition itself.
fn portable_row(code: impl Fn(usize) -> u8, scale: impl Fn(usize) -> f32, p: &Prepared) -> f32 {
    dot_reference(code, scale, &p.a)
}

/// A row of offset codes (64 per block, even columns then odd ones) through the VNNI kernel.
#[cfg(target_arch = "x86_64")]
fn vnni_row(codes: &[u8], scales: &[f32], p: &Prepared) -> f32 {
    // SAFETY: callers pass `vnni = true` only when `has_vnni()` reported the features.
    unsafe { avx512::row(codes, scales, p) }
}

#[cfg(not(target_arch = "x86_64"))]
fn vnni_row(_: &[u8], _: &[f32], _: &Prepared) -> f32 {
    unreachable!("VNNI is never selected off x86-64")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Prepared, Q8_BLOCK, Q8Activations};
    use crate::format::q8::{amax_scale, quantize_block};
    use std::arch::x86_64::*;

    /// `format::q8::Q8Activations::quantize(x)` and the lanes' offset corrections, 64 values at a time: the
    /// same multiply, the same rounding (to nearest even, as `cvtps2dq` does) and no clamping needed, since a
    /// finite block's `|v / d|` rounds to at most 127. A block with a NaN or an infinity takes the definition.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) fn quantize(x: &[f32]) -> (Q8Activations, Vec<i32>) {
        let nb = x.len() / Q8_BLOCK;
        let mut q = vec![0i8; nb * Q8_BLOCK];
        let mut scale = vec![0.0f32; nb];
        let mut corr = vec![0i32; nb * 8];
        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
        let magnitude = _mm512_set1_epi32(0x7fff_ffff);
        let inf = _mm512_set1_ps(f32::INFINITY);
        let ones = _mm512_set1_epi8(1);
        for b in 0..nb {
            let (xb, qb) = (
                &x[b * Q8_BLOCK..][..Q8_BLOCK],
                &mut q[b * Q8_BLOCK..][..Q8_BLOCK],
            );
            // SAFETY: xb and qb hold 64 values, corr 8 per block.
            unsafe {
                let v: [__m512; 4] =
                    std::array::from_fn(|i| _mm512_loadu_ps(xb.as_ptr().add(16 * i)));
                let abs = v.map(|v| {
                    _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), magnitude))
                });
                let finite = abs.iter().fold(0xffffu16, |m, &a| {
                    m & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, inf)
                });
                if finite != 0xffff {
                    scale[b] = quantize_block(xb, qb);
                } else {
                    let amax = _mm512_reduce_max_ps(_mm512_max_ps(
                        _mm512_max_ps(abs[0], abs[1]),
                        _mm512_max_ps(abs[2], abs[3]),
                    ));
                    let (d, id) = amax_scale(amax);
                    scale[b] = d;
                    let id = _mm512_set1_ps(id);
                    let code = |lo: __m512, hi: __m512, idx: __m512i| {
                        let v = _mm512_mul_ps(_mm512_permutex2var_ps(lo, idx, hi), id);
                        _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v))
                    };
                    let p = qb.as_mut_ptr() as *mut __m128i;
                    _mm_storeu_si128(p, code(v[0], v[1], even));
                    _mm_storeu_si128(p.add(1), code(v[2], v[3], even));
                    _mm_storeu_si128(p.add(2), code(v[0], v[1], odd));
                    _mm_storeu_si128(p.add(3), code(v[2], v[3], odd));
                }
                // Lane j: -128 * (the sum of codes 4j..4j+4 and 32+4j..32+4j+4).
                let sums = _mm512_dpbusd_epi32(
                    _mm512_setzero_si512(),
                    ones,
                    _mm512_loadu_si512(qb.as_ptr() as *const _),
                );
                let lanes = _mm256_add_epi32(
                    _mm512_castsi512_si256(sums),
                    _mm512_extracti64x4_epi64::<1>(sums),
                );
                let c = _mm256_mullo_epi32(lanes, _mm256_set1_epi32(-128));
                _mm256_storeu_si256(corr.as_mut_ptr().add(8 * b) as *mut __m256i, c);
            }
        }
        (Q8Activations { q, scale }, corr)
    }

    /// One row of Q8 codes. Needs `has_vnni()`; every slice holds whole blocks (checked by the indexing
    /// below).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    pub(super) fn row(bytes: &[u8], scales: &[f32], p: &Prepared) -> f32 {
        let nb = p.blocks();
        let scales = &scales[..nb];
        let xq = &p.a.q[..nb * Q8_BLOCK];
        let corr = &p.corr[..nb * 8];
        let bytes = &bytes[..nb * Q8_BLOCK];
        // One block into accumulator `$acc` (a macro rather than a closure or an indexed array, so both
        // accumulators stay in registers).
        macro_rules! block {
            ($b:expr, $acc:ident) => {{
                let b = $b;
                // SAFETY: block b's 64 code bytes, 64 activation bytes, 8 corrections and its scale are
                // in bounds (the slices above hold nb whole blocks, and b < nb).
                let (hi, lo, xe, xo, c, s) = unsafe {
                    let at = bytes.as_ptr().add(Q8_BLOCK * b);
                    let (hi, lo) = (
                        _mm256_loadu_si256(at as *const __m256i),
                        _mm256_loadu_si256(at.add(32) as *const __m256i),
                    );
                    let xa = xq.as_ptr().add(Q8_BLOCK * b);
                    (
                        hi,
                        lo,
                        _mm256_loadu_si256(xa as *const __m256i),
                        _mm256_loadu_si256(xa.add(32) as *const __m256i),
                        _mm256_loadu_si256(corr.as_ptr().add(8 * b) as *const __m256i),
                        _mm256_broadcast_ss(&*scales.as_ptr().add(b)),
                    )
                };
                let i = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(c, hi, xe), lo, xo);
                $acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), s, $acc);
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
    use crate::format::q8::Q8Weight;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        super::super::test_data(n, seed, 4.0)
    }

    #[test]
    fn both_kernels_give_the_definitions_bits() {
        let seed = super::super::test_seed();
        let (rows, cols) = (37, 320);
        let x = data(cols, seed);
        let qx = Q8Activations::quantize(&x);
        let dense = Q8Weight::quantize(&data(rows * cols, seed ^ 4), rows, cols);
        let want: Vec<f32> = (0..rows)
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
            let got = gemv_q8(&x, &dense.codes, &dense.scales, rows, cols, None, vnni);
            assert_eq!(bits(&got), bits(&want), "vnni {vnni}, seed {seed}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_fast_activation_quantizer_gives_the_definitions_codes() {
        if !has_vnni() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let seed = super::super::test_seed();
        let mut x = data(64 * 12, seed);
        // Block 1 all zero, block 2 a NaN, block 3 an infinity, block 4 values on rounding ties (x.5 after
        // the scale: amax 127 makes d = 1), block 5 tiny values, block 6 one huge value.
        x[64..128].fill(0.0);
        x[130] = f32::NAN;
        x[200] = f32::NEG_INFINITY;
        for (i, v) in x[256..320].iter_mut().enumerate() {
            *v = if i == 0 {
                127.0
            } else {
                (i as f32 - 32.0) + 0.5
            };
        }
        for v in &mut x[320..384] {
            *v *= 1e-30;
        }
        x[400] = 3e38;
        let want = Q8Activations::quantize(&x);
        let (got, corr) = unsafe { avx512::quantize(&x) };
        assert_eq!(got, want, "seed {seed}");
        let slow = Prepared::with(want.clone(), portable_corrections(&want), true);
        assert_eq!(corr, slow.corr, "seed {seed}");
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }
}
