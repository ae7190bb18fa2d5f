#![cfg(feature = "wgpu")]
//! Every wgpu kernel against the CPU reference on fresh random inputs (the seed is printed; set
//! `LOWBIT_SEED` to replay). Quantized bytes must be identical; float outputs stay within stated tolerances.

mod common;
mod wgpu_common;

use half::{bf16, f16};
use lowbit::backend::cpu::CpuBackend;
use lowbit::backend::wgpu::WgpuBackend;
use lowbit::backend::{Backend, Packed4bit, PackedTernary};
use lowbit::format::{FourBitType, dynamic_map};
use lowbit::tensor::{DType, FloatVec};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

fn rng(test: &str) -> StdRng {
    let seed = std::env::var("LOWBIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    println!("{test}: seed {seed} (LOWBIT_SEED={seed} replays)");
    StdRng::seed_from_u64(seed)
}

/// The GPU backend, shared with the other tests of this file that run at the same time. A validation error is
/// reported by whichever wait comes next on the device, so the test that provokes one runs alone
/// (`exclusive_gpu`).
fn gpu() -> Option<Shared<RwLockReadGuard<'static, ()>>> {
    let turn = TURNS.read().unwrap_or_else(|e| e.into_inner());
    wgpu_common::gpu().map(|backend| Shared {
        backend,
        _turn: turn,
    })
}

fn exclusive_gpu() -> Option<Shared<RwLockWriteGuard<'static, ()>>> {
    let turn = TURNS.write().unwrap_or_else(|e| e.into_inner());
    wgpu_common::gpu().map(|backend| Shared {
        backend,
        _turn: turn,
    })
}

static TURNS: RwLock<()> = RwLock::new(());

struct Shared<G> {
    backend: WgpuBackend,
    _turn: G,
}

impl<G> std::ops::Deref for Shared<G> {
    type Target = WgpuBackend;
    fn deref(&self) -> &WgpuBackend {
        &self.backend
    }
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
                    blk[i] = common::SPECIAL_F32[r.random_range(0..6)];
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
                        // Bit for bit, except that NaN payloads are the platform's (0 * inf on an NVIDIA
                        // GPU gives 0x7fffffff, on x86 0xffc00000): any NaN matches any NaN.
                        let want = w.to_f32_vec();
                        let same = |a: f32, b: f32| {
                            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
                        };
                        let bad = d.iter().zip(&want).position(|(&a, &b)| !same(a, b));
                        assert!(
                            d.len() == want.len() && bad.is_none(),
                            "dequant {enc:?} bs {bs} n {n} vpt {vpt}: first difference at {bad:?}"
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

/// The 4-bit linear kernels for every row count 1-32 against the CPU reference: the multi-row GEMV on
/// aligned weights (cols % 32 == 0, blocksize >= 32; partial workgroups of weight rows, several dispatches of
/// activation rows above 8, one, two and four weight rows per thread) and the GEMM it falls back to on the
/// others.
#[test]
fn fourbit_rows_match_reference_for_every_row_count() {
    use lowbit::backend::cpu::ReferenceBackend;
    let Some(g) = gpu() else { return };
    let mut r = rng("fourbit_rows");
    for batch in 1..=32usize {
        let dt = DTYPES[batch % 3];
        let qt = [FourBitType::Nf4, FourBitType::Fp4][r.random_range(0..2)];
        let aligned = (
            r.random_range(1..80usize),
            32 * r.random_range(1..80usize),
            [32usize, 64, 128, 4096][r.random_range(0..4)],
        );
        let ragged = (r.random_range(1..40usize), r.random_range(1..200usize), 64);
        // Taller weights take two and four weight rows per thread.
        let tall = (
            [2100usize, 8200][batch % 2] + r.random_range(0..40usize),
            64,
            64,
        );
        let shapes = if batch % 3 == 0 {
            vec![aligned, ragged, tall]
        } else {
            vec![aligned, ragged]
        };
        for (rows, cols, bs) in shapes {
            let q = random_4bit(&mut r, rows, cols, qt, bs);
            let w = Packed4bit {
                packed: &q.codes,
                absmax: &q.absmax,
                quant_type: qt,
                blocksize: bs,
                rows,
                cols,
            };
            let x = as_dtype(&data(&mut r, batch * cols, 64), dt);
            let bias = as_dtype(&data(&mut r, rows, 64), dt);
            let b = r.random::<bool>().then(|| bias.as_floats());
            let want = ReferenceBackend
                .matmul_4bit(x.as_floats(), batch, w, b)
                .unwrap();
            let got = g.matmul_4bit(x.as_floats(), batch, w, b).unwrap();
            assert_eq!(got.dtype(), dt);
            let e = max_rel(&got.to_f32_vec(), &want.to_f32_vec());
            assert!(
                e <= tol(dt),
                "{qt} {dt} {rows}x{cols} bs {bs} batch {batch}: rel err {e:.2e}"
            );
        }
    }
}

/// The exact int8 and ternary products for every row count 1-32 against the CPU reference, bit for bit: the
/// multi-row GEMVs on weights of whole 16-byte rows (partial workgroups of weight rows, several dispatches of
/// activation rows above 8) and the GEMMs they fall back to on the others.
#[test]
fn integer_rows_match_reference_for_every_row_count() {
    use lowbit::backend::cpu::ReferenceBackend;
    let Some(g) = gpu() else { return };
    let mut r = rng("integer_rows");
    for batch in 1..=32usize {
        let aligned = (r.random_range(1..80usize), 16 * r.random_range(1..40usize));
        let ragged = (
            r.random_range(1..40usize),
            4 * r.random_range(1..50usize) + 4,
        );
        for (rows, cols) in [aligned, ragged] {
            let what = format!("{rows}x{cols} batch {batch}");
            let a: Vec<i8> = (0..batch * cols).map(|_| r.random()).collect();
            let b: Vec<i8> = (0..rows * cols).map(|_| r.random()).collect();
            let want = ReferenceBackend
                .int8_linear_matmul(&a, &b, batch, rows, cols)
                .unwrap();
            let got = g.int8_linear_matmul(&a, &b, batch, rows, cols).unwrap();
            assert_eq!(got, want, "int8 {what}");

            // Four 2-bit codes per byte, each one of the three ternary codes 0, 1, 2 (weights -1, 0, 1).
            let packed: Vec<u8> = (0..rows.div_ceil(4) * cols)
                .map(|_| (0..4).map(|j| r.random_range(0..3u8) << (2 * j)).sum())
                .collect();
            let w = PackedTernary {
                packed: &packed,
                weight_scale: r.random_range(0.01f32..0.1),
                rows,
                cols,
            };
            let scale: Vec<f32> = (0..batch).map(|_| r.random_range(0.5f32..100.0)).collect();
            let want = ReferenceBackend
                .ternary_matmul(&a, &scale, batch, w, None)
                .unwrap();
            let got = g.ternary_matmul(&a, &scale, batch, w, None).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "ternary {what}");
        }
    }
}

/// A dispatch the device rejects (a workgroup grid past the adapter's limit) is a typed error from the call
/// that recorded it or from the next wait, never a panic; the device then runs ops correctly again.
#[test]
fn a_rejected_dispatch_is_a_typed_error_and_the_device_recovers() {
    use lowbit::backend::wgpu::shaders::Shader;
    let Some(g) = exclusive_gpu() else { return };
    let mut r = rng("rejected_dispatch");
    let gpu = g.gpu();
    let (src, dst) = (gpu.output(64), gpu.output(64));
    let bufs = [(1, &src), (2, &dst)];
    let too_many = (gpu.limits.max_compute_workgroups_per_dimension + 1, 1, 1);
    // wgpu reports a rejected dispatch when it records it or when its command buffer is finished, at the
    // submission the next wait makes.
    let recorded = gpu.submit(|enc| {
        let params = [4, 0, 0, 0, 0, 0, 0, 0];
        gpu.encode(enc, &Shader::Copy, params, &bufs, too_many, None)
    });
    let err = recorded.err().or_else(|| gpu.wait().err());
    assert!(
        matches!(err, Some(lowbit::Error::Device(_))),
        "a device error, got {err:?}"
    );
    assert!(gpu.wait().is_ok(), "nothing is left pending");
    let (m, n, k) = (3, 5, 40);
    let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let w: Vec<f32> = (0..n * k).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let f = |v: &[f32]| FloatVec::F32(v.to_vec());
    let want = CpuBackend
        .matmul(f(&x).as_floats(), f(&w).as_floats(), None, m, n, k)
        .unwrap();
    let got = g
        .matmul(f(&x).as_floats(), f(&w).as_floats(), None, m, n, k)
        .unwrap();
    assert!(max_rel(&got.to_f32_vec(), &want.to_f32_vec()) < 1e-5);
    assert!(gpu.uncaptured_errors() >= 1);
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
    // One row with k % 4 == 0 takes the GEMV kernel, the others the tiled GEMM.
    for &(m, n, k) in &[
        (1usize, 7usize, 9usize),
        (1, 300, 68),
        (65, 70, 130),
        (3, 256, 64),
    ] {
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
            if dt == DType::F16 {
                // The path for adapters without shader-f16 (f32 output: compare before rounding to f16).
                let want = cpu
                    .matmul(
                        FloatVec::F32(x.to_f32_vec()).as_floats(),
                        FloatVec::F32(w.to_f32_vec()).as_floats(),
                        None,
                        m,
                        n,
                        k,
                    )
                    .unwrap()
                    .to_f32_vec();
                let got = g
                    .matmul_f16_widened(x.as_floats(), w.as_floats(), m, n, k)
                    .unwrap();
                let e = max_rel(&got, &want);
                assert!(
                    e <= tol(DType::F32),
                    "matmul f16 widened {m}x{n}x{k}: {e:.2e}"
                );
            }
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
    let gx = g.upload_raw(bytemuck::cast_slice(&x), vec![cols], DType::F32);
    let y = g.gemv_4bit_resident(&gx, &gw).unwrap();
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(&g.download(&y).unwrap());
    let want = g
        .gemv_4bit(FloatVec::F32(x.clone()).as_floats(), w, None)
        .unwrap();
    assert_eq!(got, want.to_f32_vec());
    let gwd = g.upload_raw(bytemuck::cast_slice(&wv), vec![rows, cols], DType::F32);
    let gx2 = g.upload_raw(bytemuck::cast_slice(&x), vec![1, cols], DType::F32);
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
    // A split outside the generated candidates is a typed error, not a panic in shader generation.
    let bad = GemvShape::new(48, 3);
    let e = g
        .gemv_4bit_split(
            &[0.5; 32],
            Packed4bit {
                packed: &[0x12; 16],
                absmax: &[1.0],
                quant_type: FourBitType::Nf4,
                blocksize: 32,
                rows: 1,
                cols: 32,
            },
            None,
            bad,
        )
        .unwrap_err();
    assert!(e.to_string().contains("CANDIDATES"), "{e}");
    // Rows that start inside a block (cols 136 and 40 are not multiples of 32 or of the block size).
    for &(rows, cols, bs) in &[
        (37usize, 1056usize, 64usize),
        (70, 4096, 32),
        (3, 96, 4096),
        (9, 136, 64),
        (5, 40, 32),
    ] {
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

/// Quantizes `rows x cols` random weights with `qt` on the CPU (the bytes both backends read).
fn random_4bit(
    r: &mut StdRng,
    rows: usize,
    cols: usize,
    qt: FourBitType,
    bs: usize,
) -> lowbit::backend::BlockCodes {
    let wv: Vec<f32> = (0..rows * cols)
        .map(|_| r.random_range(-1.0f32..1.0))
        .collect();
    CpuBackend
        .quantize_4bit(FloatVec::F32(wv).as_floats(), qt, bs)
        .unwrap()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(bytes)
}

/// A layer's float ops chained on the GPU without reading back in between: RMSNorm -> 4-bit linear (GEMV at
/// batch 1, GEMM above; vectorised and general GEMV shapes) -> softmax. Each stage is read back only after the
/// whole chain ran and compared with the CPU fed the GPU's previous stage (the file's f32 tolerance); the
/// final output is also compared with the all-CPU chain, where three ops' roundings compound (10x the
/// tolerance).
#[test]
fn resident_layer_chain_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("resident_layer_chain");
    let cpu = CpuBackend;
    let f = |v: &[f32]| FloatVec::F32(v.to_vec());
    for &(rows, cols, bs) in &[(96usize, 256usize, 64usize), (33, 70, 32), (8200, 64, 128)] {
        for qt in [FourBitType::Nf4, FourBitType::Fp4] {
            let q = random_4bit(&mut r, rows, cols, qt, bs);
            let w = Packed4bit {
                packed: &q.codes,
                absmax: &q.absmax,
                quant_type: qt,
                blocksize: bs,
                rows,
                cols,
            };
            let gw = g.upload_4bit(&w).unwrap();
            let norm_w: Vec<f32> = (0..cols).map(|_| r.random_range(0.5f32..1.5)).collect();
            let gnw = g.upload_raw(bytemuck::cast_slice(&norm_w), vec![cols], DType::F32);
            for batch in [1usize, 3] {
                let x: Vec<f32> = (0..batch * cols)
                    .map(|_| r.random_range(-2.0f32..2.0))
                    .collect();
                let gx = g.upload_raw(bytemuck::cast_slice(&x), vec![batch, cols], DType::F32);
                let gn = g.rms_norm_resident(&gx, &gnw, 1e-6).unwrap();
                let gy = g.matmul_4bit_resident(&gn, &gw).unwrap();
                let gs = g.softmax_resident(&gy).unwrap();
                assert_eq!(gs.shape, vec![batch, rows]);
                let (n, y, s) = (
                    f32s(&g.download(&gn).unwrap()),
                    f32s(&g.download(&gy).unwrap()),
                    f32s(&g.download(&gs).unwrap()),
                );
                let linear = |v: &FloatVec| {
                    if batch == 1 {
                        cpu.gemv_4bit(v.as_floats(), w, None).unwrap()
                    } else {
                        cpu.matmul_4bit(v.as_floats(), batch, w, None).unwrap()
                    }
                };
                let what = format!("{qt} {rows}x{cols} bs {bs} batch {batch}");
                let cn = cpu
                    .rms_norm(f(&x).as_floats(), f(&norm_w).as_floats(), 1e-6, cols)
                    .unwrap()
                    .to_f32_vec();
                let e = max_rel(&n, &cn);
                assert!(e <= tol(DType::F32), "rms_norm {what}: {e:.2e}");
                let e = max_rel(&y, &linear(&f(&n)).to_f32_vec());
                assert!(e <= tol(DType::F32), "linear {what}: {e:.2e}");
                let cs = cpu.softmax(f(&y).as_floats(), rows).unwrap().to_f32_vec();
                let e = max_rel(&s, &cs);
                assert!(e <= tol(DType::F32), "softmax {what}: {e:.2e}");
                let cy = linear(&FloatVec::F32(cn));
                let all_cpu = cpu.softmax(cy.as_floats(), rows).unwrap().to_f32_vec();
                let e = max_rel(&s, &all_cpu);
                assert!(e <= 10.0 * tol(DType::F32), "chain {what}: {e:.2e}");
            }
        }
    }
}

/// The resident dequantization is byte-identical to the CPU's.
#[test]
fn resident_dequantize_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("resident_dequantize");
    for &(rows, cols, bs) in &[(7usize, 9usize, 32usize), (64, 512, 64), (3, 4096, 4096)] {
        for qt in [FourBitType::Nf4, FourBitType::Fp4] {
            let q = random_4bit(&mut r, rows, cols, qt, bs);
            let w = Packed4bit {
                packed: &q.codes,
                absmax: &q.absmax,
                quant_type: qt,
                blocksize: bs,
                rows,
                cols,
            };
            let gd = g
                .dequantize_4bit_resident(&g.upload_4bit(&w).unwrap())
                .unwrap();
            assert_eq!(gd.shape, vec![rows, cols]);
            let want = CpuBackend
                .dequantize_4bit(&q.codes, &q.absmax, qt, bs, rows * cols, DType::F32)
                .unwrap();
            assert!(
                g.download(&gd).unwrap() == want.to_le_bytes(),
                "dequantize {qt} {rows}x{cols} bs {bs}"
            );
        }
    }
}

/// Float bits with NaNs made equal (payloads and NaN signs are not part of the contract).
fn canon_bits(v: &[f32]) -> Vec<u32> {
    v.iter()
        .map(|x| if x.is_nan() { 0x7fc0_0000 } else { x.to_bits() })
        .collect()
}

/// The BitNet linear layer on the GPU (activation quantization, exact integer product, exact division) is
/// bit-identical to the CPU's `ternary_act_quant` + `ternary_matmul`, for every kernel it may pick: the
/// vectorised GEMV (cols % 16 == 0), the general GEMV (cols % 4 == 0), the GEMM (other cols, batch > 1).
#[test]
fn resident_ternary_linear_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = rng("resident_ternary_linear");
    let cpu = CpuBackend;
    for &(rows, cols) in &[(13usize, 64usize), (64, 260), (5, 70), (1, 3)] {
        let wv: Vec<f32> = (0..rows * cols)
            .map(|_| r.random_range(-0.1f32..0.1))
            .collect();
        let sum: f32 = wv.iter().map(|v| v.abs()).sum();
        let scale = lowbit::format::ternary::weight_scale(sum, (rows * cols).max(1));
        let packed = cpu
            .ternary_quantize(FloatVec::F32(wv).as_floats(), rows, cols, scale)
            .unwrap();
        let pt = PackedTernary {
            packed: &packed,
            weight_scale: scale,
            rows,
            cols,
        };
        let gw = g.upload_ternary(pt).unwrap();
        for dt in DTYPES {
            for batch in [1usize, 4] {
                let mut xv: Vec<f32> = (0..batch * cols)
                    .map(|_| r.random_range(-5.0f32..5.0) * 10f32.powi(r.random_range(-3..3)))
                    .collect();
                if batch > 1 {
                    // A zero row (scale from the 1e-5 floor) and a row with an infinity (scale 0: 0/0 = NaN).
                    xv[..cols].iter_mut().for_each(|v| *v = 0.0);
                    if cols > 0 {
                        xv[cols] = f32::INFINITY;
                    }
                }
                let x = as_dtype(&xv, dt);
                let gx = g.upload_raw(&x.to_le_bytes(), vec![batch, cols], dt);
                let gy = g.ternary_linear_resident(&gx, &gw).unwrap();
                assert_eq!(gy.shape, vec![batch, rows]);
                let got = f32s(&g.download(&gy).unwrap());
                let (xq, xs) = cpu.ternary_act_quant(x.as_floats(), batch, cols).unwrap();
                let want = cpu.ternary_matmul(&xq, &xs, batch, pt, None).unwrap();
                assert_eq!(
                    canon_bits(&got),
                    canon_bits(&want),
                    "ternary linear {dt} {rows}x{cols} batch {batch}"
                );
            }
        }
    }
    // No columns: every accumulator is 0, so y = 0 / (activation_scale(0) * weight_scale) = +0.
    let gw = g
        .upload_ternary(PackedTernary {
            packed: &[],
            weight_scale: 3.0,
            rows: 9,
            cols: 0,
        })
        .unwrap();
    let gy = g
        .ternary_linear_resident(&g.upload_raw(&[], vec![2, 0], DType::F32), &gw)
        .unwrap();
    assert_eq!(gy.shape, vec![2, 9]);
    assert_eq!(g.download(&gy).unwrap(), vec![0u8; 2 * 9 * 4]);
}

/// Random float bits: every exponent (zero, subnormal, normal, infinity/NaN) and mantissas that are dense or
/// have few set bits (those give exact ties in products and subnormal results).
fn any_f32(r: &mut StdRng) -> f32 {
    let exp: u32 = match r.random_range(0..10) {
        0 => 0,
        1 => 255,
        2..=4 => r.random_range(100..160),
        _ => r.random_range(0..256),
    };
    let mut man: u32 = r.random_range(0..1 << 23);
    match r.random_range(0..3) {
        0 => man &= 0x7f_0000,
        1 => man &= 0x40_0001 | (1 << r.random_range(0..23)),
        _ => {}
    }
    f32::from_bits((r.random::<u32>() & 0x8000_0000) | (exp << 23) | man)
}

/// LLM.int8()'s `int8_mm_dequant` as `linear_8bit` runs it on the GPU (products on bit patterns, one fused
/// multiply-add, f16 narrowing, all in the shader) equals the CPU's float32 arithmetic and `fmaf` for any bit
/// patterns: subnormal and overflowing products, cancellation against the bias, ties, infinities, NaNs.
#[test]
fn int8_mm_dequant_on_device_is_exact() {
    let Some(g) = gpu() else { return };
    let mut r = rng("int8_mm_dequant_on_device");
    let (m, n) = (24, 200);
    for round in 0..4 {
        let row_stats: Vec<f32> = (0..m).map(|_| any_f32(&mut r)).collect();
        let col_stats: Vec<f32> = (0..n).map(|_| any_f32(&mut r)).collect();
        let c: Vec<i32> = (0..m * n)
            .map(|_| match r.random_range(0..5) {
                0 => r.random(),
                1 => (1i32 << r.random_range(24..31)) + r.random_range(-8..8),
                2 => [i32::MIN, i32::MAX, 0, -1, 1][r.random_range(0..5)],
                _ => r.random_range(-20000..20000),
            })
            .collect();
        let bias: Vec<f16> = (0..n)
            .map(|_| match r.random_range(0..3) {
                0 => f16::from_bits(r.random()),
                1 => f16::from_f32(r.random_range(-4.0f32..4.0)),
                _ => f16::from_bits(r.random::<u16>() & 0x83ff),
            })
            .collect();
        let with_bias = round % 2 == 0;
        let got = g
            .int8_mm_dequant_on_device(&c, &row_stats, &col_stats, with_bias.then_some(&bias[..]))
            .unwrap();
        let want: Vec<f16> = c
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let t = (v as f32 * row_stats[i / n]) * col_stats[i % n];
                let b = if with_bias { bias[i % n].to_f32() } else { 0.0 };
                lowbit::format::int8::mm_dequant_output(t, b)
            })
            .collect();
        let canon = |h: &f16| if h.is_nan() { 0x7e00 } else { h.to_bits() };
        if let Some(i) = (0..got.len()).find(|&i| canon(&got[i]) != canon(&want[i])) {
            panic!(
                "c {} * {:e} [{:#010x}] * {:e} [{:#010x}], bias {:?}: got {:#06x}, want {:#06x}",
                c[i],
                row_stats[i / n],
                row_stats[i / n].to_bits(),
                col_stats[i % n],
                col_stats[i % n].to_bits(),
                with_bias.then(|| bias[i % n]),
                got[i].to_bits(),
                want[i].to_bits()
            );
        }
    }
}

/// The GPU's integer-arithmetic `f32(acc) / (x_scale * weight_scale)` equals Rust's float32 arithmetic for any
/// bit patterns: rounding ties, subnormal and overflowing products and quotients, zeros, infinities, NaNs.
#[test]
fn ternary_rescale_is_exact() {
    let Some(g) = gpu() else { return };
    let mut r = rng("ternary_rescale");
    let rows = 1000;
    for _ in 0..4 {
        let weight_scale = any_f32(&mut r);
        let x_scale: Vec<f32> = (0..64).map(|_| any_f32(&mut r)).collect();
        let acc: Vec<i32> = (0..rows * x_scale.len())
            .map(|_| match r.random_range(0..6) {
                0 => r.random(),
                1 => r.random_range(-300..300),
                // Conversions that round (ties included) just above 2^24, 2^25, ...
                2 => (1i32 << r.random_range(24..31)) + r.random_range(-8..8),
                3 => [i32::MIN, i32::MAX, 0, -1, 1][r.random_range(0..5)],
                _ => r.random_range(-20000..20000),
            })
            .collect();
        let got = g
            .ternary_rescale(&acc, &x_scale, weight_scale, rows)
            .unwrap();
        let want: Vec<f32> = acc
            .iter()
            .enumerate()
            .map(|(i, &a)| a as f32 / (x_scale[i / rows] * weight_scale))
            .collect();
        let (gb, wb) = (canon_bits(&got), canon_bits(&want));
        if let Some(i) = (0..gb.len()).find(|&i| gb[i] != wb[i]) {
            panic!(
                "acc {} / ({:e} [{:#010x}] * {:e} [{:#010x}]): got {:#010x}, want {:#010x}",
                acc[i],
                x_scale[i / rows],
                x_scale[i / rows].to_bits(),
                weight_scale,
                weight_scale.to_bits(),
                gb[i],
                wb[i]
            );
        }
    }
}

/// Bad shapes, dtypes and buffers give typed errors from the resident ops, never a dispatch or a panic.
#[test]
fn resident_bad_inputs_are_errors() {
    use lowbit::Error;
    use lowbit::backend::wgpu::GpuTensor;
    use lowbit::runtime::DeviceError;
    let Some(g) = gpu() else { return };
    let mut r = rng("resident_bad_inputs");
    let (rows, cols) = (8usize, 64usize);
    let q = random_4bit(&mut r, rows, cols, FourBitType::Nf4, 64);
    let w = Packed4bit {
        packed: &q.codes,
        absmax: &q.absmax,
        quant_type: FourBitType::Nf4,
        blocksize: 64,
        rows,
        cols,
    };
    let gw = g.upload_4bit(&w).unwrap();
    let is_shape = |e: Error| matches!(e, Error::Shape { .. });
    let zeros = |shape: Vec<usize>, dt: DType| {
        let n: usize = shape.iter().product();
        g.upload_raw(&vec![0u8; n * dt.size_in_bytes()], shape, dt)
    };
    let x = zeros(vec![2, cols], DType::F32);
    let nw = zeros(vec![cols], DType::F32);
    // Wrong dtypes, ranks and lengths.
    let x16 = zeros(vec![2, cols], DType::F16);
    assert!(is_shape(
        g.rms_norm_resident(&x16, &nw, 1e-6).err().unwrap()
    ));
    let bad_nw = zeros(vec![cols + 1], DType::F32);
    assert!(is_shape(
        g.rms_norm_resident(&x, &bad_nw, 1e-6).err().unwrap()
    ));
    let x3 = zeros(vec![1, 2, cols], DType::F32);
    assert!(is_shape(g.softmax_resident(&x3).err().unwrap()));
    let xk = zeros(vec![2, cols + 1], DType::F32);
    assert!(is_shape(g.matmul_4bit_resident(&xk, &gw).err().unwrap()));
    assert!(is_shape(g.gemv_4bit_resident(&xk, &gw).err().unwrap()));
    let xu8 = zeros(vec![2, cols], DType::U8);
    assert!(is_shape(g.matmul_4bit_resident(&xu8, &gw).err().unwrap()));
    assert!(is_shape(g.matmul_resident(&x, &xk).err().unwrap()));
    // A shape that claims more than its buffer holds.
    let lying = GpuTensor {
        buffer: g.gpu().output(16),
        shape: vec![1000, cols],
        dtype: DType::F32,
    };
    assert!(is_shape(g.softmax_resident(&lying).err().unwrap()));
    assert!(is_shape(g.matmul_4bit_resident(&lying, &gw).err().unwrap()));
    // Inconsistent weights.
    let short = Packed4bit {
        packed: &q.codes[..q.codes.len() - 1],
        ..w
    };
    assert!(is_shape(g.upload_4bit(&short).err().unwrap()));
    let odd_bs = Packed4bit { blocksize: 48, ..w };
    assert!(matches!(
        g.upload_4bit(&odd_bs).err().unwrap(),
        Error::BlockSize { .. }
    ));
    let tp = vec![0u8; 2 * cols];
    let bad_t = PackedTernary {
        packed: &tp,
        weight_scale: 1.0,
        rows: 9,
        cols,
    };
    assert!(is_shape(g.upload_ternary(bad_t).err().unwrap()));
    let gt = g
        .upload_ternary(PackedTernary { rows: 8, ..bad_t })
        .unwrap();
    assert!(is_shape(g.ternary_linear_resident(&xk, &gt).err().unwrap()));
    // An output larger than one storage binding: the typed out-of-memory error, before any allocation.
    if g.gpu().max_binding() >= 1 << 32 {
        println!(
            "bindings reach past the kernels' u32 index range; binding-limit case not exercised"
        );
        return;
    }
    let (big_rows, big_cols) = (1usize << 20, 32usize);
    let batch = (g.gpu().max_binding() as usize / (big_rows * 4) + 1).max(2);
    let packed = vec![0u8; big_rows * big_cols / 2];
    let absmax = vec![1.0f32; big_rows * big_cols / 32];
    let big = g
        .upload_4bit(&Packed4bit {
            packed: &packed,
            absmax: &absmax,
            quant_type: FourBitType::Nf4,
            blocksize: 32,
            rows: big_rows,
            cols: big_cols,
        })
        .unwrap();
    let xb = zeros(vec![batch, big_cols], DType::F32);
    let e = g.matmul_4bit_resident(&xb, &big).err().unwrap();
    assert!(
        matches!(e, Error::Device(DeviceError::OutOfMemory { .. })),
        "{e}"
    );
}

/// On a Metal device, dense f32/f16 matmul runs through MPS (not the WGSL GEMM) and matches the CPU within the
/// dtype's tolerance, bias included, without falling back. Unverified on hardware until this runs on a Mac.
#[cfg(target_os = "macos")]
#[test]
fn mps_matmul_on_metal_matches_cpu() {
    let Some(g) = gpu() else { return };
    if g.adapter_info().backend != wgpu::Backend::Metal {
        println!("skipped: not a Metal adapter");
        return;
    }
    assert!(g.mps_gemm().is_some(), "MPS GEMM unavailable on Metal");
    let mut r = rng("mps_matmul");
    let cpu = CpuBackend;
    let before = g.mps_fallbacks();
    // One row with k % 4 == 0 takes the GEMV kernel, the others the tiled GEMM.
    for &(m, n, k) in &[
        (1usize, 7usize, 9usize),
        (1, 300, 68),
        (65, 70, 130),
        (3, 256, 64),
    ] {
        for dt in [DType::F32, DType::F16] {
            let mut rand = |len: usize| {
                as_dtype(
                    &(0..len)
                        .map(|_| r.random_range(-1.0f32..1.0))
                        .collect::<Vec<_>>(),
                    dt,
                )
            };
            let (x, w, b) = (rand(m * k), rand(n * k), rand(n));
            for bias in [None, Some(b.as_floats())] {
                let want = cpu
                    .matmul(x.as_floats(), w.as_floats(), bias, m, n, k)
                    .unwrap();
                let got = g
                    .matmul(x.as_floats(), w.as_floats(), bias, m, n, k)
                    .unwrap();
                assert_eq!(got.dtype(), dt);
                let e = max_rel(&got.to_f32_vec(), &want.to_f32_vec());
                assert!(e <= tol(dt), "MPS matmul {dt} {m}x{n}x{k}: {e:.2e}");
            }
        }
    }
    assert_eq!(
        g.mps_fallbacks(),
        before,
        "MPS failed over to the WGSL GEMM"
    );
}
