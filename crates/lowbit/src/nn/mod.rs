//! Layers and blocks built from device ops.

pub mod decoder;

pub use decoder::{BlockConfig, BlockWeights, DecoderBlock};
