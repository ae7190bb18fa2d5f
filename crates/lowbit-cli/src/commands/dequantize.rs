//! `lowbit dequantize IN OUT`: a bitsandbytes / BitNet checkpoint (lowbit's or transformers') back to floats.

use super::CliResult;
use super::quantize::human;
use crate::outln;
use crate::{Global, output};
use lowbit::DType;
use lowbit::io::DequantizeJob;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Quantized model directory or .safetensors file.
    pub input: PathBuf,
    /// Output directory (or file).
    pub output: PathBuf,
    /// Dtype of dequantized weights: f16, bf16 or f32 (default: each weight's original dtype; f16 for int8).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args, global: &Global) -> CliResult {
    let dtype = args
        .dtype
        .as_deref()
        .map(|d| {
            DType::parse(d)
                .filter(|d| d.is_float())
                .ok_or_else(|| format!("--dtype {d:?}: use f16, bf16 or f32"))
        })
        .transpose()?;
    let dev = super::open_device(global)?;
    let job = DequantizeJob::prepare(&args.input, &args.output, dtype, args.force)?;
    let pb = output::byte_progress(
        job.total_bytes(),
        global.quiet || global.json,
        "dequantizing",
    );
    let r = job.run(&dev, &mut |done| pb.set_position(done))?;
    pb.finish_and_clear();
    if global.json {
        output::print_json(&serde_json::json!({
            "output": r.output, "tensors": r.tensors, "dequantized": r.dequantized,
            "bytes_in": r.bytes_in, "bytes_out": r.bytes_out, "seconds": r.seconds,
        }))?;
    } else {
        outln!(
            "{}: {} tensors ({} dequantized), bytes {} -> {}, time {:.2} s",
            r.output.display(),
            r.tensors,
            r.dequantized,
            human(r.bytes_in),
            human(r.bytes_out),
            r.seconds
        );
    }
    Ok(())
}
