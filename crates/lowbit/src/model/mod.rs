//! Causal language models on device tensors: configs, checkpoints, LoRA adapters, the forward pass,
//! tokenizers, sampling, generation and perplexity.

pub mod adapter;
pub mod checkpoint;
pub mod config;
pub mod generate;
mod kv_cache;
pub mod llama;
mod loader;
pub mod perplexity;
mod projections;
pub mod sampling;
pub mod tokenizer;

pub use config::{Architecture, ModelConfig};
pub use generate::{GenerateOptions, GenerateStats, Generator};
pub use llama::{KvCache, LoadOptions, Model};
pub use sampling::SamplingParams;
pub use tokenizer::{Message, TextStream, TextTokenizer};
