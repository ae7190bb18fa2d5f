//! Criterion benches for the hot CPU kernels, at the shapes the performance targets are stated for
//! (docs/PERFORMANCE.md). Throughput is bytes of weights read (GEMV) or bytes read + written (quantizers),
//! and elements for GEMM (2·m·n·k flops each). `cargo bench -p lowbit --bench cpu_fast --no-default-features`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use lowbit::FourBitType;
use lowbit::backend::cpu::{CpuBackend, ReferenceBackend};
use lowbit::backend::{Backend, Packed4bit, PackedTernary};
use lowbit::format::codebook::dynamic_map;
use lowbit::format::ternary::packed_rows;
use lowbit::tensor::{DType, Floats};
use std::hint::black_box;
use std::time::Duration;

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

struct W4 {
    packed: Vec<u8>,
    absmax: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl W4 {
    fn new(rows: usize, cols: usize) -> W4 {
        let w = values(rows * cols, 7);
        let q = CpuBackend
            .quantize_4bit(Floats::F32(&w), FourBitType::Nf4, 64)
            .unwrap();
        W4 {
            packed: q.codes,
            absmax: q.absmax,
            rows,
            cols,
        }
    }
    fn packed(&self) -> Packed4bit<'_> {
        Packed4bit {
            packed: &self.packed,
            absmax: &self.absmax,
            quant_type: FourBitType::Nf4,
            blocksize: 64,
            rows: self.rows,
            cols: self.cols,
        }
    }
}

fn gemv_4bit(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemv_4bit_nf4");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);
    for (rows, cols) in [(4096, 14336), (14336, 4096)] {
        let w = W4::new(rows, cols);
        let x = values(cols, 3);
        let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        g.throughput(Throughput::Bytes(
            (rows * cols / 2 + w.absmax.len() * 4) as u64,
        ));
        let shape = format!("{rows}x{cols}");
        g.bench_function(BenchmarkId::new("f32", &shape), |b| {
            b.iter(|| CpuBackend.gemv_4bit(Floats::F32(black_box(&x)), w.packed(), None))
        });
        g.bench_function(BenchmarkId::new("f16", &shape), |b| {
            b.iter(|| CpuBackend.gemv_4bit(Floats::F16(black_box(&xh)), w.packed(), None))
        });
    }
    let w = W4::new(4096, 14336);
    let x = values(14336, 3);
    g.sample_size(10);
    g.bench_function("reference/f32/4096x14336", |b| {
        b.iter(|| ReferenceBackend.gemv_4bit(Floats::F32(black_box(&x)), w.packed(), None))
    });
    g.finish();
}

fn ternary_gemv(c: &mut Criterion) {
    let mut g = c.benchmark_group("ternary_gemv");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);
    let (rows, cols) = (4096, 14336);
    let packed: Vec<u8> = values(packed_rows(rows) * cols, 5)
        .iter()
        .map(|v| ((v.abs() * 255.0) as u8) & 0b1010_1010)
        .collect();
    let xq: Vec<i8> = values(cols, 9).iter().map(|v| (v * 127.0) as i8).collect();
    let w = PackedTernary {
        packed: &packed,
        weight_scale: 1.3,
        rows,
        cols,
    };
    g.throughput(Throughput::Bytes(packed.len() as u64));
    g.bench_function("4096x14336", |b| {
        b.iter(|| CpuBackend.ternary_matmul(black_box(&xq), &[0.5], 1, w, None))
    });
    g.finish();
}

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    let (m, n, k) = (512, 4096, 4096);
    let w = W4::new(n, k);
    let x = values(m * k, 11);
    g.throughput(Throughput::Elements((2 * m * n * k) as u64));
    g.bench_function("matmul_4bit_nf4/512x4096x4096", |b| {
        b.iter(|| CpuBackend.matmul_4bit(Floats::F32(black_box(&x)), m, w.packed(), None))
    });
    let wd = values(n * k, 13);
    g.bench_function("matmul_f32/512x4096x4096", |b| {
        b.iter(|| CpuBackend.matmul(Floats::F32(black_box(&x)), Floats::F32(&wd), None, m, n, k))
    });
    let (ai, bi): (Vec<i8>, Vec<i8>) = (
        x.iter().map(|v| (v * 127.0) as i8).collect(),
        wd.iter().map(|v| (v * 127.0) as i8).collect(),
    );
    g.bench_function("int8_linear_matmul/512x4096x4096", |b| {
        b.iter(|| CpuBackend.int8_linear_matmul(black_box(&ai), &bi, m, n, k))
    });
    g.finish();
}

fn quantizers(c: &mut Criterion) {
    let n: usize = std::env::var("LOWBIT_BENCH_QUANT_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 << 20);
    let mut g = c.benchmark_group("quantizers_64M");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    let x = values(n, 17);
    let q4 = CpuBackend
        .quantize_4bit(Floats::F32(&x), FourBitType::Nf4, 64)
        .unwrap();
    g.throughput(Throughput::Bytes((n * 4 + n / 2 + n / 64 * 4) as u64));
    g.bench_function("quantize_4bit_nf4_f32", |b| {
        b.iter(|| CpuBackend.quantize_4bit(Floats::F32(black_box(&x)), FourBitType::Nf4, 64))
    });
    g.bench_function("dequantize_4bit_nf4_f32", |b| {
        b.iter(|| {
            CpuBackend.dequantize_4bit(
                black_box(&q4.codes),
                &q4.absmax,
                FourBitType::Nf4,
                64,
                n,
                DType::F32,
            )
        })
    });
    g.throughput(Throughput::Bytes((n * 5 + n / 256 * 4) as u64));
    let code = dynamic_map(true);
    g.bench_function("quantize_blockwise_f32", |b| {
        b.iter(|| CpuBackend.quantize_blockwise(Floats::F32(black_box(&x)), code, 256))
    });
    g.finish();
}

criterion_group!(benches, gemv_4bit, ternary_gemv, gemm, quantizers);
criterion_main!(benches);
