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
        let (name, grid, threads, count) =
            self.quant_launch("quantize_blockwise", x, dtype, n, blocksize)?;
        self.launch(
            &name,
            (grid, 1),
            threads,
            &[
                p(x),
                Arg::U64(count as u64),
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
        let (name, grid, threads, count) =
            self.quant_launch("quantize_4bit", x, dtype, n, blocksize)?;
        self.launch(
            &name,
            (grid, 1),
            threads,
            &[
                p(x),
                Arg::U64(count as u64),
                Arg::U32(blocksize as u32),
                Arg::I32(q as i32),
                Arg::Ptr(self.addr(&self.tables.thresholds[q])),
                Arg::Ptr(self.addr(&self.tables.fp4_bits)),
                p(&packed),
                p(&absmax),
            ],
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
        // Eight values per thread where n allows: the 8-bit kernel takes log2(blocksize / 8) (a power of
        // two), the 4-bit one the blocksize.
        let vector = match bits {
            8 if blocksize.is_power_of_two() && blocksize >= 8 => {
                Some(("dequantize_8bit_x8", (blocksize / 8).trailing_zeros()))
            }
            4 if blocksize.is_multiple_of(8) => Some(("dequantize_4bit_x8", blocksize as u32)),
            _ => None,
        };
        if let Some((name, block_arg)) = vector.filter(|_| n.is_multiple_of(8)) {
            let n8 = n / 8;
            // Blocks stride over the output so that one sweep of the grid writes about 4 MiB: 4 blocks per
            // multiprocessor for f32, 8 for f16/bf16. Measured on an H200 (64 Mi values, both
            // dequantizers): f32 output at 4 per multiprocessor 89-91% of the copy rate, at 6-8 or one
            // thread per 8 values 61-68%; half-precision output best at 8 (89-94%).
            let per_sm = if out_dtype == DType::F32 { 4 } else { 8 };
            let grid = blocks(n8).min(per_sm * self.multiprocessors);
            self.launch(
                name,
                (grid, 1),
                THREADS,
                &[
                    p(q),
                    p(absmax),
                    Arg::Ptr(table),
                    Arg::U64(n8 as u64),
                    Arg::U32(block_arg),
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

    /// The launch of quantizer `base` (`quantize_blockwise` or `quantize_4bit`) on `n` values of `x`: kernel
    /// name, grid, threads per block and the length argument. The vector form (`{base}_x8_*` in
    /// kernels/quant.cu: eight values per thread, `blocksize / 8` threads per quantization block, the length in
    /// groups of 8) where it applies: `n` a multiple of 8, 16-byte aligned input, a power-of-two blocksize from
    /// 64 (8-bit) or 32 (4-bit) to 4096, one wave of persistent blocks. Otherwise the scalar kernel, one
    /// block per quantization block with a thread per value (8-bit) or per byte (4-bit), 32 to 256.
    fn quant_launch(
        &self,
        base: &'static str,
        x: &CudaStorage,
        dtype: DType,
        n: usize,
        blocksize: usize,
    ) -> Result<(String, u32, u32, usize)> {
        let (min_blocksize, per_thread) = if base == "quantize_4bit" {
            (32, 2)
        } else {
            (64, 1)
        };
        let scalar_threads = (blocksize as u32 / per_thread).clamp(32, THREADS);
        let vector = n.is_multiple_of(8)
            && x.addr().is_multiple_of(16)
            && blocksize.is_power_of_two()
            && (min_blocksize..=4096).contains(&blocksize);
        let dt = suffix(dtype);
        if vector {
            let threads = (blocksize / 8).max(THREADS as usize);
            let name = format!("{base}_x8_{dt}");
            // Persistent blocks: each fills its tables once and strides over the input.
            let grid = (n / 8)
                .div_ceil(threads)
                .min(self.resident_grid(&name, threads as u32)? as usize)
                .max(1) as u32;
            Ok((name, grid, threads as u32, n / 8))
        } else {
            let grid = u32_of(base, n.div_ceil(blocksize))?;
            Ok((format!("{base}_{dt}"), grid, scalar_threads, n))
        }
    }
}
