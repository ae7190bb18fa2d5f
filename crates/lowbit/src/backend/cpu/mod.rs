//! The CPU backend. `reference` is the executable spec: plain loops in the CUDA kernels' float32 operation
//! order, multi-threaded with rayon over independent blocks and rows. `fast` holds the SIMD kernels that
//! [`CpuBackend`] runs; [`ReferenceBackend`] runs the spec alone, for tests and comparisons.

pub mod device_ops;
pub mod fast;
pub mod host;
pub mod reference;
pub mod storage;

use super::{Backend, BackendKind, BlockCodes, Int8Rows, Packed4bit, PackedTernary};
use crate::Result;
use crate::capability::DeviceInfo;
use crate::format::{Codebook8, FourBitType};
use crate::tensor::{DType, FloatVec, Floats};
use crate::with_floats;
use fast::gemv_rows::{LinearPath, WeightKind, pick_linear_path};
use fast::{Isa, isa};
use half::f16;

/// The device-tensor seam of a host backend whose storage is host memory named `$id`: every op runs through
/// its own host-slice kernels (`device_ops`), which is also the runtime's CPU fallback.
macro_rules! host_device_tensors {
    ($id:expr, $kernels:expr) => {
        fn upload(&self, t: &crate::tensor::Tensor) -> Result<crate::device_tensor::DeviceTensor> {
            storage::host_tensor(t.clone(), $id)
        }
        fn download(
            &self,
            t: &crate::device_tensor::DeviceTensor,
        ) -> Result<crate::tensor::Tensor> {
            storage::to_host(t)
        }
        fn supports_op(
            &self,
            _op: &crate::capability::Op,
            _dtypes: &[DType],
        ) -> crate::capability::Support {
            crate::capability::Support::Yes
        }
        fn run_op(
            &self,
            op: &crate::capability::Op,
            inputs: &[&crate::device_tensor::DeviceTensor],
        ) -> Result<crate::device_tensor::DeviceTensor> {
            device_ops::run_on_host_storage(self, $id, $kernels, op, inputs)
        }
        fn write_rows(
            &self,
            dst: &crate::device_tensor::DeviceTensor,
            row: usize,
            src: &crate::device_tensor::DeviceTensor,
        ) -> Result<()> {
            storage::write_rows(dst, row, src)
        }
    };
}

/// The CPU backend (always available): the fast kernels, on the best instruction set this CPU has.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

/// The device id of [`ReferenceBackend`].
pub const REFERENCE_ID: &str = "cpu-reference";

/// The CPU reference kernels alone: the executable spec.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReferenceBackend;

impl CpuBackend {
    /// The reference kernels, for tests and benchmarks that compare against the spec.
    pub fn reference() -> ReferenceBackend {
        ReferenceBackend
    }

    /// The instruction set the fast kernels use on this CPU.
    pub fn isa() -> Isa {
        fast::isa()
    }
}

impl Backend for CpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }
    fn name(&self) -> String {
        "cpu".into()
    }

    host_device_tensors!(storage::CPU_ID, device_ops::ModelKernels::Fast);
    fn info(&self) -> DeviceInfo {
        host::cpu_info()
    }
    fn quantize_blockwise(
        &self,
        x: Floats,
        code: &Codebook8,
        blocksize: usize,
    ) -> Result<BlockCodes> {
        Ok(with_floats!(x, s => fast::quantize::quantize_blockwise(s, code, blocksize, isa())))
    }
    fn dequantize_blockwise(
        &self,
        q: &[u8],
        absmax: &[f32],
        code: &Codebook8,
        blocksize: usize,
        out_dtype: DType,
    ) -> Result<FloatVec> {
        Ok(fast::quantize::dequantize_blockwise(
            q,
            absmax,
            &code.values,
            blocksize,
            out_dtype,
        ))
    }
    fn quantize_4bit(
        &self,
        x: Floats,
        quant_type: FourBitType,
        blocksize: usize,
    ) -> Result<BlockCodes> {
        Ok(with_floats!(x, s => fast::quantize::quantize_4bit(s, quant_type, blocksize, isa())))
    }
    fn dequantize_4bit(
        &self,
        packed: &[u8],
        absmax: &[f32],
        quant_type: FourBitType,
        blocksize: usize,
        n: usize,
        out_dtype: DType,
    ) -> Result<FloatVec> {
        Ok(fast::quantize::dequantize_4bit(
            packed,
            absmax,
            quant_type,
            blocksize,
            n,
            out_dtype,
            isa(),
        ))
    }
    fn gemv_4bit(&self, x: Floats, w: Packed4bit, bias: Option<Floats>) -> Result<FloatVec> {
        Ok(fast::gemv4::gemv(x, w, bias, isa()))
    }
    fn matmul_4bit(
        &self,
        x: Floats,
        batch: usize,
        w: Packed4bit,
        bias: Option<Floats>,
    ) -> Result<FloatVec> {
        Ok(match pick_linear_path(WeightKind::FourBit, batch) {
            LinearPath::Gemv => fast::gemv4::gemv(x, w, bias, isa()),
            LinearPath::GemvRows => fast::gemv_rows::matmul_4bit(x, batch, w, bias, isa()),
            LinearPath::Gemm => fast::gemm::matmul_4bit(x, batch, w, bias, isa()),
        })
    }
    fn int8_vectorwise_quant(
        &self,
        a: Floats,
        rows: usize,
        cols: usize,
        threshold: f32,
    ) -> Result<Int8Rows> {
        ReferenceBackend.int8_vectorwise_quant(a, rows, cols, threshold)
    }
    fn int8_vectorwise_dequant(
        &self,
        q: &[i8],
        row_stats: &[f32],
        cols: usize,
    ) -> Result<Vec<f32>> {
        ReferenceBackend.int8_vectorwise_dequant(q, row_stats, cols)
    }
    fn int8_linear_matmul(
        &self,
        a: &[i8],
        b: &[i8],
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<i32>> {
        // A holds the activations: few rows take one pass over the weight B for all of them.
        Ok(match pick_linear_path(WeightKind::Int8, m) {
            LinearPath::Gemm => fast::int8::linear_matmul(a, b, m, n, k, isa()),
            _ => fast::gemv_rows::int8_linear_matmul(a, b, m, n, k, isa()),
        })
    }
    fn int8_mm_dequant(
        &self,
        c: &[i32],
        row_stats: &[f32],
        col_stats: &[f32],
        bias: Option<Floats>,
    ) -> Result<Vec<f16>> {
        ReferenceBackend.int8_mm_dequant(c, row_stats, col_stats, bias)
    }
    fn ternary_quantize(
        &self,
        w: Floats,
        rows: usize,
        cols: usize,
        weight_scale: f32,
    ) -> Result<Vec<u8>> {
        ReferenceBackend.ternary_quantize(w, rows, cols, weight_scale)
    }
    fn ternary_act_quant(
        &self,
        x: Floats,
        rows: usize,
        cols: usize,
    ) -> Result<(Vec<i8>, Vec<f32>)> {
        ReferenceBackend.ternary_act_quant(x, rows, cols)
    }
    fn ternary_matmul(
        &self,
        xq: &[i8],
        x_scale: &[f32],
        batch: usize,
        w: PackedTernary,
        bias: Option<Floats>,
    ) -> Result<Vec<f32>> {
        Ok(match pick_linear_path(WeightKind::Ternary, batch) {
            LinearPath::Gemm => fast::ternary::matmul(xq, x_scale, batch, w, bias, isa()),
            _ => fast::gemv_rows::ternary_matmul(xq, x_scale, batch, w, bias, isa()),
        })
    }
    fn matmul(
        &self,
        x: Floats,
        w: Floats,
        bias: Option<Floats>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<FloatVec> {
        Ok(fast::gemm::matmul(x, w, bias, m, n, k, isa()))
    }
    fn softmax(&self, x: Floats, cols: usize) -> Result<FloatVec> {
        ReferenceBackend.softmax(x, cols)
    }
    fn rms_norm(&self, x: Floats, weight: Floats, eps: f32, cols: usize) -> Result<FloatVec> {
        ReferenceBackend.rms_norm(x, weight, eps, cols)
    }
}

impl Backend for ReferenceBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }
    fn name(&self) -> String {
        REFERENCE_ID.into()
    }

    host_device_tensors!(REFERENCE_ID, device_ops::ModelKernels::Reference);
    fn quantize_blockwise(
        &self,
        x: Floats,
        code: &Codebook8,
        blocksize: usize,
    ) -> Result<BlockCodes> {
        Ok(with_floats!(x, s => reference::blockwise::quantize(s, code, blocksize)))
    }
    fn dequantize_blockwise(
        &self,
        q: &[u8],
        absmax: &[f32],
        code: &Codebook8,
        blocksize: usize,
        out_dtype: DType,
    ) -> Result<FloatVec> {
        Ok(reference::blockwise::dequantize(
            q,
            absmax,
            &code.values,
            blocksize,
            out_dtype,
        ))
    }
    fn quantize_4bit(
        &self,
        x: Floats,
        quant_type: FourBitType,
        blocksize: usize,
    ) -> Result<BlockCodes> {
        Ok(with_floats!(x, s => reference::fourbit::quantize(s, quant_type, blocksize)))
    }
    fn dequantize_4bit(
        &self,
        packed: &[u8],
        absmax: &[f32],
        quant_type: FourBitType,
        blocksize: usize,
        n: usize,
        out_dtype: DType,
    ) -> Result<FloatVec> {
        Ok(reference::fourbit::dequantize(
            packed, absmax, quant_type, blocksize, n, out_dtype,
        ))
    }
    fn gemv_4bit(&self, x: Floats, w: Packed4bit, bias: Option<Floats>) -> Result<FloatVec> {
        Ok(reference::fourbit::gemv(x, w, bias))
    }
    fn matmul_4bit(
        &self,
        x: Floats,
        batch: usize,
        w: Packed4bit,
        bias: Option<Floats>,
    ) -> Result<FloatVec> {
        Ok(reference::fourbit::matmul(x, batch, w, bias))
    }
    fn int8_vectorwise_quant(
        &self,
        a: Floats,
        rows: usize,
        cols: usize,
        threshold: f32,
    ) -> Result<Int8Rows> {
        Ok(reference::int8::vectorwise_quant(a, rows, cols, threshold))
    }
    fn int8_vectorwise_dequant(
        &self,
        q: &[i8],
        row_stats: &[f32],
        cols: usize,
    ) -> Result<Vec<f32>> {
        Ok(reference::int8::vectorwise_dequant(q, row_stats, cols))
    }
    fn int8_linear_matmul(
        &self,
        a: &[i8],
        b: &[i8],
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<i32>> {
        Ok(reference::int8::linear_matmul(a, b, m, n, k))
    }
    fn int8_mm_dequant(
        &self,
        c: &[i32],
        row_stats: &[f32],
        col_stats: &[f32],
        bias: Option<Floats>,
    ) -> Result<Vec<f16>> {
        Ok(reference::int8::mm_dequant(c, row_stats, col_stats, bias))
    }
    fn ternary_quantize(
        &self,
        w: Floats,
        rows: usize,
        cols: usize,
        weight_scale: f32,
    ) -> Result<Vec<u8>> {
        Ok(reference::ternary::quantize(w, rows, cols, weight_scale))
    }
    fn ternary_act_quant(
        &self,
        x: Floats,
        rows: usize,
        cols: usize,
    ) -> Result<(Vec<i8>, Vec<f32>)> {
        Ok(reference::ternary::act_quant(x, rows, cols))
    }
    fn ternary_matmul(
        &self,
        xq: &[i8],
        x_scale: &[f32],
        batch: usize,
        w: PackedTernary,
        bias: Option<Floats>,
    ) -> Result<Vec<f32>> {
        Ok(reference::ternary::matmul(xq, x_scale, batch, w, bias))
    }
    fn matmul(
        &self,
        x: Floats,
        w: Floats,
        bias: Option<Floats>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<FloatVec> {
        Ok(reference::dense::matmul(x, w, bias, m, n, k))
    }
    fn softmax(&self, x: Floats, cols: usize) -> Result<FloatVec> {
        Ok(reference::dense::softmax(x, cols))
    }
    fn rms_norm(&self, x: Floats, weight: Floats, eps: f32, cols: usize) -> Result<FloatVec> {
        Ok(reference::dense::rms_norm(x, weight, eps, cols))
    }
}
