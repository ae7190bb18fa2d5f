//! lowbit: bitsandbytes-exact low-bit quantization (NF4, FP4, 8-bit blockwise, LLM.int8(), BitNet b1.58)
//! with fused kernels, on the CPU and on GPUs.
//!
//! Layers, bottom up: [`format`] (code maps, packing, QuantState: pure data shared by all backends),
//! [`tensor`], [`backend`] (one trait, one method per kernel; the CPU reference is the executable spec),
//! [`ops`] (the public op API, which validates inputs once).

pub mod backend;
pub mod bench;
pub mod capability;
pub mod device_tensor;
pub mod error;
pub mod format;
pub mod io;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod ops;
pub mod runtime;
pub mod synth;
pub mod tensor;

pub use device_tensor::DeviceTensor;
pub use error::{Error, Result};
pub use format::{FourBitType, QuantState};
pub use runtime::Device;
pub use tensor::{DType, FloatVec, Floats, Tensor};
