//! `lowbit quantize IN OUT --format ...`: a safetensors file or Hugging Face model directory to the
//! bitsandbytes (nf4, fp4, int8) or BitNet (ternary) layout that transformers loads pre-quantized.
//! Weights holding NaN or Inf are rejected (`lowbit::ops::ensure_finite`).

use super::CliResult;
use crate::outln;
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
    /// 4-bit block size (default 64, what transformers uses; nf4 / fp4 only).
    #[arg(long)]
    pub blocksize: Option<usize>,
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
    /// Replace an existing output (only a previous lowbit output; never the input or another directory).
    #[arg(long)]
    pub force: bool,
    /// With --format ternary: ternarize a model that was not trained for BitNet b1.58 anyway. Post-training
    /// ternarization ruins ordinary models (perplexity rises by orders of magnitude); refused without this.
    #[arg(long)]
    pub allow_ptq_ternary: bool,
}

pub fn run(args: Args, global: &Global) -> CliResult {
    let format: QuantFormat = args.format.parse()?;
    let four_bit = matches!(format, QuantFormat::FourBit(_));
    if let (Some(b), false) = (args.blocksize, four_bit) {
        return Err(format!(
            "--blocksize {b} applies to nf4 / fp4 only; {} has no block size (int8 scales each row, ternary \
             the whole tensor): drop --blocksize",
            format.name()
        )
        .into());
    }
    if args.allow_ptq_ternary && format != QuantFormat::Ternary {
        return Err("--allow-ptq-ternary applies to --format ternary only".into());
    }
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
            blocksize: args.blocksize.unwrap_or(64),
            double_quant: args.double_quant,
        },
        compute_dtype,
        include: args.include,
        exclude: args.exclude,
        force: args.force,
        allow_ptq_ternary: args.allow_ptq_ternary,
    };
    let dev = super::open_device(global)?;
    let job = QuantizeJob::prepare(&args.input, &args.output, opts)?;
    let pb = output::byte_progress(job.total_bytes(), global.quiet || global.json, "quantizing");
    let stale = job.stale_temporaries().clone();
    let report = job.run(&dev, &mut |done| pb.set_position(done))?;
    pb.finish_and_clear();
    // Peak RSS is the process's VmHWM (Linux /proc/self/status): resident memory at its highest, the
    // binary and every thread included; page cache is not counted.
    let peak = lowbit::io::peak_rss_bytes();
    let secs = report.seconds.max(1e-9);
    let (in_mb_s, out_mb_s) = (
        report.bytes_in as f64 / 1e6 / secs,
        report.bytes_out as f64 / 1e6 / secs,
    );
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
            "input_mb_per_s": in_mb_s, "output_mb_per_s": out_mb_s,
            "memory_budget_bytes": report.memory_budget,
            "mean_rel_error": report.mean_rel_error, "max_rel_error": report.max_rel_error,
            "peak_rss_bytes": peak, "per_tensor": tensors,
            "copied_files": report.copied,
            "skipped_files": report.skipped_files.iter()
                .map(|(n, why)| serde_json::json!({"name": n, "reason": why})).collect::<Vec<_>>(),
            "skip_modules": report.skip_modules,
            "warnings": report.warnings,
            "stale_temporaries_removed": stale.removed,
            "stale_temporaries_kept": stale.kept,
        }))?;
    } else {
        outln!(
            "{}: {} tensors ({} quantized to {}), {} shard(s)\n  bytes {} -> {} ({:.2}x)\n  time {:.2} s \
             (input {:.0} MB/s, output {:.0} MB/s), peak memory {} (VmHWM)\n  mean relative error {:.4} \
             (max {:.4})",
            crate::output::printable(&report.output.display().to_string()),
            report.tensors.len(),
            report.quantized,
            format.name(),
            report.shards,
            human(report.bytes_in),
            human(report.bytes_out),
            report.bytes_in as f64 / report.bytes_out.max(1) as f64,
            report.seconds,
            in_mb_s,
            out_mb_s,
            peak.map(human)
                .unwrap_or_else(|| "not reported on this OS".into()),
            report.mean_rel_error,
            report.max_rel_error,
        );
        let p = crate::output::printable;
        if !report.copied.is_empty() {
            let names: Vec<_> = report.copied.iter().map(|n| p(n)).collect();
            outln!("  copied {}", names.join(", "));
        }
        for (name, why) in &report.skipped_files {
            outln!("  not copied: {} ({why})", p(name));
        }
        if let Some(skip) = &report.skip_modules {
            outln!(
                "  config.json lists {} module(s) as not quantized (llm_int8_skip_modules / modules_to_not_convert)",
                skip.len()
            );
        }
        for w in &report.warnings {
            outln!("  warning: {w}");
        }
        for t in &stale.removed {
            outln!(
                "  removed {} left by an earlier, interrupted run",
                p(&t.display().to_string())
            );
        }
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
