//! The GPU backend for Metal (macOS), Vulkan and DX12 through wgpu: every kernel of [`Backend`] as a WGSL
//! compute shader. Quantization is byte-exact with the CPU reference (see `docs/GPU.md`): reciprocals are
//! computed with integers plus the CUDA correction table, subnormals are flushed on bit patterns and the
//! zero-block case takes an explicit branch, so nothing depends on the driver's float division or denormal mode.

pub mod bench;
mod context;
mod kernels;
pub mod shaders;
mod tensor;

pub use context::Gpu;
pub use tensor::{GpuPacked4bit, GpuTensor};

use super::{Backend, BackendKind, BlockCodes, Int8Rows, Packed4bit, PackedTernary};
use crate::format::{Codebook8, FourBitType};
use crate::tensor::{DType, FloatVec, Floats};
use crate::{Error, Result};
use half::f16;
use std::sync::{Arc, Mutex};

/// What `lowbit devices` shows about one adapter.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub vendor: u32,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub shader_f16: bool,
    pub subgroup: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub timestamp_query: bool,
}

/// A wgpu device with its kernels. Cheap to clone.
#[derive(Clone)]
pub struct WgpuBackend {
    gpu: Arc<Gpu>,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// The adapters of `backends` in enumeration order. Device discovery (`vulkan:N`) and [`WgpuBackend::open`]
/// both list adapters here, so an index means the same adapter to both.
pub(crate) fn adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance(backends).enumerate_adapters(backends))
}

/// A readable name for a backend set ("Vulkan", "Metal", ...).
fn backends_name(backends: wgpu::Backends) -> String {
    let names: Vec<&str> = [
        (wgpu::Backends::VULKAN, "Vulkan"),
        (wgpu::Backends::METAL, "Metal"),
        (wgpu::Backends::DX12, "DX12"),
        (wgpu::Backends::GL, "GL"),
    ]
    .iter()
    .filter(|(b, _)| backends.contains(*b))
    .map(|(_, n)| *n)
    .collect();
    if names.is_empty() {
        format!("{backends:?}")
    } else {
        names.join("/")
    }
}

/// What to install when no adapter shows up.
fn install_hint(backends: wgpu::Backends) -> &'static str {
    if backends.contains(wgpu::Backends::METAL) {
        "a Mac with Metal support is required"
    } else if backends.contains(wgpu::Backends::VULKAN) {
        "install mesa-vulkan-drivers libvulkan1 (or the GPU vendor's Vulkan driver)"
    } else {
        "install a driver for the requested backend"
    }
}

impl WgpuBackend {
    /// Lists the adapters of `backends` with their capabilities.
    pub fn enumerate(backends: wgpu::Backends) -> Vec<AdapterSummary> {
        adapters(backends)
            .iter()
            .enumerate()
            .map(|(index, a)| {
                let info = a.get_info();
                let limits = a.limits();
                let features = a.features();
                AdapterSummary {
                    index,
                    name: info.name,
                    backend: format!("{:?}", info.backend),
                    vendor: info.vendor,
                    device_type: format!("{:?}", info.device_type),
                    driver: info.driver,
                    driver_info: info.driver_info,
                    max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
                    max_buffer_size: limits.max_buffer_size,
                    shader_f16: features.contains(wgpu::Features::SHADER_F16),
                    subgroup: features.contains(wgpu::Features::SUBGROUP),
                    subgroup_min_size: info.subgroup_min_size,
                    subgroup_max_size: info.subgroup_max_size,
                    timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
                }
            })
            .collect()
    }

    /// Opens adapter `adapter_index` of `backends` (ask for the backend you mean: on Linux
    /// `wgpu::Backends::VULKAN`).
    pub fn open(backends: wgpu::Backends, adapter_index: usize) -> Result<WgpuBackend> {
        // One device and queue per adapter for the whole process: opening it again returns the same
        // context (no per-call device creation), and creation is serialised because some drivers do not
        // tolerate concurrent instance/device creation in one process.
        static OPENED: Mutex<Vec<(wgpu::Backends, usize, Arc<Gpu>)>> = Mutex::new(Vec::new());
        let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, gpu)) = opened
            .iter()
            .find(|(b, i, _)| *b == backends && *i == adapter_index)
        {
            return Ok(WgpuBackend { gpu: gpu.clone() });
        }
        let list = adapters(backends);
        if list.is_empty() {
            return Err(Error::invalid(
                "wgpu",
                format!(
                    "no {} adapter found: {}",
                    backends_name(backends),
                    install_hint(backends)
                ),
            ));
        }
        let count = list.len();
        let adapter = list.into_iter().nth(adapter_index).ok_or_else(|| {
            Error::invalid(
                "wgpu",
                format!("adapter index {adapter_index} out of range: {count} adapter(s) found"),
            )
        })?;
        let gpu = Arc::new(Gpu::new(&adapter)?);
        opened.push((backends, adapter_index, gpu.clone()));
        Ok(WgpuBackend { gpu })
    }

    /// The shared plumbing (device, queue, pipeline cache).
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.gpu.info
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
        kernels::gemv_4bit(&self.gpu, x, &w, bias, Some(split))
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
        kernels::ternary_matmul(&self.gpu, xq, &[x_scale], 1, &w, None, Some(split))
    }
}

impl Backend for WgpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }
    fn name(&self) -> String {
        format!("wgpu:{:?}:{}", self.gpu.info.backend, self.gpu.info.name).to_lowercase()
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
        let y = kernels::matmul_4bit(&self.gpu, &x.to_f32_vec(), batch, &w, bias)?;
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
        let y = kernels::matmul(&self.gpu, &x.to_f32_vec(), &w.to_f32_vec(), bias, m, n, k)?;
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
