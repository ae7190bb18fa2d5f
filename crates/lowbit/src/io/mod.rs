//! Checkpoints: safetensors files and Hugging Face model directories in the bitsandbytes / transformers
//! layout (FORMATS.md §5, §7, §9). Reading validates every header, index and JSON as untrusted input;
//! writing streams tensor by tensor with bounded memory and renames complete outputs into place.

mod byte_budget;
mod chunk_encode;
pub mod dequantize_model;
pub mod hf_config;
pub mod inspect;
pub mod layout;
pub mod model_dir;
mod quant_error;
pub mod quantize_model;
mod quantize_stream;
pub mod safetensors_read;
pub mod safetensors_write;
mod st_dtype;
mod stream_read;
pub mod temps;

pub use dequantize_model::DequantizeJob;
pub use inspect::{InspectReport, inspect};
pub use layout::{QuantFormat, QuantSpec};
pub use quantize_model::{QuantizeJob, QuantizeOptions, QuantizeReport};
pub use safetensors_read::SafetensorsFile;
pub use st_dtype::StDtype;

use crate::Error;
use std::path::Path;

/// An [`Error::Checkpoint`] for `path`.
pub(crate) fn checkpoint_error(path: &Path, detail: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Peak resident memory of this process in bytes (`VmHWM`), where the OS reports it (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
