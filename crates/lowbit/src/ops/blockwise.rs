//! 8-bit blockwise quantization ops.

use crate::format::blocksize::num_blocks;
use crate::format::{BLOCKSIZES_8BIT, Codebook8, dynamic_map};
use crate::runtime::{Device, MemoryEstimate, OpKind, OpParams};
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// An 8-bit blockwise-quantized tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized8bit {
    pub codes: Vec<u8>,
    pub absmax: Vec<f32>,
    pub blocksize: usize,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub code: Codebook8,
}

fn check_blocksize(op: &'static str, blocksize: usize) -> Result<()> {
    if BLOCKSIZES_8BIT.contains(&blocksize) {
        Ok(())
    } else {
        Err(Error::BlockSize {
            op,
            got: blocksize,
            allowed: BLOCKSIZES_8BIT,
        })
    }
}

impl Device {
    /// `quantize_blockwise` with the signed dynamic code unless `code` is given.
    pub fn quantize_blockwise(
        &self,
        x: &Tensor,
        blocksize: usize,
        code: Option<&Codebook8>,
    ) -> Result<Quantized8bit> {
        const OP: &str = "quantize_blockwise";
        let xf = x.floats(OP)?;
        check_blocksize(OP, blocksize)?;
        let code = code.unwrap_or_else(|| dynamic_map(true));
        let n = xf.len();
        let bs = blocksize as u64;
        let params = OpParams::new(OpKind::QuantizeBlockwise)
            .dtype(x.dtype())
            .blocksize(blocksize)
            .memory(
                MemoryEstimate::new(num_blocks(n, blocksize))
                    .buffer(0, bs * x.dtype().size_in_bytes() as u64)
                    .buffer(0, bs)
                    .buffer(0, 4)
                    .buffer(1024, 0),
            );
        let out = self.run_split(&params, |b, r| {
            let (lo, hi) = (r.start * blocksize, (r.end * blocksize).min(n));
            b.quantize_blockwise(xf.slice(lo..hi), code, blocksize)
        })?;
        Ok(Quantized8bit {
            codes: out.codes,
            absmax: out.absmax,
            blocksize,
            shape: x.shape().to_vec(),
            dtype: x.dtype(),
            code: code.clone(),
        })
    }

    /// Dequantizes to the original dtype (or `dtype` if given).
    pub fn dequantize_blockwise(&self, q: &Quantized8bit, dtype: Option<DType>) -> Result<Tensor> {
        const OP: &str = "dequantize_blockwise";
        check_blocksize(OP, q.blocksize)?;
        let n: usize = q.shape.iter().product();
        super::check_len(OP, "codes", q.codes.len(), n)?;
        super::check_len(OP, "absmax", q.absmax.len(), num_blocks(n, q.blocksize))?;
        let dtype = dtype.unwrap_or(q.dtype);
        if !dtype.is_float() {
            return Err(Error::DType {
                op: OP,
                got: dtype.to_string(),
                expected: "f32, f16, bf16",
            });
        }
        let (blocksize, bs) = (q.blocksize, q.blocksize as u64);
        let params = OpParams::new(OpKind::DequantizeBlockwise)
            .dtype(dtype)
            .blocksize(blocksize)
            .memory(
                MemoryEstimate::new(num_blocks(n, blocksize))
                    .buffer(0, bs)
                    .buffer(0, 4)
                    .buffer(1024, 0)
                    .buffer(0, bs * dtype.size_in_bytes() as u64),
            );
        let out = self.run_split(&params, |b, r| {
            let (lo, hi) = (r.start * blocksize, (r.end * blocksize).min(n));
            b.dequantize_blockwise(&q.codes[lo..hi], &q.absmax[r], &q.code, blocksize, dtype)
        })?;
        Tensor::from_floats(q.shape.clone(), out)
    }
}
