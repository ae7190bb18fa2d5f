//! The CUDA backend: NVIDIA GPUs through the driver API, with kernels compiled by NVRTC at run time for the
//! device's compute capability (sm_90 on Hopper). Both libraries are loaded dynamically, so the crate
//! builds and its tests run on machines without CUDA; there the device is listed as "CUDA unavailable:
//! <reason>". Device tensors are CUDA allocations; every op is queued on the device's one stream and the
//! host waits only when it reads a result.
//!
//! Host-slice methods upload their operands, run the same kernels as the device ops and read the result
//! back: one implementation per op (`ops/`), two entry points.

mod blas;
mod context;
mod device_ops;
mod ops;
mod steps;
mod storage;

pub use context::{FAMILIES, compile, family_of, source, unavailable_reason};
pub use ops::KernelCost;

/// Whether NVRTC, the runtime compiler the kernels need, can be loaded (no driver or GPU needed).
pub fn nvrtc_present() -> bool {
    // SAFETY: only probes whether the shared library can be opened.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}
pub use storage::CudaStorage;

use crate::Result;
use crate::backend::{Backend, BackendKind, BlockCodes, Int8Rows, Packed4bit, PackedTernary};
use crate::capability::{DeviceInfo, DeviceType, Op, StepArgs, StepKey, Support};
use crate::device_tensor::DeviceTensor;
use crate::format::{Codebook8, FourBitType};
use crate::tensor::{DType, FloatVec, Floats, Tensor};
use context::Cuda;
use half::f16;
use ops::{Bias, Buf, Weight4};
use std::sync::Arc;
use storage::floats_bytes;

/// One NVIDIA GPU.
#[derive(Clone)]
pub struct CudaBackend {
    cuda: Arc<Cuda>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBackend({})", self.cuda.id)
    }
}

impl CudaBackend {
    /// `src`'s bytes as rows of `dst` (validated by the op layer: same dtype and row length).
    fn row_copy<'a>(
        &'a self,
        dst: &'a DeviceTensor,
        src: &'a DeviceTensor,
    ) -> Result<storage::RowCopy<'a>> {
        Ok(storage::RowCopy {
            src: self.storage("copy_rows", src)?,
            dst: self.storage("copy_rows", dst)?,
            row_bytes: dst.rows_cols_first().1 * dst.dtype().size_in_bytes(),
            bytes: src.size_in_bytes(),
        })
    }

    /// Opens `cuda:{index}`; an error says why CUDA cannot be used (no driver, no NVRTC, no device).
    pub fn open(index: usize) -> Result<CudaBackend> {
        Cuda::open(index)
            .map(|cuda| CudaBackend { cuda })
            .map_err(|reason| {
                crate::Error::Device(crate::capability::DeviceError::PlatformUnavailable {
                    device: format!("cuda:{index}"),
                    reason: format!("CUDA unavailable: {reason}"),
                })
            })
    }

    /// The device this backend runs on: `cuda:N`.
    pub fn device_id(&self) -> &str {
        &self.cuda.id
    }

    /// `sm_{major}{minor}` of the device.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cuda.capability
    }

    fn up(&self, op: &str, x: &Floats) -> Result<Buf> {
        self.cuda.upload_bytes(op, floats_bytes(x))
    }

    fn up_bias(&self, op: &str, bias: Option<Floats>) -> Result<Option<Buf>> {
        bias.map(|b| self.cuda.upload_f32(op, &b.to_f32_vec()))
            .transpose()
    }

    fn linear_4bit_host(
        &self,
        op: &str,
        x: Floats,
        batch: usize,
        w: Packed4bit,
        bias: Option<Floats>,
    ) -> Result<FloatVec> {
        let xb = self.up(op, &x)?;
        let packed = self.cuda.upload_bytes(op, w.packed)?;
        let absmax = self.cuda.upload_f32(op, w.absmax)?;
        let bias = self.up_bias(op, bias)?;
        let wd = Weight4 {
            packed: &packed,
            absmax: &absmax,
            quant_type: w.quant_type,
            blocksize: w.blocksize,
            rows: w.rows,
            cols: w.cols,
        };
        let y =
            self.cuda
                .linear_4bit_dev(&xb, x.dtype(), batch, &wd, f32_bias(&bias), DType::F32)?;
        let y = self.cuda.download_f32(op, &y, batch * w.rows)?;
        Ok(FloatVec::from_f32(y, x.dtype()))
    }
}

/// The NVIDIA GPUs CUDA can use here, or why none can (`None` when there is no NVIDIA driver at all: a
/// machine without NVIDIA hardware lists no CUDA device). Listing creates a context per device but compiles
/// nothing; the kernels are compiled when a device is opened.
pub fn discover() -> Option<std::result::Result<Vec<DeviceInfo>, String>> {
    // SAFETY: only probes whether the driver library can be opened.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return None;
    }
    if let Some(reason) = unavailable_reason() {
        return Some(Err(reason));
    }
    let count = context::guarded(cudarc::driver::CudaContext::device_count)
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or(0);
    Some(Ok((0..count.max(0) as usize)
        .map(|i| {
            let id = format!("cuda:{i}");
            match context::guarded(|| cudarc::driver::CudaContext::new(i)) {
                Ok(Ok(ctx)) => device_info(&ctx, &id),
                Ok(Err(e)) => unavailable(&id, e.to_string()),
                Err(p) => unavailable(&id, p),
            }
        })
        .collect()))
}

fn unavailable(id: &str, reason: String) -> DeviceInfo {
    DeviceInfo::new(id, "cuda", "NVIDIA GPU", DeviceType::DiscreteGpu)
        .unavailable(format!("CUDA unavailable: {reason}"))
}

/// What lowbit knows about the device behind `ctx`.
fn device_info(ctx: &cudarc::driver::CudaContext, id: &str) -> DeviceInfo {
    let name = ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into());
    let mut info = DeviceInfo::new(id, "cuda", name, DeviceType::DiscreteGpu).with_all_ops();
    info.index = id.rsplit(':').next().and_then(|i| i.parse().ok());
    info.vendor = Some("NVIDIA".into());
    if let Ok((major, minor)) = ctx.compute_capability() {
        info.driver = Some(format!("compute capability {major}.{minor}"));
    }
    if let Ok((free, total)) = ctx.mem_get_info() {
        info.total_memory = Some(total as u64);
        info.available_memory = Some(free as u64);
    }
    info.f16 = true;
    info.bf16 = true;
    info.int8_dot = true;
    info
}

impl Backend for CudaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }
    fn name(&self) -> String {
        format!("cuda:{}", self.cuda.name)
    }
    fn info(&self) -> DeviceInfo {
        device_info(&self.cuda.ctx, &self.cuda.id)
    }
    fn upload(&self, t: &Tensor) -> Result<DeviceTensor> {
        self.cuda.upload_tensor(t)
    }
    fn download(&self, t: &DeviceTensor) -> Result<Tensor> {
        let s = self.storage("download", t)?;
        self.cuda.download_tensor(s, t)
    }
    fn supports_op(&self, op: &Op, dtypes: &[DType]) -> Support {
        self.supports_device_op(op, dtypes)
    }
    fn run_op(&self, op: &Op, inputs: &[&DeviceTensor]) -> Result<DeviceTensor> {
        self.run_device_op(op, inputs)
    }
    fn write_rows(&self, dst: &DeviceTensor, row: usize, src: &DeviceTensor) -> Result<()> {
        let c = self.row_copy(dst, src)?;
        match self
            .cuda
            .step_position("copy_rows", row, dst.rows_cols_first().0)?
        {
            Some(step) => self.cuda.copy_rows_at(&c, step),
            None => self.cuda.copy(c.src, c.dst, row * c.row_bytes, c.bytes),
        }
    }
    fn write_rows_pair(
        &self,
        dst: [&DeviceTensor; 2],
        row: usize,
        src: [&DeviceTensor; 2],
    ) -> Result<()> {
        let pairs = [
            self.row_copy(dst[0], src[0])?,
            self.row_copy(dst[1], src[1])?,
        ];
        let rows = dst[0].rows_cols_first().0.min(dst[1].rows_cols_first().0);
        // A recorded step's kernel reads its position from the step's arguments, in place of `row`.
        match self.cuda.step_position("copy_rows", row, rows)? {
            Some(step) => self.cuda.copy_rows_pair(&pairs, 0, step),
            None => self.cuda.copy_rows_pair(&pairs, row, 0),
        }
    }
    fn synchronize(&self) -> Result<()> {
        self.cuda.synchronize()
    }

    fn step_replay(&self, key: StepKey, args: &StepArgs) -> Result<Option<DeviceTensor>> {
        self.cuda.step_replay(key, args)
    }
    fn step_record_begin(&self, key: StepKey, args: &StepArgs) -> Result<bool> {
        self.cuda.step_record_begin(key, args)
    }
    fn step_record_end(&self, out: Result<DeviceTensor>) -> Result<DeviceTensor> {
        self.cuda.step_record_end(out)
    }
    fn step_ran(&self, key: StepKey, out: &DeviceTensor) {
        self.cuda.step_ran(key, out)
    }
    fn recording(&self) -> bool {
        self.cuda.steps.recording()
    }

    fn quantize_blockwise(
        &self,
        x: Floats,
        code: &Codebook8,
        blocksize: usize,
    ) -> Result<BlockCodes> {
        const OP: &str = "quantize_blockwise";
        let n = x.len();
        let xb = self.up(OP, &x)?;
        let mids = self.cuda.upload_f32(OP, &code.midpoints)?;
        let (codes, absmax) =
            self.cuda
                .quantize_blockwise_dev(&xb, x.dtype(), n, blocksize, &mids)?;
        Ok(BlockCodes {
            codes: self.cuda.download_bytes(OP, &codes, n)?,
            absmax: self.cuda.download_f32(OP, &absmax, n.div_ceil(blocksize))?,
        })
    }
    fn dequantize_blockwise(
        &self,
        q: &[u8],
        absmax: &[f32],
        code: &Codebook8,
        blocksize: usize,
        out_dtype: DType,
    ) -> Result<FloatVec> {
        const OP: &str = "dequantize_blockwise";
        let (qb, ab) = (
            self.cuda.upload_bytes(OP, q)?,
            self.cuda.upload_f32(OP, absmax)?,
        );
        let table = self.cuda.upload_f32(OP, &code.values)?;
        let y =
            self.cuda
                .dequantize_dev(&qb, &ab, table.addr(), 8, q.len(), blocksize, DType::F32)?;
        let y = self.cuda.download_f32(OP, &y, q.len())?;
        Ok(FloatVec::from_f32(y, out_dtype))
    }
    fn quantize_4bit(
        &self,
        x: Floats,
        quant_type: FourBitType,
        blocksize: usize,
    ) -> Result<BlockCodes> {
        const OP: &str = "quantize_4bit";
        let n = x.len();
        let xb = self.up(OP, &x)?;
        let (packed, absmax) =
            self.cuda
                .quantize_4bit_dev(&xb, x.dtype(), n, quant_type, blocksize)?;
        Ok(BlockCodes {
            codes: self.cuda.download_bytes(OP, &packed, n.div_ceil(2))?,
            absmax: self.cuda.download_f32(OP, &absmax, n.div_ceil(blocksize))?,
        })
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
        const OP: &str = "dequantize_4bit";
        let (qb, ab) = (
            self.cuda.upload_bytes(OP, packed)?,
            self.cuda.upload_f32(OP, absmax)?,
        );
        let table = self.cuda.fourbit_table(quant_type);
        let y = self
            .cuda
            .dequantize_dev(&qb, &ab, table, 4, n, blocksize, DType::F32)?;
        let y = self.cuda.download_f32(OP, &y, n)?;
        Ok(FloatVec::from_f32(y, out_dtype))
    }
    fn gemv_4bit(&self, x: Floats, w: Packed4bit, bias: Option<Floats>) -> Result<FloatVec> {
        self.linear_4bit_host("gemv_4bit", x, 1, w, bias)
    }
    fn matmul_4bit(
        &self,
        x: Floats,
        batch: usize,
        w: Packed4bit,
        bias: Option<Floats>,
    ) -> Result<FloatVec> {
        self.linear_4bit_host("matmul_4bit", x, batch, w, bias)
    }
    fn int8_vectorwise_quant(
        &self,
        a: Floats,
        rows: usize,
        cols: usize,
        threshold: f32,
    ) -> Result<Int8Rows> {
        const OP: &str = "int8_vectorwise_quant";
        let ab = self.up(OP, &a)?;
        let flags = if threshold > 0.0 {
            Some(
                self.cuda
                    .int8_col_outliers_dev(&ab, a.dtype(), rows, cols, threshold)?,
            )
        } else {
            None
        };
        let zero = flags.as_ref().filter(|_| rows > 1);
        let (q, stats) =
            self.cuda
                .int8_row_quant_dev(&ab, a.dtype(), rows, cols, threshold, zero)?;
        let outlier_cols = match &flags {
            Some(f) => {
                let f: Vec<u32> =
                    bytemuck::pod_collect_to_vec(&self.cuda.download_bytes(OP, f, cols * 4)?);
                Some(
                    crate::backend::outlier_columns(&f)
                        .map(|c| c as i64)
                        .collect(),
                )
            }
            None => None,
        };
        Ok(Int8Rows {
            q: bytemuck::pod_collect_to_vec(&self.cuda.download_bytes(OP, &q, rows * cols)?),
            row_stats: self.cuda.download_f32(OP, &stats, rows)?,
            outlier_cols,
        })
    }
    fn int8_vectorwise_dequant(
        &self,
        q: &[i8],
        row_stats: &[f32],
        cols: usize,
    ) -> Result<Vec<f32>> {
        const OP: &str = "int8_vectorwise_dequant";
        let qb = self.cuda.upload_bytes(OP, bytemuck::cast_slice(q))?;
        let sb = self.cuda.upload_f32(OP, row_stats)?;
        let y = self.cuda.int8_dequant_dev(&qb, &sb, q.len(), cols)?;
        self.cuda.download_f32(OP, &y, q.len())
    }
    fn int8_linear_matmul(
        &self,
        a: &[i8],
        b: &[i8],
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<i32>> {
        const OP: &str = "int8_linear_matmul";
        let ab = self.cuda.upload_bytes(OP, bytemuck::cast_slice(a))?;
        let bb = self.cuda.upload_bytes(OP, bytemuck::cast_slice(b))?;
        let c = self.cuda.int8_gemm_dev(&ab, &bb, m, n, k)?;
        Ok(bytemuck::pod_collect_to_vec(&self.cuda.download_bytes(
            OP,
            &c,
            m * n * 4,
        )?))
    }
    fn int8_mm_dequant(
        &self,
        c: &[i32],
        row_stats: &[f32],
        col_stats: &[f32],
        bias: Option<Floats>,
    ) -> Result<Vec<f16>> {
        const OP: &str = "int8_mm_dequant";
        let n = col_stats.len();
        let m = c.len().checked_div(n).unwrap_or(0);
        let cb = self.cuda.upload_bytes(OP, bytemuck::cast_slice(c))?;
        let rb = self.cuda.upload_f32(OP, row_stats)?;
        let colb = self.cuda.upload_f32(OP, col_stats)?;
        let bias = self.up_bias(OP, bias)?;
        let y = self
            .cuda
            .int8_mm_dequant_dev(&cb, &rb, &colb, bias.as_ref(), m, n)?;
        Ok(bytemuck::pod_collect_to_vec(&self.cuda.download_bytes(
            OP,
            &y,
            m * n * 2,
        )?))
    }
    fn ternary_quantize(
        &self,
        w: Floats,
        rows: usize,
        cols: usize,
        weight_scale: f32,
    ) -> Result<Vec<u8>> {
        const OP: &str = "ternary_quantize";
        let wb = self.up(OP, &w)?;
        let p = self
            .cuda
            .ternary_quantize_dev(&wb, w.dtype(), rows, cols, weight_scale)?;
        self.cuda.download_bytes(OP, &p, rows.div_ceil(4) * cols)
    }
    fn ternary_act_quant(
        &self,
        x: Floats,
        rows: usize,
        cols: usize,
    ) -> Result<(Vec<i8>, Vec<f32>)> {
        const OP: &str = "ternary_act_quant";
        let xb = self.up(OP, &x)?;
        let (q, s) = self
            .cuda
            .ternary_act_quant_dev(&xb, x.dtype(), rows, cols)?;
        Ok((
            bytemuck::pod_collect_to_vec(&self.cuda.download_bytes(OP, &q, rows * cols)?),
            self.cuda.download_f32(OP, &s, rows)?,
        ))
    }
    fn ternary_matmul(
        &self,
        xq: &[i8],
        x_scale: &[f32],
        batch: usize,
        w: PackedTernary,
        bias: Option<Floats>,
    ) -> Result<Vec<f32>> {
        const OP: &str = "ternary_matmul";
        let xb = self.cuda.upload_bytes(OP, bytemuck::cast_slice(xq))?;
        let sb = self.cuda.upload_f32(OP, x_scale)?;
        let pb = self.cuda.upload_bytes(OP, w.packed)?;
        let bias = self.up_bias(OP, bias)?;
        let bias = bias.as_deref().map(|buf| Bias {
            buf,
            dtype: DType::F32,
        });
        let tw = ops::TernaryWeight {
            packed: &pb,
            weight_scale: w.weight_scale,
            rows: w.rows,
            cols: w.cols,
        };
        let y = self.cuda.ternary_matmul_dev(&xb, &sb, batch, tw, bias)?;
        self.cuda.download_f32(OP, &y, batch * w.rows)
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
        const OP: &str = "matmul";
        let (mut xb, mut wb) = (self.up(OP, &x)?, self.up(OP, &w)?);
        let mut dtype = x.dtype();
        if w.dtype() != dtype {
            xb = self.cuda.as_f32(&xb, dtype, m * k)?;
            wb = self.cuda.as_f32(&wb, w.dtype(), n * k)?;
            dtype = DType::F32;
        }
        let bias = self.up_bias(OP, bias)?;
        let y = self
            .cuda
            .linear_dev(&xb, &wb, dtype, f32_bias(&bias), m, n, k, DType::F32)?;
        let y = self.cuda.download_f32(OP, &y, m * n)?;
        Ok(FloatVec::from_f32(y, x.dtype()))
    }
    fn softmax(&self, x: Floats, cols: usize) -> Result<FloatVec> {
        const OP: &str = "softmax";
        let rows = x.len().checked_div(cols).unwrap_or(0);
        let xb = self.up(OP, &x)?;
        let y = self.cuda.softmax_dev(&xb, x.dtype(), rows, cols)?;
        self.download_floats(OP, &y, x.dtype(), x.len())
    }
    fn rms_norm(&self, x: Floats, weight: Floats, eps: f32, cols: usize) -> Result<FloatVec> {
        const OP: &str = "rms_norm";
        let rows = x.len().checked_div(cols).unwrap_or(0);
        let (xb, wb) = (self.up(OP, &x)?, self.up(OP, &weight)?);
        let y = self
            .cuda
            .rms_norm_dev(&xb, x.dtype(), &wb, weight.dtype(), rows, cols, eps)?;
        self.download_floats(OP, &y, x.dtype(), x.len())
    }
}

impl CudaBackend {
    fn download_floats(
        &self,
        op: &str,
        y: &CudaStorage,
        dtype: DType,
        n: usize,
    ) -> Result<FloatVec> {
        let b = self.cuda.download_bytes(op, y, n * dtype.size_in_bytes())?;
        match crate::tensor::TensorData::from_bytes(dtype, &b) {
            crate::tensor::TensorData::Float(f) => Ok(f),
            _ => Err(crate::Error::InvalidArgument {
                op: "download",
                detail: format!("{dtype} is not a float dtype"),
            }),
        }
    }
}

/// An uploaded f32 bias of the host-slice API as the linear kernels take it.
fn f32_bias(bias: &Option<Buf>) -> Option<Bias<'_>> {
    bias.as_deref().map(|buf| Bias {
        buf,
        dtype: DType::F32,
    })
}
