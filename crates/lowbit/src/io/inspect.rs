//! `inspect`: what a checkpoint holds, per logical tensor (format, block size, original shape, bytes on disk)
//! and in total (parameters, bits per weight, compression against the original dtypes). Every group passes the
//! checks loading it would make ([`layout::check`]: quant_state JSON, code maps, every length, int8 scales,
//! ternary packing), so a checkpoint `dequantize` would reject is an error here too. Reads headers, the
//! quant_state JSON and the code maps; the packed data and scale values themselves are not read.

use super::StDtype;
use super::layout::{self, Group};
use super::model_dir::ModelInput;
use crate::Result;
use std::path::Path;

/// One logical tensor.
#[derive(Clone, Debug)]
pub struct InspectEntry {
    pub name: String,
    /// `nf4`, `fp4`, `int8`, `ternary`, or the plain dtype (`BF16`, ...).
    pub format: String,
    pub blocksize: Option<usize>,
    pub double_quant: bool,
    pub shape: Vec<usize>,
    /// The dtype the weight had before quantization (or its dtype if plain).
    pub original_dtype: StDtype,
    /// Bytes of every key of the group.
    pub bytes: u64,
    pub params: u64,
    pub shard: String,
}

#[derive(Clone, Debug)]
pub struct InspectReport {
    pub entries: Vec<InspectEntry>,
    pub params: u64,
    pub quantized_params: u64,
    pub bytes: u64,
    /// Bytes the same tensors take in their original dtypes.
    pub original_bytes: u64,
    pub bits_per_weight: f64,
    pub compression: f64,
    pub quantization_config: Option<serde_json::Value>,
}

pub fn inspect(path: &Path) -> Result<InspectReport> {
    let input = ModelInput::open(path)?;
    let files = input.open_shards()?;
    let mut entries = Vec::new();
    for (i, file) in files.iter().enumerate() {
        for g in layout::groups(file)? {
            layout::check(file, &g)?;
            let (shape, original_dtype) = layout::original_shape_dtype(file, &g)?;
            let mut bytes = 0u64;
            for k in g.keys() {
                bytes += file.require(&k)?.nbytes() as u64;
            }
            let (blocksize, double_quant) = match &g {
                Group::FourBit { weight, .. } => {
                    let js = layout::fourbit_json(file, weight)?.1;
                    (Some(js.blocksize), js.nested_offset.is_some())
                }
                _ => (None, false),
            };
            entries.push(InspectEntry {
                name: g.weight().to_string(),
                format: g
                    .format_name()
                    .map(str::to_string)
                    .unwrap_or_else(|| original_dtype.name().to_string()),
                blocksize,
                double_quant,
                params: shape.iter().product::<usize>() as u64,
                shape,
                original_dtype,
                bytes,
                shard: input.shards[i].to_string_lossy().to_string(),
            });
        }
    }
    let params = entries.iter().map(|e| e.params).sum();
    let quantized_params = entries
        .iter()
        .filter(|e| e.blocksize.is_some() || matches!(e.format.as_str(), "int8" | "ternary"))
        .map(|e| e.params)
        .sum();
    let bytes: u64 = entries.iter().map(|e| e.bytes).sum();
    let original_bytes: u64 = entries
        .iter()
        .map(|e| e.params * e.original_dtype.size() as u64)
        .sum();
    Ok(InspectReport {
        bits_per_weight: if params == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / params as f64
        },
        compression: if bytes == 0 {
            1.0
        } else {
            original_bytes as f64 / bytes as f64
        },
        entries,
        params,
        quantized_params,
        bytes,
        original_bytes,
        quantization_config: input
            .config
            .as_ref()
            .and_then(|c| c.get("quantization_config").cloned()),
    })
}
