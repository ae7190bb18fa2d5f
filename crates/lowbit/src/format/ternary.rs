//! BitNet b1.58: absmean ternary weights and Hugging Face transformers' 2-bit packing (FORMATS.md §9).

/// Lower bound of the mean |W| and of the per-token max |x| (transformers' `clamp(min=1e-5)`).
pub const EPS: f32 = 1e-5;

/// `weight_scale = float32(1 / max(mean|W|, 1e-5))`, a multiplier. `mean|W|` follows torch's single-thread
/// CPU float32 sum for n <= 32768 (the golden generator's order); above that torch splits the sum over
/// threads, so any careful sum is as valid and lowbit uses a float64 sum.
pub fn weight_scale(w_abs_sum_f32: f32, n: usize) -> f32 {
    let mean = w_abs_sum_f32 / n as f32;
    1.0 / mean.max(EPS)
}

/// Largest tensor whose |w| sum follows torch's single-thread float32 order; above it a float64 sum.
pub const TORCH_ORDER_MAX: usize = 32768;

/// Sum of |w| in torch's CPU order (see [`weight_scale`]).
pub fn abs_sum(w: impl ExactSizeIterator<Item = f32> + Clone) -> f32 {
    if w.len() > TORCH_ORDER_MAX {
        return abs_sum_f64(0.0, w) as f32;
    }
    let a: Vec<f32> = w.map(f32::abs).collect();
    torch_cpu_sum_f32(&a)
}

/// The float64 sum of [`abs_sum`] for large tensors, continued from `acc` over `w`: feeding a tensor in
/// consecutive parts gives the bits of one pass (the additions happen in the same order).
pub fn abs_sum_f64(acc: f64, w: impl Iterator<Item = f32>) -> f64 {
    w.fold(acc, |s, v| s + v.abs() as f64)
}

/// torch's CPU float32 sum on one thread with 8-lane vectors: four interleaved vector accumulators fed through a
/// 4-level cascade, leftover vectors into accumulator 0, then the scalar tail, then the lanes in order.
// Index loops mirror torch's accumulator layout one to one, which is what makes the order auditable.
#[allow(clippy::needless_range_loop)]
pub fn torch_cpu_sum_f32(a: &[f32]) -> f32 {
    const V: usize = 8;
    let n = a.len();
    let nvec = n / V;
    let nilp = nvec / 4;
    let log2 = if nilp > 1 {
        (nilp as f64).log2().ceil() as u32
    } else {
        0
    };
    let lp = (log2 / 4).max(4);
    let step = 1usize << lp;
    let mask = step - 1;
    // acc[level][accumulator][lane]
    let mut acc = [[[0.0f32; V]; 4]; 4];
    let vec_at = |k: usize| -> [f32; V] { a[k * V..k * V + V].try_into().unwrap() };
    let add_group = |acc0: &mut [[f32; V]; 4], i: usize| {
        for (j, a0) in acc0.iter_mut().enumerate() {
            let v = vec_at(i * 4 + j);
            for l in 0..V {
                a0[l] += v[l];
            }
        }
    };
    let mut i = 0;
    while i + step <= nilp {
        for _ in 0..step {
            add_group(&mut acc[0], i);
            i += 1;
        }
        for j in 1..4 {
            for r in 0..4 {
                for l in 0..V {
                    acc[j][r][l] += acc[j - 1][r][l];
                }
            }
            acc[j - 1] = [[0.0; V]; 4];
            if i & (mask << (j as u32 * lp)) != 0 {
                break;
            }
        }
    }
    while i < nilp {
        add_group(&mut acc[0], i);
        i += 1;
    }
    for j in 1..4 {
        for r in 0..4 {
            for l in 0..V {
                acc[0][r][l] += acc[j][r][l];
            }
        }
    }
    let mut ps = acc[0];
    for t in nilp * 4..nvec {
        let v = vec_at(t);
        for l in 0..V {
            ps[0][l] += v[l];
        }
    }
    for k in 1..4 {
        for l in 0..V {
            ps[0][l] += ps[k][l];
        }
    }
    let mut total = 0.0f32;
    for &v in &a[nvec * V..] {
        total += v;
    }
    for l in 0..V {
        total += ps[0][l];
    }
    total
}

/// `clamp(round_half_even(float32(w * scale)), -1, 1)`.
#[inline(always)]
pub fn ternarize(w: f32, scale: f32) -> i8 {
    (w * scale).round_ties_even().clamp(-1.0, 1.0) as i8
}

/// Rows of the packed tensor for `rows` ternary rows: four rows per byte along dim 0.
pub fn packed_rows(rows: usize) -> usize {
    rows.div_ceil(4)
}

/// transformers' `pack_weights`: with R = ceil(rows / 4), bits 2i..2i+1 of `packed[r, c]` hold
/// `t[i*R + r, c] + 1`. Rows past the end leave zero bits.
pub fn pack(t: &[i8], rows: usize, cols: usize) -> Vec<u8> {
    let r_rows = packed_rows(rows);
    let mut packed = vec![0u8; r_rows * cols];
    for (row, chunk) in t.chunks_exact(cols).enumerate() {
        let (i, r) = (row / r_rows, row % r_rows);
        for (c, &v) in chunk.iter().enumerate() {
            packed[r * cols + c] |= ((v + 1) as u8) << (2 * i);
        }
    }
    packed
}

/// The ternary value of row `row`, column `col` of a packed `[R, cols]` tensor (pattern 00 decodes to -1).
#[inline(always)]
pub fn unpack_value(packed: &[u8], r_rows: usize, cols: usize, row: usize, col: usize) -> i8 {
    let (i, r) = (row / r_rows, row % r_rows);
    ((packed[r * cols + col] >> (2 * i)) & 3) as i8 - 1
}

/// Unpacks the first `rows` rows.
pub fn unpack(packed: &[u8], rows: usize, cols: usize) -> Vec<i8> {
    let r_rows = packed_rows(rows);
    let mut out = Vec::with_capacity(rows * cols);
    for row in 0..rows {
        for col in 0..cols {
            out.push(unpack_value(packed, r_rows, cols, row, col));
        }
    }
    out
}

/// Per-token activation scale: `float32(float32(1 / max(max|x|, 1e-5)) * 127)` (two roundings, as torch
/// evaluates `127 / t`).
#[inline]
pub fn activation_scale(max_abs: f32) -> f32 {
    (1.0f32 / max_abs.max(EPS)) * 127.0
}

/// BitNet's output before bias: `float32(acc) / float32(x_scale * weight_scale)`, a true division (torch's
/// `y / (x_scale * w_scale)`).
#[inline(always)]
pub fn rescale(acc: i32, x_scale: f32, weight_scale: f32) -> f32 {
    acc as f32 / (x_scale * weight_scale)
}

/// `int8(clamp(round_half_even(float32(x * s)), -128, 127))`.
#[inline(always)]
pub fn quantize_activation(x: f32, s: f32) -> i8 {
    (x * s).round_ties_even().clamp(-128.0, 127.0) as i8
}
