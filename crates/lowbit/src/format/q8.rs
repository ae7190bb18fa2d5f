//! Int8 activations for CPU decode, the way llama.cpp makes its CPU GEMVs fast: activations quantized per
//! block of 64 values (its Q8_0 scheme at 64), weights as int8 codes, integer dot products per block, one
//! float scale per block. Not a bitsandbytes format and not bit-compatible with bitsandbytes' float products:
//! a model opts in (`--activations int8`) and its logits are held to their own bound of transformers'.
//!
//! The weights are either 4-bit codes (NF4/FP4, whose 16 code values are replaced by their nearest multiples
//! of 1/127) or dense weights quantized to int8 blocks ([`Q8Weight`], llama.cpp's Q8_0 at 64 values). Codes
//! are stored offset by 128 as `u8` (VNNI multiplies an unsigned byte by a signed one); the offset is
//! removed exactly in the integer sum.
//!
//! The arithmetic of one output, which every kernel reproduces bit for bit: per block `b` of 64 columns and
//! per lane `j` in 0..8, the exact integer `l = Σ_{e in 8j..8j+8} wq[e] * xq[e]`; per lane, two float
//! accumulators (even blocks, odd blocks) `acc = fma(l as f32, s_b, acc)`; at the end the two are added lane
//! by lane and the 8 lanes summed as `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`, then the bias. The block scale
//! `s_b` is `d_b * xscale_b` for a [`Q8Weight`] and `absmax_b * (xscale_b / 127)` for 4-bit codes (whose int8
//! image is the code value times 127).
//!
//! Several rows at once (a prefill) take a second arithmetic, that of the tiled kernel whose SIMD lanes are
//! output features rather than column groups: per block the exact integer `d_b = Σ_{e in block} wq[e] *
//! xq[e]`, one accumulator `acc = fma(d_b as f32, s_b, acc)` block by block from zero, then the bias
//! ([`dot_blocks_reference`]). Both are the same integers under one float scale per block; they round
//! differently, as llama.cpp's GEMV and GEMM kernels do.

/// Values per block (activations and [`Q8Weight`]).
pub const Q8_BLOCK: usize = 64;
/// Partial sums per block: lane `j` holds elements `8j..8j+8`.
pub const Q8_LANES: usize = 8;

/// Activations quantized per [`Q8_BLOCK`] values: `q = round(x * (1 / d))`, `d = amax / 127` (llama.cpp's
/// `quantize_row_q8_0`, but rounding half to even), `q` laid out per block as its 32 even-indexed values, then its 32 odd-indexed ones
/// (the order in which 4-bit codes unpack: high nibbles, then low nibbles).
#[derive(Clone, Debug, PartialEq)]
pub struct Q8Activations {
    pub q: Vec<i8>,
    pub scale: Vec<f32>,
}

impl Q8Activations {
    /// Needs `x.len() % 64 == 0`.
    pub fn quantize(x: &[f32]) -> Q8Activations {
        debug_assert!(x.len().is_multiple_of(Q8_BLOCK));
        let mut q = vec![0i8; x.len()];
        let mut scale = Vec::with_capacity(x.len() / Q8_BLOCK);
        for (xb, qb) in x.chunks_exact(Q8_BLOCK).zip(q.chunks_exact_mut(Q8_BLOCK)) {
            scale.push(quantize_block(xb, qb));
        }
        Q8Activations { q, scale }
    }

    /// The quantized value of column `c`.
    pub fn get(&self, c: usize) -> i8 {
        self.q[position(c)]
    }
}

/// One block of 64 values into `qb` (even-then-odd), returning its scale `d`.
pub fn quantize_block(xb: &[f32], qb: &mut [i8]) -> f32 {
    let (d, id) = block_scale(xb);
    for (t, &v) in xb.iter().enumerate() {
        qb[deinterleaved(t)] = round_i8(v * id);
    }
    d
}

/// Position of a block's element `t` in the even-then-odd layout.
#[inline]
pub fn deinterleaved(t: usize) -> usize {
    (t % 2) * (Q8_BLOCK / 2) + t / 2
}

/// Where column `c` of a row (or of a row-major matrix with whole blocks per row) is stored in the
/// even-then-odd layout of activations and [`Q8Weight`] codes.
#[inline]
pub fn position(c: usize) -> usize {
    c - c % Q8_BLOCK + deinterleaved(c % Q8_BLOCK)
}

/// `(d, 1/d)` for one block; an all-zero block has `d = 0` and quantizes to zeros.
fn block_scale(x: &[f32]) -> (f32, f32) {
    amax_scale(x.iter().fold(0.0f32, |m, v| m.max(v.abs())))
}

/// `(d, 1/d)` for a block whose largest magnitude is `amax`.
#[inline]
pub fn amax_scale(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

/// Round half to even into -127..=127 (NaN to 0). Adding and subtracting 1.5 * 2^23 rounds any |v| < 2^22
/// to an integer in the current (nearest-even) mode: two additions where `f32::round` is a libm call on
/// baseline x86-64, and the answer SIMD conversions give.
#[inline]
fn round_i8(v: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    let v = v.clamp(-127.0, 127.0);
    ((v + MAGIC) - MAGIC) as i8
}

/// The int8 image of a 4-bit codebook (values in [-1, 1]): `round(code * 127) + 128`.
pub fn codebook_u8(table: &[f32; 16]) -> [u8; 16] {
    table.map(|t| (round_i8(t * 127.0) as i16 + 128) as u8)
}

/// A dense `[rows, cols]` weight quantized per block of 64 values of a row (llama.cpp's Q8_0 at 64): codes
/// `round(w / d) + 128` laid out per block even-then-odd like [`Q8Activations`], one `d = amax / 127` per
/// block. Needs `cols % 64 == 0`.
#[derive(Clone, Debug, PartialEq)]
pub struct Q8Weight {
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl Q8Weight {
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Q8Weight {
        debug_assert!(cols.is_multiple_of(Q8_BLOCK) && w.len() == rows * cols);
        let a = Q8Activations::quantize(w);
        Q8Weight {
            codes: a.q.iter().map(|&q| (q as i16 + 128) as u8).collect(),
            scales: a.scale,
            rows,
            cols,
        }
    }

    /// Bytes a product reads: one code per weight and a scale per block.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
    }
}

/// A 4-bit weight laid out for the int8-activation kernels, whose 16 SIMD lanes are 16 output rows: rows in
/// groups of 16 (the last one padded with zero scales), and per group and block of 64 columns 512 bytes, the
/// rows' bitsandbytes bytes transposed in 4-byte units: byte `64 t + 4 l + i` is byte `4 t + i` of row `l`'s
/// block (high nibble column `8 t + 2 i`, low nibble the next). One register of it holds 4 codes of each of
/// 16 rows twice over (high nibbles, low nibbles), against one broadcast activation dword each. Scales are
/// the absmax of each row's 64-column block, in the same group order. Products over it follow
/// [`dot_blocks_reference`] for any number of rows, so a prefill and a decode step give the same bits.
#[derive(Clone, Debug, PartialEq)]
pub struct Q4Lanes {
    pub packed: Vec<u8>,
    pub scales: Vec<f32>,
    pub quant_type: crate::format::FourBitType,
    pub rows: usize,
    pub cols: usize,
}

/// Rows per group of [`Q4Lanes`]: one per 32-bit lane of a 512-bit register.
pub const LANE_ROWS: usize = 16;
/// Bytes of one group's block in [`Q4Lanes`].
pub const LANE_BLOCK_BYTES: usize = LANE_ROWS * Q8_BLOCK / 2;

impl Q4Lanes {
    /// Repacks a bitsandbytes 4-bit weight (`packed`, f32 `absmax` per `blocksize`) of `[rows, cols]`.
    /// Needs `fits_4bit(cols, blocksize)` and whole inputs (checked by the caller).
    pub fn from_4bit(
        packed: &[u8],
        absmax: &[f32],
        quant_type: crate::format::FourBitType,
        blocksize: usize,
        rows: usize,
        cols: usize,
    ) -> Q4Lanes {
        debug_assert!(fits_4bit(cols, blocksize));
        let nb = cols / Q8_BLOCK;
        let groups = rows.div_ceil(LANE_ROWS);
        let mut out = vec![0u8; groups * nb * LANE_BLOCK_BYTES];
        let mut scales = vec![0.0f32; groups * nb * LANE_ROWS];
        for r in 0..rows {
            let (g, l) = (r / LANE_ROWS, r % LANE_ROWS);
            for b in 0..nb {
                let first = r * cols + b * Q8_BLOCK;
                let src = &packed[first / 2..][..Q8_BLOCK / 2];
                let dst = &mut out[(g * nb + b) * LANE_BLOCK_BYTES..][..LANE_BLOCK_BYTES];
                for (t, four) in src.chunks_exact(4).enumerate() {
                    dst[t * 64 + 4 * l..][..4].copy_from_slice(four);
                }
                scales[(g * nb + b) * LANE_ROWS + l] = absmax[first / blocksize];
            }
        }
        Q4Lanes {
            packed: out,
            scales,
            quant_type,
            rows,
            cols,
        }
    }

    /// The 4-bit code of row `r`, column `c`.
    pub fn code(&self, r: usize, c: usize) -> u8 {
        lanes_code(&self.packed, self.cols, r, c)
    }

    /// Row `r`'s block scale (absmax) for columns `64 b .. 64 b + 64`.
    pub fn scale(&self, r: usize, b: usize) -> f32 {
        self.scales[lanes_scale_index(self.cols, r, b)]
    }
}

/// The code of row `r`, column `c` in a [`Q4Lanes`] packing of `cols` columns.
pub fn lanes_code(packed: &[u8], cols: usize, r: usize, c: usize) -> u8 {
    let nb = cols / Q8_BLOCK;
    let (g, l, b, e) = (r / LANE_ROWS, r % LANE_ROWS, c / Q8_BLOCK, c % Q8_BLOCK);
    let p = e / 2;
    let byte = packed[(g * nb + b) * LANE_BLOCK_BYTES + (p / 4) * 64 + 4 * l + p % 4];
    if e % 2 == 0 { byte >> 4 } else { byte & 15 }
}

/// Where row `r`'s block `b` scale sits in a [`Q4Lanes`] scale vector of `cols` columns.
pub fn lanes_scale_index(cols: usize, r: usize, b: usize) -> usize {
    ((r / LANE_ROWS) * (cols / Q8_BLOCK) + b) * LANE_ROWS + r % LANE_ROWS
}

/// Whether a `cols`-wide layer with 4-bit blocks of `blocksize` can take int8 activations: whole activation
/// blocks per row, each inside one weight block.
pub fn fits_4bit(cols: usize, blocksize: usize) -> bool {
    cols.is_multiple_of(Q8_BLOCK) && blocksize.is_multiple_of(Q8_BLOCK) && cols > 0
}

/// The final float combination of a row's lane accumulators (see the module doc).
#[inline]
pub fn finish(acc: &[[f32; Q8_LANES]; 2]) -> f32 {
    let l: [f32; Q8_LANES] = std::array::from_fn(|j| acc[0][j] + acc[1][j]);
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

/// The activation side of a 4-bit block scale: `xscale_b / 127`, once per call.
pub fn fourbit_xscales(x: &Q8Activations) -> Vec<f32> {
    x.scale.iter().map(|s| s / 127.0).collect()
}

/// The definition of one output (without bias): `code(e)` is the offset code of the row's element `e` and
/// `scale(b)` the block scale `s_b` (see the module doc).
pub fn dot_reference(
    code: impl Fn(usize) -> u8,
    scale: impl Fn(usize) -> f32,
    x: &Q8Activations,
) -> f32 {
    let mut acc = [[0.0f32; Q8_LANES]; 2];
    for b in 0..x.scale.len() {
        let s = scale(b);
        for (j, a) in acc[b % 2].iter_mut().enumerate() {
            let l: i32 = (0..8)
                .map(|t| {
                    let e = b * Q8_BLOCK + 8 * j + t;
                    (code(e) as i32 - 128) * x.get(e) as i32
                })
                .sum();
            *a = (l as f32).mul_add(s, *a);
        }
    }
    finish(&acc)
}

/// The definition of one output of a several-row product (without bias; see the module doc): `code` and
/// `scale` as in [`dot_reference`], `x` the activation row.
pub fn dot_blocks_reference(
    code: impl Fn(usize) -> u8,
    scale: impl Fn(usize) -> f32,
    x: &Q8Activations,
) -> f32 {
    (0..x.scale.len()).fold(0.0f32, |acc, b| {
        let d: i32 = (b * Q8_BLOCK..(b + 1) * Q8_BLOCK)
            .map(|e| (code(e) as i32 - 128) * x.get(e) as i32)
            .sum();
        (d as f32).mul_add(scale(b), acc)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::fourbit::FourBitType;

    #[test]
    fn activations_round_to_the_block_scale_and_keep_their_layout() {
        let x: Vec<f32> = (0..128).map(|i| (i as f32 - 60.0) * 0.37).collect();
        let a = Q8Activations::quantize(&x);
        for b in 0..2 {
            let amax = x[b * 64..(b + 1) * 64]
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(a.scale[b], amax / 127.0);
        }
        for (c, &v) in x.iter().enumerate() {
            let d = a.scale[c / 64];
            assert!(
                (a.get(c) as f32 * d - v).abs() <= 0.5 * d * 1.0001,
                "column {c}"
            );
        }
        assert_eq!(a.get(1), a.q[32], "odd columns follow the even ones");
        let z = Q8Activations::quantize(&[0.0; 64]);
        assert_eq!((z.scale[0], z.q.iter().all(|&q| q == 0)), (0.0, true));
    }

    #[test]
    fn codebooks_keep_their_extremes_and_order() {
        let t = codebook_u8(FourBitType::Nf4.dequant_table());
        assert_eq!((t[0], t[7], t[15]), (1, 128, 255));
        assert!(t.windows(2).all(|p| p[0] < p[1]), "{t:?}");
    }

    #[test]
    fn the_reference_dot_is_close_to_the_float_dot() {
        let cols = 192;
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let w: Vec<f32> = (0..cols)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 40.0)
            .collect();
        let qw = Q8Weight::quantize(&w, 1, cols);
        let qx = Q8Activations::quantize(&x);
        let code = |e: usize| qw.codes[position(e)];
        let got = dot_reference(code, |b| qw.scales[b] * qx.scale[b], &qx);
        let want: f64 = x.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum();
        let norm: f64 = x
            .iter()
            .zip(&w)
            .map(|(a, b)| (*a as f64 * *b as f64).abs())
            .sum();
        assert!((got as f64 - want).abs() <= 0.02 * norm, "{got} vs {want}");
    }

    /// The lanes packing keeps every code and every block's absmax where `code` and `scale` find them, with
    /// a blocksize spanning rows and a partial last group (whose padding has zero scales).
    #[test]
    fn the_lanes_packing_keeps_codes_and_scales() {
        let (rows, cols, bs): (usize, usize, usize) = (21, 320, 128);
        let packed: Vec<u8> = (0..rows * cols / 2).map(|i| (i * 37 % 251) as u8).collect();
        let absmax: Vec<f32> = (0..(rows * cols).div_ceil(bs))
            .map(|i| 1.0 + i as f32)
            .collect();
        let q = Q4Lanes::from_4bit(&packed, &absmax, FourBitType::Nf4, bs, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                let i = r * cols + c;
                let want = if i % 2 == 0 {
                    packed[i / 2] >> 4
                } else {
                    packed[i / 2] & 15
                };
                assert_eq!(q.code(r, c), want, "row {r} column {c}");
            }
            for b in 0..cols / Q8_BLOCK {
                assert_eq!(q.scale(r, b), absmax[(r * cols + b * Q8_BLOCK) / bs]);
            }
        }
        assert_eq!(q.scales.len(), 2 * LANE_ROWS * cols / Q8_BLOCK);
        for r in rows..2 * LANE_ROWS {
            for b in 0..cols / Q8_BLOCK {
                assert_eq!(
                    q.scales[lanes_scale_index(cols, r, b)],
                    0.0,
                    "padding row {r}"
                );
            }
        }
    }
}
