//! `lowbit bench`: times one op (or all of them) on a device and relates the result to the machine's memory
//! read bandwidth, measured in the same run.

use super::CliResult;
use crate::Global;
use crate::output::print_json;
use crate::{out, outln};
use lowbit::ops::{BitLinear, Linear8bitLt};
use lowbit::synth::{WeightSpec, linear_weight, normal};
use lowbit::tensor::{DType, FloatVec, Tensor};
use lowbit::{Device, FourBitType};
use serde_json::json;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Op to time, or `all`.
    #[arg(long, value_parser = op_parser(), required_unless_present = "resident")]
    op: Option<String>,
    /// On a GPU device (vulkan / metal / dx12): the GPU kernel suite on device-resident buffers, timed on
    /// the GPU, against a plain copy kernel on the same device (the LLM shapes; --op/--shape do not apply).
    #[arg(long, conflicts_with = "op")]
    resident: bool,
    /// With --resident: smaller bulk inputs and GEMM batch (software adapters).
    #[arg(long, requires = "resident")]
    quick: bool,
    /// With --resident: also every work split of the GEMV kernels and every quantizer variant.
    #[arg(long, requires = "resident")]
    sweep: bool,
    /// Weight / data shape OUTxIN (rows x columns).
    #[arg(long, default_value = "4096x4096")]
    shape: String,
    /// Batch (activation rows) for linear ops.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// 4-bit format for 4-bit ops.
    #[arg(long, default_value = "nf4")]
    format: String,
    /// Data type of float inputs.
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// Block size for blockwise ops (default: 64 for 4-bit, 4096 for 8-bit, as bitsandbytes).
    #[arg(long)]
    blocksize: Option<usize>,
    /// Timed iterations (after one warm-up); default: as many as fit in about a second, at least 5.
    #[arg(long)]
    iters: Option<usize>,
}

const OPS: &[&str] = &[
    "quantize_blockwise",
    "dequantize_blockwise",
    "quantize_4bit",
    "dequantize_4bit",
    "gemv_4bit",
    "matmul_4bit",
    "int8_vectorwise_quant",
    "int8_linear_matmul",
    "int8_mm_dequant",
    "linear8bitlt",
    "ternary_quantize",
    "ternary_act_quant",
    "ternary_matmul",
    "matmul",
    "softmax",
    "rms_norm",
];
/// The accepted `--op` values: every op, or `all`.
fn op_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(OPS.iter().copied().chain(["all"]))
}

type Job = Box<dyn FnMut() -> lowbit::Result<()>>;

/// A prepared benchmark: the bytes it must move at least, its floating-point (or integer) operations, and the
/// closure that runs it once.
struct Prepared {
    bytes: f64,
    flops: f64,
    job: Job,
}

fn parse_shape(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("shape {s:?} must look like 4096x4096"))?;
    let p = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("shape {s:?} must look like 4096x4096"))
    };
    let (r, c) = (p(a)?, p(b)?);
    if r == 0 || c == 0 {
        return Err(format!("shape {s:?} has a zero dimension"));
    }
    Ok((r, c))
}

fn prepare(
    op: &str,
    dev: &Device,
    args: &Args,
    rows: usize,
    cols: usize,
) -> lowbit::Result<Prepared> {
    let dtype = DType::parse(&args.dtype)
        .filter(|d| d.is_float())
        .ok_or_else(|| lowbit::Error::DType {
            op: "bench",
            got: args.dtype.clone(),
            expected: "f32, f16, bf16",
        })?;
    let qt: FourBitType = args.format.parse()?;
    let sz = dtype.size_in_bytes() as f64;
    let n = (rows * cols) as f64;
    let batch = args.batch.max(1);
    let b = batch as f64;
    let spec = WeightSpec {
        rows,
        cols,
        std: 0.02,
        outlier_cols: 4,
        outlier_scale: 20.0,
        seed: 1,
    };
    let w = linear_weight(spec, dtype);
    let x = normal(vec![batch, cols], 1.0, 2, dtype);
    let d = dev.clone();
    let bs4 = args.blocksize.unwrap_or(64);
    let bs8 = args.blocksize.unwrap_or(4096);
    Ok(match op {
        "quantize_blockwise" => Prepared {
            bytes: n * sz + n + n / bs8 as f64 * 4.0,
            flops: 0.0,
            job: Box::new(move || d.quantize_blockwise(&w, bs8, None).map(drop)),
        },
        "dequantize_blockwise" => {
            let q = dev.quantize_blockwise(&w, bs8, None)?;
            Prepared {
                bytes: n * sz + n + n / bs8 as f64 * 4.0,
                flops: 0.0,
                job: Box::new(move || d.dequantize_blockwise(&q, None).map(drop)),
            }
        }
        "quantize_4bit" => Prepared {
            bytes: n * sz + n / 2.0 + n / bs4 as f64 * 4.0,
            flops: 0.0,
            job: Box::new(move || d.quantize_4bit(&w, qt, bs4, false).map(drop)),
        },
        "dequantize_4bit" => {
            let q = dev.quantize_4bit(&w, qt, bs4, false)?;
            Prepared {
                bytes: n * sz + n / 2.0 + n / bs4 as f64 * 4.0,
                flops: 0.0,
                job: Box::new(move || d.dequantize_4bit(&q).map(drop)),
            }
        }
        "gemv_4bit" | "matmul_4bit" => {
            let q = dev.quantize_4bit(&w, qt, bs4, false)?;
            let xb = if op == "gemv_4bit" {
                normal(vec![1, cols], 1.0, 2, dtype)
            } else {
                x
            };
            let bb = xb.shape()[0] as f64;
            Prepared {
                bytes: n / 2.0 + n / bs4 as f64 * 4.0 + bb * (cols + rows) as f64 * sz,
                flops: 2.0 * bb * n,
                job: Box::new(move || d.matmul_4bit(&xb, &q, None).map(drop)),
            }
        }
        "int8_vectorwise_quant" => {
            let a = normal(vec![rows, cols], 1.0, 3, DType::F16);
            Prepared {
                bytes: n * 2.0 + n + rows as f64 * 4.0,
                flops: 0.0,
                job: Box::new(move || d.int8_vectorwise_quant(&a, 0.0).map(drop)),
            }
        }
        "int8_linear_matmul" => {
            let wq = dev.int8_vectorwise_quant(&to_f16(&w)?, 0.0)?;
            let xq = dev.int8_vectorwise_quant(&to_f16(&x)?, 0.0)?;
            let wt = Tensor::new(vec![rows, cols], wq.q)?;
            let xt = Tensor::new(vec![batch, cols], xq.q)?;
            Prepared {
                bytes: n + b * cols as f64 + b * rows as f64 * 4.0,
                flops: 2.0 * b * n,
                job: Box::new(move || d.int8_linear_matmul(&xt, &wt).map(drop)),
            }
        }
        "int8_mm_dequant" => {
            let c = Tensor::new(
                vec![rows, cols],
                (0..rows * cols)
                    .map(|i| (i % 2001) as i32 - 1000)
                    .collect::<Vec<i32>>(),
            )?;
            let rs: Vec<f32> = (0..rows).map(|i| 1.0 + i as f32 * 1e-3).collect();
            let cs: Vec<f32> = (0..cols).map(|i| 2.0 + i as f32 * 1e-3).collect();
            Prepared {
                bytes: n * 4.0 + n * 2.0,
                flops: 3.0 * n,
                job: Box::new(move || d.int8_mm_dequant(&c, &rs, &cs, None).map(drop)),
            }
        }
        "linear8bitlt" => {
            let layer = Linear8bitLt::from_weight(dev, &w, None, 6.0)?;
            Prepared {
                bytes: n + b * (cols + rows) as f64 * 2.0,
                flops: 2.0 * b * n,
                job: Box::new(move || layer.forward(&d, &x).map(drop)),
            }
        }
        "ternary_quantize" => Prepared {
            bytes: n * sz + n / 4.0,
            flops: 0.0,
            job: Box::new(move || d.ternary_quantize(&w).map(drop)),
        },
        "ternary_act_quant" => {
            let a = normal(vec![rows, cols], 1.0, 3, dtype);
            Prepared {
                bytes: n * sz + n,
                flops: 0.0,
                job: Box::new(move || d.ternary_act_quant(&a).map(drop)),
            }
        }
        "ternary_matmul" => {
            let layer = BitLinear {
                weight: dev.ternary_quantize(&w)?,
                bias: None,
            };
            Prepared {
                bytes: n / 4.0 + b * cols as f64 * sz + b * rows as f64 * 4.0,
                flops: 2.0 * b * n,
                job: Box::new(move || d.bitlinear(&x, &layer).map(drop)),
            }
        }
        "matmul" => Prepared {
            bytes: n * sz + b * (cols + rows) as f64 * sz,
            flops: 2.0 * b * n,
            job: Box::new(move || d.matmul(&x, &w, None).map(drop)),
        },
        "softmax" => Prepared {
            bytes: 2.0 * n * sz,
            flops: 3.0 * n,
            job: Box::new(move || d.softmax(&w).map(drop)),
        },
        "rms_norm" => {
            let g = Tensor::vector(FloatVec::from_f32(vec![1.0; cols], dtype));
            Prepared {
                bytes: 2.0 * n * sz,
                flops: 3.0 * n,
                job: Box::new(move || d.rms_norm(&w, &g, 1e-6).map(drop)),
            }
        }
        other => {
            return Err(lowbit::Error::invalid(
                "bench",
                format!("unknown op {other:?}"),
            ));
        }
    })
}

fn to_f16(t: &Tensor) -> lowbit::Result<Tensor> {
    let v = t.floats("bench")?.to_f32_vec();
    Tensor::from_floats(t.shape().to_vec(), FloatVec::from_f32(v, DType::F16))
}

/// Median seconds of `iters` runs after one warm-up (auto: runs until ~1 s have passed, 5 at least).
fn time(job: &mut Job, iters: Option<usize>) -> lowbit::Result<(f64, usize)> {
    job()?;
    let mut samples = Vec::new();
    let started = Instant::now();
    loop {
        let t = Instant::now();
        job()?;
        samples.push(t.elapsed().as_secs_f64());
        let done = match iters {
            Some(n) => samples.len() >= n.max(1),
            None => {
                samples.len() >= 5 && started.elapsed().as_secs_f64() > 1.0 || samples.len() >= 200
            }
        };
        if done {
            break;
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok((samples[samples.len() / 2], samples.len()))
}

pub fn run(args: Args, global: &Global) -> CliResult {
    let dev = super::open_device(global)?;
    if args.resident {
        return run_resident(&dev, &args, global);
    }
    let (rows, cols) = parse_shape(&args.shape)?;
    // 512 MiB, best of 3: well past the last-level cache, quick enough to measure in every run.
    let read_bw = lowbit::bench::measure_read_bandwidth_with(512 << 20, 3) / 1e9;
    let op = args.op.as_deref().unwrap_or("all");
    let ops: Vec<&str> = if op == "all" { OPS.to_vec() } else { vec![op] };
    let mut results = Vec::new();
    if !global.json {
        outln!(
            "device {}, shape {rows}x{cols}, batch {}, dtype {}, read bandwidth {read_bw:.1} GB/s",
            dev.name(),
            args.batch,
            args.dtype
        );
        outln!(
            "{:<22} {:>11} {:>9} {:>10} {:>9} {:>6}",
            "op",
            "median",
            "GB/s",
            "GFLOP/s",
            "of read",
            "iters"
        );
    }
    for op in ops {
        let mut p = prepare(op, &dev, &args, rows, cols)?;
        let (median, iters) = time(&mut p.job, args.iters)?;
        let gbps = p.bytes / median / 1e9;
        let gflops = p.flops / median / 1e9;
        let frac = gbps / read_bw;
        if !global.json {
            outln!(
                "{op:<22} {:>9.3}ms {gbps:>9.2} {gflops:>10.2} {:>8.1}% {iters:>6}",
                median * 1e3,
                frac * 100.0
            );
        }
        results.push(json!({
            "op": op,
            "device": dev.name(),
            "shape": [rows, cols],
            "batch": args.batch,
            "dtype": args.dtype,
            "format": args.format,
            "median_s": median,
            "iters": iters,
            "bytes": p.bytes,
            "gbps": gbps,
            "gflops": gflops,
            "read_bandwidth_gbps": read_bw,
            "fraction_of_bandwidth": frac,
        }));
    }
    if global.json {
        if let [one] = &mut results[..] {
            one["statistics"] = json!(dev.stats());
            print_json(one)?;
        } else {
            print_json(&json!({ "results": results, "statistics": dev.stats() }))?;
        }
    } else {
        outln!("\nruntime statistics ({}):\n{}", dev.id(), dev.stats());
    }
    Ok(())
}

/// `bench --resident`: the wgpu backend's kernel suite on the device `--device` names.
fn run_resident(dev: &lowbit::Device, args: &Args, global: &Global) -> CliResult {
    use lowbit::backend::wgpu::WgpuBackend;
    use lowbit::backend::wgpu::bench::{BenchConfig, format_table, run_suite_with};
    // The same adapter the device runs on: WgpuBackend opens one context per adapter and process.
    let gpu = WgpuBackend::open_device(dev.info()).map_err(|e| {
        format!("bench --resident needs a GPU device (--device vulkan, metal or dx12): {e}")
    })?;
    let mut cfg = BenchConfig {
        quick: args.quick,
        sweep: args.sweep,
        ..Default::default()
    };
    if let Some(n) = args.iters {
        cfg.iters = n.max(1);
        cfg.warmup = cfg.warmup.min(cfg.iters);
    }
    let rows = run_suite_with(&gpu, cfg)?;
    if global.json {
        print_json(&json!({ "device": dev.id(), "adapter": dev.info().name, "results": rows }))?;
    } else {
        outln!(
            "device {} ({}), resident buffers, GPU-timed",
            dev.id(),
            dev.info().name
        );
        out!("{}", format_table(&rows));
    }
    Ok(())
}
