//! Kernel benchmarks on device-resident inputs, against a plain copy kernel on the same device.
//! Times come from GPU timestamp queries when the adapter has them, else from the wall clock around
//! submit + wait; each figure is the median of `iters` runs after warm-up.

use super::WgpuBackend;
use super::context::{Gpu, Recorder, gpu_err};
use super::kernels::{
    RowPiece, dequantize_plan, encode_gemv_4bit, gemm_grid, quantize_plan, ternary_gemv_kernel,
};
use super::shaders::{DEQUANTIZE_VPT, Encoding, GemmKind, GemvShape, QUANTIZE_ROWS, Shader};
use crate::Result;
use crate::format::{FourBitType, dynamic_map};
use std::time::Instant;

/// One benchmark result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    pub name: String,
    pub shape: String,
    /// Bytes read plus bytes written by one run.
    pub bytes: u64,
    /// Floating-point (or integer) operations of one run, for GEMMs.
    pub flops: u64,
    pub median_us: f64,
    pub gbps: f64,
    /// This row's GB/s over the copy kernel's.
    pub frac_of_copy: f64,
    pub tflops: f64,
    /// "gpu-timestamps" or "wall-clock".
    pub timer: &'static str,
}

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// Smaller bulk inputs and GEMM batch, for software adapters (lavapipe).
    pub quick: bool,
    pub iters: usize,
    pub warmup: usize,
    /// Also time the general GEMV kernels and every work split of the vectorised ones.
    pub sweep: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            quick: false,
            iters: 20,
            warmup: 3,
            sweep: false,
        }
    }
}

/// The full suite with default settings.
pub fn run_suite(b: &WgpuBackend) -> Result<Vec<BenchRow>> {
    run_suite_with(b, BenchConfig::default())
}

/// Deterministic filler (xorshift), so inputs are not zeros (zero blocks take a shortcut).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.extend_from_slice(&s.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Random f32 values in [-1, 1).
fn random_f32(n: usize, seed: u64) -> Vec<u8> {
    random_bytes(n * 4, seed)
        .chunks_exact(4)
        .flat_map(|c| {
            let u = u32::from_le_bytes(c.try_into().unwrap());
            ((u >> 8) as f32 / (1u32 << 23) as f32 - 1.0).to_le_bytes()
        })
        .collect()
}

/// Random f16 values in [-1, 1).
fn random_f16(n: usize, seed: u64) -> Vec<u8> {
    random_f32(n, seed)
        .chunks_exact(4)
        .flat_map(|c| half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
        .collect()
}

type Record<'a> =
    dyn Fn(&mut Recorder, Option<wgpu::ComputePassTimestampWrites<'_>>) -> Result<()> + 'a;

/// Median time of one recorded dispatch, in microseconds.
fn time(gpu: &Gpu, cfg: &BenchConfig, record: &Record) -> Result<(f64, &'static str)> {
    let ts = gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY);
    let mut samples = Vec::with_capacity(cfg.iters);
    let qs = ts.then(|| {
        gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: None,
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        })
    });
    let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let period_ns = gpu.queue.get_timestamp_period() as f64;
    for i in 0..cfg.warmup + cfg.iters {
        let start = Instant::now();
        gpu.run(|enc| {
            let writes = qs.as_ref().map(|q| wgpu::ComputePassTimestampWrites {
                query_set: q,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
            record(enc, writes)?;
            if let Some(q) = &qs {
                enc.encoder().resolve_query_set(q, 0..2, &resolve, 0);
            }
            Ok(())
        })?;
        let wall = start.elapsed().as_secs_f64() * 1e6;
        if i < cfg.warmup {
            continue;
        }
        if qs.is_some() {
            let t: Vec<u64> = bytemuck::pod_collect_to_vec(&gpu.read(&resolve, 16)?);
            samples.push(t[1].wrapping_sub(t[0]) as f64 * period_ns / 1e3);
        } else {
            samples.push(wall);
        }
    }
    samples.sort_by(f64::total_cmp);
    let timer = if ts { "gpu-timestamps" } else { "wall-clock" };
    Ok((samples[samples.len() / 2], timer))
}

struct Suite<'a> {
    gpu: &'a Gpu,
    cfg: BenchConfig,
    rows: Vec<BenchRow>,
    copy_gbps: f64,
}

impl Suite<'_> {
    fn add(
        &mut self,
        name: &str,
        shape: String,
        bytes: u64,
        flops: u64,
        record: &Record,
    ) -> Result<()> {
        let (us, timer) = time(self.gpu, &self.cfg, record)?;
        let gbps = bytes as f64 / us / 1e3;
        if self.rows.is_empty() {
            self.copy_gbps = gbps;
        }
        self.rows.push(BenchRow {
            name: name.into(),
            shape,
            bytes,
            flops,
            median_us: us,
            gbps,
            frac_of_copy: gbps / self.copy_gbps,
            tflops: flops as f64 / us / 1e6,
            timer,
        });
        Ok(())
    }
}

/// The GEMV work splits to time: the one the kernels pick (no label), and with `sweep` every candidate.
fn gemv_variants(gpu: &Gpu, sweep: bool) -> Vec<(String, Option<GemvShape>)> {
    let mut v = vec![(String::new(), None)];
    if sweep {
        for shape in GemvShape::CANDIDATES {
            for subgroup in [false, true] {
                if subgroup && !gpu.subgroups_fit(shape.tpr) {
                    continue;
                }
                let sg = if subgroup { " sg" } else { "" };
                v.push((
                    format!(" t{}r{}{sg}", shape.tpr, shape.rpt),
                    Some(GemvShape { subgroup, ..shape }),
                ));
            }
        }
    }
    v
}

/// Runs the suite: copy, NF4 GEMV and ternary GEMV at the LLM shapes, bulk quantize/dequantize, the 4-bit
/// GEMM at batch 512 and dense f32/f16 GEMMs.
pub fn run_suite_with(b: &WgpuBackend, cfg: BenchConfig) -> Result<Vec<BenchRow>> {
    let gpu = b.gpu();
    let mut s = Suite {
        gpu,
        cfg,
        rows: Vec::new(),
        copy_gbps: 1.0,
    };
    let bulk = if cfg.quick { 32usize << 20 } else { 256 << 20 };
    let bulk = bulk.min(gpu.max_binding() as usize / 16 * 16);

    // Copy: the bandwidth ceiling.
    let src = gpu.upload(&random_bytes(bulk, 1));
    let dst = gpu.output(bulk as u64);
    let params = [(bulk / 16) as u32, 0, 0, 0, 0, 0, 0, 0];
    s.add(
        "copy",
        format!("{} MiB", bulk >> 20),
        2 * bulk as u64,
        0,
        &|enc, ts| {
            gpu.encode(
                enc,
                &Shader::Copy,
                params,
                &[(1, &src), (2, &dst)],
                Gpu::grid((bulk / 16).div_ceil(256) as u32),
                ts,
            )
        },
    )?;
    drop((src, dst));

    let shapes = [
        (4096usize, 4096usize),
        (4096, 14336),
        (14336, 4096),
        (8192, 28672),
    ];
    let table = gpu.upload(bytemuck::cast_slice(FourBitType::Nf4.dequant_table()));
    for &(rows, cols) in &shapes {
        let n = rows * cols;
        let bs = 64usize;
        let packed = gpu.upload(&random_bytes(n / 2, 2));
        let absmax_host: Vec<f32> = (0..n / bs).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
        let absmax = gpu.upload(bytemuck::cast_slice(&absmax_host));
        let x = gpu.upload(&random_f32(cols, 3));
        let bias = gpu.output(4);
        let y = gpu.output((rows * 4) as u64);
        let bytes = (n / 2 + n / bs * 4 + cols * 4 + rows * 4) as u64;
        let bufs = [
            (1, &packed),
            (2, &absmax),
            (3, &table),
            (4, &x),
            (5, &bias),
            (6, &y),
        ];
        let piece = RowPiece {
            r0: 0,
            r1: rows,
            first_word: 0,
        };
        for (label, force) in gemv_variants(gpu, cfg.sweep) {
            s.add(
                &format!("gemv_4bit nf4{label}"),
                format!("{rows}x{cols}"),
                bytes,
                2 * n as u64,
                &|enc, ts| encode_gemv_4bit(gpu, enc, piece, cols, bs, 0, &bufs, force, ts),
            )?;
        }
        if cfg.sweep {
            let params = [rows as u32, cols as u32, bs.trailing_zeros(), 0, 0, 0, 0, 0];
            s.add(
                "gemv_4bit nf4 general",
                format!("{rows}x{cols}"),
                bytes,
                2 * n as u64,
                &|enc, ts| {
                    gpu.encode(
                        enc,
                        &Shader::Gemv4bit,
                        params,
                        &bufs,
                        Gpu::grid(rows.div_ceil(4) as u32),
                        ts,
                    )
                },
            )?;
        }
    }
    for &(rows, cols) in &shapes {
        let r_rows = rows.div_ceil(4);
        // Any 2-bit patterns: the kernel does the same work whatever the values.
        let w = gpu.upload(&random_bytes(r_rows * cols, 4));
        let x = gpu.upload(&random_bytes(cols, 5));
        let y = gpu.output((rows * 4) as u64);
        let params = [rows as u32, cols as u32, r_rows as u32, 0, 0, 0, 0, 0];
        let bytes = (r_rows * cols + cols + rows * 4) as u64;
        let bufs = [(1, &x), (2, &w), (3, &y)];
        let mut variants: Vec<(String, Shader, (u32, u32, u32))> = gemv_variants(gpu, cfg.sweep)
            .into_iter()
            .map(|(label, force)| {
                let (shader, grid) = ternary_gemv_kernel(gpu, r_rows, cols, force);
                (label, shader, grid)
            })
            .collect();
        if cfg.sweep {
            variants.push((
                " general".into(),
                Shader::TernaryGemv,
                Gpu::grid(r_rows as u32),
            ));
        }
        for (label, shader, grid) in &variants {
            s.add(
                &format!("ternary gemv{label}"),
                format!("{rows}x{cols}"),
                bytes,
                2 * (rows * cols) as u64,
                &|enc, ts| gpu.encode(enc, shader, params, &bufs, *grid, ts),
            )?;
        }
    }

    // Bulk quantize / dequantize on `bulk` bytes of f32.
    let n = bulk / 4;
    let x = gpu.upload(&random_f32(n, 6));
    let delta = gpu.rcp_delta();
    let mids = gpu.upload(bytemuck::cast_slice(&dynamic_map(true).midpoints));
    for (name, enc, bs) in [
        (
            "quantize_4bit nf4",
            Encoding::FourBit(FourBitType::Nf4),
            64usize,
        ),
        ("quantize_blockwise", Encoding::Code8, 4096),
    ] {
        let bits = if enc == Encoding::Code8 { 8 } else { 4 };
        let codes = gpu.output((n * bits / 8) as u64);
        let absmax = gpu.output((n / bs * 4) as u64);
        let mut bufs = vec![(1, &x), (2, &codes), (3, &absmax), (9, delta)];
        if enc == Encoding::Code8 {
            bufs.push((5, &mids));
        }
        let bytes = (bulk + n * bits / 8 + n / bs * 4) as u64;
        // The library's choice, then (sweep) every rows-per-workgroup variant a block fits.
        let mut variants = vec![(String::new(), None)];
        if cfg.sweep {
            for rows in QUANTIZE_ROWS {
                variants.push((format!(" r{rows}"), Some(rows)));
            }
        }
        for (label, rows) in variants {
            let Ok(plan) = quantize_plan(crate::tensor::DType::F32, enc, bs, rows) else {
                continue;
            };
            let params = plan.params(n as u32);
            s.add(
                &format!("{name}{label}"),
                format!("{} MiB f32, bs {bs}", bulk >> 20),
                bytes,
                0,
                &|e, ts| gpu.encode(e, &plan.shader, params, &bufs, plan.grid(n), ts),
            )?;
        }
    }
    {
        let bs = 64usize;
        let codes = gpu.upload(&random_bytes(n / 2, 7));
        let absmax = gpu.upload(&random_f32(n / bs, 8));
        let out = gpu.output(bulk as u64);
        let params = [n as u32, bs.trailing_zeros(), 0, 0, 0, 0, 0, 0];
        let bufs = [(1, &codes), (2, &absmax), (3, &table), (4, &out)];
        let bytes = (n / 2 + n / bs * 4 + bulk) as u64;
        let mut variants = vec![(String::new(), None)];
        if cfg.sweep {
            for vpt in DEQUANTIZE_VPT {
                variants.push((format!(" v{vpt}"), Some(vpt)));
            }
        }
        for (label, vpt) in variants {
            let (shader, grid) = dequantize_plan(4, vpt, n);
            s.add(
                &format!("dequantize_4bit nf4{label}"),
                format!("{} MiB f32 out, bs 64", bulk >> 20),
                bytes,
                0,
                &|e, ts| gpu.encode(e, &shader, params, &bufs, grid, ts),
            )?;
        }
    }
    drop(x);

    // GEMMs at 4096 x 4096.
    let (m, nn, k) = (if cfg.quick { 64 } else { 512 }, 4096usize, 4096usize);
    let flops = 2 * (m * nn * k) as u64;
    let bias = gpu.output(4);
    let y = gpu.output((m * nn * 4) as u64);
    {
        let x = gpu.upload(&random_f32(m * k, 9));
        let packed = gpu.upload(&random_bytes(nn * k / 2, 10));
        let absmax = gpu.upload(&random_f32(nn * k / 64, 11));
        let params = [m as u32, nn as u32, k as u32, 0, 6, 0, 0, 0];
        let bufs = [
            (1, &x),
            (2, &packed),
            (3, &absmax),
            (4, &table),
            (5, &bias),
            (6, &y),
        ];
        let bytes = (m * k * 4 + nn * k / 2 + m * nn * 4) as u64;
        s.add(
            "matmul_4bit nf4",
            format!("batch {m}, {nn}x{k}"),
            bytes,
            flops,
            &|e, ts| {
                gpu.encode(
                    e,
                    &Shader::Gemm(GemmKind::FourBit),
                    params,
                    &bufs,
                    gemm_grid(m, nn),
                    ts,
                )
            },
        )?;
    }
    for (name, kind, esize) in [
        ("matmul f32", GemmKind::DenseF32, 4usize),
        ("matmul f16", GemmKind::DenseF16, 2),
        ("matmul f16 native", GemmKind::DenseF16Native, 2),
    ] {
        if kind == GemmKind::DenseF16Native && !gpu.features.contains(wgpu::Features::SHADER_F16) {
            continue;
        }
        let fill = |len, seed| {
            if esize == 4 {
                random_f32(len, seed)
            } else {
                random_f16(len, seed)
            }
        };
        let x = gpu.upload(&fill(m * k, 12));
        let w = gpu.upload(&fill(nn * k, 13));
        let params = [m as u32, nn as u32, k as u32, 0, 0, 0, 0, 0];
        let bufs = [(1, &x), (2, &w), (5, &bias), (6, &y)];
        let bytes = ((m * k + nn * k) * esize + m * nn * 4) as u64;
        s.add(name, format!("{m}x{nn}x{k}"), bytes, flops, &|e, ts| {
            gpu.encode(e, &Shader::Gemm(kind), params, &bufs, gemm_grid(m, nn), ts)
        })?;
    }
    if s.rows.is_empty() {
        return Err(gpu_err("benchmark produced no rows"));
    }
    Ok(s.rows)
}

/// A fixed-width table of the rows.
pub fn format_table(rows: &[BenchRow]) -> String {
    let mut out = format!(
        "{:<22} {:<26} {:>12} {:>9} {:>8} {:>9}\n",
        "kernel", "shape", "median us", "GB/s", "of copy", "TFLOP/s"
    );
    for r in rows {
        out += &format!(
            "{:<22} {:<26} {:>12.1} {:>9.1} {:>7.0}% {:>9}\n",
            r.name,
            r.shape,
            r.median_us,
            r.gbps,
            r.frac_of_copy * 100.0,
            if r.flops > 0 && r.name.starts_with("matmul") {
                format!("{:.2}", r.tflops)
            } else {
                "-".into()
            }
        );
    }
    out
}
