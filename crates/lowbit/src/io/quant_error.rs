//! The quantization error `||W - dequant(Q(W))|| / ||W||`, accumulated chunk by chunk while a chunk is still
//! in cache, instead of dequantizing whole tensors afterwards (a second full pass and a full-size float
//! copy).
//!
//! The one difference from dequantizing and comparing (what `layout::encode` does, 4-bit values in f32
//! there too): sums are formed per block or row and then combined, a different summation order that moves
//! the statistic by far less than its own precision (relative 1e-4); the quantized bytes are not affected.

use crate::backend::cpu::fast::quantize::dequant_span;
use crate::format::FourBitType;
use crate::format::ternary::unpack_value;
use crate::tensor::{Float, Floats};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// `Σ (w - w')²` and `Σ w²`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorSums {
    pub num: f64,
    pub den: f64,
}

impl ErrorSums {
    pub fn add(self, o: ErrorSums) -> ErrorSums {
        ErrorSums {
            num: self.num + o.num,
            den: self.den + o.den,
        }
    }

    /// The relative error, as `layout::rel_error` defines it (0 for an all-zero tensor reproduced exactly).
    pub fn rel_error(self) -> f64 {
        if self.den == 0.0 {
            if self.num == 0.0 { 0.0 } else { f64::INFINITY }
        } else {
            (self.num / self.den).sqrt()
        }
    }
}

/// Per 4-bit block: `Σ x²`, `Σ x·t`, `Σ t²` with `t` the code's table value. The error for any block scale
/// `a` is then `Σx² − 2a·Σxt + a²·Σt²`, so it can be formed once the final (double-quantized) scales are
/// known, without keeping the block.
pub type BlockMoments = [f32; 3];

/// Values per rayon task (a few hundred KiB of input).
const TASK_VALUES: usize = 1 << 16;

/// Exact widening of a run of values into a reusable f32 buffer, with `half`'s SIMD conversions (F16C
/// where the CPU has it) instead of one dispatched call per value.
pub trait Widen: Float {
    fn widen_into(src: &[Self], dst: &mut Vec<f32>);
}

impl Widen for f32 {
    fn widen_into(src: &[f32], dst: &mut Vec<f32>) {
        dst.clear();
        dst.extend_from_slice(src);
    }
}

impl Widen for half::f16 {
    fn widen_into(src: &[half::f16], dst: &mut Vec<f32>) {
        dst.resize(src.len(), 0.0);
        src.convert_to_f32_slice(dst);
    }
}

impl Widen for half::bf16 {
    fn widen_into(src: &[half::bf16], dst: &mut Vec<f32>) {
        dst.resize(src.len(), 0.0);
        src.convert_to_f32_slice(dst);
    }
}

/// The moments of every block of `x`, coded as `packed` (bitsandbytes' nibble order). The codes' table
/// values are expanded with the CPU's SIMD dequantizer (a scale of 1 gives the table values exactly), then
/// the three sums run over plain f32 slices, eight lanes at a time.
pub fn fourbit_moments<T: Widen>(
    x: &[T],
    packed: &[u8],
    quant_type: FourBitType,
    blocksize: usize,
) -> Vec<BlockMoments> {
    let table = quant_type.dequant_table();
    let per_task = TASK_VALUES.div_ceil(blocksize) * blocksize;
    let ones = vec![1.0f32; per_task / blocksize];
    let isa = crate::backend::cpu::fast::isa();
    let parts: Vec<Vec<BlockMoments>> = x
        .par_chunks(per_task)
        .zip(packed.par_chunks(per_task / 2))
        // Buffers reused across a thread's tasks: no allocation (and zeroing) per task.
        .map_init(
            || (Vec::new(), Vec::new()),
            |(xb, tb), (xs, ps)| {
                T::widen_into(xs, xb);
                tb.resize(xs.len(), 0.0);
                let nb = xs.len().div_ceil(blocksize);
                dequant_span(ps, &ones[..nb], table, blocksize, 0, tb, isa);
                xb.chunks(blocksize)
                    .zip(tb.chunks(blocksize))
                    .map(|(x, t)| block_moments(x, t))
                    .collect()
            },
        )
        .collect();
    parts.concat()
}

fn block_moments(x: &[f32], t: &[f32]) -> BlockMoments {
    // Eight independent lanes per sum: vectorizes, and is not bound by add latency.
    let (mut xx, mut xt, mut tt) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
    let (xc, tc) = (x.chunks_exact(8), t.chunks_exact(8));
    let (xr, tr) = (xc.remainder(), tc.remainder());
    for (a, b) in xc.zip(tc) {
        for l in 0..8 {
            xx[l] += a[l] * a[l];
            xt[l] += a[l] * b[l];
            tt[l] += b[l] * b[l];
        }
    }
    for (l, (&a, &b)) in xr.iter().zip(tr).enumerate() {
        xx[l] += a * a;
        xt[l] += a * b;
        tt[l] += b * b;
    }
    let sum = |v: [f32; 8]| v.iter().sum::<f32>();
    [sum(xx), sum(xt), sum(tt)]
}

/// The error of blocks with moments `m` dequantized with scales `absmax`.
pub fn fourbit_error(m: &[BlockMoments], absmax: &[f32]) -> ErrorSums {
    m.par_iter()
        .zip(absmax.par_iter())
        .map(|(&[xx, xt, tt], &a)| {
            let (xx, xt, tt, a) = (xx as f64, xt as f64, tt as f64, a as f64);
            ErrorSums {
                // Rounding can push an exact reproduction a hair below zero.
                num: (xx - 2.0 * a * xt + a * a * tt).max(0.0),
                den: xx,
            }
        })
        .reduce(ErrorSums::default, ErrorSums::add)
}

/// LLM.int8() rows: `w' = q · SCB / 127` (the dequantize kernel's product order).
pub fn int8_error<T: Widen>(x: &[T], q: &[i8], scb: &[f32], cols: usize) -> ErrorSums {
    const INV_127: f32 = 1.0 / 127.0;
    let cols = cols.max(1);
    x.par_chunks(cols)
        .zip(q.par_chunks(cols))
        .zip(scb.par_iter())
        .map_init(Vec::new, |buf, ((xr, qr), &s)| {
            T::widen_into(xr, buf);
            let (mut num, mut den) = ([0.0f32; 4], [0.0f32; 4]);
            for (k, (&v, &qv)) in buf.iter().zip(qr).enumerate() {
                let d = v - qv as f32 * s * INV_127;
                num[k & 3] += d * d;
                den[k & 3] += v * v;
            }
            let sum = |a: [f32; 4]| (a[0] as f64 + a[1] as f64) + (a[2] as f64 + a[3] as f64);
            ErrorSums {
                num: sum(num),
                den: sum(den),
            }
        })
        .reduce(ErrorSums::default, ErrorSums::add)
}

/// BitNet: `w' = t / weight_scale` (the weight BitLinear applies), `stored_scale` as written to the file.
pub fn ternary_error(
    w: Floats,
    packed: &[u8],
    rows: usize,
    cols: usize,
    stored_scale: f32,
) -> ErrorSums {
    fn rows_err<T: Float>(
        w: &[T],
        packed: &[u8],
        rows: usize,
        cols: usize,
        scale: f32,
    ) -> ErrorSums {
        let r_rows = crate::format::ternary::packed_rows(rows);
        (0..rows)
            .into_par_iter()
            .map(|row| {
                let (mut num, mut den) = (0.0f64, 0.0f64);
                for (c, v) in w[row * cols..(row + 1) * cols].iter().enumerate() {
                    let v = v.to_f32();
                    let t = unpack_value(packed, r_rows, cols, row, c) as f32 / scale;
                    let d = (v - t) as f64;
                    num += d * d;
                    den += (v as f64) * (v as f64);
                }
                ErrorSums { num, den }
            })
            .reduce(ErrorSums::default, ErrorSums::add)
    }
    match w {
        Floats::F32(s) => rows_err(s, packed, rows, cols, stored_scale),
        Floats::F16(s) => rows_err(s, packed, rows, cols, stored_scale),
        Floats::BF16(s) => rows_err(s, packed, rows, cols, stored_scale),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::layout::rel_error;

    #[test]
    fn block_moments_give_the_dequantized_error() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let q = crate::Device::cpu()
            .quantize_4bit(
                &crate::tensor::Tensor::f32(vec![1000], x.clone()).unwrap(),
                FourBitType::Nf4,
                64,
                false,
            )
            .unwrap();
        let deq = crate::Device::cpu().dequantize_4bit(&q).unwrap();
        let want = rel_error(Floats::F32(&x), deq.floats("t").unwrap());
        let m = fourbit_moments(&x, &q.packed, FourBitType::Nf4, 64);
        let got = fourbit_error(&m, &q.state.absmax.to_f32()).rel_error();
        assert!((got - want).abs() <= 1e-4 * want, "{got} vs {want}");
    }
}
