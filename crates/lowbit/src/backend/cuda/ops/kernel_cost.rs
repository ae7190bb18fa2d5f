//! GPU time of the quantizers, the dequantizers and the int8 product on device allocations (`cuda_bench
//! --kernels` prints it beside the copy bandwidth): the host API's figures include the copies to and from
//! the device, these do not.

use super::super::CudaBackend;
use super::gpu_seconds_per_call;
use crate::Result;
use crate::format::FourBitType;
use crate::format::codebook::dynamic_map;
use crate::synth::{SplitMix64, normal};
use crate::tensor::DType;

/// One timed kernel: `op`, what it ran on (`detail`), mean GPU seconds per call and bytes it moves.
#[derive(Clone, Debug)]
pub struct KernelCost {
    pub op: &'static str,
    pub detail: String,
    pub seconds: f64,
    pub bytes: usize,
}

impl CudaBackend {
    /// Mean GPU seconds per call (CUDA events around `iters` queued calls, after two warm-up calls) of
    /// each quantizer and dequantizer on `n` values, and of the int8 product at 1-16, 256 and 4096 rows.
    #[doc(hidden)]
    pub fn kernel_costs(&self, n: usize, iters: usize) -> Result<Vec<KernelCost>> {
        let c = &self.cuda;
        let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
            f()?;
            f()?;
            gpu_seconds_per_call(c, iters, f)
        };
        let mut out = Vec::new();
        let mut note = |op, detail: String, seconds, bytes| {
            out.push(KernelCost {
                op,
                detail,
                seconds,
                bytes,
            })
        };
        let nf4 = FourBitType::Nf4;
        for dtype in [DType::F32, DType::F16] {
            let x = c.upload_bytes("bench", normal(vec![n], 1.0, 3, dtype).data().as_bytes())?;
            let size = dtype.size_in_bytes();
            let t = time(&mut || c.quantize_4bit_dev(&x, dtype, n, nf4, 64).map(drop))?;
            note(
                "quantize_4bit",
                format!("nf4 bs64 {dtype}"),
                t,
                n * size + n / 2 + n / 16,
            );
            let (packed, absmax) = c.quantize_4bit_dev(&x, dtype, n, nf4, 64)?;
            let table = c.fourbit_table(nf4);
            let t = time(&mut || {
                c.dequantize_dev(&packed, &absmax, table, 4, n, 64, dtype)
                    .map(drop)
            })?;
            note(
                "dequantize_4bit",
                format!("nf4 bs64 {dtype}"),
                t,
                n * size + n / 2 + n / 16,
            );
            let code = dynamic_map(true);
            let mids = c.upload_f32("bench", &code.midpoints)?;
            let values = c.upload_f32("bench", &code.values)?;
            for bs in [256, 4096] {
                let t = time(&mut || c.quantize_blockwise_dev(&x, dtype, n, bs, &mids).map(drop))?;
                let bytes = n * size + n + n / bs * 4;
                note("quantize_blockwise", format!("bs{bs} {dtype}"), t, bytes);
                let (codes, absmax) = c.quantize_blockwise_dev(&x, dtype, n, bs, &mids)?;
                let t = time(&mut || {
                    c.dequantize_dev(&codes, &absmax, values.addr(), 8, n, bs, dtype)
                        .map(drop)
                })?;
                note("dequantize_blockwise", format!("bs{bs} {dtype}"), t, bytes);
            }
        }
        for (rows, cols) in [(4096, 4096), (4096, 14336)] {
            // Uniform int8 codes (their values do not change the time).
            let int8 = |len: usize, seed: u64| -> Vec<u8> {
                let mut r = SplitMix64::new(seed);
                (0..len)
                    .map(|_| (r.next_u64() % 255) as u8 ^ 0x80)
                    .collect()
            };
            let b = c.upload_bytes("bench", &int8(rows * cols, 5))?;
            for m in [1, 2, 4, 8, 16, 256, 4096] {
                let a = c.upload_bytes("bench", &int8(m * cols, 6))?;
                let t = time(&mut || c.int8_gemm_dev(&a, &b, m, rows, cols).map(drop))?;
                let bytes = (m + rows) * cols + m * rows * 4;
                note(
                    "int8_linear_matmul",
                    format!("{m}x{cols} @ {rows}x{cols}^T"),
                    t,
                    bytes,
                );
            }
        }
        Ok(out)
    }
}
