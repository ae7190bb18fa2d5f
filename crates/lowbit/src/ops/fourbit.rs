//! NF4 / FP4 ops: quantize (optionally with double quantization), dequantize, fused GEMV and matmul.

use super::{bias_floats, rows_cols, with_last_dim};
use crate::backend::Packed4bit;
use crate::format::blocksize::num_blocks;
use crate::format::torch_mean::torch_cuda_mean_f32;
use crate::format::{
    Absmax, BLOCKSIZES_4BIT, FourBitType, NESTED_BLOCKSIZE, QuantState, dynamic_map,
};
use crate::runtime::{Device, MemoryEstimate, OpKind, OpParams};
use crate::tensor::{DType, Floats, Tensor};
use crate::{Error, Result};

/// A packed 4-bit tensor and its state, as bitsandbytes' `Params4bit` holds them.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized4bit {
    /// `ceil(n/2)` bytes; bitsandbytes stores them with shape `[ceil(n/2), 1]`.
    pub packed: Vec<u8>,
    pub state: QuantState,
}

impl Quantized4bit {
    /// `[out_features, in_features]` of a quantized linear weight.
    pub fn linear_dims(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.state.shape[..] {
            [rows, cols] => Ok((rows, cols)),
            _ => Err(Error::shape(
                op,
                format!("weight must be 2-D [out, in], got {:?}", self.state.shape),
            )),
        }
    }

    /// The rows of `parts` as one weight: 2-D weights of one quant type, block size and width, each a whole
    /// number of blocks and bytes (`None` otherwise). Codes are concatenated and the block scales expanded to
    /// the float32 values each part dequantizes with, so every row dequantizes and multiplies exactly as it
    /// does in its own part.
    pub fn concat_rows(parts: &[&Quantized4bit]) -> Option<Quantized4bit> {
        let first = parts.first()?;
        let cols = first.linear_dims("concat").ok()?.1;
        let (mut packed, mut absmax, mut rows) = (Vec::new(), Vec::new(), 0);
        for p in parts {
            let (r, c) = p.linear_dims("concat").ok()?;
            let n = r * c;
            let s = &p.state;
            if c != cols
                || s.quant_type != first.state.quant_type
                || s.blocksize != first.state.blocksize
                || !n.is_multiple_of(s.blocksize)
                || !n.is_multiple_of(2)
                || p.packed.len() != n / 2
            {
                return None;
            }
            packed.extend_from_slice(&p.packed);
            absmax.extend_from_slice(&s.absmax.to_f32());
            rows += r;
        }
        Some(Quantized4bit {
            packed,
            state: QuantState {
                quant_type: first.state.quant_type,
                blocksize: first.state.blocksize,
                dtype: first.state.dtype,
                shape: vec![rows, cols],
                absmax: Absmax::Plain(absmax),
            },
        })
    }
}

impl Device {
    /// `bitsandbytes.functional.quantize_4bit` (CUDA semantics). `double_quant` = `compress_statistics`.
    pub fn quantize_4bit(
        &self,
        x: &Tensor,
        quant_type: FourBitType,
        blocksize: usize,
        double_quant: bool,
    ) -> Result<Quantized4bit> {
        const OP: &str = "quantize_4bit";
        let xf = x.floats(OP)?;
        if !BLOCKSIZES_4BIT.contains(&blocksize) {
            return Err(Error::BlockSize {
                op: OP,
                got: blocksize,
                allowed: BLOCKSIZES_4BIT,
            });
        }
        // Split by whole blocks: each has an even number of values, so packed bytes concatenate.
        let n = xf.len();
        let (bs, es) = (blocksize as u64, x.dtype().size_in_bytes() as u64);
        let params = OpParams::new(OpKind::Quantize4bit)
            .dtype(x.dtype())
            .blocksize(blocksize)
            .quant_type(quant_type)
            .memory(
                MemoryEstimate::new(num_blocks(n, blocksize))
                    .buffer(0, bs * es)
                    .buffer(0, bs / 2)
                    .buffer(0, 4),
            );
        let out = self.run_split(&params, |b, r| {
            let (lo, hi) = (r.start * blocksize, (r.end * blocksize).min(n));
            b.quantize_4bit(xf.slice(lo..hi), quant_type, blocksize)
        })?;
        let absmax = if double_quant {
            self.double_quantize(out.absmax)?
        } else {
            Absmax::Plain(out.absmax)
        };
        Ok(Quantized4bit {
            packed: out.codes,
            state: QuantState {
                quant_type,
                blocksize,
                dtype: x.dtype(),
                shape: x.shape().to_vec(),
                absmax,
            },
        })
    }

    /// Double quantization of a float32 absmax vector (FORMATS.md §4). The streaming checkpoint writer
    /// calls it once per tensor on the absmax of all its chunks.
    pub(crate) fn double_quantize(&self, absmax: Vec<f32>) -> Result<Absmax> {
        let offset = torch_cuda_mean_f32(&absmax);
        let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let code = dynamic_map(true);
        let q = self.run(OpKind::QuantizeBlockwise, |b| {
            b.quantize_blockwise(Floats::F32(&centered), code, NESTED_BLOCKSIZE)
        })?;
        Ok(Absmax::Nested {
            absmax_q: q.codes,
            nested_absmax: q.absmax,
            nested_code: code.values.to_vec(),
            offset,
        })
    }

    /// Dequantizes to `state.dtype` and `state.shape`, as bitsandbytes does.
    pub fn dequantize_4bit(&self, q: &Quantized4bit) -> Result<Tensor> {
        self.dequantize_4bit_as(q, q.state.dtype)
    }

    /// Dequantizes to `dtype` (f32 gives the kernels' exact `code * absmax` products).
    pub fn dequantize_4bit_as(&self, q: &Quantized4bit, dtype: DType) -> Result<Tensor> {
        q.state.validate(q.packed.len())?;
        if !dtype.is_float() {
            let got = dtype.to_string();
            return Err(Error::DType {
                op: "dequantize_4bit",
                got,
                expected: "f32, f16, bf16",
            });
        }
        let s = &q.state;
        let absmax = s.absmax.to_f32();
        let (n, blocksize) = (s.numel(), s.blocksize);
        let bs = blocksize as u64;
        let params = OpParams::new(OpKind::Dequantize4bit)
            .dtype(dtype)
            .blocksize(blocksize)
            .quant_type(s.quant_type)
            .memory(
                MemoryEstimate::new(num_blocks(n, blocksize))
                    .buffer(0, bs / 2)
                    .buffer(0, 4)
                    .buffer(0, bs * dtype.size_in_bytes() as u64),
            );
        let out = self.run_split(&params, |b, r| {
            let (lo, hi) = (r.start * blocksize, (r.end * blocksize).min(n));
            b.dequantize_4bit(
                &q.packed[lo / 2..hi.div_ceil(2)],
                &absmax[r],
                s.quant_type,
                blocksize,
                hi - lo,
                dtype,
            )
        })?;
        Tensor::from_floats(s.shape.clone(), out)
    }

    /// `y = x @ dequant(W)^T + bias` for x `[..., in]`: the fused GEMV for one row, tiled matmul otherwise.
    pub fn matmul_4bit(
        &self,
        x: &Tensor,
        w: &Quantized4bit,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        const OP: &str = "matmul_4bit";
        w.state.validate(w.packed.len())?;
        let (rows, cols) = w.linear_dims(OP)?;
        let xf = x.floats(OP)?;
        let (batch, k) = rows_cols(OP, x)?;
        if k != cols {
            return Err(Error::shape(
                OP,
                format!("x has {k} features but the weight expects {cols}"),
            ));
        }
        let bias = bias_floats(OP, bias, rows)?;
        let absmax = w.state.absmax.to_f32();
        let pw = Packed4bit {
            packed: &w.packed,
            absmax: &absmax,
            quant_type: w.state.quant_type,
            blocksize: w.state.blocksize,
            rows,
            cols,
        };
        let es = x.dtype().size_in_bytes() as u64;
        let w_bytes = (w.packed.len() + 4 * absmax.len()) as u64;
        let y = if batch == 1 {
            // Split by groups of output rows that start on a block boundary, so each group's packed bytes
            // and absmax are contiguous slices of W's.
            let bsz = w.state.blocksize;
            let group = bsz / gcd(cols, bsz);
            let params = OpParams::new(OpKind::Gemv4bit)
                .dtype(x.dtype())
                .blocksize(bsz)
                .quant_type(w.state.quant_type)
                .memory(
                    MemoryEstimate::new(rows.div_ceil(group))
                        .buffer(cols as u64 * es, 0)
                        .buffer(
                            0,
                            (group * cols / 2) as u64 + 4 * (group * cols / bsz) as u64,
                        )
                        .buffer(0, 2 * group as u64 * es),
                );
            self.run_split(&params, |b, r| {
                let (r0, r1) = (r.start * group, (r.end * group).min(rows));
                let part = Packed4bit {
                    packed: &pw.packed[r0 * cols / 2..(r1 * cols).div_ceil(2)],
                    absmax: &pw.absmax[r0 * cols / bsz..(r1 * cols).div_ceil(bsz)],
                    rows: r1 - r0,
                    ..pw
                };
                b.gemv_4bit(xf, part, bias.map(|v| v.slice(r0..r1)))
            })?
        } else {
            let params = OpParams::new(OpKind::Matmul4bit)
                .dtype(x.dtype())
                .blocksize(w.state.blocksize)
                .quant_type(w.state.quant_type)
                .memory(
                    MemoryEstimate::new(batch)
                        .buffer(w_bytes, 0)
                        .buffer(0, cols as u64 * es)
                        .buffer(0, rows as u64 * es)
                        .buffer(rows as u64 * es, 0),
                );
            self.run_split(&params, |b, r| {
                let xs = xf.slice(r.start * cols..r.end * cols);
                b.matmul_4bit(xs, r.len(), pw, bias)
            })?
        };
        Tensor::from_floats(with_last_dim(x.shape(), rows), y)
    }

    /// The batch-1 fused GEMV; x must hold exactly one row.
    pub fn gemv_4bit(
        &self,
        x: &Tensor,
        w: &Quantized4bit,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (batch, _) = rows_cols("gemv_4bit", x)?;
        if batch != 1 {
            return Err(Error::shape(
                "gemv_4bit",
                format!("x must be one row, got {batch}; use matmul_4bit"),
            ));
        }
        self.matmul_4bit(x, w, bias)
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}
