//! The GPU backend for Metal (macOS), Vulkan and DX12 through wgpu: every kernel of [`Backend`] as a WGSL
//! compute shader. Quantization is byte-exact with the CPU reference (see `docs/GPU.md`): reciprocals are
//! computed with integers plus the CUDA correction table, subnormals are flushed on bit patterns and the
//! zero-block case takes an explicit branch, so nothing depends on the driver's float division or denormal mode.

mod adapters;
pub mod bench;
mod bind_groups;
mod context;
mod device_ops;
mod errors;
mod gemm_source;
pub mod gemv_rows;
mod int8_linear;
pub mod int_gemv_rows;
mod kernels;
pub mod model_ops;
/// Dense GEMM through Metal Performance Shaders on wgpu's Metal device (macOS).
#[cfg(target_os = "macos")]
pub mod mps;
mod pool;
mod quantize_source;
mod recorder;
pub mod shaders;
mod tensor;
mod weights;

pub use adapters::AdapterSummary;
pub(crate) use adapters::adapters;
pub use context::Gpu;
pub use tensor::GpuTensor;
pub use weights::{GpuPacked4bit, GpuPackedTernary};

use super::{Backend, BackendKind, BlockCodes, Int8Rows, Packed4bit, PackedTernary};
use crate::format::{Codebook8, FourBitType};
use crate::tensor::{DType, FloatVec, Floats};
use crate::{Error, Result};
use half::f16;
use std::sync::Arc;

/// A wgpu device with its kernels. Cheap to clone.
#[derive(Clone)]
pub struct WgpuBackend {
    gpu: Arc<Gpu>,
    /// The device id (`vulkan:0`, `metal:0`, `dx12:0`): what `--device` names and device tensors carry.
    id: Arc<str>,
    /// Dense matmul through Metal Performance Shaders on the same Metal device (shared by clones).
    #[cfg(target_os = "macos")]
    mps: Arc<MpsState>,
}

/// The MPS GEMM of one Metal device, created on first use, and how often it failed over to the WGSL GEMM.
#[cfg(target_os = "macos")]
#[derive(Default)]
struct MpsState {
    gemm: std::sync::OnceLock<Option<mps::MpsGemm>>,
    fallbacks: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl WgpuBackend {
    /// The device id (`vulkan:0`, ...).
    pub fn device_id(&self) -> &str {
        &self.id
    }

    fn device_id_arc(&self) -> Arc<str> {
        self.id.clone()
    }

    /// The shared plumbing (device, queue, pipeline cache).
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.gpu.info
    }

    /// [`Backend::matmul`] without shader-f16 types: f16 operands are widened on integers, as on adapters
    /// without shader-f16 (tests).
    #[doc(hidden)]
    pub fn matmul_f16_widened(
        &self,
        x: Floats,
        w: Floats,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<f32>> {
        kernels::matmul(&self.gpu, x, w, None, m, n, k, false)
    }

    /// Whether this device runs the subgroup variants of the GEMV kernels for row sets of `lanes` threads.
    pub fn subgroups_fit(&self, lanes: u32) -> bool {
        self.gpu.subgroups_fit(lanes)
    }

    /// [`Backend::gemv_4bit`] with a pinned work split of the vectorised kernel (tests and benchmarks).
    #[doc(hidden)]
    pub fn gemv_4bit_split(
        &self,
        x: &[f32],
        w: Packed4bit,
        bias: Option<Floats>,
        split: shaders::GemvShape,
    ) -> Result<Vec<f32>> {
        let split = self.checked_split(split)?;
        kernels::gemv_4bit(&self.gpu, x, &w, bias, Some(split))
    }

    /// A pinned GEMV split must be one of the generated candidates, and its subgroup reduction must fit this
    /// adapter's subgroups (a wider subgroup would sum across row sets).
    fn checked_split(&self, split: shaders::GemvShape) -> Result<shaders::GemvShape> {
        let portable = shaders::GemvShape {
            subgroup: false,
            ..split
        };
        if !shaders::GemvShape::CANDIDATES.contains(&portable)
            || (split.subgroup && !self.subgroups_fit(split.tpr))
        {
            return Err(Error::invalid(
                "gemv split",
                format!(
                    "{split:?} is not available on {}: use one of GemvShape::CANDIDATES, with subgroups only \
                     where subgroups_fit(tpr)",
                    self.name()
                ),
            ));
        }
        Ok(split)
    }

    /// A blockwise quantizer ([`Backend::quantize_4bit`] for a 4-bit `enc`, [`Backend::quantize_blockwise`]
    /// for `Code8` with `code`) with `rows` rows of 256 output words per workgroup pinned (tests and benchmarks).
    #[doc(hidden)]
    pub fn quantize_rows(
        &self,
        x: Floats,
        enc: shaders::Encoding,
        code: Option<&Codebook8>,
        blocksize: usize,
        rows: u32,
    ) -> Result<BlockCodes> {
        kernels::quantize_with(&self.gpu, x, enc, code, blocksize, Some(rows))
    }

    /// The dequantize kernel (f32 out) for `bits`-bit codes with `vpt` vec4 stores per thread pinned.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn dequantize_vpt(
        &self,
        codes: &[u8],
        absmax: &[f32],
        table: &[f32],
        bits: usize,
        blocksize: usize,
        n: usize,
        vpt: u32,
    ) -> Result<Vec<f32>> {
        kernels::dequantize_with(
            &self.gpu,
            codes,
            absmax,
            table,
            bits,
            blocksize,
            n,
            Some(vpt),
        )
    }

    /// [`Backend::ternary_matmul`] at batch 1 with a pinned work split of the vectorised kernel.
    #[doc(hidden)]
    pub fn ternary_gemv_split(
        &self,
        xq: &[i8],
        x_scale: f32,
        w: PackedTernary,
        split: shaders::GemvShape,
    ) -> Result<Vec<f32>> {
        let split = self.checked_split(split)?;
        kernels::ternary_matmul(&self.gpu, xq, &[x_scale], 1, &w, None, Some(split))
    }
}

#[cfg(target_os = "macos")]
impl WgpuBackend {
    /// The MPS GEMM on this backend's Metal device, created on the first dense matmul; `None` on a non-Metal
    /// wgpu device or where MPS cannot be set up (the WGSL GEMM runs then).
    pub fn mps_gemm(&self) -> Option<&mps::MpsGemm> {
        self.mps
            .gemm
            .get_or_init(|| {
                if self.gpu.info.backend != wgpu::Backend::Metal {
                    return None;
                }
                let g = mps::MpsGemm::from_wgpu(&self.gpu.device);
                if g.is_none() {
                    tracing::warn!(
                        "{}: Metal Performance Shaders unavailable; dense matmul uses the WGSL GEMM",
                        self.gpu.info.name
                    );
                }
                g
            })
            .as_ref()
    }

    /// How many dense matmuls MPS failed and the WGSL GEMM ran instead.
    pub fn mps_fallbacks(&self) -> u64 {
        self.mps
            .fallbacks
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Dense f32 or f16 matmul through MPS (x and w of one dtype, no empty dimension); `None` when MPS does not
    /// apply or failed, and the caller runs the WGSL GEMM. MPS computes `x @ w^T` in the input dtype; the bias
    /// is added on the host in f32 (for f16 that rounds the MPS result once more, within the f16 tolerance).
    fn matmul_mps(
        &self,
        x: Floats,
        w: Floats,
        bias: Option<Floats>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Option<FloatVec> {
        let dtype = x.dtype();
        if dtype != w.dtype() || !matches!(dtype, DType::F32 | DType::F16) || m * n * k == 0 {
            return None;
        }
        let mps = self.mps_gemm()?;
        let bytes = match mps.matmul(
            kernels::float_bytes(&x),
            kernels::float_bytes(&w),
            m,
            n,
            k,
            dtype,
        ) {
            Ok(b) => b,
            Err(e) => {
                let count = self
                    .mps
                    .fallbacks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                // Warned at the 1st, 2nd, 4th, ... failure so a persistent one does not flood the log.
                if count.is_power_of_two() {
                    tracing::warn!(
                        fallbacks = count,
                        "MPS matmul {m}x{n}x{k} {dtype} failed ({e}); running the WGSL GEMM"
                    );
                } else {
                    tracing::debug!(fallbacks = count, "MPS matmul failed ({e})");
                }
                return None;
            }
        };
        let add_bias = |y: &mut [f32]| {
            if let Some(b) = bias {
                for (i, v) in y.iter_mut().enumerate() {
                    *v += b.get_f32(i % n);
                }
            }
        };
        Some(match dtype {
            DType::F16 if bias.is_none() => FloatVec::F16(bytemuck::pod_collect_to_vec(&bytes)),
            DType::F16 => {
                let h: Vec<f16> = bytemuck::pod_collect_to_vec(&bytes);
                let mut y: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
                add_bias(&mut y);
                FloatVec::from_f32(y, DType::F16)
            }
            _ => {
                let mut y: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
                add_bias(&mut y);
                FloatVec::F32(y)
            }
        })
    }
}

impl Backend for WgpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }
    fn name(&self) -> String {
        format!("wgpu:{:?}:{}", self.gpu.info.backend, self.gpu.info.name).to_lowercase()
    }
    fn info(&self) -> crate::capability::DeviceInfo {
        let ty = match self.gpu.info.device_type {
            wgpu::DeviceType::DiscreteGpu => crate::capability::DeviceType::DiscreteGpu,
            wgpu::DeviceType::IntegratedGpu => crate::capability::DeviceType::IntegratedGpu,
            wgpu::DeviceType::VirtualGpu => crate::capability::DeviceType::VirtualGpu,
            wgpu::DeviceType::Cpu => crate::capability::DeviceType::SoftwareGpu,
            wgpu::DeviceType::Other => crate::capability::DeviceType::Other,
        };
        let kind = self.id.split(':').next().unwrap_or("wgpu");
        let mut info = crate::capability::DeviceInfo::new(&*self.id, kind, &self.gpu.info.name, ty)
            .with_all_ops();
        info.max_buffer_size = Some(self.gpu.limits.max_buffer_size);
        info.max_storage_binding = Some(self.gpu.max_binding());
        info
    }
    fn upload(&self, t: &crate::tensor::Tensor) -> Result<crate::device_tensor::DeviceTensor> {
        self.upload_tensor(t)
    }
    fn download(&self, t: &crate::device_tensor::DeviceTensor) -> Result<crate::tensor::Tensor> {
        self.download_tensor(t)
    }
    fn supports_op(
        &self,
        op: &crate::capability::Op,
        dtypes: &[DType],
    ) -> crate::capability::Support {
        self.supports_device_op(op, dtypes)
    }
    fn run_op(
        &self,
        op: &crate::capability::Op,
        inputs: &[&crate::device_tensor::DeviceTensor],
    ) -> Result<crate::device_tensor::DeviceTensor> {
        self.run_device_op(op, inputs)
    }
    fn write_rows(
        &self,
        dst: &crate::device_tensor::DeviceTensor,
        row: usize,
        src: &crate::device_tensor::DeviceTensor,
    ) -> Result<()> {
        self.write_rows_on_device(dst, row, src)
    }
    fn synchronize(&self) -> Result<()> {
        self.gpu.wait()
    }
    fn quantize_blockwise(
        &self,
        x: Floats,
        code: &Codebook8,
        blocksize: usize,
    ) -> Result<BlockCodes> {
        kernels::quantize(
            &self.gpu,
            x,
            shaders::Encoding::Code8,
            Some(code),
            blocksize,
        )
    }
    fn dequantize_blockwise(
        &self,
        q: &[u8],
        absmax: &[f32],
        code: &Codebook8,
        blocksize: usize,
        out_dtype: DType,
    ) -> Result<FloatVec> {
        let y = kernels::dequantize(&self.gpu, q, absmax, &code.values, 8, blocksize, q.len())?;
        Ok(FloatVec::from_f32(y, out_dtype))
    }
    fn quantize_4bit(
        &self,
        x: Floats,
        quant_type: FourBitType,
        blocksize: usize,
    ) -> Result<BlockCodes> {
        kernels::quantize(
            &self.gpu,
            x,
            shaders::Encoding::FourBit(quant_type),
            None,
            blocksize,
        )
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
        let table = quant_type.dequant_table();
        let y = kernels::dequantize(&self.gpu, packed, absmax, table, 4, blocksize, n)?;
        Ok(FloatVec::from_f32(y, out_dtype))
    }
    fn gemv_4bit(&self, x: Floats, w: Packed4bit, bias: Option<Floats>) -> Result<FloatVec> {
        let y = kernels::gemv_4bit(&self.gpu, &x.to_f32_vec(), &w, bias, None)?;
        Ok(FloatVec::from_f32(y, x.dtype()))
    }
    fn matmul_4bit(
        &self,
        x: Floats,
        batch: usize,
        w: Packed4bit,
        bias: Option<Floats>,
    ) -> Result<FloatVec> {
        let xf = x.to_f32_vec();
        let y = match gemv_rows::pick_linear_path(batch, w.cols, w.blocksize) {
            gemv_rows::LinearPath::Gemv => kernels::gemv_4bit(&self.gpu, &xf, &w, bias, None)?,
            gemv_rows::LinearPath::GemvRows => {
                gemv_rows::matmul_4bit(&self.gpu, &xf, batch, &w, bias)?
            }
            gemv_rows::LinearPath::Gemm => kernels::matmul_4bit(&self.gpu, &xf, batch, &w, bias)?,
        };
        Ok(FloatVec::from_f32(y, x.dtype()))
    }
    fn int8_vectorwise_quant(
        &self,
        a: Floats,
        rows: usize,
        cols: usize,
        threshold: f32,
    ) -> Result<Int8Rows> {
        kernels::int8_vectorwise_quant(&self.gpu, a, rows, cols, threshold)
    }
    fn int8_vectorwise_dequant(
        &self,
        q: &[i8],
        row_stats: &[f32],
        cols: usize,
    ) -> Result<Vec<f32>> {
        kernels::int8_vectorwise_dequant(&self.gpu, q, row_stats, cols)
    }
    fn int8_linear_matmul(
        &self,
        a: &[i8],
        b: &[i8],
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<i32>> {
        kernels::int8_linear_matmul(&self.gpu, a, b, m, n, k)
    }
    fn int8_mm_dequant(
        &self,
        c: &[i32],
        row_stats: &[f32],
        col_stats: &[f32],
        bias: Option<Floats>,
    ) -> Result<Vec<f16>> {
        kernels::int8_mm_dequant(&self.gpu, c, row_stats, col_stats, bias)
    }
    fn ternary_quantize(
        &self,
        w: Floats,
        rows: usize,
        cols: usize,
        weight_scale: f32,
    ) -> Result<Vec<u8>> {
        kernels::ternary_quantize(&self.gpu, w, rows, cols, weight_scale)
    }
    fn ternary_act_quant(
        &self,
        x: Floats,
        rows: usize,
        cols: usize,
    ) -> Result<(Vec<i8>, Vec<f32>)> {
        kernels::ternary_act_quant(&self.gpu, x, rows, cols)
    }
    fn ternary_matmul(
        &self,
        xq: &[i8],
        x_scale: &[f32],
        batch: usize,
        w: PackedTernary,
        bias: Option<Floats>,
    ) -> Result<Vec<f32>> {
        kernels::ternary_matmul(&self.gpu, xq, x_scale, batch, &w, bias, None)
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
        #[cfg(target_os = "macos")]
        if let Some(y) = self.matmul_mps(x, w, bias, m, n, k) {
            return Ok(y);
        }
        let y = kernels::matmul(&self.gpu, x, w, bias, m, n, k, true)?;
        Ok(FloatVec::from_f32(y, x.dtype()))
    }
    fn softmax(&self, x: Floats, cols: usize) -> Result<FloatVec> {
        let y = kernels::rows_float(&self.gpu, &x.to_f32_vec(), None, cols, 0.0)?;
        Ok(FloatVec::from_f32(y, x.dtype()))
    }
    fn rms_norm(&self, x: Floats, weight: Floats, eps: f32, cols: usize) -> Result<FloatVec> {
        let wf = weight.to_f32_vec();
        let y = kernels::rows_float(&self.gpu, &x.to_f32_vec(), Some(&wf), cols, eps)?;
        Ok(FloatVec::from_f32(y, x.dtype()))
    }
}
