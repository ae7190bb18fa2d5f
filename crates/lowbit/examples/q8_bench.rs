//! Int8-activation GEMVs against the float GEMVs on the CPU, one activation row, side by side in one run:
//! `cargo run --release -p lowbit --example q8_bench [ROWSxCOLS ...]` (default: SmolLM2-135M's shapes);
//! `... q8_bench prefill [M]`: the several-row products (float GEMM against the batched VNNI kernel) at M rows
//! (default 512); `... q8_bench stream`: a decode step's GEMVs.
use lowbit::backend::Packed4bit;
use lowbit::backend::cpu::fast::q4_lanes::{self, LanesView};
use lowbit::backend::cpu::fast::q8_gemm::{self, Q8View};
use lowbit::backend::cpu::fast::{self, q8};
use lowbit::format::FourBitType;
use lowbit::format::q8::{Q4Lanes, Q8Weight};
use lowbit::tensor::Floats;
use std::time::Instant;

fn median_us(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[reps / 2]
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("stream") {
        model_stream();
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("prefill") {
        let m = std::env::args()
            .nth(2)
            .map_or(512, |s| s.parse().expect("M"));
        rayon::scope(|_| prefill(m));
        return;
    }
    let shapes: Vec<(usize, usize)> = {
        let a: Vec<String> = std::env::args().skip(1).collect();
        if a.is_empty() {
            vec![
                (576, 576),
                (1536, 576),
                (576, 1536),
                (49152, 576),
                (4096, 4096),
                (14336, 4096),
            ]
        } else {
            a.iter()
                .map(|s| {
                    let (r, c) = s.split_once('x').expect("ROWSxCOLS");
                    (r.parse().unwrap(), c.parse().unwrap())
                })
                .collect()
        }
    };
    // On a pool thread, as a model's forward pass runs: no hand-off from the caller per kernel.
    rayon::scope(|_| kernels(shapes));
}

fn kernels(shapes: Vec<(usize, usize)>) {
    let vnni = q8::has_vnni();
    println!("VNNI: {vnni}; threads: {}", rayon::current_num_threads());
    println!(
        "| shape | nf4 float us | nf4 int8-act us | speedup | bf16 dense us | q8 dense us | speedup |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (rows, cols) in shapes {
        let mut s = 12345u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let x: Vec<f32> = (0..cols).map(|_| rnd()).collect();
        let packed: Vec<u8> = (0..rows * cols / 2)
            .map(|i| ((i * 2654435761usize) >> 13) as u8)
            .collect();
        let absmax: Vec<f32> = (0..rows * cols / 64).map(|_| rnd().abs() + 0.1).collect();
        let w = Packed4bit {
            packed: &packed,
            absmax: &absmax,
            quant_type: FourBitType::Nf4,
            blocksize: 64,
            rows,
            cols,
        };
        let lanes = Q4Lanes::from_4bit(&packed, &absmax, FourBitType::Nf4, 64, rows, cols);
        let reps = (2_000_000_000 / (rows * cols)).clamp(5, 2000);
        let isa = fast::isa();
        let t_f = median_us(
            || {
                std::hint::black_box(fast::gemv4::gemv(Floats::F32(&x), w, None, isa));
            },
            reps,
        );
        let t_q = median_us(
            || {
                std::hint::black_box(q4_lanes::linear(&x, 1, view(&lanes), None, vnni));
            },
            reps,
        );
        let wd: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        let wb: Vec<half::bf16> = wd.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let q = Q8Weight::quantize(&wd, rows, cols);
        let t_d = median_us(
            || {
                std::hint::black_box(fast::gemm::matmul(
                    Floats::F32(&x),
                    Floats::BF16(&wb),
                    None,
                    1,
                    rows,
                    cols,
                    isa,
                ));
            },
            reps,
        );
        let t_q8 = median_us(
            || {
                std::hint::black_box(q8::gemv_q8(&x, &q.codes, &q.scales, rows, cols, None, vnni));
            },
            reps,
        );
        println!(
            "| {rows}x{cols} | {t_f:.1} | {t_q:.1} | {:.2}x | {t_d:.1} | {t_q8:.1} | {:.2}x |",
            t_f / t_q,
            t_d / t_q8
        );
    }
}

/// SmolLM2-135M's 120 decode GEMVs (30 layers of the fused q/k/v, o, the fused gate/up, and down), each
/// layer's weights its own (53 MB of NF4 in all, past the caches), straight through the kernels: the time per
/// token that the kernels alone take, against `generate --json`'s per-op time.
#[allow(dead_code)]
pub fn model_stream() {
    let shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
    // Per layer, per projection: packed codes, absmax, rows, cols.
    type Weight = (Vec<u8>, Vec<f32>, usize, usize, Q4Lanes);
    let layers: Vec<Vec<Weight>> = (0..30)
        .map(|l| {
            shapes
                .iter()
                .map(|&(r, c)| {
                    let packed: Vec<u8> = (0..r * c / 2)
                        .map(|i| ((i * 2654435761usize + l) >> 13) as u8)
                        .collect();
                    let absmax = vec![0.5f32; r * c / 64];
                    let lanes = Q4Lanes::from_4bit(&packed, &absmax, FourBitType::Nf4, 64, r, c);
                    (packed, absmax, r, c, lanes)
                })
                .collect()
        })
        .collect();
    let x: Vec<f32> = (0..1536).map(|i| (i as f32 * 0.37).sin()).collect();
    let vnni = q8::has_vnni();
    let run = |int8: bool| {
        let t = Instant::now();
        for _ in 0..20 {
            for layer in &layers {
                for (p, a, r, c, lanes) in layer {
                    let w = Packed4bit {
                        packed: p,
                        absmax: a,
                        quant_type: FourBitType::Nf4,
                        blocksize: 64,
                        rows: *r,
                        cols: *c,
                    };
                    if int8 {
                        std::hint::black_box(q4_lanes::linear(
                            &x[..*c],
                            1,
                            view(lanes),
                            None,
                            vnni,
                        ));
                    } else {
                        std::hint::black_box(fast::gemv4::gemv(
                            Floats::F32(&x[..*c]),
                            w,
                            None,
                            fast::isa(),
                        ));
                    }
                }
            }
        }
        t.elapsed().as_secs_f64() * 1e3 / 20.0
    };
    rayon::scope(|_| {
        for _ in 0..2 {
            println!(
                "120 GEMVs per token: int8 activations {:.2} ms, float {:.2} ms",
                run(true),
                run(false)
            );
        }
    });
}

/// SmolLM2-135M's prefill products at `m` rows: the float GEMM of the dequantized NF4 weight (what a prefill
/// ran before int8 activations reached batches) against the batched VNNI kernel, and the same for Q8 and bf16
/// dense weights; GFLOP/s counts 2 m rows cols.
fn prefill(m: usize) {
    let vnni = q8::has_vnni();
    println!(
        "VNNI: {vnni}; threads: {}; {m} rows",
        rayon::current_num_threads()
    );
    println!(
        "| shape | nf4 float ms | nf4 int8-act ms | speedup | GFLOP/s int8 | bf16 dense ms | q8 dense ms | speedup |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (rows, cols) in [(960, 576), (576, 576), (3072, 576), (576, 1536)] {
        let x: Vec<f32> = (0..m * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let packed: Vec<u8> = (0..rows * cols / 2)
            .map(|i| ((i * 2654435761usize) >> 13) as u8)
            .collect();
        let absmax: Vec<f32> = (0..rows * cols / 64)
            .map(|i| 0.1 + (i % 7) as f32 * 0.1)
            .collect();
        let w = Packed4bit {
            packed: &packed,
            absmax: &absmax,
            quant_type: FourBitType::Nf4,
            blocksize: 64,
            rows,
            cols,
        };
        let lanes = Q4Lanes::from_4bit(&packed, &absmax, FourBitType::Nf4, 64, rows, cols);
        let isa = fast::isa();
        let reps = 15;
        let t_f = median_us(
            || {
                std::hint::black_box(fast::gemm::matmul_4bit(Floats::F32(&x), m, w, None, isa));
            },
            reps,
        ) / 1e3;
        let t_q = median_us(
            || {
                std::hint::black_box(q4_lanes::linear(&x, m, view(&lanes), None, vnni));
            },
            reps,
        ) / 1e3;
        let wd: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 104729) % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        let wb: Vec<half::bf16> = wd.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let q = Q8Weight::quantize(&wd, rows, cols);
        let t_d = median_us(
            || {
                std::hint::black_box(fast::gemm::matmul(
                    Floats::F32(&x),
                    Floats::BF16(&wb),
                    None,
                    m,
                    rows,
                    cols,
                    isa,
                ));
            },
            reps,
        ) / 1e3;
        let src = Q8View {
            codes: &q.codes,
            scales: &q.scales,
            rows,
            cols,
        };
        let t_q8 = median_us(
            || {
                std::hint::black_box(q8_gemm::gemm(&x, m, src, None, vnni));
            },
            reps,
        ) / 1e3;
        let gflop = 2.0 * (m * rows * cols) as f64 / 1e9;
        println!(
            "| {rows}x{cols} | {t_f:.2} | {t_q:.2} | {:.2}x | {:.0} | {t_d:.2} | {t_q8:.2} | {:.2}x |",
            t_f / t_q,
            gflop / (t_q / 1e3),
            t_d / t_q8
        );
    }
}

/// A `Q4Lanes` weight as the kernels read it.
fn view(q: &Q4Lanes) -> LanesView<'_> {
    LanesView {
        packed: &q.packed,
        scales: &q.scales,
        quant_type: q.quant_type,
        rows: q.rows,
        cols: q.cols,
    }
}
