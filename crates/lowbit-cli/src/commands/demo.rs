//! `lowbit demo`: the built-in main job. Builds one Llama-7B-shaped decoder layer (fixed seed, bf16, Gaussian
//! rows of varying scale with a few outlier input columns), quantizes it in every format, reports size,
//! compression, error and throughput, and checks every fused kernel against dequantize-then-multiply.

use super::CliResult;
use crate::Global;
use crate::outln;
use crate::output::{print_json, progress};
use lowbit::metrics::{ErrorStats, error_stats, max_rel_err as rel_err};
use lowbit::ops::Linear8bitLt;
use lowbit::ops::{BitLinear, Quantized4bit};
use lowbit::synth::{WeightSpec, linear_weight, normal};
use lowbit::tensor::{DType, Tensor};
use lowbit::{Device, FourBitType};
use serde_json::json;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Number of decoder layers to synthesize (each has 7 projections, 202M parameters).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    layers: u16,
    /// Seed for the synthetic weights.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Divide every dimension by this factor (a quick smoke run: `--shrink 16`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    shrink: u64,
}

/// Llama-7B projection shapes [out, in].
const LLAMA7B_LAYER: [(&str, usize, usize); 7] = [
    ("q_proj", 4096, 4096),
    ("k_proj", 4096, 4096),
    ("v_proj", 4096, 4096),
    ("o_proj", 4096, 4096),
    ("gate_proj", 11008, 4096),
    ("up_proj", 11008, 4096),
    ("down_proj", 4096, 11008),
];

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Nf4,
    Nf4Dq,
    Fp4,
    Blockwise8,
    Int8Rowwise,
    Ternary,
}

const FORMATS: [Format; 6] = [
    Format::Nf4,
    Format::Nf4Dq,
    Format::Fp4,
    Format::Blockwise8,
    Format::Int8Rowwise,
    Format::Ternary,
];

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Nf4 => "nf4 (bs 64)",
            Format::Nf4Dq => "nf4 + double quant",
            Format::Fp4 => "fp4 (bs 64)",
            Format::Blockwise8 => "8-bit blockwise (bs 256)",
            Format::Int8Rowwise => "LLM.int8() rows",
            Format::Ternary => "BitNet b1.58 ternary",
        }
    }
}

/// One quantized matrix: stored bytes, its dequantized values, and a handle for the fused checks.
struct Quantized {
    bytes: usize,
    dequant: Vec<f32>,
    layer: Layer,
}

enum Layer {
    FourBit(Quantized4bit),
    Int8(Linear8bitLt),
    Ternary(BitLinear),
    None,
}

/// Runs `f`, adding its wall time to `seconds`.
fn timed<T>(seconds: &mut f64, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    *seconds += t.elapsed().as_secs_f64();
    out
}

/// Quantizes `w` in `fmt`; only the quantization itself is added to `seconds`.
fn quantize(dev: &Device, fmt: Format, w: &Tensor, seconds: &mut f64) -> lowbit::Result<Quantized> {
    Ok(match fmt {
        Format::Nf4 | Format::Nf4Dq | Format::Fp4 => {
            let qt = if fmt == Format::Fp4 {
                FourBitType::Fp4
            } else {
                FourBitType::Nf4
            };
            let q = timed(seconds, || {
                dev.quantize_4bit(w, qt, 64, fmt == Format::Nf4Dq)
            })?;
            let bytes = q.packed.len()
                + match &q.state.absmax {
                    lowbit::format::Absmax::Plain(a) => a.len() * 4,
                    lowbit::format::Absmax::Nested {
                        absmax_q,
                        nested_absmax,
                        nested_code,
                        ..
                    } => absmax_q.len() + nested_absmax.len() * 4 + nested_code.len() * 4 + 4,
                };
            let dequant = dev
                .dequantize_4bit_as(&q, DType::F32)?
                .floats("demo")?
                .to_f32_vec();
            Quantized {
                bytes,
                dequant,
                layer: Layer::FourBit(q),
            }
        }
        Format::Blockwise8 => {
            let q = timed(seconds, || dev.quantize_blockwise(w, 256, None))?;
            let bytes = q.codes.len() + q.absmax.len() * 4;
            let dequant = dev
                .dequantize_blockwise(&q, Some(DType::F32))?
                .floats("demo")?
                .to_f32_vec();
            Quantized {
                bytes,
                dequant,
                layer: Layer::None,
            }
        }
        Format::Int8Rowwise => {
            let l = timed(seconds, || Linear8bitLt::from_weight(dev, w, None, 0.0))?;
            let qt = Tensor::new(w.shape().to_vec(), l.weight.clone())?;
            let dequant = dev
                .int8_vectorwise_dequant(&qt, &l.scb)?
                .floats("demo")?
                .to_f32_vec();
            Quantized {
                bytes: l.weight.len() + l.scb.len() * 4,
                dequant,
                layer: Layer::Int8(l),
            }
        }
        Format::Ternary => {
            let t = timed(seconds, || dev.ternary_quantize(w))?;
            let tern = lowbit::format::ternary::unpack(&t.packed, t.rows, t.cols);
            let dequant = tern.iter().map(|&v| v as f32 / t.weight_scale).collect();
            Quantized {
                bytes: t.packed.len() + 4,
                dequant,
                layer: Layer::Ternary(BitLinear {
                    weight: t,
                    bias: None,
                }),
            }
        }
    })
}

/// One fused-kernel check: the fused result against a dense matmul with the dequantized operands.
struct Check {
    kernel: &'static str,
    format: &'static str,
    shape: String,
    rel_err: f64,
    bound: f64,
}

impl Check {
    /// NaN fails.
    fn passed(&self) -> bool {
        self.rel_err <= self.bound
    }
}

fn fused_checks(
    dev: &Device,
    fmt: Format,
    q: &Quantized,
    rows: usize,
    cols: usize,
    seed: u64,
) -> lowbit::Result<Vec<Check>> {
    let wdq = Tensor::f32(vec![rows, cols], q.dequant.clone())?;
    let mut out = Vec::new();
    for batch in [1usize, 8] {
        let x = normal(vec![batch, cols], 1.0, seed ^ batch as u64, DType::F32);
        let shape = format!("{batch}x{cols} · {rows}x{cols}ᵀ");
        match &q.layer {
            Layer::FourBit(q4) => {
                let y = dev.matmul_4bit(&x, q4, None)?;
                let want = dev.matmul(&x, &wdq, None)?;
                let kernel = if batch == 1 {
                    "gemv_4bit"
                } else {
                    "matmul_4bit"
                };
                let err = rel_err(
                    &y.floats("demo")?.to_f32_vec(),
                    &want.floats("demo")?.to_f32_vec(),
                );
                out.push(Check {
                    kernel,
                    format: fmt.name(),
                    shape,
                    rel_err: err,
                    bound: 1e-5,
                });
            }
            Layer::Int8(l) => {
                // Same int8 operands, dequantized: only f16 output rounding separates the two.
                let x16 = normal(vec![batch, cols], 1.0, seed ^ batch as u64, DType::F16);
                let y = l.forward(dev, &x16)?;
                let xq = dev.int8_vectorwise_quant(&x16, 0.0)?;
                let xq_t = Tensor::new(vec![batch, cols], xq.q)?;
                let xdq = dev.int8_vectorwise_dequant(&xq_t, &xq.row_stats)?;
                let want = dev.matmul(&xdq, &wdq, None)?;
                let err = rel_err(
                    &y.floats("demo")?.to_f32_vec(),
                    &want.floats("demo")?.to_f32_vec(),
                );
                out.push(Check {
                    kernel: "int8 Linear8bitLt",
                    format: fmt.name(),
                    shape,
                    rel_err: err,
                    bound: 2e-3,
                });
            }
            Layer::Ternary(b) => {
                let y = dev.bitlinear(&x, b)?;
                let (xq, xs) = dev.ternary_act_quant(&x)?;
                let xdq: Vec<f32> = xq
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| v as f32 / xs[i / cols])
                    .collect();
                let want = dev.matmul(&Tensor::f32(vec![batch, cols], xdq)?, &wdq, None)?;
                let err = rel_err(
                    &y.floats("demo")?.to_f32_vec(),
                    &want.floats("demo")?.to_f32_vec(),
                );
                out.push(Check {
                    kernel: "ternary matmul",
                    format: fmt.name(),
                    shape,
                    rel_err: err,
                    bound: 1e-5,
                });
            }
            Layer::None => {}
        }
    }
    Ok(out)
}

struct Row {
    format: Format,
    params: usize,
    bytes: usize,
    err: ErrorStats,
    quant_seconds: f64,
}

pub fn run(args: Args, global: &Global) -> CliResult {
    let dev = super::open_device(global)?;
    let mats: Vec<(String, usize, usize)> = (0..args.layers as usize)
        .flat_map(|l| {
            let k = args.shrink as usize;
            LLAMA7B_LAYER
                .iter()
                .map(move |&(n, r, c)| (format!("layers.{l}.{n}"), r / k, c / k))
        })
        .collect();
    let pb = progress(
        (mats.len() * (FORMATS.len() + 1)) as u64,
        global.quiet || global.json,
        "synthesizing",
    );
    let started = Instant::now();
    let weights: Vec<Tensor> = mats
        .iter()
        .enumerate()
        .map(|(i, (_, r, c))| {
            let spec = WeightSpec {
                rows: *r,
                cols: *c,
                std: 0.02,
                outlier_cols: 6,
                outlier_scale: 25.0,
                seed: args.seed.wrapping_add(i as u64),
            };
            let w = linear_weight(spec, DType::BF16);
            pb.inc(1);
            w
        })
        .collect();
    let original: Vec<Vec<f32>> = weights
        .iter()
        .map(|w| w.floats("demo").map(|f| f.to_f32_vec()))
        .collect::<Result<_, _>>()?;
    let params: usize = weights.iter().map(Tensor::numel).sum();
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    for fmt in FORMATS {
        pb.set_message(fmt.name());
        let (mut bytes, mut quant_seconds) = (0usize, 0.0f64);
        let (mut all_ref, mut all_deq) = (Vec::new(), Vec::new());
        for (i, w) in weights.iter().enumerate() {
            let q = quantize(&dev, fmt, w, &mut quant_seconds)?;
            bytes += q.bytes;
            all_ref.extend_from_slice(&original[i]);
            all_deq.extend_from_slice(&q.dequant);
            // Fused kernels are checked on the first projection and the widest one (down_proj).
            let (_, r, c) = &mats[i];
            if i == 0 || i == LLAMA7B_LAYER.len() - 1 {
                checks.extend(fused_checks(&dev, fmt, &q, *r, *c, args.seed)?);
            }
            pb.inc(1);
        }
        rows.push(Row {
            format: fmt,
            params,
            bytes,
            err: error_stats(&all_ref, &all_deq),
            quant_seconds,
        });
    }
    pb.finish_and_clear();
    let failed = checks.iter().filter(|c| !c.passed()).count();
    if global.json {
        print_json(&json!({
            "device": dev.name(),
            "layers": args.layers,
            "parameters": params,
            "seconds": started.elapsed().as_secs_f64(),
            "formats": rows.iter().map(|r| json!({
                "format": r.format.name(),
                "bytes": r.bytes,
                "bits_per_weight": r.bytes as f64 * 8.0 / r.params as f64,
                "compression_vs_bf16": (r.params * 2) as f64 / r.bytes as f64,
                "rmse": r.err.rmse, "sqnr_db": r.err.sqnr_db, "max_abs": r.err.max_abs,
                "quantize_gbps": (r.params * 2) as f64 / r.quant_seconds / 1e9,
            })).collect::<Vec<_>>(),
            "statistics": lowbit::runtime::stats_snapshot(),
            "checks": checks.iter().map(|c| json!({
                "kernel": c.kernel, "format": c.format, "shape": c.shape,
                "rel_err": c.rel_err, "bound": c.bound, "ok": c.passed(),
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        outln!(
            "lowbit demo: {} Llama-7B-shaped layer(s), {} projections, {:.1}M bf16 parameters ({:.0} MB), device {}\n",
            args.layers,
            mats.len(),
            params as f64 / 1e6,
            (params * 2) as f64 / 1e6,
            dev.name()
        );
        outln!(
            "{:<26} {:>8} {:>10} {:>8} {:>10} {:>9} {:>9} {:>10}",
            "format",
            "bits/w",
            "size MB",
            "vs bf16",
            "RMSE",
            "SQNR dB",
            "max abs",
            "quant GB/s"
        );
        for r in &rows {
            outln!(
                "{:<26} {:>8.3} {:>10.1} {:>7.2}x {:>10.3e} {:>9.2} {:>9.4} {:>10.2}",
                r.format.name(),
                r.bytes as f64 * 8.0 / r.params as f64,
                r.bytes as f64 / 1e6,
                (r.params * 2) as f64 / r.bytes as f64,
                r.err.rmse,
                r.err.sqnr_db,
                r.err.max_abs,
                (r.params * 2) as f64 / r.quant_seconds / 1e9
            );
        }
        outln!("\nfused kernels vs dequantize-then-multiply (max |Δ| / max |y|):");
        for c in &checks {
            let verdict = if c.passed() { "ok" } else { "FAIL" };
            outln!(
                "  {:<18} {:<26} {:<24} {:>10.2e} (bound {:.0e}) {verdict}",
                c.kernel,
                c.format,
                c.shape,
                c.rel_err,
                c.bound
            );
        }
        outln!(
            "\nruntime statistics:\n{}",
            lowbit::runtime::stats_snapshot()
        );
        outln!(
            "\n{} checks, {} failed; {:.1} s",
            checks.len(),
            failed,
            started.elapsed().as_secs_f64()
        );
    }
    if failed > 0 {
        return Err(format!("{failed} fused-kernel check(s) exceeded their bound").into());
    }
    Ok(())
}
