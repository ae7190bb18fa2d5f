#![cfg(feature = "wgpu")]
//! Every wgpu kernel against the CPU reference on fresh random inputs (the seed is printed; set
//! `LOWBIT_SEED` to replay). Quantized bytes must be identical; float outputs stay within stated tolerances.

mod wgpu_common;

use half::{bf16, f16};
use lowbit::backend::cpu::CpuBackend;
use lowbit::backend::wgpu::WgpuBackend;
use lowbit::backend::{Backend, Packed4bit, PackedTernary};
use lowbit::format::{FourBitType, dynamic_map};
use lowbit::tensor::{DType, FloatVec};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn rng(test: &str) -> StdRng {
    let seed = std::env::var("LOWBIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    println!("{test}: seed {seed} (LOWBIT_SEED={seed} replays)");
    StdRng::seed_from_u64(seed)
}

fn gpu() -> Option<WgpuBackend> {
    wgpu_common::gpu()
}

/// Random data with blocks of very different magnitudes, exact small ratios (the ties f16/bf16 data
/// produce), whole zero blocks and a few subnormals.
fn data(r: &mut StdRng, n: usize, blocksize: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let kind = r.random_range(0..8);
        let scale = 10f32.powi(r.random_range(-4..4));
        for _ in 0..blocksize.min(n - v.len()) {
            v.push(match kind {
                0 => 0.0,
                1 => r.random_range(-24i32..=24) as f32 / 24.0 * scale,
                2 if r.random_range(0..50) == 0 => f32::from_bits(r.random_range(1u32..0x7f_ffff)),
                _ => r.random_range(-1.0f32..1.0) * scale,
            });
        }
    }
    v
}

fn as_dtype(v: &[f32], dt: DType) -> FloatVec {
    FloatVec::from_f32(v.to_vec(), dt)
}

use lowbit::metrics::max_rel_err as max_rel;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// Tolerance relative to max |y| for float outputs in `dt` (a few roundings of that dtype).
fn tol(dt: DType) -> f64 {
    match dt {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        _ => 1.6e-2,
    }
}

#[test]
fn blockwise_8bit_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("blockwise_8bit");
    let cpu = CpuBackend;
    for dt in DTYPES {
        for &bs in &[64usize, 256, 4096] {
            for n in [bs * 3, bs * 5 + 7, 1, 4099] {
                let x = as_dtype(&data(&mut r, n, bs), dt);
                for signed in [true, false] {
                    let code = dynamic_map(signed);
                    let want = cpu.quantize_blockwise(x.as_floats(), code, bs).unwrap();
                    let got = g.quantize_blockwise(x.as_floats(), code, bs).unwrap();
                    assert_eq!(got.absmax, want.absmax, "absmax {dt} bs {bs} n {n}");
                    assert!(
                        got.codes == want.codes,
                        "codes {dt} bs {bs} n {n} signed {signed}"
                    );
                    for out in DTYPES {
                        let w = cpu
                            .dequantize_blockwise(&want.codes, &want.absmax, code, bs, out)
                            .unwrap();
                        let d = g
                            .dequantize_blockwise(&want.codes, &want.absmax, code, bs, out)
                            .unwrap();
                        assert!(
                            d.to_le_bytes() == w.to_le_bytes(),
                            "dequant {out} bs {bs} n {n}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn fourbit_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("fourbit");
    let cpu = CpuBackend;
    for qt in [FourBitType::Nf4, FourBitType::Fp4] {
        for dt in DTYPES {
            for &bs in &[32usize, 64, 128, 1024, 4096] {
                for n in [bs * 4, bs * 2 + 1, 3, bs + 10] {
                    let x = as_dtype(&data(&mut r, n, bs), dt);
                    let want = cpu.quantize_4bit(x.as_floats(), qt, bs).unwrap();
                    let got = g.quantize_4bit(x.as_floats(), qt, bs).unwrap();
                    assert_eq!(got.absmax, want.absmax, "absmax {qt} {dt} bs {bs} n {n}");
                    assert!(got.codes == want.codes, "packed {qt} {dt} bs {bs} n {n}");
                    let out = DTYPES[r.random_range(0..3)];
                    let w = cpu
                        .dequantize_4bit(&want.codes, &want.absmax, qt, bs, n, out)
                        .unwrap();
                    let d = g
                        .dequantize_4bit(&want.codes, &want.absmax, qt, bs, n, out)
                        .unwrap();
                    assert!(
                        d.to_le_bytes() == w.to_le_bytes(),
                        "dequant {qt} {out} bs {bs} n {n}"
                    );
                }
            }
        }
    }
}

/// `data` with NaNs, infinities, signed zeros and subnormals sprinkled in, and some blocks holding nothing but
/// zeros and NaNs (absmax 0: the all-zero-codes branch).
fn data_special(r: &mut StdRng, n: usize, blocksize: usize) -> Vec<f32> {
    let mut v = data(r, n, blocksize);
    for b in 0..n.div_ceil(blocksize) {
        let blk = &mut v[b * blocksize..((b + 1) * blocksize).min(n)];
        match r.random_range(0..6) {
            0 => {
                for x in blk.iter_mut() {
                    *x = if r.random_range(0..4) == 0 {
                        f32::NAN
                    } else {
                        0.0
                    };
                }
            }
            1 | 2 => {
                for _ in 0..r.random_range(1..4) {
                    let i = r.random_range(0..blk.len());
                    blk[i] = [
                        f32::NAN,
                        f32::INFINITY,
                        f32::NEG_INFINITY,
                        -0.0,
                        1e-40,
                        -3e-39,
                    ][r.random_range(0..6)];
                }
            }
            _ => {}
        }
    }
    v
}

/// Every rows-per-workgroup variant of the quantize kernel and every stores-per-thread variant of the
/// dequantize kernel, byte for byte against the CPU, on ragged lengths (tails inside a vector, an item and a
/// workgroup) and special values.
#[test]
fn kernel_variants_match_cpu() {
    use lowbit::backend::wgpu::shaders::{DEQUANTIZE_VPT, Encoding, QUANTIZE_ROWS};
    let Some(g) = gpu() else { return };
    let mut r = rng("variants");
    let cpu = CpuBackend;
    let code = dynamic_map(true);
    let cases: [(Encoding, &[usize]); 3] = [
        (
            Encoding::FourBit(FourBitType::Nf4),
            &[32, 64, 256, 2048, 4096],
        ),
        (Encoding::FourBit(FourBitType::Fp4), &[32, 512, 4096]),
        (Encoding::Code8, &[64, 1024, 2048, 4096]),
    ];
    for dt in DTYPES {
        for (enc, sizes) in cases {
            let (epw, bits) = if enc == Encoding::Code8 {
                (4, 8)
            } else {
                (8, 4)
            };
            for &bs in sizes {
                for n in [1, 6, bs * 3 + 2, 8192 * 2 + 4 * bs + 13, 8192 * 3 + 8, 9000] {
                    let x = as_dtype(&data_special(&mut r, n, bs), dt);
                    let want = match enc {
                        Encoding::Code8 => cpu.quantize_blockwise(x.as_floats(), code, bs),
                        Encoding::FourBit(qt) => cpu.quantize_4bit(x.as_floats(), qt, bs),
                    }
                    .unwrap();
                    for rows in QUANTIZE_ROWS {
                        if (rows as usize) * 256 < bs / epw {
                            continue;
                        }
                        let c = (enc == Encoding::Code8).then_some(code);
                        let got = g.quantize_rows(x.as_floats(), enc, c, bs, rows).unwrap();
                        let bits_of = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits_of(&got.absmax),
                            bits_of(&want.absmax),
                            "absmax {enc:?} {dt} bs {bs} n {n} rows {rows}"
                        );
                        assert!(
                            got.codes == want.codes,
                            "codes {enc:?} {dt} bs {bs} n {n} rows {rows}"
                        );
                    }
                    if dt != DType::F32 {
                        continue;
                    }
                    let w = match enc {
                        Encoding::Code8 => cpu.dequantize_blockwise(
                            &want.codes,
                            &want.absmax,
                            code,
                            bs,
                            DType::F32,
                        ),
                        Encoding::FourBit(qt) => {
                            cpu.dequantize_4bit(&want.codes, &want.absmax, qt, bs, n, DType::F32)
                        }
                    }
                    .unwrap();
                    let table: &[f32] = match enc {
                        Encoding::Code8 => &code.values,
                        Encoding::FourBit(qt) => qt.dequant_table(),
                    };
                    for vpt in DEQUANTIZE_VPT {
                        let d = g
                            .dequantize_vpt(&want.codes, &want.absmax, table, bits, bs, n, vpt)
                            .unwrap();
                        assert!(
                            FloatVec::F32(d).to_le_bytes() == w.to_le_bytes(),
                            "dequant {enc:?} bs {bs} n {n} vpt {vpt}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn fourbit_linear_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("fourbit_linear");
    let cpu = CpuBackend;
    for &(rows, cols, bs) in &[
        (33usize, 70usize, 64usize),
        (64, 512, 32),
        (17, 4096, 4096),
        (5, 9, 32),
        (7, 3, 32),
        (9, 2053, 64),
    ] {
        for qt in [FourBitType::Nf4, FourBitType::Fp4] {
            let wv: Vec<f32> = (0..rows * cols)
                .map(|_| r.random_range(-1.0f32..1.0))
                .collect();
            let q = cpu
                .quantize_4bit(FloatVec::F32(wv).as_floats(), qt, bs)
                .unwrap();
            let w = Packed4bit {
                packed: &q.codes,
                absmax: &q.absmax,
                quant_type: qt,
                blocksize: bs,
                rows,
                cols,
            };
            for dt in DTYPES {
                for batch in [1usize, 3, 70] {
                    let x = as_dtype(
                        &(0..batch * cols)
                            .map(|_| r.random_range(-2.0f32..2.0))
                            .collect::<Vec<_>>(),
                        dt,
                    );
                    let bias = as_dtype(
                        &(0..rows)
                            .map(|_| r.random_range(-1.0f32..1.0))
                            .collect::<Vec<_>>(),
                        dt,
                    );
                    let b = (batch != 3).then(|| bias.as_floats());
                    let (want, got) = if batch == 1 {
                        (
                            cpu.gemv_4bit(x.as_floats(), w, b).unwrap(),
                            g.gemv_4bit(x.as_floats(), w, b).unwrap(),
                        )
                    } else {
                        (
                            cpu.matmul_4bit(x.as_floats(), batch, w, b).unwrap(),
                            g.matmul_4bit(x.as_floats(), batch, w, b).unwrap(),
                        )
                    };
                    assert_eq!(got.dtype(), dt);
                    let e = max_rel(&got.to_f32_vec(), &want.to_f32_vec());
                    assert!(
                        e <= tol(dt),
                        "{qt} {dt} {rows}x{cols} batch {batch}: rel err {e:.2e}"
                    );
                }
            }
        }
    }
}

#[test]
fn int8_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("int8");
    let cpu = CpuBackend;
    for &(rows, cols) in &[(1usize, 37usize), (7, 64), (33, 520), (4, 3)] {
        for dt in [DType::F16, DType::F32] {
            let mut v: Vec<f32> = (0..rows * cols)
                .map(|_| r.random_range(-3.0f32..3.0))
                .collect();
            // Outliers, and a zero row when there is more than one row.
            for _ in 0..(rows * cols / 50).max(1) {
                let i = r.random_range(0..rows * cols);
                v[i] = r.random_range(6.0f32..20.0) * if r.random() { 1.0 } else { -1.0 };
            }
            if rows > 2 {
                v[cols..2 * cols].iter_mut().for_each(|x| *x = 0.0);
            }
            let a = as_dtype(&v, dt);
            for thr in [0.0f32, 6.0] {
                let want = cpu
                    .int8_vectorwise_quant(a.as_floats(), rows, cols, thr)
                    .unwrap();
                let got = g
                    .int8_vectorwise_quant(a.as_floats(), rows, cols, thr)
                    .unwrap();
                assert_eq!(got, want, "vectorwise_quant {dt} {rows}x{cols} thr {thr}");
                let dw = cpu
                    .int8_vectorwise_dequant(&want.q, &want.row_stats, cols)
                    .unwrap();
                let dg = g
                    .int8_vectorwise_dequant(&want.q, &want.row_stats, cols)
                    .unwrap();
                assert_eq!(dg, dw, "vectorwise_dequant");
            }
        }
    }
    for &(m, n, k) in &[(1usize, 5usize, 7usize), (17, 33, 64), (70, 65, 130)] {
        let a: Vec<i8> = (0..m * k).map(|_| r.random()).collect();
        let b: Vec<i8> = (0..n * k).map(|_| r.random()).collect();
        let c = g.int8_linear_matmul(&a, &b, m, n, k).unwrap();
        assert_eq!(
            c,
            cpu.int8_linear_matmul(&a, &b, m, n, k).unwrap(),
            "int8 matmul {m}x{n}x{k}"
        );
        let rs: Vec<f32> = (0..m).map(|_| r.random_range(0.1f32..10.0)).collect();
        let cs: Vec<f32> = (0..n).map(|_| r.random_range(0.1f32..10.0)).collect();
        let bias = as_dtype(
            &(0..n)
                .map(|_| r.random_range(-1.0f32..1.0))
                .collect::<Vec<_>>(),
            DType::F16,
        );
        for b in [None, Some(bias.as_floats())] {
            let want = cpu.int8_mm_dequant(&c, &rs, &cs, b).unwrap();
            let got = g.int8_mm_dequant(&c, &rs, &cs, b).unwrap();
            let bits = |v: &[f16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "mm_dequant {m}x{n}");
        }
    }
}

#[test]
fn ternary_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("ternary");
    let cpu = CpuBackend;
    for &(rows, cols) in &[(4usize, 8usize), (13, 70), (64, 256), (1, 5)] {
        for dt in DTYPES {
            let w = as_dtype(
                &(0..rows * cols)
                    .map(|_| r.random_range(-0.1f32..0.1))
                    .collect::<Vec<_>>(),
                dt,
            );
            let sum: f32 = w.to_f32_vec().iter().map(|v| v.abs()).sum();
            let scale = lowbit::format::ternary::weight_scale(sum, rows * cols);
            let want = cpu
                .ternary_quantize(w.as_floats(), rows, cols, scale)
                .unwrap();
            let packed = g
                .ternary_quantize(w.as_floats(), rows, cols, scale)
                .unwrap();
            assert_eq!(packed, want, "ternary_quantize {dt} {rows}x{cols}");
            for batch in [1usize, 3] {
                let mut xv: Vec<f32> = (0..batch * cols)
                    .map(|_| r.random_range(-5.0f32..5.0))
                    .collect();
                if batch > 1 {
                    xv[..cols].iter_mut().for_each(|v| *v = 0.0);
                }
                let x = as_dtype(&xv, dt);
                let (qw, sw) = cpu.ternary_act_quant(x.as_floats(), batch, cols).unwrap();
                let (qg, sg) = g.ternary_act_quant(x.as_floats(), batch, cols).unwrap();
                assert_eq!(qg, qw, "act q {dt}");
                assert_eq!(sg, sw, "act scale {dt}");
                let pt = PackedTernary {
                    packed: &want,
                    weight_scale: scale,
                    rows,
                    cols,
                };
                let bias = as_dtype(
                    &(0..rows)
                        .map(|_| r.random_range(-1.0f32..1.0))
                        .collect::<Vec<_>>(),
                    dt,
                );
                let yw = cpu
                    .ternary_matmul(&qw, &sw, batch, pt, Some(bias.as_floats()))
                    .unwrap();
                let yg = g
                    .ternary_matmul(&qw, &sw, batch, pt, Some(bias.as_floats()))
                    .unwrap();
                assert_eq!(yg, yw, "ternary matmul {rows}x{cols} batch {batch}");
            }
        }
    }
}

#[test]
fn dense_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("dense");
    let cpu = CpuBackend;
    for &(m, n, k) in &[(1usize, 7usize, 9usize), (65, 70, 130), (3, 256, 64)] {
        for dt in DTYPES {
            let x = as_dtype(
                &(0..m * k)
                    .map(|_| r.random_range(-1.0f32..1.0))
                    .collect::<Vec<_>>(),
                dt,
            );
            let w = as_dtype(
                &(0..n * k)
                    .map(|_| r.random_range(-1.0f32..1.0))
                    .collect::<Vec<_>>(),
                dt,
            );
            let b = as_dtype(
                &(0..n)
                    .map(|_| r.random_range(-1.0f32..1.0))
                    .collect::<Vec<_>>(),
                dt,
            );
            let want = cpu
                .matmul(x.as_floats(), w.as_floats(), Some(b.as_floats()), m, n, k)
                .unwrap();
            let got = g
                .matmul(x.as_floats(), w.as_floats(), Some(b.as_floats()), m, n, k)
                .unwrap();
            let e = max_rel(&got.to_f32_vec(), &want.to_f32_vec());
            assert!(e <= tol(dt), "matmul {dt} {m}x{n}x{k}: {e:.2e}");
            let sw = cpu.softmax(x.as_floats(), k).unwrap();
            let sg = g.softmax(x.as_floats(), k).unwrap();
            let e = max_rel(&sg.to_f32_vec(), &sw.to_f32_vec());
            assert!(e <= tol(dt).max(1e-5), "softmax {dt}: {e:.2e}");
            let wt = as_dtype(
                &(0..k)
                    .map(|_| r.random_range(0.5f32..1.5))
                    .collect::<Vec<_>>(),
                dt,
            );
            let rw = cpu
                .rms_norm(x.as_floats(), wt.as_floats(), 1e-6, k)
                .unwrap();
            let rg = g.rms_norm(x.as_floats(), wt.as_floats(), 1e-6, k).unwrap();
            let e = max_rel(&rg.to_f32_vec(), &rw.to_f32_vec());
            assert!(e <= tol(dt).max(1e-5), "rms_norm {dt}: {e:.2e}");
        }
    }
}

/// Inputs bigger than one storage binding on lavapipe (128 MiB) are processed in pieces.
#[test]
fn large_input_in_pieces() {
    let Some(g) = gpu() else { return };
    if g.gpu().max_binding() > (1 << 28) {
        println!("adapter binds more than 256 MiB at once; piecewise path not exercised");
    }
    let mut r = rng("large");
    let n = (40 << 20) + 33; // 160 MiB of f32
    let x: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let cpu = CpuBackend;
    let xs = FloatVec::F32(x);
    let want = cpu
        .quantize_4bit(xs.as_floats(), FourBitType::Nf4, 64)
        .unwrap();
    let got = g
        .quantize_4bit(xs.as_floats(), FourBitType::Nf4, 64)
        .unwrap();
    assert!(
        got.absmax == want.absmax && got.codes == want.codes,
        "large quantize_4bit"
    );
    let _ = (bf16::ZERO, f16::ZERO);
}

/// Weights uploaded once stay on the GPU; results match the host-slice path.
#[test]
fn resident_tensors_match_host_path() {
    let Some(g) = gpu() else { return };
    let mut r = rng("resident");
    let (rows, cols) = (48usize, 256usize);
    let wv: Vec<f32> = (0..rows * cols)
        .map(|_| r.random_range(-1.0f32..1.0))
        .collect();
    let q = CpuBackend
        .quantize_4bit(FloatVec::F32(wv.clone()).as_floats(), FourBitType::Nf4, 64)
        .unwrap();
    let w = Packed4bit {
        packed: &q.codes,
        absmax: &q.absmax,
        quant_type: FourBitType::Nf4,
        blocksize: 64,
        rows,
        cols,
    };
    let x: Vec<f32> = (0..cols).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let gw = g.upload_4bit(&w).unwrap();
    let gx = g.upload(bytemuck::cast_slice(&x), vec![cols], DType::F32);
    let y = g.gemv_4bit_resident(&gx, &gw).unwrap();
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(&g.download(&y).unwrap());
    let want = g
        .gemv_4bit(FloatVec::F32(x.clone()).as_floats(), w, None)
        .unwrap();
    assert_eq!(got, want.to_f32_vec());
    let gwd = g.upload(bytemuck::cast_slice(&wv), vec![rows, cols], DType::F32);
    let gx2 = g.upload(bytemuck::cast_slice(&x), vec![1, cols], DType::F32);
    let y2 = g.matmul_resident(&gx2, &gwd).unwrap();
    let got2: Vec<f32> = bytemuck::pod_collect_to_vec(&g.download(&y2).unwrap());
    let want2 = g
        .matmul(
            FloatVec::F32(x).as_floats(),
            FloatVec::F32(wv).as_floats(),
            None,
            1,
            rows,
            cols,
        )
        .unwrap();
    assert_eq!(got2, want2.to_f32_vec());
}

/// Every work split of the vectorised GEMV kernels (portable reduction, and subgroup reduction where the
/// adapter has it) against the CPU: row counts that leave partial workgroups and column counts that leave some
/// threads without a last word.
#[test]
fn gemv_work_splits_match_cpu() {
    use lowbit::backend::wgpu::shaders::GemvShape;
    let Some(g) = gpu() else { return };
    let mut r = rng("gemv_work_splits");
    let cpu = CpuBackend;
    let mut splits = Vec::new();
    for shape in GemvShape::CANDIDATES {
        splits.push(shape);
        if g.subgroups_fit(shape.tpr) {
            splits.push(GemvShape {
                subgroup: true,
                ..shape
            });
        }
    }
    println!(
        "gemv splits tested: {} ({} with subgroups)",
        splits.len(),
        splits.iter().filter(|s| s.subgroup).count()
    );
    for &(rows, cols, bs) in &[(37usize, 1056usize, 64usize), (70, 4096, 32), (3, 96, 4096)] {
        let wv = data(&mut r, rows * cols, bs);
        let q = cpu
            .quantize_4bit(FloatVec::F32(wv).as_floats(), FourBitType::Nf4, bs)
            .unwrap();
        let w = Packed4bit {
            packed: &q.codes,
            absmax: &q.absmax,
            quant_type: FourBitType::Nf4,
            blocksize: bs,
            rows,
            cols,
        };
        let x: Vec<f32> = (0..cols).map(|_| r.random_range(-2.0f32..2.0)).collect();
        let bias: Vec<f32> = (0..rows).map(|_| r.random_range(-1.0f32..1.0)).collect();
        let bias = FloatVec::F32(bias);
        let want = cpu
            .gemv_4bit(
                FloatVec::F32(x.clone()).as_floats(),
                w,
                Some(bias.as_floats()),
            )
            .unwrap()
            .to_f32_vec();
        for &split in &splits {
            let got = g
                .gemv_4bit_split(&x, w, Some(bias.as_floats()), split)
                .unwrap();
            let e = max_rel(&got, &want);
            assert!(
                e <= tol(DType::F32),
                "gemv {rows}x{cols} bs {bs} {split:?}: rel err {e:.2e}"
            );
        }
    }
    for &(rows, cols) in &[(37usize, 1040usize), (130, 4096), (5, 16)] {
        let wv: Vec<f32> = (0..rows * cols)
            .map(|_| r.random_range(-0.1f32..0.1))
            .collect();
        let w = FloatVec::F32(wv);
        let sum: f32 = w.to_f32_vec().iter().map(|v| v.abs()).sum();
        let scale = lowbit::format::ternary::weight_scale(sum, rows * cols);
        let packed = cpu
            .ternary_quantize(w.as_floats(), rows, cols, scale)
            .unwrap();
        let pt = PackedTernary {
            packed: &packed,
            weight_scale: scale,
            rows,
            cols,
        };
        let xv: Vec<f32> = (0..cols).map(|_| r.random_range(-5.0f32..5.0)).collect();
        let (xq, xs) = cpu
            .ternary_act_quant(FloatVec::F32(xv).as_floats(), 1, cols)
            .unwrap();
        let want = cpu.ternary_matmul(&xq, &xs, 1, pt, None).unwrap();
        for &split in &splits {
            let got = g.ternary_gemv_split(&xq, xs[0], pt, split).unwrap();
            assert_eq!(got, want, "ternary gemv {rows}x{cols} {split:?}");
        }
    }
}
