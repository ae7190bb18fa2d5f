//! Pure definitions shared by every backend: code maps, thresholds, packing layouts, the quantization state,
//! and the two CUDA quirks that bytes depend on (the hardware reciprocal and torch's mean order).
//! Each fact lives here once; kernels (CPU and GPU) take their tables from this module.

pub mod activation;
pub mod blocksize;
pub mod codebook;
pub mod float;
pub mod fourbit;
pub mod int8;
pub mod pyrepr;
pub mod q8;
pub mod quant_state;
pub mod rcp;
pub mod rope;
pub mod ternary;
pub mod torch_mean;

pub use blocksize::{BLOCKSIZES_4BIT, BLOCKSIZES_8BIT, NESTED_BLOCKSIZE};
pub use codebook::{Codebook8, dynamic_map};
pub use fourbit::FourBitType;
pub use quant_state::{Absmax, QuantState};
pub use rcp::rcp_approx;
