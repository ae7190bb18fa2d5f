//! Layers and blocks built from device ops.

pub mod decoder;
pub mod linear;
pub mod lora;

pub use decoder::{BlockConfig, BlockOp, BlockWeights, DecoderBlock};
pub use linear::{Linear, LinearWeight, LoadFormat};
pub use lora::{LoraAdapter, LoraWeights};
