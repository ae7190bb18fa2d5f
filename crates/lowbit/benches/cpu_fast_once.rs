//! Runs one hot kernel a fixed number of times, for hardware counters (`perf stat`) rather than wall time,
//! which a shared machine distorts: `cargo bench -p lowbit --no-default-features --bench cpu_fast_once --
//! <kernel> <iterations>` with kernel one of gemv_f32, gemv_f32_dram (12 weight copies, past the LLC), ternary, matmul_4bit, matmul_f32, quantize_4bit,
//! dequantize_4bit, quantize_blockwise, int8_linear_matmul, read_1gib (the read-bandwidth probe's kernel).

use lowbit::FourBitType;
use lowbit::backend::cpu::CpuBackend;
use lowbit::backend::{Backend, Packed4bit, PackedTernary};
use lowbit::format::ternary::packed_rows;
use lowbit::tensor::Floats;
use std::hint::black_box;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let kernel = args.get(1).map(String::as_str).unwrap_or("gemv_f32");
    let iters: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(10);
    let (rows, cols) = match kernel {
        "matmul_4bit" | "matmul_f32" | "int8_linear_matmul" => (4096, 4096),
        _ => (4096, 14336),
    };
    // LOWBIT_BENCH_BLOCKSIZE changes the 4-bit block size (default 64, bitsandbytes' default).
    let bs: usize = std::env::var("LOWBIT_BENCH_BLOCKSIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let w = values(rows * cols, 7);
    let q = CpuBackend
        .quantize_4bit(Floats::F32(&w), FourBitType::Nf4, bs)
        .unwrap();
    let pw = Packed4bit {
        packed: &q.codes,
        absmax: &q.absmax,
        quant_type: FourBitType::Nf4,
        blocksize: bs,
        rows,
        cols,
    };
    let x = values(512 * cols, 3);
    let tern: Vec<u8> = q.codes[..packed_rows(rows) * cols]
        .iter()
        .map(|b| b & 0xAA)
        .collect();
    let xq: Vec<i8> = x[..cols].iter().map(|v| (v * 127.0) as i8).collect();
    // Enough copies of the weight to overflow the last-level cache, so GEMV streams from DRAM.
    let copies: Vec<Vec<u8>> = if kernel == "gemv_f32_dram" {
        (0..12).map(|_| q.codes.clone()).collect()
    } else {
        Vec::new()
    };
    let probe: Vec<u64> = if kernel == "read_1gib" {
        (0..(lowbit::bench::READ_PROBE_BYTES / 8) as u64)
            .map(|i| i ^ 0x9E37)
            .collect()
    } else {
        Vec::new()
    };
    let t = std::time::Instant::now();
    for it in 0..iters {
        match kernel {
            "gemv_f32" => drop(black_box(CpuBackend.gemv_4bit(
                Floats::F32(&x[..cols]),
                pw,
                None,
            ))),
            "gemv_f32_dram" => {
                let pw = Packed4bit {
                    packed: &copies[it % copies.len()],
                    ..pw
                };
                drop(black_box(CpuBackend.gemv_4bit(
                    Floats::F32(&x[..cols]),
                    pw,
                    None,
                )))
            }
            "ternary" => {
                let tw = PackedTernary {
                    packed: &tern,
                    weight_scale: 1.0,
                    rows,
                    cols,
                };
                drop(black_box(CpuBackend.ternary_matmul(
                    &xq,
                    &[1.0],
                    1,
                    tw,
                    None,
                )))
            }
            "matmul_4bit" => drop(black_box(CpuBackend.matmul_4bit(
                Floats::F32(&x),
                512,
                pw,
                None,
            ))),
            "matmul_f32" => drop(black_box(CpuBackend.matmul(
                Floats::F32(&x),
                Floats::F32(&w),
                None,
                512,
                rows,
                cols,
            ))),
            "quantize_4bit" => drop(black_box(CpuBackend.quantize_4bit(
                Floats::F32(&w),
                FourBitType::Nf4,
                64,
            ))),
            "dequantize_4bit" => drop(black_box(CpuBackend.dequantize_4bit(
                &q.codes,
                &q.absmax,
                FourBitType::Nf4,
                bs,
                rows * cols,
                lowbit::DType::F32,
            ))),
            "quantize_blockwise" => drop(black_box(CpuBackend.quantize_blockwise(
                Floats::F32(&w),
                lowbit::format::dynamic_map(true),
                256,
            ))),
            "int8_linear_matmul" => {
                let ai: Vec<i8> = xq.iter().cycle().take(512 * cols).copied().collect();
                let bi: Vec<i8> = tern[..rows * cols / 4]
                    .iter()
                    .cycle()
                    .take(rows * cols)
                    .map(|&b| b as i8)
                    .collect();
                drop(black_box(
                    CpuBackend.int8_linear_matmul(&ai, &bi, 512, rows, cols),
                ))
            }
            "read_1gib" => drop(black_box(lowbit::bench::sum_u64(&probe))),
            other => panic!("unknown kernel {other}"),
        }
    }
    eprintln!(
        "{kernel}: {iters} iterations, {:.3} ms each",
        t.elapsed().as_secs_f64() * 1e3 / iters as f64
    );
}
