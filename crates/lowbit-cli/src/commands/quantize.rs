//! `lowbit quantize IN OUT --format ...`: a safetensors file or Hugging Face model directory to the
//! bitsandbytes (nf4, fp4, int8) or BitNet (ternary) layout that transformers loads pre-quantized.
//! Weights holding NaN or Inf are rejected (`lowbit::ops::ensure_finite`).

use super::CliResult;
use crate::{Global, output};
use lowbit::DType;
use lowbit::io::{QuantFormat, QuantSpec, QuantizeJob, QuantizeOptions};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Input: a model directory (config.json + model.safetensors or shards + index) or a .safetensors file.
    pub input: PathBuf,
    /// Output directory (or file, for a file input). Written under a temporary name, renamed when complete.
    pub output: PathBuf,
    /// nf4, fp4 (bitsandbytes 4-bit), int8 (LLM.int8()), ternary (BitNet b1.58).
    #[arg(long)]
    pub format: String,
    /// 4-bit block size (transformers uses 64).
    #[arg(long, default_value_t = 64)]
    pub blocksize: usize,
    /// 4-bit double quantization of the block scales (bnb_4bit_use_double_quant).
    #[arg(long)]
    pub double_quant: bool,
    /// bnb_4bit_compute_dtype written to config.json: f16, bf16 or f32.
    #[arg(long, default_value = "f32")]
    pub compute_dtype: String,
    /// Also quantize 2-D float tensors whose name matches this regular expression.
    #[arg(long)]
    pub include: Option<String>,
    /// Never quantize tensors whose name matches this regular expression.
    #[arg(long)]
    pub exclude: Option<String>,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args, global: &Global) -> CliResult {
    let format: QuantFormat = args.format.parse()?;
    let compute_dtype = DType::parse(&args.compute_dtype)
        .filter(|d| d.is_float())
        .ok_or_else(|| {
            format!(
                "--compute-dtype {:?}: use f16, bf16 or f32",
                args.compute_dtype
            )
        })?;
    let opts = QuantizeOptions {
        spec: QuantSpec {
            format,
            blocksize: args.blocksize,
            double_quant: args.double_quant,
        },
        compute_dtype,
        include: args.include,
        exclude: args.exclude,
        force: args.force,
    };
    let dev = super::open_device(global)?;
    let job = QuantizeJob::prepare(&args.input, &args.output, opts)?;
    let pb = output::byte_progress(job.total_bytes(), global.quiet || global.json, "quantizing");
    let report = job.run(&dev, &mut |done| pb.set_position(done))?;
    pb.finish_and_clear();
    let peak = lowbit::io::peak_rss_bytes();
    if global.json {
        let tensors: Vec<_> = report
            .tensors
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name, "shape": t.shape, "dtype": t.dtype.name(),
                    "bytes_in": t.bytes_in, "bytes_out": t.bytes_out, "rel_error": t.rel_error,
                })
            })
            .collect();
        output::print_json(&serde_json::json!({
            "output": report.output, "format": format.name(), "tensors": report.tensors.len(),
            "quantized": report.quantized, "shards": report.shards, "bytes_in": report.bytes_in,
            "bytes_out": report.bytes_out, "seconds": report.seconds,
            "mean_rel_error": report.mean_rel_error, "max_rel_error": report.max_rel_error,
            "peak_rss_bytes": peak, "per_tensor": tensors,
        }));
    } else {
        println!(
            "{}: {} tensors ({} quantized to {}), {} shard(s)\n  bytes {} -> {} ({:.2}x)\n  time {:.2} s, \
             mean relative error {:.4} (max {:.4}){}",
            report.output.display(),
            report.tensors.len(),
            report.quantized,
            format.name(),
            report.shards,
            human(report.bytes_in),
            human(report.bytes_out),
            report.bytes_in as f64 / report.bytes_out.max(1) as f64,
            report.seconds,
            report.mean_rel_error,
            report.max_rel_error,
            peak.map(|p| format!(", peak RSS {}", human(p)))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

/// Bytes in binary units.
pub fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}
