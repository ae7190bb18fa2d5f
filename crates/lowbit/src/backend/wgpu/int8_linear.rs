//! LLM.int8() linear on device tensors, composed from the int8 kernels and queued without a read-back: x
//! rounded to f16 by the cast kernel, outlier columns flagged and listed, int8 row quantization, the exact
//! int8 GEMM, then one kernel for `int8_mm_dequant` (an exact fma on bit patterns) plus the outlier columns'
//! float product, narrowed to f16.

use super::WgpuBackend;
use super::int_gemv_rows::encode_int8_matmul;
use super::kernels::{
    Int8OutBuffers, RowSpec, check_binding, encode_int8_linear_out, encode_row_quant,
    encode_row_scales, groups, u32_len,
};
use super::model_ops::encode_cast;
use super::shaders::Shader;
use super::tensor::GpuTensor;
use crate::Result;
use crate::device_tensor::DeviceTensor;
use crate::tensor::{DType, with_last_dim};

/// The operands of one `Op::Linear8bit`, validated by the op layer.
pub(crate) struct Int8LinearArgs<'a> {
    pub x: &'a DeviceTensor,
    pub weight: &'a DeviceTensor,
    pub scb: &'a DeviceTensor,
    pub bias: Option<&'a DeviceTensor>,
    pub threshold: f32,
    pub rows: usize,
    pub cols: usize,
}

impl WgpuBackend {
    pub(crate) fn linear_8bit_on_device(&self, a: &Int8LinearArgs) -> Result<DeviceTensor> {
        const OP: &str = "linear8bitlt";
        let gpu = self.gpu();
        // The op layer checked that x's last dimension is the weight's column count.
        let (m, k, n) = (a.x.rows_cols().0, a.cols, a.rows);
        let shape = with_last_dim(a.x.shape(), n);
        let total = m * n;
        if total == 0 {
            return self.wrap_owned(GpuTensor {
                buffer: gpu.pooled(0)?,
                shape,
                dtype: DType::F16,
            });
        }
        u32_len(OP, (m * k).max(n * k).max(total))?;
        check_binding(gpu, OP, (m * k * 4).max(n * k).max(total * 4))?;
        let x = self.view(OP, a.x)?;
        let weight = self.view(OP, a.weight)?;
        let scb = self.view(OP, a.scb)?;
        let bias = match a.bias {
            Some(b) => Some(self.view(OP, b)?),
            None => None,
        };
        let outliers = a.threshold > 0.0;
        // Pooled temporaries, each written in full before it is read (flags and the list only with a
        // threshold, when they are also the only readers); back to the pool once recorded.
        let x16 = gpu.pooled((m * k * 2) as u64)?;
        let x32 = gpu.pooled(if x.dtype == DType::BF16 { m * k * 4 } else { 0 } as u64)?;
        let flags = gpu.pooled((k * 4) as u64)?;
        let list = gpu.pooled(((k + 1) * 4) as u64)?;
        let absmax = gpu.pooled((m * 4) as u64)?;
        let scale = gpu.pooled((m * 4) as u64)?;
        let q = gpu.pooled((m * k) as u64)?;
        let c = gpu.pooled((total * 4) as u64)?;
        let y = gpu.pooled((total * 2) as u64)?;
        let spec = RowSpec {
            dtype: DType::F16,
            rows: m,
            cols: k,
            threshold: a.threshold,
            mode: 0,
        };
        gpu.submit(|enc| {
            // bitsandbytes computes the layer in f16: x rounded to nearest even, as the CPU's `to_f16`.
            let x16 = match x.dtype {
                DType::F16 => &x.buffer,
                DType::BF16 => {
                    encode_cast(gpu, enc, DType::BF16, DType::F32, m * k, &x.buffer, &x32)?;
                    encode_cast(gpu, enc, DType::F32, DType::F16, m * k, &x32, &x16)?;
                    &x16
                }
                _ => {
                    encode_cast(gpu, enc, DType::F32, DType::F16, m * k, &x.buffer, &x16)?;
                    &x16
                }
            };
            if outliers {
                let params = [m as u32, k as u32, a.threshold.to_bits(), 0, 0, 0, 0, 0];
                let bufs = [(1, x16), (2, &flags)];
                let shader = Shader::ColOutliers(DType::F16);
                gpu.encode(enc, &shader, params, &bufs, groups(k, 256), None)?;
                let params = [k as u32, 0, 0, 0, 0, 0, 0, 0];
                let bufs = [(1, &flags), (2, &list)];
                gpu.encode(
                    enc,
                    &Shader::Int8OutlierList,
                    params,
                    &bufs,
                    (1, 1, 1),
                    None,
                )?;
            }
            encode_row_scales(gpu, enc, spec, x16, &absmax, &scale)?;
            encode_row_quant(gpu, enc, spec, x16, &absmax, &scale, &flags, &q)?;
            encode_int8_matmul(gpu, enc, m, n, k, &q, &weight.buffer, &c)?;
            let bufs = Int8OutBuffers {
                c: &c,
                row_stats: &absmax,
                scb: &scb.buffer,
                bias: bias.as_ref().map(|b| &b.buffer),
                x16,
                weight: &weight.buffer,
                list: &list,
                y: &y,
            };
            encode_int8_linear_out(gpu, enc, m, n, k, outliers, &bufs)
        })?;
        // Recorded: the temporaries can serve later ops (pool.rs says why that is safe).
        for b in [x16, x32, flags, list, absmax, scale, q, c] {
            gpu.recycle(b);
        }
        self.wrap_owned(GpuTensor {
            buffer: y,
            shape,
            dtype: DType::F16,
        })
    }
}
