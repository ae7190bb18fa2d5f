//! Devices: where ops run. A [`Device`] wraps one backend; every op goes through [`Device::run`] /
//! [`Device::run_split`], the single place where policy (validation against capabilities and memory,
//! retries, chunking, CPU fallback, statistics) applies. See `docs/RUNTIME.md`.

mod device;
pub mod discovery;
pub mod error;
pub mod info;
pub mod join;
pub mod memory;
pub mod policy;
pub mod selection;
pub mod stats;

pub use device::Device;
pub use discovery::{cpu_info, devices};
pub use error::{DeviceError, DeviceErrorKind};
pub use info::{DeviceInfo, DeviceType, OpParams, Support};
pub use join::Join;
pub use memory::MemoryEstimate;
pub use policy::RecoveryPolicy;
pub use selection::{AutoChoice, DeviceSpec, auto_select, open_backend};
pub use stats::{DeviceStatsSnapshot, OpStats, StatsSnapshot, stats_snapshot};

/// The kernels, by name: the unit of capability checks and statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
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
