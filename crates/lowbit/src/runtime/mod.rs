//! Devices: where ops run. A [`Device`] wraps one backend; every op goes through [`Device::run`], the single
//! place where policy (validation against capabilities, retries, chunking, CPU fallback, statistics) applies.

use crate::Result;
use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use std::sync::Arc;

/// The kernels, by name: the unit of capability checks and statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    QuantizeBlockwise,
    DequantizeBlockwise,
    Quantize4bit,
    Dequantize4bit,
    Gemv4bit,
    Matmul4bit,
    Int8VectorwiseQuant,
    Int8VectorwiseDequant,
    Int8LinearMatmul,
    Int8MmDequant,
    TernaryQuantize,
    TernaryActQuant,
    TernaryMatmul,
    Matmul,
    Softmax,
    RmsNorm,
}

impl OpKind {
    pub const ALL: [OpKind; 16] = [
        OpKind::QuantizeBlockwise,
        OpKind::DequantizeBlockwise,
        OpKind::Quantize4bit,
        OpKind::Dequantize4bit,
        OpKind::Gemv4bit,
        OpKind::Matmul4bit,
        OpKind::Int8VectorwiseQuant,
        OpKind::Int8VectorwiseDequant,
        OpKind::Int8LinearMatmul,
        OpKind::Int8MmDequant,
        OpKind::TernaryQuantize,
        OpKind::TernaryActQuant,
        OpKind::TernaryMatmul,
        OpKind::Matmul,
        OpKind::Softmax,
        OpKind::RmsNorm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::QuantizeBlockwise => "quantize_blockwise",
            OpKind::DequantizeBlockwise => "dequantize_blockwise",
            OpKind::Quantize4bit => "quantize_4bit",
            OpKind::Dequantize4bit => "dequantize_4bit",
            OpKind::Gemv4bit => "gemv_4bit",
            OpKind::Matmul4bit => "matmul_4bit",
            OpKind::Int8VectorwiseQuant => "int8_vectorwise_quant",
            OpKind::Int8VectorwiseDequant => "int8_vectorwise_dequant",
            OpKind::Int8LinearMatmul => "int8_linear_matmul",
            OpKind::Int8MmDequant => "int8_mm_dequant",
            OpKind::TernaryQuantize => "ternary_quantize",
            OpKind::TernaryActQuant => "ternary_act_quant",
            OpKind::TernaryMatmul => "ternary_matmul",
            OpKind::Matmul => "matmul",
            OpKind::Softmax => "softmax",
            OpKind::RmsNorm => "rms_norm",
        }
    }
}

/// A device ops run on. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Device {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl Device {
    /// The CPU, always available.
    pub fn cpu() -> Device {
        Device {
            backend: Arc::new(CpuBackend),
        }
    }

    /// A device over any backend (GPU backends, test backends).
    pub fn from_backend(backend: Arc<dyn Backend>) -> Device {
        Device { backend }
    }

    pub fn name(&self) -> String {
        self.backend.name()
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Runs one kernel on this device.
    pub fn run<T>(&self, _op: OpKind, f: impl Fn(&dyn Backend) -> Result<T>) -> Result<T> {
        f(self.backend.as_ref())
    }
}

impl Default for Device {
    fn default() -> Self {
        Device::cpu()
    }
}
