//! What a device is and can do: [`DeviceInfo`], and the per-op capability question a backend answers
//! ([`OpParams`] in, [`Support`] out).

use super::OpKind;
use super::memory::MemoryEstimate;
use crate::format::{BLOCKSIZES_4BIT, BLOCKSIZES_8BIT, FourBitType};
use crate::tensor::DType;
use serde::Serialize;

/// The kind of hardware behind a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceType {
    Cpu,
    DiscreteGpu,
    IntegratedGpu,
    VirtualGpu,
    /// A GPU API implemented in software on the CPU (lavapipe, llvmpipe, WARP).
    SoftwareGpu,
    /// A neural accelerator (Apple Neural Engine).
    Accelerator,
    Other,
}

impl DeviceType {
    pub fn name(self) -> &'static str {
        match self {
            DeviceType::Cpu => "cpu",
            DeviceType::DiscreteGpu => "discrete gpu",
            DeviceType::IntegratedGpu => "integrated gpu",
            DeviceType::VirtualGpu => "virtual gpu",
            DeviceType::SoftwareGpu => "software gpu",
            DeviceType::Accelerator => "accelerator",
            DeviceType::Other => "other",
        }
    }

    pub fn is_gpu(self) -> bool {
        matches!(
            self,
            DeviceType::DiscreteGpu | DeviceType::IntegratedGpu | DeviceType::VirtualGpu
        )
    }
}

/// Everything lowbit knows about one device. Unknown values are `None`, never guessed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceInfo {
    /// What `--device` / `LOWBIT_DEVICE` accept: `cpu`, `vulkan:0`, `metal:0`, `dx12:0`, `cuda:0`.
    pub id: String,
    /// `cpu`, `vulkan`, `metal`, `dx12`, `cuda`, `ane`.
    pub backend: String,
    pub name: String,
    pub vendor: Option<String>,
    pub driver: Option<String>,
    pub device_type: DeviceType,
    /// Index of the adapter within its backend's enumeration (the `N` of `vulkan:N`).
    pub index: Option<usize>,
    pub cores: Option<usize>,
    pub total_memory: Option<u64>,
    pub available_memory: Option<u64>,
    /// Host and device share memory (CPU, Apple silicon, integrated GPUs).
    pub unified_memory: bool,
    pub max_buffer_size: Option<u64>,
    pub max_storage_binding: Option<u64>,
    /// CPU SIMD features (avx2, fma, f16c, avx512f, neon, dotprod).
    pub simd: Vec<String>,
    pub f16: bool,
    pub bf16: bool,
    /// Hardware int8 dot product (VNNI / dotprod / DP4a).
    pub int8_dot: bool,
    pub subgroup_min: Option<u32>,
    pub subgroup_max: Option<u32>,
    pub ops: Vec<String>,
    pub formats: Vec<String>,
    pub blocksizes_4bit: Vec<usize>,
    pub blocksizes_8bit: Vec<usize>,
    /// Degrees Celsius, where the platform reports it (NVIDIA through nvidia-smi).
    pub temperature_c: Option<f32>,
    /// Thermal or throttling state, where the platform reports it (macOS thermal level, NVIDIA throttle reasons).
    pub thermal: Option<String>,
    /// Whether lowbit can run ops on it now.
    pub available: bool,
    /// Why not (or a note when available).
    pub reason: Option<String>,
}

/// Formats every backend is expected to implement.
pub const FORMATS: &[&str] = &["nf4", "fp4", "int8-blockwise", "llm.int8", "ternary-b1.58"];

impl DeviceInfo {
    /// A device with no capabilities filled in.
    pub fn new(
        id: impl Into<String>,
        backend: impl Into<String>,
        name: impl Into<String>,
        device_type: DeviceType,
    ) -> Self {
        DeviceInfo {
            id: id.into(),
            backend: backend.into(),
            name: name.into(),
            vendor: None,
            driver: None,
            device_type,
            index: None,
            cores: None,
            total_memory: None,
            available_memory: None,
            unified_memory: false,
            max_buffer_size: None,
            max_storage_binding: None,
            simd: Vec::new(),
            f16: false,
            bf16: false,
            int8_dot: false,
            subgroup_min: None,
            subgroup_max: None,
            ops: Vec::new(),
            formats: Vec::new(),
            blocksizes_4bit: Vec::new(),
            blocksizes_8bit: Vec::new(),
            temperature_c: None,
            thermal: None,
            available: true,
            reason: None,
        }
    }

    /// Every op, format and block size lowbit has.
    pub fn with_all_ops(mut self) -> Self {
        self.ops = OpKind::ALL.iter().map(|o| o.name().to_string()).collect();
        self.formats = FORMATS.iter().map(|s| s.to_string()).collect();
        self.blocksizes_4bit = BLOCKSIZES_4BIT.to_vec();
        self.blocksizes_8bit = BLOCKSIZES_8BIT.to_vec();
        self
    }

    /// Marks the device as present but unusable.
    pub fn unavailable(mut self, reason: impl Into<String>) -> Self {
        self.available = false;
        self.reason = Some(reason.into());
        self
    }
}

/// What an op needs from a device: the question [`Backend::supports`](crate::backend::Backend::supports) answers
/// and the memory the runtime checks.
#[derive(Clone, Debug, PartialEq)]
pub struct OpParams {
    pub op: OpKind,
    /// Float dtype of the main input (or output, for dequantization).
    pub dtype: Option<DType>,
    pub blocksize: Option<usize>,
    pub quant_type: Option<FourBitType>,
    pub memory: MemoryEstimate,
}

impl OpParams {
    pub fn new(op: OpKind) -> Self {
        OpParams {
            op,
            dtype: None,
            blocksize: None,
            quant_type: None,
            memory: MemoryEstimate::new(1),
        }
    }
    pub fn dtype(mut self, d: DType) -> Self {
        self.dtype = Some(d);
        self
    }
    pub fn blocksize(mut self, b: usize) -> Self {
        self.blocksize = Some(b);
        self
    }
    pub fn quant_type(mut self, q: FourBitType) -> Self {
        self.quant_type = Some(q);
        self
    }
    pub fn memory(mut self, m: MemoryEstimate) -> Self {
        self.memory = m;
        self
    }
}

/// A backend's answer to "can you run this op with these parameters?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    Yes,
    /// No, and why (shown to the user and in fallback logs).
    No(String),
}
