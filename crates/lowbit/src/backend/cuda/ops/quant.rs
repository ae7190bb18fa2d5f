//! Blockwise 8-bit and NF4/FP4 quantization and dequantization (kernels/quant.cu).

use super::{Arg, Buf, Cuda, CudaStorage, THREADS, blocks, dt, fourbit_index, p, suffix, u32_of};
use crate::Result;
use crate::format::FourBitType;
use crate::tensor::DType;

impl Cuda {
    /// 8-bit blockwise codes and f32 absmax of `n` values of `x`.
    pub fn quantize_blockwise_dev(
        &self,
        x: &CudaStorage,
        dtype: DType,
        n: usize,
        blocksize: usize,
        midpoints: &CudaStorage,
    ) -> Result<(Buf, Buf)> {
        let nb = n.div_ceil(blocksize);
        let (codes, absmax) = (
            self.alloc("quantize_blockwise", n)?,
            self.alloc("quantize_blockwise", nb * 4)?,
        );
        if let Some((grid, threads)) = vector_quant_launch(x, n, blocksize, 64) {
            self.launch(
                &format!("quantize_blockwise_x8_{}", suffix(dtype)),
                (grid, 1),
                threads,
                &[
                    p(x),
                    Arg::U64((n / 8) as u64),
                    Arg::U32(blocksize as u32),
                    p(midpoints),
                    p(&codes),
                    p(&absmax),
                ],
            )?;
            return Ok((codes, absmax));
        }
        let threads = (blocksize as u32).clamp(32, THREADS);
        self.launch(
            &format!("quantize_blockwise_{}", suffix(dtype)),
            (u32_of("quantize_blockwise", nb)?, 1),
            threads,
            &[
                p(x),
                Arg::U64(n as u64),
                Arg::U32(blocksize as u32),
                p(midpoints),
                p(&codes),
                p(&absmax),
            ],
        )?;
        Ok((codes, absmax))
    }

    /// Packed NF4/FP4 nibbles and f32 absmax of `n` values of `x`.
    pub fn quantize_4bit_dev(
        &self,
        x: &CudaStorage,
        dtype: DType,
        n: usize,
        quant_type: FourBitType,
        blocksize: usize,
    ) -> Result<(Buf, Buf)> {
        let nb = n.div_ceil(blocksize);
        let packed = self.alloc("quantize_4bit", n.div_ceil(2))?;
        let absmax = self.alloc("quantize_4bit", nb * 4)?;
        let q = fourbit_index(quant_type);
        let tables = [
            Arg::Ptr(self.addr(&self.tables.thresholds[q])),
            Arg::Ptr(self.addr(&self.tables.fp4_bits)),
            p(&packed),
            p(&absmax),
        ];
        let (name, grid, threads, count) = match vector_quant_launch(x, n, blocksize, 32) {
            Some((grid, threads)) => ("quantize_4bit_x8", grid, threads, n / 8),
            None => {
                let threads = (blocksize as u32 / 2).clamp(32, THREADS);
                ("quantize_4bit", u32_of("quantize_4bit", nb)?, threads, n)
            }
        };
        let mut args = vec![
            p(x),
            Arg::U64(count as u64),
            Arg::U32(blocksize as u32),
            Arg::I32(q as i32),
        ];
        args.extend(tables);
        self.launch(
            &format!("{name}_{}", suffix(dtype)),
            (grid, 1),
            threads,
            &args,
        )?;
        Ok((packed, absmax))
    }

    /// `n` f32 values `table[code] * absmax[i / blocksize]` (`bits` 8: one code per byte; 4: nibbles).
    #[allow(clippy::too_many_arguments)]
    pub fn dequantize_dev(
        &self,
        q: &CudaStorage,
        absmax: &CudaStorage,
        table: u64,
        bits: u32,
        n: usize,
        blocksize: usize,
        out_dtype: DType,
    ) -> Result<Buf> {
        let out = self.alloc("dequantize", n * out_dtype.size_in_bytes())?;
        if bits == 8 && n.is_multiple_of(8) && blocksize.is_power_of_two() && blocksize >= 8 {
            let n8 = n / 8;
            self.launch(
                "dequantize_8bit_x8",
                (blocks(n8), 1),
                THREADS,
                &[
                    p(q),
                    p(absmax),
                    Arg::Ptr(table),
                    Arg::U64(n8 as u64),
                    Arg::U32((blocksize / 8).trailing_zeros()),
                    p(&out),
                    dt(out_dtype),
                ],
            )?;
            return Ok(out);
        }
        if bits == 4 && n.is_multiple_of(8) && blocksize.is_multiple_of(8) {
            let n8 = n / 8;
            self.launch(
                "dequantize_4bit_x8",
                (blocks(n8), 1),
                THREADS,
                &[
                    p(q),
                    p(absmax),
                    Arg::Ptr(table),
                    Arg::U64(n8 as u64),
                    Arg::U32(blocksize as u32),
                    p(&out),
                    dt(out_dtype),
                ],
            )?;
            return Ok(out);
        }
        self.launch(
            "dequantize",
            (blocks(n), 1),
            THREADS,
            &[
                p(q),
                p(absmax),
                Arg::Ptr(table),
                Arg::U32(bits),
                Arg::U64(n as u64),
                Arg::U32(blocksize as u32),
                p(&out),
                dt(out_dtype),
            ],
        )?;
        Ok(out)
    }

    pub fn fourbit_table(&self, t: FourBitType) -> u64 {
        self.addr(&self.tables.dequant[fourbit_index(t)])
    }
}

/// Grid and block size of the vector quantizers (`*_x8` in kernels/quant.cu: eight values per thread,
/// `blocksize / 8` threads per quantization block), or `None` where they do not apply: `n` a multiple of 8,
/// 16-byte aligned input, a power-of-two blocksize from `min_blocksize` to 4096.
fn vector_quant_launch(
    x: &CudaStorage,
    n: usize,
    blocksize: usize,
    min_blocksize: usize,
) -> Option<(u32, u32)> {
    let fits = n.is_multiple_of(8)
        && x.addr().is_multiple_of(16)
        && blocksize.is_power_of_two()
        && (min_blocksize..=4096).contains(&blocksize);
    let threads = (blocksize / 8).max(THREADS as usize);
    fits.then(|| {
        let grid = (n / 8).div_ceil(threads).clamp(1, 1 << 20) as u32;
        (grid, threads as u32)
    })
}
