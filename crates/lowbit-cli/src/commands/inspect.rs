//! `lowbit inspect PATH`: per tensor format, block size, shape and bytes; model summary.

use super::CliResult;
use super::quantize::human;
use crate::outln;
use crate::{Global, output};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory or .safetensors file.
    pub path: PathBuf,
}

pub fn run(args: Args, global: &Global) -> CliResult {
    let r = lowbit::io::inspect(&args.path)?;
    if global.json {
        let entries: Vec<_> = r
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name, "format": e.format, "blocksize": e.blocksize,
                    "double_quant": e.double_quant, "shape": e.shape,
                    "original_dtype": e.original_dtype.name(), "bytes": e.bytes, "params": e.params,
                    "shard": e.shard,
                })
            })
            .collect();
        output::print_json(&serde_json::json!({
            "tensors": entries, "params": r.params, "quantized_params": r.quantized_params,
            "bytes": r.bytes, "original_bytes": r.original_bytes, "bits_per_weight": r.bits_per_weight,
            "compression": r.compression, "quantization_config": r.quantization_config,
        }))?;
        return Ok(());
    }
    // Names come from an untrusted file: control characters are escaped, never sent to the terminal.
    let names: Vec<_> = r
        .entries
        .iter()
        .map(|e| output::printable(&e.name))
        .collect();
    let w = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!(
        "{:<w$}  {:<8} {:>5}  {:<18} {:>12}",
        "name",
        "format",
        "block",
        "shape",
        "bytes"
    );
    for (e, name) in r.entries.iter().zip(&names) {
        let block = e
            .blocksize
            .map(|b| format!("{b}{}", if e.double_quant { "+dq" } else { "" }));
        outln!(
            "{:<w$}  {:<8} {:>5}  {:<18} {:>12}",
            name,
            e.format,
            block.unwrap_or_else(|| "-".into()),
            format!("{:?}", e.shape),
            e.bytes
        );
    }
    outln!(
        "\n{} tensors, {} parameters ({} quantized), {} on disk ({} in original dtypes)\n\
         {:.3} bits per weight, compression {:.2}x\n\
         every tensor passed the checks dequantize makes (quant_state, code maps, lengths, scales); \
         the packed values themselves were not read",
        r.entries.len(),
        r.params,
        r.quantized_params,
        human(r.bytes),
        human(r.original_bytes),
        r.bits_per_weight,
        r.compression
    );
    Ok(())
}
